//! Training adapters: the CAT objective, captions and triggers, the optimiser, and the loop.
pub mod adamw;
pub mod config;
pub mod data;
pub mod objective;
pub mod schedule;
pub mod checkpoint;
pub mod trainer;
pub mod trigger;
