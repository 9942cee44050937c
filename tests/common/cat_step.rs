//! One CAT step from a fixture against peft's loss terms and gradients, on any device.
use super::*;
use catlora::adapters::lora::{Targets, attach_file};
use catlora::adapters::lora_file::{self, LoraFile};
use catlora::models::clip_text::ClipTextModel;
use catlora::models::config::{ClipTextConfig, UNetConfig};
use catlora::models::layers::Walk;
use catlora::models::unet::UNet;
use catlora::models::weights::{Weights, transpose};
use catlora::precision::Precision;
use catlora::training::objective::{Preserve, PreserveTerm, StepInputs, cat_gradients};
use catlora::training::params::{AdapterParams, Params, host};

pub const FORMATS: [&str; 2] = ["lora-kohya/lora.safetensors", "lora-diffusers/pytorch_lora_weights.safetensors"];

pub fn read_lora(unet: &mut UNet, rel: &str) -> LoraFile {
    let known = Targets { unet, text_encoder: None }.known_modules();
    lora_file::read(&fixtures().join(rel), &known).unwrap()
}

/// One CAT step from a fixture: the LoRA `lora` (PEFT file) on the UNet of `model`, the reference
/// tensors `cat_*` of `refs` (the target is ε, or the velocity for a v-prediction model) and the
/// gradient of every LoRA tensor in `grads`, with the passes one by one and as one batch; the
/// batched step runs twice and must repeat its gradients bit for bit.
///
/// `preserve` names the preservation target that carries the trigger-less captions: every target
/// runs the same term with its own captions, so each is checked against peft's CAT term.
pub fn check_cat_step(dev: &Device, model: &str, refs: &str, lora: &str, grads_file: &str, target: &str, preserve: Preserve) {
    check_cat_step_at(dev, model, refs, lora, grads_file, target, preserve, Precision::Fp32)
}

/// The tolerances a precision earns: (loss terms, gradients) relative, and the loss scale. Float32's
/// are the fixtures README's; half precision's are twice the error peft makes on this step with
/// the UNet cast to that type and the LoRA in float32 (fp16 with GradScaler's 2^16 loss scale;
/// torch 2.9.0 CPU, diffusers 0.42.1, peft 0.21.2; `scripts/fixtures/half_precision_errors.py`): loss terms 6.2e-4 (fp16) and 5.6e-3 (bf16)
/// relative, the worst of 256 gradients 3.2e-2 and 1.3e-1.
pub fn cat_step_tolerances(precision: Precision) -> (f64, f32, f32) {
    match precision {
        Precision::Fp32 => (1e-4, 1e-3, 1.0),
        Precision::Fp16 => (1.5e-3, 6.5e-2, 65536.0),
        Precision::Bf16 => (1.2e-2, 0.27, 1.0),
    }
}

/// [`check_cat_step`] with the UNet in `precision`.
#[allow(clippy::too_many_arguments)]
pub fn check_cat_step_at(
    dev: &Device,
    model: &str,
    refs: &str,
    lora: &str,
    grads_file: &str,
    target: &str,
    preserve: Preserve,
    precision: Precision,
) {
    let (loss_tol, grad_tol, loss_scale) = cat_step_tolerances(precision);
    let r = catlora::io::safetensors::SafeTensorsFile::open(&fixtures().join(refs)).unwrap();
    let load_unet = || {
        let dir = fixtures().join(model).join("unet");
        let cfg = UNetConfig::load(&dir.join("config.json")).unwrap();
        UNet::load(&Weights::open_dir(&dir, "diffusion_pytorch_model", dev).unwrap(), &cfg).unwrap()
    };
    let te = {
        let dir = fixtures().join(model).join("text_encoder");
        let cfg = ClipTextConfig::load(&dir.join("config.json")).unwrap();
        ClipTextModel::load(&Weights::open_dir(&dir, "model", dev).unwrap(), &cfg, None).unwrap()
    };
    let mut unet = load_unet();
    unet.set_precision(precision, dev).unwrap();
    let file = read_lora(&mut unet, lora);
    let mut targets = Targets { unet: &mut unet, text_encoder: None };
    let adapter = attach_file(&mut targets, &file, 1.0, "fixture").unwrap();
    let params = Params::collect(&mut AdapterParams { targets: &mut targets, adapter: &adapter });
    let (_, plain) = r.i64("cat_plain_ids").unwrap();
    let plain: Vec<u32> = plain.iter().map(|&i| i as u32).collect();
    let cond_plain = te.forward(&[plain], 1);
    let hidden = tensor::<3>(&r, "text_hidden", dev);
    let (_, t) = r.i64("cat_t").unwrap();
    // catlora's own forward process gives the reference z_t and target from x0 and ε.
    let sched = catlora::schedulers::load(&fixtures().join(model).join("scheduler/scheduler_config.json")).unwrap();
    let noise = catlora::schedulers::NoiseSchedule::new(&sched);
    let (x0, eps) = (tensor::<4>(&r, "cat_x0", dev), tensor::<4>(&r, "cat_eps", dev));
    let ts = [t[0] as usize];
    assert_close(&format!("{model} z_t"), &values(noise.add_noise(x0.clone(), eps.clone(), &ts)), &r.f32("cat_zt").unwrap().1, 1e-6);
    let own_target = match sched.prediction_type {
        catlora::schedulers::PredictionType::VPrediction => noise.velocity(x0, eps, &ts),
        _ => eps,
    };
    assert_close(&format!("{model} target"), &values(own_target), &r.f32(target).unwrap().1, 1e-6);
    let cond_trigger = hidden.narrow(0, 0, 1);
    let (ct, cp) = (|| cond_trigger.clone(), || cond_plain.clone());
    let lambda = r.f32("cat_lambda").unwrap().1[0] as f64;
    // The passes one by one and as one batch: both against the same references.
    for batch_passes in [false, true] {
        let mut step = || {
            let leaves = params
                .install(&mut AdapterParams { targets: &mut Targets { unet: &mut unet, text_encoder: None }, adapter: &adapter }, true);
            let inputs = StepInputs {
                zt: tensor(&r, "cat_zt", dev),
                timesteps: vec![t[0] as f64],
                target: tensor(&r, target, dev),
                cond_trigger: &ct,
                preserve: vec![PreserveTerm { target: preserve, cond: &cp, weight: lambda }],
                dco_beta: None,
                sample_weights: None,
                prior: None,
                batch_passes,
                loss_scale,
            };
            cat_gradients(&unet, &adapter.gate, &params, &leaves, &inputs).unwrap()
        };
        let (terms, grads) = step();
        // The default mode's step again gives the same bits (a kernel adding partial sums with
        // atomics, in the order its threads finish, would not).
        if batch_passes {
            let (_, again) = step();
            for ((name, a), b) in params.names.iter().zip(&grads).zip(&again) {
                let bits = |t| host(t).iter().map(|v: &f32| v.to_bits()).collect::<Vec<_>>();
                assert!(bits(a) == bits(b), "{model} {precision:?} {name}: a second step gave other bits");
            }
        }
        // The term's value, under the name of whichever target carried the trigger-less captions.
        let mut terms = terms;
        terms.cat = *terms.preserve_mut(preserve);
        for (name, got) in [("cat_loss_diffusion", terms.diffusion), ("cat_loss_cat", terms.cat), ("cat_loss_total", terms.total)] {
            let want = r.f32(name).unwrap().1[0] as f64;
            assert!(
                (got - want).abs() <= loss_tol * want.abs(),
                "{model} {precision:?} {name} (batched passes: {batch_passes}): {got} vs {want}"
            );
        }

        let g = catlora::io::safetensors::SafeTensorsFile::open(&fixtures().join(grads_file)).unwrap();
        assert_eq!(g.names().count(), grads.len(), "one reference gradient per adapter tensor");
        let mut worst = 0f32;
        for ((name, got), shape) in params.names.iter().zip(&grads).zip(&params.shapes) {
            assert_eq!(got.dtype(), burn::tensor::DType::F32, "{name}: the LoRA gradients are float32");
            let got = host(got);
            let module = name.strip_prefix("unet.").unwrap();
            let (key, got) = if let Some(m) = module.strip_suffix(".down") {
                (format!("grad.{m}.lora_A.weight"), transpose(&got, shape[0], shape[1]))
            } else {
                (format!("grad.{}.lora_B.weight", module.strip_suffix(".up").unwrap()), transpose(&got, shape[0], shape[1]))
            };
            let (_, want) = g.f32(&key).unwrap();
            let e = rel_max_err(&got, &want);
            assert!(e <= grad_tol, "{model} {precision:?} {key} (batched passes: {batch_passes}): relative max error {e:e}");
            worst = worst.max(e);
        }
        eprintln!(
            "{model} {precision:?} on {dev:?}, batched passes {batch_passes}: {} gradients, worst relative error {worst:e}",
            grads.len()
        );
    }
}

/// [`check_cat_step`] on the epsilon fixture (`tiny-sd`, the diffusers LoRA), with `preserve`
/// carrying the trigger-less captions.
pub fn check_fixture_cat_step(dev: &Device, preserve: Preserve) {
    check_cat_step(dev, "tiny-sd", "reference.safetensors", FORMATS[1], "cat-step-grads.safetensors", "cat_eps", preserve);
}
