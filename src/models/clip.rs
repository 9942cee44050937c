//! transformers' `CLIPModel` without its temperature: the text and vision towers and their
//! projections into the shared embedding space. Evaluation scores with it
//! (`evaluation::clip`); the toy world trains it (`toy::clip`).
use super::clip_text::ClipTextModel;
use super::clip_vision::{ClipVisionConfig, ClipVisionModel};
use super::config::ClipTextConfig;
use super::layers::{Layer, Linear, Walk};
use super::path::Vs;
use super::weights::Weights;
use anyhow::Result;
use burn::tensor::Tensor;

pub struct Clip {
    pub text: ClipTextModel,
    pub text_projection: Linear,
    pub vision: ClipVisionModel,
    pub visual_projection: Linear,
}

impl Clip {
    pub fn load(w: &Weights, text: &ClipTextConfig, vision: &ClipVisionConfig, projection_dim: usize) -> Result<Self> {
        let vs = Vs::root(w);
        Ok(Self {
            text: ClipTextModel::load(w, text, Some("text_model"))?,
            text_projection: Linear::load(&vs.pp("text_projection"), text.hidden_size, projection_dim, false)?,
            vision: ClipVisionModel::load(w, vision, "vision_model")?,
            visual_projection: Linear::load(&vs.pp("visual_projection"), vision.hidden_size, projection_dim, false)?,
        })
    }

    /// Projected text features `[B, projection]` (not yet unit length) of token ids, all rows
    /// the same length.
    pub fn text_features(&self, ids: &[Vec<u32>]) -> Tensor<2> {
        let hidden = self.text.forward(ids, 1);
        self.text_projection.forward(self.text.pooled(ids, hidden))
    }

    /// Projected image features `[B, projection]` (not yet unit length) of preprocessed pixel
    /// values.
    pub fn image_features(&self, pixel_values: Tensor<4>) -> Result<Tensor<2>> {
        Ok(self.visual_projection.forward(self.vision.pooled(pixel_values)?))
    }
}

impl Walk for Clip {
    fn walk<'a>(&'a mut self, f: &mut dyn FnMut(Layer<'a>)) {
        self.text.walk(f);
        f(Layer::Linear(&mut self.text_projection, false));
        self.vision.walk(f);
        f(Layer::Linear(&mut self.visual_projection, false));
    }
}
