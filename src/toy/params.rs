//! Full-model training with the crate's host-side AdamW: every parameter a model's `visit`
//! reaches is copied to the host, installed as an autodiff leaf before each step, and updated
//! from its gradient afterwards. Also half-precision rounding and saving in the PyTorch layout.
use crate::io::safetensors::{OwnedTensor, StoreAs, write_as};
use crate::models::layers::ParamVisitor;
use crate::training::adamw::{AdamW, AdamWConfig};
use anyhow::{Result, bail};
use burn::tensor::{Gradients, Tensor, TensorData};
use std::collections::BTreeMap;
use std::path::Path;

/// One parameter tensor of any rank the models use, as the visitor hands it out.
pub enum Slot<'a> {
    T1(&'a mut Tensor<1>),
    T2(&'a mut Tensor<2>),
    T4(&'a mut Tensor<4>),
}

fn host<const D: usize>(t: &Tensor<D>) -> Vec<f32> {
    t.to_data().convert::<f32>().as_slice::<f32>().expect("f32 data after convert").to_vec()
}

impl Slot<'_> {
    pub fn dims(&self) -> Vec<usize> {
        match self {
            Slot::T1(t) => t.dims().to_vec(),
            Slot::T2(t) => t.dims().to_vec(),
            Slot::T4(t) => t.dims().to_vec(),
        }
    }

    pub fn values(&self) -> Vec<f32> {
        match self {
            Slot::T1(t) => host(*t),
            Slot::T2(t) => host(*t),
            Slot::T4(t) => host(*t),
        }
    }

    /// Replaces the tensor with `values` (same shape), as a fresh autodiff leaf when `trainable`.
    pub fn set(&mut self, values: Vec<f32>, trainable: bool) {
        fn make<const D: usize>(old: &Tensor<D>, v: Vec<f32>, trainable: bool) -> Tensor<D> {
            let t = Tensor::<D>::from_data(TensorData::new(v, old.dims()), &old.device());
            if trainable { t.autodiff().require_grad() } else { t }
        }
        match self {
            Slot::T1(t) => **t = make(t, values, trainable),
            Slot::T2(t) => **t = make(t, values, trainable),
            Slot::T4(t) => **t = make(t, values, trainable),
        }
    }

    pub fn grad(&self, grads: &Gradients) -> Option<Vec<f32>> {
        match self {
            Slot::T1(t) => t.grad(grads).map(|g| host(&g)),
            Slot::T2(t) => t.grad(grads).map(|g| host(&g)),
            Slot::T4(t) => t.grad(grads).map(|g| host(&g)),
        }
    }
}

/// A `ParamVisitor` that calls one closure for every parameter, whatever its rank.
pub struct Each<F: FnMut(&str, Slot<'_>)>(pub F);

impl<F: FnMut(&str, Slot<'_>)> ParamVisitor for Each<F> {
    fn visit1(&mut self, n: &str, t: &mut Tensor<1>) {
        (self.0)(n, Slot::T1(t))
    }
    fn visit2(&mut self, n: &str, t: &mut Tensor<2>) {
        (self.0)(n, Slot::T2(t))
    }
    fn visit4(&mut self, n: &str, t: &mut Tensor<4>) {
        (self.0)(n, Slot::T4(t))
    }
}

/// Something whose parameters can be visited by name (every model here, and tuples of them).
pub trait Visit {
    fn visit_params(&mut self, v: &mut dyn ParamVisitor);
}

impl Visit for crate::models::unet::UNet {
    fn visit_params(&mut self, v: &mut dyn ParamVisitor) {
        self.visit(v)
    }
}

impl Visit for crate::models::vae::Vae {
    fn visit_params(&mut self, v: &mut dyn ParamVisitor) {
        self.visit(v)
    }
}

impl Visit for crate::models::clip_text::ClipTextModel {
    fn visit_params(&mut self, v: &mut dyn ParamVisitor) {
        self.visit(v)
    }
}

/// The host-side master copy of a model's parameters and their AdamW state.
pub struct HostParams {
    pub names: Vec<String>,
    pub shapes: Vec<Vec<usize>>,
    pub values: Vec<Vec<f32>>,
    pub opt: AdamW,
}

/// Options of one optimisation step.
#[derive(Clone, Copy, Debug)]
pub struct StepOptions {
    pub lr: f64,
    /// Clip the global gradient norm to this (`None`: no clipping).
    pub clip_norm: Option<f64>,
}

impl HostParams {
    /// Copies every parameter of `model` to the host, in visiting order.
    pub fn collect(model: &mut dyn Visit, config: AdamWConfig) -> Self {
        let (mut names, mut shapes, mut values) = (Vec::new(), Vec::new(), Vec::new());
        model.visit_params(&mut Each(|n: &str, s: Slot<'_>| {
            names.push(n.to_string());
            shapes.push(s.dims());
            values.push(s.values());
        }));
        let sizes: Vec<usize> = values.iter().map(Vec::len).collect();
        Self { names, shapes, values, opt: AdamW::new(config, &sizes) }
    }

    pub fn count(&self) -> usize {
        self.values.iter().map(Vec::len).sum()
    }

    /// Writes the host values into the model: autodiff leaves when `trainable`, plain tensors
    /// otherwise (for inference).
    pub fn install(&self, model: &mut dyn Visit, trainable: bool) {
        let mut k = 0;
        model.visit_params(&mut Each(|n: &str, mut s: Slot<'_>| {
            assert_eq!(n, self.names[k], "the model visits its parameters in a different order");
            s.set(self.values[k].clone(), trainable);
            k += 1;
        }));
        assert_eq!(k, self.names.len(), "the model has a different number of parameters");
    }

    /// Reads the gradients of every parameter after `loss.backward()` (the model must hold the
    /// leaves `install(.., true)` made). A parameter without a gradient is an error: the graph
    /// is cut somewhere.
    pub fn gradients(&self, model: &mut dyn Visit, grads: &Gradients) -> Result<Vec<Vec<f32>>> {
        let mut out = Vec::with_capacity(self.names.len());
        let mut missing = Vec::new();
        model.visit_params(&mut Each(|n: &str, s: Slot<'_>| match s.grad(grads) {
            Some(g) => out.push(g),
            None => {
                missing.push(n.to_string());
                out.push(vec![0.0; s.dims().iter().product()]);
            }
        }));
        if !missing.is_empty() {
            bail!("parameters without a gradient: {}", missing.join(", "));
        }
        Ok(out)
    }

    /// One AdamW update from `grads` (in parameter order). Returns the global gradient norm
    /// before clipping.
    pub fn update(&mut self, mut grads: Vec<Vec<f32>>, opts: StepOptions) -> Result<f64> {
        let norm = grads.iter().flatten().map(|g| (*g as f64).powi(2)).sum::<f64>().sqrt();
        if !norm.is_finite() {
            bail!("the gradient is not finite");
        }
        if let Some(max) = opts.clip_norm
            && norm > max
        {
            let s = (max / norm) as f32;
            grads.iter_mut().flatten().for_each(|g| *g *= s);
        }
        self.opt.update(&mut self.values, &grads, opts.lr);
        Ok(norm)
    }

    /// Rounds every value to the nearest half-precision number (what the saved files hold), so
    /// later stages train against exactly the weights that ship.
    pub fn round_to_f16(&mut self) {
        for v in &mut self.values {
            for x in v.iter_mut() {
                *x = f16_to_f32(f32_to_f16(*x));
            }
        }
    }

    /// The tensors in PyTorch's layout, named with `rename(name)` (`None` drops a tensor):
    /// 2-D tensors are linear weights kept as `[in, out]` and are transposed back to
    /// `[out, in]`, except embedding tables (names ending in `embedding.weight`).
    pub fn torch_tensors(&self, rename: impl Fn(&str) -> Option<String>) -> BTreeMap<String, OwnedTensor> {
        let mut out = BTreeMap::new();
        for ((name, shape), values) in self.names.iter().zip(&self.shapes).zip(&self.values) {
            let Some(key) = rename(name) else { continue };
            if shape.len() == 2 && !name.ends_with("embedding.weight") {
                let (rows, cols) = (shape[0], shape[1]);
                out.insert(key, OwnedTensor { shape: vec![cols, rows], data: crate::models::weights::transpose(values, rows, cols) });
            } else {
                out.insert(key, OwnedTensor { shape: shape.clone(), data: values.clone() });
            }
        }
        out
    }
}

/// Learning rate with linear warm-up then cosine decay to `floor * peak`.
pub fn lr_at(step: usize, total: usize, peak: f64, warmup: usize, floor: f64) -> f64 {
    if step < warmup {
        return peak * (step + 1) as f64 / warmup as f64;
    }
    let p = (step - warmup) as f64 / (total - warmup).max(1) as f64;
    peak * (floor + (1.0 - floor) * 0.5 * (1.0 + (std::f64::consts::PI * p.min(1.0)).cos()))
}

pub use crate::io::safetensors::{f16_to_f32, f32_to_f16};

/// Writes tensors as a safetensors file with PyTorch's `{"format": "pt"}` metadata, atomically.
pub fn write_safetensors(path: &Path, tensors: &BTreeMap<String, OwnedTensor>, store: StoreAs) -> Result<()> {
    let meta = BTreeMap::from([("format".to_string(), "pt".to_string())]);
    write_as(path, tensors, &meta, store)
}
