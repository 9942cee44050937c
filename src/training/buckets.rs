//! Aspect-ratio bucketing as kohya's sd-scripts does it: training sizes of multiples of
//! `step` pixels whose area stays about `resolution²`, each image trained at the size of the
//! closest aspect ratio (resized to cover it, then cropped), and every batch drawn from one size
//! so that its latents stack.
use crate::rng::Rng;
use anyhow::{Result, bail};

/// The bucket settings (kohya's `--enable_bucket`, `--min_bucket_reso`, `--max_bucket_reso`,
/// `--bucket_reso_steps`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BucketSpec {
    pub resolution: usize,
    pub min: usize,
    pub max: usize,
    pub step: usize,
}

impl BucketSpec {
    /// Refuses settings that make no buckets or sizes the VAE cannot encode, naming the option.
    pub fn validate(&self) -> Result<()> {
        let s = self;
        if s.step == 0 || !s.step.is_multiple_of(8) {
            bail!("--bucket-reso-steps {} must be a positive multiple of 8 (the VAE's factor)", s.step);
        }
        if s.min == 0 || !s.min.is_multiple_of(s.step) || !s.max.is_multiple_of(s.step) {
            bail!(
                "--min-bucket-reso {} and --max-bucket-reso {} must be positive multiples of --bucket-reso-steps {}",
                s.min,
                s.max,
                s.step
            );
        }
        if !(s.min <= s.resolution && s.resolution <= s.max) {
            bail!("--resolution {} must lie between --min-bucket-reso {} and --max-bucket-reso {}", s.resolution, s.min, s.max);
        }
        if s.max > crate::limits::MAX_GENERATE_SIDE {
            bail!("--max-bucket-reso {} is over the largest side of {}", s.max, crate::limits::MAX_GENERATE_SIDE);
        }
        Ok(())
    }

    /// Every bucket as (width, height), sorted: the square of area `resolution²` (rounded down to
    /// the step) and, for each width from `min` to `max`, the largest height within the area,
    /// both ways round (kohya's `make_bucket_resolutions`).
    pub fn resolutions(&self) -> Vec<(usize, usize)> {
        let area = self.resolution * self.resolution;
        let side = (area as f64).sqrt() as usize / self.step * self.step;
        let mut out = std::collections::BTreeSet::from([(side, side)]);
        let mut width = self.min;
        while width <= self.max {
            let height = self.max.min(area / width / self.step * self.step);
            if height >= self.min {
                out.insert((width, height));
                out.insert((height, width));
            }
            width += self.step;
        }
        out.into_iter().collect()
    }
}

/// The bucket whose aspect ratio is closest to a `w`×`h` image's (the first such in sorted order
/// on a tie, as numpy's `argmin`).
pub fn nearest(buckets: &[(usize, usize)], w: u32, h: u32) -> (usize, usize) {
    let ratio = w as f64 / h.max(1) as f64;
    let error = |&(bw, bh): &(usize, usize)| (bw as f64 / bh as f64 - ratio).abs();
    let mut best = buckets[0];
    for b in &buckets[1..] {
        if error(b) < error(&best) {
            best = *b;
        }
    }
    best
}

/// The batches of pass `epoch`, each a list of positions in `sizes` (one per repeated image) of
/// one size: each size's positions shuffled and cut into batches of `batch` (the last one
/// shorter), then the batches of all sizes shuffled together. A pure function of its inputs, so
/// a resumed run draws the same batches.
pub fn epoch_batches(sizes: &[(usize, usize)], batch: usize, seed: u64, epoch: usize) -> Vec<Vec<usize>> {
    let mut groups: std::collections::BTreeMap<(usize, usize), Vec<usize>> = Default::default();
    for (i, s) in sizes.iter().enumerate() {
        groups.entry(*s).or_default().push(i);
    }
    let mut rng = Rng::new(seed ^ 0xb0c4_e75e_ed00_0000 ^ (epoch as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let mut batches = Vec::new();
    for (_, mut members) in groups {
        shuffle(&mut members, &mut rng);
        batches.extend(members.chunks(batch.max(1)).map(<[usize]>::to_vec));
    }
    shuffle(&mut batches, &mut rng);
    batches
}

fn shuffle<T>(v: &mut [T], rng: &mut Rng) {
    for i in (1..v.len()).rev() {
        v.swap(i, rng.below(i + 1));
    }
}

/// How many batches one pass over `sizes` makes (the same for every pass).
pub fn batches_per_epoch(sizes: &[(usize, usize)], batch: usize) -> usize {
    let mut counts: std::collections::BTreeMap<(usize, usize), usize> = Default::default();
    for s in sizes {
        *counts.entry(*s).or_default() += 1;
    }
    counts.values().map(|n| n.div_ceil(batch.max(1))).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(resolution: usize) -> BucketSpec {
        BucketSpec { resolution, min: 256, max: 1024, step: 64 }
    }

    /// The list sd-scripts' `make_bucket_resolutions((512, 512), 256, 1024, 64)` returns, and
    /// (in `nearest_bucket_by_aspect_ratio`) the buckets its `BucketManager.select_bucket` picks.
    #[test]
    fn buckets_are_kohyas() {
        let expected = [
            (256, 832),
            (256, 896),
            (256, 960),
            (256, 1024),
            (320, 704),
            (320, 768),
            (384, 640),
            (448, 576),
            (512, 512),
            (576, 448),
            (640, 384),
            (704, 320),
            (768, 320),
            (832, 256),
            (896, 256),
            (960, 256),
            (1024, 256),
        ];
        assert_eq!(spec(512).resolutions(), expected);
        for (w, h) in spec(768).resolutions() {
            assert!(w % 64 == 0 && h % 64 == 0 && w * h <= 768 * 768 && (256..=1024).contains(&w) && (256..=1024).contains(&h));
        }
    }

    #[test]
    fn nearest_bucket_by_aspect_ratio() {
        let b = spec(512).resolutions();
        assert_eq!(nearest(&b, 1000, 1000), (512, 512));
        assert_eq!(nearest(&b, 1920, 1080), (640, 384));
        assert_eq!(nearest(&b, 1080, 1920), (384, 640));
        assert_eq!(nearest(&b, 4000, 100), (1024, 256));
        assert_eq!(nearest(&b, 600, 800), (448, 576));
    }

    #[test]
    fn batches_hold_one_size_and_cover_each_image_once() {
        let sizes = [(512, 512), (640, 384), (512, 512), (384, 640), (640, 384), (512, 512), (640, 384)];
        for epoch in 0..4 {
            let batches = epoch_batches(&sizes, 2, 7, epoch);
            assert_eq!(batches.len(), batches_per_epoch(&sizes, 2));
            let mut seen: Vec<usize> = batches.iter().flatten().copied().collect();
            seen.sort();
            assert_eq!(seen, (0..sizes.len()).collect::<Vec<_>>());
            for b in &batches {
                assert!(b.iter().all(|&i| sizes[i] == sizes[b[0]]), "{b:?} mixes sizes");
                assert!(!b.is_empty() && b.len() <= 2);
            }
            assert_eq!(batches, epoch_batches(&sizes, 2, 7, epoch));
        }
        assert_ne!(epoch_batches(&sizes, 2, 7, 0), epoch_batches(&sizes, 2, 7, 1));
    }

    #[test]
    fn bad_settings_are_named() {
        let err = |s: BucketSpec| s.validate().unwrap_err().to_string();
        assert!(err(BucketSpec { step: 60, ..spec(512) }).contains("--bucket-reso-steps 60"));
        assert!(err(BucketSpec { min: 100, ..spec(512) }).contains("--min-bucket-reso 100"));
        assert!(err(spec(128)).contains("--resolution 128"));
        spec(512).validate().unwrap();
    }
}
