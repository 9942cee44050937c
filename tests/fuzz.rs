//! Fuzzing on stable Rust: every reader of untrusted input gets arbitrary bytes and mutations of
//! valid files, and must return (an error is fine) without panicking. A fixed number of cases per
//! target, from fixed seeds, so CI is repeatable; `CATLORA_FUZZ_CASES=N` runs more (and
//! `CATLORA_FUZZ_SEED=S` other ones), e.g. `CATLORA_FUZZ_CASES=200000 cargo test --release --test fuzz`.
mod common;
use arbitrary::{Arbitrary, Unstructured};
use catlora::rng::Rng;
use common::fixtures;
use std::panic::{AssertUnwindSafe, catch_unwind};

fn cases() -> usize {
    std::env::var("CATLORA_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(3000)
}

fn base_seed() -> u64 {
    std::env::var("CATLORA_FUZZ_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or(0)
}

/// Random bytes of a random length (up to `max`).
fn bytes(rng: &mut Rng, max: usize) -> Vec<u8> {
    let n = rng.below(max + 1);
    (0..n).map(|_| rng.below(256) as u8).collect()
}

/// `valid` with a few bytes overwritten, inserted, removed or the tail cut.
fn mutate(valid: &[u8], rng: &mut Rng) -> Vec<u8> {
    let mut v = valid.to_vec();
    for _ in 0..1 + rng.below(4) {
        if v.is_empty() {
            break;
        }
        let i = rng.below(v.len());
        match rng.below(5) {
            0 => v[i] = rng.below(256) as u8,
            1 => v.insert(i, rng.below(256) as u8),
            2 => {
                v.remove(i);
            }
            3 => v.truncate(i),
            // A digit or quote in the JSON header makes numbers and strings go wrong.
            _ => v[i] = b"0123456789\"[]{},:-e9"[rng.below(20)],
        }
    }
    v
}

/// Runs `body` on `cases()` inputs; a panic fails the test with the case's seed.
fn fuzz(target: &str, mut body: impl FnMut(&mut Rng)) {
    for case in 0..cases() {
        let seed = base_seed().wrapping_mul(1_000_003).wrapping_add(case as u64);
        let mut rng = Rng::new(seed ^ target.len() as u64 ^ 0xf022);
        if catch_unwind(AssertUnwindSafe(|| body(&mut rng))).is_err() {
            panic!("{target}: case {case} (seed {seed}) panicked; rerun with CATLORA_FUZZ_SEED to reproduce");
        }
    }
}

#[test]
fn safetensors_headers() {
    let valid = std::fs::read(fixtures().join("lora-kohya/lora.safetensors")).unwrap();
    let small = {
        let t = std::collections::BTreeMap::from([(
            "a".to_string(),
            catlora::io::safetensors::OwnedTensor { shape: vec![2, 3], data: vec![1.0; 6] },
        )]);
        catlora::io::safetensors::serialize(&t, &Default::default()).unwrap()
    };
    fuzz("safetensors", |rng| {
        let _ = catlora::io::safetensors::check_bytes(&bytes(rng, 256));
        let _ = catlora::io::safetensors::check_bytes(&mutate(&small, rng));
        // The header of the real file (its data section is large), mutated.
        let _ = catlora::io::safetensors::check_bytes(&mutate(&valid[..valid.len().min(4096)], rng));
    });
}

#[test]
fn lora_keys_and_files() {
    let valid = std::fs::read(fixtures().join("lora-kohya/lora.safetensors")).unwrap();
    let peft = std::fs::read(fixtures().join("lora-diffusers/pytorch_lora_weights.safetensors")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("l.safetensors");
    let mut known = catlora::adapters::lora_file::KnownModules::default();
    known.unet.push("down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q".into());
    let mut n = 0;
    fuzz("lora", |rng| {
        let raw = bytes(rng, 64);
        let _ = catlora::adapters::lora_file::classify(&String::from_utf8_lossy(&raw));
        let mut u = Unstructured::new(&raw);
        if let Ok(s) = <&str>::arbitrary(&mut u) {
            let _ = catlora::adapters::lora_file::classify(s);
        }
        // Whole files, mutated, through the reader (a few hundred: each writes a file).
        n += 1;
        if n % 10 == 0 {
            std::fs::write(&path, mutate(if n % 20 == 0 { &peft } else { &valid }, rng)).unwrap();
            let _ = catlora::adapters::lora_file::read(&path, &known);
        }
    });
}

/// Mutations of a JSON text that keep it mostly JSON: values replaced by odd ones.
fn mutate_json(valid: &serde_json::Value, rng: &mut Rng) -> String {
    let odd = [
        serde_json::json!(0),
        serde_json::json!(-1),
        serde_json::json!(1e300),
        serde_json::json!(18446744073709551615u64),
        serde_json::json!([]),
        serde_json::json!([0, 0, 0, 0, 0, 0, 0, 0, 0]),
        serde_json::json!("x"),
        serde_json::json!(null),
        serde_json::json!(true),
        serde_json::json!(3),
    ];
    let mut v = valid.clone();
    if let Some(o) = v.as_object_mut() {
        let keys: Vec<String> = o.keys().cloned().collect();
        for _ in 0..1 + rng.below(3) {
            let k = &keys[rng.below(keys.len())];
            o.insert(k.clone(), odd[rng.below(odd.len())].clone());
        }
    }
    let text = v.to_string();
    if rng.below(4) == 0 { String::from_utf8_lossy(&mutate(text.as_bytes(), rng)).into_owned() } else { text }
}

fn read_json(rel: &str) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(fixtures().join(rel)).unwrap()).unwrap()
}

#[test]
fn model_and_scheduler_configs() {
    use catlora::models::config::{ClipTextConfig, UNetConfig, VaeConfig};
    let unet = read_json("tiny-sd/unet/config.json");
    let vae = read_json("tiny-sd/vae/config.json");
    let te = read_json("tiny-sd/text_encoder/config.json");
    let sched = read_json("tiny-sd2-v/scheduler/scheduler_config.json");
    fuzz("configs", |rng| {
        if let Ok(c) = serde_json::from_str::<UNetConfig>(&mutate_json(&unet, rng))
            && c.validate().is_ok()
        {
            // A valid config must also give a model shape without panicking.
            let _ = (c.heads(), c.downsampling());
        }
        if let Ok(c) = serde_json::from_str::<VaeConfig>(&mutate_json(&vae, rng)) {
            let _ = c.validate();
        }
        if let Ok(c) = serde_json::from_str::<ClipTextConfig>(&mutate_json(&te, rng)) {
            let _ = c.check();
        }
        if let Ok(c) = catlora::schedulers::SchedulerConfig::from_json(&mutate_json(&sched, rng)) {
            for kind in catlora::schedulers::SamplerKind::ALL {
                let _ = catlora::schedulers::make(kind, &c, 1 + rng.below(50));
            }
        }
        let _ = catlora::schedulers::SchedulerConfig::from_json(&String::from_utf8_lossy(&bytes(rng, 128)));
    });
}

#[test]
fn tokenizer_text_and_files() {
    let tok = catlora::models::tokenizer::ClipTokenizer::from_dir(&fixtures().join("tiny-sd2-v/tokenizer")).unwrap();
    let config = read_json("tiny-sd2-v/tokenizer/tokenizer_config.json");
    let dir = tempfile::tempdir().unwrap();
    for f in ["vocab.json", "merges.txt"] {
        std::fs::copy(fixtures().join("tiny-sd2-v/tokenizer").join(f), dir.path().join(f)).unwrap();
    }
    let mut n = 0;
    fuzz("tokenizer", |rng| {
        let raw = bytes(rng, 200);
        let _ = tok.encode_padded(&String::from_utf8_lossy(&raw), 77);
        let mut u = Unstructured::new(&raw);
        if let Ok(s) = <&str>::arbitrary(&mut u) {
            let _ = tok.encode(s);
        }
        n += 1;
        if n % 10 == 0 {
            std::fs::write(dir.path().join("tokenizer_config.json"), mutate_json(&config, rng)).unwrap();
            let _ = catlora::models::tokenizer::ClipTokenizer::from_dir(dir.path());
        }
    });
}

#[test]
fn image_headers() {
    let png = std::fs::read(fixtures().join("ddim_image.png")).unwrap();
    let webp_like = b"RIFF\x00\x00\x00\x00WEBPVP8 ".to_vec();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.png");
    let mut n = 0;
    fuzz("images", |rng| {
        n += 1;
        // Every fifth case decodes a file (each writes one).
        if n % 5 != 0 {
            return;
        }
        let data = match rng.below(3) {
            0 => mutate(&png, rng),
            1 => mutate(&webp_like, rng),
            _ => bytes(rng, 300),
        };
        std::fs::write(&path, data).unwrap();
        let _ = catlora::io::image::load_rgb(&path);
    });
}

#[test]
fn training_config_toml() {
    let valid = "model = \"m\"\nout = \"o.safetensors\"\nrank = 4\nlr = 1e-4\nsteps = 10\nresolution = 512\n\n[[concepts]]\ndata = \"d\"\ntrigger = \"sks\"\nclass = \"cat\"\n";
    fuzz("toml", |rng| {
        let text = String::from_utf8_lossy(&mutate(valid.as_bytes(), rng)).into_owned();
        if let Ok(c) = catlora::training::config::TrainConfig::from_toml_str(&text) {
            let _ = c.validate();
        }
        let _ = catlora::training::config::TrainConfig::from_toml_str(&String::from_utf8_lossy(&bytes(rng, 128)));
    });
}
