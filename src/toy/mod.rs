//! A toy world in which the CAT paper's claim can be watched on a CPU, and the base models for
//! it: a tiny CLIP, VAE, text encoder and UNet pretrained on seeded images of coloured shapes
//! (see `world`), saved in the diffusers / transformers layouts the rest of the crate loads.
pub mod params;
pub mod world;
pub mod assets;
pub mod clip;
pub mod demo;
pub mod eval;
pub mod pretrain;

pub use pretrain::{PretrainOptions, default_assets_dir, pretrain};
