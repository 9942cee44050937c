//! `catlora bench`: UNet speed and memory, or (`--train`) one training step of plain LoRA and of
//! CAT, optionally next to PyTorch + diffusers (see `catlora::bench`).
use anyhow::{Result, bail};
use catlora::bench::{self, BenchCase, BenchOptions, DEFAULT_ITERS, TrainSettings};
use clap::Args;
use std::path::PathBuf;

/// Benchmark the UNet: forward, forward+backward and peak memory, each case in a fresh process.
///
/// Cases: every --unet folder at its own sample size, and the SD 1.5 UNet with random weights at
/// 256 px (--sd15; the default when no --unet is given; --pixels for another size). With --torch,
/// the same cases also run in PyTorch + diffusers (bench/torch_unet.py, embedded) and the table
/// compares the two; make that Python with `bash scripts/setup-bench.sh`. The table goes to
/// stdout, with the machine's load average: ratios measured while other processes used the CPU
/// are withheld.
///
/// With --train, the same cases time one whole training step instead (fixed inputs, LoRA rank 1
/// on to_q/to_k/to_v/to_out.0, AdamW lr 1e-4): catlora's plain LoRA and CAT (lambda 1), and with
/// --torch, peft's plain LoRA, the CAT authors' formulation (a second UNet copy) and CAT with the
/// adapter switched off for the base pass (catlora's algorithm), with step time, peak memory and
/// the target ratios.
#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Benchmark one training step (plain LoRA and CAT) instead of the bare UNet passes.
    #[arg(long)]
    pub train: bool,
    /// A diffusers `unet` folder, or a pipeline folder (its `unet/` is used). Repeatable.
    #[arg(long, value_name = "DIR")]
    pub unet: Vec<PathBuf>,
    /// Add the SD 1.5 UNet (random weights), batch 1, 77 tokens.
    #[arg(long)]
    pub sd15: bool,
    /// Image side of the SD 1.5 case, a multiple of 64.
    #[arg(long, value_name = "PX", default_value_t = 256)]
    pub pixels: usize,
    /// Timed iterations per phase (with --train: timed steps), after one warm-up.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_ITERS)]
    pub iters: usize,
    /// Compute threads for both engines [default: every CPU this process may use].
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
    #[arg(long, value_name = "DEVICE", default_value = "cpu", hide_default_value = true, help = catlora::device::DEVICE_HELP)]
    pub device: String,
    /// The UNet's precision on both engines: fp32, or fp16 / bf16 mixed precision (PyTorch under
    /// autocast, fp16 training with GradScaler; catlora as `train --precision`).
    #[arg(long, value_enum, default_value = "fp32")]
    pub precision: catlora::precision::Precision,
    /// Python of a venv with torch and diffusers, for the comparison column.
    #[arg(long, value_name = "PYTHON")]
    pub torch: Option<PathBuf>,
    /// Benchmark CLIP image embedding instead: images per second for this CLIPModel folder and
    /// for a ViT-B/32-shaped CLIP with random weights (using this folder's tokenizer).
    #[arg(long, value_name = "DIR")]
    pub clip: Option<PathBuf>,
    /// Internal: run one case (JSON) in this process and print its result line.
    #[arg(long = "case", hide = true, value_name = "JSON")]
    pub case: Option<String>,
}

pub fn run(a: BenchArgs) -> Result<()> {
    if let Some(json) = &a.case {
        return bench::child_main(json);
    }
    // Bounds that keep the timing lists and thread pools allocatable.
    const MAX_ITERS: usize = 10_000;
    const MAX_THREADS: usize = 1024;
    if !(1..=MAX_ITERS).contains(&a.iters) {
        bail!("--iters {}: use 1 to {MAX_ITERS}", a.iters);
    }
    if let Some(n) = a.threads.filter(|n| !(1..=MAX_THREADS).contains(n)) {
        bail!("--threads {n}: use 1 to {MAX_THREADS}");
    }
    if a.pixels == 0 || !a.pixels.is_multiple_of(64) || a.pixels > catlora::limits::MAX_GENERATE_SIDE {
        bail!("--pixels {}: give a positive multiple of 64, at most {}", a.pixels, catlora::limits::MAX_GENERATE_SIDE);
    }
    // Refuse an unknown or unbuilt device here, not in every child.
    catlora::device::parse(&a.device)?;
    if let Some(dir) = &a.clip {
        return clip_bench(dir, &a.device);
    }
    let mut cases = Vec::new();
    for dir in &a.unet {
        // A pipeline folder holds the UNet in `unet/`.
        let unet_dir = if dir.join("unet").join("config.json").is_file() { dir.join("unet") } else { dir.clone() };
        if !unet_dir.join("config.json").is_file() {
            bail!("--unet {}: neither a diffusers unet folder nor a pipeline folder (no config.json)", dir.display());
        }
        let mut case = BenchCase::folder(&unet_dir, a.iters)?;
        // Name the case after the folder the user gave, so that several --unet stay apart.
        if let Some(name) = dir.canonicalize().ok().as_deref().and_then(|d| d.file_name()) {
            case.name = name.to_string_lossy().into_owned();
        }
        cases.push(case);
    }
    if a.sd15 || a.unet.is_empty() {
        cases.push(BenchCase::sd15(a.pixels, a.iters));
    }
    for c in &mut cases {
        c.device = a.device.clone();
        c.precision = a.precision;
        c.check_memory(if a.train { 2 } else { 1 })?;
    }
    let names: std::collections::BTreeSet<&str> = cases.iter().map(|c| c.name.as_str()).collect();
    if names.len() != cases.len() {
        bail!("two benchmark cases share a name; give --unet folders with different names");
    }
    // A bare name (`python3`) is looked up on PATH by the OS; only a path can be checked here.
    if let Some(py) = &a.torch
        && py.components().count() > 1
        && !py.exists()
    {
        bail!("--torch {}: no such Python (make one with `bash scripts/setup-bench.sh`)", py.display());
    }
    let opts = BenchOptions { cases, torch_python: a.torch, threads: a.threads };
    if a.train {
        bench::run_train_bench(&opts, &TrainSettings::default())?;
    } else {
        bench::run_unet_bench(&opts)?;
    }
    Ok(())
}

/// Images per second through CLIP's vision tower, batched as scoring does.
fn clip_bench(dir: &std::path::Path, device: &str) -> Result<()> {
    use bench::clip::{embedding_throughput, random_vit_b32};
    use catlora::evaluation::clip::ClipModel;
    let device = catlora::device::parse(device)?;
    println!("{:<32} {:>6} {:>7} {:>10} {:>10}", "CLIP", "batch", "images", "seconds", "images/s");
    let mut fixture = ClipModel::load(dir, &device)?;
    let mut vit = random_vit_b32(dir, &device)?;
    for (name, clip, n) in [(dir.display().to_string(), &mut fixture, 256), ("ViT-B/32, random weights".to_string(), &mut vit, 32)] {
        let t = embedding_throughput(clip, n, 16)?;
        println!("{name:<32} {:>6} {:>7} {:>10.2} {:>10.1}", t.batch, t.images, t.seconds, t.images_per_second());
    }
    Ok(())
}
