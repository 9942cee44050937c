//! `catlora generate`: text to image with optional LoRAs, PNGs carrying A1111 infotext.
use anyhow::{Context, Result, bail};
use catlora::adapters::{lora, lora_file};
use catlora::io::image::tensor_to_rgb8;
use catlora::limits::MAX_IMAGES;
use catlora::pipeline::infotext::save_with_infotext;
use catlora::pipeline::model::{ModelConfigs, StableDiffusion};
use catlora::pipeline::txt2img::{self, GenerateParams};
use catlora::precision::Precision;
use catlora::schedulers::SamplerKind;
use clap::Args;
use std::path::{Path, PathBuf};

/// Generate images from a prompt, optionally with LoRAs applied.
///
/// Image i (counting from 0) starts from the noise of seed S+i, so an image depends only on its
/// own seed and the settings, never on --num-images. With --init-latents, the file's latents are
/// used instead (one image per batch entry) and every image gets seed S.
///
/// Output files are `OUT/<seed>-<i>.png`: <seed> is the image's seed (S+i, or S with
/// --init-latents) and <i> its index in this run; existing files are replaced. Each PNG carries
/// AUTOMATIC1111's `parameters` text chunk (prompt, negative prompt, steps, sampler, CFG scale,
/// seed, size, model), with every --lora written as an A1111 `<lora:name:weight>` tag after the
/// prompt. The same settings always give byte-identical PNGs.
#[derive(Args, Debug)]
pub struct GenerateArgs {
    /// Diffusers pipeline folder of the base model.
    #[arg(long, value_name = "DIR")]
    pub model: PathBuf,
    /// The text to draw.
    #[arg(long)]
    pub prompt: String,
    /// The unconditional text of classifier-free guidance.
    #[arg(long, default_value = "")]
    pub negative_prompt: String,
    /// ddim, euler, euler-a, dpmpp-2m or dpmpp-2m-karras.
    #[arg(long, default_value = "dpmpp-2m-karras")]
    pub sampler: SamplerKind,
    /// Sampling steps.
    #[arg(long, default_value_t = 30)]
    pub steps: usize,
    /// Classifier-free guidance scale (1 turns guidance off).
    #[arg(long, default_value_t = 7.5)]
    pub cfg: f64,
    /// Image width in pixels (a multiple of the model's total downsampling, 64 for SD) [default:
    /// the model's own size, its UNet's sample_size times the VAE factor, as diffusers].
    #[arg(long)]
    pub width: Option<usize>,
    /// Image height in pixels [default: the model's own size].
    #[arg(long)]
    pub height: Option<usize>,
    /// Seed of the first image; image i uses seed + i.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// How many images [default: 1, or the batch of --init-latents].
    #[arg(long, value_name = "N")]
    pub num_images: Option<usize>,
    /// safetensors file with a `latents` tensor [N, C, H/8, W/8] of unit-variance initial noise.
    #[arg(long, value_name = "FILE")]
    pub init_latents: Option<PathBuf>,
    /// A LoRA to apply, with an optional weight (default 1.0): `path/lora.safetensors:0.8`.
    /// Repeat to mix several.
    #[arg(long = "lora", value_name = "FILE[:WEIGHT]", value_parser = parse_lora)]
    pub loras: Vec<LoraArg>,
    /// Use the output of the N-th last text-encoder layer (A1111's "Clip skip").
    #[arg(long, default_value_t = 1)]
    pub clip_skip: usize,
    #[arg(long, value_name = "DEVICE", default_value = "cpu", hide_default_value = true, help = catlora::device::DEVICE_HELP)]
    pub device: String,
    /// The models' precision: fp32, or fp16 / bf16 (weights and activations in half precision,
    /// LoRA branches and normalisation statistics in float32).
    #[arg(long, value_enum, default_value = "fp32")]
    pub precision: Precision,
    /// Output folder (created if missing).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
}

#[derive(Clone, Debug, PartialEq)]
pub struct LoraArg {
    pub path: PathBuf,
    pub weight: f32,
}

/// `FILE[:WEIGHT]`: splits on the last `:` only when what follows is a number, so that paths
/// holding `:` (`C:\loras\x.safetensors`) stay whole.
pub fn parse_lora(s: &str) -> Result<LoraArg, String> {
    if let Some((path, w)) = s.rsplit_once(':')
        && let Ok(weight) = w.trim().parse::<f32>()
    {
        if path.is_empty() {
            return Err(format!("`{s}` has a weight but no file"));
        }
        if !weight.is_finite() {
            return Err(format!("LoRA weight `{w}` is not a finite number"));
        }
        return Ok(LoraArg { path: path.into(), weight });
    }
    if s.is_empty() {
        return Err("empty LoRA path".into());
    }
    Ok(LoraArg { path: s.into(), weight: 1.0 })
}

/// The file stem, as A1111 names a LoRA in `<lora:name:weight>`.
fn stem(p: &Path) -> String {
    p.file_stem().map_or_else(|| p.display().to_string(), |s| s.to_string_lossy().into_owned())
}

pub fn run(a: GenerateArgs) -> Result<()> {
    if !a.cfg.is_finite() {
        bail!("--cfg {} is not a finite number", a.cfg);
    }
    if a.num_images.is_some_and(|n| !(1..=MAX_IMAGES).contains(&n)) {
        bail!("--num-images {} is out of range: use 1 to {MAX_IMAGES}", a.num_images.unwrap_or(0));
    }
    if a.clip_skip == 0 {
        bail!("--clip-skip must be at least 1 (1 = the last layer)");
    }
    // Every image's seed exists before the first image is written (no partial output).
    let last = a.num_images.unwrap_or(1) as u64 - 1;
    if a.init_latents.is_none() && a.seed.checked_add(last).is_none() {
        bail!("--seed {} + --num-images {}: the last image's seed overflows u64 (at most {})", a.seed, last + 1, u64::MAX - last);
    }
    let device = catlora::device::parse(&a.device)?;
    // Sizes and memory are checked from the configs, before any weight is loaded.
    let configs = ModelConfigs::read(&a.model)?;
    let native = configs.unet.sample_size.map_or(512, |s| s * configs.vae_factor());
    let (width, height) = (a.width.unwrap_or(native), a.height.unwrap_or(native));
    let guided = if a.cfg != 1.0 { 2 } else { 1 };
    let init = match &a.init_latents {
        Some(path) => {
            if !path.is_file() {
                bail!("--init-latents {}: no such file", path.display());
            }
            let n = txt2img::latents_batch(path)?;
            if let Some(k) = a.num_images.filter(|&k| k != n) {
                bail!("--num-images {k} disagrees with {}, which holds {n} latents", path.display());
            }
            Some((path, n))
        }
        None => None,
    };
    let batch = init.map_or(1, |(_, n)| n);
    configs.check_run(width, height, batch * guided, false, "--width/--height")?;
    if a.clip_skip > configs.text_encoder.num_hidden_layers {
        bail!("--clip-skip {} exceeds the text encoder's {} layers", a.clip_skip, configs.text_encoder.num_hidden_layers);
    }
    std::fs::create_dir_all(&a.out).with_context(|| format!("cannot create the output folder {}", a.out.display()))?;
    // The library's load errors name the folder and file.
    let mut sd = StableDiffusion::load(&a.model, &device)?;
    sd.set_precision(a.precision)?;
    for l in &a.loras {
        let mut targets = sd.targets();
        let known = targets.known_modules();
        let file = lora_file::read(&l.path, &known)?;
        lora::attach_file(&mut targets, &file, l.weight, &l.path.display().to_string())?;
    }
    let params = GenerateParams {
        prompt: a.prompt.clone(),
        negative_prompt: a.negative_prompt.clone(),
        sampler: a.sampler,
        steps: a.steps,
        cfg: a.cfg,
        width,
        height,
        seed: a.seed,
        clip_skip: a.clip_skip,
    };
    sd.warn_if_truncated(&[&a.prompt, &a.negative_prompt]);

    // One job per `generate` call: (seed, initial latents), made when its turn comes.
    let count = match init {
        Some(_) => 1,
        None => a.num_images.unwrap_or(1),
    };
    let model_name = catlora::io::folder_name(&a.model);
    let loras: Vec<(String, f32)> = a.loras.iter().map(|l| (stem(&l.path), l.weight)).collect();
    let mut progress = super::Progress::new("sampling", (count * a.steps) as u64);
    let mut index = 0usize;
    for i in 0..count {
        let (seed, latents) = match init {
            Some((path, _)) => (a.seed, txt2img::read_latents(&sd, path, &params)?),
            None => {
                let seed = a.seed + i as u64;
                (seed, txt2img::seeded_latents(&sd, &params, seed))
            }
        };
        let p = GenerateParams { seed, ..params.clone() };
        let images = txt2img::generate(&sd, &p, latents, |_, _| progress.inc(1))?;
        for rgb in tensor_to_rgb8(images) {
            let path = a.out.join(format!("{seed}-{index}.png"));
            save_with_infotext(&path, &rgb, &p, &model_name, &loras, a.precision)?;
            progress.message(&format!("wrote {}", path.display()));
            index += 1;
        }
    }
    progress.finish();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lora_argument_splits_on_a_trailing_weight_only() {
        let l = |path: &str, weight| LoraArg { path: path.into(), weight };
        assert_eq!(parse_lora("a/b.safetensors").unwrap(), l("a/b.safetensors", 1.0));
        assert_eq!(parse_lora("a/b.safetensors:0.5").unwrap(), l("a/b.safetensors", 0.5));
        assert_eq!(parse_lora("C:\\x\\b.safetensors").unwrap(), l("C:\\x\\b.safetensors", 1.0));
        assert_eq!(parse_lora("C:\\x\\b.safetensors:-1").unwrap(), l("C:\\x\\b.safetensors", -1.0));
        assert_eq!(parse_lora("dir:v2/b.safetensors").unwrap(), l("dir:v2/b.safetensors", 1.0));
        assert!(parse_lora(":0.5").is_err());
        assert!(parse_lora("x:NaN").is_err());
        assert!(parse_lora("").is_err());
    }
}
