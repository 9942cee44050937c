//! `catlora eval`: placeholder; the lead writes its options and its call into the library.
use anyhow::{Result, bail};
use clap::Args;

/// Evaluate a trained adapter against its base model (not available yet).
#[derive(Args, Debug)]
pub struct EvalArgs {}

pub fn run(_: EvalArgs) -> Result<()> {
    bail!("`catlora eval` is not available yet")
}
