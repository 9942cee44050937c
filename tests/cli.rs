//! The `catlora` binary end to end on the fixture model: outputs, determinism, and that bad input
//! ends in a named error and a non-zero exit, never a panic.
use catlora::io::image::read_png_text;
use catlora::io::safetensors::{self, OwnedTensor, SafeTensorsFile};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const EXE: &str = env!("CARGO_BIN_EXE_catlora");

fn fixtures() -> PathBuf {
    catlora::fixtures::fixtures_dir()
}
fn model() -> String {
    fixtures().join("tiny-sd").display().to_string()
}
fn kohya() -> String {
    fixtures().join("lora-kohya/lora.safetensors").display().to_string()
}

/// A fresh, empty scratch folder for one test.
fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("catlora-cli-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn catlora(args: &[&str]) -> Output {
    Command::new(EXE).args(args).output().expect("cannot run the catlora binary")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Runs and expects success; returns stdout.
fn ok(args: &[&str]) -> String {
    let out = catlora(args);
    assert!(out.status.success(), "catlora {args:?} failed:\n{}", text(&out.stderr));
    text(&out.stdout)
}

/// Runs and expects a clean failure whose stderr names every needle.
fn fails(args: &[&str], needles: &[&str]) {
    let out = catlora(args);
    let err = text(&out.stderr);
    assert!(!out.status.success(), "catlora {args:?} succeeded");
    assert!(!err.contains("panicked"), "catlora {args:?} panicked:\n{err}");
    for n in needles {
        assert!(err.contains(n), "catlora {args:?}: stderr lacks `{n}`:\n{err}");
    }
}

/// `generate` on the fixture at 64x64 with 3 steps, plus `extra` options.
fn generate(out: &Path, extra: &[&str]) {
    let m = model();
    let o = out.display().to_string();
    let mut args = vec!["generate", "--model", &m, "--prompt", "a photo of a cat", "--width", "64", "--height", "64"];
    args.extend(["--steps", "3", "--out", &o]);
    args.extend(extra);
    ok(&args);
}

fn pngs(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).filter(|p| p.extension().is_some_and(|e| e == "png")).collect();
    v.sort();
    v
}

fn parameters(png: &Path) -> String {
    read_png_text(png).unwrap().into_iter().find(|(k, _)| k == "parameters").expect("no parameters chunk").1
}

#[test]
fn help_lists_every_subcommand() {
    let help = ok(&["--help"]);
    for cmd in ["generate", "train", "convert", "inspect", "score", "eval", "demo", "bench"] {
        assert!(help.contains(cmd), "{cmd} missing from:\n{help}");
    }
    assert!(ok(&["generate", "--help"]).contains("<seed>-<i>.png"));
}

#[test]
fn generate_writes_one_png_with_parameters_and_is_deterministic() {
    let (a, b, c) = (scratch("gen-a"), scratch("gen-b"), scratch("gen-c"));
    generate(&a, &["--seed", "5", "--sampler", "euler-a", "--negative-prompt", "blurry"]);
    generate(&b, &["--seed", "5", "--sampler", "euler-a", "--negative-prompt", "blurry"]);
    generate(&c, &["--seed", "6", "--sampler", "euler-a", "--negative-prompt", "blurry"]);
    let files = pngs(&a);
    assert_eq!(files.len(), 1, "{files:?}");
    assert_eq!(files[0].file_name().unwrap(), "5-0.png");
    let p = parameters(&files[0]);
    assert!(
        p.starts_with(
            "a photo of a cat\nNegative prompt: blurry\nSteps: 3, Sampler: Euler a, CFG scale: 7.5, Seed: 5, Size: 64x64, Model: tiny-sd"
        ),
        "{p}"
    );
    let bytes = |d: &Path| std::fs::read(&pngs(d)[0]).unwrap();
    assert_eq!(bytes(&a), bytes(&b), "the same seed gave different PNGs");
    assert_ne!(bytes(&a), bytes(&c), "different seeds gave the same PNG");
    for d in [a, b, c] {
        std::fs::remove_dir_all(d).unwrap();
    }
}

#[test]
fn a_prompt_longer_than_the_text_encoder_reads_is_warned() {
    let out = scratch("long-prompt");
    let (m, o) = (model(), out.display().to_string());
    let long = vec!["cat"; 80].join(" ");
    let args = ["generate", "--model", &m, "--prompt", &long, "--width", "64", "--height", "64", "--steps", "1", "--out", &o];
    let run = catlora(&args);
    assert!(run.status.success(), "{}", text(&run.stderr));
    let warning = "warning: the prompt has 80 tokens; the text encoder reads 75 of them and drops the last 5";
    assert!(text(&run.stderr).contains(warning), "{}", text(&run.stderr));
    std::fs::remove_dir_all(out).unwrap();
}

#[test]
fn generate_in_half_precision_says_so_and_stays_close_to_float32() {
    let (a, h) = (scratch("gen-f32"), scratch("gen-f16"));
    generate(&a, &["--seed", "5"]);
    generate(&h, &["--seed", "5", "--precision", "fp16"]);
    let p = parameters(&pngs(&h)[0]);
    assert!(p.ends_with(", Precision: fp16"), "{p}");
    assert!(!parameters(&pngs(&a)[0]).contains("Precision"));
    let pixels = |d: &Path| catlora::io::image::load_rgb(&pngs(d)[0]).unwrap().into_raw();
    let (x, y) = (pixels(&a), pixels(&h));
    let mean = x.iter().zip(&y).map(|(a, b)| (*a as f64 - *b as f64).abs()).sum::<f64>() / x.len() as f64;
    assert!(mean <= 1.0, "fp16 image mean abs difference {mean} of 255");
    fails(&["generate", "--model", &model(), "--prompt", "a", "--out", "x", "--precision", "fp8"], &["fp8"]);
    for d in [a, h] {
        std::fs::remove_dir_all(d).unwrap();
    }
}

#[test]
fn generate_with_a_weighted_lora() {
    let (base, with) = (scratch("lora-base"), scratch("lora-with"));
    generate(&base, &["--sampler", "ddim"]);
    let lora = format!("{}:0.5", kohya());
    generate(&with, &["--sampler", "ddim", "--lora", &lora]);
    let files = pngs(&with);
    assert_eq!(files.len(), 1);
    assert!(parameters(&files[0]).starts_with("a photo of a cat <lora:lora:0.5>\n"));
    assert_ne!(std::fs::read(&files[0]).unwrap(), std::fs::read(&pngs(&base)[0]).unwrap(), "the LoRA changed nothing");
    std::fs::remove_dir_all(base).unwrap();
    std::fs::remove_dir_all(with).unwrap();
}

#[test]
fn generate_from_init_latents() {
    let out = scratch("init");
    let latents = fixtures().join("init-latents.safetensors").display().to_string();
    generate(&out, &["--init-latents", &latents, "--seed", "3"]);
    let names: Vec<_> = pngs(&out).iter().map(|p| p.file_name().unwrap().to_string_lossy().into_owned()).collect();
    assert_eq!(names, ["3-0.png"]);
    std::fs::remove_dir_all(out).unwrap();
}

/// A copy of the kohya fixture with one key no naming knows.
fn bogus_lora(dir: &Path) -> PathBuf {
    let src = SafeTensorsFile::open(Path::new(&kohya())).unwrap();
    let mut tensors = BTreeMap::new();
    for name in src.names() {
        let (shape, data) = src.f32(name).unwrap();
        tensors.insert(name.clone(), OwnedTensor { shape, data });
    }
    tensors.insert("lora_unet_bogus_layer.lora_down.weight".into(), OwnedTensor { shape: vec![4, 32], data: vec![0.0; 128] });
    let path = dir.join("bogus.safetensors");
    safetensors::write(&path, &tensors, src.metadata()).unwrap();
    path
}

#[test]
fn generate_bad_inputs_fail_cleanly() {
    let dir = scratch("bad");
    let out = dir.join("out").display().to_string();
    // Defaults, each replaced by an `extra` pair with the same flag.
    let defaults = [
        ("--model", model()),
        ("--prompt", "x".into()),
        ("--width", "64".into()),
        ("--height", "64".into()),
        ("--steps", "2".into()),
        ("--out", out.clone()),
    ];
    let run = |extra: &[&str], needles: &[&str]| {
        let mut args: Vec<String> = vec!["generate".into()];
        for (flag, value) in &defaults {
            if !extra.contains(flag) {
                args.extend([flag.to_string(), value.clone()]);
            }
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        fails(&args.iter().map(String::as_str).collect::<Vec<_>>(), needles);
    };
    let missing = dir.join("no-such-model").display().to_string();
    run(&["--model", &missing], &["no-such-model"]);
    run(&["--width", "40"], &["40x64", "multiple of"]);
    run(&["--sampler", "heun"], &["heun", "dpmpp-2m-karras"]);
    run(&["--steps", "0"], &["0 sampling steps"]);
    run(&["--device", "tpu"], &["tpu"]);
    let bogus = bogus_lora(&dir).display().to_string();
    run(&["--lora", &format!("{bogus}:0.7")], &["bogus.safetensors", "lora_unet_bogus_layer.lora_down.weight"]);
    run(&["--lora", "/no/such/lora.safetensors"], &["/no/such/lora.safetensors"]);
    run(&["--init-latents", "/no/such/latents.safetensors"], &["/no/such/latents.safetensors"]);
    let latents = fixtures().join("init-latents.safetensors").display().to_string();
    run(&["--init-latents", &latents, "--num-images", "2"], &["--num-images 2", "holds 1 latents"]);
    run(&["--init-latents", &latents, "--width", "128"], &["init-latents.safetensors", "`latents` has shape"]);
    assert!(!dir.join("out").exists() || pngs(&dir.join("out")).is_empty(), "a failed run wrote images");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn demo_refuses_bad_settings_before_any_work() {
    let dir = scratch("demo-bad");
    let out = dir.join("out").display().to_string();
    fails(&["demo", "--out", &out, "--guided-cfg=-1"], &["--guided-cfg -1", "positive"]);
    fails(&["demo", "--out", &out, "--guided-cfg", "nan"], &["--guided-cfg NaN"]);
    fails(&["demo", "--out", &out, "--cfg", "0"], &["--cfg 0", "positive"]);
    fails(&["demo", "--out", &out, "--seeds", "1"], &["--seeds 1", "use 2 to 100000"]);
    fails(&["demo", "--out", &out, "--seeds", "99999999999"], &["--seeds 99999999999", "use 2 to 100000"]);
    fails(&["demo", "--out", &out, "--seed", "18446744073709551615"], &["--seed 18446744073709551615", "overflows"]);
    // --models without a CLIP folder beside the pipeline.
    let models = dir.join("models");
    std::fs::create_dir_all(&models).unwrap();
    std::os::unix::fs::symlink(fixtures().join("tiny-sd"), models.join("sd")).unwrap();
    fails(&["demo", "--out", &out, "--models", models.to_str().unwrap()], &["clip/config.json"]);
    fails(&["demo", "--out", &out, "--jobs", "0"], &["--jobs 0", "at least 1"]);
    fails(&["demo", "--out", &out, "--preserve-every", "0"], &["--preserve-every 0", "out of range"]);
    assert!(!dir.join("out").exists(), "a refused demo wrote files");
    let _ = std::fs::remove_dir_all(dir);
}

/// Every tensor as (shape, f32 bits), by name.
fn tensors(path: &Path) -> BTreeMap<String, (Vec<usize>, Vec<u32>)> {
    let f = SafeTensorsFile::open(path).unwrap();
    f.names()
        .map(|n| {
            let (s, v) = f.f32(n).unwrap();
            (n.clone(), (s, v.iter().map(|x| x.to_bits()).collect()))
        })
        .collect()
}

#[test]
fn convert_round_trip_is_exact() {
    let dir = scratch("convert");
    let (peft, back) = (dir.join("peft.safetensors"), dir.join("kohya.safetensors"));
    let (m, p, b) = (model(), peft.display().to_string(), back.display().to_string());
    ok(&["convert", "--model", &m, &kohya(), &p, "--to", "diffusers"]);
    ok(&["convert", "--model", &m, &p, &b, "--to", "kohya"]);
    assert_eq!(tensors(&back), tensors(Path::new(&kohya())));
    // The diffusers form holds the same tensors as the fixture saved by diffusers itself.
    assert_eq!(tensors(&peft), tensors(&fixtures().join("lora-diffusers/pytorch_lora_weights.safetensors")));
    fails(&["convert", "--model", &m, &kohya(), &p, "--to", "onnx"], &["onnx"]);
    fails(&["convert", "--model", &m, "/no/such.safetensors", &p, "--to", "kohya"], &["/no/such.safetensors"]);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn inspect_reports_rank_and_alpha() {
    for extra in [vec![], vec!["--model".to_string(), model()]] {
        let mut args = vec!["inspect".to_string(), kohya()];
        args.extend(extra);
        let s = ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
        for needle in ["format: kohya", "rank: 4 ×128", "alpha: 8 (scale 2) ×128", "unet to_out.0: 32"] {
            assert!(s.contains(needle), "`{needle}` missing:\n{s}");
        }
    }
    let peft = fixtures().join("lora-diffusers/pytorch_lora_weights.safetensors").display().to_string();
    let s = ok(&["inspect", &peft]);
    assert!(s.contains("format: peft") && s.contains("rank: 4 ×128") && s.contains("alpha: 8"), "{s}");
    let dir = scratch("inspect");
    let bogus = bogus_lora(&dir).display().to_string();
    fails(&["inspect", &bogus], &["bogus.safetensors", "lora_unet_bogus_layer.lora_down.weight"]);
    fails(&["inspect", "/no/such/file.safetensors"], &["/no/such/file.safetensors"]);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn score_prints_one_json_object() {
    let images = scratch("score");
    generate(&images, &["--num-images", "2", "--sampler", "ddim"]);
    assert_eq!(pngs(&images).len(), 2);
    let clip = fixtures().join("tiny-clip").display().to_string();
    let dir = images.display().to_string();
    let stdout = ok(&["score", "--clip", &clip, "--images", &dir, "--prompt", "a photo of a cat"]);
    let v: serde_json::Value = serde_json::from_str(&stdout).expect("stdout is one JSON value");
    assert!(v["diversity"].is_number() && v["prompt_similarity"].is_number(), "{v}");
    assert_eq!(v["n_images"], 2);
    fails(&["score", "--clip", "/no/clip", "--images", &dir], &["/no/clip"]);
    std::fs::remove_dir_all(images).unwrap();
}

#[test]
fn train_options_merge_over_the_config_file() {
    let dir = scratch("train");
    let cfg = dir.join("run.toml");
    std::fs::write(&cfg, "model = \"base\"\nout = \"o.safetensors\"\nlr = 2e-4\n[[concepts]]\ndata = \"imgs\"\ntrigger = \"ohwx\"\n")
        .unwrap();
    let c = cfg.display().to_string();
    let s = ok(&["train", "--config", &c, "--rank", "2", "--flip", "--print-config"]);
    let t: toml::Value = toml::from_str(&s).unwrap();
    assert_eq!((t["rank"].as_integer(), t["lr"].as_float(), t["flip"].as_bool()), (Some(2), Some(2e-4), Some(true)));
    assert_eq!(t["concepts"][0]["trigger"].as_str(), Some("ohwx"));
    fails(&["train", "--config", &c, "--method", "magic"], &["magic"]);
    fails(&["train", "--data", "d", "--trigger", "t", "--out", "o"], &["--model"]);
    fails(&["train", "--config", "/no/such.toml"], &["/no/such.toml"]);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn train_writes_an_adapter_that_inspect_reads() {
    let dir = scratch("train-run");
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    for i in 0..2 {
        std::fs::copy(fixtures().join(format!("tiny-clip/probe-{i}.png")), data.join(format!("{i}.png"))).unwrap();
    }
    let out = dir.join("sks.safetensors").display().to_string();
    let (m, d) = (model(), data.display().to_string());
    let args = ["train", "--model", &m, "--data", &d, "--trigger", "sks", "--class", "square", "--steps", "2"];
    let mut run = args.to_vec();
    run.extend(["--resolution", "64", "--rank", "2", "--alpha", "1", "--format", "diffusers", "--out", &out]);
    ok(&run);
    let s = ok(&["inspect", &out, "--model", &m]);
    assert!(s.contains("format: peft") && s.contains("rank: 2 ×128") && s.contains("alpha: 1 (scale 0.5)"), "{s}");
    run.extend(["--resume", "/no/such/checkpoint"]);
    fails(&run, &["/no/such/checkpoint"]);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn bench_runs_the_fixture_unet() {
    let unet = fixtures().join("tiny-sd").display().to_string();
    let table = ok(&["bench", "--unet", &unet, "--iters", "1", "--threads", "2"]);
    assert!(table.contains("tiny-sd") && table.contains("forward (ms)") && table.contains("load average"), "{table}");
    let table = ok(&["bench", "--train", "--unet", &unet, "--iters", "1", "--threads", "2"]);
    assert!(table.contains("catlora CAT") && table.contains("CAT step / LoRA step (catlora)") && table.contains("load average"), "{table}");
    fails(&["bench", "--unet", "/no/unet"], &["/no/unet"]);
    fails(&["bench", "--unet", &unet, "--device", "tpu"], &["tpu"]);
}

#[test]
fn bench_clip_prints_images_per_second() {
    let clip = fixtures().join("tiny-clip").display().to_string();
    let table = ok(&["bench", "--clip", &clip]);
    assert!(table.contains("images/s") && table.contains("tiny-clip") && table.contains("ViT-B/32"), "{table}");
    fails(&["bench", "--clip", "/no/clip"], &["/no/clip"]);
}

#[test]
fn kohya_folder_layout_caption_extension_and_adapter_metadata() {
    let dir = scratch("kohya");
    let concept = dir.join("train").join("10_sks square");
    std::fs::create_dir_all(&concept).unwrap();
    for i in 0..2 {
        std::fs::copy(fixtures().join(format!("tiny-clip/probe-{i}.png")), concept.join(format!("{i}.png"))).unwrap();
        std::fs::write(concept.join(format!("{i}.caption")), "sks square, red").unwrap();
    }
    let (m, d) = (model(), dir.join("train").display().to_string());
    let out = dir.join("sq.safetensors");
    let o = out.display().to_string();
    // The folder's name gives repeats, trigger and class; no --trigger needed.
    let s = ok(&["train", "--model", &m, "--data", &d, "--out", &o, "--print-config"]);
    let t: toml::Value = toml::from_str(&s).unwrap();
    let c = &t["concepts"][0];
    assert_eq!((c["trigger"].as_str(), c["class"].as_str(), c["repeats"].as_integer()), (Some("sks"), Some("square"), Some(10)));
    assert_eq!((t["save_precision"].as_str(), t["caption_extension"].as_str()), (Some("fp16"), Some(".txt")));
    // A folder of images without a trigger is an error that says what to give.
    let flat = concept.display().to_string();
    fails(&["train", "--model", &m, "--data", &flat, "--out", &o], &["--trigger", "kohya"]);
    // Captions of another extension are reported, not replaced by the default caption.
    let base = ["train", "--model", &m, "--data", &d, "--steps", "2", "--resolution", "64", "--rank", "2", "--out", &o];
    fails(&base, &["0.caption", "--caption-extension .caption"]);
    let mut run = base.to_vec();
    let prompts = dir.join("prompts.txt");
    std::fs::write(&prompts, "# kohya's sample syntax\nsks square --n blurry --s 2 --d 5 --l 6 --ss euler_a\n").unwrap();
    let pf = prompts.display().to_string();
    fails(&[&base[..], &["--caption-dropout", "2"]].concat(), &["--caption-dropout 2"]);
    // A sample size the model cannot make is refused before any training step.
    let huge = ["--sample-every", "1", "--sample-prompt", "sks --w 100 --h 64"];
    fails(&[&base[..], &huge].concat(), &["sample prompt `sks --w 100 --h 64`", "100x64"]);
    let long = ["--sample-every", "1", "--sample-prompt", "sks --s 5000"];
    fails(&[&base[..], &long].concat(), &["sample prompt `sks --s 5000`", "5000 sampling steps"]);
    assert!(!out.exists(), "nothing written for a refused run");
    // Shuffled captions are encoded per step (the path text-encoder training takes).
    run.extend(["--caption-extension", ".caption", "--save-precision", "bf16", "--sample-every", "2", "--sample-prompts", &pf]);
    run.extend(["--shuffle-caption", "--keep-tokens", "1", "--precision", "fp16"]);
    ok(&run);
    // 3x3 convolutions are named as such, not as layers that do not exist.
    fails(&[&run[..], &["--targets", "attn,conv1"]].concat(), &["conv1", "3x3 convolutions"]);
    // The sample carries its settings as AUTOMATIC1111 infotext, the adapter as a LoRA tag.
    let p = parameters(&dir.join("sq.samples/step-000002-0-trigger.png"));
    for needle in ["sks square <lora:sq:1>", "Negative prompt: blurry", "Steps: 2,", "Sampler: Euler a", "CFG scale: 6.0", "Seed: 5,"] {
        assert!(p.contains(needle), "`{needle}` missing from {p}");
    }
    assert!(p.ends_with(", Precision: fp16"), "a half-precision run's sample says so: {p}");
    let f = SafeTensorsFile::open(&out).unwrap();
    assert!(f.names().all(|n| matches!(f.info(n).unwrap().dtype, catlora::io::safetensors::Dtype::BF16)));
    let md = f.metadata();
    assert_eq!(md["ss_output_name"], "sq");
    assert_eq!(md["ss_num_train_images"], "20");
    assert_eq!(md["ss_tag_frequency"], r#"{"10_sks square":{"red":2,"sks square":2}}"#);
    assert_eq!(md["modelspec.architecture"], "stable-diffusion-v1/lora");
    assert_eq!(md["sshs_model_hash"].len(), 64);
    let root = dir.display().to_string();
    for (k, v) in md {
        assert!(!v.contains(&root), "metadata `{k}` holds a local path: {v}");
    }
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn aspect_ratio_buckets_batch_within_one_size() {
    let dir = scratch("buckets");
    let data = dir.join("images");
    std::fs::create_dir_all(&data).unwrap();
    // Two wide images, one tall, one nearly square: three buckets of the 64 px area.
    let stripes = |w: u32, h: u32| -> Vec<u8> { (0..w * h).flat_map(|i| [(i % w * 2) as u8, (i / w * 2) as u8, 90]).collect() };
    for (name, w, h) in [("wide-0", 120, 60), ("wide-1", 120, 60), ("tall", 60, 120)] {
        catlora::io::image::save_png(&data.join(format!("{name}.png")), &stripes(w, h), w, h, &[]).unwrap();
    }
    std::fs::copy(fixtures().join("tiny-clip/probe-0.png"), data.join("square.png")).unwrap();
    let (m, d, o) = (model(), data.display().to_string(), dir.join("b.safetensors").display().to_string());
    let base = ["train", "--model", &m, "--data", &d, "--trigger", "sks", "--class", "shape", "--rank", "2", "--out", &o];
    let buckets = ["--enable-bucket", "--min-bucket-reso", "32", "--max-bucket-reso", "128", "--bucket-reso-steps", "16"];
    fails(&[&base[..], &buckets[..5], &["--bucket-reso-steps", "12", "--resolution", "64"]].concat(), &["--bucket-reso-steps 12"]);
    fails(&[&base[..], &buckets[..], &["--resolution", "256"]].concat(), &["--resolution 256", "--max-bucket-reso 128"]);
    // Batches of two: a mixed batch could not stack its latents; random crops per bucket too.
    let run = [&base[..], &buckets[..], &["--resolution", "64", "--steps", "4", "--batch", "2", "--flip"]].concat();
    ok(&run);
    let md = SafeTensorsFile::open(Path::new(&o)).unwrap().metadata().clone();
    assert_eq!(md["ss_enable_bucket"], "True");
    let info: serde_json::Value = serde_json::from_str(&md["ss_bucket_info"]).unwrap();
    let want =
        r#"{"buckets":{"0":{"count":1,"resolution":[48,80]},"1":{"count":1,"resolution":[64,64]},"2":{"count":2,"resolution":[80,48]}}}"#;
    assert_eq!(info, serde_json::from_str::<serde_json::Value>(want).unwrap());
    let first = std::fs::read(&o).unwrap();
    ok(&[&run[..], &["--random-crop"]].concat());
    assert_ne!(std::fs::read(&o).unwrap(), first, "random crops train on other pixels");
    ok(&run);
    assert_eq!(std::fs::read(&o).unwrap(), first, "same seed, same adapter");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn preservation_targets_their_amortisation_and_dco() {
    let dir = scratch("preserve");
    let data = dir.join("images");
    std::fs::create_dir_all(&data).unwrap();
    for i in 0..2 {
        std::fs::copy(fixtures().join(format!("tiny-clip/probe-{i}.png")), data.join(format!("{i}.png"))).unwrap();
        std::fs::write(data.join(format!("{i}.txt")), "a qzx token square, red").unwrap();
    }
    let (m, d) = (model(), data.display().to_string());
    let out = dir.join("p.safetensors");
    let o = out.display().to_string();
    let base = ["train", "--model", &m, "--data", &d, "--trigger", "qzx token", "--resolution", "64", "--rank", "2", "--out", &o];
    let with_class = [&base[..], &["--class", "square"]].concat();
    fails(&[&base[..], &["--preserve", "bogus:1"]].concat(), &["bogus", "trigger-less, class, blank"]);
    fails(&[&base[..], &["--preserve", "class"]].concat(), &["--preserve class", "--class"]);
    fails(&[&with_class[..], &["--preserve", "blank,blank:2"]].concat(), &["`blank` twice"]);
    fails(&[&with_class[..], &["--preserve", "blank", "--cat-weight", "2"]].concat(), &["--cat-weight 2", "trigger-less:2"]);
    fails(&[&with_class[..], &["--preserve-every", "0"]].concat(), &["--preserve-every 0"]);
    fails(&[&with_class[..], &["--method", "dco", "--dco-beta", "0"]].concat(), &["--dco-beta 0"]);
    assert!(!out.exists(), "nothing written for a refused run");

    // Three targets, computed on every second step (steps 1 and 3) with twice the weight. The
    // adapter starts as the identity (its B is zero), so the terms are 0 at step 1.
    let three = [&with_class[..], &["--steps", "3", "--preserve", "trigger-less:1,class:0.5,blank", "--preserve-every", "2"]].concat();
    ok(&three);
    let log = std::fs::read_to_string(dir.join("p.log.jsonl")).unwrap();
    let lines: Vec<serde_json::Value> = log.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let term = |i: usize, k: &str| lines[i][k].as_f64().unwrap();
    for k in ["cat", "class", "blank"] {
        assert!(term(0, k) == 0.0 && term(1, k) == 0.0 && term(2, k) > 0.0, "{k}: {log}");
    }
    let total = term(2, "diffusion") + 2.0 * (term(2, "cat") + 0.5 * term(2, "class") + term(2, "blank"));
    assert!((term(2, "loss") - total).abs() <= 1e-9 * total, "{log}");
    assert_eq!(term(1, "loss"), term(1, "diffusion"));
    let md = SafeTensorsFile::open(&out).unwrap().metadata().clone();
    assert_eq!(md["catlora_preserve"], "trigger-less:1,class:0.5,blank:1");

    // DCO: the logged loss is softplus(β (d − d_ref)), positive, beside the plain diffusion loss.
    ok(&[&base[..], &["--steps", "2", "--method", "dco", "--dco-beta", "100"]].concat());
    let log = std::fs::read_to_string(dir.join("p.log.jsonl")).unwrap();
    for l in log.lines() {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        let (dco, loss) = (v["dco"].as_f64().unwrap(), v["loss"].as_f64().unwrap());
        assert!(dco > 0.0 && loss == dco && v["cat"].as_f64() == Some(0.0), "{l}");
    }
    let md = SafeTensorsFile::open(&out).unwrap().metadata().clone();
    assert_eq!((md["catlora_method"].as_str(), md["catlora_dco_beta"].as_str()), ("dco", "100"));
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn evaluation_during_training_and_keep_best() {
    let dir = scratch("monitor");
    let data = dir.join("images");
    std::fs::create_dir_all(&data).unwrap();
    for i in 0..2 {
        std::fs::copy(fixtures().join(format!("tiny-clip/probe-{i}.png")), data.join(format!("{i}.png"))).unwrap();
    }
    let (m, d, clip) = (model(), data.display().to_string(), fixtures().join("tiny-clip").display().to_string());
    let out = dir.join("e.safetensors");
    let o = out.display().to_string();
    let base =
        ["train", "--model", &m, "--data", &d, "--trigger", "sks", "--class", "square", "--resolution", "64", "--rank", "2", "--out", &o];
    let run = [&base[..], &["--steps", "3", "--sample-steps", "2"]].concat();
    fails(&[&run[..], &["--eval-every", "1"]].concat(), &["--eval-every 1", "--clip"]);
    fails(&[&run[..], &["--keep-best"]].concat(), &["--keep-best", "--eval-every"]);
    fails(&[&run[..], &["--eval-every", "1", "--clip", "/no/clip"]].concat(), &["/no/clip"]);
    ok(&run);
    let plain = tensors(&out);
    let watched = [&run[..], &["--eval-every", "1", "--eval-seeds", "2", "--clip", &clip, "--keep-best"]].concat();
    ok(&watched);
    // Evaluating draws from its own seeds: the adapter's tensors are the same bits as without it
    // (the metadata differ: they hold the settings).
    assert_eq!(tensors(&out), plain);
    let log = std::fs::read_to_string(dir.join("e.log.jsonl")).unwrap();
    let evals = catlora::training::monitor::logged(&log).unwrap();
    assert_eq!(evals.iter().map(|e| e.0).collect::<Vec<_>>(), [1, 2, 3], "{log}");
    for (_, s) in &evals {
        assert!((0.0..=1.0).contains(&s.kps) && (0.0..=1.0).contains(&s.identity_similarity) && s.prompt_similarity.is_finite(), "{s:?}");
    }
    let best = catlora::training::monitor::pick_best(&evals).unwrap();
    let source = if best == 3 { out.clone() } else { dir.join(format!("e-{best:06}.safetensors")) };
    assert_eq!(std::fs::read(dir.join("e-best.safetensors")).unwrap(), std::fs::read(source).unwrap(), "best step {best}");
    std::fs::remove_dir_all(dir).unwrap();
}
