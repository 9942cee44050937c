//! The CLIP text transformer (transformers' `CLIPTextModel`): token and position embeddings,
//! pre-norm causal self-attention layers, a final layer norm. Also the text tower of a full
//! `CLIPModel`, used by the evaluation metrics.
use super::clip_encoder::ClipEncoderLayer;
use super::config::ClipTextConfig;
use super::layers::{Layer, LayerNorm, LoraTarget, Walk, adaptable};
use super::path::{Param, Vs};
use super::weights::Weights;
use anyhow::Result;
use burn::tensor::{Device, Int, Tensor, TensorData};

pub struct ClipTextModel {
    pub config: ClipTextConfig,
    /// Key prefix in the weights file: `text_model` in most files, empty in some.
    prefix: String,
    token_embedding: Param<2>,
    position_embedding: Param<2>,
    layers: Vec<ClipEncoderLayer>,
    final_layer_norm: LayerNorm,
}

impl ClipTextModel {
    /// Loads the text transformer. `prefix` is where it sits in the file (`text_model` in a
    /// `CLIPModel`); for a `CLIPTextModel` folder, pass `None` to detect it.
    pub fn load(w: &Weights, config: &ClipTextConfig, prefix: Option<&str>) -> Result<Self> {
        let prefix = match prefix {
            Some(p) => p.to_string(),
            None if w.has("text_model.embeddings.token_embedding.weight") => "text_model".into(),
            None => String::new(),
        };
        let c = config;
        let h = c.hidden_size;
        let vs = Vs::root(w).pp(&prefix);
        let mut layers = Vec::with_capacity(c.num_hidden_layers);
        for i in 0..c.num_hidden_layers {
            let l = vs.pp("encoder.layers").pp(i);
            layers.push(ClipEncoderLayer::load(&l, h, c.intermediate_size, c.num_attention_heads, c.layer_norm_eps, c.hidden_act)?);
        }
        Ok(Self {
            config: c.clone(),
            token_embedding: vs.param("embeddings.token_embedding.weight", [c.vocab_size, h])?,
            position_embedding: vs.param("embeddings.position_embedding.weight", [c.max_position_embeddings, h])?,
            layers,
            final_layer_norm: LayerNorm::load(&vs.pp("final_layer_norm"), h, c.layer_norm_eps)?,
            prefix,
        })
    }

    pub fn device(&self) -> Device {
        self.token_embedding.value.device()
    }

    /// Token ids `[B, N]` as an integer tensor on the model's device.
    pub fn ids_tensor(&self, ids: &[Vec<u32>]) -> Tensor<2, Int> {
        let n = ids[0].len();
        let flat: Vec<i64> = ids.iter().flat_map(|r| r.iter().map(|&i| i as i64)).collect();
        Tensor::from_data(TensorData::new(flat, [ids.len(), n]), &self.device())
    }

    /// Hidden states `[B, N, hidden]`. `clip_skip = 1` is the last layer (SD's default);
    /// `clip_skip = 2` stops one layer earlier, as AUTOMATIC1111's "clip skip" does, and the
    /// final layer norm is applied in every case.
    pub fn forward(&self, ids: &[Vec<u32>], clip_skip: usize) -> Tensor<3> {
        let input = self.ids_tensor(ids);
        let n = ids[0].len();
        let x = burn::tensor::module::embedding(self.token_embedding.value.clone(), input);
        let pos = self.position_embedding.value.clone().narrow(0, 0, n).unsqueeze::<3>();
        let mut x = x + pos;
        let keep = self.layers.len() + 1 - clip_skip.clamp(1, self.layers.len());
        for layer in &self.layers[..keep] {
            x = layer.forward(x, true);
        }
        // Float32 out of a half-precision model, like every model here.
        crate::precision::widen(self.final_layer_norm.forward(x))
    }

    /// The pooled output `[B, hidden]`: the final hidden state at each sequence's first
    /// end-of-text token.
    pub fn pooled(&self, ids: &[Vec<u32>], hidden: Tensor<3>) -> Tensor<2> {
        let [b, n, h] = hidden.dims();
        let rows: Vec<Tensor<2>> = ids
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let pos = r.iter().position(|&t| t == self.config.eos_token_id).unwrap_or(n - 1);
                hidden.clone().narrow(0, i, 1).narrow(1, pos, 1).reshape([1, h])
            })
            .collect();
        debug_assert_eq!(rows.len(), b);
        Tensor::cat(rows, 0)
    }
}

impl Walk for ClipTextModel {
    fn walk<'a>(&'a mut self, f: &mut dyn FnMut(Layer<'a>)) {
        f(Layer::P2(&mut self.token_embedding));
        f(Layer::P2(&mut self.position_embedding));
        for l in &mut self.layers {
            l.walk(f);
        }
        f(Layer::LayerNorm(&mut self.final_layer_norm));
    }

    /// Module paths as LoRA files name them, `text_model.encoder…`, whatever prefix the weights
    /// file used.
    fn lora_targets(&mut self) -> Vec<(String, LoraTarget<'_>)> {
        let skip = if self.prefix.is_empty() { 0 } else { self.prefix.len() + 1 };
        adaptable(self).into_iter().map(|(path, t)| (format!("text_model.{}", &path[skip..]), t)).collect()
    }
}
