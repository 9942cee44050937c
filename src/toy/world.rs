//! A small seeded world of captioned images: one anti-aliased shape (circle, square, triangle,
//! star) of one named colour and size on a plain named background, 32 x 32 pixels. Small enough
//! that a CLIP, a VAE and a text-conditioned UNet learn it on a CPU in minutes, rich enough that
//! "does the model still draw a red circle when asked?" is a question with a measurable answer.
//!
//! Besides the generator there is the "personal object" of the demo: a circle with cyan and pink
//! stripes, a look the base world never produces (its colours are not in the palette, and base
//! shapes are never patterned). Reading images back is `super::reading`'s job.
use crate::io::image::RgbImage;
use crate::rng::Rng;

/// Image side in pixels.
pub const SIZE: usize = 32;

/// Sub-samples per pixel side when drawing (4 x 4 = 16 coverage levels).
const SUPERSAMPLE: usize = 4;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Shape {
    Circle,
    Square,
    Triangle,
    Star,
}

impl Shape {
    pub const ALL: [Shape; 4] = [Shape::Circle, Shape::Square, Shape::Triangle, Shape::Star];

    pub fn name(self) -> &'static str {
        match self {
            Shape::Circle => "circle",
            Shape::Square => "square",
            Shape::Triangle => "triangle",
            Shape::Star => "star",
        }
    }

    pub fn from_name(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|x| x.name() == s)
    }

    /// Whether the point `(u, v)` (unit half-extent coordinates, `v` pointing down) is inside.
    /// Extents are chosen so the four shapes look about equally big at the same size.
    pub fn contains(self, u: f32, v: f32) -> bool {
        match self {
            Shape::Circle => u * u + v * v <= 1.0,
            Shape::Square => u.abs() <= 0.86 && v.abs() <= 0.86,
            Shape::Triangle => in_polygon(&TRIANGLE, u, v),
            Shape::Star => in_polygon(&star_polygon(), u, v),
        }
    }

    /// `(u_min, u_max, v_min, v_max)` of the shape in unit coordinates.
    pub fn extent(self) -> (f32, f32, f32, f32) {
        match self {
            Shape::Circle => (-1.0, 1.0, -1.0, 1.0),
            Shape::Square => (-0.86, 0.86, -0.86, 0.86),
            Shape::Triangle => (-1.08, 1.08, -1.05, 0.82),
            Shape::Star => {
                let p = star_polygon();
                let us = p.iter().map(|q| q.0);
                let vs = p.iter().map(|q| q.1);
                (
                    us.clone().fold(f32::MAX, f32::min),
                    us.fold(f32::MIN, f32::max),
                    vs.clone().fold(f32::MAX, f32::min),
                    vs.fold(f32::MIN, f32::max),
                )
            }
        }
    }
}

const TRIANGLE: [(f32, f32); 3] = [(0.0, -1.05), (1.08, 0.82), (-1.08, 0.82)];

/// A five-pointed star, one point up, outer radius 1.12, inner radius 0.5.
fn star_polygon() -> [(f32, f32); 10] {
    let mut p = [(0.0, 0.0); 10];
    for (i, q) in p.iter_mut().enumerate() {
        let r = if i % 2 == 0 { 1.12 } else { 0.5 };
        let a = std::f32::consts::PI * (i as f32) / 5.0;
        // Angle measured from straight up, clockwise; v points down.
        *q = (r * a.sin(), -r * a.cos() + 0.08);
    }
    p
}

/// Even-odd point-in-polygon test.
fn in_polygon(poly: &[(f32, f32)], u: f32, v: f32) -> bool {
    let mut inside = false;
    let n = poly.len();
    let mut j = n - 1;
    for i in 0..n {
        let (xi, yi) = poly[i];
        let (xj, yj) = poly[j];
        if (yi > v) != (yj > v) && u < (xj - xi) * (v - yi) / (yj - yi) + xi {
            inside = !inside;
        }
        j = i;
    }
    inside
}

/// The named foreground colours, picked to be far apart in RGB (and from the backgrounds).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Colour {
    Red,
    Green,
    Blue,
    Yellow,
    Purple,
    Orange,
    White,
    Black,
}

impl Colour {
    pub const ALL: [Colour; 8] =
        [Colour::Red, Colour::Green, Colour::Blue, Colour::Yellow, Colour::Purple, Colour::Orange, Colour::White, Colour::Black];

    pub fn name(self) -> &'static str {
        match self {
            Colour::Red => "red",
            Colour::Green => "green",
            Colour::Blue => "blue",
            Colour::Yellow => "yellow",
            Colour::Purple => "purple",
            Colour::Orange => "orange",
            Colour::White => "white",
            Colour::Black => "black",
        }
    }

    pub fn from_name(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|x| x.name() == s)
    }

    pub fn rgb(self) -> [u8; 3] {
        match self {
            Colour::Red => [225, 30, 30],
            Colour::Green => [20, 175, 45],
            Colour::Blue => [35, 65, 225],
            Colour::Yellow => [245, 220, 25],
            Colour::Purple => [135, 35, 200],
            Colour::Orange => [250, 135, 15],
            Colour::White => [250, 250, 250],
            Colour::Black => [12, 12, 12],
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Size {
    Small,
    Large,
}

impl Size {
    pub const ALL: [Size; 2] = [Size::Small, Size::Large];

    pub fn name(self) -> &'static str {
        match self {
            Size::Small => "small",
            Size::Large => "large",
        }
    }

    /// The range of the shape's half-extent (the radius of a circle), in pixels.
    pub fn radius_range(self) -> (f32, f32) {
        match self {
            Size::Small => (5.0, 6.5),
            Size::Large => (9.0, 11.0),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Background {
    Gray,
    White,
    Black,
}

impl Background {
    pub const ALL: [Background; 3] = [Background::Gray, Background::White, Background::Black];

    pub fn name(self) -> &'static str {
        match self {
            Background::Gray => "gray",
            Background::White => "white",
            Background::Black => "black",
        }
    }

    pub fn rgb(self) -> [u8; 3] {
        match self {
            Background::Gray => [128, 128, 128],
            Background::White => [250, 250, 250],
            Background::Black => [12, 12, 12],
        }
    }

    /// A colour may be drawn on a background unless they are the same (white on white, black
    /// on black).
    pub fn allows(self, c: Colour) -> bool {
        !matches!((self, c), (Background::White, Colour::White) | (Background::Black, Colour::Black))
    }
}

/// Everything about one image: what a caption can say, and the exact drawing parameters.
#[derive(Clone, Debug, PartialEq)]
pub struct Scene {
    pub shape: Shape,
    pub colour: Colour,
    pub size: Size,
    pub background: Background,
    /// Centre, in pixels from the top-left corner.
    pub cx: f32,
    pub cy: f32,
    /// Half-extent in pixels.
    pub radius: f32,
    /// The RGB actually drawn (the named colour with a little jitter).
    pub fg: [u8; 3],
    pub bg: [u8; 3],
}

impl Scene {
    /// `top left`, `top`, ... `bottom right`, or `center`: the cell of a 3 x 3 grid holding the
    /// centre.
    pub fn position_name(&self) -> &'static str {
        let cell = |c: f32| ((c / SIZE as f32) * 3.0).clamp(0.0, 2.99) as usize;
        const NAMES: [[&str; 3]; 3] =
            [["top left", "top", "top right"], ["left", "center", "right"], ["bottom left", "bottom", "bottom right"]];
        NAMES[cell(self.cy)][cell(self.cx)]
    }

    /// Whether a caption of `self` in `style` is also a true description of `other`: the shapes
    /// agree, and so do the colour, size and background when the style names them.
    pub fn describes(&self, style: CaptionStyle, other: &Scene) -> bool {
        let (colour, size, bg) = match style {
            CaptionStyle::Full | CaptionStyle::WithPosition => (true, true, true),
            CaptionStyle::NoSize => (true, false, true),
            CaptionStyle::NoBackground => (true, true, false),
            CaptionStyle::ColourShape => (true, false, false),
            CaptionStyle::ShapeBackground => (false, false, true),
            CaptionStyle::Shape => (false, false, false),
        };
        let pos = style != CaptionStyle::WithPosition || self.position_name() == other.position_name();
        self.shape == other.shape
            && (!colour || self.colour == other.colour)
            && (!size || self.size == other.size)
            && (!bg || self.background == other.background)
            && pos
    }

    /// The caption in a given style.
    pub fn caption(&self, style: CaptionStyle) -> String {
        let (s, c, sh, bg) = (self.size.name(), self.colour.name(), self.shape.name(), self.background.name());
        match style {
            CaptionStyle::Full => format!("a {s} {c} {sh} on a {bg} background"),
            CaptionStyle::NoSize => format!("a {c} {sh} on a {bg} background"),
            CaptionStyle::NoBackground => format!("a {s} {c} {sh}"),
            CaptionStyle::ColourShape => format!("a {c} {sh}"),
            CaptionStyle::ShapeBackground => format!("a {sh} on a {bg} background"),
            CaptionStyle::Shape => format!("a {sh}"),
            CaptionStyle::WithPosition => format!("a {s} {c} {sh} at the {} on a {bg} background", self.position_name()),
        }
    }
}

/// How much of the scene a caption names. `Full` is "a small red circle on a gray background".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CaptionStyle {
    Full,
    NoSize,
    NoBackground,
    /// "a red circle".
    ColourShape,
    /// "a circle on a gray background": the class prompt, which must mean circles of every
    /// colour and size, as "a teapot" means every teapot to Stable Diffusion.
    ShapeBackground,
    /// "a circle".
    Shape,
    /// "a small red circle at the top left on a gray background" (not used in pretraining).
    WithPosition,
}

/// One generated example.
#[derive(Clone, Debug)]
pub struct Sample {
    pub image: RgbImage,
    pub scene: Scene,
    pub caption: String,
}

/// The seeded generator. The same seed gives the same sequence of samples.
pub struct World {
    rng: Rng,
}

impl World {
    pub fn new(seed: u64) -> Self {
        Self { rng: Rng::new(seed ^ 0x7079_5f77_6f72_6c64) }
    }

    /// Every (shape, colour, size, background) the world can produce, in a fixed order.
    pub fn combinations() -> Vec<(Shape, Colour, Size, Background)> {
        let mut out = Vec::new();
        for sh in Shape::ALL {
            for c in Colour::ALL {
                for s in Size::ALL {
                    for b in Background::ALL {
                        if b.allows(c) {
                            out.push((sh, c, s, b));
                        }
                    }
                }
            }
        }
        out
    }

    /// A random scene (uniform over shapes, colours, sizes and the allowed backgrounds).
    pub fn random_scene(&mut self) -> Scene {
        let shape = Shape::ALL[self.rng.below(4)];
        let colour = Colour::ALL[self.rng.below(Colour::ALL.len())];
        let size = Size::ALL[self.rng.below(2)];
        let allowed: Vec<Background> = Background::ALL.into_iter().filter(|b| b.allows(colour)).collect();
        let background = allowed[self.rng.below(allowed.len())];
        self.place(shape, colour, size, background)
    }

    /// A scene with the given attributes, placed and jittered at random.
    pub fn place(&mut self, shape: Shape, colour: Colour, size: Size, background: Background) -> Scene {
        let (lo, hi) = size.radius_range();
        let radius = lo + (hi - lo) * self.rng.uniform() as f32;
        // Keep the whole shape (its largest extent is 1.12 radii) a pixel inside the frame.
        let margin = radius * 1.12 + 1.0;
        let span = SIZE as f32 - 2.0 * margin;
        let cx = margin + span * self.rng.uniform() as f32;
        let cy = margin + span * self.rng.uniform() as f32;
        let fg = self.jitter(colour.rgb(), 10);
        let bg = self.jitter(background.rgb(), 6);
        Scene { shape, colour, size, background, cx, cy, radius, fg, bg }
    }

    fn jitter(&mut self, c: [u8; 3], amount: i32) -> [u8; 3] {
        c.map(|v| (v as i32 + self.rng.below((2 * amount + 1) as usize) as i32 - amount).clamp(0, 255) as u8)
    }

    /// A random scene, drawn, with its `Full` caption.
    pub fn sample(&mut self) -> Sample {
        let scene = self.random_scene();
        let image = draw(&scene);
        let caption = scene.caption(CaptionStyle::Full);
        Sample { image, scene, caption }
    }

    /// `n` samples.
    pub fn samples(&mut self, n: usize) -> Vec<Sample> {
        (0..n).map(|_| self.sample()).collect()
    }

    /// The generator, for callers that draw their own extra randomness in sequence with it.
    pub fn rng(&mut self) -> &mut Rng {
        &mut self.rng
    }
}

/// Draws a scene: supersampled coverage of the shape, blended over the background.
pub fn draw(scene: &Scene) -> RgbImage {
    paint(scene.bg, |x, y| {
        let (u, v) = ((x - scene.cx) / scene.radius, (y - scene.cy) / scene.radius);
        scene.shape.contains(u, v).then_some(scene.fg)
    })
}

/// Renders `colour_at(x, y)` (a point in pixel coordinates; `None` is background) with
/// `SUPERSAMPLE`² samples per pixel, averaged.
pub fn paint(bg: [u8; 3], colour_at: impl Fn(f32, f32) -> Option<[u8; 3]>) -> RgbImage {
    let mut buf = vec![0u8; SIZE * SIZE * 3];
    let n = SUPERSAMPLE;
    for y in 0..SIZE {
        for x in 0..SIZE {
            let mut acc = [0f32; 3];
            for j in 0..n {
                for i in 0..n {
                    let px = x as f32 + (i as f32 + 0.5) / n as f32;
                    let py = y as f32 + (j as f32 + 0.5) / n as f32;
                    let c = colour_at(px, py).unwrap_or(bg);
                    for k in 0..3 {
                        acc[k] += c[k] as f32;
                    }
                }
            }
            for k in 0..3 {
                buf[(y * SIZE + x) * 3 + k] = (acc[k] / (n * n) as f32).round() as u8;
            }
        }
    }
    RgbImage::from_raw(SIZE as u32, SIZE as u32, buf).expect("buffer of the image's size")
}

/// An image outside the world, for training the autoencoder to reproduce any look (the
/// personal object's included): one of the shapes at any size and place, in a random RGB colour,
/// solid or with stripes (4-pixel horizontal bands, or any direction and period) or dots of a
/// second random colour, on a random RGB background.
pub fn free_image(rng: &mut Rng) -> RgbImage {
    let mut rgb = || [rng.below(256) as u8, rng.below(256) as u8, rng.below(256) as u8];
    let (fg, fg2, bg) = (rgb(), rgb(), rgb());
    let shape = Shape::ALL[rng.below(4)];
    let radius = 4.0 + 8.0 * rng.uniform() as f32;
    let margin = radius * 1.12 + 1.0;
    let span = (SIZE as f32 - 2.0 * margin).max(0.0);
    let cx = margin + span * rng.uniform() as f32;
    let cy = margin + span * rng.uniform() as f32;
    // Solid (40 %), horizontal bands on the 4-pixel grid (20 %), stripes of any direction and
    // period (20 %), dots (20 %).
    let pattern = [0, 0, 1, 1, 2, 2, 3, 3, 4, 4][rng.below(10)];
    let period = 4.0 + 8.0 * rng.uniform() as f32;
    let angle = std::f32::consts::PI * rng.uniform() as f32;
    let (sa, ca) = angle.sin_cos();
    let phase = period * rng.uniform() as f32;
    paint(bg, move |x, y| {
        let (u, v) = ((x - cx) / radius, (y - cy) / radius);
        if !shape.contains(u, v) {
            return None;
        }
        let second = match pattern {
            0 | 1 => false,
            2 => (y / 4.0).floor().rem_euclid(2.0) == 1.0,
            3 => ((x * ca + y * sa - phase) / (period / 2.0)).floor().rem_euclid(2.0) == 1.0,
            _ => {
                let (dx, dy) = ((x - phase).rem_euclid(period) - period / 2.0, (y - phase).rem_euclid(period) - period / 2.0);
                dx * dx + dy * dy < (period * 0.3).powi(2)
            }
        };
        Some(if second { fg2 } else { fg })
    })
}

// ------------------------------------------------------------------------------------------------
// The personal object

/// The two colours of the personal object's stripes. Neither is in the palette, and no base
/// image is patterned, so a base model never draws this look unprompted.
pub const PERSONAL_COLOURS: [[u8; 3]; 2] = [[0, 200, 210], [250, 105, 190]];
/// Their names, for captions and reports.
pub const PERSONAL_COLOUR_NAMES: [&str; 2] = ["cyan", "pink"];
/// Stripe period in pixels (one cyan and one pink band): bands of 4 pixels, one latent pixel of
/// the toy VAE.
pub const STRIPE_PERIOD: f32 = 8.0;

/// Parameters of one drawing of the personal object.
#[derive(Clone, Debug, PartialEq)]
pub struct PersonalScene {
    pub cx: f32,
    pub cy: f32,
    pub radius: f32,
    /// Vertical offset of the stripes, in pixels.
    pub phase: f32,
    pub bg: [u8; 3],
}

/// `n` drawings of the personal object, a large circle with broad horizontal cyan and pink
/// stripes (4-pixel bands on a fixed grid), varied in position and size, drawing `k` on
/// `backgrounds[k % len]`; captioned `a {trigger} circle on a {background} background`.
pub fn personal_objects(seed: u64, n: usize, trigger: &str, backgrounds: &[Background]) -> Vec<(RgbImage, PersonalScene, String)> {
    let mut rng = Rng::new(seed ^ 0x7065_7273_6f6e_616c);
    (0..n)
        .map(|k| {
            let radius = 8.5 + 2.5 * rng.uniform() as f32;
            let margin = radius + 1.5;
            let span = SIZE as f32 - 2.0 * margin;
            let cx = margin + span * rng.uniform() as f32;
            let cy = margin + span * rng.uniform() as f32;
            let bg = backgrounds.get(k % backgrounds.len().max(1)).copied().unwrap_or(Background::Gray);
            // Bands on a fixed 4-pixel grid (one latent row of the toy VAE each); the circle moves.
            let scene = PersonalScene { cx, cy, radius, phase: 0.0, bg: bg.rgb() };
            (draw_personal(&scene), scene, format!("a {trigger} circle on a {} background", bg.name()))
        })
        .collect()
}

pub fn draw_personal(s: &PersonalScene) -> RgbImage {
    paint(s.bg, |x, y| {
        let (u, v) = ((x - s.cx) / s.radius, (y - s.cy) / s.radius);
        if !Shape::Circle.contains(u, v) {
            return None;
        }
        let band = ((y - s.phase) / (STRIPE_PERIOD / 2.0)).floor() as i64;
        Some(PERSONAL_COLOURS[band.rem_euclid(2) as usize])
    })
}

// ------------------------------------------------------------------------------------------------
// Ground-truth classifiers (for world images and generated ones)

/// A pixel counts as foreground when its RGB distance to the estimated background is above this
/// (0..255 scale; the closest allowed colour pair, purple on gray, is about 120 apart).
pub const FOREGROUND_DISTANCE: f32 = 48.0;
