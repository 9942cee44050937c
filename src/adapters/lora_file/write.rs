//! Writing a LoRA in kohya or PEFT naming (the processor naming is read only).
use super::*;
use crate::io::safetensors::{self, OwnedTensor, StoreAs};
use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Checks that every entry's data fits its shape and that no module appears twice.
fn check(lora: &LoraFile) -> Result<()> {
    let mut problems = Vec::new();
    let mut seen = BTreeSet::new();
    for e in &lora.entries {
        let name = format!("{} `{}`", component_label(e.component), e.module);
        if !seen.insert((e.component, e.module.as_str())) {
            problems.push(format!("{name}: appears twice"));
        }
        if e.rank == 0 || e.down.len() != e.rank * e.in_features || e.up.len() != e.out_features * e.rank {
            problems.push(format!(
                "{name}: rank {} in {} out {} but down holds {} values and up {}",
                e.rank,
                e.in_features,
                e.out_features,
                e.down.len(),
                e.up.len()
            ));
        }
    }
    if !problems.is_empty() {
        bail!("cannot write the LoRA ({}):\n  {}", count(problems.len()), problems.join("\n  "));
    }
    Ok(())
}

/// The most frequent value (the first seen among ties), for the single rank / alpha a format's
/// metadata holds.
fn most_common<T: Copy + PartialEq>(values: impl Iterator<Item = T>) -> Option<T> {
    let mut counts: Vec<(T, usize)> = Vec::new();
    for v in values {
        match counts.iter_mut().find(|(u, _)| *u == v) {
            Some((_, n)) => *n += 1,
            None => counts.push((v, 1)),
        }
    }
    let best = counts.iter().fold(None::<(T, usize)>, |b, &(v, n)| match b {
        Some((_, bn)) if bn >= n => b,
        _ => Some((v, n)),
    });
    best.map(|(v, _)| v)
}

fn alpha_json(a: f32) -> Value {
    if a.fract() == 0.0 && a.abs() < 1e9 { json!(a as i64) } else { json!(a as f64) }
}

/// The safetensors bytes of `lora` in kohya naming (what AUTOMATIC1111, ComfyUI and kohya's
/// scripts load). `output_name` fills `ss_output_name` unless the metadata already has one.
pub fn kohya_bytes(lora: &LoraFile, output_name: &str, store: StoreAs) -> Result<Vec<u8>> {
    check(lora)?;
    let mut tensors = BTreeMap::new();
    for e in &lora.entries {
        let base = format!("{}_{}", e.component.kohya_prefix(), e.module.replace('.', "_"));
        tensors.insert(format!("{base}.lora_down.weight"), OwnedTensor { shape: e.down_shape(), data: e.down.clone() });
        tensors.insert(format!("{base}.lora_up.weight"), OwnedTensor { shape: e.up_shape(), data: e.up.clone() });
        tensors.insert(format!("{base}.alpha"), OwnedTensor { shape: vec![], data: vec![e.alpha] });
    }
    let mut md = lora.metadata.clone();
    // PEFT's config would describe a file that is no longer PEFT.
    md.remove("lora_adapter_metadata");
    md.insert("ss_network_module".into(), "networks.lora".into());
    if let Some(r) = most_common(lora.entries.iter().map(|e| e.rank)) {
        md.insert("ss_network_dim".into(), r.to_string());
    }
    if let Some(a) = most_common(lora.entries.iter().map(|e| e.alpha)) {
        md.insert("ss_network_alpha".into(), alpha_text(a));
    }
    md.entry("ss_base_model_version".into()).or_insert_with(|| "sd_v1".into());
    md.entry("ss_output_name".into()).or_insert_with(|| output_name.into());
    safetensors::serialize_as(&tensors, &md, store)
}

/// The safetensors bytes of `lora` in PEFT naming, as diffusers' `save_lora_weights` writes it
/// (loadable by `pipe.load_lora_weights`).
pub fn peft_bytes(lora: &LoraFile, store: StoreAs) -> Result<Vec<u8>> {
    check(lora)?;
    let mut tensors = BTreeMap::new();
    // A BTreeMap serialises with sorted keys, as diffusers' `json.dumps(sort_keys=True)`.
    let mut config: BTreeMap<String, Value> = BTreeMap::new();
    for c in [Component::Unet, Component::TextEncoder] {
        let entries: Vec<&LoraEntry> = lora.entries.iter().filter(|e| e.component == c).collect();
        let (Some(r), Some(alpha)) = (most_common(entries.iter().map(|e| e.rank)), most_common(entries.iter().map(|e| e.alpha))) else {
            continue;
        };
        let p = c.diffusers_prefix();
        for e in &entries {
            let base = format!("{p}.{}", e.module);
            tensors.insert(format!("{base}.lora_A.weight"), OwnedTensor { shape: e.down_shape(), data: e.down.clone() });
            tensors.insert(format!("{base}.lora_B.weight"), OwnedTensor { shape: e.up_shape(), data: e.up.clone() });
        }
        // Full module paths, as diffusers itself writes them when it infers a config: PEFT then
        // wraps exactly these modules, and each pattern key (a regex matched as `(.*\.)?key$`) hits
        // its one module.
        let mut rank_pattern = serde_json::Map::new();
        let mut alpha_pattern = serde_json::Map::new();
        for e in &entries {
            if e.rank != r {
                rank_pattern.insert(e.module.clone(), json!(e.rank));
            }
            if e.alpha != alpha {
                alpha_pattern.insert(e.module.clone(), alpha_json(e.alpha));
            }
        }
        let targets: Vec<&str> = entries.iter().map(|e| e.module.as_str()).collect();
        // The fields diffusers' loader needs (`rank_pattern`, `target_modules` are read directly)
        // plus the defaults that pin down plain LoRA; everything is passed to `LoraConfig(**...)`.
        let fields = [
            ("alpha_pattern", Value::Object(alpha_pattern)),
            ("bias", json!("none")),
            ("init_lora_weights", json!(true)),
            ("lora_alpha", alpha_json(alpha)),
            ("lora_dropout", json!(0.0)),
            ("peft_type", json!("LORA")),
            ("r", json!(r)),
            ("rank_pattern", Value::Object(rank_pattern)),
            ("target_modules", json!(targets)),
            ("use_dora", json!(false)),
            ("use_rslora", json!(false)),
        ];
        for (k, v) in fields {
            config.insert(format!("{p}.{k}"), v);
        }
    }
    let mut md = lora.metadata.clone();
    // kohya's network description would describe a file that is no longer kohya.
    md.retain(|k, _| !k.starts_with("ss_network_"));
    md.insert("format".into(), "pt".into());
    md.insert("lora_adapter_metadata".into(), serde_json::to_string_pretty(&config)?);
    safetensors::serialize_as(&tensors, &md, store)
}

/// The bytes of `lora` in `format` (kohya or PEFT; the processor naming is read only), every
/// tensor stored as `store`; `output_name` fills kohya's `ss_output_name` when unset.
pub fn bytes(lora: &LoraFile, format: Format, store: StoreAs, output_name: &str) -> Result<Vec<u8>> {
    match format {
        Format::Kohya => kohya_bytes(lora, output_name, store),
        Format::Peft => peft_bytes(lora, store),
        Format::DiffusersProcessor => bail!("the diffusers attention-processor naming is read only; write kohya or peft"),
    }
}

/// Writes `lora` in `format` atomically, storing every tensor as `store`.
pub fn write_as(path: &Path, lora: &LoraFile, format: Format, store: StoreAs) -> Result<()> {
    let name = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let bytes = bytes(lora, format, store, &name).with_context(|| format!("writing {}", path.display()))?;
    crate::io::atomic::write(path, &bytes)
}

/// Writes `lora` in `format` atomically, in float32.
pub fn write(path: &Path, lora: &LoraFile, format: Format) -> Result<()> {
    write_as(path, lora, format, StoreAs::F32)
}
