//! A trainable transformers `CLIPModel`: the crate's CLIP text transformer, a vision transformer
//! computed exactly as `models::clip_vision` does (whose fields are private and which has no
//! `visit`), both projections and the learnable temperature, all visited by their transformers
//! names so that the trained weights load back with `evaluation::clip::ClipModel::load`.
use super::params::Visit;
use crate::models::clip_text::ClipTextModel;
use crate::models::clip_vision::{ClipEncoderLayer, ClipVisionConfig};
use crate::models::config::ClipTextConfig;
use crate::models::layers::{LayerNorm, Linear, ParamVisitor, join};
use crate::models::weights::Weights;
use anyhow::Result;
use burn::tensor::module::conv2d;
use burn::tensor::ops::ConvOptions;
use burn::tensor::{Tensor, TensorData};

/// transformers' `logit_scale_init_value`: ln(1 / 0.07).
pub const LOGIT_SCALE_INIT: f32 = 2.6592;

pub struct VisionTower {
    pub config: ClipVisionConfig,
    pub patch_embedding: Tensor<4>,
    pub class_embedding: Tensor<1>,
    pub position_embedding: Tensor<2>,
    pub pre_layrnorm: LayerNorm,
    pub layers: Vec<ClipEncoderLayer>,
    pub post_layernorm: LayerNorm,
}

impl VisionTower {
    pub fn load(w: &Weights, config: &ClipVisionConfig, prefix: &str) -> Result<Self> {
        config.check()?;
        let c = config;
        let (h, p) = (c.hidden_size, c.patch_size);
        let k = |s: &str| join(prefix, s);
        let layers = (0..c.num_hidden_layers)
            .map(|i| {
                ClipEncoderLayer::load(w, &k(&format!("encoder.layers.{i}")), h, c.intermediate_size, c.num_attention_heads, c.layer_norm_eps, &c.hidden_act)
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

    /// `post_layernorm` of the class token's last state, `[B, hidden]`, for preprocessed pixel
    /// values `[B, channels, size, size]` (the computation of `ClipVisionModel::pooled`).
    pub fn pooled(&self, pixel_values: Tensor<4>) -> Tensor<2> {
        let c = &self.config;
        let b = pixel_values.dims()[0];
        let (h, g) = (c.hidden_size, c.grid());
        let opts = ConvOptions::new([c.patch_size; 2], [0, 0], [1, 1], 1);
        let patches = conv2d(pixel_values, self.patch_embedding.clone(), None, opts).reshape([b, h, g * g]).swap_dims(1, 2);
        let class = self.class_embedding.clone().reshape([1, 1, h]).expand([b, 1, h]);
        let x = Tensor::cat(vec![class, patches], 1) + self.position_embedding.clone().unsqueeze::<3>();
        let mut x = self.pre_layrnorm.forward(x);
        for layer in &self.layers {
            x = layer.forward(x, false);
        }
        self.post_layernorm.forward(x.narrow(1, 0, 1).reshape([b, h]))
    }

    pub fn visit(&mut self, prefix: &str, v: &mut dyn ParamVisitor) {
        let k = |s: &str| join(prefix, s);
        v.visit4(&k("embeddings.patch_embedding.weight"), &mut self.patch_embedding);
        v.visit1(&k("embeddings.class_embedding"), &mut self.class_embedding);
        v.visit2(&k("embeddings.position_embedding.weight"), &mut self.position_embedding);
        self.pre_layrnorm.visit(&k("pre_layrnorm"), v);
        for (i, l) in self.layers.iter_mut().enumerate() {
            let p = k(&format!("encoder.layers.{i}"));
            l.layer_norm1.visit(&join(&p, "layer_norm1"), v);
            l.self_attn.visit(&join(&p, "self_attn"), v);
            l.layer_norm2.visit(&join(&p, "layer_norm2"), v);
            l.fc1.visit(&join(&p, "mlp.fc1"), v);
            l.fc2.visit(&join(&p, "mlp.fc2"), v);
        }
        self.post_layernorm.visit(&k("post_layernorm"), v);
    }
}

pub struct TrainableClip {
    pub text: ClipTextModel,
    pub text_projection: Linear,
    pub vision: VisionTower,
    pub visual_projection: Linear,
    /// `[1]` here; a 0-d tensor named `logit_scale` in the file.
    pub logit_scale: Tensor<1>,
}

impl TrainableClip {
    /// A CLIP with weights from `w` (seeded random ones for pretraining), the temperature at
    /// transformers' initial value.
    pub fn load(w: &Weights, text: &ClipTextConfig, vision: &ClipVisionConfig, projection_dim: usize) -> Result<Self> {
        Ok(Self {
            text: ClipTextModel::load(w, text, Some("text_model"))?,
            text_projection: Linear::load(w, "text_projection", text.hidden_size, projection_dim, false)?,
            vision: VisionTower::load(w, vision, "vision_model")?,
            visual_projection: Linear::load(w, "visual_projection", vision.hidden_size, projection_dim, false)?,
            logit_scale: Tensor::from_data(TensorData::new(vec![LOGIT_SCALE_INIT], [1]), w.device()),
        })
    }

    /// Unit-length image embeddings `[B, projection]`.
    pub fn image_embeddings(&self, pixel_values: Tensor<4>) -> Tensor<2> {
        normalise(self.visual_projection.forward(self.vision.pooled(pixel_values)))
    }

    /// Unit-length text embeddings `[B, projection]` of token ids (all rows the same length).
    pub fn text_embeddings(&self, ids: &[Vec<u32>]) -> Tensor<2> {
        let hidden = self.text.forward(ids, 1);
        normalise(self.text_projection.forward(self.text.pooled(ids, hidden)))
    }
}

/// Rows scaled to unit length.
pub fn normalise(x: Tensor<2>) -> Tensor<2> {
    let norm = x.clone().square().sum_dim(1).add_scalar(1e-12).sqrt();
    x.div(norm)
}

impl Visit for TrainableClip {
    fn visit_params(&mut self, v: &mut dyn ParamVisitor) {
        self.text.visit(v);
        self.text_projection.visit("text_projection", v);
        self.vision.visit("vision_model", v);
        self.visual_projection.visit("visual_projection", v);
        v.visit1("logit_scale", &mut self.logit_scale);
    }
}
