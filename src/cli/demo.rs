//! `catlora demo`: the paper's experiment in the toy shapes world, with the embedded models.
use anyhow::Result;
use catlora::toy::demo::{self, DemoOptions, DemoProgress};
use catlora::training::objective::LossTerms;
use catlora::training::trainer::Progress;
use clap::Args;
use std::path::PathBuf;
use std::time::Instant;

/// Reproduce the CAT paper's claim on a CPU in minutes: train plain LoRA, CAT and DreamBooth
/// adapters on five images of one object, then measure identity, prompt fidelity, knowledge
/// preservation (KPS) and how much each adapter leaks into its class.
///
/// Writes OUT/data (the training images), OUT/adapters (three LoRA files with training logs),
/// OUT/eval (every generated image), OUT/results.json and OUT/report.html, and prints the table.
#[derive(Args, Debug)]
pub struct DemoArgs {
    #[arg(long, default_value = "catlora-demo", value_name = "DIR")]
    pub out: PathBuf,
    /// A folder with `sd/` and `clip/` to use instead of the embedded toy models.
    #[arg(long, value_name = "DIR")]
    pub models: Option<PathBuf>,
    #[arg(long)]
    pub seed: Option<u64>,
    /// Training steps of each adapter.
    #[arg(long)]
    pub steps: Option<usize>,
    #[arg(long)]
    pub lr: Option<f64>,
    #[arg(long)]
    pub rank: Option<usize>,
    /// λ of CAT.
    #[arg(long)]
    pub cat_weight: Option<f64>,
    /// Seeds per evaluation prompt.
    #[arg(long)]
    pub seeds: Option<usize>,
    /// Classifier-free guidance of the evaluation images and the claims [default: 1, none].
    #[arg(long)]
    pub cfg: Option<f64>,
    /// Guidance of a second sampling of the trigger-less class prompts, reported beside the
    /// claims (0 skips it) [default: 3].
    #[arg(long, value_name = "G")]
    pub guided_cfg: Option<f64>,
    /// `cpu` or `vulkan[:N]`.
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

struct Stages {
    started: Instant,
    progress: super::Progress,
}

impl Progress for Stages {
    fn start(&mut self, first: usize, total: usize) {
        self.progress.reset("  training", first as u64, total as u64);
    }
    fn step(&mut self, _step: usize, terms: &LossTerms, lr: f64) {
        self.progress.status(format!("{} lr {lr:.2e}", terms.describe()));
        self.progress.inc(1);
    }
    fn message(&mut self, msg: &str) {
        self.progress.message(&format!("  {msg}"));
    }
}

impl DemoProgress for Stages {
    fn stage(&mut self, msg: &str) {
        self.progress.finish();
        eprintln!("[{:>5.1} s] {msg}", self.started.elapsed().as_secs_f64());
    }
}

pub fn run(a: DemoArgs) -> Result<()> {
    let d = DemoOptions::default();
    let opts = DemoOptions {
        out: a.out,
        models: a.models.clone(),
        seed: a.seed.unwrap_or(d.seed),
        steps: a.steps.unwrap_or(d.steps),
        lr: a.lr.unwrap_or(d.lr),
        rank: a.rank.unwrap_or(d.rank),
        cat_weight: a.cat_weight.unwrap_or(d.cat_weight),
        seeds: a.seeds.unwrap_or(d.seeds),
        cfg: a.cfg.unwrap_or(d.cfg),
        guided_cfg: match a.guided_cfg {
            Some(0.0) => None,
            Some(g) => Some(g),
            None => d.guided_cfg,
        },
        device: a.device,
        ..d
    };
    opts.validate()?;
    let models = match a.models {
        Some(m) => m,
        None => catlora::toy::assets::materialise(&opts.out.join("models"))?,
    };
    let mut p = Stages { started: Instant::now(), progress: super::Progress::new("demo", 0) };
    let r = demo::run(&opts, &models, &mut p)?;
    p.progress.finish();
    println!("{:<12} {:>8} {:>9} {:>7} {:>9} {:>6} {:>8}", "method", "KPS", "identity", "prompt", "diversity", "copy", "colours");
    for (name, m) in &r.methods {
        let kps = m.kps.map_or("-".into(), |k| format!("{k:.4}"));
        println!(
            "{name:<12} {kps:>8} {:>9.4} {:>7.4} {:>9.4} {:>6.2} {:>8.2}",
            m.identity_similarity, m.prompt_similarity, m.diversity, m.copy_rate, m.colour_diversity
        );
    }
    println!("colours of the trigger-less class images (guidance {}):", opts.cfg);
    for (name, m) in &r.methods {
        println!("  {name:<10} {}", demo::colour_summary(&m.colours));
    }
    if let Some(g) = opts.guided_cfg {
        println!("the same class prompts with guidance {g} (copy rate, colour diversity; colours):");
        for (name, m) in &r.methods {
            if let Some(t) = &m.guided {
                println!("  {name:<10} {:.2} {:>5.2}  {}", t.copy_rate, t.colour_diversity, demo::colour_summary(&t.colours));
            }
        }
    }
    for c in &r.claims {
        println!("{} {}", if c.holds { "holds:" } else { "DOES NOT HOLD:" }, c.claim);
    }
    println!("{:.0} s; wrote {} and {}", r.seconds, opts.out.join("results.json").display(), opts.out.join("report.html").display());
    Ok(())
}
