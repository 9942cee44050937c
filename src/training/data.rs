//! Training examples: the images of each concept folder with their captions (trigger and
//! trigger-less), preprocessed once; VAE latent distributions and frozen text encodings are
//! computed once and cached for the whole run.
use super::config::{Concept, TrainConfig};
use super::metadata::DatasetDir;
use super::trigger::{remove_trigger, training_caption};
use crate::io::folder_name;
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
    /// The trigger of the image's concept.
    pub trigger: String,
    pub image: RgbImage,
}

/// The caption file extensions other trainers use; an image whose caption has one of these but
/// not `--caption-extension` is an error, not an image silently given the default caption.
const CAPTION_EXTENSIONS: [&str; 2] = [".txt", ".caption"];

/// The caption file of `image` with `extension` (`.txt`): `photo.png` → `photo.txt`.
fn caption_path(image: &std::path::Path, extension: &str) -> PathBuf {
    let mut name = image.file_stem().unwrap_or_default().to_os_string();
    name.push(extension);
    image.with_file_name(name)
}

/// Reads a concept folder: every image, its same-named caption file (`caption_extension`, e.g.
/// `.txt`) if present.
pub fn read_concept(c: &Concept, resolution: usize, random_crop: bool, caption_extension: &str) -> Result<Vec<Example>> {
    let mut out = Vec::new();
    for path in list_images(&c.data)? {
        let txt = caption_path(&path, caption_extension);
        let caption = if txt.is_file() {
            Some(std::fs::read_to_string(&txt).with_context(|| format!("cannot read caption {}", txt.display()))?)
        } else {
            if let Some(other) = CAPTION_EXTENSIONS.iter().map(|e| caption_path(&path, e)).find(|p| p.is_file()) {
                bail!(
                    "{}: its caption {} does not have the caption extension `{caption_extension}` (give --caption-extension {})",
                    path.display(),
                    other.display(),
                    other.extension().map(|e| format!(".{}", e.to_string_lossy())).unwrap_or_default()
                );
            }
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
        out.push(Example { path, caption, plain_caption, trigger: c.trigger.clone(), image });
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
    /// Example indices, each as many times as its concept's repeats: what one pass draws from.
    pub pool: Vec<usize>,
    /// Each concept folder by name, with its repeats, images and caption tags (for the metadata).
    pub dirs: Vec<DatasetDir>,
    /// `latents[i][0]` for image i, `latents[i][1]` for its mirror image when flipping is on.
    pub latents: Vec<Vec<LatentDist>>,
    /// Encodings of `caption` and `plain_caption` per example (frozen text encoder only).
    pub cond: Vec<(Tensor<3>, Tensor<3>)>,
}

impl Dataset {
    pub fn prepare(sd: &StableDiffusion, cfg: &TrainConfig, encode_text: bool) -> Result<Self> {
        let (mut examples, mut pool, mut dirs) = (Vec::new(), Vec::new(), Vec::new());
        for c in &cfg.concepts {
            let read = read_concept(c, cfg.resolution, cfg.random_crop, &cfg.caption_extension)?;
            let mut dir = DatasetDir { name: folder_name(&c.data), repeats: c.repeats, images: read.len(), ..Default::default() };
            for e in &read {
                dir.count_caption(&e.caption);
            }
            dirs.push(dir);
            let first = examples.len();
            examples.extend(read);
            for i in first..examples.len() {
                pool.extend(std::iter::repeat_n(i, c.repeats));
            }
        }
        let mut captions: Vec<&str> = examples.iter().map(|e| e.caption.as_str()).collect();
        captions.sort_unstable();
        captions.dedup();
        sd.warn_if_truncated(&captions);
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
        Ok(Self { examples, pool, latents, cond, dirs })
    }
}

/// kohya's dataset layout: a folder that holds no images itself but `<repeats>_<name>`
/// subfolders (`10_sks teapot/`) is one concept per subfolder, repeated that many times per pass,
/// its trigger the first word of the name (unless the concept names one) and its class the rest.
/// Other concepts are returned as they are.
pub fn expand_kohya_layouts(concepts: Vec<Concept>) -> Result<Vec<Concept>> {
    let mut out = Vec::new();
    for c in concepts {
        let has_images = c.data.is_dir() && list_images(&c.data).is_ok();
        let subfolders = if c.data.is_dir() && !has_images { kohya_subfolders(&c.data)? } else { Vec::new() };
        if subfolders.is_empty() {
            out.push(c);
            continue;
        }
        for (dir, repeats, name) in subfolders {
            let mut words = name.splitn(2, char::is_whitespace);
            let first = words.next().unwrap_or_default().to_string();
            let rest = words.next().map(str::trim).filter(|r| !r.is_empty()).map(String::from);
            let trigger = if c.trigger.is_empty() { first } else { c.trigger.clone() };
            let class = if c.trigger.is_empty() { rest.or_else(|| c.class.clone()) } else { c.class.clone().or(Some(name.clone())) };
            out.push(Concept { data: dir, trigger, class, class_data: c.class_data.clone(), repeats });
        }
    }
    Ok(out)
}

/// The `<repeats>_<name>` subfolders of `dir`, sorted by name; empty when there are none.
fn kohya_subfolders(dir: &std::path::Path) -> Result<Vec<(PathBuf, usize, String)>> {
    let mut found = Vec::new();
    let mut others = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("cannot read image folder {}", dir.display()))? {
        let path = entry.with_context(|| format!("cannot list {}", dir.display()))?.path();
        if !path.is_dir() {
            continue;
        }
        let name = path.file_name().unwrap_or_default().to_string_lossy().into_owned();
        match name.split_once('_').map(|(n, rest)| (n.parse::<usize>(), rest.trim())) {
            Some((Ok(repeats), rest)) if !rest.is_empty() => {
                if repeats == 0 {
                    bail!("{}: kohya folder with 0 repeats (the number before `_` must be at least 1)", path.display());
                }
                found.push((path, repeats, rest.to_string()));
            }
            _ => others.push(path),
        }
    }
    if !found.is_empty()
        && let Some(other) = others.first()
    {
        bail!(
            "{}: beside kohya's `<repeats>_<trigger> <class>` folders, a folder of another name (rename it, or move it out)",
            other.display()
        );
    }
    found.sort();
    Ok(found)
}
