//! Captions with and without the trigger token, following the CAT authors: the trigger-less
//! caption drops the `"<trigger>, "` prefix, or else the first comma-separated field.
use anyhow::{Result, bail};

/// The caption with the trigger removed.
///
/// * `"sks, a photo of a teapot"` → `"a photo of a teapot"` (the `"<trigger>, "` prefix);
/// * `"photo of sks teapot, on a table"` → `"on a table"` (the first field, as the authors do);
/// * a caption with no comma has no field to drop: the trigger word itself is removed
///   (`"sks teapot"` → `"teapot"`), which is this project's extension.
pub fn remove_trigger(caption: &str, trigger: &str) -> String {
    let caption = caption.trim();
    if let Some(rest) = caption.strip_prefix(trigger).and_then(|r| r.strip_prefix(',')) {
        return rest.trim().to_string();
    }
    if let Some((_, rest)) = caption.split_once(',') {
        return rest.trim().to_string();
    }
    caption.split_whitespace().filter(|w| *w != trigger).collect::<Vec<_>>().join(" ")
}

/// The training caption for an image: its own caption with the trigger put in front when the
/// caption lacks it, or `"<trigger>, <class>"` when there is no caption.
pub fn training_caption(caption: Option<&str>, trigger: &str, class: Option<&str>) -> Result<String> {
    match caption.map(str::trim).filter(|c| !c.is_empty()) {
        Some(c) if c.split(|ch: char| ch.is_whitespace() || ch == ',').any(|w| w == trigger) => Ok(c.to_string()),
        Some(c) => Ok(format!("{trigger}, {c}")),
        None => match class {
            Some(class) => Ok(format!("{trigger}, {class}")),
            None => bail!("an image has no caption and no --class was given to caption it with"),
        },
    }
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
    fn captions_get_the_trigger() {
        assert_eq!(training_caption(Some("a red teapot"), "sks", None).unwrap(), "sks, a red teapot");
        assert_eq!(training_caption(Some("sks, a red teapot"), "sks", None).unwrap(), "sks, a red teapot");
        assert_eq!(training_caption(Some("a sks teapot"), "sks", None).unwrap(), "a sks teapot");
        assert_eq!(training_caption(None, "sks", Some("teapot")).unwrap(), "sks, teapot");
        assert_eq!(training_caption(Some("  "), "sks", Some("teapot")).unwrap(), "sks, teapot");
        assert!(training_caption(None, "sks", None).is_err());
    }
}
