//! DPM-Solver++ 2M (diffusers `DPMSolverMultistepScheduler` with algorithm_type "dpmsolver++",
//! solver_order 2, solver_type "midpoint", lower_order_final, final_sigmas_type "zero"),
//! optionally on Karras sigmas. Works on the data prediction x0 and keeps the previous one.
use burn::tensor::Tensor;

use super::config::{BetaSchedule, PredictionType, SchedulerConfig, TimestepSpacing};
use super::noise::NoiseSchedule;
use super::spacing::{interp, karras, leading, linspace, ln_f32, round, sigma_to_t, trailing};
use super::{Sampler, StepNoise};

pub struct DpmPp2m {
    timesteps: Vec<f64>,
    /// float32 sigmas, one per timestep and a final 0.
    sigmas: Vec<f32>,
    prediction: PredictionType,
    /// The previous step's x0 estimate (none before the first step).
    previous: Option<Tensor<4>>,
}

impl DpmPp2m {
    pub fn new(config: &SchedulerConfig, steps: usize, use_karras: bool) -> Self {
        let schedule = NoiseSchedule::new(config);
        let table = schedule.sigmas();
        let log_sigmas: Vec<f32> = table.iter().map(|&s| ln_f32(s)).collect();
        let (timesteps, mut sigmas): (Vec<f64>, Vec<f32>) = if use_karras {
            let sigmas = karras(table[0] as f64, table[table.len() - 1] as f64, steps);
            let timesteps = sigmas
                .iter()
                .map(|&s| sigma_to_t(s, &log_sigmas))
                // Rounded, except for the cosine schedule where the int64 cast truncates.
                .map(|t| if config.beta_schedule == BetaSchedule::SquaredcosCapV2 { t.trunc() } else { round(t) })
                .collect();
            (timesteps, sigmas.into_iter().map(|s| s as f32).collect())
        } else {
            let t = spaced(config, &schedule, steps);
            let sigmas = t.iter().map(|&t| interp(t, &table) as f32).collect();
            (t, sigmas)
        };
        sigmas.push(0.0);
        Self { timesteps, sigmas, prediction: config.prediction_type, previous: None }
    }

    /// (alpha_t, sigma_t, lambda_t = log alpha_t - log sigma_t) of the VP process at `sigma`, float32.
    fn alpha_sigma_lambda(sigma: f32) -> (f32, f32, f32) {
        let alpha = 1.0 / (sigma * sigma + 1.0).sqrt();
        let sigma_t = sigma * alpha;
        (alpha, sigma_t, ln_f32(alpha) - ln_f32(sigma_t))
    }
}

/// Integer timesteps of `set_timesteps` without Karras sigmas; `linspace` and `leading` span
/// `steps + 1` points and drop the last (t = 0).
fn spaced(config: &SchedulerConfig, schedule: &NoiseSchedule, steps: usize) -> Vec<f64> {
    let train = config.num_train_timesteps;
    let last = train - clipped(config, schedule);
    let drop_zero = |mut t: Vec<f64>| {
        t.truncate(steps);
        t
    };
    match config.spacing(TimestepSpacing::Linspace) {
        TimestepSpacing::Linspace => drop_zero(linspace(0.0, (last - 1) as f64, steps + 1).into_iter().rev().map(round).collect()),
        TimestepSpacing::Leading => drop_zero(leading(steps + 1, steps + 1, last, config.steps_offset)),
        TimestepSpacing::Trailing => trailing(steps, train, last),
    }
}

/// How many of the noisiest training timesteps `lambda_min_clipped` removes
/// (`searchsorted` of the bound in the increasing-from-t=999 float32 lambda table).
fn clipped(config: &SchedulerConfig, schedule: &NoiseSchedule) -> usize {
    let Some(bound) = config.lambda_min_clipped.filter(|b| b.is_finite()) else { return 0 };
    let lambdas = schedule.alphas_cumprod.iter().rev().map(|&a| ln_f32(a.sqrt()) - ln_f32((1.0 - a).sqrt()));
    lambdas.take_while(|&l| (l as f64) < bound).count()
}

impl Sampler for DpmPp2m {
    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn sigmas(&self) -> Option<&[f32]> {
        Some(&self.sigmas)
    }

    fn init_noise_sigma(&self) -> f64 {
        1.0
    }

    fn scale_model_input(&self, sample: Tensor<4>, _step: usize) -> Tensor<4> {
        sample
    }

    fn step(&mut self, model_output: Tensor<4>, step: usize, sample: Tensor<4>, _noise: &mut dyn StepNoise) -> Tensor<4> {
        if step == 0 {
            self.previous = None; // a new trajectory
        }
        let (alpha_s0, sigma_s0, lambda_s0) = Self::alpha_sigma_lambda(self.sigmas[step]);
        let (alpha_t, sigma_t, lambda_t) = Self::alpha_sigma_lambda(self.sigmas[step + 1]);
        // convert_model_output: the data prediction x0.
        let m0 = match self.prediction {
            PredictionType::Epsilon => (sample.clone() - model_output.mul_scalar(sigma_s0)).div_scalar(alpha_s0),
            PredictionType::Sample => model_output,
            PredictionType::VPrediction => sample.clone().mul_scalar(alpha_s0) - model_output.mul_scalar(sigma_s0),
        };
        let h = lambda_t - lambda_s0;
        let phi = alpha_t * (exp_f32(-h) - 1.0);
        let x_t = sample.mul_scalar(sigma_t / sigma_s0) - m0.clone().mul_scalar(phi);
        let last = step + 1 == self.timesteps.len();
        // First order on the first step and, with a zero final sigma, on the last one.
        let x_t = match self.previous.take() {
            Some(m1) if !last => {
                let (_, _, lambda_s1) = Self::alpha_sigma_lambda(self.sigmas[step - 1]);
                let r0 = (lambda_s0 - lambda_s1) / h;
                let d1 = (m0.clone() - m1).mul_scalar(1.0 / r0);
                x_t - d1.mul_scalar(0.5 * phi)
            }
            _ => x_t,
        };
        self.previous = Some(m0);
        x_t
    }
}

fn exp_f32(x: f32) -> f32 {
    (x as f64).exp() as f32
}
