//! Hostile and broken inputs through the binary, one case per class of defect: every one ends in
//! exit code 1 (2 for a bad flag), a message that names the culprit, no panic, no abort, and no
//! file written outside the output folder.
use catlora::io::safetensors::{self, OwnedTensor};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

const EXE: &str = env!("CARGO_BIN_EXE_catlora");

fn fixtures() -> PathBuf {
    catlora::fixtures::fixtures_dir()
}

/// Runs the binary and checks a clean refusal: `code`, no panic, every needle in stderr.
fn refused(args: &[&str], code: i32, needles: &[&str]) {
    let out = Command::new(EXE).args(args).output().expect("cannot run the catlora binary");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "catlora {args:?}: exit {:?}, expected {code}:\n{err}", out.status);
    assert!(!err.contains("panicked"), "catlora {args:?} panicked:\n{err}");
    for n in needles {
        assert!(err.contains(n), "catlora {args:?}: stderr lacks `{n}`:\n{err}");
    }
}

/// A copy of the fixture pipeline whose `file` (relative) is edited by `edit`.
fn broken_model(root: &Path, file: &str, edit: impl FnOnce(&mut serde_json::Value)) -> PathBuf {
    let dir = root.join(file.replace('/', "-"));
    copy_dir(&fixtures().join("tiny-sd"), &dir);
    let path = dir.join(file);
    let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    edit(&mut v);
    std::fs::write(&path, v.to_string()).unwrap();
    dir
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.path().is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

fn generate_args<'a>(model: &'a str, out: &'a str) -> Vec<&'a str> {
    vec!["generate", "--model", model, "--prompt", "a teapot", "--steps", "2", "--width", "64", "--height", "64", "--out", out]
}

fn tensors(entries: &[(&str, Vec<usize>, Vec<f32>)]) -> BTreeMap<String, OwnedTensor> {
    entries.iter().map(|(n, s, d)| (n.to_string(), OwnedTensor { shape: s.clone(), data: d.clone() })).collect()
}

#[test]
fn config_values_that_divide_or_index_are_named() {
    let root = tempfile::tempdir().unwrap();
    let out = root.path().join("out").display().to_string();
    let cases: [(&str, &str, serde_json::Value, &str); 5] = [
        ("unet/config.json", "norm_num_groups", serde_json::json!(0), "norm_num_groups"),
        ("unet/config.json", "attention_head_dim", serde_json::json!(0), "attention_head_dim"),
        ("vae/config.json", "norm_num_groups", serde_json::json!(0), "norm_num_groups"),
        ("text_encoder/config.json", "num_attention_heads", serde_json::json!(0), "num_attention_heads"),
        ("vae/config.json", "scaling_factor", serde_json::json!(-1.0), "scaling_factor"),
    ];
    for (i, (file, key, value, named)) in cases.into_iter().enumerate() {
        let dir = broken_model(&root.path().join(i.to_string()), file, |v| v[key] = value);
        let model = dir.display().to_string();
        refused(&generate_args(&model, &out), 1, &[named, file.split('/').next().unwrap()]);
    }
}

#[test]
fn tokenizer_ids_outside_the_vocabulary_are_refused() {
    let root = tempfile::tempdir().unwrap();
    let dir = broken_model(root.path(), "text_encoder/config.json", |v| v["vocab_size"] = serde_json::json!(1000));
    let (model, out) = (dir.display().to_string(), root.path().join("out").display().to_string());
    refused(&generate_args(&model, &out), 1, &["vocab_size 1000", "tokenizer"]);
}

#[test]
fn malformed_safetensors_shapes_and_offsets_are_named() {
    let root = tempfile::tempdir().unwrap();
    let model = fixtures().join("tiny-sd").display().to_string();
    let out = root.path().join("out").display().to_string();
    // A shape whose product overflows, with no data.
    let huge = root.path().join("huge.safetensors");
    let header = r#"{"lora_unet_x.lora_down.weight":{"dtype":"F32","shape":[288230376151711744,64],"data_offsets":[0,0]}}"#;
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header.as_bytes());
    std::fs::write(&huge, bytes).unwrap();
    refused(&["inspect", huge.to_str().unwrap()], 1, &["huge.safetensors", "lora_unet_x.lora_down.weight"]);
    // Overlapping offsets.
    let overlap = root.path().join("overlap.safetensors");
    let header = r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}"#;
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header.as_bytes());
    bytes.extend_from_slice(&[0u8; 12]);
    std::fs::write(&overlap, bytes).unwrap();
    let mut args = generate_args(&model, &out);
    let lora = format!("{}", overlap.display());
    args.extend(["--lora", &lora]);
    refused(&args, 1, &["overlap.safetensors", "offsets"]);
}

#[test]
fn absurd_sizes_are_refused_before_allocating() {
    let root = tempfile::tempdir().unwrap();
    let model = fixtures().join("tiny-sd").display().to_string();
    let out = root.path().join("out").display().to_string();
    // An image whose header says 20000 x 20000 (the data is cut off: it is never decoded).
    let data = root.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let mut png = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut png, 20000, 20000);
        enc.set_color(png::ColorType::Rgb);
        let mut w = enc.write_header().unwrap();
        // One short chunk of data where gigabytes would follow.
        w.write_chunk(png::chunk::IDAT, &[0x78, 0x9c, 0x03, 0x00]).unwrap();
        std::mem::forget(w);
    }
    std::fs::write(data.join("big.png"), &png).unwrap();
    let d = data.display().to_string();
    let o = root.path().join("a.safetensors").display().to_string();
    refused(
        &["train", "--model", &model, "--data", &d, "--trigger", "sks", "--out", &o, "--steps", "1", "--resolution", "64"],
        1,
        &["big.png", "20000x20000"],
    );
    refused(
        &["score", "--clip", fixtures().join("tiny-clip").to_str().unwrap(), "--images", &d, "--prompt", "x"],
        1,
        &["big.png", "20000x20000"],
    );
    // Sizes that overflow or exceed memory.
    let mut args = generate_args(&model, &out);
    args.splice(7..9, ["--width", "18446744073709551600"]);
    refused(&args, 1, &["18446744073709551600"]);
    let mut args = generate_args(&model, &out);
    args.splice(7..11, ["--width", "4000", "--height", "4000"]);
    refused(&args, 1, &["--width/--height", "GB"]);
    refused(
        &["train", "--model", &model, "--data", &d, "--trigger", "sks", "--out", &o, "--rank", "1000000000"],
        1,
        &["--rank 1000000000"],
    );
    refused(&["generate", "--model", &model, "--prompt", "x", "--num-images", "99999999999", "--out", &out], 1, &["--num-images"]);
    // Benchmarks: timing lists, thread pools and UNet passes too large to allocate.
    refused(&["bench", "--unet", &model, "--iters", "99999999999999"], 1, &["--iters 99999999999999"]);
    refused(&["bench", "--unet", &model, "--threads", "100000"], 1, &["--threads 100000"]);
    refused(&["bench", "--sd15", "--pixels", "4096"], 1, &["sd15-4096", "GB"]);
    refused(&["toy", "pretrain", "--out", &out, "--steps-scale", "1e30"], 1, &["--steps-scale", "at most 1000"]);
    // Evaluation seeds: too many to list, or past the last u64; settings checked before any image.
    let prompts = root.path().join("prompts.txt");
    std::fs::write(&prompts, "a cat\n").unwrap();
    let (clip, lora) =
        (fixtures().join("tiny-clip").display().to_string(), fixtures().join("lora-kohya/lora.safetensors").display().to_string());
    let p = prompts.display().to_string();
    let eval = [
        "eval",
        "--model",
        &model,
        "--clip",
        &clip,
        "--adapter",
        &lora,
        "--data",
        &clip,
        "--trigger",
        "sks",
        "--prompts",
        &p,
        "--out",
        &out,
    ];
    refused(&[&eval[..], &["--seeds", "99999999999"]].concat(), 1, &["--seeds 99999999999"]);
    refused(
        &[&eval[..], &["--seeds", "3", "--first-seed", "18446744073709551614"]].concat(),
        1,
        &["--first-seed 18446744073709551614", "overflows"],
    );
    refused(&[&eval[..], &["--steps", "0", "--resolution", "64"]].concat(), 1, &["--steps", "0 sampling steps"]);
    // Text inputs that never end or are too large are refused before they are read.
    refused(&[&eval[..11], &["--prompts", "/dev/zero"], &eval[13..]].concat(), 1, &["/dev/zero", "not a regular file"]);
    let big = broken_model(root.path(), "unet/config.json", |_| {});
    std::fs::File::options().write(true).open(big.join("unet/config.json")).unwrap().set_len(65 << 20).unwrap();
    refused(&generate_args(big.to_str().unwrap(), &out), 1, &["unet/config.json", "68157440 bytes", "64 MiB"]);
    assert!(!root.path().join("out").exists(), "a refused evaluation wrote files");
}

#[test]
fn non_finite_numbers_are_refused_by_name() {
    let root = tempfile::tempdir().unwrap();
    let model = fixtures().join("tiny-sd").display().to_string();
    let out = root.path().join("out").display().to_string();
    // A LoRA tensor with a NaN.
    let nan = root.path().join("nan.safetensors");
    let m = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q";
    let (down, up) = (format!("{m}.lora_down.weight"), format!("{m}.lora_up.weight"));
    safetensors::write(&nan, &tensors(&[(&down, vec![1, 32], vec![f32::NAN; 32]), (&up, vec![32, 1], vec![0.0; 32])]), &BTreeMap::new())
        .unwrap();
    let mut args = generate_args(&model, &out);
    let lora = nan.display().to_string();
    args.extend(["--lora", &lora]);
    refused(&args, 1, &["nan.safetensors", &down, "non-finite"]);
    // Initial latents with an infinity.
    let lat = root.path().join("lat.safetensors");
    let mut v = vec![0.5f32; 4 * 32 * 32];
    v[7] = f32::INFINITY;
    safetensors::write(&lat, &tensors(&[("latents", vec![1, 4, 32, 32], v)]), &BTreeMap::new()).unwrap();
    let mut args = generate_args(&model, &out);
    let l = lat.display().to_string();
    args.extend(["--init-latents", &l]);
    refused(&args, 1, &["lat.safetensors", "latents", "non-finite"]);
    // Model weights with a NaN.
    let dir = root.path().join("nan-model");
    copy_dir(&fixtures().join("tiny-sd"), &dir);
    let vae = dir.join("vae/diffusion_pytorch_model.safetensors");
    let f = safetensors::SafeTensorsFile::open(&vae).unwrap();
    let mut t = BTreeMap::new();
    for n in f.names() {
        let (shape, mut data) = f.f32(n).unwrap();
        if n == "decoder.conv_out.bias" {
            data[0] = f32::NAN;
        }
        t.insert(n.clone(), OwnedTensor { shape, data });
    }
    drop(f);
    safetensors::write(&vae, &t, &BTreeMap::new()).unwrap();
    let model2 = dir.display().to_string();
    refused(&generate_args(&model2, &out), 1, &["decoder.conv_out.bias", "non-finite"]);
    // Training settings.
    let d = fixtures().join("tiny-clip").display().to_string();
    let o = root.path().join("a.safetensors").display().to_string();
    for (flag, value, named) in
        [("--lr", "NaN", "--lr"), ("--min-snr-gamma=-1", "", "--min-snr-gamma"), ("--max-grad-norm", "inf", "--max-grad-norm")]
    {
        let args = ["train", "--model", &model, "--data", &d, "--trigger", "sks", "--class", "cat", "--out", &o, flag, value];
        refused(&args[..if value.is_empty() { args.len() - 1 } else { args.len() }], 1, &[named]);
    }
    let toml = root.path().join("t.toml");
    std::fs::write(&toml, "beta1 = 1.5\n").unwrap();
    let t = toml.display().to_string();
    refused(
        &["train", "--model", &model, "--data", &d, "--trigger", "sks", "--class", "cat", "--out", &o, "--config", &t],
        1,
        &["--beta1 1.5", "t.toml"],
    );
}

#[test]
fn names_never_become_paths_outside_the_output() {
    let root = tempfile::tempdir().unwrap();
    // A sharded index that points outside the model folder.
    let dir = root.path().join("sharded");
    copy_dir(&fixtures().join("tiny-sd"), &dir);
    std::fs::rename(dir.join("vae/diffusion_pytorch_model.safetensors"), root.path().join("stolen.safetensors")).unwrap();
    let index = serde_json::json!({"weight_map": {"decoder.conv_out.bias": "../../stolen.safetensors"}});
    std::fs::write(dir.join("vae/diffusion_pytorch_model.safetensors.index.json"), index.to_string()).unwrap();
    let (model, out) = (dir.display().to_string(), root.path().join("out").display().to_string());
    refused(&generate_args(&model, &out), 1, &["../../stolen.safetensors", "not a file inside"]);
    // A DreamBooth trigger that looks like a path: class images stay under the output's folder.
    let work = root.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let d = fixtures().join("tiny-clip").display().to_string();
    let o = work.join("run/a.safetensors").display().to_string();
    let m = fixtures().join("tiny-sd").display().to_string();
    let toml = work.join("c.toml");
    std::fs::write(&toml, "class_images = 1\nsample_steps = 2\n").unwrap();
    let status = Command::new(EXE)
        .args(["train", "--model", &m, "--data", &d, "--trigger", "../../x", "--class", "teapot", "--method", "dreambooth"])
        .args(["--config", toml.to_str().unwrap(), "--steps", "1", "--resolution", "64", "--out", &o])
        .status()
        .unwrap();
    assert!(status.success());
    assert!(!root.path().join("x").exists() && !work.join("x").exists(), "a class-image folder escaped the output folder");
    let classes: Vec<_> = std::fs::read_dir(work.join("run/a.class-images")).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(classes.len(), 1, "{classes:?}");
}

#[test]
fn failures_come_before_the_work() {
    let root = tempfile::tempdir().unwrap();
    let m = fixtures().join("tiny-sd").display().to_string();
    let d = fixtures().join("tiny-clip").display().to_string();
    // --out that is a folder.
    let folder = root.path().display().to_string();
    refused(&["train", "--model", &m, "--data", &d, "--trigger", "sks", "--class", "cat", "--out", &folder], 1, &["--out", "is a folder"]);
    // A resume with other settings names each setting and both values.
    let o = root.path().join("r.safetensors").display().to_string();
    let base = ["train", "--model", &m, "--data", &d, "--trigger", "sks", "--class", "cat", "--resolution", "64", "--out", &o];
    let status = Command::new(EXE).args(base).args(["--steps", "2", "--save-every", "1"]).status().unwrap();
    assert!(status.success());
    let ck = root.path().join("r.checkpoint").display().to_string();
    refused(&[&base[..], &["--steps", "3", "--lr", "0.001", "--resume", &ck]].concat(), 1, &["lr: checkpoint 0.0001, now 0.001"]);
    // `./` and trailing slashes are the same path.
    let d2 = format!("{d}/");
    let same = [
        "train",
        "--model",
        &m,
        "--data",
        &d2,
        "--trigger",
        "sks",
        "--class",
        "cat",
        "--resolution",
        "64",
        "--out",
        &o,
        "--steps",
        "3",
        "--resume",
        &ck,
    ];
    let status = Command::new(EXE).args(same).status().unwrap();
    assert!(status.success(), "a trailing slash counted as another data folder");
    // Seeds that run out after the first image: refused before any image is written.
    let out = root.path().join("seeds");
    let args = [&generate_args(&m, out.to_str().unwrap())[..], &["--seed", "18446744073709551615", "--num-images", "2"]].concat();
    refused(&args, 1, &["--seed 18446744073709551615", "overflows"]);
    assert!(std::fs::read_dir(&out).map_or(true, |mut d| d.next().is_none()), "a partial output was written");
    // A bad flag is clap's exit 2.
    refused(&["generate", "--width", "wide"], 2, &["--width"]);
}
