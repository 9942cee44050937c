//! Adapters on a model: attaching the branches of a LoRA file or new trainable ones to the
//! layers that can carry them, finding an adapter's branches again, and saving them.
use super::lora_file::{Component, KnownModules, LoraEntry, LoraFile};
use crate::models::clip_text::ClipTextModel;
use crate::models::layers::{LoraTarget, Walk};
pub use crate::models::lora::{Gate, GateOff, LoraBranch};
use crate::models::unet::UNet;
use crate::models::weights::transpose;
use crate::rng::Rng;
use anyhow::{Result, bail};
use burn::tensor::{Tensor, TensorData};

/// The models adapters attach to: the UNet and, optionally, the text encoder.
pub struct Targets<'a> {
    pub unet: &'a mut UNet,
    pub text_encoder: Option<&'a mut ClipTextModel>,
}

impl Targets<'_> {
    fn all(&mut self) -> Vec<(Component, String, LoraTarget<'_>)> {
        let mut out: Vec<_> = self.unet.lora_targets().into_iter().map(|(n, t)| (Component::Unet, n, t)).collect();
        if let Some(te) = self.text_encoder.as_deref_mut() {
            out.extend(te.lora_targets().into_iter().map(|(n, t)| (Component::TextEncoder, n, t)));
        }
        out
    }

    /// The module paths LoRA files are resolved against.
    pub fn known_modules(&mut self) -> KnownModules {
        let mut k = KnownModules::default();
        for (c, name, _) in self.all() {
            match c {
                Component::Unet => k.unet.push(name),
                Component::TextEncoder => k.text_encoder.push(name),
            }
        }
        k
    }
}

/// Which layers a new adapter trains, by the last part of their module path.
#[derive(Clone, Debug, PartialEq)]
pub struct LoraConfig {
    pub rank: usize,
    pub alpha: f32,
    /// UNet leaf names, e.g. `to_q`, `to_k`, `to_v`, `to_out.0` (the paper's choice),
    /// `ff.net.0.proj`, `ff.net.2`, `proj_in`, `proj_out`.
    pub unet_targets: Vec<String>,
    /// Text-encoder leaf names, e.g. `q_proj`, `k_proj`, `v_proj`, `out_proj`, `fc1`, `fc2`.
    pub text_encoder_targets: Vec<String>,
}

pub const PAPER_UNET_TARGETS: [&str; 4] = ["to_q", "to_k", "to_v", "to_out.0"];

/// Leaf names of the UNet's 3x3 convolutions, for a message that says why they match nothing.
const CONV3X3_LEAVES: [&str; 5] = ["conv1", "conv2", "conv_in", "conv_out", "conv"];

fn matches_leaf(module: &str, leaf: &str) -> bool {
    module == leaf || module.ends_with(&format!(".{leaf}"))
}

/// An adapter attached to a model: its gate and the modules it sits on.
#[derive(Clone, Debug)]
pub struct Adapter {
    pub gate: Gate,
    pub modules: Vec<(Component, String)>,
}

fn make_branch(device: &burn::tensor::Device, e: &LoraEntry, gate: &Gate) -> LoraBranch {
    let down = Tensor::from_data(TensorData::new(transpose(&e.down, e.rank, e.in_features), [e.in_features, e.rank]), device);
    let up = Tensor::from_data(TensorData::new(transpose(&e.up, e.out_features, e.rank), [e.rank, e.out_features]), device);
    LoraBranch { down, up, scale: e.scale(), gate: gate.clone() }
}

/// Attaches the branches of a LoRA file with run-time weight `weight`. Every entry must find
/// its layer with matching shapes; all mismatches are reported together.
pub fn attach_file(targets: &mut Targets<'_>, file: &LoraFile, weight: f32, source: &str) -> Result<Adapter> {
    let gate = Gate::new(weight);
    let mut by_name: std::collections::HashMap<(Component, String), LoraTarget<'_>> =
        targets.all().into_iter().map(|(c, n, t)| ((c, n), t)).collect();
    let mut problems = Vec::new();
    let mut modules = Vec::new();
    for e in &file.entries {
        let Some(t) = by_name.get_mut(&(e.component, e.module.clone())) else {
            problems.push(format!("{} `{}` matches no layer of the model", e.component.diffusers_prefix(), e.module));
            continue;
        };
        match t.features() {
            Some((i, o)) if i == e.in_features && o == e.out_features && t.is_conv() == e.conv => {
                let branch = make_branch(&t.device(), e, &gate);
                t.branches().push(branch);
                modules.push((e.component, e.module.clone()));
            }
            Some((i, o)) => problems.push(format!(
                "`{}`: the LoRA maps {} -> {} features but the layer maps {i} -> {o}",
                e.module, e.in_features, e.out_features
            )),
            None => problems.push(format!("`{}`: LoRA on a convolution larger than 1x1 is not supported", e.module)),
        }
    }
    if !problems.is_empty() {
        // Leave the model as it was: take back the branches this call added.
        drop(by_name);
        detach(targets, &gate);
        bail!("{source}: the LoRA does not fit the model:\n  {}", problems.join("\n  "));
    }
    Ok(Adapter { gate, modules })
}

/// Removes every branch of the adapter with this gate.
pub fn detach(targets: &mut Targets<'_>, gate: &Gate) {
    for (_, _, mut t) in targets.all() {
        t.branches().retain(|b| !b.gate.same(gate));
    }
}

/// Attaches a new trainable adapter: A Kaiming-uniform (bound `1/sqrt(in)`, what kohya's and
/// PEFT's `kaiming_uniform_(a=sqrt(5))` gives), B zero, so training starts from the base model.
pub fn attach_new(targets: &mut Targets<'_>, cfg: &LoraConfig, rng: &mut Rng) -> Result<Adapter> {
    let gate = Gate::new(1.0);
    let mut modules = Vec::new();
    let mut unmatched: Vec<String> = Vec::new();
    let wanted = |c: Component| match c {
        Component::Unet => &cfg.unet_targets,
        Component::TextEncoder => &cfg.text_encoder_targets,
    };
    let mut hits = vec![0usize; cfg.unet_targets.len() + cfg.text_encoder_targets.len()];
    for (c, name, mut t) in targets.all() {
        let offset = if c == Component::Unet { 0 } else { cfg.unet_targets.len() };
        let Some(k) = wanted(c).iter().position(|leaf| matches_leaf(&name, leaf)) else { continue };
        hits[offset + k] += 1;
        let Some((i, o)) = t.features() else { bail!("`{name}`: LoRA on a convolution larger than 1x1 is not supported") };
        let bound = 1.0 / (i as f64).sqrt();
        let down: Vec<f32> = (0..cfg.rank * i).map(|_| ((rng.uniform() * 2.0 - 1.0) * bound) as f32).collect();
        let e = LoraEntry {
            component: c,
            module: name.clone(),
            rank: cfg.rank,
            in_features: i,
            out_features: o,
            conv: t.is_conv(),
            down,
            up: vec![0.0; o * cfg.rank],
            alpha: cfg.alpha,
        };
        let branch = make_branch(&t.device(), &e, &gate);
        t.branches().push(branch);
        modules.push((c, name));
    }
    for (k, leaf) in cfg.unet_targets.iter().chain(&cfg.text_encoder_targets).enumerate() {
        if hits[k] == 0 {
            unmatched.push(leaf.clone());
        }
    }
    if !unmatched.is_empty() {
        detach(targets, &gate);
        let convs: Vec<&String> = unmatched.iter().filter(|l| CONV3X3_LEAVES.iter().any(|c| l.ends_with(c))).collect();
        if !convs.is_empty() {
            bail!(
                "LoRA targets {convs:?} name 3x3 convolutions (ResNet conv1/conv2, conv_in/conv_out, up/down samplers), which catlora's LoRA does not support: use linear layers (--targets attn, attn+ff or all-linear)"
            );
        }
        bail!("LoRA targets {unmatched:?} match no layer of the model");
    }
    Ok(Adapter { gate, modules })
}

/// One branch of an adapter, found in the model.
pub struct BranchRef<'a> {
    pub component: Component,
    pub module: String,
    /// Sits on a 1x1 convolution (saved with `[.., 1, 1]` shapes).
    pub conv: bool,
    pub branch: &'a mut LoraBranch,
}

/// The adapter's branches, in a fixed order (UNet then text encoder, by module path).
pub fn branches_mut<'a>(targets: &'a mut Targets<'_>, adapter: &Adapter) -> Vec<BranchRef<'a>> {
    let mut out = Vec::new();
    for (component, module, t) in targets.all() {
        let (conv, branches) = match t {
            LoraTarget::Linear(l) => (false, &mut l.lora),
            LoraTarget::Conv(cv) => (true, &mut cv.lora),
        };
        for branch in branches.iter_mut() {
            if branch.gate.same(&adapter.gate) {
                out.push(BranchRef { component, module: module.clone(), conv, branch });
            }
        }
    }
    out.sort_by(|a, b| (a.component, &a.module).cmp(&(b.component, &b.module)));
    out
}

/// The adapter as file entries (PyTorch layouts), for saving.
pub fn to_file(targets: &mut Targets<'_>, adapter: &Adapter, alpha: f32, metadata: std::collections::BTreeMap<String, String>) -> LoraFile {
    let mut entries = Vec::new();
    for BranchRef { component, module, conv, branch: b } in branches_mut(targets, adapter) {
        let [i, r] = b.down.dims();
        let o = b.up.dims()[1];
        let down: Vec<f32> = b.down.to_data().convert::<f32>().as_slice::<f32>().expect("f32 data").to_vec();
        let up: Vec<f32> = b.up.to_data().convert::<f32>().as_slice::<f32>().expect("f32 data").to_vec();
        entries.push(LoraEntry {
            component,
            module,
            rank: r,
            in_features: i,
            out_features: o,
            conv,
            down: transpose(&down, i, r),
            up: transpose(&up, r, o),
            alpha,
        });
    }
    LoraFile { entries, metadata, format: None }
}
