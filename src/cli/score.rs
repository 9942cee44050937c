//! `catlora score`: CLIP metrics of a folder of images, as one JSON object on stdout.
use anyhow::Result;
use catlora::evaluation::clip::ClipModel;
use catlora::evaluation::score::{self, ScoreOptions};
use clap::Args;
use std::path::PathBuf;

/// Score a folder of generated images (or one image) with CLIP; prints one JSON object on stdout.
///
/// Always: `n_images` and `diversity` (1 - mean pairwise cosine similarity; needs at least two
/// images, so a single image gets a `notes` entry instead). With --prompt: `prompt_similarity`. With --identity-ref: `identity_similarity` to the
/// adapter's training images. With --base-images: `kps` (knowledge preservation), pairing each
/// image with the base model's image of the same file name.
#[derive(Args, Debug)]
pub struct ScoreArgs {
    /// transformers CLIPModel folder (config.json, model.safetensors, tokenizer,
    /// preprocessor_config.json).
    #[arg(long, value_name = "DIR")]
    pub clip: PathBuf,
    /// Folder of the images to score (png, jpg, jpeg, webp), or one image file.
    #[arg(long, value_name = "DIR|FILE")]
    pub images: PathBuf,
    /// The prompt the images were generated from.
    #[arg(long)]
    pub prompt: Option<String>,
    /// Folder of the adapter's training images.
    #[arg(long, value_name = "DIR")]
    pub identity_ref: Option<PathBuf>,
    /// Folder of the base model's images for the same prompts and seeds, named as in --images.
    #[arg(long, value_name = "DIR")]
    pub base_images: Option<PathBuf>,
    #[arg(long, value_name = "DEVICE", default_value = "cpu", hide_default_value = true, help = catlora::device::DEVICE_HELP)]
    pub device: String,
}

pub fn run(a: ScoreArgs) -> Result<()> {
    let device = catlora::device::parse(&a.device)?;
    let clip = ClipModel::load(&a.clip, &device)?;
    let opts = ScoreOptions { images: a.images, prompt: a.prompt, identity_ref: a.identity_ref, base_images: a.base_images };
    let json = score::score(&clip, &opts)?;
    println!("{}", serde_json::to_string_pretty(&json)?);
    Ok(())
}
