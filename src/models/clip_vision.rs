//! The CLIP vision transformer (transformers' `CLIPVisionModel`): a patch-embedding convolution,
//! a class token and position embeddings, `pre_layrnorm`, pre-norm bidirectional encoder layers,
//! and `post_layernorm` on the class token. Used by the evaluation metrics through `CLIPModel`.
pub use super::clip_encoder::ClipEncoderLayer;
use super::config::{Activation, MAX_DIM};
use super::layers::{Layer, LayerNorm};
use super::path::{Param, Vs};
use super::weights::Weights;
use anyhow::{Result, bail};
use burn::tensor::Tensor;
use burn::tensor::module::conv2d;
use burn::tensor::ops::ConvOptions;
use serde::Deserialize;

/// The `vision_config` of a `CLIPModel` `config.json`. Defaults are transformers'
/// `CLIPVisionConfig` defaults, since older files leave some fields out.
#[derive(Deserialize, Clone, Debug)]
#[serde(default)]
pub struct ClipVisionConfig {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_attention_heads: usize,
    pub num_hidden_layers: usize,
    pub image_size: usize,
    pub patch_size: usize,
    pub num_channels: usize,
    pub layer_norm_eps: f64,
    pub hidden_act: Activation,
}

impl Default for ClipVisionConfig {
    fn default() -> Self {
        Self {
            hidden_size: 768,
            intermediate_size: 3072,
            num_attention_heads: 12,
            num_hidden_layers: 12,
            image_size: 224,
            patch_size: 32,
            num_channels: 3,
            layer_norm_eps: 1e-5,
            hidden_act: Activation::QuickGelu,
        }
    }
}

impl ClipVisionConfig {
    /// Rejects what this implementation does not do, naming the field and value.
    pub fn check(&self) -> Result<()> {
        if self.hidden_act == Activation::Silu {
            bail!("vision_config.hidden_act silu is not supported (quick_gelu, gelu)");
        }
        for (field, v) in [
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_attention_heads", self.num_attention_heads),
            ("num_hidden_layers", self.num_hidden_layers),
            ("image_size", self.image_size),
            ("patch_size", self.patch_size),
            ("num_channels", self.num_channels),
        ] {
            if !(1..=MAX_DIM).contains(&v) {
                bail!("vision_config.{field} is {v}; it must be between 1 and {MAX_DIM}");
            }
        }
        if !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            bail!("vision_config.hidden_size {} is not divisible by num_attention_heads {}", self.hidden_size, self.num_attention_heads);
        }
        if !self.image_size.is_multiple_of(self.patch_size) {
            bail!("vision_config.image_size {} is not a multiple of patch_size {}", self.image_size, self.patch_size);
        }
        if !(self.layer_norm_eps.is_finite() && self.layer_norm_eps > 0.0) {
            bail!("vision_config.layer_norm_eps {} is not a positive finite number", self.layer_norm_eps);
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
    patch_embedding: Param<4>,
    class_embedding: Param<1>,
    /// `[grid² + 1, hidden]`.
    position_embedding: Param<2>,
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
        let vs = Vs::root(w).pp(prefix);
        let layers = (0..c.num_hidden_layers)
            .map(|i| {
                let l = vs.pp("encoder.layers").pp(i);
                ClipEncoderLayer::load(&l, h, c.intermediate_size, c.num_attention_heads, c.layer_norm_eps, c.hidden_act)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            config: c.clone(),
            patch_embedding: vs.param("embeddings.patch_embedding.weight", [h, c.num_channels, p, p])?,
            class_embedding: vs.param("embeddings.class_embedding", [h])?,
            position_embedding: vs.param("embeddings.position_embedding.weight", [c.grid() * c.grid() + 1, h])?,
            pre_layrnorm: LayerNorm::load(&vs.pp("pre_layrnorm"), h, c.layer_norm_eps)?,
            layers,
            post_layernorm: LayerNorm::load(&vs.pp("post_layernorm"), h, c.layer_norm_eps)?,
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
        let patches = conv2d(pixel_values, self.patch_embedding.value.clone(), None, opts);
        let patches = patches.reshape([b, h, g * g]).swap_dims(1, 2);
        let class = self.class_embedding.value.clone().reshape([1, 1, h]).expand([b, 1, h]);
        let x = Tensor::cat(vec![class, patches], 1) + self.position_embedding.value.clone().unsqueeze::<3>();
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

    /// Its layers, as [`super::layers::Walk`] (a part of a CLIP model, not a model alone).
    pub fn walk<'a>(&'a mut self, f: &mut dyn FnMut(Layer<'a>)) {
        f(Layer::P4(&mut self.patch_embedding));
        f(Layer::P1(&mut self.class_embedding));
        f(Layer::P2(&mut self.position_embedding));
        f(Layer::LayerNorm(&mut self.pre_layrnorm));
        for l in &mut self.layers {
            l.walk(f);
        }
        f(Layer::LayerNorm(&mut self.post_layernorm));
    }
}
