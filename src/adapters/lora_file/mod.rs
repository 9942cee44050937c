//! LoRA files on disk: the three namings in use for Stable Diffusion 1.x (kohya / AUTOMATIC1111,
//! PEFT / diffusers, and diffusers' older attention-processor naming) read into one data model,
//! and the kohya and PEFT forms written from it. Pure data in, pure data out: no model code here;
//! the caller checks the shapes against the model (`in_features`, `out_features`).
//!
//! The readers of all three namings sit together in [`read`] (they are one mapping, module path
//! <-> key, and every problem of a file is collected and reported at once); [`write`] writes,
//! [`summary`] describes a file for `catlora inspect`.
mod read;
mod summary;
#[cfg(test)]
mod tests;
mod write;

pub use read::read;
pub use summary::summary;
pub use write::{bytes, kohya_bytes, peft_bytes, write, write_as};

use std::collections::BTreeMap;

/// Which model a LoRA branch sits in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Component {
    Unet,
    TextEncoder,
}

impl Component {
    /// The prefix of PEFT / diffusers keys and of the `lora_adapter_metadata` fields.
    pub fn diffusers_prefix(self) -> &'static str {
        match self {
            Component::Unet => "unet",
            Component::TextEncoder => "text_encoder",
        }
    }
    /// The prefix of kohya keys.
    pub fn kohya_prefix(self) -> &'static str {
        match self {
            Component::Unet => "lora_unet",
            Component::TextEncoder => "lora_te",
        }
    }
}

/// The naming a file was written in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// `lora_unet_<module_underscored>.lora_down.weight` / `.lora_up.weight` / `.alpha`.
    Kohya,
    /// `unet.<module>.lora_A.weight` / `.lora_B.weight`, alpha in `lora_adapter_metadata`.
    Peft,
    /// `unet.<block>.processor.to_q_lora.down.weight` (diffusers before PEFT); read only.
    DiffusersProcessor,
}

impl Format {
    pub fn name(self) -> &'static str {
        match self {
            Format::Kohya => "kohya",
            Format::Peft => "peft",
            Format::DiffusersProcessor => "diffusers-processor",
        }
    }
}

/// One low-rank branch: `delta W = (alpha / rank) · up · down`.
#[derive(Clone, Debug, PartialEq)]
pub struct LoraEntry {
    pub component: Component,
    /// The module path as `named_modules()` spells it, e.g.
    /// `down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q` or
    /// `text_model.encoder.layers.0.self_attn.q_proj`.
    pub module: String,
    pub rank: usize,
    pub in_features: usize,
    pub out_features: usize,
    /// A 1x1 convolution: on disk `down` is `[rank, in, 1, 1]` and `up` is `[out, rank, 1, 1]`.
    pub conv: bool,
    /// A, `[rank, in]` row-major (PyTorch layout).
    pub down: Vec<f32>,
    /// B, `[out, rank]` row-major (PyTorch layout).
    pub up: Vec<f32>,
    pub alpha: f32,
}

impl LoraEntry {
    pub fn down_shape(&self) -> Vec<usize> {
        let mut s = vec![self.rank, self.in_features];
        if self.conv {
            s.extend([1, 1]);
        }
        s
    }
    pub fn up_shape(&self) -> Vec<usize> {
        let mut s = vec![self.out_features, self.rank];
        if self.conv {
            s.extend([1, 1]);
        }
        s
    }
    pub fn scale(&self) -> f32 {
        self.alpha / self.rank as f32
    }
    /// The last part of the module path that names the layer kind: `to_q`, `to_out.0`, `q_proj`.
    pub fn leaf(&self) -> &str {
        leaf_name(&self.module)
    }
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct LoraFile {
    /// Sorted by (component, module).
    pub entries: Vec<LoraEntry>,
    /// The file's safetensors metadata as read; on writing, extra keys the caller wants stored.
    pub metadata: BTreeMap<String, String>,
    /// The naming the file was read from; `None` for a LoRA built in memory.
    pub format: Option<Format>,
}

/// The real module paths of the model, needed because kohya names replace every `.` by `_`, which
/// only the model's own module list can undo. Every read module is also checked against it.
#[derive(Clone, Debug, Default)]
pub struct KnownModules {
    pub unet: Vec<String>,
    pub text_encoder: Vec<String>,
}

impl KnownModules {
    fn list(&self, c: Component) -> &[String] {
        match c {
            Component::Unet => &self.unet,
            Component::TextEncoder => &self.text_encoder,
        }
    }
}

/// The three roles a tensor plays in a branch.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Down,
    Up,
    Alpha,
}

/// Classifies one tensor name as (format, component, module as written, role). For kohya the
/// module is still underscored; `None` when no known naming fits.
pub fn classify(key: &str) -> Option<(Format, Component, String, Role)> {
    for c in [Component::Unet, Component::TextEncoder] {
        if let Some(rest) = key.strip_prefix(c.kohya_prefix()).and_then(|r| r.strip_prefix('_')) {
            let (name, suffix) = rest.split_once('.')?;
            let role = match suffix {
                "lora_down.weight" => Role::Down,
                "lora_up.weight" => Role::Up,
                "alpha" => Role::Alpha,
                _ => return None,
            };
            return Some((Format::Kohya, c, name.to_string(), role));
        }
    }
    // Dotted namings; a key without a component prefix belongs to the UNet (older diffusers files).
    let (c, rest) = if let Some(r) = key.strip_prefix("unet.") {
        (Component::Unet, r)
    } else if let Some(r) = key.strip_prefix("text_encoder.") {
        (Component::TextEncoder, r)
    } else {
        (Component::Unet, key)
    };
    for (suffix, format, role) in [
        (".lora_A.weight", Format::Peft, Role::Down),
        (".lora_B.weight", Format::Peft, Role::Up),
        // diffusers' text-encoder patching before PEFT.
        (".lora_linear_layer.down.weight", Format::DiffusersProcessor, Role::Down),
        (".lora_linear_layer.up.weight", Format::DiffusersProcessor, Role::Up),
    ] {
        if let Some(m) = rest.strip_suffix(suffix).filter(|m| !m.is_empty()) {
            return Some((format, c, m.to_string(), role));
        }
    }
    // `<block>.processor.to_q_lora.down.weight`: the processor sat on the attention block.
    let (block, tail) = rest.split_once(".processor.")?;
    let (proj, role) = tail.split_once("_lora.")?;
    let role = match role {
        "down.weight" => Role::Down,
        "up.weight" => Role::Up,
        _ => return None,
    };
    let layer = match proj {
        "to_q" | "to_k" | "to_v" => proj,
        "to_out" => "to_out.0",
        _ => return None,
    };
    Some((Format::DiffusersProcessor, c, format!("{block}.{layer}"), role))
}

/// `a.b.to_out.0` → `to_out.0`, `a.b.to_q` → `to_q`.
fn leaf_name(module: &str) -> &str {
    let mut parts = module.rsplitn(3, '.');
    let last = parts.next().unwrap_or(module);
    match parts.next() {
        Some(prev) if last.chars().all(|ch| ch.is_ascii_digit()) => &module[module.len() - last.len() - prev.len() - 1..],
        _ => last,
    }
}

fn count(problems: usize) -> String {
    if problems == 1 { "1 problem".into() } else { format!("{problems} problems") }
}

fn component_label(c: Component) -> &'static str {
    match c {
        Component::Unet => "UNet",
        Component::TextEncoder => "text encoder",
    }
}

/// `8` for 8.0 (as kohya's `str(int)` and diffusers' JSON write integral alphas), else the shortest
/// exact decimal.
fn alpha_text(a: f32) -> String {
    if a.fract() == 0.0 && a.abs() < 1e9 { format!("{}", a as i64) } else { format!("{a}") }
}
