//! The conformance checks on the other devices of a `--features libtorch`, `vulkan` and/or `wgpu`
//! build (the README's test command runs them on `wgpu` over Mesa's lavapipe):
//! the fused operations against their compositions, and the text encoder, UNet, VAE, a 10-step
//! pipeline image and one CAT step (both loss terms and every LoRA gradient) against the
//! fixtures, with the CPU backend's tolerances (on CUDA with `NVIDIA_TF32_OVERRIDE=0`, as the CLI
//! sets it: TF32 convolutions miss them). On LibTorch's CPU device always; on CUDA when
//! this machine's libtorch sees a GPU, and on Vulkan when a Vulkan adapter answers (each skipped
//! with a printed reason otherwise). Run with a torch on the library path, e.g.
//! `LIBTORCH_USE_PYTORCH=1 LD_LIBRARY_PATH=<torch>/lib cargo test --release --features libtorch --test devices`
//! (`scripts/build-libtorch.sh` sets up the same environment for the build); `scripts/gpu-check.sh`
//! runs the same binary on a GPU machine.
#![cfg(any(feature = "libtorch", feature = "vulkan", feature = "wgpu"))]
mod common;
use burn::tensor::{Device, Distribution, Tensor};
use catlora::kernels::{self, blocked_attention};
use catlora::models::config::{ClipTextConfig, UNetConfig, VaeConfig};
use catlora::models::{clip_text::ClipTextModel, unet::UNet, vae::Vae, weights::Weights};
use catlora::pipeline::model::StableDiffusion;
use catlora::pipeline::txt2img::{GenerateParams, generate, read_latents};
use catlora::schedulers::SamplerKind;
use catlora::training::objective::Preserve;
use common::cat_step::check_fixture_cat_step;
use common::*;

/// The devices of this build that this machine has; `$CATLORA_TEST_DEVICES` (comma-separated
/// names) picks some of them, and every one it names must be there (the README's test command
/// names `wgpu`, so a missing Vulkan driver fails instead of skipping).
fn devices() -> Vec<(&'static str, Device)> {
    let named = std::env::var("CATLORA_TEST_DEVICES").ok();
    let required = |name: &str| named.as_deref().is_some_and(|w| w.split(',').any(|n| n.trim() == name));
    let wanted = |name: &str| named.is_none() || required(name);
    let skip = |name: &str, e: anyhow::Error| {
        assert!(!required(name), "CATLORA_TEST_DEVICES names {name}, which this machine lacks: {e:#}");
        eprintln!("skipping {name}: {e:#}");
    };
    let mut d = Vec::new();
    if cfg!(feature = "libtorch") && wanted("libtorch") {
        d.push(("libtorch", catlora::device::parse("libtorch").unwrap()));
    }
    if cfg!(feature = "libtorch") && wanted("libtorch-cuda") {
        match catlora::device::parse("libtorch-cuda") {
            Ok(cuda) => d.push(("libtorch-cuda", cuda)),
            Err(e) => skip("libtorch-cuda", e),
        }
    }
    for (name, built) in [("vulkan", cfg!(feature = "vulkan")), ("wgpu", cfg!(feature = "wgpu"))] {
        if built && wanted(name) {
            match catlora::device::parse(name) {
                Ok(dev) => d.push((name, dev)),
                Err(e) => skip(name, e),
            }
        }
    }
    d
}

fn host<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    values(t.without_autodiff())
}

#[test]
fn fused_operations_match_their_compositions() {
    for (name, dev) in devices() {
        let r = |s: [usize; 4]| Tensor::<4>::random(s, Distribution::Normal(0.0, 1.0), &dev);
        let r3 = |s: [usize; 3]| Tensor::<3>::random(s, Distribution::Normal(0.0, 1.0), &dev);
        let r1 = |n: usize| Tensor::<1>::random([n], Distribution::Normal(0.0, 1.0), &dev);
        // Group norm + SiLU: output and input gradient.
        let (x, w, b, g) = (r([2, 6, 5, 3]), r1(6), r1(6), r([2, 6, 5, 3]));
        let run = |f: fn(Tensor<4>, Tensor<1>, Tensor<1>, usize, f64, bool) -> Tensor<4>| {
            let xg = x.clone().autodiff().require_grad();
            let y = f(xg.clone(), w.clone(), b.clone(), 3, 1e-5, true);
            let grads = (y.clone() * g.clone()).sum().backward();
            (host(y), host(xg.grad(&grads).unwrap()))
        };
        let (a, c) = (run(kernels::group_norm), run(kernels::group_norm_composed));
        assert_close(&format!("{name} group_norm"), &a.0, &c.0, 1e-5);
        assert_close(&format!("{name} group_norm d input"), &a.1, &c.1, 1e-4);
        // Attention, self and cross.
        for (n, m) in [(150, 150), (9, 5)] {
            let (q, k, v, g) = (r3([2, n, 12]), r3([2, m, 12]), r3([2, m, 12]), r3([2, n, 12]));
            let run = |f: fn(Tensor<3>, Tensor<3>, Tensor<3>, usize, bool) -> Tensor<3>| {
                let (qg, kg) = (q.clone().autodiff().require_grad(), k.clone().autodiff().require_grad());
                let y = f(qg.clone(), kg.clone(), v.clone(), 3, false);
                let grads = (y.clone() * g.clone()).sum().backward();
                (host(y), host(qg.grad(&grads).unwrap()), host(kg.grad(&grads).unwrap()))
            };
            let (a, c) = (run(kernels::attention), run(kernels::attention_composed));
            assert_close(&format!("{name} attention {n}x{m}"), &a.0, &c.0, 1e-5);
            assert_close(&format!("{name} attention d q"), &a.1, &c.1, 1e-4);
            assert_close(&format!("{name} attention d k"), &a.2, &c.2, 1e-4);
            // The wgpu backends' blocked passes in several blocks (the dispatch above takes one
            // block at these sizes).
            let (out, lse) = blocked_attention::forward(q.clone(), k.clone(), v.clone(), 3, false, 64.min(n - 1));
            let (dq, dk, _) =
                blocked_attention::backward(q.clone(), k.clone(), v.clone(), out.clone(), lse, g.clone(), 3, false, 64.min(n - 1));
            assert_close(&format!("{name} blocked attention {n}x{m}"), &host(out), &c.0, 1e-5);
            assert_close(&format!("{name} blocked attention d q"), &host(dq), &c.1, 1e-4);
            assert_close(&format!("{name} blocked attention d k"), &host(dk), &c.2, 1e-4);
        }
    }
}

#[test]
fn models_and_a_pipeline_match_the_fixtures() {
    let r = reference();
    for (name, dev) in devices() {
        let load = |sub: &str, stem: &str| Weights::open_dir(&fixtures().join("tiny-sd").join(sub), stem, &dev).unwrap();
        let cfg = |sub: &str| fixtures().join("tiny-sd").join(sub).join("config.json");
        let te = ClipTextModel::load(&load("text_encoder", "model"), &ClipTextConfig::load(&cfg("text_encoder")).unwrap(), None).unwrap();
        let (_, ids) = r.i64("prompt_ids").unwrap();
        let ids: Vec<Vec<u32>> = ids.chunks(77).map(|c| c.iter().map(|&i| i as u32).collect()).collect();
        assert_close(&format!("{name} text_hidden"), &host(te.forward(&ids, 1)), &r.f32("text_hidden").unwrap().1, 1e-4);
        let unet = UNet::load(&load("unet", "diffusion_pytorch_model"), &UNetConfig::load(&cfg("unet")).unwrap()).unwrap();
        let (_, t) = r.i64("unet_in_timesteps").unwrap();
        let t: Vec<f64> = t.iter().map(|&v| v as f64).collect();
        let out = unet.forward(tensor(&r, "unet_in_latents", &dev), &t, &tensor(&r, "text_hidden", &dev));
        assert_close(&format!("{name} unet_out"), &host(out), &r.f32("unet_out").unwrap().1, 1e-4);
        let vae = Vae::load(&load("vae", "diffusion_pytorch_model"), &VaeConfig::load(&cfg("vae")).unwrap()).unwrap();
        let decoded = vae.decode(tensor(&r, "vae_decode_in", &dev));
        assert_close(&format!("{name} vae_decode_out"), &host(decoded), &r.f32("vae_decode_out").unwrap().1, 1e-4);

        let sd = StableDiffusion::load(&fixtures().join("tiny-sd"), &dev).unwrap();
        let p = GenerateParams {
            prompt: "sks, a photo of a teapot".into(),
            sampler: SamplerKind::Ddim,
            steps: 10,
            cfg: 7.5,
            width: 64,
            height: 64,
            ..Default::default()
        };
        let latents = read_latents(&sd, &fixtures().join("init-latents.safetensors"), &p).unwrap();
        let image = catlora::io::image::tensor_to_unit_hwc(generate(&sd, &p, latents, |_, _| {}).unwrap());
        let e = mean_abs_err(&image, &r.f32("pipe_ddim_image").unwrap().1);
        assert!(e <= 1e-3, "{name}: DDIM image mean abs error {e:e}");
    }
}

#[test]
fn one_cat_step_matches_the_reference_on_every_device() {
    for (name, dev) in devices() {
        eprintln!("{name}:");
        check_fixture_cat_step(&dev, Preserve::TriggerLess);
    }
}
