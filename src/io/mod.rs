//! File formats and file-system helpers shared by every command.
pub mod atomic;
pub mod image;
pub mod safetensors;

/// `text` made safe as one file-name component: letters, digits, `-`, `_` and `.` kept, any
/// other character `_`, no leading dot, at most 64 characters (a trigger such as `../../x`
/// becomes `_._.._x`, never a path).
pub fn safe_file_name(text: &str) -> String {
    let mut s: String =
        text.chars().map(|c| if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') { c } else { '_' }).take(64).collect();
    while s.starts_with('.') {
        s.replace_range(..1, "_");
    }
    if s.is_empty() { "_".into() } else { s }
}

#[cfg(test)]
mod tests {
    #[test]
    fn safe_file_names_are_single_components() {
        assert_eq!(super::safe_file_name("sks"), "sks");
        assert_eq!(super::safe_file_name("../../x"), "_._.._x");
        assert_eq!(super::safe_file_name("/etc/passwd"), "_etc_passwd");
        assert_eq!(super::safe_file_name(""), "_");
        assert_eq!(super::safe_file_name(".."), "_.");
    }
}
