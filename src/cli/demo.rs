//! `catlora demo`: placeholder; the lead writes its options and its call into the library.
use anyhow::{Result, bail};
use clap::Args;

/// Run a small end-to-end demonstration (not available yet).
#[derive(Args, Debug)]
pub struct DemoArgs {}

pub fn run(_: DemoArgs) -> Result<()> {
    bail!("`catlora demo` is not available yet")
}
