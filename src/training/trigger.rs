//! Training captions: the trigger put into an image's caption, and kohya's caption augmentation
//! (dropout, tag shuffling) drawn once for a caption and its trigger-less twin.
use crate::captions::{contains_phrase, remove_trigger};
use crate::rng::Rng;
use anyhow::{Result, bail};

/// The training caption for an image: its own caption with the trigger put in front when the
/// caption lacks it, or `"<trigger>, <class>"` when there is no caption.
pub fn training_caption(caption: Option<&str>, trigger: &str, class: Option<&str>) -> Result<String> {
    match caption.map(str::trim).filter(|c| !c.is_empty()) {
        Some(c) if contains_phrase(c, trigger) => Ok(c.to_string()),
        Some(c) => Ok(format!("{trigger}, {c}")),
        None => match class {
            Some(class) => Ok(format!("{trigger}, {class}")),
            None => bail!("an image has no caption and no --class was given to caption it with"),
        },
    }
}

/// kohya's caption augmentation, drawn once per image and step: with probability `dropout` the
/// caption is empty; otherwise, with `shuffle`, its comma-separated tags after the first `keep`
/// are shuffled. The tag holding the trigger always stays first. Returns the caption and its
/// trigger-less twin, made from the same draw, so CAT's two passes see the same augmentation.
pub fn augment(caption: &str, trigger: &str, dropout: f64, shuffle: bool, keep: usize, rng: &mut Rng) -> (String, String) {
    if dropout > 0.0 && rng.uniform() < dropout {
        return (String::new(), String::new());
    }
    if !shuffle {
        return (caption.to_string(), remove_trigger(caption, trigger));
    }
    let mut tags: Vec<&str> = caption.split(',').map(str::trim).filter(|t| !t.is_empty()).collect();
    let mut fixed = keep.min(tags.len());
    if let Some(j) = tags.iter().position(|t| contains_phrase(t, trigger)) {
        let tag = tags.remove(j);
        tags.insert(0, tag);
        fixed = fixed.max(1).min(tags.len());
    }
    for i in (fixed + 1..tags.len()).rev() {
        let k = fixed + rng.below(i - fixed + 1);
        tags.swap(i, k);
    }
    let caption = tags.join(", ");
    let plain = remove_trigger(&caption, trigger);
    (caption, plain)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn augmentation_keeps_the_trigger_first_and_both_captions_in_step() {
        let c = "red, sks teapot, on a table, studio light, wooden";
        let mut rng = Rng::new(3);
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..40 {
            let (a, p) = augment(c, "sks", 0.0, true, 0, &mut rng);
            assert!(a.starts_with("sks teapot, "), "{a}");
            assert_eq!(p, a["sks teapot, ".len()..], "the twin is the same draw without the trigger's tag");
            let mut tags: Vec<&str> = a.split(", ").collect();
            tags.sort();
            assert_eq!(tags, ["on a table", "red", "sks teapot", "studio light", "wooden"]);
            seen.insert(a);
        }
        assert!(seen.len() > 5, "the tags are shuffled: {seen:?}");
        // keep_tokens 3: the trigger's tag, then the first two others stay in place.
        let (a, _) = augment("sks, red, round, a, b, c", "sks", 0.0, true, 3, &mut Rng::new(1));
        assert!(a.starts_with("sks, red, round, "), "{a}");
        // Dropout 1: both captions empty; dropout 0 and no shuffle: unchanged.
        assert_eq!(augment(c, "sks", 1.0, true, 0, &mut Rng::new(1)), (String::new(), String::new()));
        assert_eq!(augment(c, "sks", 0.0, false, 0, &mut Rng::new(1)).0, c);
    }

    #[test]
    fn a_caption_with_only_the_first_word_of_a_trigger_does_not_hold_it() {
        let t = "qzx token";
        assert_eq!(training_caption(Some("a qzx teapot"), t, None).unwrap(), "qzx token, a qzx teapot");
        assert_eq!(training_caption(Some("a qzx token teapot"), t, None).unwrap(), "a qzx token teapot");
    }

    #[test]
    fn captions_get_the_trigger() {
        assert_eq!(training_caption(Some("a red teapot"), "sks", None).unwrap(), "sks, a red teapot");
        assert_eq!(training_caption(Some("sks, a red teapot"), "sks", None).unwrap(), "sks, a red teapot");
        assert_eq!(training_caption(Some("a sks teapot"), "sks", None).unwrap(), "a sks teapot");
        assert_eq!(training_caption(None, "sks", Some("teapot")).unwrap(), "sks, teapot");
        assert_eq!(training_caption(Some("  "), "sks", Some("teapot")).unwrap(), "sks, teapot");
        assert!(training_caption(None, "sks", None).is_err());
    }
}
