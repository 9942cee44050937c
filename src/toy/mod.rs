//! A toy world in which the CAT paper's claim can be watched on a CPU, and the base models for
//! it: a tiny CLIP, VAE, text encoder and UNet pretrained on seeded 32 x 32 images of coloured
//! shapes, saved in the diffusers / transformers layouts the rest of the crate loads.
//!
//! * [`world`]: the seeded generator of captioned images, the "personal object" for the demo,
//!   and the ground-truth classifiers (colour, shape, size, background, personal look) that also
//!   read generated images;
//! * [`pretrain()`]: trains every base model from seeded random weights and writes
//!   `<out>/sd` (a `StableDiffusionPipeline` folder), `<out>/clip` (a `CLIPModel` folder) and
//!   `<out>/pretrain.json` (options, timings, losses, quality numbers);
//! * [`eval`]: prompt following and caption ranking measured with the world's classifiers;
//! * [`params`]: full-model training with the crate's host-side AdamW through the models'
//!   `visit`, half-precision rounding and saving in PyTorch's layout;
//! * [`clip`]: a trainable `CLIPModel` over the crate's CLIP text and vision transformers.
//!
//! The committed models live in `assets/toy/` ([`default_assets_dir`], embedded by [`assets`]);
//! they are what `pretrain(&default_assets_dir(), &PretrainOptions::default())` (the CLI's
//! `catlora toy pretrain --out assets/toy`) writes, less `sd/tokenizer/`.
pub mod architecture;
pub mod assets;
pub mod clip;
pub mod demo;
pub mod eval;
pub mod folders;
pub mod params;
pub mod pretrain;
pub mod reading;
pub mod world;

pub use pretrain::{PretrainOptions, default_assets_dir, pretrain};
