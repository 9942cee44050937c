//! Measurements of the toy base models with the world's ground-truth classifiers: does the
//! pipeline draw what a prompt names, and does the CLIP rank the right caption first?
use super::reading::{self, Reading};
use super::world::{self, CaptionStyle, Colour, Shape, World};
use crate::evaluation::clip::ClipModel;
use crate::io::image::{RgbImage, tensor_to_rgb8};
use crate::pipeline::model::StableDiffusion;
use crate::pipeline::txt2img::{GenerateParams, generate};
use crate::rng::Rng;
use crate::schedulers::SamplerKind;
use anyhow::Result;
use burn::tensor::{Device, Tensor};
use serde::Serialize;
use serde_json::{Value, json};
use std::path::Path;

/// Decoder output `[N, 3, H, W]` in [-1, 1] to images.
pub fn to_images(t: Tensor<4>) -> Vec<RgbImage> {
    let [_, _, h, w] = t.dims();
    tensor_to_rgb8(t).into_iter().map(|px| RgbImage::from_raw(w as u32, h as u32, px).expect("buffer of the image's size")).collect()
}

/// How the checks sample.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct SampleSettings {
    #[serde(serialize_with = "sampler_name")]
    pub sampler: SamplerKind,
    pub steps: usize,
    pub cfg: f64,
}

fn sampler_name<S: serde::Serializer>(k: &SamplerKind, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(k.name())
}

impl Default for SampleSettings {
    fn default() -> Self {
        Self { sampler: SamplerKind::DpmPp2m, steps: 20, cfg: 5.0 }
    }
}

/// `n` world-sized images for one prompt, from seeded initial latents (image `i` of seed `s` is
/// the same whatever `n` is).
pub fn generate_images(sd: &StableDiffusion, prompt: &str, n: usize, settings: SampleSettings, seed: u64) -> Result<Vec<RgbImage>> {
    let f = sd.vae_factor();
    let side = world::SIZE / f;
    let c = sd.unet.config.in_channels;
    let latents: Vec<Tensor<4>> =
        (0..n).map(|i| Rng::new(seed.wrapping_add(i as u64)).normal_tensor([1, c, side, side], &sd.device)).collect();
    let p = GenerateParams {
        prompt: prompt.to_string(),
        negative_prompt: String::new(),
        sampler: settings.sampler,
        steps: settings.steps,
        cfg: settings.cfg,
        width: world::SIZE,
        height: world::SIZE,
        seed,
        clip_skip: 1,
    };
    Ok(to_images(generate(sd, &p, Tensor::cat(latents, 0), |_, _| {})?))
}

/// What the classifiers read off the images generated for one "a {colour} {shape}" prompt.
#[derive(Clone, Debug, Serialize)]
pub struct PromptResult {
    pub prompt: String,
    pub n: usize,
    pub colour_hits: usize,
    pub shape_hits: usize,
    pub both_hits: usize,
    /// The colour read off each image (`None`: nothing in the foreground).
    pub colours: Vec<Option<&'static str>>,
    pub shapes: Vec<Option<&'static str>>,
}

/// Generates `per_prompt` images for "a {colour} {shape}" for each case and classifies them.
pub fn prompt_following(
    sd: &StableDiffusion,
    cases: &[(Colour, Shape)],
    per_prompt: usize,
    settings: SampleSettings,
    seed: u64,
) -> Result<Vec<PromptResult>> {
    let mut out = Vec::new();
    for (k, &(colour, shape)) in cases.iter().enumerate() {
        let prompt = format!("a {} {}", colour.name(), shape.name());
        let imgs = generate_images(sd, &prompt, per_prompt, settings, seed.wrapping_add(1000 * k as u64))?;
        let readings: Vec<Reading> = imgs.iter().map(reading::classify).collect();
        out.push(PromptResult {
            n: imgs.len(),
            colour_hits: readings.iter().filter(|r| r.colour == Some(colour)).count(),
            shape_hits: readings.iter().filter(|r| r.shape == Some(shape)).count(),
            both_hits: readings.iter().filter(|r| r.colour == Some(colour) && r.shape == Some(shape)).count(),
            colours: readings.iter().map(|r| r.colour.map(Colour::name)).collect(),
            shapes: readings.iter().map(|r| r.shape.map(Shape::name)).collect(),
            prompt,
        });
    }
    Ok(out)
}

/// Totals over prompts: (images, colour hits, shape hits, both).
pub fn totals(results: &[PromptResult]) -> (usize, usize, usize, usize) {
    results.iter().fold((0, 0, 0, 0), |a, r| (a.0 + r.n, a.1 + r.colour_hits, a.2 + r.shape_hits, a.3 + r.both_hits))
}

/// CLIP caption retrieval on world images: each image against the `Full` captions of every
/// combination the world can produce.
#[derive(Clone, Debug, Serialize)]
pub struct Ranking {
    pub images: usize,
    pub candidates: usize,
    /// The exact caption ranked first.
    pub top1: f64,
    /// The right caption among the first five.
    pub top5: f64,
    /// The first caption names the right colour / shape.
    pub colour: f64,
    pub shape: f64,
}

pub fn caption_ranking(clip: &ClipModel, n_images: usize, seed: u64) -> Result<Ranking> {
    let combos = World::combinations();
    let captions: Vec<String> =
        combos.iter().map(|&(sh, c, s, b)| format!("a {} {} {} on a {} background", s.name(), c.name(), sh.name(), b.name())).collect();
    let refs: Vec<&str> = captions.iter().map(String::as_str).collect();
    let text = clip.embed_texts(&refs);
    let samples = World::new(seed).samples(n_images);
    let pixels = samples.iter().map(|s| clip.pixel_values(&s.image)).collect::<Result<Vec<_>>>()?;
    let imgs = clip.embed_pixels(&pixels)?;
    let (mut top1, mut top5, mut colour, mut shape) = (0usize, 0usize, 0usize, 0usize);
    for (s, e) in samples.iter().zip(&imgs) {
        let mut scores: Vec<(f32, usize)> = text.iter().enumerate().map(|(j, t)| (t.iter().zip(e).map(|(a, b)| a * b).sum(), j)).collect();
        scores.sort_by(|a, b| b.0.total_cmp(&a.0));
        let truth = s.scene.caption(CaptionStyle::Full);
        let rank = scores.iter().position(|&(_, j)| captions[j] == truth).unwrap_or(usize::MAX);
        top1 += (rank == 0) as usize;
        top5 += (rank < 5) as usize;
        let (sh, c, _, _) = combos[scores[0].1];
        colour += (c == s.scene.colour) as usize;
        shape += (sh == s.scene.shape) as usize;
    }
    let f = |k: usize| k as f64 / n_images as f64;
    Ok(Ranking { images: n_images, candidates: captions.len(), top1: f(top1), top5: f(top5), colour: f(colour), shape: f(shape) })
}

/// Every (colour, shape) pair.
pub fn all_cases() -> Vec<(Colour, Shape)> {
    Colour::ALL.into_iter().flat_map(|c| Shape::ALL.into_iter().map(move |s| (c, s))).collect()
}

/// The numbers `pretrain.json` records: prompt following over every colour and shape (4 images
/// each) and CLIP caption ranking over 256 world images.
pub fn evaluate_base(sd_dir: &Path, clip_dir: &Path, seed: u64, verbose: bool) -> Result<Value> {
    let device = Device::flex();
    let sd = StableDiffusion::load(sd_dir, &device)?;
    let settings = SampleSettings::default();
    let results = prompt_following(&sd, &all_cases(), 4, settings, seed ^ 0xe7a1)?;
    let (n, c, s, b) = totals(&results);
    let clip = ClipModel::load(clip_dir, &device)?;
    let ranking = caption_ranking(&clip, 256, seed ^ 0xe7a2)?;
    if verbose {
        eprintln!(
            "[toy pretrain] prompt following over {n} images: colour {:.2}, shape {:.2}, both {:.2}; CLIP top-1 {:.2} of {} captions",
            c as f64 / n as f64,
            s as f64 / n as f64,
            b as f64 / n as f64,
            ranking.top1,
            ranking.candidates
        );
    }
    Ok(json!({
        "sampling": settings,
        "prompt_following": {
            "images": n,
            "colour": c as f64 / n as f64,
            "shape": s as f64 / n as f64,
            "both": b as f64 / n as f64,
            "per_prompt": results,
        },
        "clip_ranking": ranking,
    }))
}
