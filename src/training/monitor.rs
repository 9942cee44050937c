//! KPS during training: every `eval_every` steps the adapter so far draws a small fixed set of
//! images (each evaluation prompt with and without its trigger, for fixed seeds) and is scored
//! with the evaluation module's metrics, as `catlora eval` scores an adapter file: KPS against
//! the base model's images (made once, with the adapter switched off), identity against the
//! training images, prompt similarity against the trigger-less prompt. `--keep-best` then picks
//! one evaluated step by [`pick_best`]'s rule.
use super::config::TrainConfig;
use crate::captions::{contains_phrase, remove_trigger};
use crate::evaluation::clip::ClipModel;
use crate::evaluation::metrics;
use crate::io::image::RgbImage;
use crate::pipeline::model::StableDiffusion;
use crate::pipeline::txt2img::{GenerateParams, generate_seeded};
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

/// The scores of one evaluation, as the JSONL log holds them under `eval`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Scores {
    pub kps: f64,
    pub identity_similarity: f64,
    pub prompt_similarity: f64,
}

/// What stays fixed between evaluations: the prompts, seeds and the reference embeddings.
pub struct Monitor {
    clip: ClipModel,
    /// Per prompt: the sampling settings with the trigger and without it.
    prompts: Vec<(GenerateParams, GenerateParams)>,
    seeds: Vec<u64>,
    /// Per prompt: the trigger-less prompt's text embedding.
    texts: Vec<Vec<f32>>,
    training: Vec<Vec<f32>>,
    /// The base model's trigger-less images, prompt by prompt, seed by seed.
    base: Vec<Vec<f32>>,
}

/// The evaluation prompts of a run, each with the trigger of its concept: `eval_prompts`, or
/// `"<trigger>, <class>"` per concept; a prompt without any concept's trigger gets the first
/// concept's in front (as `catlora eval` does).
pub fn prompts(cfg: &TrainConfig) -> Vec<(String, String)> {
    let first = cfg.concepts.first().map(|c| c.trigger.clone()).unwrap_or_default();
    let given: Vec<String> = if cfg.eval_prompts.is_empty() {
        cfg.concepts.iter().map(|c| format!("{}, {}", c.trigger, c.class.as_deref().unwrap_or("a photo"))).collect()
    } else {
        cfg.eval_prompts.clone()
    };
    given
        .into_iter()
        .map(|p| match cfg.concepts.iter().find(|c| contains_phrase(&p, &c.trigger)) {
            Some(c) => (p.clone(), c.trigger.clone()),
            None => (format!("{first}, {p}"), first.clone()),
        })
        .collect()
}

impl Monitor {
    /// Loads the CLIP model, embeds the training images and the prompts, and draws the base
    /// model's images (before any adapter is attached).
    pub fn new(sd: &StableDiffusion, cfg: &TrainConfig, training: &[&RgbImage]) -> Result<Self> {
        let dir = cfg.clip.as_deref().context("--eval-every needs --clip DIR (a CLIP model folder)")?;
        let clip = ClipModel::load(dir, &sd.device).with_context(|| format!("--clip {}", dir.display()))?;
        let defaults = GenerateParams { steps: cfg.sample_steps, width: cfg.resolution, height: cfg.resolution, ..Default::default() };
        let prompts: Vec<(GenerateParams, GenerateParams)> = prompts(cfg)
            .into_iter()
            .map(|(p, trigger)| {
                let plain = remove_trigger(&p, &trigger);
                (GenerateParams { prompt: p, ..defaults.clone() }, GenerateParams { prompt: plain, ..defaults.clone() })
            })
            .collect();
        let seeds: Vec<u64> = (0..cfg.eval_seeds as u64).map(|s| cfg.seed.wrapping_add(s)).collect();
        let texts = clip.embed_texts(&prompts.iter().map(|(_, p)| p.prompt.as_str()).collect::<Vec<_>>());
        let pixels = training.iter().map(|img| clip.pixel_values(img)).collect::<Result<Vec<_>>>()?;
        let training = clip.embed_pixels(&pixels)?;
        let mut monitor = Self { clip, prompts, seeds, texts, training, base: Vec::new() };
        for (_, plain) in &monitor.prompts {
            let images = monitor.embed(sd, plain)?;
            monitor.base.extend(images);
        }
        Ok(monitor)
    }

    /// CLIP embeddings of the images `p` gives for each seed.
    fn embed(&self, sd: &StableDiffusion, p: &GenerateParams) -> Result<Vec<Vec<f32>>> {
        let pixels = generate_seeded(sd, p, &self.seeds)?
            .into_iter()
            .map(|rgb| {
                let img = RgbImage::from_raw(p.width as u32, p.height as u32, rgb).context("an image of the generated size")?;
                self.clip.pixel_values(&img)
            })
            .collect::<Result<Vec<_>>>()?;
        self.clip.embed_pixels(&pixels)
    }

    /// The scores of the adapter installed in `sd` now.
    pub fn score(&self, sd: &StableDiffusion) -> Result<Scores> {
        let (mut plain, mut prompt_similarity, mut triggered) = (Vec::new(), 0.0, Vec::new());
        for ((with, without), text) in self.prompts.iter().zip(&self.texts) {
            let images = self.embed(sd, with)?;
            prompt_similarity += metrics::prompt_similarity(text, &images)?;
            triggered.extend(images);
            plain.extend(self.embed(sd, without)?);
        }
        Ok(Scores {
            kps: metrics::kps(&self.base, &plain)?,
            identity_similarity: metrics::identity_similarity(&triggered, &self.training)?,
            prompt_similarity: prompt_similarity / self.prompts.len() as f64,
        })
    }
}

/// `--keep-best`'s rule: among the evaluations whose identity is within 5 % of the best identity
/// (the adapter has learnt the concept), the one with the highest KPS (it keeps the most of the
/// base model); the earliest on a tie. Returns its step.
pub fn pick_best(evals: &[(usize, Scores)]) -> Option<usize> {
    let best_identity = evals.iter().map(|(_, s)| s.identity_similarity).fold(f64::NEG_INFINITY, f64::max);
    let mut best: Option<(usize, f64)> = None;
    for &(step, s) in evals {
        if s.identity_similarity >= 0.95 * best_identity && best.is_none_or(|(_, kps)| s.kps > kps) {
            best = Some((step, s.kps));
        }
    }
    best.map(|(step, _)| step)
}

/// The evaluations a run's JSONL log holds (lines with `eval`), in order.
pub fn logged(log: &str) -> Result<Vec<(usize, Scores)>> {
    let mut out = Vec::new();
    for line in log.lines() {
        let v: serde_json::Value = serde_json::from_str(line).context("a malformed log line")?;
        if let (Some(step), Some(eval)) = (v.get("step").and_then(|s| s.as_u64()), v.get("eval")) {
            out.push((step as usize, serde_json::from_value(eval.clone()).context("a malformed `eval` entry")?));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(kps: f64, identity: f64) -> Scores {
        Scores { kps, identity_similarity: identity, prompt_similarity: 0.0 }
    }

    #[test]
    fn best_is_the_highest_kps_among_steps_near_the_best_identity() {
        // Step 100 keeps the most (KPS 0.99) but has not learnt the concept yet; step 400 has the
        // best identity; step 300 is within 5 % of it and keeps more than 400.
        let evals = [(100, s(0.99, 0.60)), (200, s(0.95, 0.80)), (300, s(0.93, 0.86)), (400, s(0.85, 0.90)), (500, s(0.80, 0.89))];
        assert_eq!(pick_best(&evals), Some(300));
        // A tie in KPS goes to the earlier step; no evaluations, no pick.
        assert_eq!(pick_best(&[(10, s(0.9, 0.9)), (20, s(0.9, 0.9))]), Some(10));
        assert_eq!(pick_best(&[]), None);
        let log = "{\"step\":1,\"loss\":0.5}\n{\"step\":1,\"eval\":{\"kps\":0.9,\"identity_similarity\":0.8,\"prompt_similarity\":0.3}}\n";
        assert_eq!(logged(log).unwrap(), [(1, Scores { kps: 0.9, identity_similarity: 0.8, prompt_similarity: 0.3 })]);
    }
}
