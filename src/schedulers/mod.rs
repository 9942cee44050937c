//! Noise schedules and samplers (DDIM, Euler, Euler ancestral, DPM++ 2M with and without Karras
//! sigmas), configured from a diffusers `scheduler_config.json` and numerically matching
//! diffusers 0.42.1 (float32 tables and coefficients computed in diffusers' order).
pub mod config;
pub mod ddim;
pub mod dpm;
pub mod euler;
pub mod noise;
pub mod spacing;

use std::fmt;
use std::str::FromStr;

use anyhow::{Result, bail};
use burn::tensor::Tensor;

pub use config::{PredictionType, SchedulerConfig, load};
pub use noise::NoiseSchedule;

use crate::rng::Rng;

/// Fresh unit-variance noise for ancestral samplers, one tensor per step.
pub trait StepNoise {
    fn draw(&mut self, dims: [usize; 4], device: &burn::tensor::Device) -> Tensor<4>;
}

impl StepNoise for Rng {
    fn draw(&mut self, dims: [usize; 4], device: &burn::tensor::Device) -> Tensor<4> {
        self.normal_tensor(dims, device)
    }
}

/// A reverse-diffusion sampler over a fixed list of timesteps.
///
/// The loop, as diffusers' pipelines run it: `x = noise * init_noise_sigma()`, then for each
/// `i`: `out = unet(scale_model_input(x, i), timesteps()[i])` (guided), `x = step(out, i, x, noise)`.
pub trait Sampler: Send {
    /// The UNet timesteps, noisiest first (whole numbers for every sampler here, stored as f64
    /// because the spacing math is fractional).
    fn timesteps(&self) -> &[f64];
    /// The scale of the initial unit-variance noise (a float32 value, widened).
    fn init_noise_sigma(&self) -> f64;
    /// The float32 sigmas, one per timestep and a final 0, for samplers that walk them.
    fn sigmas(&self) -> Option<&[f32]> {
        None
    }
    /// The UNet input at step `step` (Euler scales by 1 / sqrt(sigma^2 + 1)).
    fn scale_model_input(&self, sample: Tensor<4>, step: usize) -> Tensor<4>;
    /// One step from `timesteps()[step]` to the next; `model_output` is read according to the
    /// config's `prediction_type`. Steps must run in order from 0; ancestral samplers draw their
    /// fresh noise from `noise`.
    fn step(&mut self, model_output: Tensor<4>, step: usize, sample: Tensor<4>, noise: &mut dyn StepNoise) -> Tensor<4>;
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SamplerKind {
    Ddim,
    Euler,
    EulerAncestral,
    DpmPp2m,
    DpmPp2mKarras,
}

impl SamplerKind {
    pub const ALL: [SamplerKind; 5] = [Self::Ddim, Self::Euler, Self::EulerAncestral, Self::DpmPp2m, Self::DpmPp2mKarras];

    /// AUTOMATIC1111's name (its infotext and sampler menu).
    pub fn a1111_name(self) -> &'static str {
        match self {
            Self::Ddim => "DDIM",
            Self::Euler => "Euler",
            Self::EulerAncestral => "Euler a",
            Self::DpmPp2m => "DPM++ 2M",
            Self::DpmPp2mKarras => "DPM++ 2M Karras",
        }
    }

    /// The CLI name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Ddim => "ddim",
            Self::Euler => "euler",
            Self::EulerAncestral => "euler-a",
            Self::DpmPp2m => "dpmpp-2m",
            Self::DpmPp2mKarras => "dpmpp-2m-karras",
        }
    }
}

impl fmt::Display for SamplerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for SamplerKind {
    type Err = anyhow::Error;
    /// catlora's names, and the spellings of AUTOMATIC1111 (`DPM++ 2M Karras`, `Euler a`), ComfyUI
    /// (`dpmpp_2m`, `euler_ancestral`) and kohya's sample prompts (`k_euler_a`, `dpmsolver++`).
    fn from_str(s: &str) -> Result<Self> {
        let mut n = s.trim().to_lowercase().replace([' ', '_'], "-").replace("++", "pp");
        if let Some(rest) = n.strip_prefix("k-") {
            n = rest.to_string();
        }
        let n = match n.as_str() {
            "euler-ancestral" => "euler-a",
            "dpmsolverpp" | "dpmsolver-multistep" => "dpmpp-2m",
            other => other,
        };
        match Self::ALL.into_iter().find(|k| k.name() == n) {
            Some(k) => Ok(k),
            None => {
                let names: Vec<_> = Self::ALL.iter().map(|k| k.name()).collect();
                bail!("unknown sampler `{s}`: use one of {}", names.join(", "))
            }
        }
    }
}

/// A sampler of `kind` for `steps` steps under `config`'s noise schedule.
pub fn make(kind: SamplerKind, config: &SchedulerConfig, steps: usize) -> Result<Box<dyn Sampler>> {
    if steps == 0 || steps > config.num_train_timesteps {
        bail!("{steps} sampling steps: use 1 to {} (num_train_timesteps)", config.num_train_timesteps);
    }
    Ok(match kind {
        SamplerKind::Ddim => Box::new(ddim::Ddim::new(config, steps)),
        SamplerKind::Euler => Box::new(euler::Euler::new(config, steps)),
        SamplerKind::EulerAncestral => Box::new(euler::EulerAncestral::new(config, steps)),
        SamplerKind::DpmPp2m => Box::new(dpm::DpmPp2m::new(config, steps, false)),
        SamplerKind::DpmPp2mKarras => Box::new(dpm::DpmPp2m::new(config, steps, true)),
    })
}

#[cfg(test)]
mod tests;
