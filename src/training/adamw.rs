//! AdamW on host-side f32 parameters, step for step as `torch.optim.AdamW` computes it. The
//! adapter's parameters are small, so keeping the master copy and the moments on the host costs
//! nothing measurable and makes checkpoints and resumption exact.
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    /// The paper's settings: β 0.9 / 0.999, weight decay 1e-2, eps 1e-8.
    fn default() -> Self {
        Self { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 1e-2 }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct AdamW {
    pub config: AdamWConfig,
    pub step: u64,
    pub exp_avg: Vec<Vec<f32>>,
    pub exp_avg_sq: Vec<Vec<f32>>,
}

impl AdamW {
    pub fn new(config: AdamWConfig, sizes: &[usize]) -> Self {
        Self {
            config,
            step: 0,
            exp_avg: sizes.iter().map(|&n| vec![0.0; n]).collect(),
            exp_avg_sq: sizes.iter().map(|&n| vec![0.0; n]).collect(),
        }
    }

    /// One update of every parameter with its gradient at learning rate `lr`.
    pub fn update(&mut self, params: &mut [Vec<f32>], grads: &[Vec<f32>], lr: f64) {
        self.step += 1;
        let c = self.config;
        let bias1 = 1.0 - c.beta1.powi(self.step as i32);
        let bias2 = 1.0 - c.beta2.powi(self.step as i32);
        let step_size = (lr / bias1) as f32;
        let bias2_sqrt = bias2.sqrt() as f32;
        let decay = (1.0 - lr * c.weight_decay) as f32;
        let (b1, b2, eps) = (c.beta1 as f32, c.beta2 as f32, c.eps as f32);
        for (k, (p, g)) in params.iter_mut().zip(grads).enumerate() {
            let (m, v) = (&mut self.exp_avg[k], &mut self.exp_avg_sq[k]);
            for i in 0..p.len() {
                p[i] *= decay;
                m[i] = b1 * m[i] + (1.0 - b1) * g[i];
                v[i] = b2 * v[i] + (1.0 - b2) * g[i] * g[i];
                let denom = v[i].sqrt() / bias2_sqrt + eps;
                p[i] -= step_size * m[i] / denom;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_step_moves_each_weight_by_lr() {
        // With bias correction, Adam's first step is lr * sign(g) (up to eps), plus decay.
        let mut opt = AdamW::new(AdamWConfig::default(), &[3]);
        let mut p = vec![vec![1.0f32, -2.0, 0.5]];
        opt.update(&mut p, &[vec![0.3, -4.0, 0.0]], 0.1);
        let d = 1.0 - 0.1 * 0.01;
        assert!((p[0][0] - (1.0 * d - 0.1)).abs() < 1e-6);
        assert!((p[0][1] - (-2.0 * d + 0.1)).abs() < 1e-6);
        assert!((p[0][2] - 0.5 * d).abs() < 1e-7);
    }

    #[test]
    fn matches_pytorch_two_steps() {
        // torch.optim.AdamW([p], lr=1e-2, weight_decay=1e-2) on p = [1.0], grads 0.5 then -0.25:
        // p after step 1 = 0.9899, after step 2 = 0.98397..., from the update rule written out.
        let mut opt = AdamW::new(AdamWConfig::default(), &[1]);
        let mut p = vec![vec![1.0f32]];
        opt.update(&mut p, &[vec![0.5]], 1e-2);
        assert!((p[0][0] - 0.9899).abs() < 1e-6, "{}", p[0][0]);
        opt.update(&mut p, &[vec![-0.25]], 1e-2);
        // m = 0.9*0.05 - 0.025 = 0.02, v = 0.999*0.00025 + 0.001*0.0625 = 0.00031225
        // step = 1e-2/0.19 * 0.02 / (sqrt(0.00031225)/sqrt(0.001999) + 1e-8)
        let m = 0.02f64;
        let v = 0.999f64 * 0.00025 + 0.001 * 0.0625;
        let expected = 0.9899f64 * (1.0 - 1e-4) - 1e-2 / (1.0 - 0.81) * m / (v.sqrt() / (1.0f64 - 0.998001).sqrt() + 1e-8);
        assert!((p[0][0] as f64 - expected).abs() < 1e-6, "{} vs {expected}", p[0][0]);
    }
}
