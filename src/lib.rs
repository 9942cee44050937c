//! catlora: Contrastive Adapter Training (CAT) of LoRA adapters for Stable Diffusion, and the
//! metrics that say how much of the base model's knowledge an adapter keeps.
//!
//! Modules follow the domain: `models` (tokenizer, CLIP text encoder, UNet, VAE), `adapters`
//! (LoRA), `schedulers`, `pipeline` (text to image), `training` (CAT) and `evaluation`.
pub mod adapters;
pub mod bench;
pub mod captions;
pub mod device;
pub mod evaluation;
pub mod fixtures;
pub mod io;
pub mod jobs;
pub mod kernels;
pub mod limits;
pub mod models;
pub mod pipeline;
pub mod precision;
pub mod rng;
pub mod schedulers;
pub mod toy;
pub mod training;
