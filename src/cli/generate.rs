//! `catlora generate`: text to image with optional LoRAs, PNGs carrying A1111 infotext.
use anyhow::{Context, Result, bail};
use catlora::adapters::{lora, lora_file};
use catlora::io::image::{a1111_parameters, save_png, tensor_to_rgb8};
use catlora::pipeline::model::StableDiffusion;
use catlora::pipeline::txt2img::{self, GenerateParams};
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
    /// Image width in pixels (a multiple of the model's total downsampling, 64 for SD).
    #[arg(long, default_value_t = 512)]
    pub width: usize,
    /// Image height in pixels.
    #[arg(long, default_value_t = 512)]
    pub height: usize,
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
    /// `cpu` or `vulkan[:N]` (with a build that has the `vulkan` feature).
    #[arg(long, default_value = "cpu")]
    pub device: String,
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
    if a.num_images == Some(0) {
        bail!("--num-images must be at least 1");
    }
    if a.clip_skip == 0 {
        bail!("--clip-skip must be at least 1 (1 = the last layer)");
    }
    let device = catlora::device::parse(&a.device)?;
    // The library's load errors name the folder and file.
    let mut sd = StableDiffusion::load(&a.model, &device)?;
    sd.check_size(a.width, a.height)?;
    if a.clip_skip > sd.text_encoder.config.num_hidden_layers {
        bail!("--clip-skip {} exceeds the text encoder's {} layers", a.clip_skip, sd.text_encoder.config.num_hidden_layers);
    }
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
        width: a.width,
        height: a.height,
        seed: a.seed,
        clip_skip: a.clip_skip,
    };

    // One job per `generate` call: (seed, initial latents).
    let jobs: Vec<(u64, _)> = match &a.init_latents {
        Some(path) => {
            if !path.is_file() {
                bail!("--init-latents {}: no such file", path.display());
            }
            let latents = txt2img::read_latents(&sd, path, &params)?;
            let n = latents.dims()[0];
            if let Some(k) = a.num_images.filter(|&k| k != n) {
                bail!("--num-images {k} disagrees with {}, which holds {n} latents", path.display());
            }
            vec![(a.seed, latents)]
        }
        None => (0..a.num_images.unwrap_or(1) as u64)
            .map(|i| {
                let seed = a.seed.checked_add(i).context("--seed + image index overflows u64")?;
                Ok((seed, txt2img::seeded_latents(&sd, &params, seed)))
            })
            .collect::<Result<_>>()?,
    };
    std::fs::create_dir_all(&a.out).with_context(|| format!("cannot create the output folder {}", a.out.display()))?;

    let model_name = catlora::evaluation::eval::folder_name(&a.model);
    let lora_tags: String = a.loras.iter().map(|l| format!(" <lora:{}:{}>", stem(&l.path), l.weight)).collect();
    let bar = super::progress_bar((jobs.len() * a.steps) as u64, "sampling");
    let mut index = 0usize;
    for (seed, latents) in jobs {
        let p = GenerateParams { seed, ..params.clone() };
        let images = txt2img::generate(&sd, &p, latents, |_, _| bar.inc(1))?;
        for rgb in tensor_to_rgb8(images) {
            let text = a1111_parameters(
                &format!("{}{lora_tags}", a.prompt),
                &a.negative_prompt,
                a.steps,
                a.sampler.name(),
                a.cfg as f32,
                seed,
                a.width as u32,
                a.height as u32,
                &model_name,
                &clip_skip_extra(a.clip_skip),
            );
            let path = a.out.join(format!("{seed}-{index}.png"));
            save_png(&path, &rgb, a.width as u32, a.height as u32, &[("parameters", &text)])?;
            bar.suspend(|| eprintln!("wrote {}", path.display()));
            index += 1;
        }
    }
    bar.finish_and_clear();
    Ok(())
}

/// A1111 writes `Clip skip` only when it differs from 1.
fn clip_skip_extra(clip_skip: usize) -> Vec<(String, String)> {
    if clip_skip == 1 { Vec::new() } else { vec![("Clip skip".into(), clip_skip.to_string())] }
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
