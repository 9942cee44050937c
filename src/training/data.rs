//! Training examples: the images of each concept folder with their captions (trigger and
//! trigger-less), preprocessed once; VAE latent distributions and frozen text encodings are
//! computed once and cached for the whole run.
use super::config::{Concept, TrainConfig};
use super::trigger::{remove_trigger, training_caption};
use crate::io::image::{Crop, RgbImage, flip_horizontal, list_images, load_rgb, resize_and_crop, rgb_to_tensor};
use crate::pipeline::model::StableDiffusion;
use anyhow::{Context, Result, bail};
use burn::tensor::Tensor;
use std::path::PathBuf;

/// One training image with its captions.
#[derive(Clone, Debug)]
pub struct Example {
    pub path: PathBuf,
    pub caption: String,
    pub plain_caption: String,
    pub image: RgbImage,
}

/// Reads a concept folder: every image, its same-named `.txt` caption if present.
pub fn read_concept(c: &Concept, resolution: usize, random_crop: bool) -> Result<Vec<Example>> {
    let mut out = Vec::new();
    for path in list_images(&c.data)? {
        let txt = path.with_extension("txt");
        let caption = if txt.is_file() {
            Some(std::fs::read_to_string(&txt).with_context(|| format!("cannot read caption {}", txt.display()))?)
        } else {
            None
        };
        let caption = training_caption(caption.as_deref(), &c.trigger, c.class.as_deref())
            .with_context(|| format!("captioning {}", path.display()))?;
        let plain_caption = remove_trigger(&caption, &c.trigger);
        let image = load_rgb(&path)?;
        // Random crops are taken per step from the image resized to cover the resolution.
        let image = if random_crop {
            // Checked now: every step resizes it to cover the resolution.
            crate::limits::resized(image.width(), image.height(), resolution as u32).with_context(|| path.display().to_string())?;
            image
        } else {
            resize_and_crop(&image, resolution as u32, Crop::Center).with_context(|| path.display().to_string())?
        };
        out.push(Example { path, caption, plain_caption, image });
    }
    Ok(out)
}

/// A cached VAE latent distribution (one per image and flip).
#[derive(Clone)]
pub struct LatentDist {
    pub mean: Tensor<4>,
    pub std: Tensor<4>,
}

/// Encodes prepared images `[N,3,H,W]` one at a time (memory stays that of one image).
pub fn encode_latents(sd: &StableDiffusion, images: &[RgbImage]) -> Vec<LatentDist> {
    images
        .iter()
        .map(|img| {
            let x = rgb_to_tensor(std::slice::from_ref(img), &sd.device);
            let (mean, logvar) = sd.vae.encode(x);
            LatentDist { mean, std: logvar.mul_scalar(0.5).exp() }
        })
        .collect()
}

/// Everything the loop needs about the data, prepared once.
pub struct Dataset {
    pub examples: Vec<Example>,
    /// `latents[i][0]` for image i, `latents[i][1]` for its mirror image when flipping is on.
    pub latents: Vec<Vec<LatentDist>>,
    /// Encodings of `caption` and `plain_caption` per example (frozen text encoder only).
    pub cond: Vec<(Tensor<3>, Tensor<3>)>,
}

impl Dataset {
    pub fn prepare(sd: &StableDiffusion, cfg: &TrainConfig, encode_text: bool) -> Result<Self> {
        let mut examples = Vec::new();
        for c in &cfg.concepts {
            examples.extend(read_concept(c, cfg.resolution, cfg.random_crop)?);
        }
        for e in &examples {
            if !cfg.random_crop && (e.image.width() as usize != cfg.resolution || e.image.height() as usize != cfg.resolution) {
                bail!("{}: prepared to {}x{} instead of {}", e.path.display(), e.image.width(), e.image.height(), cfg.resolution);
            }
        }
        sd.check_size(cfg.resolution, cfg.resolution)?;
        let latents = if cfg.random_crop {
            Vec::new()
        } else {
            examples
                .iter()
                .map(|e| {
                    let mut v = vec![e.image.clone()];
                    if cfg.flip {
                        v.push(flip_horizontal(&e.image));
                    }
                    encode_latents(sd, &v)
                })
                .collect()
        };
        let cond = if encode_text {
            examples
                .iter()
                .map(|e| {
                    let c = sd.encode_prompts(&[e.caption.as_str(), e.plain_caption.as_str()], 1);
                    (c.clone().narrow(0, 0, 1), c.narrow(0, 1, 1))
                })
                .collect()
        } else {
            Vec::new()
        };
        Ok(Self { examples, latents, cond })
    }
}
