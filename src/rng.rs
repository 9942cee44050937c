//! A small seeded random generator whose stream is fixed by this file alone (no dependency can
//! change it), so the same seed gives the same noise, the same images and the same adapters.
use burn::tensor::{Device, Tensor, TensorData};

/// PCG-XSH-RR 64/32 with a Box-Muller normal transform.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rng {
    state: u64,
    inc: u64,
    spare: Option<u32>,
}

const MUL: u64 = 6364136223846793005;

impl Rng {
    pub fn new(seed: u64) -> Self {
        let mut r = Self { state: 0, inc: (0xda3e39cb94b95bdb ^ seed.rotate_left(17)) | 1, spare: None };
        r.next_u32();
        r.state = r.state.wrapping_add(seed);
        r.next_u32();
        r
    }

    /// The full state, for checkpoints (`from_state` restores it exactly).
    pub fn state(&self) -> [u64; 3] {
        [self.state, self.inc, self.spare.map_or(u64::MAX, |s| s as u64)]
    }

    pub fn from_state(s: [u64; 3]) -> Self {
        Self { state: s[0], inc: s[1], spare: if s[2] == u64::MAX { None } else { Some(s[2] as u32) } }
    }

    pub fn next_u32(&mut self) -> u32 {
        let old = self.state;
        self.state = old.wrapping_mul(MUL).wrapping_add(self.inc);
        let xorshifted = (((old >> 18) ^ old) >> 27) as u32;
        let rot = (old >> 59) as u32;
        xorshifted.rotate_right(rot)
    }

    pub fn next_u64(&mut self) -> u64 {
        ((self.next_u32() as u64) << 32) | self.next_u32() as u64
    }

    /// Uniform in [0, 1) with 53 bits.
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform integer in `0..n`.
    pub fn below(&mut self, n: usize) -> usize {
        (self.uniform() * n as f64) as usize % n.max(1)
    }

    /// Standard normal sample (Box-Muller; the second value of each pair is kept for the next call).
    pub fn normal(&mut self) -> f32 {
        if let Some(s) = self.spare.take() {
            return f32::from_bits(s);
        }
        let u1 = 1.0 - self.uniform(); // (0, 1]
        let u2 = self.uniform();
        let r = (-2.0 * u1.ln()).sqrt();
        let (s, c) = (2.0 * std::f64::consts::PI * u2).sin_cos();
        self.spare = Some(((r * s) as f32).to_bits());
        (r * c) as f32
    }

    pub fn normal_vec(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.normal()).collect()
    }

    /// A standard normal tensor of the given shape.
    pub fn normal_tensor<const D: usize>(&mut self, shape: [usize; D], device: &Device) -> Tensor<D> {
        let n = shape.iter().product();
        Tensor::from_data(TensorData::new(self.normal_vec(n), shape), device)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_stream_and_state_round_trip() {
        let mut a = Rng::new(7);
        let mut b = Rng::new(7);
        let xs: Vec<f32> = a.normal_vec(101);
        assert_eq!(xs, b.normal_vec(101));
        let saved = a.state();
        let next = a.normal_vec(5);
        assert_eq!(Rng::from_state(saved).normal_vec(5), next);
        assert_ne!(Rng::new(8).normal_vec(4), Rng::new(7).normal_vec(4));
    }

    #[test]
    fn normal_moments() {
        let mut r = Rng::new(1);
        let v = r.normal_vec(200_000);
        let mean = v.iter().map(|&x| x as f64).sum::<f64>() / v.len() as f64;
        let var = v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / v.len() as f64;
        assert!(mean.abs() < 0.01, "mean {mean}");
        assert!((var - 1.0).abs() < 0.01, "var {var}");
    }
}
