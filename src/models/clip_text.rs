//! The CLIP text transformer (transformers' `CLIPTextModel`): token and position embeddings,
//! pre-norm causal self-attention layers, a final layer norm. Also the text tower of a full
//! `CLIPModel`, used by the evaluation metrics.
use super::clip_encoder::ClipEncoderLayer;
use super::config::ClipTextConfig;
use super::layers::{LayerNorm, LoraTarget, ParamVisitor, join};
use super::weights::Weights;
use anyhow::Result;
use burn::tensor::{Device, Int, Tensor, TensorData};

pub struct ClipTextModel {
    pub config: ClipTextConfig,
    /// Key prefix in the weights file: `text_model.` in most files, empty in some.
    prefix: String,
    token_embedding: Tensor<2>,
    position_embedding: Tensor<2>,
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
        let p = |s: &str| join(&prefix, s);
        let mut layers = Vec::with_capacity(c.num_hidden_layers);
        for i in 0..c.num_hidden_layers {
            let l = p(&format!("encoder.layers.{i}"));
            layers.push(ClipEncoderLayer::load(w, &l, h, c.intermediate_size, c.num_attention_heads, c.layer_norm_eps, c.hidden_act)?);
        }
        Ok(Self {
            config: c.clone(),
            token_embedding: w.tensor(&p("embeddings.token_embedding.weight"), [c.vocab_size, h])?,
            position_embedding: w.tensor(&p("embeddings.position_embedding.weight"), [c.max_position_embeddings, h])?,
            layers,
            final_layer_norm: LayerNorm::load(w, &p("final_layer_norm"), h, c.layer_norm_eps)?,
            prefix,
        })
    }

    pub fn device(&self) -> Device {
        self.token_embedding.device()
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
        let x = burn::tensor::module::embedding(self.token_embedding.clone(), input);
        let pos = self.position_embedding.clone().narrow(0, 0, n).unsqueeze::<3>();
        let mut x = x + pos;
        let keep = self.layers.len() + 1 - clip_skip.clamp(1, self.layers.len());
        for layer in &self.layers[..keep] {
            x = layer.forward(x, true);
        }
        self.final_layer_norm.forward(x)
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

    /// Every Linear layer by its module path as transformers names it (`text_model.encoder...`),
    /// for attaching LoRA branches.
    pub fn lora_targets(&mut self) -> Vec<(String, LoraTarget<'_>)> {
        let mut out = Vec::new();
        for (i, l) in self.layers.iter_mut().enumerate() {
            l.lora_targets(&format!("text_model.encoder.layers.{i}"), &mut out);
        }
        out
    }

    pub fn visit(&mut self, v: &mut dyn ParamVisitor) {
        let p = self.prefix.clone();
        v.visit2(&join(&p, "embeddings.token_embedding.weight"), &mut self.token_embedding);
        v.visit2(&join(&p, "embeddings.position_embedding.weight"), &mut self.position_embedding);
        for (i, l) in self.layers.iter_mut().enumerate() {
            l.visit(&join(&p, &format!("encoder.layers.{i}")), v);
        }
        self.final_layer_norm.visit(&join(&p, "final_layer_norm"), v);
    }
}
