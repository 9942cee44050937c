//! Writes the toy models as the reference libraries lay them out: a transformers `CLIPModel`
//! folder, a diffusers UNet folder, JSON files, copied tokenizer and model folders; every file
//! atomically.
use super::architecture::{clip_config_json, preprocessor_config_json, unet_config_json};
use super::params::{ModelParams, torch_tensors, write_safetensors};
use crate::io::safetensors::StoreAs;
use crate::training::params::Params;
use anyhow::{Context, Result};
use serde_json::Value;
use std::path::Path;

pub fn write_json(path: &Path, v: &Value) -> Result<()> {
    let mut s = serde_json::to_string_pretty(v)?;
    s.push('\n');
    crate::io::atomic::write(path, s.as_bytes())
}

pub const TOKENIZER_FILES: [&str; 2] = ["tokenizer.json", "tokenizer_config.json"];

pub fn copy_tokenizer(from: &Path, to: &Path) -> Result<()> {
    for f in TOKENIZER_FILES {
        let bytes = std::fs::read(from.join(f)).with_context(|| format!("cannot read {}", from.join(f).display()))?;
        crate::io::atomic::write(&to.join(f), &bytes)?;
    }
    Ok(())
}

/// Writes a `CLIPModel` folder: the weights of `hp` (a [`TrainableClip`]'s) in half precision,
/// `config.json`, `preprocessor_config.json` and the tokenizer files copied from `tokenizer_from`.
pub fn write_clip(dir: &Path, hp: &ModelParams, tokenizer_from: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut tensors = torch_tensors(&hp.params, |n| Some(n.to_string()));
    // transformers stores the temperature as a 0-d tensor.
    if let Some(t) = tensors.get_mut("logit_scale") {
        t.shape = vec![];
    }
    write_safetensors(&dir.join("model.safetensors"), &tensors, StoreAs::F16)?;
    write_json(&dir.join("config.json"), &clip_config_json())?;
    write_json(&dir.join("preprocessor_config.json"), &preprocessor_config_json())?;
    copy_tokenizer(tokenizer_from, dir)
}

pub fn write_unet(dir: &Path, params: &Params) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    write_safetensors(&dir.join("diffusion_pytorch_model.safetensors"), &torch_tensors(params, |n| Some(n.to_string())), StoreAs::F16)?;
    write_json(&dir.join("config.json"), &unet_config_json())
}

pub fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to)?;
    for e in std::fs::read_dir(from).with_context(|| format!("cannot read {}", from.display()))? {
        let e = e?;
        let bytes = std::fs::read(e.path())?;
        crate::io::atomic::write(&to.join(e.file_name()), &bytes)?;
    }
    Ok(())
}
