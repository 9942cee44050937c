//! Full-model training for the toy world: every parameter a model visits is a device tensor of
//! [`Params`], installed as an autodiff leaf before each step and updated by AdamW from its
//! gradient. Also half-precision rounding and saving in the PyTorch layout.
use crate::io::safetensors::{OwnedTensor, StoreAs, write_as};
use crate::training::adamw::{AdamW, AdamWConfig};
use crate::training::params::{Leaf, ParamSource, Params, clip_to_norm, global_norm, host, to_device};
use anyhow::{Result, bail};
use burn::tensor::{Gradients, Tensor};
use std::collections::BTreeMap;
use std::path::Path;

/// A model's parameters and their AdamW state.
pub struct ModelParams {
    pub params: Params,
    pub opt: AdamW,
}

/// Options of one optimisation step.
#[derive(Clone, Copy, Debug)]
pub struct StepOptions {
    pub lr: f64,
    /// Clip the global gradient norm to this (`None`: no clipping).
    pub clip_norm: Option<f64>,
}

impl ModelParams {
    /// Takes every parameter of `model`, in visiting order.
    pub fn collect(model: &mut dyn ParamSource, config: AdamWConfig) -> Self {
        let params = Params::collect(model);
        let opt = AdamW::new(config, params.zeros());
        Self { params, opt }
    }

    pub fn count(&self) -> usize {
        self.params.count()
    }

    /// Writes the values into the model: autodiff leaves when `trainable`, plain tensors
    /// otherwise (for inference).
    pub fn install(&self, model: &mut dyn ParamSource, trainable: bool) -> Vec<Leaf> {
        self.params.install(model, trainable)
    }

    /// One AdamW update from the gradients of `leaves`. Returns the global gradient norm before
    /// clipping; a non-finite one is an error.
    pub fn update(&mut self, leaves: &[Leaf], grads: &Gradients, opts: StepOptions) -> Result<f64> {
        let mut g = self.params.gradients(leaves, grads)?;
        let norm = global_norm(&g);
        if !norm.is_finite() {
            bail!("the gradient is not finite");
        }
        if let Some(max) = opts.clip_norm {
            clip_to_norm(&mut g, norm, max);
        }
        self.opt.update(&mut self.params.values, &g, opts.lr);
        Ok(norm)
    }

    /// The value of a one-element parameter.
    pub fn scalar(&self, k: usize) -> f32 {
        host(&self.params.values[k])[0]
    }

    pub fn set_scalar(&mut self, k: usize, v: f32) {
        let dev = self.params.values[k].device();
        self.params.values[k] = Tensor::from_data(burn::tensor::TensorData::new(vec![v], [1]), &dev);
    }
}

/// Rounds every value to the nearest half-precision number (what the saved files hold), so
/// later stages train against exactly the weights that ship.
pub fn round_to_f16(params: &mut Params) {
    let mut values = params.to_host();
    for x in values.iter_mut().flatten() {
        *x = f16_to_f32(f32_to_f16(*x));
    }
    params.values = to_device(values, &params.names, &params.sizes(), &params.device(), "rounded parameters").expect("same sizes");
}

/// The tensors in PyTorch's layout, named with `rename(name)` (`None` drops a tensor): 2-D
/// tensors are linear weights kept as `[in, out]` and are transposed back to `[out, in]`, except
/// embedding tables (names ending in `embedding.weight`).
pub fn torch_tensors(params: &Params, rename: impl Fn(&str) -> Option<String>) -> BTreeMap<String, OwnedTensor> {
    let mut out = BTreeMap::new();
    for ((name, shape), value) in params.names.iter().zip(&params.shapes).zip(&params.values) {
        let Some(key) = rename(name) else { continue };
        let values = host(value);
        if shape.len() == 2 && !name.ends_with("embedding.weight") {
            let (rows, cols) = (shape[0], shape[1]);
            out.insert(key, OwnedTensor { shape: vec![cols, rows], data: crate::models::weights::transpose(&values, rows, cols) });
        } else {
            out.insert(key, OwnedTensor { shape: shape.clone(), data: values });
        }
    }
    out
}

pub use crate::io::safetensors::{f16_to_f32, f32_to_f16};

/// Writes tensors as a safetensors file with PyTorch's `{"format": "pt"}` metadata, atomically.
pub fn write_safetensors(path: &Path, tensors: &BTreeMap<String, OwnedTensor>, store: StoreAs) -> Result<()> {
    let meta = BTreeMap::from([("format".to_string(), "pt".to_string())]);
    write_as(path, tensors, &meta, store)
}
