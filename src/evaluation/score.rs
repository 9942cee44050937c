//! The engine of `catlora score`: embeds folders of images (and a prompt) with CLIP and reports
//! the metrics of [`super::metrics`] as one JSON object.
use super::clip::ClipModel;
use super::metrics;
use anyhow::{Context, Result, bail};
use serde_json::{Map, Value, json};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

pub use crate::io::image::{IMAGE_EXTENSIONS, list_images};

/// What `catlora score` compares.
#[derive(Clone, Debug, Default)]
pub struct ScoreOptions {
    /// The generated images being scored.
    pub images: PathBuf,
    /// The prompt they were generated from: adds `prompt_similarity`.
    pub prompt: Option<String>,
    /// The adapter's training images: adds `identity_similarity`.
    pub identity_ref: Option<PathBuf>,
    /// The base model's images for the same trigger-less prompts and seeds, with the same file
    /// names as their partners in `images`: adds `kps`.
    pub base_images: Option<PathBuf>,
}

fn file_name(p: &Path) -> String {
    p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}

/// Checks that both sorted lists hold the same file names, so that they pair up index by index.
fn check_pairing(images_dir: &Path, images: &[PathBuf], base_dir: &Path, base: &[PathBuf]) -> Result<()> {
    let names = |v: &[PathBuf]| v.iter().map(|p| file_name(p)).collect::<BTreeSet<_>>();
    let (a, b) = (names(images), names(base));
    let only_images: Vec<&String> = a.difference(&b).collect();
    let only_base: Vec<&String> = b.difference(&a).collect();
    if !only_images.is_empty() || !only_base.is_empty() {
        bail!(
            "KPS pairs images by file name, but some have no partner: in {} only: {only_images:?}; in {} only: {only_base:?}",
            images_dir.display(),
            base_dir.display()
        );
    }
    Ok(())
}

/// The one image `path` names, or the images of the folder it names.
fn image_files(path: &Path) -> Result<Vec<PathBuf>> {
    if path.is_file() { Ok(vec![path.to_path_buf()]) } else { list_images(path) }
}

/// Scores `opts.images` (a folder, or one image file): `n_images`, `diversity` (from two images
/// on; one image gets a `notes` entry instead), and `prompt_similarity`, `identity_similarity`,
/// `kps` when their inputs are given.
pub fn score(clip: &ClipModel, opts: &ScoreOptions) -> Result<Value> {
    let files = image_files(&opts.images)?;
    // Pairing is checked before any embedding, so a naming mistake fails fast.
    let base_files = match &opts.base_images {
        Some(dir) => {
            let base = image_files(dir)?;
            check_pairing(&opts.images, &files, dir, &base)?;
            Some(base)
        }
        None => None,
    };
    let images = clip.embed_image_files(&files)?;
    let diversity = match images.len() {
        1 => None,
        _ => Some(metrics::diversity(&images).with_context(|| format!("diversity of {}", opts.images.display()))?),
    };
    let mut out = Map::new();
    let mut notes = Vec::new();
    out.insert("n_images".into(), json!(files.len()));
    if let Some(prompt) = &opts.prompt {
        notes.extend(clip.truncation(prompt).map(|m| format!("CLIP: {m}")));
        let text = clip.embed_texts(&[prompt.as_str()]).remove(0);
        out.insert("prompt_similarity".into(), json!(metrics::prompt_similarity(&text, &images)?));
    }
    if let Some(dir) = &opts.identity_ref {
        let training = clip.embed_image_files(&list_images(dir)?)?;
        let v = metrics::identity_similarity(&images, &training)
            .with_context(|| format!("identity similarity of {} against {}", opts.images.display(), dir.display()))?;
        out.insert("identity_similarity".into(), json!(v));
    }
    if let Some(base_files) = &base_files {
        let base = clip.embed_image_files(base_files)?;
        out.insert("kps".into(), json!(metrics::kps(&base, &images)?));
    }
    match diversity {
        Some(d) => {
            out.insert("diversity".into(), json!(d));
        }
        None => notes.push("diversity needs at least 2 images; 1 was given, so it is left out".into()),
    }
    if !notes.is_empty() {
        out.insert("notes".into(), json!(notes));
    }
    Ok(Value::Object(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Device;

    fn tiny_clip() -> PathBuf {
        crate::fixtures::fixture("tiny-clip")
    }

    fn model() -> ClipModel {
        ClipModel::load(&tiny_clip(), &Device::flex()).unwrap()
    }

    /// A fresh folder holding copies of the probe images under the given names (`src` is
    /// the probe index).
    fn folder(tag: &str, files: &[(&str, usize)]) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("catlora-score-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        for (name, src) in files {
            std::fs::copy(tiny_clip().join(format!("probe-{src}.png")), dir.join(name)).unwrap();
        }
        dir
    }

    #[test]
    fn scores_every_metric() {
        let clip = model();
        let images = folder("all-images", &[("b.png", 1), ("a.PNG", 0)]);
        std::fs::write(images.join("notes.txt"), "not an image").unwrap();
        let base = folder("all-base", &[("a.PNG", 0), ("b.png", 1)]);
        let reference = folder("all-ref", &[("r.png", 0)]);
        let prompt = "a photo of a red square";
        let opts = ScoreOptions {
            images: images.clone(),
            prompt: Some(prompt.into()),
            identity_ref: Some(reference.clone()),
            base_images: Some(base.clone()),
        };
        let got = score(&clip, &opts).unwrap();

        // Sorted by name: a.PNG (probe 0), then b.png (probe 1).
        let e = clip.embed_image_files(&[tiny_clip().join("probe-0.png"), tiny_clip().join("probe-1.png")]).unwrap();
        let text = clip.embed_texts(&[prompt]).remove(0);
        let cos = |a: &[f32], b: &[f32]| metrics::cosine(a, b).unwrap();
        let want_prompt = (cos(&text, &e[0]) + cos(&text, &e[1])) / 2.0;
        let want_identity = ((1.0 + 1.0) + (cos(&e[1], &e[0]) + 1.0)) / 4.0;
        let close = |key: &str, want: f64| {
            let v = got[key].as_f64().unwrap_or_else(|| panic!("{key} missing from {got}"));
            assert!((v - want).abs() < 1e-6, "{key}: {v} != {want}");
        };
        assert_eq!(got["n_images"], 2);
        close("prompt_similarity", want_prompt);
        close("identity_similarity", want_identity);
        close("kps", 1.0);
        close("diversity", 1.0 - cos(&e[0], &e[1]));
        for d in [images, base, reference] {
            std::fs::remove_dir_all(d).unwrap();
        }
    }

    #[test]
    fn optional_metrics_are_left_out() {
        let images = folder("minimal", &[("x.png", 0), ("y.png", 1)]);
        let got = score(&model(), &ScoreOptions { images: images.clone(), ..Default::default() }).unwrap();
        let mut keys: Vec<&String> = got.as_object().unwrap().keys().collect();
        keys.sort();
        assert_eq!(keys, ["diversity", "n_images"]);
        std::fs::remove_dir_all(images).unwrap();
    }

    #[test]
    fn a_prompt_longer_than_clip_reads_is_noted() {
        let images = folder("long-prompt", &[("x.png", 0), ("y.png", 1)]);
        let clip = model();
        let words = clip.tokenizer.max_len() + 3;
        let long = vec!["red"; words].join(" ");
        let got = score(&clip, &ScoreOptions { images: images.clone(), prompt: Some(long), ..Default::default() }).unwrap();
        let note = got["notes"][0].as_str().unwrap_or_else(|| panic!("no note in {got}"));
        let (read, dropped) = (clip.tokenizer.max_len() - 2, words + 2 - clip.tokenizer.max_len());
        assert!(
            note.contains(&format!("has {words} tokens")) && note.contains(&format!("reads {read} of them and drops the last {dropped}")),
            "{note}"
        );
        let short = score(&clip, &ScoreOptions { images: images.clone(), prompt: Some("red".into()), ..Default::default() }).unwrap();
        assert!(short.get("notes").is_none(), "{short}");
        std::fs::remove_dir_all(images).unwrap();
    }

    #[test]
    fn unpaired_files_are_listed() {
        let images = folder("unpaired-images", &[("a.png", 0), ("b.png", 1)]);
        let base = folder("unpaired-base", &[("a.png", 0), ("c.png", 1)]);
        let opts = ScoreOptions { images: images.clone(), base_images: Some(base.clone()), ..Default::default() };
        let err = score(&model(), &opts).unwrap_err().to_string();
        assert!(err.contains("[\"b.png\"]") && err.contains("[\"c.png\"]"), "{err}");
        std::fs::remove_dir_all(images).unwrap();
        std::fs::remove_dir_all(base).unwrap();
    }

    #[test]
    fn empty_folder_is_an_error_and_a_single_image_gets_what_one_image_allows() {
        let empty = folder("empty", &[]);
        let err = list_images(&empty).unwrap_err().to_string();
        assert!(err.contains(&empty.display().to_string()) && err.contains("no images"), "{err}");
        let single = folder("single", &[("only.png", 0)]);
        for images in [single.clone(), single.join("only.png")] {
            let v = score(&model(), &ScoreOptions { images, prompt: Some("a red square".into()), ..Default::default() }).unwrap();
            assert_eq!(v["n_images"], 1);
            assert!(v["prompt_similarity"].is_number() && v.get("diversity").is_none(), "{v}");
            assert!(v["notes"][0].as_str().unwrap().contains("diversity"), "{v}");
        }
        std::fs::remove_dir_all(empty).unwrap();
        std::fs::remove_dir_all(single).unwrap();
    }
}
