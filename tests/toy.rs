//! The toy world and its base models: the world is deterministic and its classifiers read back
//! what was drawn; the trained weights are saved under the names the loaders read; the
//! committed base models follow their prompts and the committed CLIP ranks captions.
mod common;
use burn::tensor::{Device, Tensor};
use catlora::evaluation::clip::ClipModel;
use catlora::io::safetensors::StoreAs;
use catlora::models::config::{UNetConfig, VaeConfig};
use catlora::models::unet::UNet;
use catlora::models::vae::Vae;
use catlora::models::weights::Weights;
use catlora::pipeline::model::StableDiffusion;
use catlora::rng::Rng;
use catlora::toy::architecture;
use catlora::toy::clip::TrainableClip;
use catlora::toy::eval::{self, SampleSettings};
use catlora::toy::folders;
use catlora::toy::params::{ModelParams, round_to_f16, torch_tensors, write_safetensors};
use catlora::toy::pretrain::{self, PretrainOptions, clip_pixels};
use catlora::toy::reading;
use catlora::toy::world::{self, Background, Colour, Shape, Size, World};
use catlora::training::adamw::AdamWConfig;
use common::*;
use std::path::PathBuf;

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("catlora-toy-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The committed (embedded) toy models, written out as model folders. One shared folder:
/// `materialise` writes each file atomically and skips files already there with the same bytes.
fn assets() -> PathBuf {
    let dir = std::env::temp_dir().join("catlora-toy-assets");
    catlora::toy::assets::materialise(&dir).unwrap()
}

#[test]
fn world_is_deterministic_per_seed() {
    let a = World::new(7).samples(24);
    let b = World::new(7).samples(24);
    let c = World::new(8).samples(24);
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(x.image, y.image);
        assert_eq!(x.caption, y.caption);
        assert_eq!(x.scene, y.scene);
    }
    assert!(a.iter().zip(&c).any(|(x, y)| x.image != y.image), "another seed gives other images");
    assert_eq!(a[0].image.dimensions(), (world::SIZE as u32, world::SIZE as u32));
    let p = world::personal_objects(3, 5, "sks", &Background::ALL);
    assert_eq!(p.len(), 5);
    assert_eq!(
        p.iter().map(|x| &x.0).collect::<Vec<_>>(),
        world::personal_objects(3, 5, "sks", &Background::ALL).iter().map(|x| &x.0).collect::<Vec<_>>()
    );
    assert_eq!(p[0].2, "a sks circle on a gray background");
    // Every combination has a caption naming all four attributes.
    assert_eq!(World::combinations().len(), 176);
    assert_eq!(a[0].caption, a[0].scene.caption(world::CaptionStyle::Full));
}

#[test]
fn classifiers_read_back_what_was_drawn() {
    let samples = World::new(11).samples(600);
    let n = samples.len() as f64;
    let (mut colour, mut shape, mut size, mut bg, mut copies) = (0, 0, 0, 0, 0);
    let mut confusions = Vec::new();
    for s in &samples {
        let r = reading::classify(&s.image);
        colour += (r.colour == Some(s.scene.colour)) as usize;
        shape += (r.shape == Some(s.scene.shape)) as usize;
        size += (r.size == Some(s.scene.size)) as usize;
        bg += (r.background == s.scene.background) as usize;
        copies += reading::copies_personal(&s.image) as usize;
        if r.shape != Some(s.scene.shape) {
            confusions.push(format!("{} read as {:?}", s.caption, r.shape));
        }
    }
    let (colour, shape, size, bg) = (colour as f64 / n, shape as f64 / n, size as f64 / n, bg as f64 / n);
    eprintln!("clean world images: colour {colour:.3}, shape {shape:.3}, size {size:.3}, background {bg:.3}");
    assert!(colour >= 0.95, "colour read back on {colour:.3} of the images");
    assert!(shape >= 0.95, "shape read back on {shape:.3} of the images: {confusions:?}");
    assert!(size >= 0.95, "size read back on {size:.3} of the images");
    assert_eq!(bg, 1.0, "background");
    assert_eq!(copies, 0, "no world image copies the personal object");
    // The personal object is recognised, and reads as neither a world colour's solid shape.
    for (img, _, _) in world::personal_objects(5, 20, "sks", &Background::ALL) {
        let sig = reading::personal_signature(&img);
        assert!(reading::copies_personal(&img), "{sig:?}");
        assert!(sig.fractions[0] > 0.25 && sig.fractions[1] > 0.25 && sig.stripe_changes > 2.0, "{sig:?}");
        assert_eq!(reading::classify_shape(&img), Some(Shape::Circle));
    }
    // An empty image has no foreground.
    let blank = world::paint(Background::Gray.rgb(), |_, _| None);
    assert_eq!(reading::dominant_colour(&blank), None);
    assert_eq!(reading::classify_shape(&blank), None);
}

#[test]
fn classifiers_on_a_chosen_scene() {
    let mut w = World::new(1);
    for (sh, c, sz, b) in [
        (Shape::Star, Colour::Yellow, Size::Small, Background::White),
        (Shape::Triangle, Colour::Purple, Size::Large, Background::Gray),
        (Shape::Square, Colour::White, Size::Large, Background::Black),
        (Shape::Circle, Colour::Black, Size::Small, Background::Gray),
    ] {
        let scene = w.place(sh, c, sz, b);
        let r = reading::classify(&world::draw(&scene));
        assert_eq!((r.shape, r.colour, r.size, r.background), (Some(sh), Some(c), Some(sz), b), "{scene:?}");
    }
}

/// Rounds a model's parameters to half precision, installs them, saves them as pretraining
/// does and opens the file.
fn save_rounded(model: &mut dyn catlora::training::params::ParamSource, path: &std::path::Path) -> Weights {
    let mut hp = ModelParams::collect(model, AdamWConfig::default());
    round_to_f16(&mut hp.params);
    hp.install(model, false);
    write_safetensors(path, &torch_tensors(&hp.params, |n| Some(n.to_string())), StoreAs::F16).unwrap();
    Weights::open_files(&[path.to_path_buf()], &device()).unwrap()
}

/// Saving with `torch_tensors` gives the names and layouts the loaders read: a
/// model loaded from the written file computes what the in-memory one does.
#[test]
fn saved_weights_load_back_identically() {
    let dev = device();
    let dir = scratch("roundtrip");
    let mut rng = Rng::new(2);

    // UNet and VAE in the toy configurations.
    let ucfg: UNetConfig = serde_json::from_value(architecture::unet_config_json()).unwrap();
    let mut unet = UNet::load(&Weights::random(5, &dev), &ucfg).unwrap();
    let loaded = UNet::load(&save_rounded(&mut unet, &dir.join("unet.safetensors")), &ucfg).unwrap();
    let x = rng.normal_tensor([2, 4, 16, 16], &dev);
    let ctx = rng.normal_tensor([2, 77, architecture::TEXT_HIDDEN], &dev);
    let a = values(unet.forward(x.clone(), &[10.0, 900.0], &ctx));
    let b = values(loaded.forward(x, &[10.0, 900.0], &ctx));
    assert!(rel_max_err(&b, &a) < 1e-5, "unet: {}", rel_max_err(&b, &a));

    let vcfg: VaeConfig = serde_json::from_value(architecture::vae_config_json(1.0)).unwrap();
    let mut vae = Vae::load(&Weights::random(6, &dev), &vcfg).unwrap();
    let loaded = Vae::load(&save_rounded(&mut vae, &dir.join("vae.safetensors")), &vcfg).unwrap();
    let img = rng.normal_tensor([1, 3, 32, 32], &dev);
    let (a, _) = vae.encode(img.clone());
    let (b, _) = loaded.encode(img);
    assert!(rel_max_err(&values(b.clone()), &values(a.clone())) < 1e-5);
    assert!(rel_max_err(&values(loaded.decode(b)), &values(vae.decode(a))) < 1e-5);

    // The CLIP, through `ClipModel::load`, the metrics' loader.
    let tc = serde_json::from_value(architecture::text_config_json()).unwrap();
    let vc = serde_json::from_value(architecture::vision_config_json()).unwrap();
    let mut clip = TrainableClip::load(&Weights::random(7, &dev), &tc, &vc, 32).unwrap();
    let mut hp = ModelParams::collect(&mut clip, AdamWConfig::default());
    round_to_f16(&mut hp.params);
    hp.install(&mut clip, false);
    let clip_dir = dir.join("clip");
    folders::write_clip(&clip_dir, &hp, &fixtures().join("tiny-clip")).unwrap();
    let loaded = ClipModel::load(&clip_dir, &dev).unwrap();
    let samples = World::new(3).samples(3);
    let px: Vec<f32> = samples.iter().flat_map(|s| clip_pixels(&s.image)).collect();
    let mine = values(clip.image_embeddings(Tensor::from_data(burn::tensor::TensorData::new(px, [3, 3, 32, 32]), &dev)).unwrap());
    let theirs: Vec<f32> =
        loaded.embed_pixels(&samples.iter().map(|s| loaded.pixel_values(&s.image).unwrap()).collect::<Vec<_>>()).unwrap().concat();
    assert!(rel_max_err(&theirs, &mine) < 1e-4, "image embeddings: {}", rel_max_err(&theirs, &mine));
    let caps: Vec<&str> = samples.iter().map(|s| s.caption.as_str()).collect();
    let ids: Vec<Vec<u32>> = caps.iter().map(|c| loaded.tokenizer.encode_padded(c, 77)).collect();
    let mine = values(clip.text_embeddings(&ids));
    let theirs: Vec<f32> = loaded.embed_texts(&caps).concat();
    assert!(rel_max_err(&theirs, &mine) < 1e-4, "text embeddings: {}", rel_max_err(&theirs, &mine));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A few steps of every stage write folders the pipeline and the metrics load, and the same
/// seed writes the same bytes.
#[test]
fn pretrain_writes_loadable_folders_deterministically() {
    let (a, b) = (scratch("pretrain-a"), scratch("pretrain-b"));
    let opts = PretrainOptions::smoke();
    pretrain::pretrain(&a, &opts).unwrap();
    pretrain::pretrain(&b, &opts).unwrap();
    for f in [
        "sd/model_index.json",
        "sd/scheduler/scheduler_config.json",
        "sd/text_encoder/config.json",
        "sd/text_encoder/model.safetensors",
        "sd/tokenizer/tokenizer.json",
        "sd/unet/config.json",
        "sd/unet/diffusion_pytorch_model.safetensors",
        "sd/vae/config.json",
        "sd/vae/diffusion_pytorch_model.safetensors",
        "clip/config.json",
        "clip/model.safetensors",
        "clip/preprocessor_config.json",
    ] {
        let (x, y) = (std::fs::read(a.join(f)).unwrap(), std::fs::read(b.join(f)).unwrap());
        assert!(x == y, "{f} differs between two runs with the same seed");
    }
    // pretrain.json records the options that shape the weights, under the committed file's keys.
    let options = |dir: &std::path::Path| {
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("pretrain.json")).unwrap()).unwrap();
        v["options"].as_object().unwrap().keys().cloned().collect::<Vec<_>>()
    };
    assert_eq!(options(&a), options(&pretrain::default_assets_dir()));
    let dev = device();
    let sd = StableDiffusion::load(&a.join("sd"), &dev).unwrap();
    let imgs = eval::generate_images(&sd, "a red circle", 2, SampleSettings { steps: 2, ..Default::default() }, 0).unwrap();
    assert_eq!(imgs.len(), 2);
    ClipModel::load(&a.join("clip"), &dev).unwrap();
    std::fs::remove_dir_all(&a).unwrap();
    std::fs::remove_dir_all(&b).unwrap();
}

/// The check: generated images have the prompted shape and colour in a clear majority.
#[test]
fn committed_base_model_follows_prompts() {
    let sd = StableDiffusion::load(&assets().join("sd"), &Device::flex()).unwrap();
    let cases = [
        (Colour::Red, Shape::Circle),
        (Colour::Blue, Shape::Square),
        (Colour::Yellow, Shape::Star),
        (Colour::Green, Shape::Triangle),
        (Colour::Purple, Shape::Circle),
        (Colour::Orange, Shape::Square),
        (Colour::White, Shape::Star),
        (Colour::Black, Shape::Triangle),
    ];
    let settings = SampleSettings::default();
    let results = eval::prompt_following(&sd, &cases, 4, settings, 42).unwrap();
    for r in &results {
        eprintln!("{}: colour {}/{}, shape {}/{}: {:?} {:?}", r.prompt, r.colour_hits, r.n, r.shape_hits, r.n, r.colours, r.shapes);
    }
    let (n, colour, shape, both) = eval::totals(&results);
    eprintln!("{n} images: colour {colour}, shape {shape}, both {both}");
    // Chance is 1/8 for the colour, 1/4 for the shape and 1/32 for both.
    assert!(colour * 10 >= n * 9, "the prompted colour in {colour} of {n} images");
    assert!(both * 5 >= n * 3, "the prompted colour and shape in {both} of {n} images");
    // Circles, squares and triangles follow the prompt in a clear majority each; stars are the
    // weak spot of these models (mostly drawn as circles), which the totals above include.
    for sh in [Shape::Circle, Shape::Square, Shape::Triangle] {
        let hits: usize = results.iter().filter(|r| r.prompt.ends_with(sh.name())).map(|r| r.shape_hits).sum();
        assert!(hits * 4 >= 8 * 3, "the prompted {} in {hits} of 8 images", sh.name());
    }
}

/// The class knowledge the demo measures: a class prompt without a colour ("a circle on a gray
/// background") gives circles of many colours, and never the personal object's look.
#[test]
fn committed_base_model_draws_a_class_in_many_colours() {
    let sd = StableDiffusion::load(&assets().join("sd"), &Device::flex()).unwrap();
    let settings = SampleSettings { sampler: catlora::schedulers::SamplerKind::DpmPp2mKarras, steps: 20, cfg: 3.0 };
    let mut counts = std::collections::BTreeMap::new();
    let mut circles = 0;
    for (k, prompt) in
        ["a circle on a gray background", "a circle on a white background", "a circle on a black background", "a circle"].iter().enumerate()
    {
        for img in eval::generate_images(&sd, prompt, 8, settings, 500 + 100 * k as u64).unwrap() {
            assert!(!reading::copies_personal(&img), "{prompt}: the base model drew the personal look");
            *counts.entry(reading::dominant_colour(&img).map(Colour::name)).or_insert(0usize) += 1;
            circles += (reading::classify_shape(&img) == Some(Shape::Circle)) as usize;
        }
    }
    eprintln!("colours of 32 class images: {counts:?}; {circles} read as circles");
    let most = counts.values().max().copied().unwrap_or(0);
    assert!(counts.keys().filter(|c| c.is_some()).count() >= 6, "{counts:?}");
    assert!(most <= 12, "one colour takes {most} of 32 images: {counts:?}");
    assert!(circles >= 24, "{circles} of 32 class images read as circles");
}

/// The committed VAE can represent the demo's personal object: its round trips still read as a
/// copy of the personal look (the colours survive), and world images keep their attributes.
#[test]
fn committed_vae_reproduces_world_images_and_the_personal_object() {
    let sd = StableDiffusion::load(&assets().join("sd"), &Device::flex()).unwrap();
    let round_trip = |imgs: &[catlora::io::image::RgbImage]| {
        let (mean, _) = sd.vae.encode(catlora::io::image::rgb_to_tensor(imgs, &sd.device));
        eval::to_images(sd.vae.decode(mean))
    };
    let personal: Vec<_> = world::personal_objects(9, 8, "sks", &Background::ALL).into_iter().map(|p| p.0).collect();
    for img in round_trip(&personal) {
        let sig = reading::personal_signature(&img);
        assert!(reading::copies_personal(&img), "{sig:?}");
    }
    let samples = World::new(9).samples(32);
    let imgs: Vec<_> = samples.iter().map(|s| s.image.clone()).collect();
    let rec = round_trip(&imgs);
    let colour = samples.iter().zip(&rec).filter(|(s, r)| reading::dominant_colour(r) == Some(s.scene.colour)).count();
    assert!(colour >= 31, "colour kept in {colour} of 32 round trips");
}

#[test]
fn committed_clip_ranks_the_right_caption_first() {
    let clip = ClipModel::load(&assets().join("clip"), &Device::flex()).unwrap();
    let r = eval::caption_ranking(&clip, 96, 5).unwrap();
    eprintln!("{r:?}");
    // Chance is 1/176.
    assert!(r.top1 >= 0.3, "{r:?}");
    assert!(r.top5 >= 0.6, "{r:?}");
    assert!(r.colour >= 0.9 && r.shape >= 0.7, "{r:?}");
}

/// Rewrites the committed weights: `assets/toy/{sd,clip,pretrain.json}` from seed 0 with the
/// default options (about 40 minutes on 2 CPU cores; `catlora toy pretrain --out assets/toy`
/// does the same). Run with
/// `cargo test --release --test toy -- --ignored --exact regenerate_committed_weights --nocapture`.
/// It also writes `assets/toy/sd/tokenizer/`, which is not committed (the embedded assets keep
/// one copy of the tokenizer, in `clip/`).
#[test]
#[ignore]
fn regenerate_committed_weights() {
    pretrain::pretrain(&pretrain::default_assets_dir(), &PretrainOptions::default()).unwrap();
}
