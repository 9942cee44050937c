//! The toy models, embedded in the binary so that `catlora demo` runs on a machine with no
//! downloaded weights. `materialise` writes them out as ordinary model folders.
use anyhow::Result;
use std::path::{Path, PathBuf};

macro_rules! asset {
    ($rel:literal) => {
        ($rel, include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/assets/toy/", $rel)) as &[u8])
    };
}

/// Every file of `assets/toy`, by path relative to it. The CLIP tokenizer is stored once and
/// written to both folders that need it.
const FILES: &[(&str, &[u8])] = &[
    asset!("sd/model_index.json"),
    asset!("sd/scheduler/scheduler_config.json"),
    asset!("sd/text_encoder/config.json"),
    asset!("sd/text_encoder/model.safetensors"),
    asset!("sd/unet/config.json"),
    asset!("sd/unet/diffusion_pytorch_model.safetensors"),
    asset!("sd/vae/config.json"),
    asset!("sd/vae/diffusion_pytorch_model.safetensors"),
    asset!("clip/config.json"),
    asset!("clip/model.safetensors"),
    asset!("clip/preprocessor_config.json"),
];

const TOKENIZER: &[(&str, &[u8])] = &[asset!("clip/tokenizer.json"), asset!("clip/tokenizer_config.json")];

/// Writes the embedded models into `dir` (`dir/sd`, `dir/clip`), each file atomically, skipping
/// files already there with the same bytes. Returns `dir`.
pub fn materialise(dir: &Path) -> Result<PathBuf> {
    let mut all: Vec<(String, &[u8])> = FILES.iter().map(|(p, b)| (p.to_string(), *b)).collect();
    for (name, bytes) in TOKENIZER {
        let file = Path::new(name).file_name().unwrap().to_string_lossy().into_owned();
        all.push((format!("clip/{file}"), bytes));
        all.push((format!("sd/tokenizer/{file}"), bytes));
    }
    for (rel, bytes) in all {
        let path = dir.join(&rel);
        if std::fs::read(&path).is_ok_and(|b| b == bytes) {
            continue;
        }
        crate::io::atomic::write(&path, bytes)?;
    }
    Ok(dir.to_path_buf())
}
