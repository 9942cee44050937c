//! Captions with and without the trigger token, following the CAT authors: the trigger-less
//! caption drops the `"<trigger>, "` prefix, or else the first comma-separated field.
use crate::rng::Rng;
use anyhow::{Result, bail};

/// The caption with the trigger removed.
///
/// * `"sks, a photo of a teapot"` → `"a photo of a teapot"` (the `"<trigger>, "` prefix);
/// * `"photo of sks teapot, on a table"` → `"on a table"` (the first field, when it holds the
///   trigger, as the authors do);
/// * elsewhere the trigger phrase itself is removed, every occurrence, and so is a field it
///   leaves empty (`"sks teapot"` → `"teapot"`, `"a red teapot, qzx token"` → `"a red teapot"`
///   for the trigger `qzx token`): this project's extension.
pub fn remove_trigger(caption: &str, trigger: &str) -> String {
    let caption = caption.trim();
    if let Some(rest) = caption.strip_prefix(trigger).and_then(|r| r.strip_prefix(',')) {
        return without_phrase(rest, trigger);
    }
    if let Some((first, rest)) = caption.split_once(',')
        && contains_phrase(first, trigger)
    {
        return without_phrase(rest, trigger);
    }
    without_phrase(caption, trigger)
}

/// The caption with the trigger phrase replaced by the class word (`"sks, on a table"` →
/// `"teapot, on a table"`), without doubling the words around it: `"sks teapot"` → `"teapot"`, and
/// for the class `a circle`, `"a sks circle"` → `"a circle"`.
pub fn class_caption(caption: &str, trigger: &str, class: &str) -> String {
    let class_words: Vec<String> = class.split_whitespace().map(String::from).collect();
    replace_phrase(caption, trigger, |before, after| {
        // The longest start of the class words that already ends `before`.
        let k = (0..=class_words.len().min(before.len())).rev().find(|&k| before[before.len() - k..] == class_words[..k]).unwrap_or(0);
        let rest = &class_words[k..];
        if after.len() >= rest.len() && after[..rest.len()] == *rest { Vec::new() } else { rest.to_vec() }
    })
}

/// Whether `text` holds the words of `phrase` in a row (words split at spaces and commas).
pub fn contains_phrase(text: &str, phrase: &str) -> bool {
    let words: Vec<&str> = text.split(|c: char| c.is_whitespace() || c == ',').filter(|w| !w.is_empty()).collect();
    let p: Vec<&str> = phrase.split_whitespace().collect();
    !p.is_empty() && words.windows(p.len()).any(|w| w == p.as_slice())
}

fn without_phrase(text: &str, phrase: &str) -> String {
    replace_phrase(text, phrase, |_, _| Vec::new())
}

/// `text` (trimmed) with each occurrence of `phrase` in its comma-separated fields replaced by
/// `by(the words before it, the words after it)`; fields left empty are dropped. Text without the phrase comes back
/// unchanged.
fn replace_phrase(text: &str, phrase: &str, by: impl Fn(&[String], &[String]) -> Vec<String>) -> String {
    let text = text.trim();
    if !contains_phrase(text, phrase) {
        return text.to_string();
    }
    let p: Vec<&str> = phrase.split_whitespace().collect();
    let fields: Vec<String> = text
        .split(',')
        .map(|field| {
            let mut words: Vec<String> = field.split_whitespace().map(String::from).collect();
            let mut from = 0;
            while let Some(i) = words[from..].windows(p.len()).position(|w| w.iter().zip(&p).all(|(a, b)| a == b)).map(|i| i + from) {
                let after = words.split_off(i + p.len());
                words.truncate(i);
                let inserted = by(&words, &after);
                from = i + inserted.len();
                words.extend(inserted);
                words.extend(after);
            }
            words.join(" ")
        })
        .filter(|f| !f.is_empty())
        .collect();
    fields.join(", ")
}

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
    fn removes_prefix_or_first_field() {
        assert_eq!(remove_trigger("sks, a photo of a teapot", "sks"), "a photo of a teapot");
        assert_eq!(remove_trigger("photo of sks teapot, on a table", "sks"), "on a table");
        assert_eq!(remove_trigger("sks teapot", "sks"), "teapot");
        assert_eq!(remove_trigger("sks,teapot", "sks"), "teapot");
    }

    #[test]
    fn multi_word_triggers_go_as_a_whole_and_class_words_replace_them() {
        let t = "qzx token";
        assert_eq!(remove_trigger("qzx token, a teapot", t), "a teapot");
        assert_eq!(remove_trigger("a qzx token teapot", t), "a teapot");
        assert_eq!(remove_trigger("a red teapot, qzx token", t), "a red teapot");
        assert_eq!(remove_trigger("photo of a qzx token teapot, on a table, qzx token again", t), "on a table, again");
        // A caption with only the trigger's first word is not captioned as holding it.
        assert_eq!(training_caption(Some("a qzx teapot"), t, None).unwrap(), "qzx token, a qzx teapot");
        assert_eq!(training_caption(Some("a qzx token teapot"), t, None).unwrap(), "a qzx token teapot");
        assert_eq!(class_caption("sks, on a table", "sks", "teapot"), "teapot, on a table");
        assert_eq!(class_caption("sks teapot", "sks", "teapot"), "teapot");
        assert_eq!(class_caption("a sks circle on a gray background", "sks", "a circle"), "a circle on a gray background");
        assert_eq!(class_caption("photo of sks", "sks", "a dog"), "photo of a dog");
        assert_eq!(class_caption("a qzx token on a table", t, "red teapot"), "a red teapot on a table");
        // A class word holding the trigger does not loop.
        assert_eq!(class_caption("sks", "sks", "sks dog"), "sks dog");
        assert_eq!(class_caption("no trigger here", "sks", "dog"), "no trigger here");
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
