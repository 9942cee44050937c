//! Training examples: the images of each concept folder with their captions (trigger and
//! trigger-less), preprocessed once; VAE latent distributions and frozen text encodings are
//! computed once and cached for the whole run.
use super::buckets::{batches_per_epoch, epoch_batches, nearest};
use super::config::{Concept, TrainConfig};
use super::metadata::DatasetDir;
use super::objective::Preserve;
use super::trigger::training_caption;
use crate::captions::{class_caption, remove_trigger};
use crate::io::folder_name;
use crate::io::image::{Crop, RgbImage, flip_horizontal, list_images, load_rgb, resize_and_crop, rgb_to_tensor};
use crate::pipeline::model::StableDiffusion;
use crate::rng::Rng;
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
    /// The class word of the image's concept (for the `class` preservation caption).
    pub class: Option<String>,
    /// The image prepared at its training size, or as read when crops are drawn each step.
    pub image: RgbImage,
    /// Its training size (width, height): the square of the resolution, or its bucket's.
    pub size: (u32, u32),
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
/// `.txt`) if present, and its training size: of `sizes` (the square, or the buckets), the one
/// closest to its aspect ratio.
pub fn read_concept(c: &Concept, sizes: &[(usize, usize)], random_crop: bool, caption_extension: &str) -> Result<Vec<Example>> {
    let mut out = Vec::new();
    for path in list_images(&c.data)? {
        let txt = caption_path(&path, caption_extension);
        let caption = if txt.is_file() {
            Some(crate::io::read_text(&txt).with_context(|| format!("cannot read caption {}", txt.display()))?)
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
        if plain_caption == caption {
            bail!("{}: the caption `{caption}` reads the same without the trigger `{}`", path.display(), c.trigger);
        }
        let image = load_rgb(&path)?;
        let (w, h) = nearest(sizes, image.width(), image.height());
        let size = (w as u32, h as u32);
        // Random crops are taken per step from the image resized to cover its size.
        let image = if random_crop {
            // Checked now: every step resizes it so.
            crate::limits::covering(image.width(), image.height(), size.0, size.1).with_context(|| path.display().to_string())?;
            image
        } else {
            resize_and_crop(&image, size, Crop::Center).with_context(|| path.display().to_string())?
        };
        out.push(Example { path, caption, plain_caption, trigger: c.trigger.clone(), class: c.class.clone(), image, size });
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

/// The text encodings of one example: its trigger caption and each preservation caption.
pub struct Encoded {
    pub trigger: Tensor<3>,
    pub preserve: Vec<(Preserve, Tensor<3>)>,
}

impl Example {
    /// The caption a preservation term uses, made from this example's (possibly augmented)
    /// trigger caption and its trigger-less twin.
    pub fn preserve_caption(&self, target: Preserve, caption: &str, plain: &str) -> String {
        match target {
            Preserve::TriggerLess => plain.to_string(),
            Preserve::Class => class_caption(caption, &self.trigger, self.class.as_deref().unwrap_or_default()),
            Preserve::Blank => String::new(),
        }
    }
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
    /// Encodings of each example's captions for every preservation target the run uses, and
    /// of its trigger caption (frozen text encoder only).
    pub cond: Vec<Encoded>,
    /// Whether batches are drawn within one bucket size.
    bucketed: bool,
}

impl Dataset {
    /// `encode_text`: the captions of `preserve` and the trigger captions are encoded once here.
    pub fn prepare(sd: &StableDiffusion, cfg: &TrainConfig, encode_text: bool, preserve: &[Preserve]) -> Result<Self> {
        let (mut examples, mut pool, mut dirs) = (Vec::new(), Vec::new(), Vec::new());
        let sizes = cfg.training_sizes();
        for c in &cfg.concepts {
            let read = read_concept(c, &sizes, cfg.random_crop, &cfg.caption_extension)?;
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
            if !cfg.random_crop && e.image.dimensions() != e.size {
                bail!("{}: prepared to {}x{} instead of {}x{}", e.path.display(), e.image.width(), e.image.height(), e.size.0, e.size.1);
            }
        }
        for &(w, h) in &sizes {
            sd.check_size(w, h)?;
        }
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
                    // One batch: the trigger caption, its trigger-less twin (always, so that every
                    // method encodes the same batch), then the other targets' captions.
                    let others: Vec<Preserve> = preserve.iter().copied().filter(|&p| p != Preserve::TriggerLess).collect();
                    let mut texts = vec![e.caption.clone(), e.plain_caption.clone()];
                    texts.extend(others.iter().map(|&p| e.preserve_caption(p, &e.caption, &e.plain_caption)));
                    let all = sd.encode_prompts(&texts.iter().map(String::as_str).collect::<Vec<_>>(), 1);
                    let row = |p: Preserve| {
                        let i = if p == Preserve::TriggerLess { 1 } else { 2 + others.iter().position(|&o| o == p).unwrap_or(0) };
                        all.clone().narrow(0, i, 1)
                    };
                    Encoded { trigger: all.clone().narrow(0, 0, 1), preserve: preserve.iter().map(|&p| (p, row(p))).collect() }
                })
                .collect()
        } else {
            Vec::new()
        };
        let bucketed = cfg.enable_bucket;
        Ok(Self { examples, pool, latents, cond, dirs, bucketed })
    }

    /// The examples of the `k`-th batch of the run (counting micro-batches): without buckets,
    /// `batch` consecutive draws of a per-pass permutation of the pool; with buckets, the
    /// batches of one size that [`epoch_batches`] deals out for each pass.
    pub fn batch(&self, k: usize, batch: usize, seed: u64) -> Vec<usize> {
        let n = self.pool.len();
        if !self.bucketed {
            return (0..batch).map(|b| k * batch + b).map(|pos| self.pool[permutation(seed, pos / n, n)[pos % n]]).collect();
        }
        let sizes: Vec<(usize, usize)> = self.pool.iter().map(|&i| self.examples[i].size).map(|(w, h)| (w as usize, h as usize)).collect();
        let per_epoch = batches_per_epoch(&sizes, batch);
        epoch_batches(&sizes, batch, seed, k / per_epoch).swap_remove(k % per_epoch).into_iter().map(|p| self.pool[p]).collect()
    }

    /// How many images of each training size one pass holds (repeats counted), by size.
    pub fn size_counts(&self) -> std::collections::BTreeMap<(u32, u32), usize> {
        let mut counts = std::collections::BTreeMap::new();
        for &i in &self.pool {
            *counts.entry(self.examples[i].size).or_default() += 1;
        }
        counts
    }
}

/// The order in which pass `epoch` visits the `n` pool entries.
fn permutation(seed: u64, epoch: usize, n: usize) -> Vec<usize> {
    let mut r = Rng::new(seed ^ 0x0ddc_0ffe_e000_0000 ^ (epoch as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let mut v: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let j = r.below(i + 1);
        v.swap(i, j);
    }
    v
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
