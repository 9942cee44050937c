//! The UNet passes: the forward pass without a graph (inference), forward + backward with the
//! gradient flowing to the input latent only (frozen weights: the part of a LoRA training step
//! that every adapter method pays), and the resident-memory high-water mark of each.
use super::case::{BenchCase, TIMESTEP, unet_inputs};
use super::machine::{Idle, IdleWatch, default_threads, mean_abs, median, min, proc_status_mb, reset_hwm};
use super::targets;
use super::{BenchOptions, Job, child, torch};
use crate::models::unet::UNet;
use crate::precision::Precision;
use anyhow::{Context, Result, bail};
use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::time::Instant;

/// One engine's numbers for one case: one JSON line on the child's stdout, the same keys from
/// `bench/torch_unet.py`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BenchResult {
    pub case: String,
    /// `catlora (burn 0.22.1, cpu, f32)` or `torch X / diffusers Y (...)`.
    pub engine: String,
    /// Compute threads (rayon's pool or libtorch's here, `torch.get_num_threads()` there).
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

pub fn engine_name(case: &BenchCase) -> String {
    let precision = match case.precision {
        Precision::Fp32 => "f32",
        p => p.name(),
    };
    let malloc = if crate::device::keeps_freed_memory(&case.device) { ", malloc keeping freed memory" } else { "" };
    format!("catlora (burn 0.22.1, {}, {precision}{malloc})", case.device)
}

/// The parameter count of a UNet.
pub fn count_params(unet: &mut UNet) -> u64 {
    crate::training::params::Params::collect(unet).count() as u64
}

fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().convert::<f32>().as_slice::<f32>().expect("f32 values").to_vec()
}

/// Runs one case in this process. Its memory figures are this process's `VmHWM`, with the
/// high-water mark reset between phases where the kernel allows it: run it in a fresh process
/// for figures that mean something.
pub fn run_case(case: &BenchCase) -> Result<BenchResult> {
    anyhow::ensure!(case.iters >= 1, "case `{}`: iters must be at least 1", case.name);
    let rss_base_mb = proc_status_mb("VmRSS")?;
    let mut peak_mb = proc_status_mb("VmHWM")?;

    let t0 = Instant::now();
    let (mut unet, cfg) = case.load_unet()?;
    let load_s = t0.elapsed().as_secs_f64();
    let rss_loaded_mb = proc_status_mb("VmRSS")?;
    let params = count_params(&mut unet);

    let (x, context) = unet_inputs(case, cfg.in_channels, cfg.cross_attention_dim, &case.device()?);
    let timesteps = vec![TIMESTEP; case.batch];

    // Forward without a graph.
    peak_mb = peak_mb.max(proc_status_mb("VmHWM")?);
    let reset = reset_hwm();
    let mut out_mean_abs = 0.0;
    let mut forward_all_ms = Vec::with_capacity(case.iters);
    for i in 0..=case.iters {
        let t = Instant::now();
        let v = values(unet.forward(x.clone(), &timesteps, &context));
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
        let grads = (y.clone() * y).mean().backward();
        let v = values(xg.grad(&grads).context("the input latent received no gradient")?);
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
        engine: engine_name(case),
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

/// One row of the table: a case, catlora's numbers and (with `--torch`) PyTorch's, and how idle
/// the machine was while both ran.
#[derive(Clone, Debug)]
pub struct BenchRow {
    pub catlora: BenchResult,
    pub torch: Option<BenchResult>,
    pub idle: Idle,
}

/// Runs every case (catlora in a child process, then PyTorch, back to back, never side by side)
/// and prints the table to stdout.
pub fn run_unet_bench(opts: &BenchOptions) -> Result<Vec<BenchRow>> {
    let exe = child::current_exe()?;
    let threads = opts.threads.unwrap_or_else(default_threads);
    let mut rows = Vec::new();
    for case in &opts.cases {
        let watch = IdleWatch::start();
        eprintln!("catlora ({}): {} ...", case.device, case.name);
        let catlora = child::run_in_child(&exe, &Job::Unet(case.clone()), opts.threads, &format!("benchmark case `{}`", case.name))?;
        let torch = match &opts.torch_python {
            Some(py) => {
                eprintln!("torch: {} ...", case.name);
                Some(torch::run_unet(py, case, threads)?)
            }
            None => None,
        };
        rows.push(BenchRow { catlora, torch, idle: watch.finish() });
    }
    print_table(&rows, &mut std::io::stdout().lock())?;
    Ok(rows)
}

/// Prints the side-by-side table; the ratio column is catlora / torch (below 1: catlora is
/// faster or smaller). Ratios measured while the machine was not idle are withheld.
pub fn print_table(rows: &[BenchRow], out: &mut dyn Write) -> Result<()> {
    let Some(first) = rows.first() else {
        writeln!(out, "no benchmark cases")?;
        return Ok(());
    };
    writeln!(out, "UNet benchmark, f32; times are the median (and the fastest) of the timed runs after one warm-up.")?;
    writeln!(out, "catlora: {}, {} thread(s)", first.catlora.engine, first.catlora.threads)?;
    if let Some(t) = rows.iter().find_map(|r| r.torch.as_ref()) {
        writeln!(out, "torch:   {}, {} thread(s){}", t.engine, t.threads, super::machine::malloc_settings())?;
    }
    writeln!(out, "forward: no graph; fwd+bwd: gradient of mean(UNet(x)^2) to the input latent only (weights frozen).")?;
    writeln!(out, "peak: RSS high-water mark (VmHWM) of the phase, in a fresh process per case and engine;")?;
    writeln!(out, "      'above runtime' subtracts the RSS before the model loads (the interpreter and libraries).")?;
    writeln!(out)?;
    let torch = rows.iter().any(|r| r.torch.is_some());
    if torch {
        writeln!(out, "{:<10} {:<28} {:>12} {:>12} {:>14}", "case", "metric", "catlora", "torch", "catlora/torch")?;
    } else {
        writeln!(out, "{:<10} {:<28} {:>12}", "case", "metric", "catlora")?;
    }
    for r in rows {
        let c = &r.catlora;
        let t = r.torch.as_ref();
        let label = format!("{} x{}", c.case, c.iters);
        type Line = (&'static str, fn(&BenchResult) -> f64, usize, bool);
        let lines: [Line; 13] = [
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
                    let ratio = match (*ratio && theirs > 0.0, r.idle.is_idle()) {
                        (true, true) => format!("{:.2}", ours / theirs),
                        (true, false) => "(not idle)".into(),
                        (false, _) => String::new(),
                    };
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
        writeln!(out, "{:<10} {}", "", r.idle.describe())?;
        if let Some(t) = t {
            targets::print_verdicts(&targets::unet_verdicts(&c.engine, c, t, &r.idle), out)?;
        }
        writeln!(out)?;
    }
    Ok(())
}
