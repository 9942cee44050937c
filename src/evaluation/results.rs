//! What an evaluation measured: the scores of each model and the record of every image, as
//! `results.json` holds them (read by the report, the demo and the tests).
use crate::precision::Precision;
use serde::{Deserialize, Serialize};

/// The scores of one model (the base model or an adapter).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct ModelScores {
    pub name: String,
    pub path: Option<String>,
    /// Trigger-prompt images against the trigger-less prompt's text.
    pub prompt_similarity: f64,
    /// Trigger-prompt images against the training images.
    pub identity_similarity: f64,
    /// Trigger-less images against the base model's for the same prompt and seed (`None` for the base).
    pub kps: Option<f64>,
    /// Trigger-less images of one prompt among themselves, averaged over prompts.
    pub diversity: f64,
    /// Extra measures a caller adds (the demo's ground-truth measures).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub extra: std::collections::BTreeMap<String, f64>,
}

/// One generated image, by model, prompt, variant and seed.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ImageRecord {
    pub model: String,
    pub prompt_index: usize,
    /// `trigger` or `plain`.
    pub variant: String,
    pub prompt: String,
    pub seed: u64,
    /// Relative to the output folder.
    pub file: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct EvalResults {
    pub trigger: String,
    pub prompts: Vec<String>,
    pub seeds: Vec<u64>,
    pub steps: usize,
    pub sampler: String,
    pub cfg: f64,
    pub resolution: usize,
    /// The generating models' precision (absent: float32).
    #[serde(default, skip_serializing_if = "Precision::is_fp32")]
    pub precision: Precision,
    pub models: Vec<ModelScores>,
    pub images: Vec<ImageRecord>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_precision_is_recorded_when_it_is_not_float32() {
        let json =
            r#"{"trigger":"sks","prompts":[],"seeds":[],"steps":1,"sampler":"ddim","cfg":1.0,"resolution":64,"models":[],"images":[]}"#;
        let mut r: EvalResults = serde_json::from_str(json).unwrap();
        assert_eq!(r.precision, Precision::Fp32, "an older results.json reads as float32");
        assert_eq!(serde_json::to_string(&r).unwrap(), json, "float32 results keep their bytes");
        r.precision = Precision::Fp16;
        assert!(serde_json::to_string(&r).unwrap().contains(r#""precision":"fp16""#));
    }
}
