//! One pre-norm CLIP encoder layer (`layer_norm1`, `self_attn`, `layer_norm2`, `mlp.fc1/fc2`),
//! shared by the text transformer (causal attention) and the vision transformer.
use super::config::Activation;
use super::layers::{Attention, LayerNorm, Linear, LoraTarget, ParamVisitor, gelu, join, quick_gelu};
use super::weights::Weights;
use anyhow::Result;
use burn::tensor::Tensor;

pub struct ClipEncoderLayer {
    pub layer_norm1: LayerNorm,
    pub self_attn: Attention,
    pub layer_norm2: LayerNorm,
    pub fc1: Linear,
    pub fc2: Linear,
    /// `quick_gelu` when true, exact GELU otherwise.
    pub quick: bool,
}

impl ClipEncoderLayer {
    pub fn load(w: &Weights, prefix: &str, hidden: usize, intermediate: usize, heads: usize, eps: f64, act: Activation) -> Result<Self> {
        let p = |s: &str| join(prefix, s);
        Ok(Self {
            layer_norm1: LayerNorm::load(w, &p("layer_norm1"), hidden, eps)?,
            self_attn: Attention {
                to_q: Linear::load(w, &p("self_attn.q_proj"), hidden, hidden, true)?,
                to_k: Linear::load(w, &p("self_attn.k_proj"), hidden, hidden, true)?,
                to_v: Linear::load(w, &p("self_attn.v_proj"), hidden, hidden, true)?,
                to_out: Linear::load(w, &p("self_attn.out_proj"), hidden, hidden, true)?,
                heads,
                names: ["q_proj", "k_proj", "v_proj", "out_proj"],
            },
            layer_norm2: LayerNorm::load(w, &p("layer_norm2"), hidden, eps)?,
            fc1: Linear::load(w, &p("mlp.fc1"), hidden, intermediate, true)?,
            fc2: Linear::load(w, &p("mlp.fc2"), intermediate, hidden, true)?,
            quick: act == Activation::QuickGelu,
        })
    }

    pub fn forward(&self, x: Tensor<3>, causal: bool) -> Tensor<3> {
        let x = x.clone() + self.self_attn.forward(self.layer_norm1.forward(x), None, causal);
        let h = self.fc1.forward(self.layer_norm2.forward(x.clone()));
        let h = if self.quick { quick_gelu(h) } else { gelu(h) };
        x + self.fc2.forward(h)
    }

    /// Every parameter under its transformers name below `prefix`.
    pub fn visit(&mut self, prefix: &str, v: &mut dyn ParamVisitor) {
        self.layer_norm1.visit(&join(prefix, "layer_norm1"), v);
        self.self_attn.visit(&join(prefix, "self_attn"), v);
        self.layer_norm2.visit(&join(prefix, "layer_norm2"), v);
        self.fc1.visit(&join(prefix, "mlp.fc1"), v);
        self.fc2.visit(&join(prefix, "mlp.fc2"), v);
    }

    /// The layer's Linear modules by module path below `prefix`, for LoRA branches.
    pub fn lora_targets<'a>(&'a mut self, prefix: &str, out: &mut Vec<(String, LoraTarget<'a>)>) {
        for (name, lin) in self.self_attn.linears_mut() {
            out.push((format!("{prefix}.self_attn.{name}"), LoraTarget::Linear(lin)));
        }
        out.push((format!("{prefix}.mlp.fc1"), LoraTarget::Linear(&mut self.fc1)));
        out.push((format!("{prefix}.mlp.fc2"), LoraTarget::Linear(&mut self.fc2)));
    }
}
