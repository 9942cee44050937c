//! The CLIP vision transformer (transformers' `CLIPVisionModel`): a patch-embedding convolution,
//! a class token and position embeddings, `pre_layrnorm`, pre-norm bidirectional encoder layers,
//! and `post_layernorm` on the class token. Used by the evaluation metrics through `CLIPModel`.
use super::layers::{Attention, LayerNorm, Linear, gelu, join, quick_gelu};
use super::weights::Weights;
use anyhow::{Result, bail};
use burn::tensor::Tensor;
use burn::tensor::module::conv2d;
use burn::tensor::ops::ConvOptions;
use serde::Deserialize;

/// The `vision_config` of a `CLIPModel` `config.json`. Defaults are transformers'
/// `CLIPVisionConfig` defaults, since older files leave some fields out.
#[derive(Deserialize, Clone, Debug)]
pub struct ClipVisionConfig {
    #[serde(default = "d_hidden")]
    pub hidden_size: usize,
    #[serde(default = "d_intermediate")]
    pub intermediate_size: usize,
    #[serde(default = "d_twelve")]
    pub num_attention_heads: usize,
    #[serde(default = "d_twelve")]
    pub num_hidden_layers: usize,
    #[serde(default = "d_image")]
    pub image_size: usize,
    #[serde(default = "d_patch")]
    pub patch_size: usize,
    #[serde(default = "d_channels")]
    pub num_channels: usize,
    #[serde(default = "d_eps")]
    pub layer_norm_eps: f64,
    #[serde(default = "d_act")]
    pub hidden_act: String,
}

fn d_hidden() -> usize {
    768
}
fn d_intermediate() -> usize {
    3072
}
fn d_twelve() -> usize {
    12
}
fn d_image() -> usize {
    224
}
fn d_patch() -> usize {
    32
}
fn d_channels() -> usize {
    3
}
fn d_eps() -> f64 {
    1e-5
}
fn d_act() -> String {
    "quick_gelu".into()
}

impl ClipVisionConfig {
    /// Rejects what this implementation does not do, naming the field and value.
    pub fn check(&self) -> Result<()> {
        if self.hidden_act != "quick_gelu" && self.hidden_act != "gelu" {
            bail!("vision_config.hidden_act `{}` is not supported (quick_gelu, gelu)", self.hidden_act);
        }
        if self.num_attention_heads == 0 || !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            bail!(
                "vision_config.hidden_size {} is not divisible by num_attention_heads {}",
                self.hidden_size,
                self.num_attention_heads
            );
        }
        if self.patch_size == 0 || !self.image_size.is_multiple_of(self.patch_size) {
            bail!("vision_config.image_size {} is not a multiple of patch_size {}", self.image_size, self.patch_size);
        }
        Ok(())
    }

    /// Patches per side.
    pub fn grid(&self) -> usize {
        self.image_size / self.patch_size
    }
}

/// One pre-norm CLIP encoder layer (`layer_norm1`, `self_attn`, `layer_norm2`, `mlp.fc1/fc2`),
/// the same as the text encoder's; the caller says whether attention is causal.
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
    pub fn load(w: &Weights, prefix: &str, hidden: usize, intermediate: usize, heads: usize, eps: f64, act: &str) -> Result<Self> {
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
            quick: act == "quick_gelu",
        })
    }

    pub fn forward(&self, x: Tensor<3>, causal: bool) -> Tensor<3> {
        let x = x.clone() + self.self_attn.forward(self.layer_norm1.forward(x), None, causal);
        let h = self.fc1.forward(self.layer_norm2.forward(x.clone()));
        let h = if self.quick { quick_gelu(h) } else { gelu(h) };
        x + self.fc2.forward(h)
    }
}

pub struct ClipVisionModel {
    pub config: ClipVisionConfig,
    /// `[hidden, channels, patch, patch]`; CLIP's patch convolution has no bias.
    patch_embedding: Tensor<4>,
    class_embedding: Tensor<1>,
    /// `[grid² + 1, hidden]`.
    position_embedding: Tensor<2>,
    pre_layrnorm: LayerNorm,
    layers: Vec<ClipEncoderLayer>,
    post_layernorm: LayerNorm,
}

impl ClipVisionModel {
    /// Loads the vision transformer from keys under `prefix` (`vision_model` in a `CLIPModel`).
    pub fn load(w: &Weights, config: &ClipVisionConfig, prefix: &str) -> Result<Self> {
        config.check()?;
        let c = config;
        let (h, p) = (c.hidden_size, c.patch_size);
        let k = |s: &str| join(prefix, s);
        let layers = (0..c.num_hidden_layers)
            .map(|i| {
                let l = k(&format!("encoder.layers.{i}"));
                ClipEncoderLayer::load(w, &l, h, c.intermediate_size, c.num_attention_heads, c.layer_norm_eps, &c.hidden_act)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            config: c.clone(),
            patch_embedding: w.tensor(&k("embeddings.patch_embedding.weight"), [h, c.num_channels, p, p])?,
            class_embedding: w.tensor(&k("embeddings.class_embedding"), [h])?,
            position_embedding: w.tensor(&k("embeddings.position_embedding.weight"), [c.grid() * c.grid() + 1, h])?,
            pre_layrnorm: LayerNorm::load(w, &k("pre_layrnorm"), h, c.layer_norm_eps)?,
            layers,
            post_layernorm: LayerNorm::load(w, &k("post_layernorm"), h, c.layer_norm_eps)?,
        })
    }

    /// Last hidden states `[B, grid² + 1, hidden]` of pixel values `[B, channels, size, size]`
    /// (already resized, cropped and normalised). Errors name the shape the config expects,
    /// since position embeddings are not interpolated to other sizes.
    pub fn forward(&self, pixel_values: Tensor<4>) -> Result<Tensor<3>> {
        let c = &self.config;
        let [b, ch, hh, ww] = pixel_values.dims();
        if ch != c.num_channels || hh != c.image_size || ww != c.image_size {
            bail!(
                "pixel values have shape [{b}, {ch}, {hh}, {ww}], the CLIP vision model expects [B, {}, {}, {}]",
                c.num_channels,
                c.image_size,
                c.image_size
            );
        }
        let (h, g) = (c.hidden_size, c.grid());
        let opts = ConvOptions::new([c.patch_size; 2], [0, 0], [1, 1], 1);
        let patches = conv2d(pixel_values, self.patch_embedding.clone(), None, opts);
        let patches = patches.reshape([b, h, g * g]).swap_dims(1, 2);
        let class = self.class_embedding.clone().reshape([1, 1, h]).expand([b, 1, h]);
        let x = Tensor::cat(vec![class, patches], 1) + self.position_embedding.clone().unsqueeze::<3>();
        let mut x = self.pre_layrnorm.forward(x);
        for layer in &self.layers {
            x = layer.forward(x, false);
        }
        Ok(x)
    }

    /// The pooled output `[B, hidden]`: `post_layernorm` of the class token's last state.
    pub fn pooled(&self, pixel_values: Tensor<4>) -> Result<Tensor<2>> {
        let x = self.forward(pixel_values)?;
        let [b, _, h] = x.dims();
        Ok(self.post_layernorm.forward(x.narrow(1, 0, 1).reshape([b, h])))
    }
}
