//! File formats and file-system helpers shared by every command.
pub mod atomic;
pub mod image;
pub mod safetensors;
