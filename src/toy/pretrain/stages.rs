//! The three trained stages (CLIP, VAE, UNet) and what they share: CLIP pixels, caption styles,
//! progress lines.
use super::options::{PretrainOptions, parse};
use crate::evaluation::clip::{OPENAI_MEAN, OPENAI_STD};
use crate::io::image::{RgbImage, rgb_to_tensor};
use crate::models::clip_text::ClipTextModel;
use crate::models::clip_vision::ClipVisionConfig;
use crate::models::config::{ClipTextConfig, UNetConfig, VaeConfig};
use crate::models::tokenizer::ClipTokenizer;
use crate::models::unet::UNet;
use crate::models::vae::Vae;
use crate::models::weights::Weights;
use crate::rng::Rng;
use crate::schedulers::{NoiseSchedule, PredictionType, SchedulerConfig};
use crate::toy::architecture::{SCHEDULER_CONFIG, text_config_json, unet_config_json, vae_config_json, vision_config_json};
use crate::toy::clip::TrainableClip;
use crate::toy::folders::write_unet;
use crate::toy::params::{ModelParams, StepOptions, round_to_f16};
use crate::toy::world::{self, CaptionStyle, Scene, World};
use crate::training::adamw::AdamWConfig;
use crate::training::params::Params;
use crate::training::schedule::cosine_to_floor;
use anyhow::{Context, Result};
use burn::tensor::activation::log_softmax;
use burn::tensor::{Device, Tensor, TensorData};
use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

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
pub(super) const TRAINING_STYLES: [(f64, CaptionStyle); 6] = [
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

/// Trains the toy CLIP; returns it (half-precision-rounded) and its final loss.
pub(super) fn train_clip(opts: &PretrainOptions, tok: &ClipTokenizer, device: &Device) -> Result<(TrainableClip, ModelParams, f64)> {
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
pub(super) fn train_vae(opts: &PretrainOptions, device: &Device) -> Result<(Vae, ModelParams, f64)> {
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
pub(super) fn encode_pool(vae: &Vae, imgs: &[RgbImage], device: &Device) -> (Vec<f32>, Vec<f32>) {
    let (mut means, mut logvars) = (Vec::new(), Vec::new());
    for chunk in imgs.chunks(64) {
        let (m, l) = vae.encode(rgb_to_tensor(chunk, device));
        means.extend(host(m));
        logvars.extend(host(l));
    }
    (means, logvars)
}

/// Mean absolute error (0..255 scale) of VAE round trips (mean latents) of images.
pub(super) fn reconstruction_mae(vae: &Vae, imgs: &[RgbImage], device: &Device) -> f64 {
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
pub(super) fn encode_captions(te: &ClipTextModel, tok: &ClipTokenizer, captions: &[String]) -> HashMap<String, Vec<f32>> {
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
pub(super) struct UnetPool<'a> {
    pub(super) scenes: &'a [Scene],
    pub(super) means: &'a [f32],
    pub(super) logvars: &'a [f32],
    pub(super) scaling: f32,
    pub(super) contexts: &'a HashMap<String, Vec<f32>>,
}

/// Trains the UNet on the pool of encoded world images; returns it (moving average,
/// half-precision-rounded) and its final loss.
pub(super) fn train_unet(opts: &PretrainOptions, out_dir: &Path, pool: &UnetPool, device: &Device) -> Result<(UNet, ModelParams, f64)> {
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
