//! One pre-norm CLIP encoder layer (`layer_norm1`, `self_attn`, `layer_norm2`, `mlp.fc1/fc2`),
//! shared by the text transformer (causal attention) and the vision transformer.
use super::config::Activation;
use super::layers::{Attention, Layer, LayerNorm, Linear, gelu, quick_gelu};
use super::path::Vs;
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
    pub fn load(vs: &Vs, hidden: usize, intermediate: usize, heads: usize, eps: f64, act: Activation) -> Result<Self> {
        let attn = vs.pp("self_attn");
        Ok(Self {
            layer_norm1: LayerNorm::load(&vs.pp("layer_norm1"), hidden, eps)?,
            self_attn: Attention {
                to_q: Linear::load(&attn.pp("q_proj"), hidden, hidden, true)?,
                to_k: Linear::load(&attn.pp("k_proj"), hidden, hidden, true)?,
                to_v: Linear::load(&attn.pp("v_proj"), hidden, hidden, true)?,
                to_out: Linear::load(&attn.pp("out_proj"), hidden, hidden, true)?,
                heads,
            },
            layer_norm2: LayerNorm::load(&vs.pp("layer_norm2"), hidden, eps)?,
            fc1: Linear::load(&vs.pp("mlp.fc1"), hidden, intermediate, true)?,
            fc2: Linear::load(&vs.pp("mlp.fc2"), intermediate, hidden, true)?,
            quick: act == Activation::QuickGelu,
        })
    }

    pub fn forward(&self, x: Tensor<3>, causal: bool) -> Tensor<3> {
        let x = x.clone() + self.self_attn.forward(self.layer_norm1.forward(x), None, causal);
        let h = self.fc1.forward(self.layer_norm2.forward(x.clone()));
        let h = if self.quick { quick_gelu(h) } else { gelu(h) };
        x + self.fc2.forward(h)
    }

    /// The layer's layers; attention and MLP projections can take LoRA (kohya's and PEFT's text
    /// encoder targets).
    pub fn walk<'a>(&'a mut self, f: &mut dyn FnMut(Layer<'a>)) {
        f(Layer::LayerNorm(&mut self.layer_norm1));
        self.self_attn.walk(true, f);
        f(Layer::LayerNorm(&mut self.layer_norm2));
        f(Layer::Linear(&mut self.fc1, true));
        f(Layer::Linear(&mut self.fc2, true));
    }
}
