//! Loads named weights from the safetensors files of one model folder onto a device, checking
//! every shape so that a mismatch names the file and tensor instead of failing later in a matmul.
use crate::io::safetensors::SafeTensorsFile;
use anyhow::{Context, Result, bail};
use burn::tensor::{Device, Tensor, TensorData};
use std::path::{Path, PathBuf};

use super::random_weights::RandomWeights;

/// Where the tensors come from: safetensors files, or a seeded random source that answers every
/// name with the shape asked (so any configuration loads without a checkpoint, for benchmarks).
enum Source {
    Files(Vec<SafeTensorsFile>),
    Random(RandomWeights),
}

pub struct Weights {
    source: Source,
    device: Device,
}

impl Weights {
    /// Opens the weights of a diffusers / transformers component folder: `<stem>.safetensors`,
    /// else the `<stem>.fp16.safetensors` variant, else a sharded `<stem>.safetensors.index.json`.
    pub fn open_dir(dir: &Path, stem: &str, device: &Device) -> Result<Self> {
        let candidates = [format!("{stem}.safetensors"), format!("{stem}.fp16.safetensors")];
        for c in &candidates {
            let p = dir.join(c);
            if p.is_file() {
                return Self::open_files(&[p], device);
            }
        }
        let index = dir.join(format!("{stem}.safetensors.index.json"));
        if index.is_file() {
            let text = crate::io::read_text(&index).with_context(|| format!("cannot read {}", index.display()))?;
            let v: serde_json::Value = serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", index.display()))?;
            let map =
                v.get("weight_map").and_then(|m| m.as_object()).with_context(|| format!("{}: no `weight_map` object", index.display()))?;
            let mut shards = Vec::new();
            for (tensor, file) in map {
                let name = file.as_str().with_context(|| format!("{}: the shard of `{tensor}` is not a file name", index.display()))?;
                // A shard must be a file inside the model folder: no absolute path, no `..`.
                let inside = Path::new(name).components().all(|c| matches!(c, std::path::Component::Normal(_)));
                if !inside || name.is_empty() {
                    bail!("{}: the shard `{name}` of `{tensor}` is not a file inside {}", index.display(), dir.display());
                }
                shards.push(dir.join(name));
            }
            shards.sort();
            shards.dedup();
            return Self::open_files(&shards, device);
        }
        for bin in [format!("{stem}.bin"), "pytorch_model.bin".to_string()] {
            if dir.join(&bin).is_file() {
                bail!("{}: only a pickle checkpoint `{bin}` is present; catlora reads safetensors only (convert it first)", dir.display());
            }
        }
        bail!("{}: no weights found (looked for {} and {})", dir.display(), candidates[0], candidates[1])
    }

    pub fn open_files(paths: &[PathBuf], device: &Device) -> Result<Self> {
        let files = paths.iter().map(|p| SafeTensorsFile::open(p)).collect::<Result<Vec<_>>>()?;
        Ok(Self { source: Source::Files(files), device: device.clone() })
    }

    /// Seeded random weights for any name and shape the loader asks for (see `random_weights`).
    pub fn random(seed: u64, device: &Device) -> Self {
        Self { source: Source::Random(RandomWeights::new(seed)), device: device.clone() }
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    fn locate(&self, name: &str) -> Option<&SafeTensorsFile> {
        match &self.source {
            Source::Files(files) => files.iter().find(|f| f.info(name).is_some()),
            Source::Random(_) => None,
        }
    }

    pub fn has(&self, name: &str) -> bool {
        matches!(self.source, Source::Random(_)) || self.locate(name).is_some()
    }

    fn describe(&self) -> String {
        match &self.source {
            Source::Files(files) => files.iter().map(|f| f.path().display().to_string()).collect::<Vec<_>>().join(", "),
            Source::Random(r) => format!("random weights (seed {})", r.seed()),
        }
    }

    /// Raw values and shape of a tensor, checked against `shape`.
    pub fn values(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        if let Source::Random(r) = &self.source {
            return Ok(r.values(name, shape));
        }
        let f = self.locate(name).with_context(|| format!("{}: missing tensor `{name}` (expected shape {shape:?})", self.describe()))?;
        let (got, values) = f.f32_finite(name)?;
        if got != shape {
            bail!("{}: tensor `{name}` has shape {got:?}, expected {shape:?}", f.path().display());
        }
        Ok(values)
    }

    pub fn tensor<const D: usize>(&self, name: &str, shape: [usize; D]) -> Result<Tensor<D>> {
        let values = self.values(name, &shape)?;
        Ok(Tensor::from_data(TensorData::new(values, shape), &self.device))
    }

    /// A `[out, in]` PyTorch linear weight, stored transposed as `[in, out]` for `x @ W`.
    pub fn linear_weight(&self, name: &str, out_f: usize, in_f: usize) -> Result<Tensor<2>> {
        let v = self.values(name, &[out_f, in_f])?;
        Ok(Tensor::from_data(TensorData::new(transpose(&v, out_f, in_f), [in_f, out_f]), &self.device))
    }
}

/// Transposes a row-major `[rows, cols]` matrix.
pub fn transpose(v: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0.0; v.len()];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = v[r * cols + c];
        }
    }
    out
}
