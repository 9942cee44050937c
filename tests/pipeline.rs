//! Ten-step pipelines from the reference initial latents, for every sampler diffusers ran, with
//! and without the fixture LoRA.
mod common;
use catlora::adapters::lora::attach_file;
use catlora::adapters::lora_file;
use catlora::io::image::{tensor_to_rgb8, tensor_to_unit_hwc};
use catlora::pipeline::model::StableDiffusion;
use catlora::pipeline::txt2img::{GenerateParams, generate, read_latents};
use catlora::schedulers::SamplerKind;
use common::*;

fn params(sampler: SamplerKind) -> GenerateParams {
    GenerateParams {
        prompt: "sks, a photo of a teapot".into(),
        sampler,
        steps: 10,
        cfg: 7.5,
        width: 64,
        height: 64,
        ..Default::default()
    }
}

fn png_pixels(name: &str) -> Vec<u8> {
    let img = catlora::io::image::load_rgb(&fixtures().join(name)).unwrap();
    img.into_raw()
}

fn check(sd: &StableDiffusion, sampler: SamplerKind, name: &str, png: &str) {
    let p = params(sampler);
    let latents = read_latents(sd, &fixtures().join("init-latents.safetensors"), &p).unwrap();
    let images = generate(sd, &p, latents, |_, _| {}).unwrap();
    let got = tensor_to_unit_hwc(images.clone());
    let (_, want) = reference().f32(name).unwrap();
    let e = mean_abs_err(&got, &want);
    eprintln!("{name}: mean abs error {e:e}");
    assert!(e <= 1e-3, "{name}: mean abs pixel error {e:e} exceeds 1e-3");
    let rgb = &tensor_to_rgb8(images)[0];
    let want_png = png_pixels(png);
    let e8 = rgb.iter().zip(&want_png).map(|(a, b)| (*a as f32 - *b as f32).abs()).sum::<f32>() / rgb.len() as f32 / 255.0;
    assert!(e8 <= 1.0 / 255.0, "{png}: mean abs error {e8} exceeds 1/255");
}

#[test]
fn four_samplers_match_diffusers() {
    let sd = StableDiffusion::load(&fixtures().join("tiny-sd"), &device()).unwrap();
    for (kind, name, png) in [
        (SamplerKind::Ddim, "pipe_ddim_image", "ddim_image.png"),
        (SamplerKind::Euler, "pipe_euler_image", "euler_image.png"),
        (SamplerKind::DpmPp2m, "pipe_dpmpp_2m_image", "dpmpp_2m_image.png"),
        (SamplerKind::DpmPp2mKarras, "pipe_dpmpp_2m_karras_image", "dpmpp_2m_karras_image.png"),
    ] {
        check(&sd, kind, name, png);
    }
}

#[test]
fn ddim_with_lora_matches_diffusers() {
    let mut sd = StableDiffusion::load(&fixtures().join("tiny-sd"), &device()).unwrap();
    let known = sd.targets().known_modules();
    let file = lora_file::read(&fixtures().join("lora-kohya/lora.safetensors"), &known).unwrap();
    let adapter = attach_file(&mut sd.targets(), &file, 1.0, "lora").unwrap();
    check(&sd, SamplerKind::Ddim, "pipe_ddim_lora_image", "ddim_lora_image.png");
    // Switched off, the same model gives the base image again.
    adapter.gate.set(0.0);
    check(&sd, SamplerKind::Ddim, "pipe_ddim_image", "ddim_image.png");
}

#[test]
fn same_seed_same_pixels_and_bad_sizes_are_errors() {
    let sd = StableDiffusion::load(&fixtures().join("tiny-sd"), &device()).unwrap();
    let mut p = params(SamplerKind::EulerAncestral);
    p.steps = 3;
    let run = |seed| {
        let l = catlora::pipeline::txt2img::seeded_latents(&sd, &p, seed);
        tensor_to_rgb8(generate(&sd, &p, l, |_, _| {}).unwrap())
    };
    assert_eq!(run(4), run(4));
    assert_ne!(run(4), run(5));
    p.width = 40;
    let l = catlora::pipeline::txt2img::seeded_latents(&sd, &GenerateParams { width: 64, ..p.clone() }, 1);
    let err = generate(&sd, &p, l, |_, _| {}).unwrap_err().to_string();
    assert!(err.contains("40x64") && err.contains("multiple of 16"), "{err}");
}
