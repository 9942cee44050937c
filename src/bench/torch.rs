//! The PyTorch side: `bench/torch_unet.py` and `bench/torch_train.py`, embedded in the binary so
//! that the benchmark runs from any directory, run with the Python the user names (a venv with
//! torch, diffusers and peft; `bash scripts/setup-bench.sh` makes one).
use super::case::BenchCase;
use super::child::parse_lines;
use super::train::{TrainMethod, TrainResult, TrainSettings};
use super::unet::BenchResult;
use anyhow::{Context, Result, bail};
use std::path::Path;
use std::process::{Command, Stdio};

pub const TORCH_UNET_SCRIPT: &str = include_str!("../../bench/torch_unet.py");
/// Imports `torch_unet.py`: both are written side by side when it runs.
pub const TORCH_TRAIN_SCRIPT: &str = include_str!("../../bench/torch_train.py");

/// Writes both scripts into a fresh scratch folder and runs `script` with `args`; returns the
/// result lines of its stdout.
fn run_script(python: &Path, script: &str, args: &[String]) -> Result<String> {
    let dir = tempfile::Builder::new().prefix("catlora-bench-").tempdir().context("cannot create a scratch folder")?;
    for (name, text) in [("torch_unet.py", TORCH_UNET_SCRIPT), ("torch_train.py", TORCH_TRAIN_SCRIPT)] {
        std::fs::write(dir.path().join(name), text).with_context(|| format!("cannot write into {}", dir.path().display()))?;
    }
    let out = Command::new(python)
        .arg(dir.path().join(script))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("cannot run {}", python.display()))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!("{} {script} failed ({}): {}", python.display(), out.status, stdout.trim());
    }
    Ok(stdout)
}

/// The UNet passes of one case in PyTorch + diffusers.
pub fn run_unet(python: &Path, case: &BenchCase, threads: usize) -> Result<BenchResult> {
    let args = vec!["--cases".into(), serde_json::to_string(&[case])?, "--threads".into(), threads.to_string()];
    let stdout = run_script(python, "torch_unet.py", &args)?;
    parse_lines::<BenchResult>(&stdout)?
        .into_iter()
        .find(|r| r.case == case.name)
        .with_context(|| format!("the PyTorch benchmark printed no result for case `{}`", case.name))
}

/// One training step of one case in PyTorch + peft, for each of `methods` (each in its own
/// process).
pub fn run_train(
    python: &Path,
    case: &BenchCase,
    methods: &[TrainMethod],
    settings: &TrainSettings,
    threads: usize,
) -> Result<Vec<TrainResult>> {
    let names: Vec<&str> = methods.iter().map(|m| m.torch_name()).collect::<Result<_>>()?;
    let args = vec![
        "--cases".into(),
        serde_json::to_string(&[case])?,
        "--methods".into(),
        names.join(","),
        "--threads".into(),
        threads.to_string(),
        "--rank".into(),
        settings.rank.to_string(),
        "--lam".into(),
        settings.lambda.to_string(),
        "--lr".into(),
        settings.lr.to_string(),
    ];
    let results = parse_lines::<TrainResult>(&run_script(python, "torch_train.py", &args)?)?;
    for m in methods {
        if !results.iter().any(|r| r.case == case.name && r.method == *m) {
            bail!("the PyTorch training benchmark printed no result for case `{}` / {}", case.name, m.label());
        }
    }
    Ok(results)
}
