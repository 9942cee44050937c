//! Evaluation: a CLIP model for embeddings, the metrics on them, the `score` command that
//! applies the metrics to folders of images, and `eval` with its HTML report.
pub mod clip;
pub mod eval;
pub mod metrics;
pub mod report;
pub mod results;
pub mod score;
