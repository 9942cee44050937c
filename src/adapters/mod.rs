//! Adapters on top of a frozen base model: LoRA branches, their run-time weights, and the files
//! that carry them between tools, and the files a training run keeps beside them.
pub mod lora;
pub mod lora_file;
pub mod run_paths;
