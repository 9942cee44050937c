//! LoRA files applied to the UNet, and one CAT step's loss terms and gradients, against diffusers
//! and peft.
mod common;
use catlora::adapters::lora::{Adapter, Targets, attach_file};
use catlora::models::config::UNetConfig;
use catlora::models::unet::UNet;
use catlora::models::weights::Weights;
use catlora::training::objective::Preserve;
use catlora::training::params::{AdapterParams, Params};
use common::cat_step::{FORMATS, check_cat_step, check_fixture_cat_step, read_lora};
use common::*;

fn unet() -> UNet {
    let dir = fixtures().join("tiny-sd/unet");
    let cfg = UNetConfig::load(&dir.join("config.json")).unwrap();
    UNet::load(&Weights::open_dir(&dir, "diffusion_pytorch_model", &device()).unwrap(), &cfg).unwrap()
}

/// The UNet with the fixture's diffusers LoRA attached, and that LoRA's parameters.
fn unet_with_lora() -> (UNet, Adapter, Params) {
    let mut unet = unet();
    let file = read_lora(&mut unet, FORMATS[1]);
    let adapter = attach_file(&mut Targets { unet: &mut unet, text_encoder: None }, &file, 1.0, "fixture").unwrap();
    let params = Params::collect(&mut AdapterParams { targets: &mut Targets { unet: &mut unet, text_encoder: None }, adapter: &adapter });
    (unet, adapter, params)
}

#[test]
fn lora_files_of_both_formats_give_the_reference_unet_output() {
    let r = reference();
    let dev = device();
    for rel in FORMATS {
        let mut unet = unet();
        let file = read_lora(&mut unet, rel);
        attach_file(&mut Targets { unet: &mut unet, text_encoder: None }, &file, 1.0, rel).unwrap();
        let (_, t) = r.i64("unet_in_timesteps").unwrap();
        let t: Vec<f64> = t.iter().map(|&v| v as f64).collect();
        let out = unet.forward(tensor(&r, "unet_in_latents", &dev), &t, &tensor(&r, "text_hidden", &dev));
        assert_close(&format!("lora_unet_out ({rel})"), &values(out), &r.f32("lora_unet_out").unwrap().1, 1e-4);
    }
}

#[test]
fn lora_that_does_not_fit_is_an_error_naming_the_layer() {
    let mut unet = unet();
    let mut file = read_lora(&mut unet, FORMATS[1]);
    let rank = file.entries[3].rank;
    file.entries[3].in_features += 1;
    file.entries[3].down.extend(vec![0.0; rank]);
    let module = file.entries[3].module.clone();
    let err = attach_file(&mut Targets { unet: &mut unet, text_encoder: None }, &file, 1.0, "bad.safetensors").unwrap_err().to_string();
    assert!(err.contains("bad.safetensors") && err.contains(&module), "{err}");
    // Nothing stays attached after a failed attach.
    let r = reference();
    let dev = device();
    let (_, t) = r.i64("unet_in_timesteps").unwrap();
    let t: Vec<f64> = t.iter().map(|&v| v as f64).collect();
    let out = unet.forward(tensor(&r, "unet_in_latents", &dev), &t, &tensor(&r, "text_hidden", &dev));
    assert_close("unet_out after failed attach", &values(out), &r.f32("unet_out").unwrap().1, 1e-4);
}

#[test]
fn one_cat_step_matches_the_reference_losses_and_every_gradient() {
    check_fixture_cat_step(&device(), Preserve::TriggerLess);
}

/// The `class` and `blank` preservation terms are the same term with other captions: given the
/// reference's trigger-less captions, each gives peft's CAT loss and every gradient.
#[test]
fn every_preservation_target_matches_the_reference_term() {
    for target in [Preserve::Class, Preserve::Blank] {
        check_fixture_cat_step(&device(), target);
    }
}

/// The same step on the SD 2.x-style v-prediction fixture: the target is the velocity
/// `α ε − σ x0` (`DDPMScheduler.get_velocity`).
#[test]
fn one_v_prediction_cat_step_matches_the_reference() {
    check_cat_step(
        &device(),
        "tiny-sd2-v",
        "vpred-reference.safetensors",
        "vpred-lora-diffusers/pytorch_lora_weights.safetensors",
        "vpred-cat-step-grads.safetensors",
        "cat_target",
        Preserve::TriggerLess,
    );
}

/// DCO's step: the loss is `softplus(β (d − d_ref))` with `d_ref` the adapter-off UNet's
/// diffusion loss, and its gradient agrees with a central finite difference of that loss along
/// the gradient (and is the diffusion gradient times `β σ(β (d − d_ref))`).
#[test]
fn dco_gradient_matches_a_finite_difference() {
    use catlora::training::objective::{StepInputs, cat_gradients, softplus};
    use catlora::training::params::host;
    let dev = device();
    let r = reference();
    let (mut unet, adapter, mut params) = unet_with_lora();
    let cond = tensor::<3>(&r, "text_hidden", &dev).narrow(0, 0, 1);
    let ct = || cond.clone();
    let (_, t) = r.i64("cat_t").unwrap();
    let beta = 20.0;
    // (terms, gradients) of one step with the parameters `params` holds.
    let mut step = |params: &Params, dco: Option<f64>| {
        let leaves =
            params.install(&mut AdapterParams { targets: &mut Targets { unet: &mut unet, text_encoder: None }, adapter: &adapter }, true);
        let inputs = StepInputs {
            zt: tensor(&r, "cat_zt", &dev),
            timesteps: vec![t[0] as f64],
            target: tensor(&r, "cat_eps", &dev),
            cond_trigger: &ct,
            preserve: Vec::new(),
            dco_beta: dco,
            sample_weights: None,
            prior: None,
            batch_passes: false,
            loss_scale: 1.0,
        };
        let (terms, grads) = cat_gradients(&unet, &adapter.gate, params, &leaves, &inputs).unwrap();
        (terms, grads.iter().map(host).collect::<Vec<_>>())
    };
    let (terms, grads) = step(&params, Some(beta));
    let (plain, plain_grads) = step(&params, None);
    assert_eq!(terms.diffusion, plain.diffusion);
    assert!(terms.dco > 0.0 && terms.total == terms.dco, "{terms:?}");
    // d_ref from the loss: softplus is invertible.
    let x = (terms.dco.exp() - 1.0).ln();
    assert!((softplus(x) - terms.dco).abs() < 1e-12);
    let slope = beta / (1.0 + (-x).exp());
    // float32 backward passes of `d · slope` and of `d` round differently: compared at 1e-4 of
    // the largest gradient.
    let scaled: Vec<f64> = plain_grads.iter().flatten().map(|&p| slope * p as f64).collect();
    let largest = scaled.iter().fold(0f64, |m, v| m.max(v.abs()));
    for (g, want) in grads.iter().flatten().zip(&scaled) {
        assert!((*g as f64 - want).abs() <= 1e-4 * largest, "{g} vs {want} (slope {slope}, largest {largest:e})");
    }
    // Central difference along the unit gradient direction: the slope there is |g|.
    let norm = grads.iter().flatten().map(|&g| (g as f64).powi(2)).sum::<f64>().sqrt();
    assert!(norm > 0.0);
    let base = params.to_host();
    let h = 1e-2;
    let mut at = |k: f64| {
        let moved: Vec<Vec<f32>> =
            base.iter().zip(&grads).map(|(v, g)| v.iter().zip(g).map(|(&v, &g)| v + (k * h * g as f64 / norm) as f32).collect()).collect();
        params.set_host(moved, "probe").unwrap();
        step(&params, Some(beta)).0.dco
    };
    let fd = (at(1.0) - at(-1.0)) / (2.0 * h);
    println!("DCO: loss {}, |g| {norm:e}, finite difference {fd:e}", terms.dco);
    assert!((fd - norm).abs() <= 2e-3 * norm, "finite difference {fd:e} vs |g| {norm:e}");
}

/// `batch_passes` runs the diffusion, preservation and prior passes as one batch with one
/// backward pass: every term and gradient as when they run one by one (DCO's slope included).
#[test]
fn batched_passes_give_the_terms_and_gradients_of_separate_passes() {
    use catlora::training::objective::{PreserveTerm, PriorTerm, StepInputs, cat_gradients};
    use catlora::training::params::host;
    let dev = device();
    let r = reference();
    let (mut unet, adapter, params) = unet_with_lora();
    let trigger = tensor::<3>(&r, "text_hidden", &dev).narrow(0, 0, 1);
    let (plain, blank, class) = (trigger.clone().mul_scalar(0.5), trigger.clone().mul_scalar(-0.25), trigger.clone().mul_scalar(0.75));
    let (ct, cp, cb, cc) = (|| trigger.clone(), || plain.clone(), || blank.clone(), || class.clone());
    let (_, t) = r.i64("cat_t").unwrap();
    let zt = tensor::<4>(&r, "cat_zt", &dev);
    let eps = tensor::<4>(&r, "cat_eps", &dev);
    let mut step = |batch_passes: bool| {
        let leaves =
            params.install(&mut AdapterParams { targets: &mut Targets { unet: &mut unet, text_encoder: None }, adapter: &adapter }, true);
        let inputs = StepInputs {
            zt: zt.clone(),
            timesteps: vec![t[0] as f64],
            target: eps.clone(),
            cond_trigger: &ct,
            preserve: vec![
                PreserveTerm { target: Preserve::TriggerLess, cond: &cp, weight: 1.0 },
                PreserveTerm { target: Preserve::Blank, cond: &cb, weight: 0.5 },
            ],
            dco_beta: Some(20.0),
            sample_weights: Some(vec![0.8]),
            prior: Some(PriorTerm {
                zt: zt.clone().flip([3]),
                timesteps: vec![t[0] as f64 / 2.0],
                target: eps.clone().flip([2]),
                cond: &cc,
                weight: 0.7,
            }),
            batch_passes,
            loss_scale: 1.0,
        };
        let (terms, grads) = cat_gradients(&unet, &adapter.gate, &params, &leaves, &inputs).unwrap();
        (terms, grads.iter().map(host).collect::<Vec<_>>())
    };
    let (one, one_grads) = step(false);
    let (batched, batched_grads) = step(true);
    let named = |t: &catlora::training::objective::LossTerms| t.named();
    for ((name, a), (_, b)) in named(&one).into_iter().zip(named(&batched)) {
        assert!((a - b).abs() <= 1e-5 * a.abs().max(1e-6), "{name}: {a} one by one, {b} batched");
    }
    assert!(one.dco > 0.0 && one.cat > 0.0 && one.blank > 0.0 && one.prior > 0.0, "every term is computed: {one:?}");
    let largest = one_grads.iter().flatten().fold(0f32, |m, v| m.max(v.abs()));
    assert!(largest > 0.0);
    for (a, b) in one_grads.iter().flatten().zip(batched_grads.iter().flatten()) {
        assert!((a - b).abs() <= 1e-5 * largest, "{a} one by one, {b} batched (largest {largest:e})");
    }
}
