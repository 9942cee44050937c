//! `catlora bench`: UNet speed and memory, measured, next to PyTorch + diffusers on the same
//! machine.
//!
//! For each case (a UNet, a latent size, a batch and a number of text tokens) it measures
//!
//! * the forward pass without a graph (inference),
//! * forward + backward with the gradient flowing to the input latent only (frozen weights: the
//!   part of a LoRA training step that every adapter method pays),
//! * the resident-memory high-water mark (`VmHWM`) of each phase.
//!
//! With `--train` ([`run_train_bench`]) it times one whole training step instead, plain LoRA
//! against CAT, next to PyTorch + peft's LoRA and the CAT authors' formulation
//! (`bench/torch_train.py`), with the ratios the performance targets are stated in.
//!
//! Every case runs in a fresh child process (`<exe> bench --case <JSON>`, see [`child_main`]) so
//! that one case's peak memory is not another's; the PyTorch side (`bench/torch_unet.py`, embedded
//! in the binary and run with the Python given by `--torch`) does the same per case. Both sides
//! compute the same inputs from a formula (not from their different random generators), so on a
//! checkpoint (the fixture) their output and gradient summaries must agree, which shows that the
//! two columns time the same computation.
use crate::adapters::lora::{LoraConfig, PAPER_UNET_TARGETS, Targets, attach_new};
use crate::models::config::UNetConfig;
use crate::models::layers::ParamVisitor;
use crate::models::unet::UNet;
use crate::models::weights::Weights;
use crate::rng::Rng;
use crate::schedulers::{NoiseSchedule, SchedulerConfig};
use crate::training::adamw::{AdamW, AdamWConfig};
use crate::training::objective::{LossTerms, StepInputs, Trainable, cat_gradients, mse};
use anyhow::{Context, Result, bail};
use burn::tensor::{Device, Tensor, TensorData};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

/// The PyTorch counterpart, embedded so that the benchmark runs from any directory.
pub const TORCH_UNET_SCRIPT: &str = include_str!("../bench/torch_unet.py");

/// The hidden argument of the per-case child process: `<exe> bench --case <JSON of BenchCase>`.
pub const CHILD_CASE_FLAG: &str = "--case";

/// The timestep every forward pass uses.
pub const TIMESTEP: f64 = 500.0;

/// Which UNet a case loads.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum BenchModel {
    /// A diffusers `unet` folder (`config.json` + `diffusion_pytorch_model.safetensors`).
    Dir { path: PathBuf },
    /// The diffusers `config.json` contents, with seeded random weights (`Weights::random` here,
    /// PyTorch's default initialisation on the torch side).
    Random { config: serde_json::Value, seed: u64 },
}

/// One benchmark case.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BenchCase {
    pub name: String,
    pub model: BenchModel,
    pub batch: usize,
    /// Side of the square latent (image side / 8 for SD).
    pub latent: usize,
    /// Text tokens in the cross-attention context.
    pub tokens: usize,
    /// Timed iterations per phase, after one warm-up.
    pub iters: usize,
}

/// One engine's numbers for one case: one JSON line on the child's stdout, the same keys from
/// `bench/torch_unet.py`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BenchResult {
    pub case: String,
    /// `catlora (burn 0.22.1, flex)` or `torch X / diffusers Y (...)`.
    pub engine: String,
    /// Compute threads (rayon's pool here, `torch.get_num_threads()` there).
    pub threads: usize,
    pub iters: usize,
    /// Parameter count of the UNet (must agree between engines).
    pub params: u64,
    pub load_s: f64,
    /// Median forward time without a graph.
    pub forward_ms: f64,
    /// Median forward + backward time, gradient to the input latent only.
    pub forward_backward_ms: f64,
    pub forward_all_ms: Vec<f64>,
    pub forward_backward_all_ms: Vec<f64>,
    /// RSS before the model is loaded (runtime, libraries).
    pub rss_base_mb: f64,
    /// RSS once the model is loaded.
    pub rss_loaded_mb: f64,
    /// RSS high-water mark during the forward phase (warm-up and timed runs).
    pub peak_forward_mb: f64,
    /// RSS high-water mark during the forward + backward phase.
    pub peak_backward_mb: f64,
    /// RSS high-water mark over the whole process.
    pub peak_mb: f64,
    /// Whether the per-phase peaks were isolated (`/proc/self/clear_refs` accepted the reset);
    /// if not, each phase's peak includes everything before it.
    pub hwm_reset: bool,
    /// mean |UNet(x)| and mean |d mean(UNet(x)^2) / dx|, to check both engines ran the same thing.
    pub out_mean_abs: f64,
    pub grad_mean_abs: f64,
}

/// The real Stable Diffusion 1.5 UNet configuration (`runwayml/stable-diffusion-v1-5`,
/// `unet/config.json`).
pub fn sd15_unet_config() -> serde_json::Value {
    serde_json::json!({
        "_class_name": "UNet2DConditionModel",
        "act_fn": "silu",
        "attention_head_dim": 8,
        "block_out_channels": [320, 640, 1280, 1280],
        "center_input_sample": false,
        "cross_attention_dim": 768,
        "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
        "downsample_padding": 1,
        "flip_sin_to_cos": true,
        "freq_shift": 0,
        "in_channels": 4,
        "layers_per_block": 2,
        "mid_block_scale_factor": 1,
        "norm_eps": 1e-05,
        "norm_num_groups": 32,
        "out_channels": 4,
        "sample_size": 64,
        "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"]
    })
}

impl BenchCase {
    /// The fixture UNet (a diffusers `unet` folder) at its own `sample_size`, 77 tokens.
    pub fn fixture(unet_dir: &Path, iters: usize) -> Result<Self> {
        let cfg = UNetConfig::load(&unet_dir.join("config.json"))?;
        Ok(Self {
            name: "tiny".into(),
            model: BenchModel::Dir { path: unet_dir.to_path_buf() },
            batch: 1,
            latent: cfg.sample_size.unwrap_or(32),
            tokens: 77,
            iters,
        })
    }

    /// The SD 1.5 UNet with random weights at 256 px: latent 32x32, batch 1, 77 tokens.
    pub fn sd15_256(iters: usize) -> Self {
        Self {
            name: "sd15-256".into(),
            model: BenchModel::Random { config: sd15_unet_config(), seed: 0 },
            batch: 1,
            latent: 32,
            tokens: 77,
            iters,
        }
    }

    /// The two standard cases: the fixture (`iters` 10 unless given) and SD 1.5 at 256 px
    /// (`iters` 3 unless given).
    pub fn standard(fixture_unet: &Path, iters: Option<usize>) -> Result<Vec<Self>> {
        Ok(vec![Self::fixture(fixture_unet, iters.unwrap_or(10))?, Self::sd15_256(iters.unwrap_or(3))])
    }

    fn config(&self) -> Result<UNetConfig> {
        match &self.model {
            BenchModel::Dir { path } => UNetConfig::load(&path.join("config.json")),
            BenchModel::Random { config, .. } => {
                // Through a file so that the config gets the same validation as a real one.
                let dir = scratch_dir()?;
                let p = dir.join(format!("{}-config.json", sanitize(&self.name)));
                std::fs::write(&p, serde_json::to_string_pretty(config)?)?;
                let cfg = UNetConfig::load(&p);
                let _ = std::fs::remove_dir_all(&dir);
                cfg
            }
        }
    }
}

/// Options of a whole benchmark run.
#[derive(Clone, Debug)]
pub struct BenchOptions {
    pub cases: Vec<BenchCase>,
    /// The Python of a venv with torch and diffusers (`scripts/setup-bench.sh` makes
    /// `.venv-bench/bin/python`); `None` runs catlora only.
    pub torch_python: Option<PathBuf>,
    /// The catlora binary the per-case children run; `None` is `std::env::current_exe()`.
    pub exe: Option<PathBuf>,
    /// Compute threads for both engines; `None` leaves each at its default (rayon: all CPUs the
    /// process may use; torch is then set to the same number).
    pub threads: Option<usize>,
}

/// One row of the table: a case, catlora's numbers and (with `--torch`) PyTorch's.
#[derive(Clone, Debug)]
pub struct BenchRow {
    pub catlora: BenchResult,
    pub torch: Option<BenchResult>,
}

/// Runs every case in a child process, then the PyTorch script if asked, and prints the table to
/// stdout. Cases run one after another, never side by side.
pub fn run_bench(opts: &BenchOptions) -> Result<Vec<BenchRow>> {
    let exe = match &opts.exe {
        Some(e) => e.clone(),
        None => std::env::current_exe().context("cannot find the running executable")?,
    };
    let threads = opts.threads.unwrap_or_else(default_threads);
    let load_before = load_average();
    // Each case's two engines run back to back, so that a change in the machine's load between
    // cases does not skew one side of a ratio.
    let mut rows = Vec::new();
    for case in &opts.cases {
        eprintln!("catlora: {} ...", case.name);
        let catlora = run_case_in_child_threads(&exe, case, opts.threads)?;
        let torch = match &opts.torch_python {
            Some(py) => {
                eprintln!("torch: {} ...", case.name);
                run_torch(py, std::slice::from_ref(case), threads)?.into_iter().next()
            }
            None => None,
        };
        rows.push(BenchRow { catlora, torch });
    }
    let mut out = std::io::stdout().lock();
    print_table(&rows, &mut out)?;
    if let (Some(a), Some(b)) = (load_before, load_average()) {
        writeln!(out, "machine load average (1 min): {a:.2} before, {b:.2} after, on {} CPU(s)", std::thread::available_parallelism().map_or(1, |n| n.get()))?;
    }
    Ok(rows)
}

/// Runs one case in a child process `<exe> bench --case <JSON>` and parses the JSON line it
/// prints. The child inherits this process's thread settings.
pub fn run_case_in_child(exe: &Path, case: &BenchCase) -> Result<BenchResult> {
    run_case_in_child_threads(exe, case, None)
}

fn run_case_in_child_threads(exe: &Path, case: &BenchCase, threads: Option<usize>) -> Result<BenchResult> {
    let what = format!("benchmark case `{}`", case.name);
    let stdout = run_child(exe, child_args(case)?, threads, &what)?;
    parse_result_lines(&stdout)?.into_iter().next().with_context(|| format!("{what}: the child printed no JSON result: {}", stdout.trim()))
}

/// Runs `<exe> <args>` (a benchmark child) with `threads` compute threads and returns its stdout.
fn run_child(exe: &Path, args: Vec<String>, threads: Option<usize>, what: &str) -> Result<String> {
    let mut cmd = Command::new(exe);
    cmd.args(args).stdout(Stdio::piped()).stderr(Stdio::inherit());
    if let Some(n) = threads {
        cmd.env("RAYON_NUM_THREADS", n.to_string());
    }
    let out = cmd.output().with_context(|| format!("cannot run {}", exe.display()))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!("{what} failed in {} ({}): {}", exe.display(), out.status, stdout.trim());
    }
    Ok(stdout)
}

/// A child's only output: its result as one JSON line on stdout.
fn print_result_line<T: Serialize>(r: &T) -> Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", serde_json::to_string(r)?)?;
    out.flush()?;
    Ok(())
}

/// The arguments of the per-case child: `["bench", "--case", <JSON>]`.
pub fn child_args(case: &BenchCase) -> Result<Vec<String>> {
    Ok(vec!["bench".into(), CHILD_CASE_FLAG.into(), serde_json::to_string(case)?])
}

/// The child's whole job: parse the case, run it, print one JSON line on stdout.
pub fn child_main(case_json: &str) -> Result<()> {
    let case: BenchCase = serde_json::from_str(case_json).context("`--case` is not a benchmark case in JSON")?;
    print_result_line(&run_case(&case)?)
}

/// Runs one case in this process. Its memory figures are this process's `VmHWM`, with the
/// high-water mark reset between phases where the kernel allows it: run it in a fresh process
/// ([`run_case_in_child`]) for figures that mean something.
pub fn run_case(case: &BenchCase) -> Result<BenchResult> {
    anyhow::ensure!(case.iters >= 1, "case `{}`: iters must be at least 1", case.name);
    let device = Device::flex();
    let rss_base_mb = proc_status_mb("VmRSS")?;
    let mut peak_mb = proc_status_mb("VmHWM")?;

    let t0 = Instant::now();
    let cfg = case.config()?;
    let weights = match &case.model {
        BenchModel::Dir { path } => Weights::open_dir(path, "diffusion_pytorch_model", &device)?,
        BenchModel::Random { seed, .. } => Weights::random(*seed, &device),
    };
    let mut unet = UNet::load(&weights, &cfg).with_context(|| format!("case `{}`: cannot load the UNet", case.name))?;
    drop(weights);
    let load_s = t0.elapsed().as_secs_f64();
    let rss_loaded_mb = proc_status_mb("VmRSS")?;
    let params = count_params(&mut unet);

    let (x, context) = bench_inputs(case, cfg.in_channels, cfg.cross_attention_dim, &device);
    let timesteps = vec![TIMESTEP; case.batch];

    // Forward without a graph.
    peak_mb = peak_mb.max(proc_status_mb("VmHWM")?);
    let reset = reset_hwm();
    let mut out_mean_abs = 0.0;
    let mut forward_all_ms = Vec::with_capacity(case.iters);
    for i in 0..=case.iters {
        let t = Instant::now();
        let y = unet.forward(x.clone(), &timesteps, &context);
        let v = values(y);
        let ms = t.elapsed().as_secs_f64() * 1e3;
        out_mean_abs = mean_abs(&v);
        if i > 0 {
            forward_all_ms.push(ms);
        }
    }
    let peak_forward_mb = proc_status_mb("VmHWM")?;
    peak_mb = peak_mb.max(peak_forward_mb);

    // Forward + backward, gradient to the input only (the weights stay constants).
    let reset = reset_hwm() && reset;
    let mut grad_mean_abs = 0.0;
    let mut forward_backward_all_ms = Vec::with_capacity(case.iters);
    for i in 0..=case.iters {
        let t = Instant::now();
        let xg = x.clone().autodiff().require_grad();
        let y = unet.forward(xg.clone(), &timesteps, &context);
        let loss = (y.clone() * y).mean();
        let grads = loss.backward();
        let g = xg.grad(&grads).context("the input latent received no gradient")?;
        let v = values(g);
        let ms = t.elapsed().as_secs_f64() * 1e3;
        grad_mean_abs = mean_abs(&v);
        if i > 0 {
            forward_backward_all_ms.push(ms);
        }
    }
    let peak_backward_mb = proc_status_mb("VmHWM")?;
    peak_mb = peak_mb.max(peak_backward_mb);
    if !(out_mean_abs.is_finite() && grad_mean_abs.is_finite()) {
        bail!("case `{}`: non-finite output or gradient ({out_mean_abs}, {grad_mean_abs})", case.name);
    }

    Ok(BenchResult {
        case: case.name.clone(),
        engine: "catlora (burn 0.22.1, flex, f32)".into(),
        threads: default_threads(),
        iters: case.iters,
        params,
        load_s,
        forward_ms: median(&forward_all_ms),
        forward_backward_ms: median(&forward_backward_all_ms),
        forward_all_ms,
        forward_backward_all_ms,
        rss_base_mb,
        rss_loaded_mb,
        peak_forward_mb,
        peak_backward_mb,
        peak_mb,
        hwm_reset: reset,
        out_mean_abs,
        grad_mean_abs,
    })
}

/// The latent `[B, C, S, S]` and context `[B, T, D]`, from formulas both engines evaluate in f64
/// and round to f32: `x_i = sin(0.37 i + 0.1)`, `c_j = 0.5 cos(0.13 j)` over the flat index.
pub fn bench_inputs(case: &BenchCase, channels: usize, context_dim: usize, device: &Device) -> (Tensor<4>, Tensor<3>) {
    let xs = [case.batch, channels, case.latent, case.latent];
    let cs = [case.batch, case.tokens, context_dim];
    let xv: Vec<f32> = (0..xs.iter().product::<usize>()).map(|i| (0.37 * i as f64 + 0.1).sin() as f32).collect();
    let cv: Vec<f32> = (0..cs.iter().product::<usize>()).map(|j| (0.5 * (0.13 * j as f64).cos()) as f32).collect();
    (Tensor::from_data(TensorData::new(xv, xs), device), Tensor::from_data(TensorData::new(cv, cs), device))
}

/// Runs `bench/torch_unet.py` (embedded) with `python` on the cases; one result per case.
pub fn run_torch(python: &Path, cases: &[BenchCase], threads: usize) -> Result<Vec<BenchResult>> {
    let dir = scratch_dir()?;
    let script = dir.join("torch_unet.py");
    std::fs::write(&script, TORCH_UNET_SCRIPT).with_context(|| format!("cannot write {}", script.display()))?;
    let out = Command::new(python)
        .arg(&script)
        .arg("--cases")
        .arg(serde_json::to_string(cases)?)
        .arg("--threads")
        .arg(threads.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("cannot run {}", python.display()))?;
    let _ = std::fs::remove_dir_all(&dir);
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!("{} {} failed ({}): {}", python.display(), script.display(), out.status, stdout.trim());
    }
    let results = parse_result_lines(&stdout)?;
    for c in cases {
        if !results.iter().any(|r| r.case == c.name) {
            bail!("the PyTorch benchmark printed no result for case `{}`", c.name);
        }
    }
    Ok(results)
}

/// The JSON result lines of a child's stdout (other lines are ignored).
pub fn parse_result_lines(stdout: &str) -> Result<Vec<BenchResult>> {
    stdout
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).with_context(|| format!("not a benchmark result: {l}")))
        .collect()
}

/// Prints the side-by-side table; the ratio column is torch / catlora (above 1: catlora is faster
/// or smaller).
pub fn print_table(rows: &[BenchRow], out: &mut dyn Write) -> Result<()> {
    let Some(first) = rows.first() else {
        writeln!(out, "no benchmark cases")?;
        return Ok(());
    };
    writeln!(out, "UNet benchmark, CPU, f32; times are the median (and the fastest) of the timed runs after one warm-up.")?;
    writeln!(out, "catlora: {}, {} thread(s)", first.catlora.engine, first.catlora.threads)?;
    if let Some(t) = rows.iter().find_map(|r| r.torch.as_ref()) {
        writeln!(out, "torch:   {}, {} thread(s)", t.engine, t.threads)?;
    }
    writeln!(out, "forward: no graph; fwd+bwd: gradient of mean(UNet(x)^2) to the input latent only (weights frozen).")?;
    writeln!(out, "peak: RSS high-water mark (VmHWM) of the phase, in a fresh process per case and engine;")?;
    writeln!(out, "      'above runtime' subtracts the RSS before the model loads (the interpreter and libraries).")?;
    writeln!(out)?;
    let torch = rows.iter().any(|r| r.torch.is_some());
    if torch {
        writeln!(out, "{:<10} {:<28} {:>12} {:>12} {:>14}", "case", "metric", "catlora", "torch", "torch/catlora")?;
    } else {
        writeln!(out, "{:<10} {:<28} {:>12}", "case", "metric", "catlora")?;
    }
    for r in rows {
        let c = &r.catlora;
        let t = r.torch.as_ref();
        let label = format!("{} x{}", c.case, c.iters);
        let lines: [(&str, fn(&BenchResult) -> f64, usize, bool); 13] = [
            ("forward (ms)", |r| r.forward_ms, 1, true),
            ("fwd+bwd to input (ms)", |r| r.forward_backward_ms, 1, true),
            ("  forward, fastest run", |r| min(&r.forward_all_ms), 1, true),
            ("  fwd+bwd, fastest run", |r| min(&r.forward_backward_all_ms), 1, true),
            ("peak RSS forward (MiB)", |r| r.peak_forward_mb, 0, true),
            ("peak RSS fwd+bwd (MiB)", |r| r.peak_backward_mb, 0, true),
            ("  forward, above runtime", |r| r.peak_forward_mb - r.rss_base_mb, 0, true),
            ("  fwd+bwd, above runtime", |r| r.peak_backward_mb - r.rss_base_mb, 0, true),
            ("RSS after load (MiB)", |r| r.rss_loaded_mb, 0, true),
            ("RSS before load (runtime)", |r| r.rss_base_mb, 0, true),
            ("load (s)", |r| r.load_s, 2, true),
            ("mean |out| (check)", |r| r.out_mean_abs, 6, false),
            ("mean |grad| (check)", |r| r.grad_mean_abs, 9, false),
        ];
        for (i, (name, get, prec, ratio)) in lines.iter().enumerate() {
            let case_col = if i == 0 { label.as_str() } else { "" };
            let ours = get(c);
            let fmt = |v: f64| if *prec > 6 { format!("{v:.3e}") } else { format!("{v:.prec$}", prec = *prec) };
            match t {
                Some(t) => {
                    let theirs = get(t);
                    let ratio = if *ratio && ours > 0.0 { format!("{:.2}", theirs / ours) } else { String::new() };
                    writeln!(out, "{:<10} {:<28} {:>12} {:>12} {:>14}", case_col, name, fmt(ours), fmt(theirs), ratio)?;
                }
                None if torch => writeln!(out, "{:<10} {:<28} {:>12} {:>12}", case_col, name, fmt(ours), "-")?,
                None => writeln!(out, "{:<10} {:<28} {:>12}", case_col, name, fmt(ours))?,
            }
        }
        let params = match t {
            Some(t) if t.params != c.params => format!("{} (torch: {})", c.params, t.params),
            _ => c.params.to_string(),
        };
        writeln!(out, "{:<10} {:<28} {:>12}", "", "parameters", params)?;
        if !c.hwm_reset || t.is_some_and(|t| !t.hwm_reset) {
            writeln!(out, "{:<10} (per-phase peaks not isolated: the kernel refused the VmHWM reset)", "")?;
        }
    }
    Ok(())
}

/// rayon's default pool size: `RAYON_NUM_THREADS`, else every CPU this process may use.
pub fn default_threads() -> usize {
    std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|&n| n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// The 1-minute load average (`/proc/loadavg`): other work on the machine skews the timings.
pub fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg").ok()?.split_whitespace().next()?.parse().ok()
}

/// A field of `/proc/self/status` (`VmRSS`, `VmHWM`), in MiB.
pub fn proc_status_mb(field: &str) -> Result<f64> {
    let text = std::fs::read_to_string("/proc/self/status").context("cannot read /proc/self/status (Linux only)")?;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix(field).and_then(|r| r.strip_prefix(':')) {
            let kb: f64 = rest.trim().trim_end_matches("kB").trim().parse().with_context(|| format!("bad {field} line: {line}"))?;
            return Ok(kb / 1024.0);
        }
    }
    bail!("/proc/self/status has no {field}")
}

/// Resets this process's RSS high-water mark to the current RSS (Linux >= 4.0).
pub fn reset_hwm() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

fn count_params(unet: &mut UNet) -> u64 {
    struct Count(u64);
    impl ParamVisitor for Count {
        fn visit1(&mut self, _: &str, t: &mut Tensor<1>) {
            self.0 += t.dims().iter().product::<usize>() as u64;
        }
        fn visit2(&mut self, _: &str, t: &mut Tensor<2>) {
            self.0 += t.dims().iter().product::<usize>() as u64;
        }
        fn visit4(&mut self, _: &str, t: &mut Tensor<4>) {
            self.0 += t.dims().iter().product::<usize>() as u64;
        }
    }
    let mut c = Count(0);
    unet.visit(&mut c);
    c.0
}

fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().convert::<f32>().try_to_vec::<f32>().expect("f32 values")
}

fn mean_abs(v: &[f32]) -> f64 {
    v.iter().map(|x| x.abs() as f64).sum::<f64>() / v.len().max(1) as f64
}

fn min(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::NAN, f64::min)
}

pub fn median(v: &[f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let n = s.len();
    if n % 2 == 1 { s[n / 2] } else { (s[n / 2 - 1] + s[n / 2]) / 2.0 }
}

fn scratch_dir() -> Result<PathBuf> {
    let d = std::env::temp_dir().join(format!("catlora-bench-{}", std::process::id()));
    std::fs::create_dir_all(&d).with_context(|| format!("cannot create {}", d.display()))?;
    Ok(d)
}

fn sanitize(s: &str) -> String {
    s.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' }).collect()
}

// ------------------------------------------------------------------------------------------------
// `catlora bench --train`: one training step, plain LoRA against CAT, next to PyTorch + peft.
// ------------------------------------------------------------------------------------------------

/// The PyTorch training-step counterpart (`bench/torch_train.py`, which imports
/// `bench/torch_unet.py`: both are written side by side when it runs).
pub const TORCH_TRAIN_SCRIPT: &str = include_str!("../bench/torch_train.py");

/// The hidden argument of the per-case training child: `<exe> bench --train-case <JSON>`.
pub const CHILD_TRAIN_CASE_FLAG: &str = "--train-case";

/// The (integer) training timestep of every benchmark step, on both engines.
pub const TRAIN_TIMESTEP: usize = 500;

/// What one training step computes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TrainMethod {
    /// `mse(UNet_lora(z_t, trigger), ε)`: one forward and one backward pass.
    Lora,
    /// catlora's CAT (`cat_gradients`): the base prediction on the same UNet with the adapter's
    /// gate at 0 and no graph, then the two adapter passes, each with its own backward pass.
    Cat,
    /// The CAT authors' formulation (PyTorch only): a second, frozen UNet copy for the base
    /// prediction, three forward passes, one backward through the two adapter passes.
    CatAuthors,
}

impl TrainMethod {
    pub fn label(self) -> &'static str {
        match self {
            TrainMethod::Lora => "LoRA",
            TrainMethod::Cat => "CAT",
            TrainMethod::CatAuthors => "CAT (authors')",
        }
    }
}

/// The training settings both engines use: the paper's LoRA (rank 1 on to_q / to_k / to_v /
/// to_out.0, alpha 1), AdamW (β 0.9 / 0.999, weight decay 1e-2, eps 1e-8) at `lr`, λ for CAT.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TrainSettings {
    pub rank: usize,
    pub lambda: f64,
    pub lr: f64,
}

impl Default for TrainSettings {
    fn default() -> Self {
        Self { rank: 1, lambda: 1.0, lr: 1e-4 }
    }
}

/// One (case, method) of the training benchmark: the JSON of the per-case child.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TrainCase {
    pub case: BenchCase,
    pub method: TrainMethod,
    pub settings: TrainSettings,
}

/// One engine's numbers for one (case, method): one JSON line on the child's stdout, the same
/// keys from `bench/torch_train.py`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TrainResult {
    pub case: String,
    pub method: TrainMethod,
    pub engine: String,
    pub threads: usize,
    pub iters: usize,
    /// Frozen parameters of the (one) UNet.
    pub params: u64,
    /// LoRA parameters AdamW updates.
    pub trainable_params: u64,
    pub rank: usize,
    /// 0 for plain LoRA.
    pub lambda: f64,
    pub lr: f64,
    /// UNet forward passes per step (1 for LoRA, 3 for either CAT).
    pub forwards: usize,
    /// Loading the one UNet (not the authors' second copy, not the adapter).
    pub load_s: f64,
    /// Median step time over the timed steps (after one warm-up step).
    pub step_ms: f64,
    pub step_all_ms: Vec<f64>,
    /// RSS before the model is loaded (runtime, libraries).
    pub rss_base_mb: f64,
    /// RSS once the one UNet is loaded, before the adapter, the optimizer and (torch CAT) the
    /// second UNet copy: the baseline of "peak above load".
    pub rss_loaded_mb: f64,
    /// RSS high-water mark up to that point (loading).
    pub peak_load_mb: f64,
    /// RSS high-water mark from there on: adapter, optimizer, the authors' UNet copy, warm-up and
    /// timed steps.
    pub peak_mb: f64,
    /// Whether the high-water mark could be reset after loading; if not, `peak_mb` is the whole
    /// process's.
    pub hwm_reset: bool,
    /// The total loss of the first (warm-up) step: every LoRA `up` starts at zero, so on a
    /// checkpoint (the fixture) both engines' first-step losses must agree.
    pub first_loss: f64,
    /// The last step's total loss and its terms.
    pub loss: f64,
    pub loss_diffusion: f64,
    pub loss_cat: f64,
    /// catlora CAT only: the median time of the step's parts measured on their own after the
    /// timed steps (base forward with the gate at 0 and no graph; one adapter pass: forward,
    /// backward and gradients read), to show what the CAT step's time is made of.
    #[serde(default)]
    pub base_forward_ms: Option<f64>,
    #[serde(default)]
    pub adapter_pass_ms: Option<f64>,
}

impl TrainResult {
    /// The training phase's peak above the RSS after the UNet load.
    pub fn peak_above_load_mb(&self) -> f64 {
        self.peak_mb - self.rss_loaded_mb
    }
    /// The whole process's RSS high-water mark.
    pub fn peak_process_mb(&self) -> f64 {
        self.peak_mb.max(self.peak_load_mb)
    }
}

/// The noise schedule of SD 1.x training (`scaled_linear`, 0.00085 .. 0.012, 1000 steps): the
/// fixture's scheduler and SD 1.5's; `DDPMScheduler` with the same numbers on the torch side.
pub fn train_noise_schedule() -> NoiseSchedule {
    let cfg = SchedulerConfig::from_json(r#"{"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear"}"#)
        .expect("a valid scheduler config");
    NoiseSchedule::new(&cfg)
}

/// The training step's fixed inputs, from formulas both engines evaluate in f64 and round to f32:
/// the clean latent `x0` and the trigger caption's states are [`bench_inputs`]; the noise is
/// `cos(0.23 i + 0.7)` and the plain caption's states `0.5 sin(0.11 j + 0.3)`.
pub fn train_inputs(case: &BenchCase, channels: usize, context_dim: usize, device: &Device) -> (Tensor<4>, Tensor<4>, Tensor<3>, Tensor<3>) {
    let (x0, trigger) = bench_inputs(case, channels, context_dim, device);
    let xs = [case.batch, channels, case.latent, case.latent];
    let cs = [case.batch, case.tokens, context_dim];
    let nv: Vec<f32> = (0..xs.iter().product::<usize>()).map(|i| (0.23 * i as f64 + 0.7).cos() as f32).collect();
    let pv: Vec<f32> = (0..cs.iter().product::<usize>()).map(|j| (0.5 * (0.11 * j as f64 + 0.3).sin()) as f32).collect();
    let noise = Tensor::from_data(TensorData::new(nv, xs), device);
    let plain = Tensor::from_data(TensorData::new(pv, cs), device);
    (x0, noise, trigger, plain)
}

/// The arguments of the per-case training child: `["bench", "--train-case", <JSON>]`.
pub fn train_child_args(tc: &TrainCase) -> Result<Vec<String>> {
    Ok(vec!["bench".into(), CHILD_TRAIN_CASE_FLAG.into(), serde_json::to_string(tc)?])
}

/// The training child's whole job: parse the case, run it, print one JSON line on stdout.
pub fn train_child_main(case_json: &str) -> Result<()> {
    let tc: TrainCase = serde_json::from_str(case_json).context("`--train-case` is not a training benchmark case in JSON")?;
    print_result_line(&run_train_case(&tc)?)
}

/// Runs one training case in a child process `<exe> bench --train-case <JSON>`.
pub fn run_train_case_in_child(exe: &Path, tc: &TrainCase, threads: Option<usize>) -> Result<TrainResult> {
    let what = format!("training case `{}` / {}", tc.case.name, tc.method.label());
    let stdout = run_child(exe, train_child_args(tc)?, threads, &what)?;
    parse_train_lines(&stdout)?.into_iter().next().with_context(|| format!("{what}: the child printed no JSON result: {}", stdout.trim()))
}

/// The JSON result lines of a training child's stdout (other lines are ignored).
pub fn parse_train_lines(stdout: &str) -> Result<Vec<TrainResult>> {
    stdout
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).with_context(|| format!("not a training benchmark result: {l}")))
        .collect()
}

/// Runs one training case in this process: what a training step of `catlora train` does, with
/// fixed inputs. Load the UNet (the baseline of the memory figures), attach a new LoRA
/// (`attach_new`), then per step: `z_t` from `x0`, the noise and the timestep (`add_noise`),
/// `Trainable::install` (fresh autodiff leaves), `cat_gradients` (λ = 0 for plain LoRA: one
/// forward and one backward; λ > 0: the base forward with the gate at 0 and no graph, then the
/// two adapter passes with their backward passes, gradients read to the host and summed) and
/// `AdamW::update`. The memory figures are this process's: run it in a fresh process
/// ([`run_train_case_in_child`]) for figures that mean something.
pub fn run_train_case(tc: &TrainCase) -> Result<TrainResult> {
    let case = &tc.case;
    let st = &tc.settings;
    anyhow::ensure!(case.iters >= 1, "case `{}`: iters must be at least 1", case.name);
    anyhow::ensure!(st.rank >= 1, "rank must be at least 1");
    let lambda = match tc.method {
        TrainMethod::Lora => 0.0,
        TrainMethod::Cat => {
            anyhow::ensure!(st.lambda != 0.0, "CAT with λ = 0 is plain LoRA");
            st.lambda
        }
        TrainMethod::CatAuthors => bail!("the authors' CAT formulation runs in PyTorch only (bench/torch_train.py)"),
    };
    let device = Device::flex();
    let rss_base_mb = proc_status_mb("VmRSS")?;

    let t0 = Instant::now();
    let cfg = case.config()?;
    let weights = match &case.model {
        BenchModel::Dir { path } => Weights::open_dir(path, "diffusion_pytorch_model", &device)?,
        BenchModel::Random { seed, .. } => Weights::random(*seed, &device),
    };
    let mut unet = UNet::load(&weights, &cfg).with_context(|| format!("case `{}`: cannot load the UNet", case.name))?;
    drop(weights);
    let load_s = t0.elapsed().as_secs_f64();
    let rss_loaded_mb = proc_status_mb("VmRSS")?;
    let peak_load_mb = proc_status_mb("VmHWM")?;
    let params = count_params(&mut unet);
    let hwm_reset = reset_hwm();

    let lora = LoraConfig {
        rank: st.rank,
        alpha: 1.0,
        unet_targets: PAPER_UNET_TARGETS.iter().map(|s| s.to_string()).collect(),
        text_encoder_targets: Vec::new(),
    };
    let mut rng = Rng::new(0);
    let adapter = attach_new(&mut Targets { unet: &mut unet, text_encoder: None }, &lora, &mut rng)?;
    let mut trainable = Trainable::from_adapter(&mut Targets { unet: &mut unet, text_encoder: None }, &adapter);
    let trainable_params = trainable.sizes().iter().sum::<usize>() as u64;
    let mut opt = AdamW::new(AdamWConfig::default(), &trainable.sizes());

    let schedule = train_noise_schedule();
    let (x0, noise, trigger, plain) = train_inputs(case, cfg.in_channels, cfg.cross_attention_dim, &device);
    let t_int = vec![TRAIN_TIMESTEP; case.batch];
    let t_f64: Vec<f64> = t_int.iter().map(|&t| t as f64).collect();
    let cond_trigger = || trigger.clone();
    let cond_plain = || plain.clone();

    let mut step_all_ms = Vec::with_capacity(case.iters);
    let mut first_loss = f64::NAN;
    let mut last = LossTerms::default();
    for i in 0..=case.iters {
        let t = Instant::now();
        let zt = schedule.add_noise(x0.clone(), noise.clone(), &t_int);
        let leaves = trainable.install(&mut Targets { unet: &mut unet, text_encoder: None }, &device, true);
        let inputs = StepInputs {
            zt,
            timesteps: t_f64.clone(),
            target: noise.clone(),
            cond_trigger: &cond_trigger,
            cond_plain: Some(&cond_plain),
            sample_weights: None,
            prior: None,
        };
        let (terms, grads) = cat_gradients(&unet, &adapter.gate, &leaves, &trainable.names, &inputs, lambda)?;
        opt.update(&mut trainable.values, &grads, st.lr);
        drop(leaves);
        let ms = t.elapsed().as_secs_f64() * 1e3;
        if i == 0 {
            first_loss = terms.total;
        } else {
            step_all_ms.push(ms);
        }
        last = terms;
    }
    let peak_mb = proc_status_mb("VmHWM")?;
    if !(first_loss.is_finite() && last.total.is_finite()) {
        bail!("case `{}`: non-finite loss ({first_loss}, {})", case.name, last.total);
    }

    // What a CAT step is made of, each part timed on its own (after the peak was read).
    let (mut base_forward_ms, mut adapter_pass_ms) = (None, None);
    if tc.method == TrainMethod::Cat {
        let runs = case.iters.min(3);
        let (mut base, mut pass) = (Vec::new(), Vec::new());
        for _ in 0..runs {
            let zt = schedule.add_noise(x0.clone(), noise.clone(), &t_int);
            let t = Instant::now();
            let w = adapter.gate.get();
            adapter.gate.set(0.0);
            let y = unet.forward(zt.clone(), &t_f64, &plain).without_autodiff();
            adapter.gate.set(w);
            let _ = values(y);
            base.push(t.elapsed().as_secs_f64() * 1e3);

            let t = Instant::now();
            let leaves = trainable.install(&mut Targets { unet: &mut unet, text_encoder: None }, &device, true);
            let loss = mse(unet.forward(zt, &t_f64, &trigger), noise.clone(), None);
            let grads = loss.backward();
            for l in &leaves {
                let g = l.grad(&grads).context("an adapter parameter received no gradient")?;
                let _ = values(g);
            }
            drop(grads);
            drop(leaves);
            pass.push(t.elapsed().as_secs_f64() * 1e3);
        }
        base_forward_ms = Some(median(&base));
        adapter_pass_ms = Some(median(&pass));
    }

    Ok(TrainResult {
        case: case.name.clone(),
        method: tc.method,
        engine: "catlora (burn 0.22.1, flex, f32)".into(),
        threads: default_threads(),
        iters: case.iters,
        params,
        trainable_params,
        rank: st.rank,
        lambda,
        lr: st.lr,
        forwards: if lambda != 0.0 { 3 } else { 1 },
        load_s,
        step_ms: median(&step_all_ms),
        step_all_ms,
        rss_base_mb,
        rss_loaded_mb,
        peak_load_mb,
        peak_mb,
        hwm_reset,
        first_loss,
        loss: last.total,
        loss_diffusion: last.diffusion,
        loss_cat: last.cat,
        base_forward_ms,
        adapter_pass_ms,
    })
}

/// Runs `bench/torch_train.py` (embedded, with `bench/torch_unet.py` beside it) with `python` on
/// the cases, plain LoRA then the authors' CAT, each (case, method) in its own process.
pub fn run_torch_train(python: &Path, cases: &[BenchCase], settings: &TrainSettings, threads: usize) -> Result<Vec<TrainResult>> {
    let dir = scratch_dir()?;
    let script = dir.join("torch_train.py");
    std::fs::write(&script, TORCH_TRAIN_SCRIPT).with_context(|| format!("cannot write {}", script.display()))?;
    std::fs::write(dir.join("torch_unet.py"), TORCH_UNET_SCRIPT).with_context(|| format!("cannot write into {}", dir.display()))?;
    let out = Command::new(python)
        .arg(&script)
        .arg("--cases")
        .arg(serde_json::to_string(cases)?)
        .arg("--methods")
        .arg("lora,cat_authors")
        .arg("--threads")
        .arg(threads.to_string())
        .arg("--rank")
        .arg(settings.rank.to_string())
        .arg("--lam")
        .arg(settings.lambda.to_string())
        .arg("--lr")
        .arg(settings.lr.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("cannot run {}", python.display()));
    let _ = std::fs::remove_dir_all(&dir);
    let out = out?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!("{} torch_train.py failed ({}): {}", python.display(), out.status, stdout.trim());
    }
    let results = parse_train_lines(&stdout)?;
    for c in cases {
        for m in [TrainMethod::Lora, TrainMethod::CatAuthors] {
            if !results.iter().any(|r| r.case == c.name && r.method == m) {
                bail!("the PyTorch training benchmark printed no result for case `{}` / {}", c.name, m.label());
            }
        }
    }
    Ok(results)
}

/// One case of the training table: catlora's LoRA and CAT, and (with `--torch`) PyTorch's LoRA
/// and the authors' CAT.
#[derive(Clone, Debug)]
pub struct TrainRow {
    pub lora: TrainResult,
    pub cat: TrainResult,
    pub torch_lora: Option<TrainResult>,
    pub torch_cat: Option<TrainResult>,
    /// 1-minute load average before and after this case's runs.
    pub load: (Option<f64>, Option<f64>),
}

/// Runs every case, catlora's LoRA and CAT then PyTorch's LoRA and the authors' CAT (each in a
/// fresh process, one after another, never side by side), and prints the table to stdout.
pub fn run_train_bench(opts: &BenchOptions, settings: &TrainSettings) -> Result<Vec<TrainRow>> {
    let exe = match &opts.exe {
        Some(e) => e.clone(),
        None => std::env::current_exe().context("cannot find the running executable")?,
    };
    let threads = opts.threads.unwrap_or_else(default_threads);
    let mut rows = Vec::new();
    for case in &opts.cases {
        let before = load_average();
        let run = |method: TrainMethod| {
            eprintln!("catlora: {} / {} ...", case.name, method.label());
            run_train_case_in_child(&exe, &TrainCase { case: case.clone(), method, settings: settings.clone() }, opts.threads)
        };
        let lora = run(TrainMethod::Lora)?;
        let cat = run(TrainMethod::Cat)?;
        let (mut torch_lora, mut torch_cat) = (None, None);
        if let Some(py) = &opts.torch_python {
            eprintln!("torch: {} / LoRA, CAT (authors') ...", case.name);
            for r in run_torch_train(py, std::slice::from_ref(case), settings, threads)? {
                match r.method {
                    TrainMethod::Lora => torch_lora = Some(r),
                    TrainMethod::CatAuthors => torch_cat = Some(r),
                    TrainMethod::Cat => {}
                }
            }
        }
        rows.push(TrainRow { lora, cat, torch_lora, torch_cat, load: (before, load_average()) });
    }
    let mut out = std::io::stdout().lock();
    print_train_table(&rows, settings, &mut out)?;
    Ok(rows)
}

/// The issue's targets, each as (what, value, target, met).
pub fn train_ratios(r: &TrainRow) -> Vec<(String, f64, String, Option<bool>)> {
    let mut v = Vec::new();
    let le = |x: f64, t: f64| Some(x <= t);
    let ge = |x: f64, t: f64| Some(x >= t);
    let step = r.cat.step_ms / r.lora.step_ms;
    v.push(("CAT step / LoRA step (catlora)".to_string(), step, "<= 1.6".to_string(), le(step, 1.6)));
    let peak = r.cat.peak_above_load_mb() / r.lora.peak_above_load_mb();
    v.push(("CAT peak / LoRA peak, above load (catlora)".into(), peak, "<= 1.1".into(), le(peak, 1.1)));
    let peak_abs = r.cat.peak_mb / r.lora.peak_mb;
    v.push(("  the same, absolute peaks".into(), peak_abs, "(<= 1.1)".into(), le(peak_abs, 1.1)));
    if let Some(tc) = &r.torch_cat {
        let p = r.cat.peak_above_load_mb() / tc.peak_above_load_mb();
        v.push(("catlora CAT peak / torch CAT (authors') peak, above load".into(), p, "<= 0.6".into(), le(p, 0.6)));
        let pa = r.cat.peak_mb / tc.peak_mb;
        v.push(("  the same, absolute peaks".into(), pa, "(<= 0.6)".into(), le(pa, 0.6)));
        let s = tc.step_ms / r.cat.step_ms;
        v.push(("torch CAT (authors') step / catlora CAT step".into(), s, ">= 1".into(), ge(s, 1.0)));
        if let Some(tl) = &r.torch_lora {
            v.push(("(context) torch CAT (authors') step / torch LoRA step".into(), tc.step_ms / tl.step_ms, String::new(), None));
            v.push(("(context) torch LoRA step / catlora LoRA step".into(), tl.step_ms / r.lora.step_ms, String::new(), None));
            v.push((
                "(context) torch CAT / LoRA peak, above load".into(),
                tc.peak_above_load_mb() / tl.peak_above_load_mb(),
                String::new(),
                None,
            ));
        }
    }
    v
}

/// Prints the training table: one column per engine and method, then the ratios the issue's
/// targets are stated in.
pub fn print_train_table(rows: &[TrainRow], settings: &TrainSettings, out: &mut dyn Write) -> Result<()> {
    let Some(first) = rows.first() else {
        writeln!(out, "no benchmark cases")?;
        return Ok(());
    };
    writeln!(out, "Training-step benchmark, CPU, f32: LoRA rank {} (alpha 1) on to_q/to_k/to_v/to_out.0 of every attention,", settings.rank)?;
    writeln!(out, "AdamW lr {:e} (weight decay 1e-2) over the LoRA parameters, CAT lambda = {}, timestep {TRAIN_TIMESTEP}, random text states.", settings.lr, settings.lambda)?;
    writeln!(out, "One step: z_t = add_noise(x0, noise, t) from fixed inputs, the forward and backward passes, the gradients, the AdamW update.")?;
    writeln!(out, "  catlora LoRA: Trainable::install + cat_gradients(lambda 0) + AdamW::update (1 forward, 1 backward)")?;
    writeln!(out, "  catlora CAT:  the same with lambda {}: base forward on the same UNet with the gate at 0 and no graph, then 2 adapter passes", settings.lambda)?;
    writeln!(out, "                each with its own backward (3 forwards, 2 backwards)")?;
    writeln!(out, "  torch LoRA:   peft add_adapter, zero_grad + forward + backward + AdamW.step")?;
    writeln!(out, "  torch CAT (authors'): a second frozen UNet copy for the base prediction (no_grad), 3 forwards, 1 backward through 2")?;
    writeln!(out, "Step times: median of the timed steps after one warm-up step. Each (case, engine, method) in a fresh process.")?;
    writeln!(out, "Peaks: RSS high-water mark (VmHWM). 'above load' = the peak after loading the one UNet minus the RSS then; the")?;
    writeln!(out, "adapter, the optimizer, the authors' second UNet copy and the steps count; the loaded UNet itself does not.")?;
    writeln!(out, "catlora: {}, {} thread(s)", first.lora.engine, first.lora.threads)?;
    if let Some(t) = rows.iter().find_map(|r| r.torch_lora.as_ref()) {
        writeln!(out, "torch:   {}, {} thread(s)", t.engine, t.threads)?;
    }
    writeln!(out)?;
    let torch = rows.iter().any(|r| r.torch_lora.is_some() || r.torch_cat.is_some());
    let heads: &[&str] = if torch { &["catlora LoRA", "catlora CAT", "torch LoRA", "torch CAT(auth)"] } else { &["catlora LoRA", "catlora CAT"] };
    write!(out, "{:<10} {:<30}", "case", "metric")?;
    for h in heads {
        write!(out, " {h:>15}")?;
    }
    writeln!(out)?;
    for r in rows {
        let cols: Vec<Option<&TrainResult>> = if torch {
            vec![Some(&r.lora), Some(&r.cat), r.torch_lora.as_ref(), r.torch_cat.as_ref()]
        } else {
            vec![Some(&r.lora), Some(&r.cat)]
        };
        let label = format!("{} x{}", r.lora.case, r.lora.iters);
        let lines: [(&str, fn(&TrainResult) -> f64, usize); 13] = [
            ("step (ms)", |r| r.step_ms, 1),
            ("  fastest step (ms)", |r| min(&r.step_all_ms), 1),
            ("UNet forwards per step", |r| r.forwards as f64, 0),
            ("peak above load (MiB)", |r| r.peak_above_load_mb(), 0),
            ("peak RSS, training (MiB)", |r| r.peak_mb, 0),
            ("peak RSS, whole process (MiB)", |r| r.peak_process_mb(), 0),
            ("RSS after UNet load (MiB)", |r| r.rss_loaded_mb, 0),
            ("RSS before load (runtime)", |r| r.rss_base_mb, 0),
            ("load (s)", |r| r.load_s, 2),
            ("first-step loss (check)", |r| r.first_loss, 7),
            ("last-step loss", |r| r.loss, 7),
            ("trainable parameters", |r| r.trainable_params as f64, 0),
            ("frozen parameters", |r| r.params as f64, 0),
        ];
        for (i, (name, get, prec)) in lines.iter().enumerate() {
            write!(out, "{:<10} {:<30}", if i == 0 { label.as_str() } else { "" }, name)?;
            for c in &cols {
                match c {
                    Some(c) => write!(out, " {:>15}", format!("{:.prec$}", get(c), prec = *prec))?,
                    None => write!(out, " {:>15}", "-")?,
                }
            }
            writeln!(out)?;
        }
        if let (Some(b), Some(p)) = (r.cat.base_forward_ms, r.cat.adapter_pass_ms) {
            let rest = r.cat.step_ms - b - 2.0 * p;
            writeln!(out, "{:<10} catlora CAT step, its parts timed alone: base forward (gate 0, no graph) {b:.1} ms + 2 x adapter pass", "")?;
            writeln!(out, "{:<10}   (forward + backward + gradients) {p:.1} ms = {:.1} ms; step {:.1} ms, rest (install, AdamW, other) {rest:.1} ms", "", b + 2.0 * p, r.cat.step_ms)?;
            let l = r.lora.step_ms;
            writeln!(out, "{:<10}   CAT - LoRA = {:.1} ms: the base forward is {:.0}%, the second adapter pass {:.0}% of it", "", r.cat.step_ms - l, 100.0 * b / (r.cat.step_ms - l), 100.0 * p / (r.cat.step_ms - l))?;
        }
        if [Some(&r.lora), Some(&r.cat), r.torch_lora.as_ref(), r.torch_cat.as_ref()].iter().flatten().any(|c| !c.hwm_reset) {
            writeln!(out, "{:<10} (the kernel refused the VmHWM reset: 'training' peaks include loading)", "")?;
        }
        writeln!(out)?;
        writeln!(out, "{:<10} {:<58} {:>8} {:>9}", "", "ratio", "value", "target")?;
        for (what, v, target, met) in train_ratios(r) {
            let verdict = match met {
                Some(true) => "met",
                Some(false) => "MISSED",
                None => "",
            };
            writeln!(out, "{:<10} {:<58} {:>8.3} {:>9} {}", "", what, v, target, verdict)?;
        }
        if let (Some(a), Some(b)) = r.load {
            writeln!(out, "{:<10} machine load average (1 min): {a:.2} before, {b:.2} after this case, on {} CPU(s)", "", std::thread::available_parallelism().map_or(1, |n| n.get()))?;
        }
        writeln!(out)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sd15_config_parses_and_median() {
        let case = BenchCase::sd15_256(1);
        let cfg = case.config().unwrap();
        assert_eq!(cfg.block_out_channels, vec![320, 640, 1280, 1280]);
        assert_eq!(cfg.cross_attention_dim, 768);
        assert_eq!(cfg.heads().unwrap(), vec![8; 4]);
        let json = serde_json::to_string(&case).unwrap();
        let back: BenchCase = serde_json::from_str(&json).unwrap();
        assert_eq!(back.name, "sd15-256");
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
    }

    /// A tiny UNet with random weights (two levels, cross-attention on the first).
    fn tiny_train_case(iters: usize) -> BenchCase {
        BenchCase {
            name: "unit".into(),
            model: BenchModel::Random {
                config: serde_json::json!({
                    "_class_name": "UNet2DConditionModel",
                    "act_fn": "silu",
                    "attention_head_dim": 4,
                    "block_out_channels": [32, 64],
                    "cross_attention_dim": 16,
                    "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
                    "in_channels": 4,
                    "layers_per_block": 1,
                    "norm_num_groups": 8,
                    "out_channels": 4,
                    "sample_size": 8,
                    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"]
                }),
                seed: 3,
            },
            batch: 1,
            latent: 8,
            tokens: 5,
            iters,
        }
    }

    #[test]
    fn tiny_training_step_cases_run_and_give_sane_numbers() {
        let settings = TrainSettings::default();
        let run = |method| run_train_case(&TrainCase { case: tiny_train_case(2), method, settings: settings.clone() }).unwrap();
        let (lora, cat) = (run(TrainMethod::Lora), run(TrainMethod::Cat));
        for (r, method, forwards, lambda) in [(&lora, TrainMethod::Lora, 1, 0.0), (&cat, TrainMethod::Cat, 3, 1.0)] {
            assert_eq!(r.method, method);
            assert_eq!((r.forwards, r.lambda, r.rank, r.iters), (forwards, lambda, 1, 2));
            assert_eq!(r.step_all_ms.len(), 2);
            assert!(r.step_all_ms.iter().all(|&ms| ms.is_finite() && ms > 0.0), "{:?}", r.step_all_ms);
            assert!(r.step_ms >= min(&r.step_all_ms) && r.load_s >= 0.0);
            assert!(r.params > 0 && r.trainable_params > 0);
            assert!(r.rss_base_mb > 0.0 && r.rss_loaded_mb > 0.0 && r.peak_mb > 0.0 && r.peak_process_mb() >= r.peak_mb);
            assert!(r.first_loss.is_finite() && r.first_loss > 0.0 && r.loss.is_finite() && r.loss_diffusion > 0.0);
            assert!(r.loss_cat.is_finite() && r.loss_cat >= 0.0);
            assert!(r.engine.starts_with("catlora"));
        }
        // rank 1 on every to_q/to_k/to_v/to_out.0: both methods train the same parameters.
        assert_eq!(lora.trainable_params, cat.trainable_params);
        assert_eq!(lora.params, cat.params);
        // Every `up` starts at zero: the first step's CAT term is zero and both losses agree.
        assert!((lora.first_loss - cat.first_loss).abs() <= 1e-6 * lora.first_loss, "{} vs {}", lora.first_loss, cat.first_loss);
        assert_eq!(lora.loss_cat, 0.0);
        // Only the CAT child times its parts.
        assert!(lora.base_forward_ms.is_none() && lora.adapter_pass_ms.is_none());
        assert!(cat.base_forward_ms.is_some_and(|ms| ms > 0.0) && cat.adapter_pass_ms.is_some_and(|ms| ms > 0.0));

        // The result line round-trips, and the table shows the ratios the targets are stated in.
        let back = parse_train_lines(&format!("noise\n{}\n", serde_json::to_string(&cat).unwrap())).unwrap();
        assert_eq!(back.len(), 1);
        assert_eq!(back[0].method, TrainMethod::Cat);
        let row = TrainRow { lora, cat, torch_lora: None, torch_cat: None, load: (Some(1.0), Some(1.0)) };
        let mut text = Vec::new();
        print_train_table(std::slice::from_ref(&row), &settings, &mut text).unwrap();
        let text = String::from_utf8(text).unwrap();
        assert!(text.contains("CAT step / LoRA step (catlora)") && text.contains("CAT peak / LoRA peak, above load"), "{text}");
        assert!(text.contains("base forward (gate 0, no graph)"), "{text}");
        // The authors' formulation is PyTorch's column only.
        let e = run_train_case(&TrainCase { case: tiny_train_case(1), method: TrainMethod::CatAuthors, settings }).unwrap_err();
        assert!(e.to_string().contains("PyTorch"), "{e}");
    }

    #[test]
    fn torch_train_result_lines_parse() {
        // The keys bench/torch_train.py prints (no breakdown fields).
        let line = r#"{"case": "tiny", "method": "cat_authors", "engine": "torch", "threads": 2, "iters": 3, "params": 10, "trainable_params": 4, "rank": 1, "lambda": 1.0, "lr": 0.0001, "forwards": 3, "load_s": 0.1, "step_ms": 5.0, "step_all_ms": [5.0, 6.0, 4.0], "rss_base_mb": 300.0, "rss_loaded_mb": 310.0, "peak_load_mb": 311.0, "peak_mb": 330.0, "hwm_reset": true, "first_loss": 1.0, "loss": 1.0, "loss_diffusion": 1.0, "loss_cat": 0.0}"#;
        let r = &parse_train_lines(line).unwrap()[0];
        assert_eq!(r.method, TrainMethod::CatAuthors);
        assert_eq!(r.peak_above_load_mb(), 20.0);
        assert_eq!(r.base_forward_ms, None);
    }
}
