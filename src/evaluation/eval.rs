//! The engine of `catlora eval`: generates, for every prompt with and without the trigger and
//! for every seed, one image with the base model and one with each adapter (the same initial
//! noise for all), scores them with CLIP, and writes `results.json` and `report.html`.
use super::clip::ClipModel;
use super::metrics;
use super::report;
pub use super::results::{EvalResults, ImageRecord, ModelScores};
use crate::adapters::lora::{Adapter, attach_file};
use crate::adapters::lora_file;
use crate::adapters::run_paths::RunPaths;
use crate::captions::{contains_phrase, remove_trigger};
use crate::io::folder_name;
use crate::io::image::load_rgb;
use crate::limits::MAX_IMAGES;
use crate::pipeline::infotext::save_with_infotext;
use crate::pipeline::model::StableDiffusion;
use crate::pipeline::txt2img::{GenerateParams, generate_seeded};
use crate::precision::Precision;
use crate::schedulers::SamplerKind;
use anyhow::{Context, Result, bail};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

#[derive(Clone, Debug)]
pub struct EvalOptions {
    pub model: PathBuf,
    pub clip: PathBuf,
    pub adapters: Vec<PathBuf>,
    /// Each adapter's weight when selected (its LoRA scale; 1 for an adapter not listed).
    pub weights: Vec<f32>,
    /// The negative prompt of every image.
    pub negative_prompt: String,
    /// The adapters' training images (identity reference).
    pub data: PathBuf,
    pub trigger: String,
    /// Prompts with the trigger; one without it gets `"<trigger>, "` in front.
    pub prompts: Vec<String>,
    pub seeds: usize,
    pub first_seed: u64,
    pub steps: usize,
    pub sampler: SamplerKind,
    pub cfg: f64,
    pub resolution: usize,
    pub out: PathBuf,
    pub device: String,
    /// The generating models' precision (the CLIP model that scores stays float32).
    pub precision: Precision,
}

impl EvalOptions {
    /// The seeds, `first_seed` on: seed `s` gives every model the same initial noise.
    pub fn seed_list(&self) -> Vec<u64> {
        (0..self.seeds as u64).map(|s| self.first_seed + s).collect()
    }

    /// The sampling settings of one prompt's images.
    pub fn params(&self, prompt: String) -> GenerateParams {
        GenerateParams {
            prompt,
            negative_prompt: self.negative_prompt.clone(),
            sampler: self.sampler,
            steps: self.steps,
            cfg: self.cfg,
            width: self.resolution,
            height: self.resolution,
            seed: self.first_seed,
            ..Default::default()
        }
    }
}

/// The model names used for folders and tables: `base`, then each adapter's file stem
/// (made unique by position when two share a stem).
fn model_names(adapters: &[PathBuf]) -> Vec<String> {
    let mut names = vec!["base".to_string()];
    for (i, a) in adapters.iter().enumerate() {
        let stem = a.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| format!("adapter{i}"));
        let name = if names.contains(&stem) { format!("{stem}-{i}") } else { stem };
        names.push(name);
    }
    names
}

/// The base model with every adapter attached and switched off; [`ModelSet::select`] switches
/// one on. Model 0 is the base model, model `k` the `k`-th adapter.
pub struct ModelSet {
    pub sd: StableDiffusion,
    adapters: Vec<Adapter>,
    /// `base`, then one name per adapter ([`model_names`]).
    pub names: Vec<String>,
    /// Each adapter's weight when selected.
    pub weights: Vec<f32>,
}

impl ModelSet {
    pub fn load(model: &Path, adapters: &[PathBuf], device: &burn::tensor::Device, precision: Precision) -> Result<Self> {
        let mut sd = StableDiffusion::load(model, device)?;
        sd.set_precision(precision)?;
        let known = sd.targets().known_modules();
        let mut attached = Vec::new();
        for path in adapters {
            let file = lora_file::read(path, &known)?;
            attached.push(attach_file(&mut sd.targets(), &file, 0.0, &path.display().to_string())?);
        }
        Ok(Self { sd, weights: vec![1.0; attached.len()], adapters: attached, names: model_names(adapters) })
    }

    /// Sets the adapters' weights (`weights[k]` for adapter `k`; 1 for those not listed).
    pub fn with_weights(mut self, weights: &[f32]) -> Self {
        for (w, &given) in self.weights.iter_mut().zip(weights) {
            *w = given;
        }
        self
    }

    /// Generation from now on uses model `m` alone.
    pub fn select(&self, m: usize) {
        for (k, a) in self.adapters.iter().enumerate() {
            a.gate.set(if m == k + 1 { self.weights[k] } else { 0.0 });
        }
    }

    /// The LoRA tag of model `m` for image metadata: `None` for the base model.
    pub fn lora(&self, m: usize) -> Option<(&str, f32)> {
        (m > 0).then(|| (self.names[m].as_str(), self.weights[m - 1]))
    }
}

/// Saves a generated image with its settings in AUTOMATIC1111's `parameters` text, as
/// `catlora generate` does: `model` is the base model's name, `lora` the adapter in use (written
/// as a `<lora:name:weight>` tag after the prompt).
pub fn save_generated(
    path: &Path,
    rgb: &[u8],
    p: &GenerateParams,
    seed: u64,
    model: &str,
    lora: Option<(&str, f32)>,
    precision: Precision,
) -> Result<()> {
    let loras: Vec<(String, f32)> = lora.map(|(name, w)| (name.to_string(), w)).into_iter().collect();
    save_with_infotext(path, rgb, &GenerateParams { seed, ..p.clone() }, model, &loras, precision)
}

pub struct Generated {
    pub results: EvalResults,
    /// CLIP embeddings of every image, in `results.images` order.
    pub embeddings: Vec<Vec<f32>>,
}

/// Generates every image and scores it.
pub fn evaluate(opts: &EvalOptions, progress: impl FnMut(&str)) -> Result<Generated> {
    let mut all = evaluate_all(std::slice::from_ref(opts), 1, progress)?;
    Ok(all.remove(0))
}

/// Several evaluations of the same models and adapters (the demo's two guidances), their
/// images generated by `workers` threads. Each thread holds its own copy of the models (memory
/// grows with `workers`) and takes the next (evaluation, model) job; an image depends only on
/// its job, so the files and scores are the same for any number of threads.
pub fn evaluate_all(runs: &[EvalOptions], workers: usize, mut progress: impl FnMut(&str)) -> Result<Vec<Generated>> {
    let first = runs.first().context("no evaluation to run")?;
    for opts in runs {
        if !(2..=MAX_IMAGES).contains(&opts.seeds) {
            bail!("--seeds {}: use 2 to {MAX_IMAGES} (diversity compares images of one prompt)", opts.seeds);
        }
        if opts.first_seed.checked_add(opts.seeds as u64 - 1).is_none() {
            bail!("--first-seed {} with --seeds {}: the last seed overflows u64", opts.first_seed, opts.seeds);
        }
        if !opts.cfg.is_finite() {
            bail!("--cfg {} is not a finite number", opts.cfg);
        }
        if opts.prompts.is_empty() {
            bail!("no prompts to evaluate");
        }
        let shared = |o: &EvalOptions| (o.model.clone(), o.adapters.clone(), o.weights.clone(), o.device.clone(), o.precision);
        if shared(opts) != shared(first) {
            bail!("evaluations run together must share the model, adapters, weights, device and precision");
        }
    }
    let device = crate::device::parse(&first.device)?;
    let load_set = || -> Result<ModelSet> {
        Ok(ModelSet::load(&first.model, &first.adapters, &device, first.precision)?.with_weights(&first.weights))
    };
    let set = load_set()?;
    for opts in runs {
        set.sd.check_size(opts.resolution, opts.resolution)?;
        crate::schedulers::make(opts.sampler, &set.sd.scheduler, opts.steps).context("--steps and --sampler")?;
    }
    // Loaded before the long generation so that a bad CLIP folder fails at once.
    let clip = ClipModel::load(&first.clip, &device)?;
    let names = set.names.clone();
    // Prompts too long for either text encoder are said once, before the work.
    let prompts: BTreeSet<String> = runs.iter().flat_map(trigger_prompts).collect();
    set.sd.warn_if_truncated(&prompts.iter().map(String::as_str).collect::<Vec<_>>());
    let scored: BTreeSet<String> =
        runs.iter().flat_map(|o| trigger_prompts(o).into_iter().map(|p| remove_trigger(&p, &o.trigger))).collect();
    for m in scored.iter().filter_map(|p| clip.truncation(p)) {
        eprintln!("warning: CLIP: {m}");
    }

    // The costliest first, for a balanced finish: guidance doubles the UNet's batch.
    let mut jobs: Vec<(usize, usize)> = (0..runs.len()).flat_map(|r| (0..names.len()).map(move |m| (r, m))).collect();
    jobs.sort_by_key(|&(r, _)| runs[r].cfg == 1.0);
    let total: usize = jobs.iter().map(|&(r, _)| runs[r].prompts.len() * 2).sum();
    // The first thread takes the models loaded above; the others load their own.
    let loaded = Mutex::new(Some(set));
    let load = || match loaded.lock().expect("no thread panicked holding it").take() {
        Some(set) => Ok(set),
        None => load_set(),
    };
    let mut said = 0;
    let done = crate::jobs::run(
        &jobs,
        workers,
        load,
        |set, &(r, m), tx| {
            let label = if runs.len() > 1 { format!("{} (CFG {})", names[m], runs[r].cfg) } else { names[m].clone() };
            generate_model(&runs[r], set, m, &label, &mut |msg| drop(tx.send(msg.to_string())))
        },
        |msg: String| {
            said += 1;
            progress(&format!("[{said}/{total}] {msg}"));
        },
    )?;

    let mut per_run: Vec<Vec<(usize, Vec<ImageRecord>)>> = runs.iter().map(|_| Vec::new()).collect();
    for (&(r, m), images) in jobs.iter().zip(done) {
        per_run[r].push((m, images));
    }
    let mut out = Vec::with_capacity(runs.len());
    for (opts, mut models) in runs.iter().zip(per_run) {
        models.sort_by_key(|&(m, _)| m);
        let images = models.into_iter().flat_map(|(_, images)| images).collect();
        progress("scoring with CLIP");
        out.push(score(opts, &clip, &names, images)?);
    }
    Ok(out)
}

/// The evaluation prompts, each with the trigger.
fn trigger_prompts(opts: &EvalOptions) -> Vec<String> {
    opts.prompts.iter().map(|p| if contains_phrase(p, &opts.trigger) { p.clone() } else { format!("{}, {p}", opts.trigger) }).collect()
}

/// Model `m`'s images: every prompt with and without the trigger, every seed, saved.
fn generate_model(opts: &EvalOptions, set: &ModelSet, m: usize, label: &str, say: &mut dyn FnMut(&str)) -> Result<Vec<ImageRecord>> {
    set.select(m);
    let name = &set.names[m];
    let model_name = folder_name(&opts.model);
    let seeds = opts.seed_list();
    let mut images = Vec::new();
    for (pi, prompt) in trigger_prompts(opts).iter().enumerate() {
        for (variant, text) in [("trigger", prompt.clone()), ("plain", remove_trigger(prompt, &opts.trigger))] {
            say(&format!("{label}: {text}"));
            let p = opts.params(text.clone());
            for (rgb, &seed) in generate_seeded(&set.sd, &p, &seeds)?.iter().zip(&seeds) {
                let file = format!("images/{name}/{variant}/p{pi:02}-s{seed}.png");
                save_generated(&opts.out.join(&file), rgb, &p, seed, &model_name, set.lora(m), opts.precision)?;
                images.push(ImageRecord {
                    model: name.clone(),
                    prompt_index: pi,
                    variant: variant.into(),
                    prompt: text.clone(),
                    seed,
                    file,
                });
            }
        }
    }
    Ok(images)
}

/// CLIP scores of one evaluation's images.
fn score(opts: &EvalOptions, clip: &ClipModel, names: &[String], images: Vec<ImageRecord>) -> Result<Generated> {
    let prompts = trigger_prompts(opts);
    let paths: Vec<PathBuf> = images.iter().map(|r| opts.out.join(&r.file)).collect();
    let embeddings = clip.embed_image_files(&paths)?;
    let training = clip.embed_image_files(&super::score::list_images(&opts.data)?)?;
    let plain_texts: Vec<String> = prompts.iter().map(|p| remove_trigger(p, &opts.trigger)).collect();
    let text_emb = clip.embed_texts(&plain_texts.iter().map(String::as_str).collect::<Vec<_>>());

    let select = |model: &str, variant: &str, prompt: Option<usize>| -> Vec<Vec<f32>> {
        images
            .iter()
            .zip(&embeddings)
            .filter(|(r, _)| r.model == model && r.variant == variant && prompt.is_none_or(|p| r.prompt_index == p))
            .map(|(_, e)| e.clone())
            .collect()
    };
    let mut models = Vec::new();
    for (m, name) in names.iter().enumerate() {
        let mut ps = 0.0;
        let mut div = 0.0;
        for (pi, emb) in text_emb.iter().enumerate().take(prompts.len()) {
            ps += metrics::prompt_similarity(emb, &select(name, "trigger", Some(pi)))?;
            div += metrics::diversity(&select(name, "plain", Some(pi)))?;
        }
        let n = prompts.len() as f64;
        models.push(ModelScores {
            name: name.clone(),
            path: if m == 0 { None } else { Some(opts.adapters[m - 1].display().to_string()) },
            prompt_similarity: ps / n,
            identity_similarity: metrics::identity_similarity(&select(name, "trigger", None), &training)?,
            kps: if m == 0 { None } else { Some(metrics::kps(&select("base", "plain", None), &select(name, "plain", None))?) },
            diversity: div / n,
            extra: Default::default(),
        });
    }
    let results = EvalResults {
        trigger: opts.trigger.clone(),
        prompts,
        seeds: opts.seed_list(),
        steps: opts.steps,
        sampler: opts.sampler.to_string(),
        cfg: opts.cfg,
        resolution: opts.resolution,
        precision: opts.precision,
        models,
        images,
    };
    Ok(Generated { results, embeddings })
}

/// Writes `results.json` and `report.html` into the output folder (both atomically).
/// `notes_html` is inserted under the title (the demo puts its claims there).
pub fn write_outputs(out: &Path, results: &EvalResults, adapters: &[PathBuf], title: &str, notes_html: &str) -> Result<()> {
    crate::io::atomic::write(&out.join("results.json"), serde_json::to_string_pretty(results)?.as_bytes())?;
    let logs: Vec<(String, PathBuf)> = results
        .models
        .iter()
        .skip(1)
        .zip(adapters)
        .map(|(m, a)| (m.name.clone(), RunPaths::new(a).log))
        .filter(|(_, log)| log.is_file())
        .collect();
    let html = report::render(out, results, &logs, title, notes_html)?;
    crate::io::atomic::write(&out.join("report.html"), html.as_bytes())
}

/// Checks that every image a results file names exists and decodes.
pub fn check_images(out: &Path, results: &EvalResults) -> Result<()> {
    for r in &results.images {
        load_rgb(&out.join(&r.file))?;
    }
    Ok(())
}
