//! One whole training step, plain LoRA against CAT, next to PyTorch + peft's LoRA, the CAT
//! authors' formulation (a second UNet copy) and PyTorch with the adapter switched off for the
//! base pass (catlora's algorithm), with step time and peak memory.
use super::case::{BenchCase, TRAIN_TIMESTEP, train_inputs, train_noise_schedule};
use super::machine::{Idle, IdleWatch, default_threads, median, min, proc_status_mb, reset_hwm};
use super::targets;
use super::unet::{count_params, engine_name};
use super::{BenchOptions, Job, child, torch};
use crate::adapters::lora::{LoraConfig, PAPER_UNET_TARGETS, Targets, attach_new};
use crate::rng::Rng;
use crate::training::adamw::{AdamW, AdamWConfig};
use crate::training::loss_scale::LossScale;
use crate::training::objective::{LossTerms, Preserve, PreserveTerm, StepInputs, cat_gradients, mse};
use crate::training::params::global_norm;
use crate::training::params::{AdapterParams, Params, host};
use anyhow::{Result, bail};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::time::Instant;

/// What one training step computes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TrainMethod {
    /// `mse(UNet_lora(z_t, trigger), ε)`: one forward and one backward pass.
    Lora,
    /// catlora's CAT (`cat_gradients`): the base prediction on the same UNet with the adapter
    /// switched off and no graph, then the two adapter passes, each with its own backward pass
    /// (`--batch-passes=false`).
    Cat,
    /// The same with the two adapter passes as one batch of two and one backward pass (`train`'s
    /// default; `Cat` is `--batch-passes=false`).
    CatBatched,
    /// The CAT authors' formulation (PyTorch only): a second, frozen UNet copy for the base
    /// prediction, three forward passes, one backward through the two adapter passes.
    CatAuthors,
    /// PyTorch with the adapter switched off for the base pass (no second copy), three forward
    /// passes, one backward through the two adapter passes.
    CatOff,
}

impl TrainMethod {
    pub fn label(self) -> &'static str {
        match self {
            TrainMethod::Lora => "LoRA",
            TrainMethod::Cat => "CAT",
            TrainMethod::CatBatched => "CAT (batched passes)",
            TrainMethod::CatAuthors => "CAT (authors')",
            TrainMethod::CatOff => "CAT (adapter off)",
        }
    }

    /// The method's name in `bench/torch_train.py`.
    pub fn torch_name(self) -> Result<&'static str> {
        Ok(match self {
            TrainMethod::Lora => "lora",
            TrainMethod::CatAuthors => "cat_authors",
            TrainMethod::CatOff => "cat_off",
            TrainMethod::Cat | TrainMethod::CatBatched => {
                bail!("catlora's CAT step has no PyTorch script; PyTorch's same algorithm is `cat_off`")
            }
        })
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
    /// UNet forward passes per step (1 for LoRA, 3 for every CAT).
    pub forwards: usize,
    /// Loading the one UNet (not the authors' second copy, not the adapter).
    pub load_s: f64,
    /// Median step time over the timed steps (after one warm-up step).
    pub step_ms: f64,
    pub step_all_ms: Vec<f64>,
    /// RSS before the model is loaded (runtime, libraries).
    pub rss_base_mb: f64,
    /// RSS once the one UNet is loaded, before the adapter, the optimizer and (authors' CAT)
    /// the second UNet copy: the baseline of "peak above load".
    pub rss_loaded_mb: f64,
    /// RSS high-water mark up to that point (loading).
    pub peak_load_mb: f64,
    /// RSS high-water mark from there on: adapter, optimizer, the authors' UNet copy, warm-up
    /// and timed steps.
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
    /// timed steps (base forward with the adapter off and no graph; one adapter pass: forward,
    /// backward and gradients), to show what the CAT step's time is made of.
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

/// Runs one training case in this process: what a training step of `catlora train` does, with
/// fixed inputs. Load the UNet (the baseline of the memory figures), attach a new LoRA, then per
/// step: `z_t` from `x0`, the noise and the timestep, `Params::install` (fresh autodiff leaves
/// from the device values), `cat_gradients` (λ = 0 for plain LoRA: one forward and one backward;
/// λ > 0: the base forward with the adapter off and no graph, then the two adapter passes with
/// their backward passes, gradients summed on the device) and `AdamW::update` on the device.
/// Only the scalar losses cross to the host. The memory figures are this process's: run it in a
/// fresh process for figures that mean something.
pub fn run_train_case(tc: &TrainCase) -> Result<TrainResult> {
    let case = &tc.case;
    let st = &tc.settings;
    anyhow::ensure!(case.iters >= 1, "case `{}`: iters must be at least 1", case.name);
    anyhow::ensure!(st.rank >= 1, "rank must be at least 1");
    let lambda = match tc.method {
        TrainMethod::Lora => 0.0,
        TrainMethod::Cat | TrainMethod::CatBatched => {
            anyhow::ensure!(st.lambda != 0.0, "CAT with λ = 0 is plain LoRA");
            st.lambda
        }
        TrainMethod::CatAuthors | TrainMethod::CatOff => bail!("{} runs in PyTorch only (bench/torch_train.py)", tc.method.label()),
    };
    let device = case.device()?;
    let rss_base_mb = proc_status_mb("VmRSS")?;

    let t0 = Instant::now();
    let (mut unet, cfg) = case.load_unet()?;
    let load_s = t0.elapsed().as_secs_f64();
    let rss_loaded_mb = proc_status_mb("VmRSS")?;
    let peak_load_mb = proc_status_mb("VmHWM")?;
    let params_frozen = count_params(&mut unet);
    let hwm_reset = reset_hwm();

    let lora = LoraConfig {
        rank: st.rank,
        alpha: 1.0,
        unet_targets: PAPER_UNET_TARGETS.iter().map(|s| s.to_string()).collect(),
        text_encoder_targets: Vec::new(),
    };
    let adapter = attach_new(&mut Targets { unet: &mut unet, text_encoder: None }, &lora, &mut Rng::new(0))?;
    let mut params =
        Params::collect(&mut AdapterParams { targets: &mut Targets { unet: &mut unet, text_encoder: None }, adapter: &adapter });
    let mut opt = AdamW::new(AdamWConfig::default(), params.zeros());

    let schedule = train_noise_schedule();
    let (x0, noise, trigger, plain) = train_inputs(case, cfg.in_channels, cfg.cross_attention_dim, &device);
    let t_int = vec![TRAIN_TIMESTEP; case.batch];
    let t_f64: Vec<f64> = t_int.iter().map(|&t| t as f64).collect();
    let cond_trigger = || trigger.clone();
    let cond_plain = || plain.clone();

    let mut loss_scale = LossScale::for_precision(case.precision);
    let mut step_all_ms = Vec::with_capacity(case.iters);
    let mut first_loss = f64::NAN;
    let mut last = LossTerms::default();
    for i in 0..=case.iters {
        let t = Instant::now();
        let zt = schedule.add_noise(x0.clone(), noise.clone(), &t_int);
        let leaves =
            params.install(&mut AdapterParams { targets: &mut Targets { unet: &mut unet, text_encoder: None }, adapter: &adapter }, true);
        let inputs = StepInputs {
            zt,
            timesteps: t_f64.clone(),
            target: noise.clone(),
            cond_trigger: &cond_trigger,
            preserve: if lambda != 0.0 {
                vec![PreserveTerm { target: Preserve::TriggerLess, cond: &cond_plain, weight: lambda }]
            } else {
                Vec::new()
            },
            dco_beta: None,
            sample_weights: None,
            prior: None,
            batch_passes: tc.method == TrainMethod::CatBatched,
            loss_scale: loss_scale.map_or(1.0, |s| s.scale),
        };
        let (terms, grads) = cat_gradients(&unet, &adapter.gate, &params, &leaves, &inputs)?;
        // fp16's overflow check reads the gradient norm, as `catlora train` does.
        if loss_scale.as_mut().is_none_or(|s| s.update(global_norm(&grads).is_finite())) {
            opt.update(&mut params.values, &grads, st.lr);
        }
        drop(leaves);
        // The step is done when its last result exists (backends may run asynchronously).
        let _ = host(&params.values[params.values.len() - 1]);
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
        let (mut base, mut pass) = (Vec::new(), Vec::new());
        for _ in 0..case.iters {
            let zt = schedule.add_noise(x0.clone(), noise.clone(), &t_int);
            let t = Instant::now();
            let y = {
                let _off = adapter.gate.switched_off();
                unet.forward(zt.clone(), &t_f64, &plain).without_autodiff()
            };
            let _ = y.into_data();
            base.push(t.elapsed().as_secs_f64() * 1e3);

            let t = Instant::now();
            let leaves = params
                .install(&mut AdapterParams { targets: &mut Targets { unet: &mut unet, text_encoder: None }, adapter: &adapter }, true);
            let loss = mse(unet.forward(zt, &t_f64, &trigger), noise.clone(), None);
            let g = params.gradients(&leaves, &loss.backward())?;
            let _ = host(&g[g.len() - 1]);
            pass.push(t.elapsed().as_secs_f64() * 1e3);
        }
        base_forward_ms = Some(median(&base));
        adapter_pass_ms = Some(median(&pass));
    }

    Ok(TrainResult {
        case: case.name.clone(),
        method: tc.method,
        engine: engine_name(case),
        threads: default_threads(),
        iters: case.iters,
        params: params_frozen,
        trainable_params: params.count() as u64,
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

/// One case of the training table: catlora's LoRA and CAT, and (with `--torch`) PyTorch's LoRA,
/// the authors' CAT and the adapter-off CAT.
#[derive(Clone, Debug)]
pub struct TrainRow {
    pub lora: TrainResult,
    pub cat: TrainResult,
    pub cat_batched: TrainResult,
    pub torch_lora: Option<TrainResult>,
    pub torch_cat_authors: Option<TrainResult>,
    pub torch_cat_off: Option<TrainResult>,
    pub idle: Idle,
}

/// Runs every case: catlora's LoRA and CAT, then PyTorch's three methods (each in a fresh
/// process, one after another, never side by side), and prints the table to stdout.
pub fn run_train_bench(opts: &BenchOptions, settings: &TrainSettings) -> Result<Vec<TrainRow>> {
    let exe = child::current_exe()?;
    let threads = opts.threads.unwrap_or_else(default_threads);
    let mut rows = Vec::new();
    for case in &opts.cases {
        let watch = IdleWatch::start();
        let run = |method: TrainMethod| -> Result<TrainResult> {
            eprintln!("catlora ({}): {} / {} ...", case.device, case.name, method.label());
            let job = Job::Train(TrainCase { case: case.clone(), method, settings: settings.clone() });
            child::run_in_child(&exe, &job, opts.threads, &format!("training case `{}` / {}", case.name, method.label()))
        };
        let lora = run(TrainMethod::Lora)?;
        let cat = run(TrainMethod::Cat)?;
        let cat_batched = run(TrainMethod::CatBatched)?;
        let mut row =
            TrainRow { lora, cat, cat_batched, torch_lora: None, torch_cat_authors: None, torch_cat_off: None, idle: Idle::default() };
        if let Some(py) = &opts.torch_python {
            eprintln!("torch: {} / LoRA, CAT (authors'), CAT (adapter off) ...", case.name);
            let methods = [TrainMethod::Lora, TrainMethod::CatAuthors, TrainMethod::CatOff];
            for r in torch::run_train(py, case, &methods, settings, threads)? {
                match r.method {
                    TrainMethod::Lora => row.torch_lora = Some(r),
                    TrainMethod::CatAuthors => row.torch_cat_authors = Some(r),
                    TrainMethod::CatOff => row.torch_cat_off = Some(r),
                    TrainMethod::Cat | TrainMethod::CatBatched => {}
                }
            }
        }
        row.idle = watch.finish();
        rows.push(row);
    }
    print_train_table(&rows, settings, &mut std::io::stdout().lock())?;
    Ok(rows)
}

/// Prints the training table: one column per engine and method, then the target ratios.
pub fn print_train_table(rows: &[TrainRow], settings: &TrainSettings, out: &mut dyn Write) -> Result<()> {
    let Some(first) = rows.first() else {
        writeln!(out, "no benchmark cases")?;
        return Ok(());
    };
    writeln!(out, "Training-step benchmark, f32: LoRA rank {} (alpha 1) on to_q/to_k/to_v/to_out.0 of every attention,", settings.rank)?;
    writeln!(
        out,
        "AdamW lr {:e} (weight decay 1e-2) over the LoRA parameters, CAT lambda = {}, timestep {TRAIN_TIMESTEP}, random text states.",
        settings.lr, settings.lambda
    )?;
    writeln!(
        out,
        "One step: z_t = add_noise(x0, noise, t) from fixed inputs, the forward and backward passes, the gradients, the AdamW update."
    )?;
    writeln!(out, "  catlora LoRA: Params::install + cat_gradients(lambda 0) + AdamW::update on the device (1 forward, 1 backward)")?;
    writeln!(
        out,
        "  catlora CAT:  the same with lambda {}: base forward on the same UNet with the adapter off and no graph, then 2 adapter",
        settings.lambda
    )?;
    writeln!(out, "                passes, each with its own backward (3 forwards, 2 backwards; `train --batch-passes=false`)")?;
    writeln!(out, "  catlora CAT(b): the default: the same base forward, then the 2 adapter passes as one batch of two, 1 backward")?;
    writeln!(out, "  torch LoRA:   peft add_adapter, zero_grad + forward + backward + AdamW.step")?;
    writeln!(
        out,
        "  torch CAT(off): the adapter switched off (disable_adapters, no_grad) for the base pass, 3 forwards, 1 backward through 2"
    )?;
    writeln!(
        out,
        "  torch CAT(auth): the authors' second frozen UNet copy for the base prediction (no_grad), 3 forwards, 1 backward through 2"
    )?;
    writeln!(out, "Step times: median of the timed steps after one warm-up step. Each (case, engine, method) in a fresh process.")?;
    writeln!(out, "Peaks: RSS high-water mark (VmHWM). 'above load' = the peak after loading the one UNet minus the RSS then; the")?;
    writeln!(out, "adapter, the optimizer, the authors' second UNet copy and the steps count; the loaded UNet itself does not.")?;
    writeln!(out, "catlora: {}, {} thread(s)", first.lora.engine, first.lora.threads)?;
    if let Some(t) = rows.iter().find_map(|r| r.torch_lora.as_ref()) {
        writeln!(out, "torch:   {}, {} thread(s){}", t.engine, t.threads, super::machine::malloc_settings())?;
    }
    writeln!(out)?;
    let torch = rows.iter().any(|r| r.torch_lora.is_some());
    let heads: &[&str] = if torch {
        &["catlora LoRA", "catlora CAT", "catlora CAT(b)", "torch LoRA", "torch CAT(off)", "torch CAT(auth)"]
    } else {
        &["catlora LoRA", "catlora CAT", "catlora CAT(b)"]
    };
    write!(out, "{:<10} {:<30}", "case", "metric")?;
    for h in heads {
        write!(out, " {h:>15}")?;
    }
    writeln!(out)?;
    for r in rows {
        let mut cols = vec![Some(&r.lora), Some(&r.cat), Some(&r.cat_batched)];
        if torch {
            cols.extend([r.torch_lora.as_ref(), r.torch_cat_off.as_ref(), r.torch_cat_authors.as_ref()]);
        }
        let label = format!("{} x{}", r.lora.case, r.lora.iters);
        type Line = (&'static str, fn(&TrainResult) -> f64, usize);
        let lines: [Line; 13] = [
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
            writeln!(
                out,
                "{:<10} catlora CAT step, its parts timed alone: base forward (adapter off, no graph) {b:.1} ms + 2 x adapter",
                ""
            )?;
            writeln!(
                out,
                "{:<10}   pass (forward + backward + gradients) {p:.1} ms = {:.1} ms; step {:.1} ms, rest (install, AdamW, other) {rest:.1} ms",
                "",
                b + 2.0 * p,
                r.cat.step_ms
            )?;
        }
        if cols.iter().flatten().any(|c| !c.hwm_reset) {
            writeln!(out, "{:<10} (the kernel refused the VmHWM reset: 'training' peaks include loading)", "")?;
        }
        writeln!(out, "{:<10} {}", "", r.idle.describe())?;
        targets::print_verdicts(&targets::train_verdicts(r), out)?;
        writeln!(out)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::case::BenchModel;
    use super::super::child::parse_lines;
    use super::*;

    /// A tiny UNet with random weights (two levels, cross-attention on the first).
    fn tiny_case(iters: usize) -> BenchCase {
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
            device: "cpu".into(),
            batch: 1,
            latent: 8,
            tokens: 5,
            iters,
            precision: crate::precision::Precision::Fp32,
        }
    }

    #[test]
    fn half_precision_steps_run_with_the_label_and_nearly_the_loss_of_float32() {
        use crate::precision::Precision;
        let settings = TrainSettings::default();
        let run = |precision| {
            let case = BenchCase { precision, ..tiny_case(1) };
            run_train_case(&TrainCase { case, method: TrainMethod::Cat, settings: settings.clone() }).unwrap()
        };
        let f32_loss = run(Precision::Fp32).first_loss;
        for (precision, tol) in [(Precision::Fp16, 1e-2), (Precision::Bf16, 5e-2)] {
            let r = run(precision);
            assert!(r.engine.ends_with(&format!("{})", precision.name())), "{}", r.engine);
            assert!((r.first_loss - f32_loss).abs() <= tol * f32_loss, "{precision:?}: {} vs {f32_loss}", r.first_loss);
        }
    }

    #[test]
    fn tiny_training_step_cases_run_and_give_sane_numbers() {
        let settings = TrainSettings::default();
        let run = |method| run_train_case(&TrainCase { case: tiny_case(2), method, settings: settings.clone() }).unwrap();
        let (lora, cat, cat_batched) = (run(TrainMethod::Lora), run(TrainMethod::Cat), run(TrainMethod::CatBatched));
        let cases = [(&lora, TrainMethod::Lora, 1, 0.0), (&cat, TrainMethod::Cat, 3, 1.0), (&cat_batched, TrainMethod::CatBatched, 3, 1.0)];
        for (r, method, forwards, lambda) in cases {
            assert_eq!(r.method, method);
            assert_eq!((r.forwards, r.lambda, r.rank, r.iters), (forwards, lambda, 1, 2));
            assert_eq!(r.step_all_ms.len(), 2);
            assert!(r.step_all_ms.iter().all(|&ms| ms.is_finite() && ms > 0.0), "{:?}", r.step_all_ms);
            assert!(r.step_ms >= min(&r.step_all_ms) && r.load_s >= 0.0);
            assert!(r.params > 0 && r.trainable_params > 0);
            assert!(r.rss_base_mb > 0.0 && r.rss_loaded_mb > 0.0 && r.peak_mb > 0.0 && r.peak_process_mb() >= r.peak_mb);
            assert!(r.first_loss.is_finite() && r.first_loss > 0.0 && r.loss.is_finite() && r.loss_diffusion > 0.0);
            assert!(r.loss_cat.is_finite() && r.loss_cat >= 0.0);
            assert!(r.engine.starts_with("catlora") && r.engine.contains("cpu"));
        }
        // rank 1 on every to_q/to_k/to_v/to_out.0: both methods train the same parameters.
        assert_eq!(lora.trainable_params, cat.trainable_params);
        assert_eq!(lora.params, cat.params);
        // Every `up` starts at zero: the first step's CAT term is zero and both losses agree.
        assert!((lora.first_loss - cat.first_loss).abs() <= 1e-6 * lora.first_loss, "{} vs {}", lora.first_loss, cat.first_loss);
        assert!((cat_batched.loss - cat.loss).abs() <= 1e-5 * cat.loss, "{} vs {}", cat_batched.loss, cat.loss);
        assert_eq!(lora.loss_cat, 0.0);
        // Only the CAT child times its parts.
        assert!(lora.base_forward_ms.is_none() && lora.adapter_pass_ms.is_none());
        assert!(cat.base_forward_ms.is_some_and(|ms| ms > 0.0) && cat.adapter_pass_ms.is_some_and(|ms| ms > 0.0));

        // The result line round-trips, and the table shows the target ratios.
        let back: Vec<TrainResult> = parse_lines(&format!("noise\n{}\n", serde_json::to_string(&cat).unwrap())).unwrap();
        assert_eq!((back.len(), back[0].method), (1, TrainMethod::Cat));
        let idle = Idle { load_before: Some(0.0), load_after: Some(0.0), others: Some(0.0) };
        let row = TrainRow { lora, cat, cat_batched, torch_lora: None, torch_cat_authors: None, torch_cat_off: None, idle };
        let mut text = Vec::new();
        print_train_table(std::slice::from_ref(&row), &settings, &mut text).unwrap();
        let text = String::from_utf8(text).unwrap();
        assert!(text.contains("CAT step / LoRA step (catlora)") && text.contains("CAT peak / LoRA peak"), "{text}");
        assert!(text.contains("base forward (adapter off, no graph)") && text.contains("load average"), "{text}");
        // PyTorch's formulations are PyTorch's columns only.
        for m in [TrainMethod::CatAuthors, TrainMethod::CatOff] {
            let e = run_train_case(&TrainCase { case: tiny_case(1), method: m, settings: settings.clone() }).unwrap_err();
            assert!(e.to_string().contains("PyTorch"), "{e}");
        }
    }

    #[test]
    fn torch_train_result_lines_parse() {
        // The keys bench/torch_train.py prints (no breakdown fields).
        let line = r#"{"case": "tiny", "method": "cat_off", "engine": "torch", "threads": 2, "iters": 3, "params": 10, "trainable_params": 4, "rank": 1, "lambda": 1.0, "lr": 0.0001, "forwards": 3, "load_s": 0.1, "step_ms": 5.0, "step_all_ms": [5.0, 6.0, 4.0], "rss_base_mb": 300.0, "rss_loaded_mb": 310.0, "peak_load_mb": 311.0, "peak_mb": 330.0, "hwm_reset": true, "first_loss": 1.0, "loss": 1.0, "loss_diffusion": 1.0, "loss_cat": 0.0}"#;
        let r = &parse_lines::<TrainResult>(line).unwrap()[0];
        assert_eq!(r.method, TrainMethod::CatOff);
        assert_eq!(r.peak_above_load_mb(), 20.0);
        assert_eq!(r.base_forward_ms, None);
    }
}
