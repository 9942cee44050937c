//! The files a training run keeps beside its adapter file (log, checkpoint, samples, kohya-style
//! step saves), named from the adapter's path alone, so that evaluation finds an adapter's log.
use std::path::{Path, PathBuf};

/// Where a run's files go, all beside the adapter file.
pub struct RunPaths {
    pub adapter: PathBuf,
    pub log: PathBuf,
    pub checkpoint: PathBuf,
    pub samples: PathBuf,
    pub class_images: PathBuf,
}

impl RunPaths {
    pub fn new(out: &Path) -> Self {
        let stem = out.with_extension("");
        let side = |suffix: &str| PathBuf::from(format!("{}{suffix}", stem.display()));
        Self {
            adapter: out.to_path_buf(),
            log: side(".log.jsonl"),
            checkpoint: side(".checkpoint"),
            samples: side(".samples"),
            class_images: side(".class-images"),
        }
    }

    /// The adapter saved after `step` steps (`--save-every`), kohya style: `<stem>-000500.safetensors`.
    pub fn snapshot(&self, step: usize) -> PathBuf {
        self.beside(&format!("{step:06}"))
    }

    /// The adapter `--keep-best` picks: `<stem>-best.safetensors`.
    pub fn best(&self) -> PathBuf {
        self.beside("best")
    }

    fn beside(&self, tag: &str) -> PathBuf {
        let stem = self.adapter.with_extension("");
        let ext = self.adapter.extension().map(|e| e.to_string_lossy().into_owned()).unwrap_or_else(|| "safetensors".into());
        PathBuf::from(format!("{}-{tag}.{ext}", stem.display()))
    }
}
