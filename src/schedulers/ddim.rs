//! DDIM (diffusers `DDIMScheduler`) with eta = 0: deterministic, no noise drawn.
use burn::tensor::Tensor;

use super::config::{PredictionType, SchedulerConfig, TimestepSpacing};
use super::noise::NoiseSchedule;
use super::spacing::train_spaced;
use super::{Sampler, StepNoise};

pub struct Ddim {
    schedule: NoiseSchedule,
    timesteps: Vec<f64>,
    /// `num_train_timesteps // steps`: how far back each step jumps.
    stride: usize,
    /// acp used past t = 0: 1 with `set_alpha_to_one`, else acp[0].
    final_alpha_cumprod: f32,
    clip: Option<f32>,
    prediction: PredictionType,
}

impl Ddim {
    pub fn new(config: &SchedulerConfig, steps: usize) -> Self {
        let schedule = NoiseSchedule::new(config);
        let train = config.num_train_timesteps;
        let spacing = config.spacing(TimestepSpacing::Leading);
        let timesteps = train_spaced(spacing, steps, train, config.steps_offset, true);
        let final_alpha_cumprod = if config.set_alpha_to_one.unwrap_or(true) { 1.0 } else { schedule.alphas_cumprod[0] };
        Self {
            schedule,
            timesteps,
            stride: train / steps,
            final_alpha_cumprod,
            clip: config.clip_sample.unwrap_or(true).then_some(config.clip_sample_range as f32),
            prediction: config.prediction_type,
        }
    }
}

impl Sampler for Ddim {
    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn init_noise_sigma(&self) -> f64 {
        1.0
    }

    fn scale_model_input(&self, sample: Tensor<4>, _step: usize) -> Tensor<4> {
        sample
    }

    fn step(&mut self, model_output: Tensor<4>, step: usize, sample: Tensor<4>, _noise: &mut dyn StepNoise) -> Tensor<4> {
        let t = self.timesteps[step] as i64;
        let prev = t - self.stride as i64;
        let acp = &self.schedule.alphas_cumprod;
        let a_t = acp[t as usize];
        let a_prev = if prev >= 0 { acp[prev as usize] } else { self.final_alpha_cumprod };
        let b_t = 1.0 - a_t;
        // Float32 scalar coefficients in diffusers' order of operations.
        let (sa, sb) = (a_t.sqrt(), b_t.sqrt());
        let (x0, eps) = match self.prediction {
            PredictionType::Epsilon => ((sample - model_output.clone().mul_scalar(sb)).div_scalar(sa), model_output),
            PredictionType::Sample => {
                let eps = (sample - model_output.clone().mul_scalar(sa)).div_scalar(sb);
                (model_output, eps)
            }
            PredictionType::VPrediction => {
                (sample.clone().mul_scalar(sa) - model_output.clone().mul_scalar(sb), model_output.mul_scalar(sa) + sample.mul_scalar(sb))
            }
        };
        let x0 = match self.clip {
            Some(r) => x0.clamp(-r, r),
            None => x0,
        };
        // eta = 0: the direction term is sqrt(1 - a_prev - 0^2) * eps.
        x0.mul_scalar(a_prev.sqrt()) + eps.mul_scalar((1.0 - a_prev - 0.0f32).sqrt())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;
    use burn::tensor::{Device, TensorData};

    fn config(prediction: &str) -> SchedulerConfig {
        SchedulerConfig::from_json(&format!(
            r#"{{"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012, "steps_offset": 1,
                "set_alpha_to_one": false, "prediction_type": "{prediction}"}}"#
        ))
        .unwrap()
    }

    fn values(x: Tensor<4>) -> Vec<f32> {
        x.into_data().as_slice::<f32>().unwrap().to_vec()
    }

    /// With the exact noise as model output, eta-0 DDIM moves x_t = a x0 + s eps to
    /// x_prev = a' x0 + s' eps (closed form); a v-prediction of the same x0 and eps does the same.
    #[test]
    fn exact_prediction_lands_on_the_forward_process() {
        let d = Device::default();
        let t = |v: Vec<f32>| Tensor::<4>::from_data(TensorData::new(v, [1, 1, 2, 2]), &d);
        let (x0, eps) = (t(vec![0.5, -0.25, 0.9, 0.0]), t(vec![1.0, -2.0, 0.3, 0.7]));
        let mut rng = Rng::new(0);
        for prediction in ["epsilon", "v_prediction"] {
            let mut s = Ddim::new(&config(prediction), 10);
            assert_eq!(s.timesteps()[..2], [901.0, 801.0]);
            let schedule = NoiseSchedule::new(&config(prediction));
            let xt = schedule.add_noise(x0.clone(), eps.clone(), &[901]);
            let out = match prediction {
                "epsilon" => eps.clone(),
                _ => schedule.velocity(x0.clone(), eps.clone(), &[901]),
            };
            let got = values(s.step(out, 0, xt, &mut rng));
            let want = values(schedule.add_noise(x0.clone(), eps.clone(), &[801]));
            for (g, w) in got.iter().zip(&want) {
                assert!((g - w).abs() < 1e-5, "{prediction}: {got:?} vs {want:?}");
            }
        }
    }

    /// The last step goes to acp[0] (set_alpha_to_one false) and x0 is clipped to [-1, 1].
    #[test]
    fn last_step_and_clipping() {
        let d = Device::default();
        let mut s = Ddim::new(&config("epsilon"), 10);
        let sample = Tensor::<4>::from_data(TensorData::new(vec![3.0f32, -0.5], [1, 1, 1, 2]), &d);
        let zero = Tensor::<4>::zeros([1, 1, 1, 2], &d);
        let got = values(s.step(zero, 9, sample, &mut Rng::new(0)));
        let (a1, a0) = (s.schedule.alphas_cumprod[1], s.schedule.alphas_cumprod[0]);
        let x0 = [(3.0 / a1.sqrt()).min(1.0), -0.5 / a1.sqrt()];
        assert_eq!(got, vec![x0[0] * a0.sqrt(), x0[1] * a0.sqrt()]);
    }
}
