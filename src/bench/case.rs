//! What a benchmark case runs: which UNet (a folder, or a configuration with seeded random
//! weights), on which device, at which latent size, and the fixed inputs both engines compute
//! from the same formulas (not from their different random generators), so that on a checkpoint
//! their outputs and gradients agree and the two columns time the same computation.
use crate::models::config::UNetConfig;
use crate::models::layers::Walk;
use crate::models::unet::UNet;
use crate::models::weights::Weights;
use crate::precision::Precision;
use crate::schedulers::{NoiseSchedule, SchedulerConfig};
use anyhow::{Context, Result};
use burn::tensor::{Device, Tensor, TensorData};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The timestep every forward pass uses.
pub const TIMESTEP: f64 = 500.0;

/// The (integer) training timestep of every benchmark step, on both engines.
pub const TRAIN_TIMESTEP: usize = 500;

/// Timed repetitions per figure unless the user asks for others.
pub const DEFAULT_ITERS: usize = 5;

/// Which UNet a case loads.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum BenchModel {
    /// A diffusers `unet` folder (`config.json` + `diffusion_pytorch_model.safetensors`).
    Dir { path: PathBuf },
    /// The diffusers `config.json` contents, with seeded random weights (`Weights::random` here,
    /// PyTorch's default initialisation on the torch side).
    Random { config: serde_json::Value, seed: u64 },
}

fn cpu() -> String {
    "cpu".into()
}

/// One benchmark case.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BenchCase {
    pub name: String,
    pub model: BenchModel,
    /// catlora's `--device` for this case (`cpu`, `libtorch`, ...).
    #[serde(default = "cpu")]
    pub device: String,
    pub batch: usize,
    /// Side of the square latent (image side / 8 for SD).
    pub latent: usize,
    /// Text tokens in the cross-attention context.
    pub tokens: usize,
    /// Timed iterations per phase, after one warm-up.
    pub iters: usize,
    /// The frozen UNet's precision (`--precision`); both engines run it as mixed precision.
    #[serde(default)]
    pub precision: Precision,
}

/// The real Stable Diffusion 1.5 UNet configuration (`runwayml/stable-diffusion-v1-5`,
/// `unet/config.json`).
pub fn sd15_unet_config() -> serde_json::Value {
    serde_json::json!({
        "_class_name": "UNet2DConditionModel",
        "act_fn": "silu",
        "attention_head_dim": 8,
        "block_out_channels": [320, 640, 1280, 1280],
        "center_input_sample": false,
        "cross_attention_dim": 768,
        "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
        "downsample_padding": 1,
        "flip_sin_to_cos": true,
        "freq_shift": 0,
        "in_channels": 4,
        "layers_per_block": 2,
        "mid_block_scale_factor": 1,
        "norm_eps": 1e-05,
        "norm_num_groups": 32,
        "out_channels": 4,
        "sample_size": 64,
        "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"]
    })
}

impl BenchCase {
    /// A UNet folder at its own `sample_size`, 77 tokens.
    pub fn folder(unet_dir: &Path, iters: usize) -> Result<Self> {
        let cfg = UNetConfig::load(&unet_dir.join("config.json"))?;
        Ok(Self {
            name: "tiny".into(),
            model: BenchModel::Dir { path: unet_dir.to_path_buf() },
            device: cpu(),
            batch: 1,
            latent: cfg.sample_size.unwrap_or(32),
            tokens: 77,
            iters,
            precision: Precision::Fp32,
        })
    }

    /// The SD 1.5 UNet with random weights at `pixels` px (latent pixels / 8), batch 1, 77 tokens.
    pub fn sd15(pixels: usize, iters: usize) -> Self {
        Self {
            name: format!("sd15-{pixels}"),
            model: BenchModel::Random { config: sd15_unet_config(), seed: 0 },
            device: cpu(),
            batch: 1,
            latent: pixels / 8,
            tokens: 77,
            iters,
            precision: Precision::Fp32,
        }
    }

    pub fn config(&self) -> Result<UNetConfig> {
        match &self.model {
            BenchModel::Dir { path } => UNetConfig::load(&path.join("config.json")),
            BenchModel::Random { config, .. } => {
                // Through a file so that the config gets the same validation as a real one.
                let dir = tempfile::tempdir().context("cannot create a scratch folder")?;
                let p = dir.path().join("config.json");
                std::fs::write(&p, serde_json::to_string_pretty(config)?)?;
                UNetConfig::load(&p)
            }
        }
    }

    pub fn device(&self) -> Result<Device> {
        crate::device::parse(&self.device)
    }

    /// Refuses a case whose UNet passes with a graph would not fit in memory, `passes` UNet
    /// batches at once (2 for a batched CAT step), before any child process allocates.
    pub fn check_memory(&self, passes: usize) -> Result<()> {
        let cfg = self.config()?;
        let shape = crate::limits::RunShape {
            latent: (self.latent, self.latent),
            batch: self.batch.saturating_mul(passes),
            unet_channels: cfg.block_out_channels.first().copied().unwrap_or(0),
            // The benchmarks run the UNet alone.
            vae_channels: 0,
            vae_factor: 1,
            heads: cfg.heads()?.into_iter().max().unwrap_or(1),
            training: true,
        };
        let what = format!("the UNet passes of benchmark case `{}` ({}x{} latents)", self.name, self.latent, self.latent);
        crate::limits::check_memory(crate::limits::generation_bytes(&shape), &what)
    }

    /// Loads the case's UNet on its device.
    pub fn load_unet(&self) -> Result<(UNet, UNetConfig)> {
        let device = self.device()?;
        let cfg = self.config()?;
        let weights = match &self.model {
            BenchModel::Dir { path } => Weights::open_dir(path, "diffusion_pytorch_model", &device)?,
            BenchModel::Random { seed, .. } => Weights::random(*seed, &device),
        };
        let mut unet = UNet::load(&weights, &cfg).with_context(|| format!("case `{}`: cannot load the UNet", self.name))?;
        unet.set_precision(self.precision, &device)?;
        Ok((unet, cfg))
    }
}

fn formula<const D: usize>(shape: [usize; D], f: impl Fn(f64) -> f64, device: &Device) -> Tensor<D> {
    let v: Vec<f32> = (0..shape.iter().product::<usize>()).map(|i| f(i as f64) as f32).collect();
    Tensor::from_data(TensorData::new(v, shape), device)
}

/// The latent `[B, C, S, S]` and context `[B, T, D]`, from formulas both engines evaluate in f64
/// and round to f32: `x_i = sin(0.37 i + 0.1)`, `c_j = 0.5 cos(0.13 j)` over the flat index.
pub fn unet_inputs(case: &BenchCase, channels: usize, context_dim: usize, device: &Device) -> (Tensor<4>, Tensor<3>) {
    let x = formula([case.batch, channels, case.latent, case.latent], |i| (0.37 * i + 0.1).sin(), device);
    let c = formula([case.batch, case.tokens, context_dim], |j| 0.5 * (0.13 * j).cos(), device);
    (x, c)
}

/// The training step's fixed inputs: the clean latent `x0` and the trigger caption's states are
/// [`unet_inputs`]; the noise is `cos(0.23 i + 0.7)` and the plain caption's states
/// `0.5 sin(0.11 j + 0.3)`.
pub fn train_inputs(
    case: &BenchCase,
    channels: usize,
    context_dim: usize,
    device: &Device,
) -> (Tensor<4>, Tensor<4>, Tensor<3>, Tensor<3>) {
    let (x0, trigger) = unet_inputs(case, channels, context_dim, device);
    let noise = formula([case.batch, channels, case.latent, case.latent], |i| (0.23 * i + 0.7).cos(), device);
    let plain = formula([case.batch, case.tokens, context_dim], |j| 0.5 * (0.11 * j + 0.3).sin(), device);
    (x0, noise, trigger, plain)
}

/// The noise schedule of SD 1.x training (`scaled_linear`, 0.00085 .. 0.012, 1000 steps): the
/// fixture's scheduler and SD 1.5's; `DDPMScheduler` with the same numbers on the torch side.
pub fn train_noise_schedule() -> NoiseSchedule {
    let cfg = SchedulerConfig::from_json(
        r#"{"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear"}"#,
    )
    .expect("a valid scheduler config");
    NoiseSchedule::new(&cfg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sd15_config_parses_and_round_trips() {
        let case = BenchCase::sd15(256, 1);
        assert_eq!((case.name.as_str(), case.latent), ("sd15-256", 32));
        let cfg = case.config().unwrap();
        assert_eq!(cfg.block_out_channels, vec![320, 640, 1280, 1280]);
        assert_eq!(cfg.cross_attention_dim, 768);
        assert_eq!(cfg.heads().unwrap(), vec![8; 4]);
        let back: BenchCase = serde_json::from_str(&serde_json::to_string(&case).unwrap()).unwrap();
        assert_eq!((back.name.as_str(), back.device.as_str()), ("sd15-256", "cpu"));
    }
}
