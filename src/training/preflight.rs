//! What a run checks before it loads the model and caches the data: the settings, the output
//! path, a checkpoint's settings against this run's, every training image's header and the
//! memory each training size needs; so a bad run fails in seconds, not after the caching.
use super::checkpoint;
use super::config::{Method, TrainConfig};
use super::sample_prompt;
use crate::pipeline::txt2img::GenerateParams;
use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};

/// The settings a resumed run may change: how long it trains, when it saves and samples, where
/// and how it runs (the device, batched passes: the same gradients, rounded otherwise) and where
/// the adapter goes. Everything else changes the steps already taken.
const RESUMABLE: [&str; 13] = [
    "steps",
    "save_every",
    "sample_every",
    "sample_prompts",
    "sample_steps",
    "eval_every",
    "eval_prompts",
    "eval_seeds",
    "clip",
    "keep_best",
    "device",
    "batch_passes",
    "out",
];

/// Each setting that differs between a checkpoint's configuration and this run's (apart from
/// [`RESUMABLE`]), with both values; paths are compared after normalising.
pub fn settings_diff(saved: &serde_json::Value, now: &serde_json::Value) -> Vec<String> {
    let (Some(a), Some(b)) = (saved.as_object(), now.as_object()) else { return vec!["the saved settings are not an object".into()] };
    let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    let null = serde_json::Value::Null;
    keys.into_iter()
        .filter(|k| !RESUMABLE.contains(&k.as_str()))
        .filter_map(|k| {
            let (x, y) = (a.get(k).unwrap_or(&null), b.get(k).unwrap_or(&null));
            (normalise_paths(x) != normalise_paths(y)).then(|| format!("{k}: checkpoint {x}, now {y}"))
        })
        .collect()
}

/// JSON with every string that names an existing file or folder replaced by its canonical path,
/// and `./a/` written as `a`.
fn normalise_paths(v: &serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match v {
        Value::String(s) => {
            let p = Path::new(s);
            match p.canonicalize() {
                Ok(c) if !s.is_empty() => Value::String(c.display().to_string()),
                _ => Value::String(p.components().collect::<PathBuf>().display().to_string()),
            }
        }
        Value::Array(a) => Value::Array(a.iter().map(normalise_paths).collect()),
        Value::Object(o) => Value::Object(o.iter().map(|(k, v)| (k.clone(), normalise_paths(v))).collect()),
        other => other.clone(),
    }
}

/// Everything that can be refused before the model is loaded and the data cached: the
/// settings, the output path, the resume settings, every training image's header and the
/// memory the run needs.
pub fn preflight(cfg: &TrainConfig, resume: Option<&Path>) -> Result<Option<checkpoint::Checkpoint>> {
    cfg.validate()?;
    crate::device::parse(&cfg.device)?;
    if cfg.out.is_dir() {
        bail!("--out {} is a folder; give the LoRA file to write (e.g. {}/adapter.safetensors)", cfg.out.display(), cfg.out.display());
    }
    let parent = match cfg.out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent)
        .with_context(|| format!("--out {}: cannot create the folder {}", cfg.out.display(), parent.display()))?;
    tempfile::NamedTempFile::new_in(&parent)
        .with_context(|| format!("--out {}: cannot write in {}", cfg.out.display(), parent.display()))?;
    let ck = match resume {
        Some(dir) => {
            let ck = checkpoint::load(dir)?;
            let diff = settings_diff(&ck.state.config, &serde_json::to_value(cfg)?);
            if !diff.is_empty() {
                bail!(
                    "{}: the checkpoint was made with other settings; resume with the same ones (only {} may change):\n  {}",
                    dir.display(),
                    RESUMABLE.join(", "),
                    diff.join("\n  ")
                );
            }
            if ck.state.step > cfg.steps {
                bail!("{}: the checkpoint is at step {}, past --steps {}", dir.display(), ck.state.step, cfg.steps);
            }
            Some(ck)
        }
        None => None,
    };
    if let Some(dir) = cfg.clip.as_ref().filter(|_| cfg.eval_every > 0)
        && !dir.is_dir()
    {
        bail!("--clip {}: no such folder (a CLIP model in the transformers layout)", dir.display());
    }
    for c in &cfg.concepts {
        for image in crate::io::image::list_images(&c.data)? {
            crate::limits::check_image_header(&image)?;
        }
    }
    let configs = crate::pipeline::model::ModelConfigs::read(&cfg.model)?;
    // The batch whose activations one backward pass keeps: with --batch-passes every adapter pass
    // of a step (the diffusion term, each preservation term, the prior) at once.
    let dreambooth = cfg.method == Method::Dreambooth;
    let passes = if cfg.batch_passes {
        1 + cfg.preserve_terms().len() + usize::from(dreambooth)
    } else if dreambooth {
        2
    } else {
        1
    };
    for (w, h) in cfg.training_sizes() {
        let what = if cfg.enable_bucket { format!("the {w}x{h} bucket with --batch") } else { "--resolution and --batch".into() };
        configs.check_run(w, h, cfg.batch * passes, true, &what)?;
    }
    if cfg.sample_every > 0 {
        // Every sample's size and sampler now, not at the step that first samples (guided: two
        // latents).
        let scheduler = crate::schedulers::load(&cfg.model.join("scheduler").join("scheduler_config.json"))?;
        for line in &cfg.sample_prompts {
            let p = sample_prompt::parse(line, &GenerateParams { width: cfg.resolution, height: cfg.resolution, ..Default::default() })?;
            configs.check_run(p.width, p.height, 2, false, &format!("sample prompt `{line}`"))?;
            crate::schedulers::make(p.sampler, &scheduler, p.steps).with_context(|| format!("sample prompt `{line}`"))?;
        }
    }
    Ok(ck)
}
