//! Training checkpoints: the adapter's parameters, the optimiser's moments, the random state and
//! the step, in one safetensors file written atomically, so a crash leaves the previous
//! checkpoint whole and `--resume` continues to the same bytes an uninterrupted run gives.
use super::adamw::AdamW;
use super::objective::LossTerms;
use super::params::{Params, host};
use crate::io::safetensors::{self, OwnedTensor, SafeTensorsFile};
use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub const FILE: &str = "checkpoint.safetensors";

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct State {
    /// Optimiser steps completed.
    pub step: usize,
    pub rng: [u64; 3],
    pub adam_step: u64,
    /// The training configuration, serialised; a resumed run must use the same one.
    pub config: serde_json::Value,
    pub last: LossTerms,
    /// fp16's dynamic loss scale (absent for float32 and bf16 runs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss_scale: Option<super::loss_scale::LossScale>,
}

pub struct Checkpoint {
    pub state: State,
    pub names: Vec<String>,
    pub values: Vec<Vec<f32>>,
    pub exp_avg: Vec<Vec<f32>>,
    pub exp_avg_sq: Vec<Vec<f32>>,
}

pub fn path(dir: &Path) -> PathBuf {
    dir.join(FILE)
}

/// Writes the parameters and the optimiser's moments (copied from the device) with `state`.
pub fn save(dir: &Path, state: &State, params: &Params, opt: &AdamW) -> Result<()> {
    let mut t = BTreeMap::new();
    for (k, name) in params.names.iter().enumerate() {
        let shape = params.shapes[k].clone();
        t.insert(format!("param.{name}"), OwnedTensor { shape: shape.clone(), data: host(&params.values[k]) });
        t.insert(format!("exp_avg.{name}"), OwnedTensor { shape: shape.clone(), data: host(&opt.exp_avg[k]) });
        t.insert(format!("exp_avg_sq.{name}"), OwnedTensor { shape, data: host(&opt.exp_avg_sq[k]) });
    }
    let mut md = BTreeMap::new();
    md.insert("catlora_checkpoint".to_string(), serde_json::to_string(state)?);
    md.insert("catlora_names".to_string(), serde_json::to_string(&params.names)?);
    safetensors::write(&path(dir), &t, &md)
}

pub fn load(dir: &Path) -> Result<Checkpoint> {
    let p = path(dir);
    if !p.is_file() {
        bail!("{}: no checkpoint to resume from (expected {})", dir.display(), p.display());
    }
    let f = SafeTensorsFile::open(&p)?;
    let state: State =
        serde_json::from_str(f.metadata().get("catlora_checkpoint").with_context(|| format!("{}: no checkpoint state", p.display()))?)
            .with_context(|| format!("{}: malformed checkpoint state", p.display()))?;
    let names: Vec<String> =
        serde_json::from_str(f.metadata().get("catlora_names").with_context(|| format!("{}: no parameter list", p.display()))?)
            .with_context(|| format!("{}: malformed parameter list", p.display()))?;
    let get = |prefix: &str| -> Result<Vec<Vec<f32>>> { names.iter().map(|n| Ok(f.f32_finite(&format!("{prefix}.{n}"))?.1)).collect() };
    Ok(Checkpoint { values: get("param")?, exp_avg: get("exp_avg")?, exp_avg_sq: get("exp_avg_sq")?, names, state })
}
