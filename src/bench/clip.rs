//! How fast images are embedded for scoring: images per second through the CLIP vision tower
//! and projection, batched as `score` and `eval` batch them.
use crate::evaluation::clip::{ClipModel, ClipModelConfig, ClipPreprocess};
use crate::models::tokenizer::ClipTokenizer;
use crate::models::weights::Weights;
use anyhow::Result;
use burn::tensor::Device;
use std::path::Path;
use std::time::Instant;

/// The ViT-B/32 CLIP configuration (openai/clip-vit-base-patch32).
pub fn vit_b32_config() -> ClipModelConfig {
    serde_json::from_value(serde_json::json!({
        "projection_dim": 512,
        "text_config": {"hidden_size": 512, "intermediate_size": 2048, "num_attention_heads": 8, "num_hidden_layers": 12, "max_position_embeddings": 77},
        "vision_config": {"hidden_size": 768, "intermediate_size": 3072, "num_attention_heads": 12, "num_hidden_layers": 12, "image_size": 224, "patch_size": 32}
    }))
    .expect("a valid CLIP config")
}

/// A ViT-B/32-shaped CLIP with seeded random weights; the tokenizer comes from `tokenizer_dir`.
pub fn random_vit_b32(tokenizer_dir: &Path, device: &Device) -> Result<ClipModel> {
    let config = vit_b32_config();
    let preprocess = ClipPreprocess::openai(config.vision_config.image_size);
    ClipModel::build(&Weights::random(0, device), &config, ClipTokenizer::from_dir(tokenizer_dir)?, preprocess)
}

/// One throughput measurement.
#[derive(Clone, Debug)]
pub struct Throughput {
    pub images: usize,
    pub batch: usize,
    pub seconds: f64,
}

impl Throughput {
    pub fn images_per_second(&self) -> f64 {
        self.images as f64 / self.seconds
    }
}

/// Embeds `images` random pixel images in batches of `batch` (after one warm-up batch) and
/// times it.
pub fn embedding_throughput(clip: &mut ClipModel, images: usize, batch: usize) -> Result<Throughput> {
    clip.batch_size = batch.max(1);
    let s = clip.image_size();
    let c = clip.towers.vision.config.num_channels;
    let mut rng = crate::rng::Rng::new(1);
    let pixels: Vec<Vec<f32>> = (0..images).map(|_| rng.normal_vec(c * s * s)).collect();
    clip.embed_pixels(&pixels[..batch.min(images)])?;
    let t = Instant::now();
    let out = clip.embed_pixels(&pixels)?;
    let seconds = t.elapsed().as_secs_f64();
    anyhow::ensure!(out.len() == images, "embedded {} of {images} images", out.len());
    Ok(Throughput { images, batch, seconds })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vit_b32_with_random_weights_embeds_to_unit_vectors() {
        let tok = crate::fixtures::fixture("tiny-clip");
        let device = Device::flex();
        let mut clip = random_vit_b32(&tok, &device).unwrap();
        assert_eq!(clip.image_size(), 224);
        let t = embedding_throughput(&mut clip, 3, 2).unwrap();
        assert!(t.images_per_second() > 0.0 && t.images == 3);
        let e = clip.embed_pixels(&[vec![0.1; 3 * 224 * 224]]).unwrap();
        assert_eq!(e[0].len(), 512);
        let norm: f32 = e[0].iter().map(|v| v * v).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4, "{norm}");
    }
}
