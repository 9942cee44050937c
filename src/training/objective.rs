//! The training objective and its gradients:
//! `L = D + Σ_k w_k · mse(ε_θ'(z_t, t, τ(y_k)), ε_θ(z_t, t, τ(y_k))) + w_p · prior`,
//! where `θ'` is the UNet with the adapter and `θ` the same UNet with the adapter switched off
//! (no second copy, no graph). `D` is the diffusion loss `d = mse(ε_θ'(z_t, t, τ(y_T)), target)`,
//! or DCO's `softplus(β (d − d_ref))` with `d_ref` the adapter-off UNet's diffusion loss (Lee et
//! al., `−log σ(−β (d − d_ref))`). The preservation captions `y_k` are the trigger-less caption
//! (the paper's CAT: one term of weight λ), the trigger replaced by the class word, or the empty
//! caption (the unconditional prediction guidance uses). No terms is plain LoRA.
//!
//! Each adapter pass runs with its own backward pass and the gradients are summed: the loss is a
//! sum, so this is exact, and peak memory stays that of one pass instead of a widened batch.
//! DCO's loss is a scalar function of `d` with `d_ref` constant, so its gradient is `∇d` times
//! `β σ(β (d − d_ref))`: one backward pass, exact.
use super::params::{Leaf, Params, add_scaled};
use crate::adapters::lora::Gate;
use crate::models::unet::UNet;
use anyhow::{Result, bail};
use burn::tensor::{Tensor, TensorData};

/// Text conditioning, computed when a pass needs it: a cached tensor, or the text encoder run
/// again when it carries trainable branches (each backward pass consumes its graph).
pub type Cond<'a> = &'a dyn Fn() -> Tensor<3>;

/// What a preservation term keeps: the frozen model's prediction for which caption.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Preserve {
    /// The caption without the trigger (the paper's CAT).
    TriggerLess,
    /// The trigger replaced by the class word (ai-toolkit's differential output preservation).
    Class,
    /// The empty caption: the unconditional prediction (ai-toolkit's blank prompt preservation).
    Blank,
}

impl Preserve {
    pub const ALL: [Preserve; 3] = [Preserve::TriggerLess, Preserve::Class, Preserve::Blank];

    pub fn name(self) -> &'static str {
        match self {
            Preserve::TriggerLess => "trigger-less",
            Preserve::Class => "class",
            Preserve::Blank => "blank",
        }
    }
}

/// `weight · mse(ε_θ'(z_t, t, τ(y)), ε_θ(z_t, t, τ(y)))` for the captions `y` of `target`.
pub struct PreserveTerm<'a> {
    pub target: Preserve,
    pub cond: Cond<'a>,
    pub weight: f64,
}

/// One step's inputs, shared by all terms.
pub struct StepInputs<'a> {
    pub zt: Tensor<4>,
    pub timesteps: Vec<f64>,
    /// ε, or the velocity for v-prediction models.
    pub target: Tensor<4>,
    pub cond_trigger: Cond<'a>,
    /// The preservation terms of this step (none for plain LoRA, or on a step that skips them).
    pub preserve: Vec<PreserveTerm<'a>>,
    /// DCO's β: the diffusion term becomes `softplus(β (d − d_ref))`.
    pub dco_beta: Option<f64>,
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

/// Each term's value (unweighted); `cat` is the trigger-less term. A term a step did not compute
/// is 0.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct LossTerms {
    pub diffusion: f64,
    pub dco: f64,
    pub cat: f64,
    pub class: f64,
    pub blank: f64,
    pub prior: f64,
    pub total: f64,
}

impl LossTerms {
    /// The value of one preservation term.
    pub fn preserve_mut(&mut self, p: Preserve) -> &mut f64 {
        match p {
            Preserve::TriggerLess => &mut self.cat,
            Preserve::Class => &mut self.class,
            Preserve::Blank => &mut self.blank,
        }
    }

    /// Every term by its log name, the total first.
    pub fn named(&self) -> [(&'static str, f64); 7] {
        [
            ("loss", self.total),
            ("diffusion", self.diffusion),
            ("dco", self.dco),
            ("cat", self.cat),
            ("class", self.class),
            ("blank", self.blank),
            ("prior", self.prior),
        ]
    }

    /// `loss 0.1234 (diffusion 0.1, cat 0.02)`: the total and each term that is used.
    pub fn describe(&self) -> String {
        let [(_, total), (_, diffusion), rest @ ..] = self.named();
        let mut parts = vec![format!("diffusion {diffusion:.4}")];
        parts.extend(rest.iter().filter(|(_, v)| *v != 0.0).map(|(k, v)| format!("{k} {v:.4}")));
        format!("loss {total:.4} ({})", parts.join(", "))
    }

    /// `self += other · k`, term by term.
    pub fn add_scaled(&mut self, other: &LossTerms, k: f64) {
        for (a, b) in self.fields_mut().into_iter().zip(other.named().map(|(_, v)| v)) {
            *a += b * k;
        }
    }

    fn fields_mut(&mut self) -> [&mut f64; 7] {
        [&mut self.total, &mut self.diffusion, &mut self.dco, &mut self.cat, &mut self.class, &mut self.blank, &mut self.prior]
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

/// `softplus(x) = log(1 + eˣ) = −log σ(−x)`, without overflow.
pub fn softplus(x: f64) -> f64 {
    x.max(0.0) + (-x.abs()).exp().ln_1p()
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
) -> Result<(LossTerms, Vec<Tensor<1>>)> {
    let weights = inp.sample_weights.as_deref();
    // DCO's reference: the diffusion loss of the adapter-off UNet, without a graph.
    let reference = inp.dco_beta.map(|_| {
        let _off = gate.switched_off();
        let pred = unet.forward(inp.zt.clone(), &inp.timesteps, &(inp.cond_trigger)().without_autodiff()).without_autodiff();
        scalar(&mse(pred, inp.target.clone(), weights))
    });

    let pred = unet.forward(inp.zt.clone(), &inp.timesteps, &(inp.cond_trigger)());
    let diffusion = mse(pred, inp.target.clone(), weights);
    let mut terms = LossTerms { diffusion: scalar(&diffusion), ..Default::default() };
    let (main, slope) = match (inp.dco_beta, reference) {
        (Some(beta), Some(r)) => {
            let x = beta * (terms.diffusion - r);
            terms.dco = softplus(x);
            (terms.dco, beta / (1.0 + (-x).exp()))
        }
        _ => (terms.diffusion, 1.0),
    };
    let mut out = params.gradients(leaves, &diffusion.mul_scalar(slope).backward())?;
    terms.total = main;

    for p in &inp.preserve {
        // The frozen model's prediction: the adapter switched off, inputs without autodiff.
        let base = {
            let _off = gate.switched_off();
            unet.forward(inp.zt.clone(), &inp.timesteps, &(p.cond)().without_autodiff()).without_autodiff()
        };
        let pred = unet.forward(inp.zt.clone(), &inp.timesteps, &(p.cond)());
        let term = mse(pred, base, None);
        let value = scalar(&term);
        *terms.preserve_mut(p.target) = value;
        terms.total += p.weight * value;
        add_scaled(&mut out, params.gradients(leaves, &term.mul_scalar(p.weight).backward())?, 1.0);
    }
    if let Some(p) = &inp.prior {
        let pred = unet.forward(p.zt.clone(), &p.timesteps, &(p.cond)());
        let prior = mse(pred, p.target.clone(), None);
        terms.prior = scalar(&prior);
        terms.total += p.weight * terms.prior;
        add_scaled(&mut out, params.gradients(leaves, &prior.mul_scalar(p.weight).backward())?, 1.0);
    }
    if !terms.total.is_finite() {
        bail!("the loss is not finite ({})", terms.describe());
    }
    Ok((terms, out))
}
