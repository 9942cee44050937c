//! A trainable transformers `CLIPModel`: the crate's CLIP text and vision transformers, both
//! projections and the learnable temperature, all visited by their transformers names so that
//! the trained weights load back with `evaluation::clip::ClipModel::load`.
use crate::models::clip_text::ClipTextModel;
use crate::models::clip_vision::{ClipVisionConfig, ClipVisionModel};
use crate::models::config::ClipTextConfig;
use crate::models::layers::{Linear, ParamVisitor};
use crate::models::weights::Weights;
use crate::training::params::{Each, ParamSource, Slot};
use anyhow::Result;
use burn::tensor::{Tensor, TensorData};

/// transformers' `logit_scale_init_value`: ln(1 / 0.07).
pub const LOGIT_SCALE_INIT: f32 = 2.6592;

pub struct TrainableClip {
    pub text: ClipTextModel,
    pub text_projection: Linear,
    pub vision: ClipVisionModel,
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
            vision: ClipVisionModel::load(w, vision, "vision_model")?,
            visual_projection: Linear::load(w, "visual_projection", vision.hidden_size, projection_dim, false)?,
            logit_scale: Tensor::from_data(TensorData::new(vec![LOGIT_SCALE_INIT], [1]), w.device()),
        })
    }

    /// Unit-length image embeddings `[B, projection]` of preprocessed pixel values.
    pub fn image_embeddings(&self, pixel_values: Tensor<4>) -> Result<Tensor<2>> {
        Ok(normalise(self.visual_projection.forward(self.vision.pooled(pixel_values)?)))
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

impl TrainableClip {
    fn visit(&mut self, v: &mut dyn ParamVisitor) {
        self.text.visit(v);
        self.text_projection.visit("text_projection", v);
        self.vision.visit("vision_model", v);
        self.visual_projection.visit("visual_projection", v);
        v.visit1("logit_scale", &mut self.logit_scale);
    }
}

impl ParamSource for TrainableClip {
    fn each_param(&mut self, f: &mut dyn FnMut(&str, Slot<'_>)) {
        self.visit(&mut Each(f))
    }
}
