//! Where the reference fixtures live: `tests/fixtures/` in the source tree (tiny models in the
//! diffusers / transformers layouts and the outputs diffusers, transformers and peft computed
//! from them; its README lists each file and the tolerances float32 earns). Tests, examples and
//! benchmark defaults take every fixture path from here.
use std::path::PathBuf;

/// The fixtures folder of the source tree this crate was built from.
pub const FIXTURES_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

/// A path inside the fixtures folder.
pub fn fixture(relative: &str) -> PathBuf {
    PathBuf::from(FIXTURES_DIR).join(relative)
}
