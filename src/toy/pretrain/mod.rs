//! Pretraining of the toy world's base models, from seeded random weights to the folders the
//! rest of the crate loads:
//!
//! 1. a tiny CLIP (text and vision transformers, transformers `CLIPModel` layout), trained with
//!    a symmetric InfoNCE loss and a learnable temperature on world images and their captions
//!    (full and partial captions; every caption in the batch that truly describes an image is a
//!    positive for it);
//! 2. the Stable Diffusion text encoder: CLIP's text tower, frozen, as a `CLIPTextModel` (as SD
//!    1.x reuses OpenAI CLIP's);
//! 3. a tiny `AutoencoderKL` (3 levels: latents are a quarter of the image side, 4 channels),
//!    trained for reconstruction (mean squared plus mean absolute error) with a small KL term on
//!    world images and on random colourful patterned
//!    shapes (so it also reproduces looks outside the world, such as the personal object);
//!    `scaling_factor` is set to 1 / std of its latents;
//! 4. a tiny `UNet2DConditionModel` with cross-attention, trained as a DDPM epsilon-predictor
//!    under SD 1.5's noise schedule on latents of world images with captions (10 % empty, for
//!    classifier-free guidance), min-SNR-5 weighting, an exponential moving average kept.
//!
//! Every parameter is trained through its model's `visit` (see `params`). Each model is rounded
//! to half precision before the next stage uses it, and saved in half precision, so later stages
//! see exactly the weights that ship. Everything is a function of the seed.
mod options;
mod stages;

pub use options::{PretrainOptions, StageOptions, default_assets_dir};
pub use stages::clip_pixels;

use super::architecture::{SCHEDULER_CONFIG, model_index_json, text_config_json, vae_config_json, vision_config_json};
use super::clip::TrainableClip;
use super::folders::{copy_dir, copy_tokenizer, write_clip, write_json, write_unet};
use super::params::{ModelParams, torch_tensors, write_safetensors};
use super::world::{self, Background, Scene, World};
use crate::io::image::RgbImage;
use crate::io::safetensors::StoreAs;
use crate::models::clip_vision::ClipVisionConfig;
use crate::models::config::{ClipTextConfig, VaeConfig};
use crate::models::tokenizer::ClipTokenizer;
use crate::models::vae::Vae;
use crate::models::weights::Weights;
use crate::rng::Rng;
use crate::training::adamw::AdamWConfig;
use anyhow::Result;
use burn::tensor::Device;
use options::{parse, tokenizer_source};
use serde::Serialize;
use serde_json::Value;
use stages::{TRAINING_STYLES, UnetPool, encode_captions, encode_pool, reconstruction_mae, train_clip, train_unet, train_vae};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

/// What `pretrain.json` records.
#[derive(Serialize, Default)]
pub struct PretrainReport {
    pub seed: u64,
    /// Stages taken from an earlier run (`reuse_clip`, `reuse_vae`) rather than trained here.
    pub reused: Vec<String>,
    /// The options that shape the weights (not the seed, given above, nor where output goes).
    pub options: Option<PretrainOptions>,
    pub seconds: BTreeMap<String, f64>,
    pub final_loss: BTreeMap<String, f64>,
    pub parameters: BTreeMap<String, usize>,
    pub vae_scaling_factor: f64,
    pub vae_reconstruction_mae: BTreeMap<String, f64>,
    pub evaluation: Option<Value>,
}

/// Trains every toy base model from seeded random weights and writes `out_dir/sd` (a diffusers
/// `StableDiffusionPipeline` folder), `out_dir/clip` (a transformers `CLIPModel` folder) and
/// `out_dir/pretrain.json` (options, timings, losses and, with `evaluate`, quality numbers).
pub fn pretrain(out_dir: &Path, opts: &PretrainOptions) -> Result<PretrainReport> {
    let device = Device::flex();
    let started = Instant::now();
    let tok_dir = tokenizer_source(opts)?;
    let tok = ClipTokenizer::from_dir(&tok_dir)?;
    let (sd_dir, clip_dir) = (out_dir.join("sd"), out_dir.join("clip"));
    let mut report = PretrainReport { seed: opts.seed, options: Some(opts.clone()), ..Default::default() };

    // 1. CLIP.
    let t = Instant::now();
    let (clip, clip_hp) = match &opts.reuse_clip {
        Some(from) => {
            let tc: ClipTextConfig = parse(text_config_json(), "text")?;
            let vc: ClipVisionConfig = parse(vision_config_json(), "vision")?;
            let w = Weights::open_dir(&from.join("clip"), "model", &device)?;
            let mut clip = TrainableClip::load(&w, &tc, &vc, 32)?;
            let hp = ModelParams::collect(&mut clip, AdamWConfig::default());
            if from.join("clip") != clip_dir {
                copy_dir(&from.join("clip"), &clip_dir)?;
            }
            report.reused.push("clip".into());
            (clip, hp)
        }
        None => {
            let (clip, hp, loss) = train_clip(opts, &tok, &device)?;
            write_clip(&clip_dir, &hp, &tok_dir)?;
            report.final_loss.insert("clip".into(), loss);
            (clip, hp)
        }
    };
    report.seconds.insert("clip".into(), t.elapsed().as_secs_f64());
    report.parameters.insert("clip".into(), clip_hp.count());

    // 2. The text encoder: CLIP's text tower, without the `text_model.` prefix (as
    // `CLIPTextModel.save_pretrained` writes it).
    let te_dir = sd_dir.join("text_encoder");
    std::fs::create_dir_all(&te_dir)?;
    let te_tensors = torch_tensors(&clip_hp.params, |n| n.strip_prefix("text_model.").map(str::to_string));
    report.parameters.insert("text_encoder".into(), te_tensors.values().map(|t| t.data.len()).sum());
    write_safetensors(&te_dir.join("model.safetensors"), &te_tensors, StoreAs::F16)?;
    write_json(&te_dir.join("config.json"), &text_config_json())?;
    let tok_out = sd_dir.join("tokenizer");
    std::fs::create_dir_all(&tok_out)?;
    copy_tokenizer(&tok_dir, &tok_out)?;

    // 3. VAE.
    let t = Instant::now();
    let (vae, vae_hp) = match &opts.reuse_vae {
        Some(from) => {
            let cfg: VaeConfig = parse(vae_config_json(1.0), "VAE")?;
            let mut vae = Vae::load(&Weights::open_dir(&from.join("sd/vae"), "diffusion_pytorch_model", &device)?, &cfg)?;
            let hp = ModelParams::collect(&mut vae, AdamWConfig::default());
            report.reused.push("vae".into());
            (vae, hp)
        }
        None => {
            let (vae, hp, loss) = train_vae(opts, &device)?;
            report.final_loss.insert("vae".into(), loss);
            (vae, hp)
        }
    };
    report.parameters.insert("vae".into(), vae_hp.count());
    let mut pool_world = World::new(opts.seed ^ 0x0e7_da7a);
    let pool = pool_world.samples(opts.unet_pool);
    let pool_imgs: Vec<RgbImage> = pool.iter().map(|s| s.image.clone()).collect();
    let (means, logvars) = encode_pool(&vae, &pool_imgs, &device);
    // The scaling factor: 1 / std of sampled latents over the pool.
    let mut zrng = Rng::new(opts.seed ^ 0x5ca1e);
    let zs: Vec<f64> = means.iter().zip(&logvars).map(|(m, l)| (*m + (0.5 * *l).exp() * zrng.normal()) as f64).collect();
    let mu = zs.iter().sum::<f64>() / zs.len() as f64;
    let std = (zs.iter().map(|z| (z - mu).powi(2)).sum::<f64>() / zs.len() as f64).sqrt();
    // Rounded to 5 significant digits, as a person would write it in a config.
    let scaling = format!("{:.5e}", 1.0 / std.max(1e-6)).parse::<f64>()?;
    report.vae_scaling_factor = scaling;
    let vae_dir = sd_dir.join("vae");
    std::fs::create_dir_all(&vae_dir)?;
    write_safetensors(
        &vae_dir.join("diffusion_pytorch_model.safetensors"),
        &torch_tensors(&vae_hp.params, |n| Some(n.to_string())),
        StoreAs::F16,
    )?;
    write_json(&vae_dir.join("config.json"), &vae_config_json(scaling))?;
    let check = |imgs: Vec<RgbImage>| reconstruction_mae(&vae, &imgs, &device);
    report
        .vae_reconstruction_mae
        .insert("world".into(), check(World::new(opts.seed ^ 0x7e57).samples(32).into_iter().map(|s| s.image).collect()));
    report.vae_reconstruction_mae.insert(
        "personal".into(),
        check(world::personal_objects(opts.seed ^ 0x7e57, 8, "sks", &[Background::Gray]).into_iter().map(|p| p.0).collect()),
    );
    report.seconds.insert("vae".into(), t.elapsed().as_secs_f64());

    // 4. UNet.
    let t = Instant::now();
    let mut captions: Vec<String> = vec![String::new()];
    for s in &pool {
        for (_, st) in TRAINING_STYLES {
            captions.push(s.scene.caption(st));
        }
    }
    captions.sort();
    captions.dedup();
    let contexts = encode_captions(&clip.towers.text, &tok, &captions);
    let scenes: Vec<Scene> = pool.into_iter().map(|s| s.scene).collect();
    let (_unet, unet_hp, unet_loss) = train_unet(
        opts,
        out_dir,
        &UnetPool { scenes: &scenes, means: &means, logvars: &logvars, scaling: scaling as f32, contexts: &contexts },
        &device,
    )?;
    report.final_loss.insert("unet".into(), unet_loss);
    report.parameters.insert("unet".into(), unet_hp.count());
    write_unet(&sd_dir.join("unet"), &unet_hp.params)?;
    report.seconds.insert("unet".into(), t.elapsed().as_secs_f64());

    // 5. The pipeline folder.
    let sched_dir = sd_dir.join("scheduler");
    std::fs::create_dir_all(&sched_dir)?;
    crate::io::atomic::write(&sched_dir.join("scheduler_config.json"), SCHEDULER_CONFIG.as_bytes())?;
    write_json(&sd_dir.join("model_index.json"), &model_index_json())?;
    report.seconds.insert("total_training".into(), started.elapsed().as_secs_f64());

    if opts.evaluate {
        let t = Instant::now();
        report.evaluation = Some(super::eval::evaluate_base(&sd_dir, &clip_dir, opts.seed, opts.verbose)?);
        report.seconds.insert("evaluation".into(), t.elapsed().as_secs_f64());
    }
    write_json(&out_dir.join("pretrain.json"), &serde_json::to_value(&report)?)?;
    if opts.verbose {
        eprintln!("[toy pretrain] wrote {} and {} in {:.0} s", sd_dir.display(), clip_dir.display(), started.elapsed().as_secs_f64());
    }
    Ok(report)
}
