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
//! sum, so this is exact, and peak memory stays that of one pass instead of a widened batch. With
//! `batch_passes` the passes run as one batch with one backward pass through the weighted sum:
//! the same sum, faster, at the memory of the wider batch.
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
    /// Run the adapter passes as one batch where their shapes allow (see `groups`).
    pub batch_passes: bool,
    /// The backward pass runs on the loss times this power of two and the gradients are divided
    /// by it again (fp16's dynamic loss scaling, `loss_scale`); 1 for float32 and bf16.
    pub loss_scale: f32,
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
    // The adapter-off predictions, without a graph: DCO's reference diffusion loss and each
    // preservation term's target.
    let frozen = |zt: &Tensor<4>, timesteps: &[f64], cond: Cond<'_>| {
        let _off = gate.switched_off();
        unet.forward(zt.clone(), timesteps, &cond().without_autodiff()).without_autodiff()
    };
    let reference = inp.dco_beta.map(|_| scalar(&mse(frozen(&inp.zt, &inp.timesteps, inp.cond_trigger), inp.target.clone(), weights)));
    let bases: Vec<Tensor<4>> = inp.preserve.iter().map(|p| frozen(&inp.zt, &inp.timesteps, p.cond)).collect();

    // The adapter passes: the diffusion term, each preservation term, the prior.
    let mut passes = vec![Pass::new(&inp.zt, &inp.timesteps, inp.cond_trigger, Term::Diffusion)];
    passes.extend(inp.preserve.iter().zip(&bases).map(|(p, base)| Pass::new(&inp.zt, &inp.timesteps, p.cond, Term::Preserve(p, base))));
    passes.extend(inp.prior.iter().map(|p| Pass::new(&p.zt, &p.timesteps, p.cond, Term::Prior(p))));

    let mut terms = LossTerms::default();
    let mut out: Option<Vec<Tensor<1>>> = None;
    for group in groups(passes, inp.batch_passes) {
        let mut total: Option<Tensor<1>> = None;
        for (pass, pred) in predict(unet, &group) {
            let weighted = match &pass.term {
                Term::Diffusion => {
                    let diffusion = mse(pred, inp.target.clone(), weights);
                    terms.diffusion = scalar(&diffusion);
                    let (main, slope) = match (inp.dco_beta, reference) {
                        (Some(beta), Some(r)) => {
                            let x = beta * (terms.diffusion - r);
                            terms.dco = softplus(x);
                            (terms.dco, beta / (1.0 + (-x).exp()))
                        }
                        _ => (terms.diffusion, 1.0),
                    };
                    terms.total = main;
                    diffusion.mul_scalar(slope)
                }
                Term::Preserve(p, base) => {
                    let term = mse(pred, (*base).clone(), None);
                    let value = scalar(&term);
                    *terms.preserve_mut(p.target) = value;
                    terms.total += p.weight * value;
                    term.mul_scalar(p.weight)
                }
                Term::Prior(p) => {
                    let prior = mse(pred, p.target.clone(), None);
                    terms.prior = scalar(&prior);
                    terms.total += p.weight * terms.prior;
                    prior.mul_scalar(p.weight)
                }
            };
            total = Some(match total {
                Some(t) => t + weighted,
                None => weighted,
            });
        }
        let total = total.expect("a group holds a pass");
        let root = if inp.loss_scale == 1.0 { total } else { total.mul_scalar(inp.loss_scale) };
        let mut grads = params.gradients(leaves, &root.backward())?;
        if inp.loss_scale != 1.0 {
            // Exact: the scale is a power of two and the gradients are float32.
            grads = grads.into_iter().map(|g| g.div_scalar(inp.loss_scale)).collect();
        }
        match &mut out {
            Some(acc) => add_scaled(acc, grads, 1.0),
            None => out = Some(grads),
        }
    }
    if !terms.total.is_finite() {
        bail!("the loss is not finite ({})", terms.describe());
    }
    Ok((terms, out.expect("the diffusion pass")))
}

/// One forward pass with the adapter, and what its prediction is compared with.
struct Pass<'a> {
    zt: &'a Tensor<4>,
    timesteps: &'a [f64],
    cond: Cond<'a>,
    /// The conditioning, encoded early when batching needs its shape.
    encoded: Option<Tensor<3>>,
    term: Term<'a>,
}

impl<'a> Pass<'a> {
    fn new(zt: &'a Tensor<4>, timesteps: &'a [f64], cond: Cond<'a>, term: Term<'a>) -> Self {
        Self { zt, timesteps, cond, encoded: None, term }
    }

    fn cond(&self) -> Tensor<3> {
        self.encoded.clone().unwrap_or_else(|| (self.cond)())
    }
}

enum Term<'a> {
    Diffusion,
    Preserve(&'a PreserveTerm<'a>, &'a Tensor<4>),
    Prior(&'a PriorTerm<'a>),
}

/// The passes that run together: each alone, or (`batched`) consecutive passes whose latents and
/// conditionings have the same shape as one batch.
fn groups(passes: Vec<Pass<'_>>, batched: bool) -> Vec<Vec<Pass<'_>>> {
    let mut out: Vec<Vec<Pass<'_>>> = Vec::new();
    for mut pass in passes {
        if batched {
            pass.encoded = Some((pass.cond)());
        }
        let shape = |p: &Pass<'_>| (p.zt.dims()[1..].to_vec(), p.encoded.as_ref().map(|c| c.dims()[1..].to_vec()));
        let joins = |g: &Vec<Pass<'_>>| batched && shape(&g[0]) == shape(&pass);
        match out.last_mut() {
            Some(g) if joins(g) => g.push(pass),
            _ => out.push(vec![pass]),
        }
    }
    out
}

/// The adapter's predictions for a group of passes, each with its pass: one forward over the
/// concatenated inputs, split back by pass.
fn predict<'p, 'a>(unet: &UNet, group: &'p [Pass<'a>]) -> Vec<(&'p Pass<'a>, Tensor<4>)> {
    if let [pass] = group {
        return vec![(pass, unet.forward(pass.zt.clone(), pass.timesteps, &pass.cond()))];
    }
    let conds: Vec<Tensor<3>> = group.iter().map(Pass::cond).collect();
    let sizes: Vec<usize> = group.iter().map(|p| p.zt.dims()[0]).collect();
    let zt = Tensor::cat(group.iter().map(|p| p.zt.clone()).collect(), 0);
    let timesteps: Vec<f64> = group.iter().flat_map(|p| p.timesteps.iter().copied()).collect();
    let pred = unet.forward(zt, &timesteps, &Tensor::cat(conds, 0));
    group.iter().zip(pred.split_with_sizes(sizes, 0)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Device;

    #[test]
    fn batched_passes_group_by_shape_and_single_passes_stay_alone() {
        let dev = Device::flex();
        let (a, b) = (Tensor::<4>::zeros([1, 4, 8, 8], &dev), Tensor::<4>::zeros([2, 4, 8, 12], &dev));
        let short = || Tensor::<3>::zeros([1, 77, 16], &dev);
        let long = || Tensor::<3>::zeros([1, 154, 16], &dev);
        let t = [1.0, 2.0];
        let pass = |zt, cond| Pass::new(zt, &t, cond, Term::Diffusion);
        let sizes = |batched| -> Vec<usize> {
            let passes = vec![pass(&a, &short), pass(&a, &short), pass(&a, &long), pass(&b, &short), pass(&b, &short)];
            groups(passes, batched).iter().map(Vec::len).collect()
        };
        assert_eq!(sizes(false), [1, 1, 1, 1, 1]);
        // Another token count or latent size starts a new group.
        assert_eq!(sizes(true), [2, 1, 2]);
    }
}
