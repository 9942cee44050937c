//! `catlora demo`: the paper's experiment in the toy shapes world, with the embedded models.
use anyhow::Result;
use catlora::toy::demo::{self, DemoOptions, DemoProgress};
use catlora::training::objective::LossTerms;
use catlora::training::trainer::Progress;
use clap::Args;
use std::path::PathBuf;
use std::time::Instant;

/// Reproduce the CAT paper's claim on a CPU in minutes: train plain LoRA, CAT, the blank and
/// class preservation targets, CAT with blank, DCO and DreamBooth adapters on five images of one
/// object, then measure identity, prompt fidelity, knowledge preservation (KPS) and how much each
/// adapter leaks into its class, without guidance and with it.
///
/// Writes OUT/data (the training images), OUT/adapters (the LoRA files with training logs),
/// OUT/eval and OUT/guided (every generated image), OUT/results.json and OUT/report.html, and
/// prints the table.
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
    /// λ: the weight of every preservation term [default: 1, the paper's].
    #[arg(long)]
    pub cat_weight: Option<f64>,
    /// Seeds per evaluation prompt.
    #[arg(long)]
    pub seeds: Option<usize>,
    /// Classifier-free guidance of the first evaluation [default: 1, none].
    #[arg(long)]
    pub cfg: Option<f64>,
    /// Guidance of the second evaluation (0 skips it) [default: 3].
    #[arg(long, value_name = "G")]
    pub guided_cfg: Option<f64>,
    #[arg(long, value_name = "DEVICE", default_value = "cpu", hide_default_value = true, help = catlora::device::DEVICE_HELP)]
    pub device: String,
    /// Preservation terms on every K-th step only, weighted K times (the expected gradient is
    /// unchanged) [default: 1, every step].
    #[arg(long, value_name = "K")]
    pub preserve_every: Option<usize>,
    /// Adapters trained and models evaluated at a time, each thread with its own copy of the
    /// models; the results are the same for any number [default: the CPU's threads with the
    /// embedded models, 1 with --models].
    #[arg(long, value_name = "N")]
    pub jobs: Option<usize>,
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
        preserve_every: a.preserve_every.unwrap_or(d.preserve_every),
        jobs: a.jobs.unwrap_or_else(|| match a.models {
            Some(_) => 1,
            None => std::thread::available_parallelism().map_or(1, usize::from),
        }),
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
    println!(
        "{:<12} {:>5} {:>8} {:>9} {:>7} {:>9} {:>6} {:>8}",
        "method", "CFG", "KPS", "identity", "prompt", "diversity", "copy", "colours"
    );
    for (name, m) in &r.methods {
        for (cfg, x) in std::iter::once((opts.cfg, &m.metrics)).chain(opts.guided_cfg.zip(m.guided.as_ref())) {
            let kps = x.kps.map_or("-".into(), |k| format!("{k:.4}"));
            println!(
                "{name:<12} {cfg:>5} {kps:>8} {:>9.4} {:>7.4} {:>9.4} {:>6.2} {:>8.2}",
                x.identity_similarity, x.prompt_similarity, x.diversity, x.copy_rate, x.colour_diversity
            );
        }
    }
    println!("colours of the trigger-less class images:");
    for (name, m) in &r.methods {
        for (cfg, x) in std::iter::once((opts.cfg, &m.metrics)).chain(opts.guided_cfg.zip(m.guided.as_ref())) {
            println!("  {name:<10} CFG {cfg}: {}", demo::colour_summary(&x.colours));
        }
    }
    let times: Vec<String> = r.train_seconds.iter().map(|(name, t)| format!("{name} {t:.1}")).collect();
    println!("training, s ({} at a time): {}", opts.jobs, times.join(", "));
    for c in &r.claims {
        println!("{} {}", if c.holds { "holds:" } else { "DOES NOT HOLD:" }, c.claim);
    }
    println!("{:.0} s; wrote {} and {}", r.seconds, opts.out.join("results.json").display(), opts.out.join("report.html").display());
    Ok(())
}
