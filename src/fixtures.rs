//! Where the reference fixtures live: `tests/fixtures/` in the source tree (tiny models in the
//! diffusers / transformers layouts and the outputs diffusers, transformers and peft computed
//! from them; its README lists each file and the tolerances float32 earns). Tests, examples and
//! benchmark defaults take every fixture path from here.
use std::path::PathBuf;

/// The fixtures folder: `$CATLORA_FIXTURES` when set (a test binary carried to another machine),
/// else `tests/fixtures` of the source tree cargo runs from. The tree is read at run time because
/// a build cache shared between checkouts keeps the path of whichever checkout compiled it.
pub fn fixtures_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("CATLORA_FIXTURES") {
        return PathBuf::from(dir);
    }
    let tree = std::env::var_os("CARGO_MANIFEST_DIR").map(PathBuf::from).unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    tree.join("tests").join("fixtures")
}

/// A path inside the fixtures folder.
pub fn fixture(relative: &str) -> PathBuf {
    fixtures_dir().join(relative)
}
