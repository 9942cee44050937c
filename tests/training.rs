//! The training loop on the tiny fixture model: it lowers the loss on its data, its files
//! round-trip, the same seed gives the same bytes, and a resumed run ends where an
//! uninterrupted one does.
mod common;
use catlora::adapters::lora::{Targets, attach_file};
use catlora::adapters::lora_file;
use catlora::io::image::save_png;
use catlora::pipeline::model::StableDiffusion;
use catlora::training::config::{Concept, FileFormat, Method, TrainConfig};
use catlora::training::data::Dataset;
use catlora::training::objective::mse;
use catlora::training::trainer::{Silent, train};
use catlora::rng::Rng;
use catlora::schedulers::NoiseSchedule;
use common::*;
use std::path::{Path, PathBuf};

fn temp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("catlora-train-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Three 64 px images of one "object": a coloured square on gray, with captions.
fn write_data(dir: &Path) {
    for k in 0..3u32 {
        let mut rgb = vec![128u8; 64 * 64 * 3];
        for y in 0..64u32 {
            for x in 0..64u32 {
                if (16 + k * 4..44 + k * 4).contains(&x) && (18..46).contains(&y) {
                    let i = ((y * 64 + x) * 3) as usize;
                    rgb[i..i + 3].copy_from_slice(&[220, 40 + (k * 20) as u8, 60]);
                }
            }
        }
        save_png(&dir.join(format!("{k}.png")), &rgb, 64, 64, &[]).unwrap();
    }
    std::fs::write(dir.join("0.txt"), "sks, a red square on a gray background").unwrap();
}

fn config(name: &str, method: Method) -> (TrainConfig, PathBuf) {
    let dir = temp(name);
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    write_data(&data);
    let cfg = TrainConfig {
        model: fixtures().join("tiny-sd"),
        concepts: vec![Concept { data, trigger: "sks".into(), class: Some("square".into()), class_data: None }],
        out: dir.join("adapter.safetensors"),
        method,
        rank: 2,
        alpha: 2.0,
        lr: 1e-3,
        steps: 6,
        resolution: 64,
        seed: 7,
        save_every: 3,
        class_images: 2,
        sample_steps: 3,
        ..Default::default()
    };
    (cfg, dir)
}

#[test]
fn same_seed_same_bytes_and_resume_matches_an_uninterrupted_run() {
    let (cfg, dir) = config("resume", Method::Cat);
    let out = train(&cfg, None, &mut Silent).unwrap();
    let first = std::fs::read(&out.paths.adapter).unwrap();
    let log: Vec<String> = std::fs::read_to_string(&out.paths.log).unwrap().lines().map(String::from).collect();
    assert_eq!(log.len(), 6);
    assert!(log[0].contains("\"cat\"") && log[0].contains("\"diffusion\""), "{}", log[0]);

    // The checkpoint of step 3 is what an interrupted run leaves; resuming from it must end on
    // the same bytes.
    std::fs::remove_file(&out.paths.adapter).unwrap();
    let resumed = train(&cfg, Some(&out.paths.checkpoint), &mut Silent).unwrap();
    assert_eq!(std::fs::read(&resumed.paths.adapter).unwrap(), first, "resumed run differs");
    let log2: Vec<String> = std::fs::read_to_string(&out.paths.log).unwrap().lines().map(String::from).collect();
    assert_eq!(log2, log, "the resumed log must equal the uninterrupted one");

    let again = train(&cfg, None, &mut Silent).unwrap();
    assert_eq!(std::fs::read(&again.paths.adapter).unwrap(), first, "same seed, different bytes");

    // Resuming with other settings is refused.
    let other = TrainConfig { lr: 2e-3, ..cfg.clone() };
    let err = train(&other, Some(&out.paths.checkpoint), &mut Silent).err().unwrap().to_string();
    assert!(err.contains("other settings"), "{err}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn training_lowers_the_loss_and_the_file_round_trips() {
    let (mut cfg, dir) = config("lowers", Method::Lora);
    cfg.steps = 40;
    cfg.lr = 3e-3;
    cfg.save_every = 0;
    cfg.format = FileFormat::Diffusers;
    let out = train(&cfg, None, &mut Silent).unwrap();

    let dev = device();
    let mut sd = StableDiffusion::load(&cfg.model, &dev).unwrap();
    let data = Dataset::prepare(&sd, &cfg, true).unwrap();
    let known = sd.targets().known_modules();
    let file = lora_file::read(&out.paths.adapter, &known).unwrap();
    assert_eq!(file.entries.len(), 128);
    assert!(file.entries.iter().all(|e| e.rank == 2 && e.alpha == 2.0));
    assert_eq!(file.metadata.get("catlora_method").map(String::as_str), Some("lora"));
    // Written, read, written again: identical bytes.
    let again = dir.join("again.safetensors");
    lora_file::write_peft(&again, &file).unwrap();
    assert_eq!(std::fs::read(&again).unwrap(), std::fs::read(&out.paths.adapter).unwrap());

    let adapter = attach_file(&mut Targets { unet: &mut sd.unet, text_encoder: None }, &file, 1.0, "trained").unwrap();
    // The diffusion loss on the training images at fixed noise and timesteps.
    let noise = NoiseSchedule::new(&sd.scheduler);
    let loss = |sd: &StableDiffusion| -> f64 {
        let mut rng = Rng::new(99);
        let mut total = 0.0;
        for (i, l) in data.latents.iter().enumerate() {
            for t in [100usize, 300, 500, 700] {
                let x0 = l[0].mean.clone().mul_scalar(sd.vae.config.scaling_factor as f32);
                let eps = rng.normal_tensor(x0.dims(), &dev);
                let zt = noise.add_noise(x0, eps.clone(), &[t]);
                let pred = sd.unet.forward(zt, &[t as f64], &data.cond[i].0);
                total += values(mse(pred, eps, None))[0] as f64;
            }
        }
        total
    };
    let trained = loss(&sd);
    adapter.gate.set(0.0);
    let base = loss(&sd);
    eprintln!("diffusion loss on the training data: base {base:.5}, adapted {trained:.5}");
    assert!(trained < base * 0.97, "training did not lower the loss: base {base}, adapted {trained}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn dreambooth_generates_class_images_and_trains() {
    let (mut cfg, dir) = config("dreambooth", Method::Dreambooth);
    cfg.steps = 2;
    cfg.save_every = 0;
    cfg.sample_every = 2;
    let out = train(&cfg, None, &mut Silent).unwrap();
    assert_eq!(std::fs::read_dir(out.paths.class_images.join("sks")).unwrap().count(), 2);
    assert!(out.last.prior > 0.0);
    // Samples with and without the trigger.
    let samples: Vec<_> = std::fs::read_dir(&out.paths.samples).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    assert!(samples.iter().any(|s| s.ends_with("-trigger.png")) && samples.iter().any(|s| s.ends_with("-plain.png")), "{samples:?}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn bad_settings_are_clear_errors() {
    let (cfg, dir) = config("bad", Method::Cat);
    let err = train(&TrainConfig { concepts: vec![Concept { data: dir.join("missing"), ..cfg.concepts[0].clone() }], ..cfg.clone() }, None, &mut Silent).err().unwrap();
    assert!(format!("{err:#}").contains("missing"), "{err:#}");
    let err = train(&TrainConfig { targets: vec!["to_nothing".into()], ..cfg.clone() }, None, &mut Silent).err().unwrap();
    assert!(format!("{err:#}").contains("to_nothing"), "{err:#}");
    let err = train(&TrainConfig { resolution: 40, ..cfg.clone() }, None, &mut Silent).err().unwrap();
    assert!(format!("{err:#}").contains("multiple of 16"), "{err:#}");
    std::fs::remove_dir_all(dir).unwrap();
}
