//! Image input and output: PNGs carrying AUTOMATIC1111-style generation parameters, decoding of
//! training and evaluation images, the training and CLIP preprocessing, and the conversions
//! between images and the tensors the models take and give.
use ::image::imageops::{self, FilterType};
use anyhow::{Context, Result, bail, ensure};
use burn::tensor::{Device, Tensor, TensorData};
use std::io::BufReader;
use std::path::{Path, PathBuf};

/// An 8-bit RGB image, rows top to bottom, pixels interleaved (HWC).
pub use ::image::RgbImage;

// ------------------------------------------------------------------------------------------------
// Writing

/// Writes an 8-bit RGB PNG (`rgb` is HWC) with text chunks, atomically. The same input always
/// gives the same bytes: compression and filter settings are fixed, and no time stamp is written.
pub fn save_png(path: &Path, rgb: &[u8], width: u32, height: u32, text: &[(&str, &str)]) -> Result<()> {
    let bytes = encode_png(rgb, width, height, text).with_context(|| format!("cannot encode {}", path.display()))?;
    crate::io::atomic::write(path, &bytes)
}

fn encode_png(rgb: &[u8], width: u32, height: u32, text: &[(&str, &str)]) -> Result<Vec<u8>> {
    ensure!(rgb.len() == width as usize * height as usize * 3, "{} bytes of pixels for a {width}x{height} RGB image", rgb.len());
    let mut out = Vec::new();
    let mut enc = png::Encoder::new(&mut out, width, height);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    enc.set_compression(png::Compression::Balanced);
    enc.set_filter(png::Filter::Adaptive);
    for (key, value) in text {
        // As PIL's `PngInfo.add_text` (what AUTOMATIC1111 uses): tEXt when the text is Latin-1,
        // otherwise iTXt, which holds UTF-8.
        if value.chars().all(|c| (c as u32) < 256) {
            enc.add_text_chunk(key.to_string(), value.to_string())?;
        } else {
            enc.add_itxt_chunk(key.to_string(), value.to_string())?;
        }
    }
    let mut writer = enc.write_header()?;
    writer.write_image_data(rgb)?;
    writer.finish()?;
    Ok(out)
}

/// The text chunks (tEXt, zTXt, iTXt) before the image data of a PNG, as (keyword, text).
pub fn read_png_text(path: &Path) -> Result<Vec<(String, String)>> {
    let file = std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let reader =
        png::Decoder::new(BufReader::new(file)).read_info().with_context(|| format!("cannot read the PNG header of {}", path.display()))?;
    let info = reader.info();
    let mut out = Vec::new();
    for c in &info.uncompressed_latin1_text {
        out.push((c.keyword.clone(), c.text.clone()));
    }
    for c in &info.compressed_latin1_text {
        out.push((c.keyword.clone(), c.get_text().with_context(|| format!("zTXt chunk of {}", path.display()))?));
    }
    for c in &info.utf8_text {
        out.push((c.keyword.clone(), c.get_text().with_context(|| format!("iTXt chunk of {}", path.display()))?));
    }
    Ok(out)
}

// ------------------------------------------------------------------------------------------------
// Tensors to images

/// Decoder output `[B, 3, H, W]` in [-1, 1] to `[B, H, W, 3]` in [0, 1], flattened, as diffusers'
/// `VaeImageProcessor.postprocess` does: `(x / 2 + 0.5).clamp(0, 1)` then NCHW → NHWC.
pub fn tensor_to_unit_hwc(images: Tensor<4>) -> Vec<f32> {
    let [b, c, h, w] = images.dims();
    assert_eq!(c, 3, "images must have 3 channels, got shape [{b}, {c}, {h}, {w}]");
    let data = images.into_data().convert::<f32>();
    let v = data.as_slice::<f32>().expect("f32 data after convert");
    let mut out = vec![0f32; b * h * w * 3];
    for n in 0..b {
        for ch in 0..3 {
            for y in 0..h {
                for x in 0..w {
                    let s = v[((n * 3 + ch) * h + y) * w + x];
                    out[((n * h + y) * w + x) * 3 + ch] = (s / 2.0 + 0.5).clamp(0.0, 1.0);
                }
            }
        }
    }
    out
}

/// Decoder output `[B, 3, H, W]` in [-1, 1] to one HWC 8-bit buffer per image, as diffusers'
/// `numpy_to_pil`: `(x * 255).round()`, where numpy rounds halves to even.
pub fn tensor_to_rgb8(images: Tensor<4>) -> Vec<Vec<u8>> {
    let [b, _, h, w] = images.dims();
    let unit = tensor_to_unit_hwc(images);
    if b == 0 {
        return Vec::new();
    }
    unit.chunks(h * w * 3).map(|img| img.iter().map(|&x| (x * 255.0).round_ties_even() as u8).collect()).collect()
}

// ------------------------------------------------------------------------------------------------
// Reading

/// Decodes a PNG, JPEG or WebP file (the format is sniffed from the bytes, then the extension) to
/// 8-bit RGB. Grey is replicated to the three channels, 16-bit samples are scaled to 8 bits, and
/// alpha is dropped without compositing, as kohya's `Image.convert("RGB")` does.
/// The header's size is checked against [`crate::limits`] before anything is decoded.
pub fn load_rgb(path: &Path) -> Result<RgbImage> {
    crate::limits::check_image_header(path)?;
    let mut reader = ::image::ImageReader::open(path)
        .with_context(|| format!("cannot open image {}", path.display()))?
        .with_guessed_format()
        .with_context(|| format!("cannot read image {}", path.display()))?;
    // The decoder's own limits too: formats can decode to more than their header says.
    let mut limits = ::image::Limits::default();
    limits.max_image_width = Some(crate::limits::MAX_IMAGE_SIDE);
    limits.max_image_height = Some(crate::limits::MAX_IMAGE_SIDE);
    limits.max_alloc = Some(crate::limits::MAX_IMAGE_PIXELS * 8);
    reader.limits(limits);
    // The image crate's decoding errors repeat their cause in their own message.
    let img = reader.decode().map_err(|e| anyhow::anyhow!("cannot decode image {}: {e}", path.display()))?;
    Ok(img.into_rgb8())
}

// ------------------------------------------------------------------------------------------------
// Training preprocessing

/// Where `resize_and_crop` takes its square from.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Crop {
    Center,
    /// Fractions in [0, 1] of the free room along each axis, drawn by the caller from its own RNG.
    Random {
        x_frac: f32,
        y_frac: f32,
    },
}

/// Resizes to cover `width`×`height` with the aspect ratio kept, with Lanczos3 (antialiased on
/// downscaling, like PIL's LANCZOS), and crops that size (a square of `size` for the fixed
/// resolution, a bucket's size with bucketing). A resize over [`crate::limits::MAX_IMAGE_PIXELS`]
/// (a long, thin image) is refused.
pub fn resize_and_crop(img: &RgbImage, (width, height): (u32, u32), crop: Crop) -> Result<RgbImage> {
    let (w, h) = img.dimensions();
    // Rounded, never below the target, so the crop always fits.
    let (nw, nh) = crate::limits::covering(w, h, width, height)?;
    let resized = imageops::resize(img, nw, nh, FilterType::Lanczos3);
    let offset = |room: u32, frac: f32| ((frac.clamp(0.0, 1.0) as f64 * room as f64).round() as u32).min(room);
    let (left, top) = match crop {
        Crop::Center => ((nw - width) / 2, (nh - height) / 2),
        Crop::Random { x_frac, y_frac } => (offset(nw - width, x_frac), offset(nh - height, y_frac)),
    };
    Ok(imageops::crop_imm(&resized, left, top, width, height).to_image())
}

/// Mirrors an image left to right (the `--flip` augmentation).
pub fn flip_horizontal(img: &RgbImage) -> RgbImage {
    imageops::flip_horizontal(img)
}

/// Same-sized images to a `[N, 3, H, W]` tensor in [-1, 1], as diffusers' training scripts do
/// (`ToTensor` then `Normalize([0.5], [0.5])`).
pub fn rgb_to_tensor(imgs: &[RgbImage], device: &Device) -> Tensor<4> {
    assert!(!imgs.is_empty(), "rgb_to_tensor needs at least one image");
    let (w, h) = imgs[0].dimensions();
    let (w, h) = (w as usize, h as usize);
    let mut v = vec![0f32; imgs.len() * 3 * h * w];
    for (n, img) in imgs.iter().enumerate() {
        assert_eq!(img.dimensions(), imgs[0].dimensions(), "image {n} of the batch differs in size");
        for (i, px) in img.as_raw().chunks_exact(3).enumerate() {
            for ch in 0..3 {
                v[(n * 3 + ch) * h * w + i] = (px[ch] as f32 / 255.0 - 0.5) / 0.5;
            }
        }
    }
    Tensor::from_data(TensorData::new(v, [imgs.len(), 3, h, w]), device)
}

// ------------------------------------------------------------------------------------------------
// CLIP preprocessing

/// HF `CLIPImageProcessor` (transformers 5.24): resize the shortest side to `size` (the long side
/// truncated, `int(size * long / short)`) with bicubic resampling, centre-crop `crop`×`crop` (offset
/// `(side - crop) // 2`, zero padding when the image is smaller), rescale by 1/255 and normalise.
/// Returns CHW. The resampling is the `image` crate's CatmullRom: the same kernel as PIL's and
/// torchvision's antialiased uint8 BICUBIC (Keys cubic, a = -0.5, support 2 widened by the
/// downscale factor, same pixel centres, weights normalised), run in PIL's pass order with its
/// 8-bit intermediate; only PIL's fixed-point weights differ, so a pixel is off by at most one level.
pub fn clip_preprocess(img: &RgbImage, size: u32, crop: u32, mean: [f32; 3], std: [f32; 3]) -> Result<Vec<f32>> {
    let (w, h) = img.dimensions();
    crate::limits::resized(w, h, size)?;
    let (short, long) = (w.min(h).max(1) as f64, w.max(h) as f64);
    let long = (size as f64 * long / short) as u32;
    let (nw, nh) = if w <= h { (size, long) } else { (long, size) };
    // Horizontal pass first, rounded to 8 bits, then vertical: PIL's order (each call below
    // leaves one axis unchanged, and the kernel is exactly the identity there).
    let wide = imageops::resize(img, nw, h, FilterType::CatmullRom);
    let resized = imageops::resize(&wide, nw, nh, FilterType::CatmullRom);
    // Negative offsets are the zero padding of a too-small image.
    let offset = |side: u32| -> i64 { if crop > side { -(((crop - side) / 2) as i64) } else { ((side - crop) / 2) as i64 } };
    let (left, top) = (offset(nw), offset(nh));
    let c = crop as usize;
    let mut out = vec![0f32; 3 * c * c];
    for y in 0..c {
        for x in 0..c {
            let (sx, sy) = (x as i64 + left, y as i64 + top);
            let inside = sx >= 0 && sy >= 0 && sx < nw as i64 && sy < nh as i64;
            for ch in 0..3 {
                let v = if inside { resized.get_pixel(sx as u32, sy as u32)[ch] as f32 } else { 0.0 };
                out[(ch * c + y) * c + x] = (v / 255.0 - mean[ch]) / std[ch];
            }
        }
    }
    Ok(out)
}

/// File extensions read as images (case-insensitive).
pub const IMAGE_EXTENSIONS: [&str; 4] = ["png", "jpg", "jpeg", "webp"];

/// The image files directly in `dir` (see [`IMAGE_EXTENSIONS`]), sorted by file name. An
/// unreadable or image-less folder is an error naming it.
pub fn list_images(dir: &Path) -> Result<Vec<PathBuf>> {
    let entries = std::fs::read_dir(dir).with_context(|| format!("cannot read image folder {}", dir.display()))?;
    let mut files = Vec::new();
    for entry in entries {
        let path = entry.with_context(|| format!("cannot list {}", dir.display()))?.path();
        let ext = path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase);
        if path.is_file() && ext.is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.as_str())) {
            files.push(path);
        }
    }
    if files.is_empty() {
        bail!("{}: no images found (looked for *.{})", dir.display(), IMAGE_EXTENSIONS.join(", *."));
    }
    files.sort_by(|a, b| a.file_name().cmp(&b.file_name()));
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::safetensors::SafeTensorsFile;
    use std::path::PathBuf;

    fn fixtures() -> PathBuf {
        crate::fixtures::fixtures_dir()
    }

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("catlora-image-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn png_round_trip_text_and_determinism() {
        let d = scratch("roundtrip");
        let (w, h) = (7u32, 5u32);
        let rgb: Vec<u8> = (0..w * h * 3).map(|i| (i * 37 % 256) as u8).collect();
        let params = "a cat\nSteps: 10, Sampler: DDIM, CFG scale: 7.5, Seed: 3, Size: 7x5, Model: tiny".to_string();
        let text = [("parameters", params.as_str()), ("comment", "猫 non-Latin-1")];
        let (a, b) = (d.join("a.png"), d.join("b.png"));
        save_png(&a, &rgb, w, h, &text).unwrap();
        save_png(&b, &rgb, w, h, &text).unwrap();
        assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap(), "repeated saves differ");
        let back = load_rgb(&a).unwrap();
        assert_eq!(back.dimensions(), (w, h));
        assert_eq!(back.as_raw(), &rgb);
        let chunks = read_png_text(&a).unwrap();
        assert!(chunks.contains(&("parameters".to_string(), params.clone())), "{chunks:?}");
        assert!(chunks.contains(&("comment".to_string(), "猫 non-Latin-1".to_string())), "{chunks:?}");
        assert!(save_png(&a, &rgb[1..], w, h, &[]).is_err());
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn load_errors_name_the_file() {
        let d = scratch("errors");
        let missing = d.join("missing.png");
        let e = format!("{:#}", load_rgb(&missing).unwrap_err());
        assert!(e.contains("missing.png"), "{e}");
        let corrupt = d.join("corrupt.png");
        std::fs::write(&corrupt, b"\x89PNG\r\n\x1a\nthis is not a png").unwrap();
        let e = load_rgb(&corrupt).unwrap_err().to_string();
        assert!(e.contains("corrupt.png"), "{e}");
        let text = d.join("text.jpg");
        std::fs::write(&text, b"hello").unwrap();
        let e = load_rgb(&text).unwrap_err().to_string();
        assert!(e.contains("text.jpg"), "{e}");
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn reference_png_matches_tensor_to_rgb8() {
        let st = SafeTensorsFile::open(&fixtures().join("reference.safetensors")).unwrap();
        let (shape, unit) = st.f32("pipe_ddim_image").unwrap();
        assert_eq!(shape[0], 1);
        let (h, w) = (shape[1], shape[2]);
        // [1, H, W, 3] in [0, 1] → [1, 3, H, W] in [-1, 1], as the decoder gives it.
        let mut nchw = vec![0f32; 3 * h * w];
        for i in 0..h * w {
            for c in 0..3 {
                nchw[c * h * w + i] = unit[i * 3 + c] * 2.0 - 1.0;
            }
        }
        let t = Tensor::<4>::from_data(TensorData::new(nchw, [1, 3, h, w]), &Device::flex());
        let back = tensor_to_unit_hwc(t.clone());
        let float_err = back.iter().zip(&unit).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        let ours = tensor_to_rgb8(t);
        assert_eq!(ours.len(), 1);
        let png = load_rgb(&fixtures().join("ddim_image.png")).unwrap();
        assert_eq!(png.dimensions(), (w as u32, h as u32));
        let max = ours[0].iter().zip(png.as_raw()).map(|(a, b)| a.abs_diff(*b)).max().unwrap();
        let exact = ours[0].iter().zip(png.as_raw()).filter(|(a, b)| a == b).count();
        println!("ddim_image.png vs tensor_to_rgb8: max diff {max}/255, {exact}/{} exact; float round trip {float_err:e}", ours[0].len());
        assert!(max <= 1);
        assert!(float_err <= 1e-6);
    }

    #[test]
    fn clip_preprocess_matches_reference() {
        let dir = fixtures().join("tiny-clip");
        let cfg: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("preprocessor_config.json")).unwrap()).unwrap();
        let size = cfg["size"]["shortest_edge"].as_u64().unwrap() as u32;
        let crop = cfg["crop_size"]["height"].as_u64().unwrap() as u32;
        let arr = |k: &str| -> [f32; 3] {
            let v: Vec<f32> = cfg[k].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect();
            [v[0], v[1], v[2]]
        };
        let (mean, std) = (arr("image_mean"), arr("image_std"));
        let st = SafeTensorsFile::open(&fixtures().join("reference.safetensors")).unwrap();
        let (shape, expected) = st.f32("clip_pixel_values").unwrap();
        assert_eq!(shape, vec![2, 3, crop as usize, crop as usize]);
        let per = 3 * (crop * crop) as usize;
        let mut all = 0.0f64;
        for (i, name) in ["probe-0.png", "probe-1.png"].iter().enumerate() {
            let got = clip_preprocess(&load_rgb(&dir.join(name)).unwrap(), size, crop, mean, std).unwrap();
            assert_eq!(got.len(), per);
            let want = &expected[i * per..(i + 1) * per];
            let diffs: Vec<f32> = got.iter().zip(want).map(|(a, b)| (a - b).abs()).collect();
            let mean_abs = diffs.iter().map(|&d| d as f64).sum::<f64>() / per as f64;
            let max = diffs.iter().cloned().fold(0f32, f32::max);
            println!("clip_preprocess {name}: mean abs {mean_abs:.3e}, max abs {max:.3e}");
            all += mean_abs / 2.0;
        }
        assert!(all <= 2e-2, "mean abs error {all}");
    }

    #[test]
    fn training_preprocessing() {
        // 6x4 image whose pixel value encodes its position.
        let img = RgbImage::from_fn(6, 4, |x, y| ::image::Rgb([(x * 40) as u8, (y * 60) as u8, 7]));
        let c = resize_and_crop(&img, (4, 4), Crop::Center).unwrap();
        assert_eq!(c.dimensions(), (4, 4));
        assert_eq!(c.get_pixel(0, 0)[0], 40); // no resize needed: columns 1..5 kept
        let left = resize_and_crop(&img, (4, 4), Crop::Random { x_frac: 0.0, y_frac: 0.5 }).unwrap();
        let right = resize_and_crop(&img, (4, 4), Crop::Random { x_frac: 1.0, y_frac: 0.5 }).unwrap();
        assert_eq!((left.get_pixel(0, 0)[0], right.get_pixel(3, 0)[0]), (0, 200));
        let small = resize_and_crop(&img, (2, 2), Crop::Center).unwrap();
        assert_eq!(small.dimensions(), (2, 2));
        let big = resize_and_crop(&img, (8, 8), Crop::Center).unwrap();
        assert_eq!(big.dimensions(), (8, 8));
        // Bucket sizes: a tall target keeps the height and crops the middle columns; a wide one
        // scales the width to fit.
        let tall = resize_and_crop(&img, (2, 4), Crop::Center).unwrap();
        assert_eq!((tall.dimensions(), tall.get_pixel(0, 0)[0], tall.get_pixel(0, 3)[1]), ((2, 4), 80, 180));
        assert_eq!(resize_and_crop(&img, (4, 2), Crop::Center).unwrap().dimensions(), (4, 2));
        assert_eq!(crate::limits::covering(6, 4, 4, 2).unwrap(), (4, 3));
        assert_eq!(crate::limits::covering(6, 4, 2, 4).unwrap(), (6, 4));

        let f = flip_horizontal(&img);
        assert_eq!(f.get_pixel(0, 1), img.get_pixel(5, 1));

        let t = rgb_to_tensor(&[img.clone(), f], &Device::flex());
        assert_eq!(t.dims(), [2, 3, 4, 6]);
        let v = t.clone().into_data().convert::<f32>().as_slice::<f32>().unwrap().to_vec();
        assert_eq!(v[0], -1.0); // image 0, red, (0, 0) = 0
        assert!((v[5] - (200.0 / 127.5 - 1.0)).abs() < 1e-6); // red at x = 5
        assert!((v[24 + 6] - (60.0 / 127.5 - 1.0)).abs() < 1e-6); // green at (x 0, y 1)
        // Back through the decoder-output path gives the same bytes.
        assert_eq!(tensor_to_rgb8(t)[0], img.as_raw().clone());
    }
}
