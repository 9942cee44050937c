//! A Stable Diffusion 1.x / 2.x folder in the diffusers layout (`model_index.json` and one
//! sub-folder per component), loaded onto a device.
use crate::adapters::lora::Targets;
use crate::models::clip_text::ClipTextModel;
use crate::models::config::{ClipTextConfig, UNetConfig, VaeConfig, read_json};
use crate::models::layers::Walk;
use crate::models::tokenizer::ClipTokenizer;
use crate::models::unet::UNet;
use crate::models::vae::Vae;
use crate::models::weights::Weights;
use crate::precision::Precision;
use crate::schedulers::{self, SchedulerConfig};
use anyhow::{Context, Result, bail};
use burn::tensor::{Device, Tensor};
use std::path::{Path, PathBuf};

pub struct StableDiffusion {
    pub dir: PathBuf,
    pub tokenizer: ClipTokenizer,
    pub text_encoder: ClipTextModel,
    pub unet: UNet,
    pub vae: Vae,
    pub scheduler: SchedulerConfig,
    pub device: Device,
}

fn check_index(dir: &Path) -> Result<()> {
    let path = dir.join("model_index.json");
    if !path.is_file() {
        bail!("{} is not a diffusers pipeline folder: it has no model_index.json", dir.display());
    }
    let index: serde_json::Value = read_json(&path)?;
    let expect = [("text_encoder", "CLIPTextModel"), ("unet", "UNet2DConditionModel"), ("vae", "AutoencoderKL")];
    for (component, class) in expect {
        let got = index.get(component).and_then(|v| v.get(1)).and_then(|v| v.as_str());
        if got != Some(class) {
            bail!("{}: component `{component}` is {got:?}, expected {class}", path.display());
        }
    }
    Ok(())
}

/// The three model configurations of a pipeline folder, read and checked against each other
/// before any weight is loaded (so sizes can be refused first).
pub struct ModelConfigs {
    pub text_encoder: ClipTextConfig,
    pub unet: UNetConfig,
    pub vae: VaeConfig,
}

impl ModelConfigs {
    pub fn read(dir: &Path) -> Result<Self> {
        check_index(dir)?;
        let sub = |name: &str| dir.join(name).join("config.json");
        let c = Self {
            text_encoder: ClipTextConfig::load(&sub("text_encoder"))?,
            unet: UNetConfig::load(&sub("unet"))?,
            vae: VaeConfig::load(&sub("vae"))?,
        };
        if c.text_encoder.hidden_size != c.unet.cross_attention_dim {
            bail!(
                "{}: the text encoder's hidden size {} differs from the UNet's cross_attention_dim {}",
                dir.display(),
                c.text_encoder.hidden_size,
                c.unet.cross_attention_dim
            );
        }
        if c.unet.in_channels != c.vae.latent_channels || c.unet.out_channels != c.vae.latent_channels {
            bail!(
                "{}: the UNet's in_channels {} / out_channels {} differ from the VAE's latent_channels {}",
                dir.display(),
                c.unet.in_channels,
                c.unet.out_channels,
                c.vae.latent_channels
            );
        }
        Ok(c)
    }

    /// How many image pixels one latent pixel covers.
    pub fn vae_factor(&self) -> usize {
        self.vae.downsampling()
    }

    /// Width and height must map to latents the UNet can halve at every level, and stay within
    /// [`crate::limits::MAX_GENERATE_SIDE`].
    pub fn check_size(&self, width: usize, height: usize) -> Result<()> {
        let m = self.vae_factor() * self.unet.downsampling();
        if width == 0 || height == 0 || !width.is_multiple_of(m) || !height.is_multiple_of(m) {
            bail!("image size {width}x{height} is not a multiple of {m} (the VAE's and UNet's total downsampling)");
        }
        let max = crate::limits::MAX_GENERATE_SIDE;
        if width.max(height) > max {
            bail!("image size {width}x{height} is over the limit of {max} pixels a side");
        }
        Ok(())
    }

    /// The size check, then the memory estimate of denoising `batch` latents at this size
    /// (with a graph when `training`); `what` names the options.
    pub fn check_run(&self, width: usize, height: usize, batch: usize, training: bool, what: &str) -> Result<()> {
        self.check_size(width, height).with_context(|| what.to_string())?;
        let f = self.vae_factor();
        let heads = self.unet.heads()?.into_iter().max().unwrap_or(1);
        let shape = crate::limits::RunShape {
            latent: (height / f, width / f),
            batch,
            unet_channels: self.unet.block_out_channels[0],
            vae_channels: self.vae.block_out_channels[0],
            vae_factor: f,
            heads,
            training,
        };
        crate::limits::check_memory(crate::limits::generation_bytes(&shape), what)
    }
}

impl StableDiffusion {
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        let ModelConfigs { text_encoder: te_cfg, unet: unet_cfg, vae: vae_cfg } = ModelConfigs::read(dir)?;
        let sub = |name: &str| dir.join(name);
        let tokenizer = ClipTokenizer::from_dir(&sub("tokenizer"))?;
        tokenizer.check_vocab_size(te_cfg.vocab_size, &sub("tokenizer").display().to_string())?;
        let te_w = Weights::open_dir(&sub("text_encoder"), "model", device)?;
        let unet_w = Weights::open_dir(&sub("unet"), "diffusion_pytorch_model", device)?;
        let vae_w = Weights::open_dir(&sub("vae"), "diffusion_pytorch_model", device)?;
        Ok(Self {
            dir: dir.to_path_buf(),
            tokenizer,
            text_encoder: ClipTextModel::load(&te_w, &te_cfg, None)
                .with_context(|| format!("loading {}", sub("text_encoder").display()))?,
            unet: UNet::load(&unet_w, &unet_cfg).with_context(|| format!("loading {}", sub("unet").display()))?,
            vae: Vae::load(&vae_w, &vae_cfg).with_context(|| format!("loading {}", sub("vae").display()))?,
            scheduler: schedulers::load(&sub("scheduler").join("scheduler_config.json"))?,
            device: device.clone(),
        })
    }

    /// Casts the frozen weights of the text encoder, UNet and VAE to `precision`; LoRA branches,
    /// attached before or after, keep float32 (see [`crate::precision`]).
    pub fn set_precision(&mut self, precision: Precision) -> Result<()> {
        self.text_encoder.set_precision(precision, &self.device)?;
        self.unet.set_precision(precision, &self.device)?;
        self.vae.set_precision(precision, &self.device)
    }

    /// Warns on stderr when a prompt is longer than the text encoder reads, saying how many
    /// tokens are dropped (as AUTOMATIC1111 and diffusers do).
    pub fn warn_if_truncated(&self, prompts: &[&str]) {
        let n = self.tokenizer.max_len().min(self.text_encoder.config.max_position_embeddings);
        for m in prompts.iter().filter_map(|p| self.tokenizer.truncation(p, n)) {
            eprintln!("warning: {m}");
        }
    }

    /// Token ids of prompts, padded to the tokenizer's length.
    pub fn token_ids(&self, prompts: &[&str]) -> Vec<Vec<u32>> {
        let n = self.tokenizer.max_len().min(self.text_encoder.config.max_position_embeddings);
        prompts.iter().map(|p| self.tokenizer.encode_padded(p, n)).collect()
    }

    /// Text conditioning `[B, 77, hidden]` for prompts.
    pub fn encode_prompts(&self, prompts: &[&str], clip_skip: usize) -> Tensor<3> {
        self.text_encoder.forward(&self.token_ids(prompts), clip_skip)
    }

    /// The UNet and text encoder, as adapter targets.
    pub fn targets(&mut self) -> Targets<'_> {
        Targets { unet: &mut self.unet, text_encoder: Some(&mut self.text_encoder) }
    }

    /// How many image pixels one latent pixel covers.
    pub fn vae_factor(&self) -> usize {
        self.vae.config.downsampling()
    }

    /// The configurations the models were built from.
    pub fn configs(&self) -> ModelConfigs {
        ModelConfigs { text_encoder: self.text_encoder.config.clone(), unet: self.unet.config.clone(), vae: self.vae.config.clone() }
    }

    /// See [`ModelConfigs::check_size`].
    pub fn check_size(&self, width: usize, height: usize) -> Result<()> {
        self.configs().check_size(width, height)
    }
}
