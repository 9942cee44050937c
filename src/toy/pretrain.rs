//! Pretraining of the toy world's base models, from seeded random weights to the folders the
//! rest of the crate loads:
//!
//! 1. a tiny CLIP (text and vision transformers, transformers `CLIPModel` layout), trained with
//!    a symmetric InfoNCE loss and a learnable temperature on world images and their captions
//!    (full and partial captions; every caption in the batch that truly describes an image is a
//!    positive for it);
//! 2. the Stable Diffusion text encoder: CLIP's text tower, frozen, as a `CLIPTextModel` (as SD
//!    1.x reuses OpenAI CLIP's);
//! 3. a tiny `AutoencoderKL` (3 levels: latents are a quarter of the image side, 4 channels),
//!    trained for reconstruction (mean squared plus mean absolute error) with a small KL term on
//!    world images and on random colourful patterned
//!    shapes (so it also reproduces looks outside the world, such as the personal object);
//!    `scaling_factor` is set to 1 / std of its latents;
//! 4. a tiny `UNet2DConditionModel` with cross-attention, trained as a DDPM epsilon-predictor
//!    under SD 1.5's noise schedule on latents of world images with captions (10 % empty, for
//!    classifier-free guidance), min-SNR-5 weighting, an exponential moving average kept.
//!
//! Every parameter is trained through its model's `visit` (see `params`). Each model is rounded
//! to half precision before the next stage uses it, and saved in half precision, so later stages
//! see exactly the weights that ship. Everything is a function of the seed.
use super::architecture::{SCHEDULER_CONFIG, model_index_json, text_config_json, unet_config_json, vae_config_json, vision_config_json};
use super::clip::TrainableClip;
use super::folders::{TOKENIZER_FILES, copy_dir, copy_tokenizer, write_clip, write_json, write_unet};
use super::params::{ModelParams, StepOptions, round_to_f16, torch_tensors, write_safetensors};
use super::world::{self, Background, CaptionStyle, Scene, World};
use crate::evaluation::clip::{OPENAI_MEAN, OPENAI_STD};
use crate::io::image::{RgbImage, rgb_to_tensor};
use crate::io::safetensors::StoreAs;
use crate::models::clip_text::ClipTextModel;
use crate::models::clip_vision::ClipVisionConfig;
use crate::models::config::{ClipTextConfig, UNetConfig, VaeConfig};
use crate::models::tokenizer::ClipTokenizer;
use crate::models::unet::UNet;
use crate::models::vae::Vae;
use crate::models::weights::Weights;
use crate::rng::Rng;
use crate::schedulers::{NoiseSchedule, PredictionType, SchedulerConfig};
use crate::training::adamw::AdamWConfig;
use crate::training::params::Params;
use crate::training::schedule::cosine_to_floor;
use anyhow::{Context, Result, bail};
use burn::tensor::activation::log_softmax;
use burn::tensor::{Device, Tensor, TensorData};
use serde::Serialize;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Where the committed toy models live: `assets/toy` of this crate's source tree (`sd/`, the
/// Stable Diffusion folder without its tokenizer, and `clip/`, the CLIP folder). They are
/// embedded in the binary; `toy::assets::materialise` writes loadable folders (it copies the one
/// committed tokenizer, `clip/tokenizer*.json`, into `sd/tokenizer/`).
pub fn default_assets_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("assets/toy")
}

/// Length, batch and peak learning rate of one training stage.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct StageOptions {
    pub steps: usize,
    pub batch: usize,
    pub lr: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct PretrainOptions {
    pub seed: u64,
    pub clip: StageOptions,
    pub vae: StageOptions,
    pub unet: StageOptions,
    /// World images encoded once for the UNet stage.
    pub unet_pool: usize,
    /// Decay of the UNet weights' moving average (the saved weights).
    pub ema_decay: f64,
    /// Weight of the VAE's KL term (per-element means of both terms).
    pub vae_kl: f64,
    /// A folder with `tokenizer.json` and `tokenizer_config.json` (the CLIP BPE); `None`: the
    /// committed `assets/toy/clip`, else the fixtures' `tiny-clip`.
    #[serde(skip)]
    pub tokenizer_dir: Option<PathBuf>,
    /// Take the CLIP (and so the text encoder) from this earlier output folder instead of
    /// training it again, for experiments with later stages. The reused weights are exactly
    /// the saved ones (reinstalling them as training leaves them changes nothing), yet the later
    /// stages then differ from a full run's in the last bits (a reused VAE's reconstructions by
    /// about 1e-6 relative): floating-point results here depend on what the process computed
    /// before, which we did not pin down further. Full runs reproduce each other's bytes.
    #[serde(skip)]
    pub reuse_clip: Option<PathBuf>,
    /// The same for the VAE.
    #[serde(skip)]
    pub reuse_vae: Option<PathBuf>,
    /// Every this many UNet steps, write the moving-average UNet to `snapshots/unet-<step>/`
    /// (0: never).
    pub snapshot_every: usize,
    /// Check prompt following and CLIP retrieval on the saved folders and put the numbers in
    /// `pretrain.json`.
    pub evaluate: bool,
    /// Progress lines on stderr.
    pub verbose: bool,
}

impl Default for PretrainOptions {
    /// The settings that made the committed weights.
    fn default() -> Self {
        Self {
            seed: 0,
            clip: StageOptions { steps: 1200, batch: 64, lr: 2e-3 },
            vae: StageOptions { steps: 2000, batch: 16, lr: 2e-3 },
            unet: StageOptions { steps: 4000, batch: 32, lr: 1e-3 },
            unet_pool: 6144,
            ema_decay: 0.998,
            vae_kl: 2e-5,
            tokenizer_dir: None,
            reuse_clip: None,
            reuse_vae: None,
            snapshot_every: 0,
            evaluate: true,
            verbose: true,
        }
    }
}

impl PretrainOptions {
    /// All stage lengths multiplied by `f` (at least one step each): `--steps` of the CLI.
    pub fn scaled(mut self, f: f64) -> Self {
        for s in [&mut self.clip, &mut self.vae, &mut self.unet] {
            s.steps = ((s.steps as f64 * f).round() as usize).max(1);
        }
        self
    }

    /// A few steps of everything with small batches: a smoke run of the whole path.
    pub fn smoke() -> Self {
        Self {
            clip: StageOptions { steps: 3, batch: 8, lr: 1e-3 },
            vae: StageOptions { steps: 3, batch: 4, lr: 1e-3 },
            unet: StageOptions { steps: 3, batch: 4, lr: 1e-3 },
            unet_pool: 16,
            evaluate: false,
            verbose: false,
            ..Self::default()
        }
    }
}

fn parse<T: serde::de::DeserializeOwned>(v: Value, what: &str) -> Result<T> {
    serde_json::from_value(v).with_context(|| format!("the toy {what} configuration"))
}

fn tokenizer_source(opts: &PretrainOptions) -> Result<PathBuf> {
    let candidates = match &opts.tokenizer_dir {
        Some(d) => vec![d.clone()],
        None => vec![default_assets_dir().join("clip"), crate::fixtures::fixture("tiny-clip")],
    };
    for c in &candidates {
        if TOKENIZER_FILES.iter().all(|f| c.join(f).is_file()) {
            return Ok(c.clone());
        }
    }
    bail!(
        "no CLIP tokenizer found (looked for {} in {}); pass a folder holding them",
        TOKENIZER_FILES.join(" and "),
        candidates.iter().map(|c| c.display().to_string()).collect::<Vec<_>>().join(", ")
    )
}

// ------------------------------------------------------------------------------------------------
// Helpers

/// CLIP pixel values (CHW, OpenAI statistics) of a 32 x 32 image: what `CLIPImageProcessor`
/// gives at this size (the resize to the same size is the identity).
pub fn clip_pixels(img: &RgbImage) -> Vec<f32> {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let mut out = vec![0f32; 3 * w * h];
    for (i, p) in img.as_raw().chunks_exact(3).enumerate() {
        for c in 0..3 {
            out[c * w * h + i] = (p[c] as f32 / 255.0 - OPENAI_MEAN[c]) / OPENAI_STD[c];
        }
    }
    out
}

fn scalar(t: Tensor<1>) -> f64 {
    t.into_data().convert::<f64>().as_slice::<f64>().expect("scalar")[0]
}

fn host<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().convert::<f32>().as_slice::<f32>().expect("f32 data").to_vec()
}

/// The caption styles of training, each with the upper end of its share of [0, 1): full 35 %,
/// no size 15 %, no background 15 %, colour and shape 20 %, shape and background 8 %, shape
/// alone 7 %. The colourless class captions ("a circle on a gray background") give the base
/// model the class knowledge the demo measures: without them a class prompt is out of the
/// training distribution and the model draws one colour for it, leaving nothing for an adapter
/// to preserve or destroy.
const TRAINING_STYLES: [(f64, CaptionStyle); 6] = [
    (0.35, CaptionStyle::Full),
    (0.50, CaptionStyle::NoSize),
    (0.65, CaptionStyle::NoBackground),
    (0.85, CaptionStyle::ColourShape),
    (0.93, CaptionStyle::ShapeBackground),
    (1.0, CaptionStyle::Shape),
];

/// A caption style drawn with the shares of [`TRAINING_STYLES`].
fn random_style(rng: &mut Rng) -> CaptionStyle {
    let u = rng.uniform();
    TRAINING_STYLES.iter().find(|(end, _)| u < *end).map_or(CaptionStyle::Shape, |&(_, st)| st)
}

/// Running mean of the last losses, for progress lines.
struct Meter {
    sum: f64,
    n: usize,
    start: Instant,
    stage: &'static str,
    total: usize,
    verbose: bool,
}

impl Meter {
    fn new(stage: &'static str, total: usize, verbose: bool) -> Self {
        Self { sum: 0.0, n: 0, start: Instant::now(), stage, total, verbose }
    }

    fn add(&mut self, step: usize, loss: f64, extra: impl FnOnce() -> String) {
        self.sum += loss;
        self.n += 1;
        let every = (self.total / 20).clamp(1, 100);
        if self.verbose && ((step + 1).is_multiple_of(every) || step + 1 == self.total) {
            let el = self.start.elapsed().as_secs_f64();
            let eta = el / (step + 1) as f64 * (self.total - step - 1) as f64;
            eprintln!(
                "[toy pretrain] {} step {}/{}: loss {:.5} {} ({:.2} s/step, {:.0} s elapsed, ~{:.0} s left)",
                self.stage,
                step + 1,
                self.total,
                self.sum / self.n as f64,
                extra(),
                el / (step + 1) as f64,
                el,
                eta
            );
            self.sum = 0.0;
            self.n = 0;
        }
    }
}

/// What `pretrain.json` records.
#[derive(Serialize, Default)]
pub struct PretrainReport {
    pub seed: u64,
    /// Stages taken from an earlier run (`reuse_clip`, `reuse_vae`) rather than trained here.
    pub reused: Vec<String>,
    pub options: Option<PretrainOptionsRecord>,
    pub seconds: BTreeMap<String, f64>,
    pub final_loss: BTreeMap<String, f64>,
    pub parameters: BTreeMap<String, usize>,
    pub vae_scaling_factor: f64,
    pub vae_reconstruction_mae: BTreeMap<String, f64>,
    pub evaluation: Option<Value>,
}

#[derive(Serialize)]
pub struct PretrainOptionsRecord {
    pub clip: StageOptions,
    pub vae: StageOptions,
    pub unet: StageOptions,
    pub unet_pool: usize,
    pub ema_decay: f64,
    pub vae_kl: f64,
}

// ------------------------------------------------------------------------------------------------
// The stages

/// Trains the toy CLIP; returns it (half-precision-rounded) and its final loss.
fn train_clip(opts: &PretrainOptions, tok: &ClipTokenizer, device: &Device) -> Result<(TrainableClip, ModelParams, f64)> {
    let tc: ClipTextConfig = parse(text_config_json(), "text")?;
    let vc: ClipVisionConfig = parse(vision_config_json(), "vision")?;
    let w = Weights::random(opts.seed ^ 0xc11b, device);
    let mut clip = TrainableClip::load(&w, &tc, &vc, 32)?;
    let mut hp = ModelParams::collect(&mut clip, AdamWConfig { weight_decay: 0.05, ..Default::default() });
    let scale_idx = hp.params.names.iter().position(|n| n == "logit_scale").expect("logit_scale is visited");
    let mut world = World::new(opts.seed ^ 0xc11b_da7a);
    let mut rng = Rng::new(opts.seed ^ 0xc11b_5717);
    let s = opts.clip;
    let mut meter = Meter::new("clip", s.steps, opts.verbose);
    let mut last = f64::NAN;
    for step in 0..s.steps {
        let samples = world.samples(s.batch);
        let styles: Vec<CaptionStyle> = (0..s.batch).map(|_| random_style(&mut rng)).collect();
        let captions: Vec<String> = samples.iter().zip(&styles).map(|(x, st)| x.scene.caption(*st)).collect();
        let mut ids: Vec<Vec<u32>> = captions.iter().map(|c| tok.encode_padded(c, 77)).collect();
        // Attention is causal: what follows the longest caption's end changes nothing.
        let used = ids.iter().map(|r| r.iter().position(|&t| t == tok.eos_id()).map_or(r.len(), |p| p + 1)).max().unwrap();
        ids.iter_mut().for_each(|r| r.truncate(used));
        let px: Vec<f32> = samples.iter().flat_map(|x| clip_pixels(&x.image)).collect();
        let px = Tensor::<4>::from_data(TensorData::new(px, [s.batch, 3, world::SIZE, world::SIZE]), device);
        // targets[i][j]: caption j truly describes image i.
        let mut target = vec![0f32; s.batch * s.batch];
        for i in 0..s.batch {
            for j in 0..s.batch {
                target[i * s.batch + j] = samples[j].scene.describes(styles[j], &samples[i].scene) as u8 as f32;
            }
        }
        let row_sums: Vec<f32> = (0..s.batch).map(|i| target[i * s.batch..(i + 1) * s.batch].iter().sum()).collect();
        let col_sums: Vec<f32> = (0..s.batch).map(|j| (0..s.batch).map(|i| target[i * s.batch + j]).sum()).collect();
        let t_rows: Vec<f32> = target.iter().enumerate().map(|(k, v)| v / row_sums[k / s.batch]).collect();
        let t_cols: Vec<f32> = target.iter().enumerate().map(|(k, v)| v / col_sums[k % s.batch]).collect();
        let t_rows = Tensor::<2>::from_data(TensorData::new(t_rows, [s.batch, s.batch]), device);
        let t_cols = Tensor::<2>::from_data(TensorData::new(t_cols, [s.batch, s.batch]), device);

        let leaves = hp.install(&mut clip, true);
        let img = clip.image_embeddings(px)?;
        let txt = clip.text_embeddings(&ids);
        let scale = clip.logit_scale.value.clone().exp().reshape([1, 1]);
        let logits = img.matmul(txt.transpose()) * scale;
        let i2t = (log_softmax(logits.clone(), 1) * t_rows).sum().div_scalar(s.batch as f32);
        let t2i = (log_softmax(logits.clone(), 0) * t_cols).sum().div_scalar(s.batch as f32);
        let loss = (i2t + t2i).mul_scalar(-0.5);
        let lv = scalar(loss.clone());
        // Top-1 image-to-text accuracy of this batch (the best caption is a true one).
        let lg = host(logits.clone());
        let grads = loss.backward();
        let keep = hp.scalar(scale_idx);
        let lr = cosine_to_floor(step, s.steps, s.lr, s.steps / 20, 0.05);
        hp.update(&leaves, &grads, StepOptions { lr, clip_norm: Some(1.0) })?;
        // No weight decay on the temperature (undo it), and a logit scale of at most 100, as CLIP.
        let undecayed = hp.scalar(scale_idx) + keep * (lr * hp.opt.config.weight_decay) as f32;
        hp.set_scalar(scale_idx, undecayed.min(100f32.ln()));
        last = lv;
        meter.add(step, lv, || {
            let acc = (0..s.batch)
                .filter(|&i| {
                    let row = &lg[i * s.batch..(i + 1) * s.batch];
                    let best = (0..s.batch).max_by(|&a, &b| row[a].total_cmp(&row[b])).unwrap();
                    samples[best].scene.describes(styles[best], &samples[i].scene)
                })
                .count() as f64
                / s.batch as f64;
            format!("acc {acc:.2} scale {:.1}", hp.scalar(scale_idx).exp())
        });
    }
    round_to_f16(&mut hp.params);
    hp.install(&mut clip, false);
    Ok((clip, hp, last))
}

/// Trains the VAE; returns it (half-precision-rounded) and its final loss.
fn train_vae(opts: &PretrainOptions, device: &Device) -> Result<(Vae, ModelParams, f64)> {
    let cfg: VaeConfig = parse(vae_config_json(1.0), "VAE")?;
    let mut vae = Vae::load(&Weights::random(opts.seed ^ 0x0ae0, device), &cfg)?;
    let mut hp = ModelParams::collect(&mut vae, AdamWConfig::default());
    let mut world = World::new(opts.seed ^ 0x0ae0_da7a);
    let mut rng = Rng::new(opts.seed ^ 0x0ae0_5717);
    let s = opts.vae;
    let mut meter = Meter::new("vae", s.steps, opts.verbose);
    let mut last = f64::NAN;
    let lat = world::SIZE / cfg.downsampling();
    for step in 0..s.steps {
        // Half world images, half random patterned shapes in random colours.
        let imgs: Vec<RgbImage> =
            (0..s.batch).map(|i| if i % 2 == 0 { world.sample().image } else { world::free_image(&mut rng) }).collect();
        let x = rgb_to_tensor(&imgs, device);
        let eps = rng.normal_tensor([s.batch, cfg.latent_channels, lat, lat], device);
        let leaves = hp.install(&mut vae, true);
        let (mean, logvar) = vae.encode(x.clone());
        let z = mean.clone() + logvar.clone().mul_scalar(0.5).exp() * eps;
        let rec = vae.decode(z);
        let diff = rec - x;
        let mse = diff.clone().square().mean();
        let l1 = diff.abs().mean();
        let kl = (mean.square() + logvar.clone().exp() - logvar).sub_scalar(1.0).mean().mul_scalar(0.5);
        let loss = mse.clone() + l1 + kl.mul_scalar(opts.vae_kl as f32);
        let lv = scalar(mse);
        let grads = loss.backward();
        hp.update(&leaves, &grads, StepOptions { lr: cosine_to_floor(step, s.steps, s.lr, s.steps / 20, 0.05), clip_norm: Some(1.0) })?;
        last = lv;
        meter.add(step, lv, String::new);
    }
    round_to_f16(&mut hp.params);
    hp.install(&mut vae, false);
    Ok((vae, hp, last))
}

/// Latent statistics of encoded images: `(mean, logvar)` per image, flattened.
fn encode_pool(vae: &Vae, imgs: &[RgbImage], device: &Device) -> (Vec<f32>, Vec<f32>) {
    let (mut means, mut logvars) = (Vec::new(), Vec::new());
    for chunk in imgs.chunks(64) {
        let (m, l) = vae.encode(rgb_to_tensor(chunk, device));
        means.extend(host(m));
        logvars.extend(host(l));
    }
    (means, logvars)
}

/// Mean absolute error (0..255 scale) of VAE round trips (mean latents) of images.
fn reconstruction_mae(vae: &Vae, imgs: &[RgbImage], device: &Device) -> f64 {
    let (m, _) = vae.encode(rgb_to_tensor(imgs, device));
    let rec = crate::io::image::tensor_to_rgb8(vae.decode(m));
    let mut sum = 0f64;
    let mut n = 0usize;
    for (r, img) in rec.iter().zip(imgs) {
        for (a, b) in r.iter().zip(img.as_raw()) {
            sum += (*a as f64 - *b as f64).abs();
            n += 1;
        }
    }
    sum / n as f64
}

/// Text encoder hidden states `[77, hidden]` of each caption, as the pipeline computes them.
fn encode_captions(te: &ClipTextModel, tok: &ClipTokenizer, captions: &[String]) -> HashMap<String, Vec<f32>> {
    let mut out = HashMap::new();
    for chunk in captions.chunks(64) {
        let ids: Vec<Vec<u32>> = chunk.iter().map(|c| tok.encode_padded(c, 77)).collect();
        let h = host(te.forward(&ids, 1));
        let per = h.len() / chunk.len();
        for (c, v) in chunk.iter().zip(h.chunks(per)) {
            out.insert(c.clone(), v.to_vec());
        }
    }
    out
}

/// The UNet's training pool: world scenes, their VAE latent distributions (flat, one image after
/// another), the VAE's scaling factor and the text encodings of every caption.
struct UnetPool<'a> {
    scenes: &'a [Scene],
    means: &'a [f32],
    logvars: &'a [f32],
    scaling: f32,
    contexts: &'a HashMap<String, Vec<f32>>,
}

/// Trains the UNet on the pool of encoded world images; returns it (moving average,
/// half-precision-rounded) and its final loss.
fn train_unet(opts: &PretrainOptions, out_dir: &Path, pool: &UnetPool, device: &Device) -> Result<(UNet, ModelParams, f64)> {
    let UnetPool { scenes, means, logvars, scaling, contexts } = *pool;
    let cfg: UNetConfig = parse(unet_config_json(), "UNet")?;
    let mut unet = UNet::load(&Weights::random(opts.seed ^ 0x0e7, device), &cfg)?;
    let mut hp = ModelParams::collect(&mut unet, AdamWConfig::default());
    let mut ema = hp.params.values.clone();
    let sched: SchedulerConfig = serde_json::from_str(SCHEDULER_CONFIG)?;
    let noise = NoiseSchedule::new(&sched);
    let mut rng = Rng::new(opts.seed ^ 0x0e7_5717);
    let s = opts.unet;
    // Latents as the UNet takes them: `in_channels` x `sample_size`², one per pool image.
    let (c, lat) = (cfg.in_channels, cfg.sample_size.context("the toy UNet config names its sample_size")?);
    let per = c * lat * lat;
    anyhow::ensure!(means.len() == per * scenes.len(), "{} latent values for {} images of {c} x {lat} x {lat}", means.len(), scenes.len());
    let ctx_len = contexts.values().next().map(Vec::len).unwrap_or(0);
    let mut meter = Meter::new("unet", s.steps, opts.verbose);
    let mut last = f64::NAN;
    for step in 0..s.steps {
        let idx: Vec<usize> = (0..s.batch).map(|_| rng.below(scenes.len())).collect();
        let mut z = Vec::with_capacity(s.batch * per);
        for &i in &idx {
            for k in 0..per {
                let (m, lv) = (means[i * per + k], logvars[i * per + k]);
                z.push((m + (0.5 * lv).exp() * rng.normal()) * scaling);
            }
        }
        let mut ctx = Vec::with_capacity(s.batch * ctx_len);
        for &i in &idx {
            let caption = if rng.uniform() < 0.1 { String::new() } else { scenes[i].caption(random_style(&mut rng)) };
            ctx.extend_from_slice(contexts.get(&caption).with_context(|| format!("no text encoding for `{caption}`"))?);
        }
        let t: Vec<usize> = (0..s.batch).map(|_| rng.below(noise.num_train_timesteps())).collect();
        let x0 = Tensor::<4>::from_data(TensorData::new(z, [s.batch, c, lat, lat]), device);
        let eps = rng.normal_tensor([s.batch, c, lat, lat], device);
        let zt = noise.add_noise(x0, eps.clone(), &t);
        let ctx = Tensor::<3>::from_data(TensorData::new(ctx, [s.batch, 77, ctx_len / 77]), device);
        // min-SNR-5 weighting of the epsilon loss.
        let w: Vec<f32> = t.iter().map(|&t| noise.min_snr_weight(t, 5.0, PredictionType::Epsilon)).collect();
        let w = Tensor::<1>::from_data(TensorData::new(w, [s.batch]), device);
        let ts: Vec<f64> = t.iter().map(|&t| t as f64).collect();

        let leaves = hp.install(&mut unet, true);
        let pred = unet.forward(zt, &ts, &ctx);
        let per_sample = (pred - eps).square().reshape([s.batch as i32, -1]).mean_dim(1).reshape([s.batch]);
        let loss = (per_sample * w).mean();
        let lv = scalar(loss.clone());
        let grads = loss.backward();
        hp.update(&leaves, &grads, StepOptions { lr: cosine_to_floor(step, s.steps, s.lr, s.steps / 20, 0.05), clip_norm: Some(1.0) })?;
        let d = opts.ema_decay.min((1.0 + step as f64) / (10.0 + step as f64)) as f32;
        for (e, v) in ema.iter_mut().zip(&hp.params.values) {
            *e = e.clone().mul_scalar(d) + v.clone().mul_scalar(1.0 - d);
        }
        last = lv;
        meter.add(step, lv, String::new);
        if opts.snapshot_every > 0 && (step + 1) % opts.snapshot_every == 0 && step + 1 < s.steps {
            let dir = out_dir.join(format!("snapshots/unet-{}", step + 1));
            std::fs::create_dir_all(&dir)?;
            let mut snap = Params { names: hp.params.names.clone(), shapes: hp.params.shapes.clone(), values: ema.clone() };
            round_to_f16(&mut snap);
            write_unet(&dir, &snap)?;
        }
    }
    hp.params.values = ema;
    round_to_f16(&mut hp.params);
    hp.install(&mut unet, false);
    Ok((unet, hp, last))
}

/// Trains every toy base model from seeded random weights and writes `out_dir/sd` (a diffusers
/// `StableDiffusionPipeline` folder), `out_dir/clip` (a transformers `CLIPModel` folder) and
/// `out_dir/pretrain.json` (options, timings, losses and, with `evaluate`, quality numbers).
pub fn pretrain(out_dir: &Path, opts: &PretrainOptions) -> Result<PretrainReport> {
    let device = Device::flex();
    let started = Instant::now();
    let tok_dir = tokenizer_source(opts)?;
    let tok = ClipTokenizer::from_dir(&tok_dir)?;
    let (sd_dir, clip_dir) = (out_dir.join("sd"), out_dir.join("clip"));
    let mut report = PretrainReport {
        seed: opts.seed,
        options: Some(PretrainOptionsRecord {
            clip: opts.clip,
            vae: opts.vae,
            unet: opts.unet,
            unet_pool: opts.unet_pool,
            ema_decay: opts.ema_decay,
            vae_kl: opts.vae_kl,
        }),
        ..Default::default()
    };

    // 1. CLIP.
    let t = Instant::now();
    let (clip, clip_hp) = match &opts.reuse_clip {
        Some(from) => {
            let tc: ClipTextConfig = parse(text_config_json(), "text")?;
            let vc: ClipVisionConfig = parse(vision_config_json(), "vision")?;
            let w = Weights::open_dir(&from.join("clip"), "model", &device)?;
            let mut clip = TrainableClip::load(&w, &tc, &vc, 32)?;
            let hp = ModelParams::collect(&mut clip, AdamWConfig::default());
            if from.join("clip") != clip_dir {
                copy_dir(&from.join("clip"), &clip_dir)?;
            }
            report.reused.push("clip".into());
            (clip, hp)
        }
        None => {
            let (clip, hp, loss) = train_clip(opts, &tok, &device)?;
            write_clip(&clip_dir, &hp, &tok_dir)?;
            report.final_loss.insert("clip".into(), loss);
            (clip, hp)
        }
    };
    report.seconds.insert("clip".into(), t.elapsed().as_secs_f64());
    report.parameters.insert("clip".into(), clip_hp.count());

    // 2. The text encoder: CLIP's text tower, without the `text_model.` prefix (as
    // `CLIPTextModel.save_pretrained` writes it).
    let te_dir = sd_dir.join("text_encoder");
    std::fs::create_dir_all(&te_dir)?;
    let te_tensors = torch_tensors(&clip_hp.params, |n| n.strip_prefix("text_model.").map(str::to_string));
    report.parameters.insert("text_encoder".into(), te_tensors.values().map(|t| t.data.len()).sum());
    write_safetensors(&te_dir.join("model.safetensors"), &te_tensors, StoreAs::F16)?;
    write_json(&te_dir.join("config.json"), &text_config_json())?;
    let tok_out = sd_dir.join("tokenizer");
    std::fs::create_dir_all(&tok_out)?;
    copy_tokenizer(&tok_dir, &tok_out)?;

    // 3. VAE.
    let t = Instant::now();
    let (vae, vae_hp) = match &opts.reuse_vae {
        Some(from) => {
            let cfg: VaeConfig = parse(vae_config_json(1.0), "VAE")?;
            let mut vae = Vae::load(&Weights::open_dir(&from.join("sd/vae"), "diffusion_pytorch_model", &device)?, &cfg)?;
            let hp = ModelParams::collect(&mut vae, AdamWConfig::default());
            report.reused.push("vae".into());
            (vae, hp)
        }
        None => {
            let (vae, hp, loss) = train_vae(opts, &device)?;
            report.final_loss.insert("vae".into(), loss);
            (vae, hp)
        }
    };
    report.parameters.insert("vae".into(), vae_hp.count());
    let mut pool_world = World::new(opts.seed ^ 0x0e7_da7a);
    let pool = pool_world.samples(opts.unet_pool);
    let pool_imgs: Vec<RgbImage> = pool.iter().map(|s| s.image.clone()).collect();
    let (means, logvars) = encode_pool(&vae, &pool_imgs, &device);
    // The scaling factor: 1 / std of sampled latents over the pool.
    let mut zrng = Rng::new(opts.seed ^ 0x5ca1e);
    let zs: Vec<f64> = means.iter().zip(&logvars).map(|(m, l)| (*m + (0.5 * *l).exp() * zrng.normal()) as f64).collect();
    let mu = zs.iter().sum::<f64>() / zs.len() as f64;
    let std = (zs.iter().map(|z| (z - mu).powi(2)).sum::<f64>() / zs.len() as f64).sqrt();
    // Rounded to 5 significant digits, as a person would write it in a config.
    let scaling = format!("{:.5e}", 1.0 / std.max(1e-6)).parse::<f64>()?;
    report.vae_scaling_factor = scaling;
    let vae_dir = sd_dir.join("vae");
    std::fs::create_dir_all(&vae_dir)?;
    write_safetensors(
        &vae_dir.join("diffusion_pytorch_model.safetensors"),
        &torch_tensors(&vae_hp.params, |n| Some(n.to_string())),
        StoreAs::F16,
    )?;
    write_json(&vae_dir.join("config.json"), &vae_config_json(scaling))?;
    let check = |imgs: Vec<RgbImage>| reconstruction_mae(&vae, &imgs, &device);
    report
        .vae_reconstruction_mae
        .insert("world".into(), check(World::new(opts.seed ^ 0x7e57).samples(32).into_iter().map(|s| s.image).collect()));
    report.vae_reconstruction_mae.insert(
        "personal".into(),
        check(world::personal_objects(opts.seed ^ 0x7e57, 8, "sks", &[Background::Gray]).into_iter().map(|p| p.0).collect()),
    );
    report.seconds.insert("vae".into(), t.elapsed().as_secs_f64());

    // 4. UNet.
    let t = Instant::now();
    let mut captions: Vec<String> = vec![String::new()];
    for s in &pool {
        for (_, st) in TRAINING_STYLES {
            captions.push(s.scene.caption(st));
        }
    }
    captions.sort();
    captions.dedup();
    let contexts = encode_captions(&clip.towers.text, &tok, &captions);
    let scenes: Vec<Scene> = pool.into_iter().map(|s| s.scene).collect();
    let (_unet, unet_hp, unet_loss) = train_unet(
        opts,
        out_dir,
        &UnetPool { scenes: &scenes, means: &means, logvars: &logvars, scaling: scaling as f32, contexts: &contexts },
        &device,
    )?;
    report.final_loss.insert("unet".into(), unet_loss);
    report.parameters.insert("unet".into(), unet_hp.count());
    write_unet(&sd_dir.join("unet"), &unet_hp.params)?;
    report.seconds.insert("unet".into(), t.elapsed().as_secs_f64());

    // 5. The pipeline folder.
    let sched_dir = sd_dir.join("scheduler");
    std::fs::create_dir_all(&sched_dir)?;
    crate::io::atomic::write(&sched_dir.join("scheduler_config.json"), SCHEDULER_CONFIG.as_bytes())?;
    write_json(&sd_dir.join("model_index.json"), &model_index_json())?;
    report.seconds.insert("total_training".into(), started.elapsed().as_secs_f64());

    if opts.evaluate {
        let t = Instant::now();
        report.evaluation = Some(super::eval::evaluate_base(&sd_dir, &clip_dir, opts.seed, opts.verbose)?);
        report.seconds.insert("evaluation".into(), t.elapsed().as_secs_f64());
    }
    write_json(&out_dir.join("pretrain.json"), &serde_json::to_value(&report)?)?;
    if opts.verbose {
        eprintln!("[toy pretrain] wrote {} and {} in {:.0} s", sd_dir.display(), clip_dir.display(), started.elapsed().as_secs_f64());
    }
    Ok(report)
}
