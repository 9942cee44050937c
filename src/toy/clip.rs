//! A trainable transformers `CLIPModel`: the crate's CLIP text and vision transformers, both
//! projections and the learnable temperature, all visited by their transformers names so that
//! the trained weights load back with `evaluation::clip::ClipModel::load`.
use crate::models::clip::Clip;
use crate::models::clip_vision::ClipVisionConfig;
use crate::models::config::ClipTextConfig;
use crate::models::layers::{ParamVisitor, Walk};
use crate::models::path::Param;
use crate::models::weights::Weights;
use crate::training::params::{Each, ParamSource, Slot};
use anyhow::Result;
use burn::tensor::{Tensor, TensorData};

/// transformers' `logit_scale_init_value`: ln(1 / 0.07).
pub const LOGIT_SCALE_INIT: f32 = 2.6592;

pub struct TrainableClip {
    pub towers: Clip,
    /// `[1]` here; a 0-d tensor named `logit_scale` in the file.
    pub logit_scale: Param<1>,
}

impl TrainableClip {
    /// A CLIP with weights from `w` (seeded random ones for pretraining), the temperature at
    /// transformers' initial value.
    pub fn load(w: &Weights, text: &ClipTextConfig, vision: &ClipVisionConfig, projection_dim: usize) -> Result<Self> {
        Ok(Self {
            towers: Clip::load(w, text, vision, projection_dim)?,
            logit_scale: Param {
                name: "logit_scale".into(),
                value: Tensor::from_data(TensorData::new(vec![LOGIT_SCALE_INIT], [1]), w.device()),
            },
        })
    }

    /// Unit-length image embeddings `[B, projection]` of preprocessed pixel values.
    pub fn image_embeddings(&self, pixel_values: Tensor<4>) -> Result<Tensor<2>> {
        Ok(normalise(self.towers.image_features(pixel_values)?))
    }

    /// Unit-length text embeddings `[B, projection]` of token ids (all rows the same length).
    pub fn text_embeddings(&self, ids: &[Vec<u32>]) -> Tensor<2> {
        normalise(self.towers.text_features(ids))
    }
}

/// Rows scaled to unit length.
pub fn normalise(x: Tensor<2>) -> Tensor<2> {
    let norm = x.clone().square().sum_dim(1).add_scalar(1e-12).sqrt();
    x.div(norm)
}

impl ParamSource for TrainableClip {
    fn each_param(&mut self, f: &mut dyn FnMut(&str, Slot<'_>)) {
        let mut v = Each(f);
        self.towers.visit(&mut v);
        v.visit1(&self.logit_scale.name, &mut self.logit_scale.value);
    }
}
