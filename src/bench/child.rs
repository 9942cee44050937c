//! Every benchmark case runs in a fresh child process (`<exe> bench --case <JSON>`), so that one
//! case's peak memory is not another's; the child prints its result as one JSON line.
use anyhow::{Context, Result, bail};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The hidden argument of the per-case child: `<exe> bench --case <JSON>`.
pub const CHILD_CASE_FLAG: &str = "--case";

/// The running executable (the binary the children run).
pub fn current_exe() -> Result<PathBuf> {
    std::env::current_exe().context("cannot find the running executable")
}

/// Runs `<exe> bench --case <JSON of case>` with `threads` compute threads (rayon's pool and
/// libtorch's) and returns its result line.
pub fn run_in_child<C: Serialize, R: DeserializeOwned>(exe: &Path, case: &C, threads: Option<usize>, what: &str) -> Result<R> {
    let mut cmd = Command::new(exe);
    cmd.args(["bench", CHILD_CASE_FLAG, &serde_json::to_string(case)?]).stdout(Stdio::piped()).stderr(Stdio::inherit());
    if let Some(n) = threads {
        cmd.env("RAYON_NUM_THREADS", n.to_string());
    }
    let out = cmd.output().with_context(|| format!("cannot run {}", exe.display()))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!("{what} failed in {} ({}): {}", exe.display(), out.status, stdout.trim());
    }
    parse_lines::<R>(&stdout)?.into_iter().next().with_context(|| format!("{what}: the child printed no JSON result: {}", stdout.trim()))
}

/// A child's only output: its result as one JSON line on stdout.
pub fn print_result_line<T: Serialize>(r: &T) -> Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", serde_json::to_string(r)?)?;
    out.flush()?;
    Ok(())
}

/// The JSON result lines of a child's stdout (other lines are ignored).
pub fn parse_lines<T: DeserializeOwned>(stdout: &str) -> Result<Vec<T>> {
    stdout
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).with_context(|| format!("not a benchmark result: {l}")))
        .collect()
}
