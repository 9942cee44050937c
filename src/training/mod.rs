//! Training adapters: the CAT objective, captions and triggers, the parameters and their
//! optimiser, and the loop.
pub mod adamw;
pub mod buckets;
pub mod checkpoint;
pub mod config;
pub mod data;
pub mod loss_scale;
pub mod metadata;
pub mod monitor;
pub mod objective;
pub mod params;
pub mod preflight;
pub mod sample_prompt;
pub mod schedule;
pub mod trainer;
pub mod trigger;
