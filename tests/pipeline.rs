//! Ten-step pipelines from the reference initial latents, for every sampler and both prediction
//! types, with and without the fixture LoRA.
mod common;
use burn::tensor::{Tensor, TensorData};
use catlora::adapters::lora::attach_file;
use catlora::adapters::lora_file;
use catlora::io::image::{tensor_to_rgb8, tensor_to_unit_hwc};
use catlora::io::safetensors::SafeTensorsFile;
use catlora::pipeline::model::StableDiffusion;
use catlora::pipeline::txt2img::{GenerateParams, generate, generate_with_noise, read_latents};
use catlora::schedulers::{SamplerKind, StepNoise};
use common::*;

fn params(sampler: SamplerKind) -> GenerateParams {
    GenerateParams { prompt: "sks, a photo of a teapot".into(), sampler, steps: 10, cfg: 7.5, width: 64, height: 64, ..Default::default() }
}

fn png_pixels(name: &str) -> Vec<u8> {
    let img = catlora::io::image::load_rgb(&fixtures().join(name)).unwrap();
    img.into_raw()
}

/// The per-step noise diffusers drew for Euler ancestral, replayed in order.
struct Recorded(Vec<Tensor<4>>);

impl StepNoise for Recorded {
    fn draw(&mut self, dims: [usize; 4], _device: &burn::tensor::Device) -> Tensor<4> {
        let t = self.0.remove(0);
        assert_eq!(t.dims(), dims);
        t
    }
}

/// Compares the image of `sampler` from the fixture's initial latents with the float reference
/// `reference_tensor` (1e-3 mean abs) and its PNG `png` (1/255).
fn check_image(sd: &StableDiffusion, sampler: SamplerKind, latents_file: &str, refs: &SafeTensorsFile, reference_tensor: &str, png: &str) {
    let p = params(sampler);
    let latents = read_latents(sd, &fixtures().join(latents_file), &p).unwrap();
    let images = if sampler == SamplerKind::EulerAncestral {
        // [10, 1, 4, h, w]: one unit-variance draw per step.
        let (shape, v) = refs.f32("euler_a_noise").unwrap();
        let per = v.len() / shape[0];
        let dims = [shape[1], shape[2], shape[3], shape[4]];
        let noise = v.chunks(per).map(|c| Tensor::from_data(TensorData::new(c.to_vec(), dims), &device())).collect();
        generate_with_noise(sd, &p, latents, &mut Recorded(noise), |_, _| {}).unwrap()
    } else {
        generate(sd, &p, latents, |_, _| {}).unwrap()
    };
    let got = tensor_to_unit_hwc(images.clone());
    let (_, want) = refs.f32(reference_tensor).unwrap();
    let e = mean_abs_err(&got, &want);
    eprintln!("{png}: mean abs error {e:e}");
    assert!(e <= 1e-3, "{png}: mean abs pixel error {e:e} exceeds 1e-3");
    let rgb = &tensor_to_rgb8(images)[0];
    let want_png = png_pixels(png);
    let e8 = rgb.iter().zip(&want_png).map(|(a, b)| (*a as f32 - *b as f32).abs()).sum::<f32>() / rgb.len() as f32 / 255.0;
    assert!(e8 <= 1.0 / 255.0, "{png}: mean abs error {e8} exceeds 1/255");
}

/// Every sampler on both prediction types: the epsilon fixture (SD 1.x's PNDM scheduler config)
/// and the SD 2.x-style v-prediction one (DDIM config, `leading` spacing, linear projections,
/// per-level heads, upcast attention, a gelu text encoder), against diffusers loading the same
/// folders from disk.
#[test]
fn every_sampler_on_both_prediction_types_matches_diffusers() {
    for (model, refs, latents, prefix) in [
        ("tiny-sd", "eps-samplers.safetensors", "init-latents.safetensors", "eps"),
        ("tiny-sd2-v", "vpred-reference.safetensors", "vpred-init-latents.safetensors", "vpred"),
    ] {
        let sd = StableDiffusion::load(&fixtures().join(model), &device()).unwrap();
        let refs = SafeTensorsFile::open(&fixtures().join(refs)).unwrap();
        for kind in SamplerKind::ALL {
            let name = kind.name().replace('-', "_");
            check_image(&sd, kind, latents, &refs, &format!("pipe_{name}_image"), &format!("{prefix}_{name}_image.png"));
        }
    }
}

#[test]
fn ddim_with_lora_matches_diffusers() {
    let mut sd = StableDiffusion::load(&fixtures().join("tiny-sd"), &device()).unwrap();
    let known = sd.targets().known_modules();
    let file = lora_file::read(&fixtures().join("lora-kohya/lora.safetensors"), &known).unwrap();
    let adapter = attach_file(&mut sd.targets(), &file, 1.0, "lora").unwrap();
    check_image(&sd, SamplerKind::Ddim, "init-latents.safetensors", &reference(), "pipe_ddim_lora_image", "ddim_lora_image.png");
    // Switched off, the same model gives the base image again.
    adapter.gate.set(0.0);
    check_image(&sd, SamplerKind::Ddim, "init-latents.safetensors", &reference(), "pipe_ddim_image", "ddim_image.png");
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
