//! The Stable Diffusion components, one file each, and the pieces they share.
pub mod layers;
pub mod tokenizer;
pub mod weights;
