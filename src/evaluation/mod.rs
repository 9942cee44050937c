//! Evaluation: a CLIP model for embeddings, the metrics on them, and the `score` command that
//! applies the metrics to folders of images.
pub mod clip;
pub mod metrics;
pub mod score;
