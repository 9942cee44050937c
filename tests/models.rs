//! The text encoder, UNet and VAE against the diffusers / transformers reference outputs.
mod common;
use common::*;
use catlora::models::clip_text::ClipTextModel;
use catlora::models::config::{ClipTextConfig, UNetConfig, VaeConfig};
use catlora::models::unet::UNet;
use catlora::models::vae::Vae;
use catlora::models::weights::Weights;

fn prompt_ids() -> Vec<Vec<u32>> {
    let (shape, ids) = reference().i64("prompt_ids").unwrap();
    ids.chunks(shape[1]).map(|r| r.iter().map(|&i| i as u32).collect()).collect()
}

#[test]
fn text_encoder_matches_transformers() {
    let dev = device();
    let dir = fixtures().join("tiny-sd/text_encoder");
    let cfg = ClipTextConfig::load(&dir.join("config.json")).unwrap();
    let w = Weights::open_dir(&dir, "model", &dev).unwrap();
    let te = ClipTextModel::load(&w, &cfg, None).unwrap();
    let out = te.forward(&prompt_ids(), 1);
    let (_, want) = reference().f32("text_hidden").unwrap();
    assert_close("text_hidden", &values(out), &want, 1e-4);
}

#[test]
fn unet_matches_diffusers() {
    let dev = device();
    let dir = fixtures().join("tiny-sd/unet");
    let cfg = UNetConfig::load(&dir.join("config.json")).unwrap();
    let w = Weights::open_dir(&dir, "diffusion_pytorch_model", &dev).unwrap();
    let unet = UNet::load(&w, &cfg).unwrap();
    let r = reference();
    let x = tensor::<4>(&r, "unet_in_latents", &dev);
    let (_, t) = r.i64("unet_in_timesteps").unwrap();
    let t: Vec<f64> = t.iter().map(|&v| v as f64).collect();
    let ctx = tensor::<3>(&r, "text_hidden", &dev);
    let out = unet.forward(x, &t, &ctx);
    let (_, want) = r.f32("unet_out").unwrap();
    assert_close("unet_out", &values(out), &want, 1e-4);
}

#[test]
fn vae_encode_and_decode_match_diffusers() {
    let dev = device();
    let dir = fixtures().join("tiny-sd/vae");
    let cfg = VaeConfig::load(&dir.join("config.json")).unwrap();
    let w = Weights::open_dir(&dir, "diffusion_pytorch_model", &dev).unwrap();
    let vae = Vae::load(&w, &cfg).unwrap();
    let r = reference();
    let (mean, logvar) = vae.encode(tensor::<4>(&r, "vae_in_image", &dev));
    assert_close("vae_mean", &values(mean), &r.f32("vae_mean").unwrap().1, 1e-4);
    assert_close("vae_logvar", &values(logvar), &r.f32("vae_logvar").unwrap().1, 1e-4);
    let img = vae.decode(tensor::<4>(&r, "vae_decode_in", &dev));
    assert_close("vae_decode_out", &values(img), &r.f32("vae_decode_out").unwrap().1, 1e-4);
}
