//! The CAT objective and its gradients:
//! `L = mse(ε_θ'(z_t, t, τ(y_T)), target) + λ · mse(ε_θ'(z_t, t, τ(y)), ε_θ(z_t, t, τ(y)))`,
//! where `θ'` is the UNet with the adapter and `θ` the same UNet with the adapter switched off
//! (no second copy, no graph). `λ = 0` is plain LoRA.
//!
//! The two adapter passes run one after the other, each with its own backward pass, and their
//! gradients are summed: the loss is a sum, so this is exact, and peak memory stays that of a
//! single pass instead of a doubled batch.
use super::params::{Leaf, Params, add_scaled};
use crate::adapters::lora::Gate;
use crate::models::unet::UNet;
use anyhow::{Result, bail};
use burn::tensor::{Tensor, TensorData};

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

impl LossTerms {
    /// `loss 0.1234 (diffusion 0.1, cat 0.02)`: the total and each term that is used.
    pub fn describe(&self) -> String {
        let mut parts = vec![format!("diffusion {:.4}", self.diffusion)];
        if self.cat != 0.0 {
            parts.push(format!("cat {:.4}", self.cat));
        }
        if self.prior != 0.0 {
            parts.push(format!("prior {:.4}", self.prior));
        }
        format!("loss {:.4} ({})", self.total, parts.join(", "))
    }
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

/// The loss terms and the gradient of the total loss for each parameter (flat device tensors,
/// in the order of `params`); only the scalar losses are read back.
///
/// Every parameter must receive a gradient from the first term: one that does not means the
/// graph was cut somewhere, and that is an error rather than a silent zero.
pub fn cat_gradients(
    unet: &UNet,
    gate: &Gate,
    params: &Params,
    leaves: &[Leaf],
    inp: &StepInputs<'_>,
    lambda: f64,
) -> Result<(LossTerms, Vec<Tensor<1>>)> {
    let plain = if lambda != 0.0 { inp.cond_plain } else { None };

    // The base prediction: the adapter switched off, inputs without autodiff, so no graph.
    let base = plain.map(|c| {
        let _off = gate.switched_off();
        unet.forward(inp.zt.clone(), &inp.timesteps, &c().without_autodiff()).without_autodiff()
    });

    let pred = unet.forward(inp.zt.clone(), &inp.timesteps, &(inp.cond_trigger)());
    let diffusion = mse(pred, inp.target.clone(), inp.sample_weights.as_deref());
    let mut terms = LossTerms { diffusion: scalar(&diffusion), ..Default::default() };
    let mut out = params.gradients(leaves, &diffusion.backward())?;

    if let (Some(c), Some(base)) = (plain, base) {
        let pred = unet.forward(inp.zt.clone(), &inp.timesteps, &c());
        let cat = mse(pred, base, None);
        terms.cat = scalar(&cat);
        add_scaled(&mut out, params.gradients(leaves, &cat.mul_scalar(lambda).backward())?, 1.0);
    }
    if let Some(p) = &inp.prior {
        let pred = unet.forward(p.zt.clone(), &p.timesteps, &(p.cond)());
        let prior = mse(pred, p.target.clone(), None);
        terms.prior = scalar(&prior);
        add_scaled(&mut out, params.gradients(leaves, &prior.mul_scalar(p.weight).backward())?, 1.0);
    }
    terms.total = terms.diffusion + lambda * terms.cat + inp.prior.as_ref().map_or(0.0, |p| p.weight * terms.prior);
    if !terms.total.is_finite() {
        bail!("the loss is not finite (diffusion {}, cat {}, prior {})", terms.diffusion, terms.cat, terms.prior);
    }
    Ok((terms, out))
}
