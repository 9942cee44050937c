//! Trigger phrases in captions and prompts: with the trigger removed, replaced by the class word,
//! or looked for. Training builds its preservation captions with these, and evaluation its
//! prompts without the trigger, so they sit beside both.

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

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(class_caption("sks, on a table", "sks", "teapot"), "teapot, on a table");
        assert_eq!(class_caption("sks teapot", "sks", "teapot"), "teapot");
        assert_eq!(class_caption("a sks circle on a gray background", "sks", "a circle"), "a circle on a gray background");
        assert_eq!(class_caption("photo of sks", "sks", "a dog"), "photo of a dog");
        assert_eq!(class_caption("a qzx token on a table", t, "red teapot"), "a red teapot on a table");
        // A class word holding the trigger does not loop.
        assert_eq!(class_caption("sks", "sks", "sks dog"), "sks dog");
        assert_eq!(class_caption("no trigger here", "sks", "dog"), "no trigger here");
    }
}
