//! Training adapters: the CAT objective, captions and triggers, the parameters and their
//! optimiser, and the loop.
pub mod adamw;
pub mod checkpoint;
pub mod config;
pub mod data;
pub mod objective;
pub mod params;
pub mod schedule;
pub mod trainer;
pub mod trigger;
