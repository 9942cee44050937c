//! Atomic file writes: write to a sibling temporary file with an unpredictable name, flush it to
//! disk, rename it over the target and flush the folder, so a crash leaves either the old file
//! or the new one, never half of one.
use anyhow::{Context, Result};
use std::io::Write;
use std::path::Path;

/// Writes `bytes` to `path` atomically, creating the parent folder if needed.
pub fn write(path: &Path, bytes: &[u8]) -> Result<()> {
    write_with(path, |f| f.write_all(bytes).map_err(Into::into))
}

/// Writes to `path` atomically through a callback that fills the temporary file.
pub fn write_with(path: &Path, fill: impl FnOnce(&mut std::fs::File) -> Result<()>) -> Result<()> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent).with_context(|| format!("cannot create folder {}", parent.display()))?;
    let name = path.file_name().with_context(|| format!("{} is not a file path", path.display()))?;
    let mut tmp = tempfile::Builder::new()
        .prefix(&format!(".{}.", name.to_string_lossy()))
        .suffix(".tmp")
        .tempfile_in(&parent)
        .with_context(|| format!("cannot create a temporary file in {}", parent.display()))?;
    fill(tmp.as_file_mut()).with_context(|| format!("writing {}", path.display()))?;
    tmp.as_file().sync_all().with_context(|| format!("cannot flush the temporary file for {}", path.display()))?;
    tmp.persist(path).map_err(|e| anyhow::anyhow!("cannot move the temporary file into place as {}: {}", path.display(), e.error))?;
    // The rename itself is durable once the folder is flushed.
    if let Ok(dir) = std::fs::File::open(&parent) {
        let _ = dir.sync_all();
    }
    Ok(())
}
