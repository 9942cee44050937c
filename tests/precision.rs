//! `--precision fp32|fp16|bf16` against diffusers' float32 fixtures, on `$CATLORA_TEST_DEVICE`
//! (any device of the build; the CPU backend by default). Float32 gets the fixtures README's
//! tolerances. Half precision cannot meet them; the tolerance each check states is twice the
//! error diffusers' own models make in the same precision on the same tensors (weights cast with
//! `.to(dtype)`, torch 2.9.0 and diffusers 0.42.1 on CPU; `scripts/fixtures/half_precision_errors.py`
//! prints them), rounded up:
//!
//! | relative max error | fp16 diffusers | fp16 allowed | bf16 diffusers | bf16 allowed |
//! |---|---|---|---|---|
//! | text encoder hidden states | 1.3e-3 | 2.6e-3 | 9.7e-3 | 2e-2 |
//! | UNet output | 1.7e-3 | 3.4e-3 | 1.2e-2 | 2.5e-2 |
//! | VAE decode | 2.0e-3 | 4e-3 | 1.9e-2 | 3.8e-2 |
mod common;
use catlora::pipeline::model::StableDiffusion;
use catlora::precision::Precision;
use catlora::training::objective::Preserve;
use common::cat_step::{FORMATS, check_cat_step_at};
use common::*;

/// (precision, text encoder, UNet, VAE) tolerances of the table above.
const TOLERANCES: [(Precision, f32, f32, f32); 3] =
    [(Precision::Fp32, 1e-4, 1e-4, 1e-4), (Precision::Fp16, 2.6e-3, 3.4e-3, 4e-3), (Precision::Bf16, 2e-2, 2.5e-2, 3.8e-2)];

#[test]
fn models_in_each_precision_stay_within_its_tolerance() {
    let r = reference();
    let dev = device();
    for (precision, te_tol, unet_tol, vae_tol) in TOLERANCES {
        let mut sd = StableDiffusion::load(&fixtures().join("tiny-sd"), &dev).unwrap();
        if let Err(e) = sd.set_precision(precision) {
            // Only the wgpu backends refuse, and only bf16 (their shaders have no bfloat16).
            assert!(precision == Precision::Bf16 && !catlora::kernels::on_flex(&dev), "{e:#}");
            eprintln!("{precision:?} refused on this device: {e:#}");
            continue;
        }
        let (_, ids) = r.i64("prompt_ids").unwrap();
        let ids: Vec<Vec<u32>> = ids.chunks(77).map(|c| c.iter().map(|&i| i as u32).collect()).collect();
        let hidden = sd.text_encoder.forward(&ids, 1);
        assert_eq!(hidden.dtype(), burn::tensor::DType::F32, "the text encoder answers in float32");
        let name = precision.name();
        assert_close(&format!("{name} text_hidden"), &values(hidden), &r.f32("text_hidden").unwrap().1, te_tol);
        let (_, t) = r.i64("unet_in_timesteps").unwrap();
        let t: Vec<f64> = t.iter().map(|&v| v as f64).collect();
        let out = sd.unet.forward(tensor(&r, "unet_in_latents", &dev), &t, &tensor(&r, "text_hidden", &dev));
        assert_eq!(out.dtype(), burn::tensor::DType::F32, "the UNet answers in float32");
        assert_close(&format!("{name} unet_out"), &values(out), &r.f32("unet_out").unwrap().1, unet_tol);
        let decoded = sd.vae.decode(tensor(&r, "vae_decode_in", &dev));
        assert_close(&format!("{name} vae_decode_out"), &values(decoded), &r.f32("vae_decode_out").unwrap().1, vae_tol);
    }
}

/// One CAT step with the UNet in each precision and the LoRA in float32 (fp16 with its loss
/// scale): both loss terms and every LoRA gradient against peft's float32 reference, within
/// float32's tolerances or twice peft's own error in that precision (`cat_step_tolerances`),
/// both pass modes.
#[test]
fn a_cat_step_in_each_precision_stays_within_its_tolerance() {
    let dev = device();
    for precision in [Precision::Fp32, Precision::Fp16, Precision::Bf16] {
        if let Err(e) = catlora::kernels::check_dtype(&dev, precision.dtype()) {
            eprintln!("{precision:?} refused on this device: {e:#}");
            continue;
        }
        check_cat_step_at(
            &dev,
            "tiny-sd",
            "reference.safetensors",
            FORMATS[1],
            "cat-step-grads.safetensors",
            "cat_eps",
            Preserve::TriggerLess,
            precision,
        );
    }
}
