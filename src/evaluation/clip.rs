//! A full transformers `CLIPModel` for the metrics: both towers, their projections, the tokenizer
//! and the image preprocessing settings, loaded from one folder. Embeddings are the projected,
//! L2-normalised features (`CLIPModel.get_text_features` / `get_image_features`, normalised).
use crate::io::image::{RgbImage, clip_preprocess, load_rgb};
use crate::models::clip::Clip;
use crate::models::clip_vision::ClipVisionConfig;
use crate::models::config::{ClipTextConfig, read_json};
use crate::models::tokenizer::ClipTokenizer;
use crate::models::weights::Weights;
use anyhow::{Context, Result, anyhow, bail};
use burn::tensor::{Device, Tensor, TensorData};
use serde::Deserialize;
use serde_json::Value;
use std::path::{Path, PathBuf};

/// Images or texts per forward pass unless the caller changes `ClipModel::batch_size`.
pub const DEFAULT_BATCH_SIZE: usize = 16;

/// OpenAI CLIP's per-channel image statistics (RGB), as every `preprocessor_config.json` of
/// theirs lists them.
pub const OPENAI_MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
pub const OPENAI_STD: [f32; 3] = [0.268_629_54, 0.261_302_6, 0.275_777_1];

/// The parts of a `CLIPModel` `config.json` used here.
#[derive(Deserialize, Clone, Debug)]
pub struct ClipModelConfig {
    pub text_config: ClipTextConfig,
    pub vision_config: ClipVisionConfig,
    #[serde(default = "default_projection")]
    pub projection_dim: usize,
}

fn default_projection() -> usize {
    512
}

/// `preprocessor_config.json` (`CLIPImageProcessor`) reduced to what the pipeline needs: resize
/// the shortest side to `size` (bicubic), centre-crop `crop` x `crop`, scale to [0, 1], then
/// `(x - mean) / std` per channel.
#[derive(Clone, Debug, PartialEq)]
pub struct ClipPreprocess {
    pub size: usize,
    pub crop: usize,
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

impl ClipPreprocess {
    /// OpenAI CLIP's statistics at the model's input size: what a folder without a
    /// `preprocessor_config.json` was trained with.
    pub fn openai(image_size: usize) -> Self {
        Self { size: image_size, crop: image_size, mean: OPENAI_MEAN, std: OPENAI_STD }
    }

    /// Reads `preprocessor_config.json`, falling back to [`ClipPreprocess::openai`] for missing
    /// fields. `size` / `crop_size` may be a number or an object (`shortest_edge`, or
    /// `height` / `width`, which must be equal: only square crops are produced).
    pub fn load(path: &Path, image_size: usize) -> Result<Self> {
        let v: Value = read_json(path)?;
        let mut p = Self::openai(image_size);
        let side = |key: &str| -> Result<Option<usize>> {
            let Some(f) = v.get(key) else { return Ok(None) };
            if let Some(n) = f.as_u64() {
                return Ok(Some(n as usize));
            }
            if let Some(n) = f.get("shortest_edge").and_then(Value::as_u64) {
                return Ok(Some(n as usize));
            }
            match (f.get("height").and_then(Value::as_u64), f.get("width").and_then(Value::as_u64)) {
                (Some(h), Some(w)) if h == w => Ok(Some(h as usize)),
                _ => bail!("{}: `{key}` = {f} is not a number, a shortest_edge or a square height/width", path.display()),
            }
        };
        if let Some(s) = side("size")? {
            p.size = s;
        }
        p.crop = match side("crop_size")? {
            Some(c) => c,
            None => p.size,
        };
        if v.get("do_center_crop").and_then(Value::as_bool) == Some(false) && p.crop != p.size {
            bail!("{}: do_center_crop is false but size {} differs from crop_size {}", path.display(), p.size, p.crop);
        }
        let triple = |key: &str, into: &mut [f32; 3]| -> Result<()> {
            let Some(f) = v.get(key) else { return Ok(()) };
            let vals: Vec<f32> =
                serde_json::from_value(f.clone()).with_context(|| format!("{}: `{key}` = {f} is not a list of numbers", path.display()))?;
            *into = vals.try_into().map_err(|_| anyhow!("{}: `{key}` = {f} must have 3 values", path.display()))?;
            Ok(())
        };
        triple("image_mean", &mut p.mean)?;
        triple("image_std", &mut p.std)?;
        Ok(p)
    }
}

pub struct ClipModel {
    pub towers: Clip,
    pub tokenizer: ClipTokenizer,
    pub preprocess: ClipPreprocess,
    pub projection_dim: usize,
    /// Texts or images per forward pass: larger is faster until memory runs out.
    pub batch_size: usize,
}

impl ClipModel {
    /// Loads a transformers `CLIPModel` folder: `config.json`, `model.safetensors` (or its fp16 /
    /// sharded variants), the tokenizer files and `preprocessor_config.json` when present.
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        let config_path = dir.join("config.json");
        let mut config: ClipModelConfig = read_json(&config_path)?;
        config.text_config.check().with_context(|| format!("{}: unsupported text_config", config_path.display()))?;
        config.vision_config.check().with_context(|| format!("{}: unsupported vision_config", config_path.display()))?;
        let tokenizer = ClipTokenizer::from_dir(dir).with_context(|| format!("{}: cannot load the tokenizer", dir.display()))?;
        // Legacy OpenAI configs say eos_token_id 2; transformers then pools at the highest id,
        // which is the tokenizer's end-of-text token.
        if config.text_config.eos_token_id == 2 {
            config.text_config.eos_token_id = tokenizer.eos_id();
        }
        tokenizer.check_vocab_size(config.text_config.vocab_size, &dir.display().to_string())?;
        if !(1..=crate::models::config::MAX_DIM).contains(&config.projection_dim) {
            bail!(
                "{}: projection_dim {} is not between 1 and {}",
                config_path.display(),
                config.projection_dim,
                crate::models::config::MAX_DIM
            );
        }
        let w = Weights::open_dir(dir, "model", device)?;
        let vc = &config.vision_config;
        let preprocess_path = dir.join("preprocessor_config.json");
        let preprocess = if preprocess_path.is_file() {
            ClipPreprocess::load(&preprocess_path, vc.image_size)?
        } else {
            ClipPreprocess::openai(vc.image_size)
        };
        if preprocess.crop != vc.image_size {
            bail!("{}: crop_size {} differs from vision_config.image_size {}", preprocess_path.display(), preprocess.crop, vc.image_size);
        }
        Self::build(&w, &config, tokenizer, preprocess)
    }

    /// Builds the model from weights already opened (a file, or seeded random weights for
    /// benchmarks) and a parsed config.
    pub fn build(w: &Weights, config: &ClipModelConfig, tokenizer: ClipTokenizer, preprocess: ClipPreprocess) -> Result<Self> {
        let (tc, vc, proj) = (&config.text_config, &config.vision_config, config.projection_dim);
        Ok(Self { towers: Clip::load(w, tc, vc, proj)?, tokenizer, preprocess, projection_dim: proj, batch_size: DEFAULT_BATCH_SIZE })
    }

    pub fn device(&self) -> Device {
        self.towers.text.device()
    }

    /// The side of the square pixel-value images the vision tower takes.
    pub fn image_size(&self) -> usize {
        self.towers.vision.config.image_size
    }

    /// The tokens the text tower reads, BOS and EOS included.
    fn max_len(&self) -> usize {
        self.tokenizer.max_len().min(self.towers.text.config.max_position_embeddings)
    }

    /// What the text tower leaves out of `text`, as [`ClipTokenizer::truncation`] says it.
    pub fn truncation(&self, text: &str) -> Option<String> {
        self.tokenizer.truncation(text, self.max_len())
    }

    /// One unit-length embedding per text, in order.
    pub fn embed_texts(&self, texts: &[&str]) -> Vec<Vec<f32>> {
        let max_len = self.max_len();
        let mut out = Vec::with_capacity(texts.len());
        for chunk in texts.chunks(self.batch_size.max(1)) {
            let mut ids: Vec<Vec<u32>> = chunk.iter().map(|t| self.tokenizer.encode_padded(t, max_len)).collect();
            // Attention is causal, so padding after the longest text's EOS changes nothing: cut it.
            let eos = self.towers.text.config.eos_token_id;
            let used = ids.iter().map(|r| r.iter().position(|&t| t == eos).map_or(r.len(), |p| p + 1)).max().unwrap_or(max_len);
            ids.iter_mut().for_each(|r| r.truncate(used));
            out.extend(rows(self.towers.text_features(&ids)));
        }
        out
    }

    /// One unit-length embedding per image of `pixel_values` `[B, channels, size, size]`
    /// (already preprocessed with [`ClipModel::preprocess`]), in order.
    pub fn embed_images(&self, pixel_values: Tensor<4>) -> Result<Vec<Vec<f32>>> {
        let n = pixel_values.dims()[0];
        let step = self.batch_size.max(1);
        let mut out = Vec::with_capacity(n);
        for start in (0..n).step_by(step) {
            let batch = pixel_values.clone().narrow(0, start, step.min(n - start));
            out.extend(rows(self.towers.image_features(batch)?));
        }
        Ok(out)
    }

    /// Pixel values (CHW, `crop * crop * 3` floats) of one decoded image, as
    /// `CLIPImageProcessor` with this folder's settings makes them.
    pub fn pixel_values(&self, img: &RgbImage) -> Result<Vec<f32>> {
        let p = &self.preprocess;
        clip_preprocess(img, p.size as u32, p.crop as u32, p.mean, p.std)
    }

    /// One unit-length embedding per image file, in order. Files are decoded `batch_size` at a
    /// time, so memory stays bounded however many there are.
    pub fn embed_image_files(&self, paths: &[PathBuf]) -> Result<Vec<Vec<f32>>> {
        let mut out = Vec::with_capacity(paths.len());
        for chunk in paths.chunks(self.batch_size.max(1)) {
            let pixels = chunk
                .iter()
                .map(|p| self.pixel_values(&load_rgb(p)?).with_context(|| p.display().to_string()))
                .collect::<Result<Vec<_>>>()?;
            out.extend(self.embed_pixels(&pixels)?);
        }
        Ok(out)
    }

    /// [`ClipModel::embed_images`] on flat pixel values, `size * size * 3` channel-first floats
    /// per image: the seam for image files decoded and preprocessed elsewhere.
    pub fn embed_pixels(&self, images: &[Vec<f32>]) -> Result<Vec<Vec<f32>>> {
        let s = self.image_size();
        let c = self.towers.vision.config.num_channels;
        let mut out = Vec::with_capacity(images.len());
        for chunk in images.chunks(self.batch_size.max(1)) {
            let mut flat = Vec::with_capacity(chunk.len() * c * s * s);
            for (i, img) in chunk.iter().enumerate() {
                if img.len() != c * s * s {
                    bail!("image {} has {} pixel values, expected {c} x {s} x {s}", out.len() + i, img.len());
                }
                flat.extend_from_slice(img);
            }
            let t = Tensor::from_data(TensorData::new(flat, [chunk.len(), c, s, s]), &self.device());
            out.extend(self.embed_images(t)?);
        }
        Ok(out)
    }
}

/// The rows of `[B, D]` features, each scaled to unit length.
fn rows(features: Tensor<2>) -> Vec<Vec<f32>> {
    let [_, d] = features.dims();
    let values: Vec<f32> = features.into_data().convert::<f32>().try_into_vec().expect("f32 data after convert");
    values.chunks(d).map(normalise).collect()
}

/// `v / |v|`, as `CLIPModel` does; a zero vector stays zero (the metrics then reject it).
fn normalise(v: &[f32]) -> Vec<f32> {
    let norm = v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    if norm == 0.0 { v.to_vec() } else { v.iter().map(|x| (*x as f64 / norm) as f32).collect() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::safetensors::SafeTensorsFile;
    use std::path::PathBuf;

    fn fixtures() -> PathBuf {
        crate::fixtures::fixtures_dir()
    }

    fn model() -> ClipModel {
        ClipModel::load(&fixtures().join("tiny-clip"), &Device::flex()).unwrap()
    }

    fn reference(name: &str) -> (Vec<usize>, Vec<f32>) {
        SafeTensorsFile::open(&fixtures().join("reference.safetensors")).unwrap().f32(name).unwrap()
    }

    /// Max abs error relative to the reference's max magnitude.
    fn assert_close(name: &str, got: &[Vec<f32>], want: &[f32]) {
        let got: Vec<f32> = got.concat();
        assert_eq!(got.len(), want.len(), "{name}: length");
        let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
        let err = got.iter().zip(want).fold(0f32, |m, (a, b)| m.max((a - b).abs())) / scale;
        assert!(err <= 1e-4, "{name}: relative max error {err:e}");
        eprintln!("{name}: relative max error {err:e}");
    }

    #[test]
    fn image_embeddings_match_transformers() {
        let mut clip = model();
        let (shape, px) = reference("clip_pixel_values");
        let shape: [usize; 4] = shape.try_into().unwrap();
        let (_, want) = reference("clip_image_embeds");
        // Batch size 1 as well as a whole batch: batching must not change the result.
        for bs in [1, 8] {
            clip.batch_size = bs;
            let t = Tensor::from_data(TensorData::new(px.clone(), shape), &clip.device());
            assert_close("clip_image_embeds", &clip.embed_images(t).unwrap(), &want);
        }
        let per_image: Vec<Vec<f32>> = px.chunks(px.len() / 2).map(<[f32]>::to_vec).collect();
        assert_close("clip_image_embeds via embed_pixels", &clip.embed_pixels(&per_image).unwrap(), &want);
    }

    #[test]
    fn text_embeddings_match_transformers() {
        let mut clip = model();
        let probes: Value = read_json(&fixtures().join("tiny-clip/probes.json")).unwrap();
        let texts: Vec<&str> = probes["texts"].as_array().unwrap().iter().map(|t| t.as_str().unwrap()).collect();
        let (_, want) = reference("clip_text_embeds");
        for bs in [1, 8] {
            clip.batch_size = bs;
            let got = clip.embed_texts(&texts);
            assert_close("clip_text_embeds", &got, &want);
            let norm: f32 = got[0].iter().map(|x| x * x).sum::<f32>().sqrt();
            assert!((norm - 1.0).abs() < 1e-5, "embeddings are unit length, got {norm}");
        }
    }

    #[test]
    fn image_files_are_preprocessed_like_transformers() {
        let clip = model();
        let dir = fixtures().join("tiny-clip");
        let files = [dir.join("probe-0.png"), dir.join("probe-1.png")];
        let (_, want) = reference("clip_pixel_values");
        let got: Vec<f32> = files.iter().flat_map(|f| clip.pixel_values(&load_rgb(f).unwrap()).unwrap()).collect();
        assert_eq!(got.len(), want.len());
        // A different bicubic implementation than PIL's: the fixtures' README allows 2e-2.
        let mean_abs = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).sum::<f32>() / got.len() as f32;
        assert!(mean_abs <= 2e-2, "clip_pixel_values from files: mean abs error {mean_abs}");
        eprintln!("clip_pixel_values from files: mean abs error {mean_abs:e}");
        let from_files = clip.embed_image_files(&files).unwrap();
        let per_image: Vec<Vec<f32>> = got.chunks(got.len() / 2).map(<[f32]>::to_vec).collect();
        assert_eq!(from_files, clip.embed_pixels(&per_image).unwrap());
    }

    #[test]
    fn preprocessor_config_is_read() {
        let clip = model();
        // The fixture's file spells out OpenAI's statistics.
        let want = ClipPreprocess { size: 64, crop: 64, mean: OPENAI_MEAN, std: OPENAI_STD };
        assert_eq!(clip.preprocess, want);
    }

    #[test]
    fn wrong_image_size_is_an_error() {
        let clip = model();
        let t = Tensor::<4>::zeros([1, 3, 32, 32], &clip.device());
        let err = clip.embed_images(t).unwrap_err().to_string();
        assert!(err.contains("[1, 3, 32, 32]") && err.contains("64"), "{err}");
    }
}
