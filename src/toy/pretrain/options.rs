//! What a pretraining run takes: each stage's length, batch and learning rate, and where the
//! committed models and the tokenizer are.
use crate::toy::folders::TOKENIZER_FILES;
use anyhow::{Context, Result, bail};
use serde::Serialize;
use serde_json::Value;
use std::path::PathBuf;

/// Where the committed toy models live: `assets/toy` of this crate's source tree (`sd/`, the
/// Stable Diffusion folder without its tokenizer, and `clip/`, the CLIP folder). They are
/// embedded in the binary; `toy::assets::materialise` writes loadable folders (it copies the one
/// committed tokenizer, `clip/tokenizer*.json`, into `sd/tokenizer/`).
pub fn default_assets_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("assets/toy")
}

/// Length, batch and peak learning rate of one training stage.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct StageOptions {
    pub steps: usize,
    pub batch: usize,
    pub lr: f64,
}

/// A pretraining run's settings; `pretrain.json` records those that shape the weights.
#[derive(Clone, Debug, Serialize)]
pub struct PretrainOptions {
    #[serde(skip)]
    pub seed: u64,
    pub clip: StageOptions,
    pub vae: StageOptions,
    pub unet: StageOptions,
    /// World images encoded once for the UNet stage.
    pub unet_pool: usize,
    /// Decay of the UNet weights' moving average (the saved weights).
    pub ema_decay: f64,
    /// Weight of the VAE's KL term (per-element means of both terms).
    pub vae_kl: f64,
    /// A folder with `tokenizer.json` and `tokenizer_config.json` (the CLIP BPE); `None`: the
    /// committed `assets/toy/clip`, else the fixtures' `tiny-clip`.
    #[serde(skip)]
    pub tokenizer_dir: Option<PathBuf>,
    /// Take the CLIP (and so the text encoder) from this earlier output folder instead of
    /// training it again, for experiments with later stages. The reused weights are exactly
    /// the saved ones (reinstalling them as training leaves them changes nothing), yet the later
    /// stages then differ from a full run's in the last bits (a reused VAE's reconstructions by
    /// about 1e-6 relative): floating-point results here depend on what the process computed
    /// before, which we did not pin down further. Full runs reproduce each other's bytes.
    #[serde(skip)]
    pub reuse_clip: Option<PathBuf>,
    /// The same for the VAE.
    #[serde(skip)]
    pub reuse_vae: Option<PathBuf>,
    /// Every this many UNet steps, write the moving-average UNet to `snapshots/unet-<step>/`
    /// (0: never).
    #[serde(skip)]
    pub snapshot_every: usize,
    /// Check prompt following and CLIP retrieval on the saved folders and put the numbers in
    /// `pretrain.json`.
    #[serde(skip)]
    pub evaluate: bool,
    /// Progress lines on stderr.
    #[serde(skip)]
    pub verbose: bool,
}

impl Default for PretrainOptions {
    /// The settings that made the committed weights.
    fn default() -> Self {
        Self {
            seed: 0,
            clip: StageOptions { steps: 1200, batch: 64, lr: 2e-3 },
            vae: StageOptions { steps: 2000, batch: 16, lr: 2e-3 },
            unet: StageOptions { steps: 4000, batch: 32, lr: 1e-3 },
            unet_pool: 6144,
            ema_decay: 0.998,
            vae_kl: 2e-5,
            tokenizer_dir: None,
            reuse_clip: None,
            reuse_vae: None,
            snapshot_every: 0,
            evaluate: true,
            verbose: true,
        }
    }
}

impl PretrainOptions {
    /// All stage lengths multiplied by `f` (at least one step each): `--steps` of the CLI.
    pub fn scaled(mut self, f: f64) -> Self {
        for s in [&mut self.clip, &mut self.vae, &mut self.unet] {
            s.steps = ((s.steps as f64 * f).round() as usize).max(1);
        }
        self
    }

    /// A few steps of everything with small batches: a smoke run of the whole path.
    pub fn smoke() -> Self {
        Self {
            clip: StageOptions { steps: 3, batch: 8, lr: 1e-3 },
            vae: StageOptions { steps: 3, batch: 4, lr: 1e-3 },
            unet: StageOptions { steps: 3, batch: 4, lr: 1e-3 },
            unet_pool: 16,
            evaluate: false,
            verbose: false,
            ..Self::default()
        }
    }
}

pub(super) fn parse<T: serde::de::DeserializeOwned>(v: Value, what: &str) -> Result<T> {
    serde_json::from_value(v).with_context(|| format!("the toy {what} configuration"))
}

pub(super) fn tokenizer_source(opts: &PretrainOptions) -> Result<PathBuf> {
    let candidates = match &opts.tokenizer_dir {
        Some(d) => vec![d.clone()],
        None => vec![default_assets_dir().join("clip"), crate::fixtures::fixture("tiny-clip")],
    };
    for c in &candidates {
        if TOKENIZER_FILES.iter().all(|f| c.join(f).is_file()) {
            return Ok(c.clone());
        }
    }
    bail!(
        "no CLIP tokenizer found (looked for {} in {}); pass a folder holding them",
        TOKENIZER_FILES.join(" and "),
        candidates.iter().map(|c| c.display().to_string()).collect::<Vec<_>>().join(", ")
    )
}
