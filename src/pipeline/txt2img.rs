//! Text to image with classifier-free guidance, as diffusers' `StableDiffusionPipeline` does:
//! the negative prompt is the unconditional text, noise comes from a seeded generator (or from a
//! latents file), and the chosen sampler walks it down to an image.
use super::model::StableDiffusion;
use crate::rng::Rng;
use crate::schedulers::{self, SamplerKind, StepNoise};
use anyhow::{Context, Result, bail};
use burn::tensor::{Tensor, TensorData};
use std::path::Path;

#[derive(Clone, Debug)]
pub struct GenerateParams {
    pub prompt: String,
    pub negative_prompt: String,
    pub sampler: SamplerKind,
    pub steps: usize,
    pub cfg: f64,
    pub width: usize,
    pub height: usize,
    pub seed: u64,
    pub clip_skip: usize,
}

impl Default for GenerateParams {
    /// What an SD 1.5 user expects: 512 px, 30 steps, CFG 7.5, DPM++ 2M Karras.
    fn default() -> Self {
        Self {
            prompt: String::new(),
            negative_prompt: String::new(),
            sampler: SamplerKind::DpmPp2mKarras,
            steps: 30,
            cfg: 7.5,
            width: 512,
            height: 512,
            seed: 0,
            clip_skip: 1,
        }
    }
}

/// Unit-variance initial latents `[1, C, H/f, W/f]` for one seed.
pub fn seeded_latents(sd: &StableDiffusion, p: &GenerateParams, seed: u64) -> Tensor<4> {
    let f = sd.vae_factor();
    Rng::new(seed).normal_tensor([1, sd.unet.config.in_channels, p.height / f, p.width / f], &sd.device)
}

/// How many latents the `latents` tensor of a safetensors file holds (read from its header).
pub fn latents_batch(path: &Path) -> Result<usize> {
    let file = crate::io::safetensors::SafeTensorsFile::open(path)?;
    let info = file.info("latents").with_context(|| format!("{}: no tensor named `latents`", path.display()))?;
    match info.shape.as_slice() {
        [n, ..] if info.shape.len() == 4 && (1..=4096).contains(n) => Ok(*n),
        other => bail!("{}: `latents` has shape {other:?}, expected [N, C, H, W] with N from 1 to 4096", path.display()),
    }
}

/// Reads unit-variance latents `latents` `[N, C, H/f, W/f]` from a safetensors file.
pub fn read_latents(sd: &StableDiffusion, path: &Path, p: &GenerateParams) -> Result<Tensor<4>> {
    let file = crate::io::safetensors::SafeTensorsFile::open(path)?;
    let (shape, v) = file.f32_finite("latents")?;
    let f = sd.vae_factor();
    let c = sd.unet.config.in_channels;
    if shape.len() != 4 || shape[1] != c || shape[2] != p.height / f || shape[3] != p.width / f {
        bail!(
            "{}: `latents` has shape {shape:?}, expected [N, {c}, {}, {}] for {}x{} images",
            path.display(),
            p.height / f,
            p.width / f,
            p.width,
            p.height
        );
    }
    Ok(Tensor::from_data(TensorData::new(v, [shape[0], c, shape[2], shape[3]]), &sd.device))
}

/// Denoises unit-variance `latents` `[N, ...]` with the prompt and decodes them: images
/// `[N, 3, H, W]` in [-1, 1]. `progress` is called after each step with (done, total).
/// Ancestral samplers draw fresh noise each step from a generator tied to the seed.
pub fn generate(sd: &StableDiffusion, p: &GenerateParams, latents: Tensor<4>, progress: impl FnMut(usize, usize)) -> Result<Tensor<4>> {
    generate_with_noise(sd, p, latents, &mut Rng::new(p.seed ^ 0x5eed_a5ce_0001), progress)
}

/// [`generate`] with the ancestral samplers' per-step noise drawn from `noise`.
pub fn generate_with_noise(
    sd: &StableDiffusion,
    p: &GenerateParams,
    latents: Tensor<4>,
    noise: &mut dyn StepNoise,
    mut progress: impl FnMut(usize, usize),
) -> Result<Tensor<4>> {
    sd.check_size(p.width, p.height)?;
    let n = latents.dims()[0];
    let mut sampler = schedulers::make(p.sampler, &sd.scheduler, p.steps).context("building the sampler")?;
    let guided = p.cfg != 1.0;
    let cond = sd.encode_prompts(&[p.prompt.as_str()], p.clip_skip);
    let context = if guided {
        let uncond = sd.encode_prompts(&[p.negative_prompt.as_str()], p.clip_skip);
        let [_, t, h] = cond.dims();
        Tensor::cat(vec![uncond.expand([n, t, h]), cond.expand([n, t, h])], 0)
    } else {
        let [_, t, h] = cond.dims();
        cond.expand([n, t, h])
    };
    let mut x = latents.mul_scalar(sampler.init_noise_sigma() as f32);
    let timesteps = sampler.timesteps().to_vec();
    for (i, &t) in timesteps.iter().enumerate() {
        let input = sampler.scale_model_input(x.clone(), i);
        let input = if guided { Tensor::cat(vec![input.clone(), input], 0) } else { input };
        let ts = vec![t; input.dims()[0]];
        let out = sd.unet.forward(input, &ts, &context);
        let out = if guided {
            let uncond = out.clone().narrow(0, 0, n);
            let cond = out.narrow(0, n, n);
            uncond.clone() + (cond - uncond).mul_scalar(p.cfg as f32)
        } else {
            out
        };
        x = sampler.step(out, i, x, noise);
        // One sum per step: a NaN or infinity anywhere would otherwise end as a black image.
        let sum = x.clone().sum().into_data().convert::<f64>().as_slice::<f64>().map_or(f64::NAN, |v| v[0]);
        if !sum.is_finite() {
            bail!(
                "sampling step {} of {} (timestep {t}) gave non-finite latents: the model, the LoRA or the settings produce NaN or infinity",
                i + 1,
                timesteps.len()
            );
        }
        progress(i + 1, timesteps.len());
    }
    let scale = sd.vae.config.scaling_factor as f32;
    let shift = sd.vae.config.shift_factor.unwrap_or(0.0) as f32;
    Ok(sd.vae.decode(x.div_scalar(scale).add_scalar(shift)))
}

/// One RGB image per seed for `p`; seed `s` gives the same initial noise whichever adapter is
/// active, so images of one seed compare models.
pub fn generate_seeded(sd: &StableDiffusion, p: &GenerateParams, seeds: &[u64]) -> Result<Vec<Vec<u8>>> {
    let latents = Tensor::cat(seeds.iter().map(|&s| seeded_latents(sd, p, s)).collect(), 0);
    Ok(crate::io::image::tensor_to_rgb8(generate(sd, p, latents, |_, _| {})?))
}
