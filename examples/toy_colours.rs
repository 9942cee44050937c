//! Reads folders of toy-world images (for example `catlora eval` output) with the demo's
//! ground-truth classifiers: `cargo run --release --example toy_colours -- DIR...` prints, per
//! folder, the colour diversity, copy rate and colour histogram the demo would report for them.
use anyhow::{Context, Result};
use catlora::io::image::load_rgb;
use catlora::toy::demo::{colour_summary, truth_of};

fn main() -> Result<()> {
    let dirs: Vec<String> = std::env::args().skip(1).collect();
    anyhow::ensure!(!dirs.is_empty(), "usage: toy_colours DIR... (folders of PNG images)");
    for dir in dirs {
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .with_context(|| format!("cannot read the folder {dir}"))?
            .map(|e| e.map(|e| e.path()))
            .collect::<std::io::Result<_>>()
            .with_context(|| format!("listing {dir}"))?;
        files.retain(|p| p.extension().is_some_and(|e| e == "png"));
        files.sort();
        anyhow::ensure!(!files.is_empty(), "{dir}: no PNG images");
        let images = files.iter().map(|p| load_rgb(p)).collect::<Result<Vec<_>>>()?;
        let t = truth_of(&images);
        println!(
            "{dir}: {} images, colour diversity {:.2}, copy rate {:.2}; {}",
            images.len(),
            t.colour_diversity,
            t.copy_rate,
            colour_summary(&t.colours)
        );
    }
    Ok(())
}
