//! What a trained adapter file says about itself: kohya's `ss_*` training keys and `sshs_*`
//! hashes, Stability AI's `modelspec.*` keys (title, architecture, trigger phrase) that
//! AUTOMATIC1111's and ComfyUI's LoRA browsers show, and catlora's own keys (method, trigger, λ,
//! the settings). Two rules: no absolute local paths (folders appear by name only) and no clock
//! times or session ids, so the same run writes the same bytes.
use super::config::{Method, TrainConfig};
use crate::adapters::lora_file::{self, Format, LoraFile};
use crate::io::folder_name;
use crate::io::safetensors::StoreAs;
use anyhow::Result;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::Path;

/// The base model, as the keys that describe it need it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BaseModel {
    /// Stable Diffusion 2.x: its text encoder (OpenCLIP ViT-H) is 1024 wide, SD 1.x's 768.
    pub v2: bool,
    pub v_prediction: bool,
    /// The model folder's name.
    pub name: String,
}

impl BaseModel {
    pub fn new(cross_attention_dim: usize, v_prediction: bool, dir: &Path) -> Self {
        Self { v2: cross_attention_dim == 1024, v_prediction, name: folder_name(dir) }
    }

    /// kohya's `ss_base_model_version`: `sd_v1`, `sd_v2`, with `_v` for v-prediction.
    pub fn version(&self) -> String {
        format!("sd_{}{}", if self.v2 { "v2" } else { "v1" }, if self.v_prediction { "_v" } else { "" })
    }

    /// `modelspec.architecture`, in the model spec's names.
    pub fn architecture(&self) -> &'static str {
        match (self.v2, self.v_prediction) {
            (false, _) => "stable-diffusion-v1/lora",
            (true, false) => "stable-diffusion-v2-512/lora",
            (true, true) => "stable-diffusion-v2-768-v/lora",
        }
    }
}

/// One image folder of the run, as kohya's `ss_dataset_dirs` and `ss_tag_frequency` list it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DatasetDir {
    pub name: String,
    pub repeats: usize,
    pub images: usize,
    /// How many captions hold each comma-separated tag.
    pub tags: BTreeMap<String, usize>,
}

impl DatasetDir {
    pub fn count_caption(&mut self, caption: &str) {
        for tag in caption.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            *self.tags.entry(tag.to_string()).or_default() += 1;
        }
    }
}

/// The settings as stored in the file: every path reduced to its last component.
pub fn portable_config(cfg: &TrainConfig) -> Result<Value> {
    let mut c = cfg.clone();
    let strip = |p: &mut std::path::PathBuf| *p = folder_name(p).into();
    strip(&mut c.model);
    strip(&mut c.out);
    for concept in &mut c.concepts {
        strip(&mut concept.data);
        if let Some(d) = &mut concept.class_data {
            strip(d);
        }
    }
    Ok(serde_json::to_value(&c)?)
}

/// Every key of a run's adapter after `step` of `cfg.steps` steps.
/// `buckets`: how many images (repeats counted) train at each size (width, height).
pub fn adapter_metadata(
    cfg: &TrainConfig,
    base: &BaseModel,
    dirs: &[DatasetDir],
    buckets: &BTreeMap<(u32, u32), usize>,
    step: usize,
) -> Result<BTreeMap<String, String>> {
    let output_name = cfg.out.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let triggers: Vec<&str> = cfg.concepts.iter().map(|c| c.trigger.as_str()).collect();
    let py_bool = |b: bool| if b { "True" } else { "False" }.to_string();
    let lambda = cfg.lambda();
    let mut m = BTreeMap::new();
    let mut put = |k: &str, v: String| {
        m.insert(k.to_string(), v);
    };
    put("catlora_method", cfg.method.name().into());
    put("catlora_trigger", triggers.join(","));
    put("catlora_cat_weight", format!("{lambda}"));
    let preserve: Vec<String> = cfg.preserve_terms().iter().map(|p| format!("{}:{}", p.target.name(), p.weight)).collect();
    put("catlora_preserve", preserve.join(","));
    if cfg.method == Method::Dco {
        put("catlora_dco_beta", format!("{}", cfg.dco_beta));
    }
    put("catlora_config", serde_json::to_string(&portable_config(cfg)?)?);
    put("ss_output_name", output_name.clone());
    put("ss_sd_model_name", base.name.clone());
    put("ss_base_model_version", base.version());
    put("ss_v2", py_bool(base.v2));
    put("ss_steps", step.to_string());
    put("ss_max_train_steps", cfg.steps.to_string());
    put("ss_learning_rate", format!("{}", cfg.lr));
    put("ss_unet_lr", format!("{}", cfg.unet_lr.unwrap_or(cfg.lr)));
    if !cfg.text_encoder_targets.is_empty() {
        put("ss_text_encoder_lr", format!("{}", cfg.text_encoder_lr.unwrap_or(cfg.lr)));
    }
    put("ss_lr_scheduler", format!("{:?}", cfg.lr_schedule).to_lowercase());
    put("ss_lr_warmup_steps", cfg.warmup.to_string());
    put("ss_optimizer", format!("AdamW(betas=({}, {}),eps={},weight_decay={})", cfg.beta1, cfg.beta2, cfg.eps, cfg.weight_decay));
    put("ss_batch_size_per_device", cfg.batch.to_string());
    put("ss_gradient_accumulation_steps", cfg.grad_accum.to_string());
    put("ss_max_grad_norm", format!("{}", cfg.max_grad_norm));
    put("ss_resolution", format!("({}, {})", cfg.resolution, cfg.resolution));
    put("ss_seed", cfg.seed.to_string());
    put("ss_noise_offset", format!("{}", cfg.noise_offset));
    put("ss_min_snr_gamma", format!("{}", cfg.min_snr_gamma));
    put("ss_flip_aug", py_bool(cfg.flip));
    put("ss_random_crop", py_bool(cfg.random_crop));
    put("ss_enable_bucket", py_bool(cfg.enable_bucket));
    if cfg.enable_bucket {
        put("ss_min_bucket_reso", cfg.min_bucket_reso.to_string());
        put("ss_max_bucket_reso", cfg.max_bucket_reso.to_string());
        put("ss_bucket_no_upscale", py_bool(false));
        let list: serde_json::Map<String, Value> = buckets
            .iter()
            .enumerate()
            .map(|(i, (&(w, h), &count))| (i.to_string(), json!({"resolution": [w, h], "count": count})))
            .collect();
        put("ss_bucket_info", serde_json::to_string(&json!({ "buckets": list }))?);
    }
    if cfg.method == Method::Dreambooth {
        put("ss_prior_loss_weight", format!("{}", cfg.prior_weight));
    }
    put("ss_training_comment", format!("catlora {} (lambda {lambda})", cfg.method.name()));
    put("ss_num_train_images", dirs.iter().map(|d| d.images * d.repeats).sum::<usize>().to_string());
    let dataset_dirs: serde_json::Map<String, Value> =
        dirs.iter().map(|d| (d.name.clone(), json!({"n_repeats": d.repeats, "img_count": d.images}))).collect();
    put("ss_dataset_dirs", serde_json::to_string(&dataset_dirs)?);
    let tags: BTreeMap<&str, &BTreeMap<String, usize>> = dirs.iter().map(|d| (d.name.as_str(), &d.tags)).collect();
    put("ss_tag_frequency", serde_json::to_string(&tags)?);
    put("modelspec.sai_model_spec", "1.0.0".into());
    put("modelspec.architecture", base.architecture().into());
    put("modelspec.implementation", "diffusers".into());
    put("modelspec.title", output_name);
    put("modelspec.resolution", format!("{}x{}", cfg.resolution, cfg.resolution));
    put("modelspec.prediction_type", if base.v_prediction { "v" } else { "epsilon" }.into());
    put("modelspec.trigger_phrase", triggers.join(", "));
    Ok(m)
}

/// kohya's two hashes of a LoRA file (`sshs_model_hash`, `sshs_legacy_hash`), computed as its
/// `precalculate_safetensors_hashes` does: over the file serialised with only the `ss_*`
/// metadata (user-edited keys must not change the hash), the first over everything after the
/// header (the tensor data), the second the first 8 hex digits of the SHA-256 of the 64 KiB at
/// offset 1 MiB (empty, so a constant, for files under 1 MiB).
pub fn kohya_hashes(lora: &LoraFile, format: Format, store: StoreAs) -> Result<(String, String)> {
    let mut ss_only = lora.clone();
    ss_only.metadata.retain(|k, _| k.starts_with("ss_"));
    let bytes = lora_file::bytes(&ss_only, format, store, "")?;
    let header = u64::from_le_bytes(bytes[..8].try_into()?) as usize;
    let model = hex(&Sha256::digest(&bytes[8 + header..]));
    let legacy_range = bytes.len().min(0x100000)..bytes.len().min(0x110000);
    let legacy = hex(&Sha256::digest(&bytes[legacy_range]))[..8].to_string();
    Ok((model, legacy))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Adds the two kohya hashes to `lora`'s metadata.
pub fn add_hashes(lora: &mut LoraFile, format: Format, store: StoreAs) -> Result<()> {
    let (model, legacy) = kohya_hashes(lora, format, store)?;
    lora.metadata.insert("sshs_model_hash".into(), model);
    lora.metadata.insert("sshs_legacy_hash".into(), legacy);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::training::config::Concept;

    #[test]
    fn base_model_names_follow_kohya_and_the_model_spec() {
        let sd1 = BaseModel::new(768, false, Path::new("/models/sd15/"));
        assert_eq!((sd1.version(), sd1.architecture(), sd1.name.as_str()), ("sd_v1".into(), "stable-diffusion-v1/lora", "sd15"));
        let sd2 = BaseModel::new(1024, false, Path::new("sd2-base"));
        assert_eq!((sd2.version(), sd2.architecture()), ("sd_v2".into(), "stable-diffusion-v2-512/lora"));
        let sd2v = BaseModel::new(1024, true, Path::new("sd2"));
        assert_eq!((sd2v.version(), sd2v.architecture()), ("sd_v2_v".into(), "stable-diffusion-v2-768-v/lora"));
    }

    #[test]
    fn metadata_has_no_absolute_paths_and_counts_tags() {
        let cfg = TrainConfig {
            model: "/home/me/models/sd15".into(),
            out: "/home/me/out/teapot.safetensors".into(),
            concepts: vec![Concept {
                data: "/home/me/data/10_sks teapot".into(),
                trigger: "sks".into(),
                class: Some("teapot".into()),
                class_data: Some("/home/me/class".into()),
                repeats: 10,
            }],
            ..Default::default()
        };
        let mut dir = DatasetDir { name: "10_sks teapot".into(), repeats: 10, images: 2, ..Default::default() };
        dir.count_caption("sks teapot, on a table");
        dir.count_caption("sks teapot,  ");
        let m = adapter_metadata(&cfg, &BaseModel::new(768, false, &cfg.model), &[dir], &BTreeMap::new(), 900).unwrap();
        for (k, v) in &m {
            assert!(!v.contains("/home/me"), "{k} holds an absolute path: {v}");
        }
        assert_eq!(m["ss_output_name"], "teapot");
        assert_eq!(m["modelspec.title"], "teapot");
        assert_eq!(m["modelspec.trigger_phrase"], "sks");
        assert_eq!(m["ss_num_train_images"], "20");
        assert_eq!(m["ss_tag_frequency"], r#"{"10_sks teapot":{"on a table":1,"sks teapot":2}}"#);
        assert_eq!(m["ss_dataset_dirs"], r#"{"10_sks teapot":{"img_count":2,"n_repeats":10}}"#);
        assert_eq!((m["ss_v2"].as_str(), m["ss_base_model_version"].as_str()), ("False", "sd_v1"));
        let stored: TrainConfig = serde_json::from_str(&m["catlora_config"]).unwrap();
        assert_eq!((stored.model.to_str(), stored.concepts[0].data.to_str()), (Some("sd15"), Some("10_sks teapot")));
    }

    /// kohya's hashes of the kohya fixture, computed in Python with kohya's algorithm on the file
    /// as that library wrote it (`sha256(bytes[8 + header_len:])`, and of `bytes[0x100000:0x110000]`).
    #[test]
    fn hashes_match_kohyas_algorithm_on_the_fixture() {
        let path = crate::fixtures::fixture("lora-kohya/lora.safetensors");
        let unet = crate::models::config::UNetConfig::load(&crate::fixtures::fixture("tiny-sd/unet/config.json")).unwrap();
        let dev = burn::tensor::Device::flex();
        let w =
            crate::models::weights::Weights::open_dir(&crate::fixtures::fixture("tiny-sd/unet"), "diffusion_pytorch_model", &dev).unwrap();
        let mut unet = crate::models::unet::UNet::load(&w, &unet).unwrap();
        let known = crate::adapters::lora::Targets { unet: &mut unet, text_encoder: None }.known_modules();
        let lora = lora_file::read(&path, &known).unwrap();
        let (model, legacy) = kohya_hashes(&lora, Format::Kohya, StoreAs::F32).unwrap();
        assert_eq!(model, "f8cc58e77e9af479450d256c83a1a6887dddc713bc22c96ed8f8f09df35ccf94");
        // Under 1 MiB: the SHA-256 of nothing.
        assert_eq!(legacy, "e3b0c442");
        let mut with = lora.clone();
        with.metadata.insert("user_note".into(), "edited by hand".into());
        assert_eq!(kohya_hashes(&with, Format::Kohya, StoreAs::F32).unwrap().0, model, "non-ss keys do not change the hash");
    }
}
