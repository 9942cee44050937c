//! The DDPM forward process shared by every sampler and by training: betas, cumulative alphas,
//! `add_noise`, the v-prediction target and the SNR.
//!
//! diffusers builds these tables in float32 torch tensors, so they are built here with the same
//! float32 operations in the same order (a float64 table differs at the 1e-7..1e-6 level).
use burn::tensor::{Tensor, TensorData};

use super::config::{BetaSchedule, SchedulerConfig};

#[derive(Clone, Debug, PartialEq)]
pub struct NoiseSchedule {
    /// beta_t, float32 as diffusers stores them.
    pub betas: Vec<f32>,
    /// prod_{s<=t} (1 - beta_s), float32 as diffusers stores them.
    pub alphas_cumprod: Vec<f32>,
}

impl NoiseSchedule {
    pub fn new(config: &SchedulerConfig) -> Self {
        let n = config.num_train_timesteps;
        let betas: Vec<f32> = match (&config.trained_betas, config.beta_schedule) {
            (Some(b), _) => b.iter().map(|&b| b as f32).collect(),
            (None, BetaSchedule::Linear) => torch_linspace_f32(config.beta_start as f32, config.beta_end as f32, n),
            (None, BetaSchedule::ScaledLinear) => {
                torch_linspace_f32(config.beta_start.sqrt() as f32, config.beta_end.sqrt() as f32, n).into_iter().map(|b| b * b).collect()
            }
            (None, BetaSchedule::SquaredcosCapV2) => cosine_betas(n),
        };
        // torch.cumprod on CPU accumulates float32 inputs in a double and rounds each output.
        let mut acc = 1.0f64;
        let alphas_cumprod = betas
            .iter()
            .map(|&b| {
                acc *= (1.0f32 - b) as f64;
                acc as f32
            })
            .collect();
        Self { betas, alphas_cumprod }
    }

    pub fn num_train_timesteps(&self) -> usize {
        self.alphas_cumprod.len()
    }

    /// sigma_t = sqrt((1 - acp) / acp), the noise level of the variance-exploding view (float32).
    pub fn sigmas(&self) -> Vec<f32> {
        self.alphas_cumprod.iter().map(|&a| ((1.0 - a) / a).sqrt()).collect()
    }

    /// (sqrt(acp_t), sqrt(1 - acp_t)) in float32.
    pub fn alpha_sigma(&self, t: usize) -> (f32, f32) {
        let a = self.alphas_cumprod[t];
        (a.sqrt(), (1.0 - a).sqrt())
    }

    /// x_t = sqrt(acp_t) x0 + sqrt(1 - acp_t) eps, with one timestep per sample of the batch
    /// (`DDPMScheduler.add_noise`).
    pub fn add_noise(&self, x0: Tensor<4>, eps: Tensor<4>, t: &[usize]) -> Tensor<4> {
        let (a, s) = self.per_sample(&x0, t);
        x0 * a + eps * s
    }

    /// The v-prediction target v = sqrt(acp_t) eps - sqrt(1 - acp_t) x0 (`get_velocity`).
    pub fn velocity(&self, x0: Tensor<4>, eps: Tensor<4>, t: &[usize]) -> Tensor<4> {
        let (a, s) = self.per_sample(&x0, t);
        eps * a - x0 * s
    }

    /// Signal-to-noise ratio (sqrt(acp) / sqrt(1 - acp))^2, in float32 as diffusers'
    /// `compute_snr` (used by min-SNR loss weighting).
    pub fn snr(&self, t: usize) -> f32 {
        let (a, s) = self.alpha_sigma(t);
        let r = a / s;
        r * r
    }

    /// Min-SNR-γ loss weight of timestep `t` (Hang et al. 2023): `min(snr, γ) / snr` for an
    /// epsilon target, `min(snr, γ) / (snr + 1)` for a v target.
    pub fn min_snr_weight(&self, t: usize, gamma: f64, prediction: super::PredictionType) -> f32 {
        let snr = self.snr(t) as f64;
        let w = snr.min(gamma);
        (if prediction == super::PredictionType::VPrediction { w / (snr + 1.0) } else { w / snr }) as f32
    }

    /// [B, 1, 1, 1] tensors of sqrt(acp_t) and sqrt(1 - acp_t) that broadcast over a batch.
    fn per_sample(&self, x: &Tensor<4>, t: &[usize]) -> (Tensor<4>, Tensor<4>) {
        let b = x.dims()[0];
        assert_eq!(t.len(), b, "add_noise: {} timesteps for a batch of {b}", t.len());
        let (a, s): (Vec<f32>, Vec<f32>) = t.iter().map(|&t| self.alpha_sigma(t)).unzip();
        let device = x.device();
        let col = |v: Vec<f32>| Tensor::<4>::from_data(TensorData::new(v, [b, 1, 1, 1]), &device);
        (col(a), col(s))
    }
}

/// `torch.linspace(start, end, n, dtype=float32)` on CPU, bit for bit (checked against torch
/// 2.12.1): a float32 step, the first half counted up from `start` and the second down from `end`,
/// each value rounded once (the kernel's multiply-add is fused).
pub fn torch_linspace_f32(start: f32, end: f32, n: usize) -> Vec<f32> {
    if n <= 1 {
        return vec![start; n];
    }
    let step = (end - start) / (n - 1) as f32;
    let half = n / 2;
    (0..n).map(|i| if i < half { step.mul_add(i as f32, start) } else { (-step).mul_add((n - 1 - i) as f32, end) }).collect()
}

/// `betas_for_alpha_bar(n)` with the cosine alpha_bar ("squaredcos_cap_v2"), computed in double
/// by Python and stored as float32.
fn cosine_betas(n: usize) -> Vec<f32> {
    let alpha_bar = |t: f64| ((t + 0.008) / 1.008 * std::f64::consts::PI / 2.0).cos().powi(2);
    (0..n)
        .map(|i| {
            let (t1, t2) = (i as f64 / n as f64, (i + 1) as f64 / n as f64);
            (1.0 - alpha_bar(t2) / alpha_bar(t1)).min(0.999) as f32
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Device;

    fn sd15() -> NoiseSchedule {
        NoiseSchedule::new(&SchedulerConfig {
            beta_start: 0.00085,
            beta_end: 0.012,
            beta_schedule: BetaSchedule::ScaledLinear,
            ..Default::default()
        })
    }

    fn bit_sum(v: &[f32]) -> u64 {
        v.iter().map(|x| x.to_bits() as u64).sum()
    }

    #[test]
    fn tables_match_torch_bit_for_bit() {
        // Sums of the float32 bit patterns of the tables of diffusers 0.42.1 / torch 2.12.1 (CPU).
        let s = sd15();
        assert_eq!(s.alphas_cumprod[420].to_bits(), 0x3ec920b1, "{}", s.alphas_cumprod[420]);
        assert_eq!(s.alphas_cumprod[999].to_bits(), 0x3b98b3b6, "{}", s.alphas_cumprod[999]);
        assert_eq!((bit_sum(&s.betas), bit_sum(&s.alphas_cumprod)), (998752110865, 1043681188921));
        let linear = NoiseSchedule::new(&SchedulerConfig::default());
        assert_eq!((bit_sum(&linear.betas), bit_sum(&linear.alphas_cumprod)), (1005749913854, 1023901992452));
        let cos = NoiseSchedule::new(&SchedulerConfig { beta_schedule: BetaSchedule::SquaredcosCapV2, ..Default::default() });
        assert_eq!((bit_sum(&cos.betas), bit_sum(&cos.alphas_cumprod)), (995455898761, 1047867286302));
    }

    #[test]
    fn add_noise_velocity_snr() {
        let s = sd15();
        let d = Device::default();
        let x0 = Tensor::<4>::from_data(TensorData::new(vec![1.0f32, 2.0, -1.0, 0.5], [2, 2, 1, 1]), &d);
        let eps = Tensor::<4>::from_data(TensorData::new(vec![0.5f32, -1.0, 2.0, 1.0], [2, 2, 1, 1]), &d);
        let t = [0usize, 999];
        let zt = s.add_noise(x0.clone(), eps.clone(), &t).into_data().as_slice::<f32>().unwrap().to_vec();
        let v = s.velocity(x0, eps, &t).into_data().as_slice::<f32>().unwrap().to_vec();
        let (x0, eps) = ([1.0f32, 2.0, -1.0, 0.5], [0.5f32, -1.0, 2.0, 1.0]);
        for i in 0..4 {
            let (a, sg) = s.alpha_sigma(t[i / 2]);
            assert_eq!(zt[i], a * x0[i] + sg * eps[i]);
            assert_eq!(v[i], a * eps[i] - sg * x0[i]);
        }
        let acp = s.alphas_cumprod[420] as f64;
        assert!((s.snr(420) as f64 - acp / (1.0 - acp)).abs() < 1e-6 * acp / (1.0 - acp));
    }
}
