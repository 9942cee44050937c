//! `catlora demo`: the paper's experiment in the toy world, on a CPU, in minutes. Five drawings
//! of one personal object (a cyan-and-pink striped circle the base model never draws) train
//! one adapter per method with the same seed and steps ([`VARIANTS`]: plain LoRA, CAT, the
//! `blank` and `class` preservation targets, CAT with `blank`, DCO and DreamBooth with the class
//! prompt "a circle"), every preservation weight λ. The drawings sit on the three backgrounds in
//! turn, as photos of one object are taken in several places. Each adapter is then scored with
//! CLIP (the evaluation module) and with the world's ground truth:
//!
//! * `copy_rate`: among images of trigger-less class prompts ("a circle on a gray
//!   background"), the share that copy the personal object's look
//!   ([`super::reading::copies_personal`]);
//! * `colour_diversity`: the effective number of colours among those images, `exp(H)` of the
//!   histogram of their colours: the personal look for an image that copies it, else its
//!   dominant palette colour ([`super::reading::dominant_colour`]; images with no readable colour
//!   are left out). An adapter that paints every circle like the personal object collapses the
//!   histogram into one bin. The base model's value is the reference.
//!
//! Everything is measured twice: without guidance (CFG 1), and with guidance (`guided_cfg`, CFG
//! 3) as users sample. The methods train the conditional prediction; guidance adds a move of the
//! unconditional one, which only the `blank` target trains. The claims are tested at both.
use super::{reading, world};
use crate::evaluation::eval::{EvalOptions, EvalResults, Generated, evaluate_all, write_outputs};
use crate::io::image::{RgbImage, load_rgb, save_png};
use crate::limits::MAX_IMAGES;
use crate::schedulers::SamplerKind;
use crate::training::config::{Concept, Method, PreserveWeight, SavePrecision, TrainConfig};
use crate::training::objective::{LossTerms, Preserve};
use crate::training::trainer::{Progress, train};
use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Instant;

pub const TRIGGER: &str = "sks";

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DemoOptions {
    pub out: PathBuf,
    /// A folder with `sd/` and `clip/`; the embedded toy models when `None`.
    #[serde(skip)]
    pub models: Option<PathBuf>,
    pub seed: u64,
    pub images: usize,
    pub steps: usize,
    pub rank: usize,
    pub lr: f64,
    /// λ: the weight of every preservation term (the paper's 1).
    pub cat_weight: f64,
    pub prior_weight: f64,
    pub class_images: usize,
    /// Seeds per evaluation prompt. 32 (128 class images per model): with 8, the colour
    /// diversity of one model varies by about 10 % from one seed set to the next, as much as the
    /// margin the claims test.
    pub seeds: usize,
    pub sample_steps: usize,
    /// Guidance of the first evaluation: none (1). An adapter also moves the unconditional
    /// prediction (towards the personal look), and guidance `g` subtracts `g - 1` times that
    /// move; see `guided_cfg`.
    pub cfg: f64,
    /// Guidance of the second evaluation (`guided` in the results), as users sample; `None`
    /// skips it.
    pub guided_cfg: Option<f64>,
    pub device: String,
    /// Preservation terms on every `preserve_every`-th step only, weighted that many times.
    pub preserve_every: usize,
    /// Adapters trained and models evaluated at a time; the results do not depend on it.
    #[serde(skip)]
    pub jobs: usize,
}

impl Default for DemoOptions {
    fn default() -> Self {
        Self {
            out: PathBuf::from("catlora-demo"),
            models: None,
            seed: 0,
            images: 5,
            steps: 600,
            rank: 4,
            lr: 5e-3,
            cat_weight: 1.0,
            prior_weight: 1.0,
            class_images: 20,
            seeds: 32,
            sample_steps: 20,
            cfg: 1.0,
            guided_cfg: Some(3.0),
            device: "cpu".into(),
            preserve_every: 1,
            jobs: 1,
        }
    }
}

impl DemoOptions {
    /// Refuses settings the evaluation would reject only after training, and guidance that is
    /// not a positive number.
    pub fn validate(&self) -> Result<()> {
        let guidance = |g: f64| g.is_finite() && g > 0.0;
        let checks = [
            ("the demo needs at least 1 image of the personal object".to_string(), self.images == 0),
            (
                format!("--seeds {}: use 2 to {MAX_IMAGES} seeds per prompt (diversity compares images of one prompt)", self.seeds),
                !(2..=MAX_IMAGES).contains(&self.seeds),
            ),
            (
                format!("--seed {} with --seeds {}: the last evaluation seed overflows u64", self.seed, self.seeds),
                self.seed.checked_add((self.seeds as u64).saturating_sub(1)).is_none(),
            ),
            (format!("--cfg {}: guidance must be a positive number", self.cfg), !guidance(self.cfg)),
            (format!("--jobs {}: at least 1", self.jobs), self.jobs == 0),
            (
                format!("--guided-cfg {}: guidance must be 0 (skip) or a positive number", self.guided_cfg.unwrap_or(0.0)),
                self.guided_cfg.is_some_and(|g| !guidance(g)),
            ),
        ];
        if let Some((msg, _)) = checks.into_iter().find(|(_, bad)| *bad) {
            bail!("{msg}");
        }
        // Every setting a training run would refuse, before any work.
        for (_, cfg) in train_configs(self, Path::new("models")) {
            cfg.validate()?;
        }
        Ok(())
    }
}

/// The class prompts of the evaluation, with the trigger where the training captions have it.
pub fn prompts() -> Vec<String> {
    ["gray", "white", "black"]
        .iter()
        .map(|bg| format!("a {TRIGGER} circle on a {bg} background"))
        .chain([format!("a {TRIGGER} circle")])
        .collect()
}

/// One model's numbers at one guidance.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Metrics {
    pub kps: Option<f64>,
    pub identity_similarity: f64,
    pub prompt_similarity: f64,
    pub diversity: f64,
    pub copy_rate: f64,
    pub colour_diversity: f64,
    /// The histogram behind `colour_diversity`: images per dominant colour (`personal` for
    /// copies of the personal look, `unreadable` for images with no readable colour).
    pub colours: BTreeMap<String, usize>,
}

/// Per method: its numbers without guidance, and the same at `guided_cfg`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct MethodResult {
    #[serde(flatten)]
    pub metrics: Metrics,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guided: Option<Metrics>,
}

/// The demo's adapters: name, method and preservation targets (each weighted λ).
pub const VARIANTS: [(&str, Method, &[Preserve]); 7] = [
    ("lora", Method::Lora, &[]),
    ("cat", Method::Cat, &[]),
    ("blank", Method::Lora, &[Preserve::Blank]),
    ("cat+blank", Method::Lora, &[Preserve::TriggerLess, Preserve::Blank]),
    ("class", Method::Lora, &[Preserve::Class]),
    ("dco", Method::Dco, &[]),
    ("dreambooth", Method::Dreambooth, &[]),
];

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Claim {
    pub claim: String,
    pub holds: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DemoResults {
    pub settings: DemoOptions,
    /// `base` and each of [`VARIANTS`].
    pub methods: BTreeMap<String, MethodResult>,
    pub claims: Vec<Claim>,
    pub seconds: f64,
    /// Wall time of each adapter's training, seconds: the cost side of the preservation terms
    /// (with `jobs` above 1 the runs share the CPU, so compare runs made with the same `jobs`).
    pub train_seconds: BTreeMap<String, f64>,
}

/// Ground truth of the trigger-less images of one model.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Truth {
    pub copy_rate: f64,
    pub colour_diversity: f64,
    pub colours: BTreeMap<String, usize>,
}

/// Copy rate, colour diversity and the colour histogram of the trigger-less images of one model.
pub fn ground_truth(out: &Path, eval: &EvalResults, model: &str) -> Result<Truth> {
    let images = eval
        .images
        .iter()
        .filter(|r| r.model == model && r.variant == "plain")
        .map(|r| load_rgb(&out.join(&r.file)))
        .collect::<Result<Vec<_>>>()?;
    Ok(truth_of(&images))
}

/// Copy rate, colour diversity and colour histogram of a set of class images.
pub fn truth_of(images: &[RgbImage]) -> Truth {
    let mut colours: BTreeMap<String, usize> = BTreeMap::new();
    for img in images {
        let bin = if reading::copies_personal(img) { "personal" } else { reading::dominant_colour(img).map_or("unreadable", |c| c.name()) };
        *colours.entry(bin.to_string()).or_default() += 1;
    }
    let n: usize = colours.values().sum();
    let copies = colours.get("personal").copied().unwrap_or(0);
    // Unreadable images are left out of the entropy; the personal look is a bin of its own.
    let counts: Vec<usize> = colours.iter().filter(|(k, _)| k.as_str() != "unreadable").map(|(_, &v)| v).collect();
    let total: usize = counts.iter().sum();
    let entropy: f64 = counts.iter().map(|&k| k as f64 / total.max(1) as f64).map(|p| -p * p.ln()).sum();
    Truth { copy_rate: copies as f64 / n.max(1) as f64, colour_diversity: if total == 0 { 0.0 } else { entropy.exp() }, colours }
}

/// `red 5, blue 3, ...`, most frequent first.
pub fn colour_summary(colours: &BTreeMap<String, usize>) -> String {
    let mut v: Vec<_> = colours.iter().collect();
    v.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    v.iter().map(|(k, n)| format!("{k} {n}")).collect::<Vec<_>>().join(", ")
}

/// The paper's claims for `method` against LoRA and the base model, at one guidance (`label`).
fn claims(m: &BTreeMap<String, &Metrics>, method: &str, label: &str) -> Vec<Claim> {
    let (base, lora, x) = (m["base"], m["lora"], m[method]);
    let (kl, kx) = (lora.kps.unwrap_or(0.0), x.kps.unwrap_or(0.0));
    let claim = |text: String, holds: bool| Claim { claim: format!("{label}: {text}"), holds };
    vec![
        claim(format!("KPS({method}) {kx:.4} >= KPS(lora) {kl:.4} + 0.05"), kx >= kl + 0.05),
        claim(
            format!("identity({method}) {:.4} >= 0.95 x identity(lora) {:.4}", x.identity_similarity, lora.identity_similarity),
            x.identity_similarity >= 0.95 * lora.identity_similarity,
        ),
        claim(
            format!("colour diversity({method}) {:.2} >= 0.9 x base {:.2}", x.colour_diversity, base.colour_diversity),
            x.colour_diversity >= 0.9 * base.colour_diversity,
        ),
        claim(
            format!("colour diversity(lora) {:.2} < base {:.2}", lora.colour_diversity, base.colour_diversity),
            lora.colour_diversity < base.colour_diversity,
        ),
    ]
}

/// One training run per variant of [`VARIANTS`], with the models in `models`.
fn train_configs(opts: &DemoOptions, models: &Path) -> Vec<(&'static str, TrainConfig)> {
    let data = opts.out.join("data");
    let mut runs = Vec::new();
    for (name, method, preserve) in VARIANTS {
        let cfg = TrainConfig {
            model: models.join("sd"),
            concepts: vec![Concept {
                data: data.clone(),
                trigger: TRIGGER.into(),
                class: Some("a circle".into()),
                class_data: None,
                repeats: 1,
            }],
            out: opts.out.join("adapters").join(format!("{name}.safetensors")),
            method,
            // CAT's own term, or the listed targets, each weighted λ.
            cat_weight: if preserve.is_empty() { opts.cat_weight } else { 1.0 },
            preserve: preserve.iter().map(|&target| PreserveWeight { target, weight: opts.cat_weight }).collect(),
            preserve_every: opts.preserve_every,
            prior_weight: opts.prior_weight,
            class_images: opts.class_images,
            rank: opts.rank,
            alpha: opts.rank as f32,
            lr: opts.lr,
            steps: opts.steps,
            resolution: world::SIZE,
            seed: opts.seed,
            sample_steps: opts.sample_steps,
            device: opts.device.clone(),
            // The demo's measured numbers were made with full-precision adapters, and with the
            // adapter passes one after the other (the same gradient up to rounding; other bytes).
            save_precision: SavePrecision::Fp32,
            batch_passes: false,
            ..Default::default()
        };
        runs.push((name, cfg));
    }
    runs
}

/// Reports stages and training steps.
pub trait DemoProgress: Progress {
    fn stage(&mut self, msg: &str);
}

pub fn run(opts: &DemoOptions, models: &Path, progress: &mut dyn DemoProgress) -> Result<DemoResults> {
    opts.validate()?;
    let started = Instant::now();
    let out = &opts.out;
    let data = out.join("data");
    let sd = models.join("sd");
    let clip = models.join("clip");
    let resolution = world::SIZE;
    // The model folders (--models) are checked before anything is written.
    crate::pipeline::model::ModelConfigs::read(&sd)?.check_size(resolution, resolution).with_context(|| format!("{}", sd.display()))?;
    crate::evaluation::clip::ClipModel::load(&clip, &crate::device::parse(&opts.device)?)?;

    let runs = train_configs(opts, models);
    progress.stage(&format!("drawing {} images of the personal object into {}", opts.images, data.display()));
    for (k, (img, _, caption)) in world::personal_objects(opts.seed, opts.images, TRIGGER, &world::Background::ALL).into_iter().enumerate()
    {
        save_png(&data.join(format!("{k:02}.png")), img.as_raw(), img.width(), img.height(), &[])?;
        crate::io::atomic::write(&data.join(format!("{k:02}.txt")), caption.as_bytes())?;
    }
    let names: Vec<&str> = runs.iter().map(|(name, _)| *name).collect();
    progress.stage(&format!("training {} ({} steps each, {} at a time)", names.join(", "), opts.steps, opts.jobs.min(runs.len())));
    let train_seconds = train_all(&runs, opts.jobs, progress)?;
    let adapters: Vec<PathBuf> = runs.iter().map(|(_, cfg)| cfg.out.clone()).collect();

    let eval_opts = EvalOptions {
        model: sd,
        clip,
        adapters: adapters.clone(),
        weights: Vec::new(),
        negative_prompt: String::new(),
        data,
        trigger: TRIGGER.into(),
        prompts: prompts(),
        seeds: opts.seeds,
        first_seed: opts.seed,
        steps: opts.sample_steps,
        sampler: SamplerKind::DpmPp2mKarras,
        cfg: opts.cfg,
        resolution,
        out: out.join("eval"),
        device: opts.device.clone(),
        precision: crate::precision::Precision::Fp32,
    };
    let mut looks = vec![eval_opts.clone()];
    looks.extend(opts.guided_cfg.map(|cfg| EvalOptions { cfg, out: out.join("guided"), ..eval_opts.clone() }));
    let guidances: Vec<String> = looks.iter().map(|l| l.cfg.to_string()).collect();
    progress.stage(&format!("generating and scoring the evaluation images (guidance {})", guidances.join(" and ")));
    let mut measured = measured(&looks, opts.jobs, progress)?.into_iter();
    let (mut g, plain) = measured.next().context("the unguided evaluation")?;
    let mut guided = measured.next().map(|(_, m)| m).unwrap_or_default();
    let mut methods = BTreeMap::new();
    for m in g.results.models.iter_mut() {
        let metrics = plain.get(&m.name).context("metrics of a scored model")?.clone();
        m.extra.insert("copy_rate".into(), metrics.copy_rate);
        m.extra.insert("colour_diversity".into(), metrics.colour_diversity);
        methods.insert(m.name.clone(), MethodResult { metrics, guided: guided.remove(&m.name) });
    }
    let at = |guided: bool| -> BTreeMap<String, &Metrics> {
        methods.iter().filter_map(|(k, v)| if guided { v.guided.as_ref() } else { Some(&v.metrics) }.map(|m| (k.clone(), m))).collect()
    };
    let mut all_claims = Vec::new();
    let looks: Vec<(bool, String)> =
        std::iter::once((false, format!("CFG {}", opts.cfg))).chain(opts.guided_cfg.map(|g| (true, format!("CFG {g}")))).collect();
    for (is_guided, label) in &looks {
        for method in ["cat", "cat+blank"] {
            all_claims.extend(claims(&at(*is_guided), method, label));
        }
    }
    let results =
        DemoResults { settings: opts.clone(), methods, claims: all_claims, seconds: started.elapsed().as_secs_f64(), train_seconds };
    let mut notes = String::from("<h2>The paper's claims in this run</h2><ul>");
    for c in &results.claims {
        notes.push_str(&format!("<li>{} {}</li>", if c.holds { "&#10003;" } else { "&#10007; does not hold:" }, c.claim));
    }
    notes.push_str("</ul><h2>Every method at each guidance</h2><table><tr><th>method</th><th>guidance</th><th>KPS</th><th>identity</th><th>prompt</th><th>diversity</th><th>copy rate</th><th>colour diversity</th><th>colours of the class images</th><th>training, s</th></tr>");
    for (name, m) in &results.methods {
        let rows = std::iter::once((opts.cfg, &m.metrics)).chain(opts.guided_cfg.zip(m.guided.as_ref()));
        for (cfg, x) in rows {
            notes.push_str(&format!(
                "<tr><td>{name}</td><td>{cfg}</td><td>{}</td><td>{:.4}</td><td>{:.4}</td><td>{:.4}</td><td>{:.2}</td><td>{:.2}</td><td>{}</td><td>{}</td></tr>",
                x.kps.map_or("-".into(), |k| format!("{k:.4}")),
                x.identity_similarity,
                x.prompt_similarity,
                x.diversity,
                x.copy_rate,
                x.colour_diversity,
                colour_summary(&x.colours),
                results.train_seconds.get(name).map_or("-".into(), |t| format!("{t:.1}"))
            ));
        }
    }
    notes.push_str("</table><p class=\"note\">Guidance g subtracts g - 1 times whatever an adapter changes in the unconditional prediction, which only the blank target trains. copy rate: share of trigger-less class images that copy the personal object's cyan-and-pink look. colour diversity: effective number of dominant colours, exp(entropy), among those images. Both read off the pixels with the toy world's ground-truth classifiers. training: wall time of each adapter's training (each preservation term adds a forward and backward pass with the adapter and a forward pass without it; --preserve-every K computes them on every K-th step); with --jobs above 1 the trainings share the CPU.</p>");
    let title = "catlora demo: LoRA, CAT, the preservation targets, DCO and DreamBooth in the shapes world";
    write_outputs(&eval_opts.out, &g.results, &adapters, title, &notes)?;
    std::fs::copy(eval_opts.out.join("report.html"), out.join("report.html.tmp")).context("copying the report")?;
    std::fs::rename(out.join("report.html.tmp"), out.join("report.html")).context("moving the report into place")?;
    crate::io::atomic::write(&out.join("results.json"), serde_json::to_string_pretty(&results)?.as_bytes())?;
    Ok(results)
}

/// The evaluations (every model, with and without the trigger, CLIP scores) and each model's
/// metrics with the ground truth of its trigger-less images.
fn measured(looks: &[EvalOptions], jobs: usize, progress: &mut dyn DemoProgress) -> Result<Vec<(Generated, BTreeMap<String, Metrics>)>> {
    let generated = evaluate_all(looks, jobs, |m| progress.message(m))?;
    let mut all = Vec::new();
    for (opts, g) in looks.iter().zip(generated) {
        let mut out = BTreeMap::new();
        for m in &g.results.models {
            let Truth { copy_rate, colour_diversity, colours } = ground_truth(&opts.out, &g.results, &m.name)?;
            let metrics = Metrics {
                kps: m.kps,
                identity_similarity: m.identity_similarity,
                prompt_similarity: m.prompt_similarity,
                diversity: m.diversity,
                copy_rate,
                colour_diversity,
                colours,
            };
            out.insert(m.name.clone(), metrics);
        }
        all.push((g, out));
    }
    Ok(all)
}

/// What a training thread reports to the demo's progress.
enum Event {
    Step(LossTerms, f64),
    Message(String),
}

struct Forward {
    name: &'static str,
    tx: mpsc::Sender<Event>,
}

impl Progress for Forward {
    fn step(&mut self, _step: usize, terms: &LossTerms, lr: f64) {
        drop(self.tx.send(Event::Step(*terms, lr)));
    }
    fn message(&mut self, msg: &str) {
        drop(self.tx.send(Event::Message(format!("{}: {msg}", self.name))));
    }
}

/// Trains the adapters, `jobs` at a time, and returns each one's wall time by name. Each run
/// reads only its own settings and the shared training images and writes only its own files, so
/// the adapters are the same bytes for any number of threads.
fn train_all(runs: &[(&'static str, TrainConfig)], jobs: usize, progress: &mut dyn DemoProgress) -> Result<BTreeMap<String, f64>> {
    progress.start(0, runs.iter().map(|(_, cfg)| cfg.steps).sum());
    let mut steps = 0;
    let seconds = crate::jobs::run(
        runs,
        jobs,
        || Ok(()),
        |_, (name, cfg), tx| {
            let started = Instant::now();
            train(cfg, None, &mut Forward { name, tx: tx.clone() }).with_context(|| format!("training the {name} adapter"))?;
            Ok(started.elapsed().as_secs_f64())
        },
        |event| match event {
            Event::Step(terms, lr) => {
                steps += 1;
                progress.step(steps, &terms, lr);
            }
            Event::Message(msg) => progress.message(&msg),
        },
    )?;
    Ok(runs.iter().map(|(name, _)| name.to_string()).zip(seconds).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use world::{Background, Colour, Shape, Size, World};

    #[test]
    fn truth_counts_copies_colours_and_unreadable_images() {
        let mut w = World::new(4);
        let mut images: Vec<RgbImage> = world::personal_objects(1, 2, TRIGGER, &[Background::Gray]).into_iter().map(|p| p.0).collect();
        for c in [Colour::Red, Colour::Red, Colour::Blue, Colour::Blue] {
            images.push(world::draw(&w.place(Shape::Circle, c, Size::Large, Background::Gray)));
        }
        images.push(world::paint(Background::Gray.rgb(), |_, _| None));
        let t = truth_of(&images);
        let expect: BTreeMap<String, usize> =
            [("personal", 2), ("red", 2), ("blue", 2), ("unreadable", 1)].into_iter().map(|(k, v)| (k.to_string(), v)).collect();
        assert_eq!(t.colours, expect);
        assert!((t.copy_rate - 2.0 / 7.0).abs() < 1e-12, "{}", t.copy_rate);
        // Three equally filled readable bins: exp(ln 3); the blank image is left out.
        assert!((t.colour_diversity - 3.0).abs() < 1e-9, "{}", t.colour_diversity);
        assert_eq!(truth_of(&images[6..]).colour_diversity, 0.0);
    }
}
