//! Dynamic loss scaling for `--precision fp16`, as PyTorch's `GradScaler` (the one kohya's and
//! diffusers' fp16 training use): the loss is multiplied by a power of two before the backward
//! pass so that small gradients survive float16's range (measured on the fixture's CAT step with
//! peft: without scaling the median LoRA gradient is 4.9e-2 off float32's, 4.0e-3 with 2^10, 3.7e-3
//! with 2^16; `scripts/fixtures/half_precision_errors.py`), and the gradients are divided by it again in float32. A step whose gradients overflow
//! is skipped and the scale halved; after 2000 good steps in a row it doubles.
use serde::{Deserialize, Serialize};

/// GradScaler's defaults.
const INIT_SCALE: f32 = 65536.0;
const GROWTH_INTERVAL: u32 = 2000;

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct LossScale {
    pub scale: f32,
    /// Good steps since the scale last changed.
    pub good_steps: u32,
}

impl Default for LossScale {
    fn default() -> Self {
        Self { scale: INIT_SCALE, good_steps: 0 }
    }
}

impl LossScale {
    /// A fresh scale for an fp16 run; float32 and bf16 need none.
    pub fn for_precision(precision: crate::precision::Precision) -> Option<Self> {
        (precision == crate::precision::Precision::Fp16).then(Self::default)
    }

    /// Records a step's outcome (`finite`: its unscaled gradients are all finite) and says
    /// whether the optimiser may take it.
    pub fn update(&mut self, finite: bool) -> bool {
        if !finite {
            // A power of two: scaling and unscaling stay exact.
            self.scale = (self.scale * 0.5).max(1.0);
            self.good_steps = 0;
            return false;
        }
        self.good_steps += 1;
        if self.good_steps == GROWTH_INTERVAL {
            self.scale = (self.scale * 2.0).min(f32::MAX / 2.0);
            self.good_steps = 0;
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overflow_halves_and_skips_good_steps_double_after_the_interval() {
        let mut s = LossScale::default();
        assert!(!s.update(false));
        assert_eq!(s, LossScale { scale: 32768.0, good_steps: 0 });
        for _ in 0..GROWTH_INTERVAL - 1 {
            assert!(s.update(true));
        }
        assert_eq!(s.scale, 32768.0);
        assert!(s.update(true));
        assert_eq!(s, LossScale { scale: 65536.0, good_steps: 0 });
        let mut low = LossScale { scale: 1.0, good_steps: 7 };
        assert!(!low.update(false));
        assert_eq!(low.scale, 1.0, "the scale never drops below 1");
    }
}
