//! The CLIP vision transformer (transformers' `CLIPVisionModel`): a patch-embedding convolution,
//! a class token and position embeddings, `pre_layrnorm`, pre-norm bidirectional encoder layers,
//! and `post_layernorm` on the class token. Used by the evaluation metrics through `CLIPModel`.
pub use super::clip_encoder::ClipEncoderLayer;
use super::layers::{LayerNorm, ParamVisitor, join};
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

    /// Every parameter under its transformers name below `prefix` (`vision_model`).
    pub fn visit(&mut self, prefix: &str, v: &mut dyn ParamVisitor) {
        let k = |s: &str| join(prefix, s);
        v.visit4(&k("embeddings.patch_embedding.weight"), &mut self.patch_embedding);
        v.visit1(&k("embeddings.class_embedding"), &mut self.class_embedding);
        v.visit2(&k("embeddings.position_embedding.weight"), &mut self.position_embedding);
        self.pre_layrnorm.visit(&k("pre_layrnorm"), v);
        for (i, l) in self.layers.iter_mut().enumerate() {
            l.visit(&k(&format!("encoder.layers.{i}")), v);
        }
        self.post_layernorm.visit(&k("post_layernorm"), v);
    }
}
