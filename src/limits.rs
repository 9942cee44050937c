//! The sizes catlora refuses before it allocates, so that an absurd input ends in an error that
//! names the option or file and the limit, never in an out-of-memory abort.
//!
//! * Input images: at most [`MAX_IMAGE_SIDE`] pixels a side and [`MAX_IMAGE_PIXELS`] pixels,
//!   read from the header before decoding, and no resize that would exceed that pixel count.
//! * Text files: at most [`MAX_TEXT_BYTES`], and only regular files (a device or a pipe could be
//!   read forever).
//! * Image counts: at most [`MAX_IMAGES`] images of one `generate`, seeds per evaluation prompt.
//! * Generated and training images: at most [`MAX_GENERATE_SIDE`] pixels a side, and a rough
//!   memory estimate of the run ([`generation_bytes`]) must fit in the memory available:
//!   `MemAvailable` of `/proc/meminfo`, lowered by the process's address-space limit when one is
//!   set, or `CATLORA_MEMORY_LIMIT` (bytes, or with a K / M / G suffix) when given.
use anyhow::{Context, Result, bail};
use std::path::Path;

/// The most images one `generate` call makes, and the most seeds per prompt of an evaluation.
pub const MAX_IMAGES: usize = 100_000;

/// The largest text file catlora reads: configs, tokenizer files, prompt and caption files (SD's
/// largest, `tokenizer.json`, is about 2 MB).
pub const MAX_TEXT_BYTES: u64 = 64 << 20;

/// The longest side of an image file catlora decodes.
pub const MAX_IMAGE_SIDE: u32 = 16384;
/// The most pixels an image may have, decoded or after a resize.
pub const MAX_IMAGE_PIXELS: u64 = 64 << 20;
/// The longest side of an image catlora generates or trains at.
pub const MAX_GENERATE_SIDE: usize = 4096;

/// Reads an image file's size from its header (no decoding) and refuses sizes over the limits.
pub fn check_image_header(path: &Path) -> Result<(u32, u32)> {
    let (w, h) = ::image::ImageReader::open(path)
        .with_context(|| format!("cannot open image {}", path.display()))?
        .with_guessed_format()
        .with_context(|| format!("cannot read image {}", path.display()))?
        .into_dimensions()
        // The image crate's decoding errors repeat their cause in their own message.
        .map_err(|e| anyhow::anyhow!("cannot read the size of image {}: {e}", path.display()))?;
    check_image_size(w, h).with_context(|| format!("image {}", path.display()))?;
    Ok((w, h))
}

/// Refuses an image size over [`MAX_IMAGE_SIDE`] or [`MAX_IMAGE_PIXELS`].
pub fn check_image_size(w: u32, h: u32) -> Result<()> {
    if w == 0 || h == 0 {
        bail!("it is {w}x{h} pixels: empty");
    }
    if w.max(h) > MAX_IMAGE_SIDE || w as u64 * h as u64 > MAX_IMAGE_PIXELS {
        bail!("it is {w}x{h} pixels, over the limit of {MAX_IMAGE_SIDE} pixels a side and {MAX_IMAGE_PIXELS} pixels");
    }
    Ok(())
}

/// The size of `w × h` with its shorter side scaled to `short`, refused when over
/// [`MAX_IMAGE_PIXELS`] (a very long, thin image would otherwise resize to gigapixels).
pub fn resized(w: u32, h: u32, short: u32) -> Result<(u32, u32)> {
    covering(w, h, short, short)
}

/// The size of `w × h` scaled, aspect ratio kept, to cover `tw × th` (each side rounded and
/// never below the target's), refused when over [`MAX_IMAGE_PIXELS`].
pub fn covering(w: u32, h: u32, tw: u32, th: u32) -> Result<(u32, u32)> {
    let (wf, hf) = (w.max(1) as f64, h.max(1) as f64);
    // The axis that needs the larger scale sets it: the height for an image wider than the target.
    let (t, s) = if wf * th as f64 >= hf * tw as f64 { (th, hf) } else { (tw, wf) };
    let scale = |side: u32, min: u32| ((side as f64 * t as f64 / s).round() as u64).max(min as u64);
    let (nw, nh) = (scale(w, tw), scale(h, th));
    if nw.saturating_mul(nh) > MAX_IMAGE_PIXELS || nw > u32::MAX as u64 || nh > u32::MAX as u64 {
        bail!("a {w}x{h} image resized to cover {tw}x{th} would be {nw}x{nh} pixels, over the limit of {MAX_IMAGE_PIXELS}");
    }
    Ok((nw as u32, nh as u32))
}

/// Parses `CATLORA_MEMORY_LIMIT`: bytes, or a number with a K, M or G suffix.
fn parse_bytes(text: &str) -> Option<u64> {
    let t = text.trim();
    let (num, mul) = match t.chars().last()?.to_ascii_uppercase() {
        'K' => (&t[..t.len() - 1], 1u64 << 10),
        'M' => (&t[..t.len() - 1], 1 << 20),
        'G' => (&t[..t.len() - 1], 1 << 30),
        _ => (t, 1),
    };
    num.trim().parse::<f64>().ok().filter(|v| v.is_finite() && *v > 0.0).map(|v| (v * mul as f64) as u64)
}

fn proc_kb(file: &str, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(file).ok()?;
    let line = text.lines().find(|l| l.starts_with(key))?;
    line[key.len()..].split_whitespace().next()?.parse::<u64>().ok().map(|kb| kb * 1024)
}

/// The process's address-space limit (`ulimit -v`), when one is set.
fn address_space_limit() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = text.lines().find(|l| l.starts_with("Max address space"))?;
    line.split_whitespace().nth(3)?.parse::<u64>().ok()
}

/// The memory this process may still use, where the system tells.
pub fn available_memory() -> Result<Option<u64>> {
    if let Ok(v) = std::env::var("CATLORA_MEMORY_LIMIT") {
        return parse_bytes(&v)
            .map(Some)
            .with_context(|| format!("CATLORA_MEMORY_LIMIT `{v}` is not a size (bytes, or a number with K, M or G)"));
    }
    let mut avail = proc_kb("/proc/meminfo", "MemAvailable:");
    if let Some(limit) = address_space_limit() {
        let used = proc_kb("/proc/self/status", "VmSize:").unwrap_or(0);
        let left = limit.saturating_sub(used);
        avail = Some(avail.map_or(left, |a| a.min(left)));
    }
    Ok(avail)
}

/// Refuses work estimated at `need` bytes when less memory is available; `what` names the
/// options that set the size.
pub fn check_memory(need: u64, what: &str) -> Result<()> {
    if let Some(avail) = available_memory()?
        && need > avail
    {
        let gb = |b: u64| b as f64 / (1u64 << 30) as f64;
        bail!(
            "{what} need about {:.1} GB of memory, more than the {:.1} GB available (set CATLORA_MEMORY_LIMIT to override the estimate)",
            gb(need),
            gb(avail)
        );
    }
    Ok(())
}

/// What a denoising run's memory depends on.
pub struct RunShape {
    /// Latent side lengths.
    pub latent: (usize, usize),
    /// Images denoised together (2 per image with classifier-free guidance).
    pub batch: usize,
    /// The UNet's and the VAE's first (full-resolution) level widths.
    pub unet_channels: usize,
    pub vae_channels: usize,
    /// The VAE's downsampling factor.
    pub vae_factor: usize,
    pub heads: usize,
    /// With a graph for training (activations kept for the backward pass).
    pub training: bool,
}

/// A rough upper estimate of the activation memory of one denoising step and the VAE pass, in
/// bytes (f32). The UNet keeps about four dozen first-level activations alive (skips included)
/// without a graph, and eight times that with one (measured with SD 1.5 at 512 px on flex, above
/// the loaded weights: forward 233 MB, the size of 44 first-level activations; forward and
/// backward 1.58 GB, 300 of them). Attention holds at most three blocks of scores at once on
/// every backend (the flex kernel, PyTorch's fused kernels, the wgpu backends' blocks), never a
/// whole score matrix, and its graph keeps none. The VAE keeps about eight activations of its
/// full-resolution level.
pub fn generation_bytes(s: &RunShape) -> u64 {
    let latent_px = (s.latent.0 as u64).saturating_mul(s.latent.1 as u64);
    let level = latent_px.saturating_mul(s.unet_channels as u64).saturating_mul(4);
    let unet = level.saturating_mul(if s.training { 48 * 8 } else { 48 });
    let whole_scores = (s.heads as u64).saturating_mul(latent_px).saturating_mul(latent_px).saturating_mul(s.batch as u64);
    let scores = whole_scores.min(3 * crate::kernels::blocked_attention::BLOCK_SCORES as u64).saturating_mul(4);
    let image_px = latent_px.saturating_mul((s.vae_factor * s.vae_factor) as u64);
    let vae = image_px.saturating_mul(s.vae_channels as u64).saturating_mul(8 * 4);
    unet.saturating_mul(s.batch as u64).saturating_add(scores).saturating_add(vae)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_estimates() {
        assert!(check_image_size(512, 768).is_ok());
        assert!(check_image_size(1, 1_000_000).unwrap_err().to_string().contains("1x1000000"));
        assert!(check_image_size(20_000, 20_000).is_err());
        assert!(check_image_size(0, 5).is_err());
        assert_eq!(resized(768, 512, 512).unwrap(), (768, 512));
        assert!(resized(16384, 1, 512).unwrap_err().to_string().contains("16384x1"));
        assert_eq!(parse_bytes("8G"), Some(8 << 30));
        assert_eq!(parse_bytes("1024"), Some(1024));
        assert_eq!(parse_bytes("x"), None);
        let sd = |side: usize| RunShape {
            latent: (side / 8, side / 8),
            batch: 2,
            unet_channels: 320,
            vae_channels: 128,
            vae_factor: 8,
            heads: 8,
            training: false,
        };
        // SD 1.5 at 512 px: well under 8 GB; at 4096 px, far over.
        assert!(generation_bytes(&sd(512)) < 4 << 30, "{}", generation_bytes(&sd(512)));
        assert!(generation_bytes(&sd(4096)) > 64 << 30);
        // Above what was measured on flex (SD 1.5, 512 px, batch 1): forward 233 MB, forward and
        // backward 1.58 GB above the weights; the VAE left out, as the benchmark runs the UNet.
        let unet = |training| generation_bytes(&RunShape { batch: 1, vae_channels: 0, training, ..sd(512) });
        assert!(unet(false) > 233 << 20 && unet(true) > 1580 << 20, "{} {}", unet(false), unet(true));
    }
}
