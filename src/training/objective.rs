//! The CAT objective and its gradients:
//! `L = mse(ε_θ'(z_t, t, τ(y_T)), target) + λ · mse(ε_θ'(z_t, t, τ(y)), ε_θ(z_t, t, τ(y)))`,
//! where `θ'` is the UNet with the adapter and `θ` the same UNet with the adapter switched off
//! (no second copy, no graph). `λ = 0` is plain LoRA.
//!
//! The two adapter passes run one after the other, each with its own backward pass, and their
//! gradients are summed: the loss is a sum, so this is exact, and peak memory stays that of a
//! single pass instead of a doubled batch.
use crate::adapters::lora::{Adapter, BranchRef, Gate, Targets, branches_mut};
use crate::models::unet::UNet;
use anyhow::{Result, bail};
use burn::tensor::{Device, Tensor, TensorData};

/// The adapter's parameters as trainable host-side values, with their names in the model.
pub struct Trainable {
    pub adapter: Adapter,
    /// `<component>.<module>.down` / `.up`, in a fixed order.
    pub names: Vec<String>,
    /// burn layouts: down `[in, rank]`, up `[rank, out]`.
    pub shapes: Vec<[usize; 2]>,
    pub values: Vec<Vec<f32>>,
}

fn host(t: &Tensor<2>) -> Vec<f32> {
    t.to_data().convert::<f32>().as_slice::<f32>().expect("f32 tensor data").to_vec()
}

impl Trainable {
    pub fn from_adapter(targets: &mut Targets<'_>, adapter: &Adapter) -> Self {
        let (mut names, mut shapes, mut values) = (Vec::new(), Vec::new(), Vec::new());
        for BranchRef { component, module, branch, .. } in branches_mut(targets, adapter) {
            let p = format!("{}.{module}", component.diffusers_prefix());
            for (suffix, t) in [("down", &branch.down), ("up", &branch.up)] {
                names.push(format!("{p}.{suffix}"));
                shapes.push(t.dims());
                values.push(host(t));
            }
        }
        Self { adapter: adapter.clone(), names, shapes, values }
    }

    /// Puts the host values into the model. With `trainable`, they become fresh autodiff leaves
    /// that require gradients, returned in the order of `names`.
    pub fn install(&self, targets: &mut Targets<'_>, device: &Device, trainable: bool) -> Vec<Tensor<2>> {
        let mut leaves = Vec::with_capacity(self.values.len());
        let mut k = 0;
        for BranchRef { branch, .. } in branches_mut(targets, &self.adapter) {
            for slot in [&mut branch.down, &mut branch.up] {
                let t = Tensor::<2>::from_data(TensorData::new(self.values[k].clone(), self.shapes[k]), device);
                let t = if trainable { t.autodiff().require_grad() } else { t };
                *slot = t.clone();
                leaves.push(t);
                k += 1;
            }
        }
        leaves
    }

    pub fn sizes(&self) -> Vec<usize> {
        self.values.iter().map(Vec::len).collect()
    }
}

/// Text conditioning, computed when a pass needs it: a cached tensor, or the text encoder run
/// again when it carries trainable branches (each backward pass consumes its graph).
pub type Cond<'a> = &'a dyn Fn() -> Tensor<3>;

/// One step's inputs, shared by all terms.
pub struct StepInputs<'a> {
    pub zt: Tensor<4>,
    pub timesteps: Vec<f64>,
    /// ε, or the velocity for v-prediction models.
    pub target: Tensor<4>,
    pub cond_trigger: Cond<'a>,
    /// The trigger-less captions' encodings (needed when λ > 0).
    pub cond_plain: Option<Cond<'a>>,
    /// Per-sample weights of the diffusion term (min-SNR); `None` is a plain mean.
    pub sample_weights: Option<Vec<f32>>,
    /// DreamBooth's prior-preservation term on class images.
    pub prior: Option<PriorTerm<'a>>,
}

/// `weight · mse(ε_θ'(z_t^c, t_c, τ(class prompt)), ε_c)` on a class image.
pub struct PriorTerm<'a> {
    pub zt: Tensor<4>,
    pub timesteps: Vec<f64>,
    pub target: Tensor<4>,
    pub cond: Cond<'a>,
    pub weight: f64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LossTerms {
    pub diffusion: f64,
    pub cat: f64,
    pub prior: f64,
    pub total: f64,
}

/// Mean squared error, optionally weighted per sample (the weights' mean over the batch).
pub fn mse(pred: Tensor<4>, target: Tensor<4>, sample_weights: Option<&[f32]>) -> Tensor<1> {
    let sq = (pred - target).square();
    match sample_weights {
        None => sq.mean(),
        Some(w) => {
            let b = sq.dims()[0];
            let per_sample = sq.reshape([b as i32, -1]).mean_dim(1).reshape([b]);
            let w = Tensor::<1>::from_data(TensorData::new(w.to_vec(), [b]), &per_sample.device());
            (per_sample * w).mean()
        }
    }
}

fn scalar(t: &Tensor<1>) -> f64 {
    t.to_data().convert::<f64>().as_slice::<f64>().expect("scalar")[0]
}

fn accumulate(acc: &mut [Vec<f32>], leaves: &[Tensor<2>], grads: &burn::tensor::Gradients) {
    for (a, l) in acc.iter_mut().zip(leaves) {
        if let Some(g) = l.grad(grads) {
            for (x, v) in a.iter_mut().zip(host(&g)) {
                *x += v;
            }
        }
    }
}

/// The loss terms and the gradient of the total loss for each leaf (host-side, in leaf order).
///
/// Every leaf must receive a gradient from the first term: one that does not means the graph was
/// cut somewhere, and that is an error rather than a silent zero.
pub fn cat_gradients(unet: &UNet, gate: &Gate, leaves: &[Tensor<2>], names: &[String], inp: &StepInputs<'_>, lambda: f64) -> Result<(LossTerms, Vec<Vec<f32>>)> {
    let plain = if lambda != 0.0 { inp.cond_plain } else { None };

    // The base prediction: the adapter switched off, inputs without autodiff, so no graph.
    let base = plain.map(|c| {
        let w = gate.get();
        gate.set(0.0);
        let out = unet.forward(inp.zt.clone(), &inp.timesteps, &c().without_autodiff());
        gate.set(w);
        out.without_autodiff()
    });

    let pred = unet.forward(inp.zt.clone(), &inp.timesteps, &(inp.cond_trigger)());
    let diffusion = mse(pred, inp.target.clone(), inp.sample_weights.as_deref());
    let mut terms = LossTerms { diffusion: scalar(&diffusion), ..Default::default() };
    let grads = diffusion.backward();
    let mut out = Vec::with_capacity(leaves.len());
    for (l, name) in leaves.iter().zip(names) {
        match l.grad(&grads) {
            Some(g) => out.push(host(&g)),
            None => bail!("adapter parameter `{name}` received no gradient: the graph is cut"),
        }
    }
    drop(grads);

    if let (Some(c), Some(base)) = (plain, base) {
        let pred = unet.forward(inp.zt.clone(), &inp.timesteps, &c());
        let cat = mse(pred, base, None);
        terms.cat = scalar(&cat);
        accumulate(&mut out, leaves, &cat.mul_scalar(lambda).backward());
    }
    if let Some(p) = &inp.prior {
        let pred = unet.forward(p.zt.clone(), &p.timesteps, &(p.cond)());
        let prior = mse(pred, p.target.clone(), None);
        terms.prior = scalar(&prior);
        accumulate(&mut out, leaves, &prior.mul_scalar(p.weight).backward());
    }
    terms.total = terms.diffusion + lambda * terms.cat + inp.prior.as_ref().map_or(0.0, |p| p.weight * terms.prior);
    if !terms.total.is_finite() {
        bail!("the loss is not finite (diffusion {}, cat {}, prior {})", terms.diffusion, terms.cat, terms.prior);
    }
    Ok((terms, out))
}
