//! The Stable Diffusion components, one file each, and the pieces they share.
pub mod clip;
pub mod clip_encoder;
pub mod clip_text;
pub mod clip_vision;
pub mod config;
pub mod layers;
pub mod lora;
pub mod path;
pub mod random_weights;
pub mod tokenizer;
pub mod unet;
pub mod vae;
pub mod weights;
