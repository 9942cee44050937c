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
//! Every case runs in a fresh child process (`<exe> bench --case <JSON>`, see [`child_main`]) so
//! that one case's peak memory is not another's; the PyTorch side (`bench/torch_unet.py`, embedded
//! in the binary and run with the Python given by `--torch`) does the same per case. Both sides
//! compute the same inputs from a formula (not from their different random generators), so on a
//! checkpoint (the fixture) their output and gradient summaries must agree, which shows that the
//! two columns time the same computation.
use crate::models::config::UNetConfig;
use crate::models::layers::ParamVisitor;
use crate::models::unet::UNet;
use crate::models::weights::Weights;
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
    let mut cmd = Command::new(exe);
    cmd.args(child_args(case)?).stdout(Stdio::piped()).stderr(Stdio::inherit());
    if let Some(n) = threads {
        cmd.env("RAYON_NUM_THREADS", n.to_string());
    }
    let out = cmd.output().with_context(|| format!("cannot run {}", exe.display()))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!("benchmark case `{}` failed in {} ({}): {}", case.name, exe.display(), out.status, stdout.trim());
    }
    parse_result_lines(&stdout)?
        .into_iter()
        .next()
        .with_context(|| format!("benchmark case `{}`: the child printed no JSON result: {}", case.name, stdout.trim()))
}

/// The arguments of the per-case child: `["bench", "--case", <JSON>]`.
pub fn child_args(case: &BenchCase) -> Result<Vec<String>> {
    Ok(vec!["bench".into(), CHILD_CASE_FLAG.into(), serde_json::to_string(case)?])
}

/// The child's whole job: parse the case, run it, print one JSON line on stdout.
pub fn child_main(case_json: &str) -> Result<()> {
    let case: BenchCase = serde_json::from_str(case_json).context("`--case` is not a benchmark case in JSON")?;
    let r = run_case(&case)?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", serde_json::to_string(&r)?)?;
    out.flush()?;
    Ok(())
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
}
