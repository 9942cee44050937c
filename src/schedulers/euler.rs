//! Euler (diffusers `EulerDiscreteScheduler`, s_churn = 0) and Euler ancestral
//! (`EulerAncestralDiscreteScheduler`): both integrate the probability-flow ODE in sigma, the
//! ancestral one stepping below the next sigma and adding fresh noise back up to it.
use burn::tensor::Tensor;

use super::config::{PredictionType, SchedulerConfig, TimestepSpacing};
use super::noise::NoiseSchedule;
use super::spacing::{interp, train_spaced};
use super::{Sampler, StepNoise};

/// What both Euler variants share: timesteps, float32 sigmas (one more than timesteps, ending
/// at 0) and the initial noise scale.
struct Sigmas {
    timesteps: Vec<f64>,
    sigmas: Vec<f32>,
    init_noise_sigma: f32,
    prediction: PredictionType,
}

impl Sigmas {
    fn new(config: &SchedulerConfig, steps: usize) -> Self {
        let table = NoiseSchedule::new(config).sigmas();
        let spacing = config.spacing(TimestepSpacing::Linspace);
        // Euler keeps its timesteps in float32.
        let timesteps = train_spaced(spacing, steps, config.num_train_timesteps, config.steps_offset, false);
        let mut sigmas: Vec<f32> = timesteps.iter().map(|&t| interp(t, &table) as f32).collect();
        sigmas.push(0.0);
        let max = sigmas.iter().copied().fold(f32::MIN, f32::max);
        // diffusers: the largest sigma for linspace/trailing, sqrt(max^2 + 1) for leading.
        let init_noise_sigma = match spacing {
            TimestepSpacing::Leading => (max * max + 1.0).sqrt(),
            _ => max,
        };
        Self { timesteps, sigmas, init_noise_sigma, prediction: config.prediction_type }
    }

    /// Input scaling c_in = 1 / sqrt(sigma^2 + 1).
    fn scale(&self, sample: Tensor<4>, step: usize) -> Tensor<4> {
        let s = self.sigmas[step];
        sample.div_scalar((s * s + 1.0).sqrt())
    }

    /// The denoised estimate x0 from the model output at `sigma`.
    fn denoised(&self, model_output: Tensor<4>, sigma: f32, sample: &Tensor<4>) -> Tensor<4> {
        match self.prediction {
            PredictionType::Epsilon => sample.clone() - model_output.mul_scalar(sigma),
            PredictionType::Sample => model_output,
            PredictionType::VPrediction => {
                let s2 = sigma * sigma + 1.0;
                model_output.mul_scalar(-sigma / s2.sqrt()) + sample.clone().div_scalar(s2)
            }
        }
    }
}

pub struct Euler(Sigmas);

impl Euler {
    pub fn new(config: &SchedulerConfig, steps: usize) -> Self {
        Self(Sigmas::new(config, steps))
    }
}

impl Sampler for Euler {
    fn timesteps(&self) -> &[f64] {
        &self.0.timesteps
    }

    fn sigmas(&self) -> Option<&[f32]> {
        Some(&self.0.sigmas)
    }

    fn init_noise_sigma(&self) -> f64 {
        self.0.init_noise_sigma as f64
    }

    fn scale_model_input(&self, sample: Tensor<4>, step: usize) -> Tensor<4> {
        self.0.scale(sample, step)
    }

    fn step(&mut self, model_output: Tensor<4>, step: usize, sample: Tensor<4>, _noise: &mut dyn StepNoise) -> Tensor<4> {
        let sigma = self.0.sigmas[step]; // sigma_hat = sigma * (0 + 1): no churn
        let x0 = self.0.denoised(model_output, sigma, &sample);
        let derivative = (sample.clone() - x0).div_scalar(sigma);
        sample + derivative.mul_scalar(self.0.sigmas[step + 1] - sigma)
    }
}

pub struct EulerAncestral(Sigmas);

impl EulerAncestral {
    pub fn new(config: &SchedulerConfig, steps: usize) -> Self {
        Self(Sigmas::new(config, steps))
    }

    /// `step` with the fresh noise given.
    pub fn step_with_noise(&self, model_output: Tensor<4>, step: usize, sample: Tensor<4>, noise: Tensor<4>) -> Tensor<4> {
        let (from, to) = (self.0.sigmas[step], self.0.sigmas[step + 1]);
        let x0 = self.0.denoised(model_output, from, &sample);
        let up = (to * to * (from * from - to * to) / (from * from)).sqrt();
        let down = (to * to - up * up).sqrt();
        let derivative = (sample.clone() - x0).div_scalar(from);
        let prev = sample + derivative.mul_scalar(down - from);
        prev + noise.mul_scalar(up)
    }
}

impl Sampler for EulerAncestral {
    fn timesteps(&self) -> &[f64] {
        &self.0.timesteps
    }

    fn sigmas(&self) -> Option<&[f32]> {
        Some(&self.0.sigmas)
    }

    fn init_noise_sigma(&self) -> f64 {
        self.0.init_noise_sigma as f64
    }

    fn scale_model_input(&self, sample: Tensor<4>, step: usize) -> Tensor<4> {
        self.0.scale(sample, step)
    }

    fn step(&mut self, model_output: Tensor<4>, step: usize, sample: Tensor<4>, noise: &mut dyn StepNoise) -> Tensor<4> {
        // Drawn at every step, the last (where it is scaled by 0) included, as diffusers does.
        let noise = noise.draw(sample.dims(), &sample.device());
        self.step_with_noise(model_output, step, sample, noise)
    }
}
