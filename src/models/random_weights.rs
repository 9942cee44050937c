//! Seeded random weights for any tensor a loader asks for, so that a model of any configuration
//! (the full-size SD 1.5 UNet in the benchmark, say) loads without a checkpoint and without a
//! second copy of the architecture's naming rules: the loader names every tensor with its shape,
//! and this source answers.
//!
//! Each tensor's values depend only on the seed, its name and its shape, not on the order in
//! which the loader asks. The scales follow PyTorch's default initialisation closely enough to
//! keep activations finite through a deep network (no inf / NaN / denormal slow paths in a
//! benchmark): weights of rank >= 2 are uniform with variance `1 / fan_in`, 1-D `*.bias` tensors
//! are small, and other 1-D tensors (normalisation scales) are one.
use crate::rng::Rng;

pub struct RandomWeights {
    seed: u64,
}

impl RandomWeights {
    pub fn new(seed: u64) -> Self {
        Self { seed }
    }

    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// Values for tensor `name` of `shape`, row-major.
    pub fn values(&self, name: &str, shape: &[usize]) -> Vec<f32> {
        let n: usize = shape.iter().product();
        let mut rng = Rng::new(self.seed ^ fnv1a(name.as_bytes()) ^ fnv1a(format!("{shape:?}").as_bytes()).rotate_left(29));
        if shape.len() <= 1 {
            if name.ends_with("bias") {
                return (0..n).map(|_| uniform(&mut rng, 0.02)).collect();
            }
            return vec![1.0; n];
        }
        let fan_in: usize = shape[1..].iter().product();
        // Uniform on [-b, b] has variance b^2 / 3.
        let bound = (3.0 / fan_in.max(1) as f32).sqrt();
        (0..n).map(|_| uniform(&mut rng, bound)).collect()
    }
}

/// Uniform on `[-bound, bound)` from 24 random bits (cheap: the SD 1.5 UNet asks for 860 M values).
fn uniform(rng: &mut Rng, bound: f32) -> f32 {
    let u = (rng.next_u32() >> 8) as f32 * (1.0 / (1u32 << 24) as f32);
    (2.0 * u - 1.0) * bound
}

fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h = 0xcbf29ce484222325u64;
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_per_name_and_scaled_by_fan_in() {
        let r = RandomWeights::new(3);
        let a = r.values("down.conv.weight", &[64, 32, 3, 3]);
        assert_eq!(a, RandomWeights::new(3).values("down.conv.weight", &[64, 32, 3, 3]));
        assert_ne!(a, r.values("up.conv.weight", &[64, 32, 3, 3]));
        assert_ne!(a, RandomWeights::new(4).values("down.conv.weight", &[64, 32, 3, 3]));
        let var = a.iter().map(|&x| (x as f64).powi(2)).sum::<f64>() / a.len() as f64;
        assert!((var * 288.0 - 1.0).abs() < 0.05, "variance {var} vs 1/288");
        assert_eq!(r.values("norm.weight", &[5]), vec![1.0; 5]);
        assert!(r.values("norm.bias", &[5]).iter().all(|v| v.abs() <= 0.02));
    }
}
