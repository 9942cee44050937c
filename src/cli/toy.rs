//! `catlora toy pretrain`: retrains the embedded toy base models from scratch.
use anyhow::Result;
use catlora::toy::{PretrainOptions, pretrain};
use clap::{Args, Subcommand};
use std::path::PathBuf;

/// The toy shapes world behind `catlora demo`.
#[derive(Args, Debug)]
pub struct ToyArgs {
    #[command(subcommand)]
    command: ToyCommand,
}

#[derive(Subcommand, Debug)]
enum ToyCommand {
    Pretrain(PretrainArgs),
}

/// Pretrain the toy base models (tiny CLIP, text encoder, VAE, UNet) on the shapes world, as
/// committed under assets/toy: writes OUT/sd (a diffusers pipeline folder), OUT/clip (a
/// transformers CLIPModel folder) and OUT/pretrain.json. Deterministic for a seed.
#[derive(Args, Debug)]
struct PretrainArgs {
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Multiplies every stage's step count (1 reproduces the committed weights).
    #[arg(long, default_value_t = 1.0)]
    steps_scale: f64,
    /// Take the CLIP (and so the text encoder) from this earlier output folder instead of
    /// training it again, for experiments with later stages (the result is close to a full
    /// run's, not byte-identical).
    #[arg(long, value_name = "DIR")]
    reuse_clip: Option<PathBuf>,
    /// Take the VAE from this earlier output folder, likewise.
    #[arg(long, value_name = "DIR")]
    reuse_vae: Option<PathBuf>,
}

pub fn run(a: ToyArgs) -> Result<()> {
    match a.command {
        ToyCommand::Pretrain(p) => {
            // 1000 times the committed schedule is weeks of CPU time; more is a typo.
            anyhow::ensure!(
                p.steps_scale > 0.0 && p.steps_scale <= 1000.0,
                "--steps-scale {}: use a number above 0, at most 1000",
                p.steps_scale
            );
            let opts = PretrainOptions { seed: p.seed, reuse_clip: p.reuse_clip, reuse_vae: p.reuse_vae, ..PretrainOptions::default() }
                .scaled(p.steps_scale);
            let report = pretrain(&p.out, &opts)?;
            let total = report.seconds.get("total_training").copied().unwrap_or_default()
                + report.seconds.get("evaluation").copied().unwrap_or_default();
            eprintln!("wrote {} and {} in {total:.0} s", p.out.join("sd").display(), p.out.join("clip").display());
            Ok(())
        }
    }
}
