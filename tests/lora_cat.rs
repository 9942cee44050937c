//! LoRA files applied to the UNet, and one CAT step's loss terms and gradients, against diffusers
//! and peft.
mod common;
use catlora::adapters::lora::{Targets, attach_file};
use catlora::models::config::UNetConfig;
use catlora::models::unet::UNet;
use catlora::models::weights::Weights;
use common::cat_step::{FORMATS, check_cat_step, read_lora};
use common::*;

fn unet() -> UNet {
    let dir = fixtures().join("tiny-sd/unet");
    let cfg = UNetConfig::load(&dir.join("config.json")).unwrap();
    UNet::load(&Weights::open_dir(&dir, "diffusion_pytorch_model", &device()).unwrap(), &cfg).unwrap()
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
    check_cat_step(&device(), "tiny-sd", "reference.safetensors", FORMATS[1], "cat-step-grads.safetensors", "cat_eps");
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
    );
}
