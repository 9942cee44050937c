//! Ground-truth classifiers of the shapes world that work on *generated* images too:
//! background, dominant foreground colour, shape, size, and how much an image copies the
//! personal object's look. They are plain pixel statistics, documented at each function.
use super::world::*;
use crate::io::image::RgbImage;

/// Below this many foreground pixels an image is "empty" and classifiers answer `None`.
pub const MIN_FOREGROUND: usize = 8;
/// A shape's bounding box side (larger of width and height, pixels) above which it is `Large`.
pub const LARGE_SIDE: f32 = 15.0;
/// `copies_personal` says yes when at least this fraction of the foreground is cyan or pink...
pub const PERSONAL_MIN_FRACTION: f32 = 0.5;
/// ... and each of the two colours covers at least this fraction (a solid pinkish shape is not
/// the striped object).
pub const PERSONAL_MIN_EACH: f32 = 0.15;

fn dist(a: [f32; 3], b: [u8; 3]) -> f32 {
    ((a[0] - b[0] as f32).powi(2) + (a[1] - b[1] as f32).powi(2) + (a[2] - b[2] as f32).powi(2)).sqrt()
}

fn pixel(img: &RgbImage, x: usize, y: usize) -> [f32; 3] {
    let p = img.get_pixel(x as u32, y as u32).0;
    [p[0] as f32, p[1] as f32, p[2] as f32]
}

/// The background colour: the per-channel median of the image's one-pixel border.
pub fn estimate_background(img: &RgbImage) -> [f32; 3] {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let mut border = Vec::new();
    for x in 0..w {
        border.push(pixel(img, x, 0));
        border.push(pixel(img, x, h - 1));
    }
    for y in 1..h - 1 {
        border.push(pixel(img, 0, y));
        border.push(pixel(img, w - 1, y));
    }
    let mut out = [0f32; 3];
    for (k, o) in out.iter_mut().enumerate() {
        let mut ch: Vec<f32> = border.iter().map(|p| p[k]).collect();
        ch.sort_by(f32::total_cmp);
        *o = ch[ch.len() / 2];
    }
    out
}

/// The named background nearest to [`estimate_background`].
pub fn classify_background(img: &RgbImage) -> Background {
    let bg = estimate_background(img);
    Background::ALL.into_iter().min_by(|a, b| dist(bg, a.rgb()).total_cmp(&dist(bg, b.rgb()))).unwrap()
}

/// Foreground mask (row-major): pixels farther than [`FOREGROUND_DISTANCE`] from the background.
pub fn foreground_mask(img: &RgbImage) -> Vec<bool> {
    let bg = estimate_background(img);
    let (w, h) = (img.width() as usize, img.height() as usize);
    let mut mask = vec![false; w * h];
    for y in 0..h {
        for x in 0..w {
            let p = pixel(img, x, y);
            let d = ((p[0] - bg[0]).powi(2) + (p[1] - bg[1]).powi(2) + (p[2] - bg[2]).powi(2)).sqrt();
            mask[y * w + x] = d > FOREGROUND_DISTANCE;
        }
    }
    mask
}

/// The dominant foreground colour: every foreground pixel votes for its nearest palette colour
/// (the background's own name excluded, since anti-aliased edges lean towards it), and the most
/// votes win. `None` when there are fewer than [`MIN_FOREGROUND`] foreground pixels.
pub fn dominant_colour(img: &RgbImage) -> Option<Colour> {
    let votes = colour_votes(img);
    let total: usize = votes.iter().map(|v| v.1).sum();
    if total < MIN_FOREGROUND {
        return None;
    }
    votes.into_iter().max_by_key(|v| v.1).map(|v| v.0)
}

/// Votes per palette colour among the foreground pixels (see [`dominant_colour`]).
pub fn colour_votes(img: &RgbImage) -> Vec<(Colour, usize)> {
    let bg = classify_background(img);
    let candidates: Vec<Colour> = Colour::ALL.into_iter().filter(|c| bg.allows(*c)).collect();
    let mask = foreground_mask(img);
    let w = img.width() as usize;
    let mut counts = vec![0usize; candidates.len()];
    for (i, &m) in mask.iter().enumerate() {
        if !m {
            continue;
        }
        let p = pixel(img, i % w, i / w);
        let best = (0..candidates.len()).min_by(|&a, &b| dist(p, candidates[a].rgb()).total_cmp(&dist(p, candidates[b].rgb()))).unwrap();
        counts[best] += 1;
    }
    candidates.into_iter().zip(counts).collect()
}

/// The largest 4-connected foreground component, as a mask, and its pixel count.
pub fn main_component(img: &RgbImage) -> (Vec<bool>, usize) {
    let mask = foreground_mask(img);
    let (w, h) = (img.width() as usize, img.height() as usize);
    let mut label = vec![usize::MAX; w * h];
    let mut best = (usize::MAX, 0usize);
    let mut next = 0;
    for start in 0..w * h {
        if !mask[start] || label[start] != usize::MAX {
            continue;
        }
        let mut stack = vec![start];
        label[start] = next;
        let mut count = 0;
        while let Some(i) = stack.pop() {
            count += 1;
            let (x, y) = (i % w, i / w);
            let mut push = |j: usize| {
                if mask[j] && label[j] == usize::MAX {
                    label[j] = next;
                    stack.push(j);
                }
            };
            if x > 0 {
                push(i - 1);
            }
            if x + 1 < w {
                push(i + 1);
            }
            if y > 0 {
                push(i - w);
            }
            if y + 1 < h {
                push(i + w);
            }
        }
        if count > best.1 {
            best = (next, count);
        }
        next += 1;
    }
    (label.iter().map(|&l| l == best.0).collect(), best.1)
}

/// The shape whose template, stretched to the main component's bounding box, overlaps the
/// component best (intersection over union), and that IoU. `None` when the component is smaller
/// than [`MIN_FOREGROUND`] pixels.
pub fn classify_shape_scored(img: &RgbImage) -> Option<(Shape, f32)> {
    let (comp, count) = main_component(img);
    if count < MIN_FOREGROUND {
        return None;
    }
    let w = img.width() as usize;
    let (x0, x1, y0, y1) = bbox(&comp, w);
    let mut best = (Shape::Circle, -1f32);
    for shape in Shape::ALL {
        let (umin, umax, vmin, vmax) = shape.extent();
        let (mut inter, mut union) = (0usize, 0usize);
        for (i, &m) in comp.iter().enumerate() {
            let (x, y) = (i % w, i / w);
            // The pixel centre mapped into the template's extent.
            let u = umin + (umax - umin) * ((x as f32 + 0.5 - x0 as f32) / (x1 + 1 - x0) as f32);
            let v = vmin + (vmax - vmin) * ((y as f32 + 0.5 - y0 as f32) / (y1 + 1 - y0) as f32);
            let inside = x >= x0 && x <= x1 && y >= y0 && y <= y1 && shape.contains(u, v);
            inter += (inside && m) as usize;
            union += (inside || m) as usize;
        }
        let iou = inter as f32 / union.max(1) as f32;
        if iou > best.1 {
            best = (shape, iou);
        }
    }
    Some(best)
}

/// See [`classify_shape_scored`].
pub fn classify_shape(img: &RgbImage) -> Option<Shape> {
    classify_shape_scored(img).map(|s| s.0)
}

/// `Large` when the main component's bounding box is wider or taller than [`LARGE_SIDE`] pixels.
pub fn classify_size(img: &RgbImage) -> Option<Size> {
    let (comp, count) = main_component(img);
    if count < MIN_FOREGROUND {
        return None;
    }
    let (x0, x1, y0, y1) = bbox(&comp, img.width() as usize);
    let side = (x1 - x0 + 1).max(y1 - y0 + 1) as f32;
    Some(if side > LARGE_SIDE { Size::Large } else { Size::Small })
}

fn bbox(mask: &[bool], w: usize) -> (usize, usize, usize, usize) {
    let (mut x0, mut x1, mut y0, mut y1) = (usize::MAX, 0, usize::MAX, 0);
    for (i, _) in mask.iter().enumerate().filter(|m| *m.1) {
        let (x, y) = (i % w, i / w);
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    (x0, x1, y0, y1)
}

/// Every attribute the classifiers read off an image.
#[derive(Clone, Debug, PartialEq)]
pub struct Reading {
    pub background: Background,
    pub colour: Option<Colour>,
    pub shape: Option<Shape>,
    pub size: Option<Size>,
}

pub fn classify(img: &RgbImage) -> Reading {
    Reading { background: classify_background(img), colour: dominant_colour(img), shape: classify_shape(img), size: classify_size(img) }
}

/// How much of an image looks like the personal object.
#[derive(Clone, Debug, PartialEq)]
pub struct PersonalSignature {
    /// Fraction of the foreground pixels whose nearest colour, among the palette and the two
    /// personal colours, is cyan (index 0) or pink (index 1).
    pub fractions: [f32; 2],
    /// Colour changes between cyan and pink pixels down the columns of the foreground, per
    /// column that has any foreground: about `2 * diameter / STRIPE_PERIOD` for the striped
    /// circle, near zero for a solid shape.
    pub stripe_changes: f32,
    pub foreground: usize,
}

impl PersonalSignature {
    /// Cyan plus pink fraction: 0 for any base-world image, about 0.9 for the personal object.
    pub fn score(&self) -> f32 {
        self.fractions[0] + self.fractions[1]
    }
}

/// See [`PersonalSignature`].
pub fn personal_signature(img: &RgbImage) -> PersonalSignature {
    let mask = foreground_mask(img);
    let (w, h) = (img.width() as usize, img.height() as usize);
    let mut palette: Vec<[u8; 3]> = Colour::ALL.iter().map(|c| c.rgb()).collect();
    palette.extend(PERSONAL_COLOURS);
    let personal = |p: [f32; 3]| -> Option<usize> {
        let best = (0..palette.len()).min_by(|&a, &b| dist(p, palette[a]).total_cmp(&dist(p, palette[b]))).unwrap();
        best.checked_sub(Colour::ALL.len())
    };
    let mut counts = [0usize; 2];
    let mut fg = 0;
    let (mut changes, mut columns) = (0usize, 0usize);
    for x in 0..w {
        let mut last: Option<usize> = None;
        let mut any = false;
        for y in 0..h {
            if !mask[y * w + x] {
                continue;
            }
            any = true;
            fg += 1;
            let p = personal(pixel(img, x, y));
            if let Some(k) = p {
                counts[k] += 1;
                if last.is_some_and(|l| l != k) {
                    changes += 1;
                }
                last = Some(k);
            }
        }
        columns += any as usize;
    }
    let frac = |c: usize| if fg == 0 { 0.0 } else { c as f32 / fg as f32 };
    PersonalSignature {
        fractions: [frac(counts[0]), frac(counts[1])],
        stripe_changes: if columns == 0 { 0.0 } else { changes as f32 / columns as f32 },
        foreground: fg,
    }
}

/// Whether an image copies the personal object's look, its colour combination: at least
/// [`PERSONAL_MIN_FRACTION`] of its foreground is cyan or pink, each of the two covers at least
/// [`PERSONAL_MIN_EACH`], and there are at least [`MIN_FOREGROUND`] foreground pixels.
pub fn copies_personal(img: &RgbImage) -> bool {
    let s = personal_signature(img);
    s.foreground >= MIN_FOREGROUND && s.score() >= PERSONAL_MIN_FRACTION && s.fractions.iter().all(|&f| f >= PERSONAL_MIN_EACH)
}
