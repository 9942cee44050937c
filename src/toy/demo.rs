//! `catlora demo`: the paper's experiment in the toy world, on a CPU, in minutes. Five drawings
//! of one personal object (a cyan-and-pink striped circle the base model never draws) train
//! three adapters with the same seed and steps: plain LoRA, CAT and DreamBooth (class prompt "a
//! circle"). The drawings sit on the three backgrounds in turn, as photos of one object are taken
//! in several places. Each adapter is then scored with CLIP (the evaluation module) and with the
//! world's ground truth:
//!
//! * `copy_rate`: among images of trigger-less class prompts ("a circle on a gray
//!   background"), the share that copy the personal object's look
//!   ([`super::world::copies_personal`]);
//! * `colour_diversity`: the effective number of colours among those images, `exp(H)` of the
//!   histogram of their colours: the personal look for an image that copies it, else its
//!   dominant palette colour ([`super::world::dominant_colour`]; images with no readable colour
//!   are left out). An adapter that paints every circle like the personal object collapses the
//!   histogram into one bin. The base model's value is the reference.
//!
//! The claims are read from images sampled without guidance (CFG 1): the methods train the
//! conditional prediction, and guidance adds a move of the unconditional one that none of them
//! trains. The class prompts are then sampled once more with guidance (`guided_cfg`, CFG 3), as
//! users sample, and that ground truth is reported beside the claims.
use super::world;
use crate::evaluation::eval::{EvalOptions, EvalResults, ModelSet, evaluate, generate_seeded, save_generated, write_outputs};
use crate::io::folder_name;
use crate::io::image::{RgbImage, load_rgb, save_png};
use crate::pipeline::txt2img::GenerateParams;
use crate::schedulers::SamplerKind;
use crate::training::config::{Concept, Method, SavePrecision, TrainConfig};
use crate::training::trainer::{Progress, train};
use crate::training::trigger::remove_trigger;
use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
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
    /// λ of CAT: 2, not the paper's 1. With λ 1 CAT's class images keep a residual pull towards
    /// the personal look (purple, the palette neighbour of its pink, doubles) in each of four
    /// training seeds; λ 2 removes it (README, "The demo").
    pub cat_weight: f64,
    pub prior_weight: f64,
    pub class_images: usize,
    /// Seeds per evaluation prompt. 32 (128 class images per model): with 8, the colour
    /// diversity of one model varies by about 10 % from one seed set to the next, as much as the
    /// margin the claims test.
    pub seeds: usize,
    pub sample_steps: usize,
    /// Guidance of the evaluation images, and so of the claims: none (1). Every method here
    /// trains the conditional prediction only; an adapter also moves the unconditional one
    /// (towards the personal look), and guidance `g` subtracts `g - 1` times that move, which
    /// pushes class images away from the personal look's colours. See `guided_cfg`.
    pub cfg: f64,
    /// Guidance of a second look at the trigger-less class images (`guided` in the results),
    /// as users sample; `None` skips it.
    pub guided_cfg: Option<f64>,
    pub device: String,
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
            cat_weight: 2.0,
            prior_weight: 1.0,
            class_images: 20,
            seeds: 32,
            sample_steps: 20,
            cfg: 1.0,
            guided_cfg: Some(3.0),
            device: "cpu".into(),
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
            (format!("--seeds {}: at least 2 seeds per prompt (diversity compares images of one prompt)", self.seeds), self.seeds < 2),
            (format!("--cfg {}: guidance must be a positive number", self.cfg), !guidance(self.cfg)),
            (
                format!("--guided-cfg {}: guidance must be 0 (skip) or a positive number", self.guided_cfg.unwrap_or(0.0)),
                self.guided_cfg.is_some_and(|g| !guidance(g)),
            ),
        ];
        match checks.into_iter().find(|(_, bad)| *bad) {
            Some((msg, _)) => bail!("{msg}"),
            None => Ok(()),
        }
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

/// Per method, the numbers the issue asks for.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct MethodResult {
    pub kps: Option<f64>,
    pub identity_similarity: f64,
    pub prompt_similarity: f64,
    pub diversity: f64,
    pub copy_rate: f64,
    pub colour_diversity: f64,
    /// The histogram behind `colour_diversity`: images per dominant colour (`personal` for
    /// copies of the personal look, `unreadable` for images with no readable colour).
    pub colours: BTreeMap<String, usize>,
    /// The same ground truth for class images sampled with `guided_cfg`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guided: Option<Truth>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Claim {
    pub claim: String,
    pub holds: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DemoResults {
    pub settings: DemoOptions,
    /// `base`, `lora`, `cat`, `dreambooth`.
    pub methods: BTreeMap<String, MethodResult>,
    pub claims: Vec<Claim>,
    pub seconds: f64,
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
        let bin = if world::copies_personal(img) { "personal" } else { world::dominant_colour(img).map_or("unreadable", |c| c.name()) };
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

/// The trigger-less class images of every model again, sampled with guidance `cfg`, written to
/// `out/<model>/`; their ground truth per model.
fn guided_truth(eval: &EvalOptions, cfg: f64, out: &Path, progress: &mut dyn DemoProgress) -> Result<BTreeMap<String, Truth>> {
    let set = ModelSet::load(&eval.model, &eval.adapters, &crate::device::parse(&eval.device)?)?.with_weights(&eval.weights);
    let seeds = eval.seed_list();
    let model_name = folder_name(&eval.model);
    let mut truth = BTreeMap::new();
    for (m, name) in set.names.iter().enumerate() {
        set.select(m);
        progress.message(&format!("{name}: class prompts with guidance {cfg}"));
        let mut images = Vec::new();
        for (pi, prompt) in eval.prompts.iter().enumerate() {
            let p = GenerateParams { cfg, ..eval.params(remove_trigger(prompt, &eval.trigger)) };
            for (rgb, &seed) in generate_seeded(&set.sd, &p, &seeds)?.into_iter().zip(&seeds) {
                save_generated(&out.join(format!("{name}/p{pi:02}-s{seed}.png")), &rgb, &p, seed, &model_name, set.lora(m))?;
                images.push(RgbImage::from_raw(p.width as u32, p.height as u32, rgb).context("an image of the generated size")?);
            }
        }
        truth.insert(name.clone(), truth_of(&images));
    }
    Ok(truth)
}

/// `red 5, blue 3, ...`, most frequent first.
pub fn colour_summary(colours: &BTreeMap<String, usize>) -> String {
    let mut v: Vec<_> = colours.iter().collect();
    v.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    v.iter().map(|(k, n)| format!("{k} {n}")).collect::<Vec<_>>().join(", ")
}

fn claims(m: &BTreeMap<String, MethodResult>) -> Vec<Claim> {
    let (base, lora, cat) = (&m["base"], &m["lora"], &m["cat"]);
    let (kl, kc) = (lora.kps.unwrap_or(0.0), cat.kps.unwrap_or(0.0));
    vec![
        Claim { claim: format!("KPS(CAT) {kc:.4} >= KPS(LoRA) {kl:.4} + 0.05"), holds: kc >= kl + 0.05 },
        Claim {
            claim: format!("identity(CAT) {:.4} >= 0.95 x identity(LoRA) {:.4}", cat.identity_similarity, lora.identity_similarity),
            holds: cat.identity_similarity >= 0.95 * lora.identity_similarity,
        },
        Claim {
            claim: format!("colour diversity(CAT) {:.2} >= 0.9 x base {:.2}", cat.colour_diversity, base.colour_diversity),
            holds: cat.colour_diversity >= 0.9 * base.colour_diversity,
        },
        Claim {
            claim: format!("colour diversity(LoRA) {:.2} < base {:.2}", lora.colour_diversity, base.colour_diversity),
            holds: lora.colour_diversity < base.colour_diversity,
        },
    ]
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
    progress.stage(&format!("drawing {} images of the personal object into {}", opts.images, data.display()));
    for (k, (img, _, caption)) in world::personal_objects(opts.seed, opts.images, TRIGGER, &world::Background::ALL).into_iter().enumerate()
    {
        save_png(&data.join(format!("{k:02}.png")), img.as_raw(), img.width(), img.height(), &[])?;
        crate::io::atomic::write(&data.join(format!("{k:02}.txt")), caption.as_bytes())?;
    }
    let sd = models.join("sd");
    let clip = models.join("clip");
    let resolution = world::SIZE;

    let mut adapters = Vec::new();
    for method in [Method::Lora, Method::Cat, Method::Dreambooth] {
        let file = out.join("adapters").join(format!("{}.safetensors", method.name()));
        let cfg = TrainConfig {
            model: sd.clone(),
            concepts: vec![Concept {
                data: data.clone(),
                trigger: TRIGGER.into(),
                class: Some("a circle".into()),
                class_data: None,
                repeats: 1,
            }],
            out: file.clone(),
            method,
            cat_weight: opts.cat_weight,
            prior_weight: opts.prior_weight,
            class_images: opts.class_images,
            rank: opts.rank,
            alpha: opts.rank as f32,
            lr: opts.lr,
            steps: opts.steps,
            resolution,
            seed: opts.seed,
            sample_steps: opts.sample_steps,
            device: opts.device.clone(),
            // The demo's measured numbers were made with full-precision adapters.
            save_precision: SavePrecision::Fp32,
            ..Default::default()
        };
        progress.stage(&format!("training {} ({} steps)", method.name(), opts.steps));
        train(&cfg, None, progress).with_context(|| format!("training the {} adapter", method.name()))?;
        adapters.push(file);
    }

    progress.stage("generating and scoring the evaluation images");
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
    };
    let mut g = evaluate(&eval_opts, |m| progress.message(m))?;
    let mut truth = BTreeMap::new();
    for m in &g.results.models {
        truth.insert(m.name.clone(), ground_truth(&eval_opts.out, &g.results, &m.name)?);
    }
    let mut guided = match opts.guided_cfg {
        Some(cfg) => {
            progress.stage(&format!("sampling the class prompts again with guidance {cfg}"));
            guided_truth(&eval_opts, cfg, &out.join("guided"), progress)?
        }
        None => BTreeMap::new(),
    };
    let mut methods = BTreeMap::new();
    for m in g.results.models.iter_mut() {
        let Truth { copy_rate, colour_diversity, colours } = truth.remove(&m.name).context("ground truth of a scored model")?;
        m.extra.insert("copy_rate".into(), copy_rate);
        m.extra.insert("colour_diversity".into(), colour_diversity);
        methods.insert(
            m.name.clone(),
            MethodResult {
                kps: m.kps,
                identity_similarity: m.identity_similarity,
                prompt_similarity: m.prompt_similarity,
                diversity: m.diversity,
                copy_rate,
                colour_diversity,
                colours,
                guided: guided.remove(&m.name),
            },
        );
    }
    let claims = claims(&methods);
    let results = DemoResults { settings: opts.clone(), methods, claims, seconds: started.elapsed().as_secs_f64() };
    let mut notes = String::from("<h2>The paper's claims in this run</h2><ul>");
    for c in &results.claims {
        notes.push_str(&format!("<li>{} {}</li>", if c.holds { "&#10003;" } else { "&#10007; does not hold:" }, c.claim));
    }
    notes.push_str(&format!("</ul><h2>Colours of the trigger-less class images (guidance {})</h2><ul>", opts.cfg));
    for (name, m) in &results.methods {
        notes.push_str(&format!("<li>{name}: {}</li>", colour_summary(&m.colours)));
    }
    if let Some(cfg) = opts.guided_cfg {
        notes.push_str(&format!(
            "</ul><h2>The same class prompts with guidance {cfg}</h2><p class=\"note\">Guidance subtracts {} times whatever an adapter changes in the unconditional prediction, which no method here trains.</p><ul>",
            cfg - 1.0
        ));
        for (name, m) in &results.methods {
            if let Some(t) = &m.guided {
                notes.push_str(&format!(
                    "<li>{name}: colour diversity {:.2}, copy rate {:.2}; {}</li>",
                    t.colour_diversity,
                    t.copy_rate,
                    colour_summary(&t.colours)
                ));
            }
        }
    }
    notes.push_str("</ul><p class=\"note\">copy rate: share of trigger-less class images that copy the personal object's cyan-and-pink look. colour diversity: effective number of dominant colours, exp(entropy), among those images. Both read off the pixels with the toy world's ground-truth classifiers.</p>");
    write_outputs(&eval_opts.out, &g.results, &adapters, "catlora demo: LoRA, CAT and DreamBooth in the shapes world", &notes)?;
    std::fs::copy(eval_opts.out.join("report.html"), out.join("report.html.tmp")).context("copying the report")?;
    std::fs::rename(out.join("report.html.tmp"), out.join("report.html")).context("moving the report into place")?;
    crate::io::atomic::write(&out.join("results.json"), serde_json::to_string_pretty(&results)?.as_bytes())?;
    Ok(results)
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
