//! A Stable Diffusion 1.x / 2.x folder in the diffusers layout (`model_index.json` and one
//! sub-folder per component), loaded onto a device.
use crate::adapters::lora::Targets;
use crate::models::clip_text::ClipTextModel;
use crate::models::config::{ClipTextConfig, UNetConfig, VaeConfig, read_json};
use crate::models::tokenizer::ClipTokenizer;
use crate::models::unet::UNet;
use crate::models::vae::Vae;
use crate::models::weights::Weights;
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
    let expect = [
        ("text_encoder", "CLIPTextModel"),
        ("unet", "UNet2DConditionModel"),
        ("vae", "AutoencoderKL"),
    ];
    for (component, class) in expect {
        let got = index.get(component).and_then(|v| v.get(1)).and_then(|v| v.as_str());
        if got != Some(class) {
            bail!("{}: component `{component}` is {got:?}, expected {class}", path.display());
        }
    }
    Ok(())
}

impl StableDiffusion {
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        check_index(dir)?;
        let sub = |name: &str| dir.join(name);
        let te_cfg = ClipTextConfig::load(&sub("text_encoder").join("config.json"))?;
        let unet_cfg = UNetConfig::load(&sub("unet").join("config.json"))?;
        let vae_cfg = VaeConfig::load(&sub("vae").join("config.json"))?;
        if te_cfg.hidden_size != unet_cfg.cross_attention_dim {
            bail!(
                "{}: the text encoder's hidden size {} differs from the UNet's cross_attention_dim {}",
                dir.display(),
                te_cfg.hidden_size,
                unet_cfg.cross_attention_dim
            );
        }
        let te_w = Weights::open_dir(&sub("text_encoder"), "model", device)?;
        let unet_w = Weights::open_dir(&sub("unet"), "diffusion_pytorch_model", device)?;
        let vae_w = Weights::open_dir(&sub("vae"), "diffusion_pytorch_model", device)?;
        Ok(Self {
            dir: dir.to_path_buf(),
            tokenizer: ClipTokenizer::from_dir(&sub("tokenizer"))?,
            text_encoder: ClipTextModel::load(&te_w, &te_cfg, None).with_context(|| format!("loading {}", sub("text_encoder").display()))?,
            unet: UNet::load(&unet_w, &unet_cfg).with_context(|| format!("loading {}", sub("unet").display()))?,
            vae: Vae::load(&vae_w, &vae_cfg).with_context(|| format!("loading {}", sub("vae").display()))?,
            scheduler: schedulers::load(&sub("scheduler").join("scheduler_config.json"))?,
            device: device.clone(),
        })
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

    /// Width and height must map to latents the UNet can halve at every level.
    pub fn check_size(&self, width: usize, height: usize) -> Result<()> {
        let m = self.vae_factor() * self.unet.config.downsampling();
        if width == 0 || height == 0 || width % m != 0 || height % m != 0 {
            bail!("image size {width}x{height} is not a multiple of {m} (the VAE's and UNet's total downsampling)");
        }
        Ok(())
    }
}
