//! Adapters on top of a frozen base model: LoRA branches, their run-time weights, and the files
//! that carry them between tools.
pub mod lora;
pub mod lora_file;
