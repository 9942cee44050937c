//! Training adapters: the CAT objective, captions and triggers, the optimiser, and the loop.
pub mod adamw;
pub mod objective;
pub mod trigger;
