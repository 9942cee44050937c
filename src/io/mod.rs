//! File formats and file-system helpers shared by every command.
pub mod atomic;
pub mod image;
pub mod safetensors;

use crate::limits::MAX_TEXT_BYTES;
use anyhow::{Context, Result, bail};
use std::io::Read;
use std::path::Path;

/// A text file's contents: only a regular file of at most [`MAX_TEXT_BYTES`] (checked before and
/// while reading). The errors leave the path to the caller's context.
pub fn read_text(path: &Path) -> Result<String> {
    let file = std::fs::File::open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        bail!("not a regular file");
    }
    let too_big = |n: u64| anyhow::anyhow!("{n} bytes, more than the {} MiB a text file may have", MAX_TEXT_BYTES >> 20);
    if meta.len() > MAX_TEXT_BYTES {
        return Err(too_big(meta.len()));
    }
    let mut text = String::new();
    // The file may grow while it is read.
    file.take(MAX_TEXT_BYTES + 1).read_to_string(&mut text)?;
    if text.len() as u64 > MAX_TEXT_BYTES {
        return Err(too_big(text.len() as u64));
    }
    Ok(text)
}

/// A folder's (or file's) name for metadata and image infotext: the last component of the path
/// as the file system resolves it (`.` is the working folder's name), never the whole path.
pub fn folder_name(path: &Path) -> String {
    let p = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    p.file_name().map_or_else(|| p.display().to_string(), |n| n.to_string_lossy().into_owned())
}

/// The prompts of a prompt file (eval's `--prompts`, kohya's sample prompt files): one a line,
/// blank lines and `#` comments skipped; a file with none is an error.
pub fn read_prompt_file(path: &Path) -> Result<Vec<String>> {
    let text = read_text(path).with_context(|| format!("cannot read the prompt file {}", path.display()))?;
    let prompts: Vec<String> = text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).map(String::from).collect();
    if prompts.is_empty() {
        bail!("{}: no prompts (one a line; `#` starts a comment)", path.display());
    }
    Ok(prompts)
}

/// `text` made safe as one file-name component: letters, digits, `-`, `_` and `.` kept, any
/// other character `_`, no leading dot, at most 64 characters (a trigger such as `../../x`
/// becomes `_._.._x`, never a path).
pub fn safe_file_name(text: &str) -> String {
    let mut s: String =
        text.chars().map(|c| if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') { c } else { '_' }).take(64).collect();
    while s.starts_with('.') {
        s.replace_range(..1, "_");
    }
    if s.is_empty() { "_".into() } else { s }
}

#[cfg(test)]
mod tests {
    #[test]
    fn safe_file_names_are_single_components() {
        assert_eq!(super::safe_file_name("sks"), "sks");
        assert_eq!(super::safe_file_name("../../x"), "_._.._x");
        assert_eq!(super::safe_file_name("/etc/passwd"), "_etc_passwd");
        assert_eq!(super::safe_file_name(""), "_");
        assert_eq!(super::safe_file_name(".."), "_.");
    }
}
