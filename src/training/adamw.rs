//! AdamW on device tensors, step for step as `torch.optim.AdamW` computes it in f32: each
//! element goes through the same rounded operations as PyTorch's (and an element-wise host loop's)
//! `foreach` path, so the moments saved in a checkpoint continue to the same bytes.
use burn::tensor::Tensor;
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

/// The optimiser's state: the step count and the two moments of every parameter (flat).
#[derive(Clone, Debug)]
pub struct AdamW {
    pub config: AdamWConfig,
    pub step: u64,
    pub exp_avg: Vec<Tensor<1>>,
    pub exp_avg_sq: Vec<Tensor<1>>,
}

impl AdamW {
    /// Zero moments shaped like `zeros` (one flat tensor per parameter).
    pub fn new(config: AdamWConfig, zeros: Vec<Tensor<1>>) -> Self {
        Self { config, step: 0, exp_avg: zeros.clone(), exp_avg_sq: zeros }
    }

    /// One update of every parameter with its gradient at learning rate `lr`.
    pub fn update(&mut self, params: &mut [Tensor<1>], grads: &[Tensor<1>], lr: f64) {
        self.update_each(params, grads, &vec![lr; params.len()]);
    }

    /// One update of every parameter with its gradient, parameter `k` at learning rate `lrs[k]`
    /// (separate rates for the UNet's and the text encoder's LoRA).
    ///
    /// Consecutive parameters with the same rate are updated as one flat tensor: the same
    /// element-wise operations on every element (so the same bytes), a dozen device operations
    /// for hundreds of small LoRA tensors instead of eleven each (PyTorch's `foreach` idea).
    pub fn update_each(&mut self, params: &mut [Tensor<1>], grads: &[Tensor<1>], lrs: &[f64]) {
        self.step += 1;
        let c = self.config;
        let bias1 = 1.0 - c.beta1.powi(self.step as i32);
        let bias2 = 1.0 - c.beta2.powi(self.step as i32);
        let bias2_sqrt = bias2.sqrt() as f32;
        let (b1, b2, eps) = (c.beta1 as f32, c.beta2 as f32, c.eps as f32);
        let mut start = 0;
        while start < params.len() {
            let lr = lrs[start];
            let end = start + lrs[start..].iter().take_while(|&&l| l == lr).count();
            let sizes: Vec<usize> = params[start..end].iter().map(|p| p.dims()[0]).collect();
            let step_size = (lr / bias1) as f32;
            let decay = (1.0 - lr * c.weight_decay) as f32;
            let (p, g) = (joined(&params[start..end]), joined(&grads[start..end]));
            let m = joined(&self.exp_avg[start..end]).mul_scalar(b1) + g.clone().mul_scalar(1.0 - b1);
            let v = joined(&self.exp_avg_sq[start..end]).mul_scalar(b2) + g.clone().mul_scalar(1.0 - b2) * g;
            let denom = v.clone().sqrt().div_scalar(bias2_sqrt).add_scalar(eps);
            let p = p.mul_scalar(decay) - m.clone().mul_scalar(step_size) / denom;
            split(p, &sizes, &mut params[start..end]);
            split(m, &sizes, &mut self.exp_avg[start..end]);
            split(v, &sizes, &mut self.exp_avg_sq[start..end]);
            start = end;
        }
    }
}

/// The tensors end to end (one tensor as it is).
fn joined(parts: &[Tensor<1>]) -> Tensor<1> {
    match parts {
        [one] => one.clone(),
        _ => Tensor::cat(parts.to_vec(), 0),
    }
}

/// `flat` cut back into `out`, of lengths `sizes`.
fn split(flat: Tensor<1>, sizes: &[usize], out: &mut [Tensor<1>]) {
    for (o, part) in out.iter_mut().zip(flat.split_with_sizes(sizes.to_vec(), 0)) {
        *o = part;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, TensorData};

    fn t(v: &[f32]) -> Tensor<1> {
        Tensor::from_data(TensorData::new(v.to_vec(), [v.len()]), &Device::flex())
    }
    fn host(t: &Tensor<1>) -> Vec<f32> {
        crate::training::params::host(t)
    }

    #[test]
    fn first_step_moves_each_weight_by_lr() {
        // With bias correction, Adam's first step is lr * sign(g) (up to eps), plus decay.
        let mut opt = AdamW::new(AdamWConfig::default(), vec![t(&[0.0; 3])]);
        let mut p = vec![t(&[1.0, -2.0, 0.5])];
        opt.update(&mut p, &[t(&[0.3, -4.0, 0.0])], 0.1);
        let p = host(&p[0]);
        let d = 1.0 - 0.1 * 0.01;
        assert!((p[0] - (1.0 * d - 0.1)).abs() < 1e-6);
        assert!((p[1] - (-2.0 * d + 0.1)).abs() < 1e-6);
        assert!((p[2] - 0.5 * d).abs() < 1e-7);
    }

    #[test]
    fn each_parameter_takes_its_own_rate() {
        let mut opt = AdamW::new(AdamWConfig { weight_decay: 0.0, ..Default::default() }, vec![t(&[0.0]), t(&[0.0])]);
        let mut p = vec![t(&[1.0]), t(&[1.0])];
        opt.update_each(&mut p, &[t(&[0.5]), t(&[0.5])], &[0.1, 0.01]);
        assert!((host(&p[0])[0] - 0.9).abs() < 1e-6 && (host(&p[1])[0] - 0.99).abs() < 1e-6);
    }

    #[test]
    fn matches_pytorch_two_steps() {
        // torch.optim.AdamW([p], lr=1e-2, weight_decay=1e-2) on p = [1.0], grads 0.5 then -0.25:
        // p after step 1 = 0.9899, after step 2 = 0.98397..., from the update rule written out.
        let mut opt = AdamW::new(AdamWConfig::default(), vec![t(&[0.0])]);
        let mut p = vec![t(&[1.0])];
        opt.update(&mut p, &[t(&[0.5])], 1e-2);
        assert!((host(&p[0])[0] - 0.9899).abs() < 1e-6, "{:?}", host(&p[0]));
        opt.update(&mut p, &[t(&[-0.25])], 1e-2);
        // m = 0.9*0.05 - 0.025 = 0.02, v = 0.999*0.00025 + 0.001*0.0625 = 0.00031225
        // step = 1e-2/0.19 * 0.02 / (sqrt(0.00031225)/sqrt(0.001999) + 1e-8)
        let m = 0.02f64;
        let v = 0.999f64 * 0.00025 + 0.001 * 0.0625;
        let expected = 0.9899f64 * (1.0 - 1e-4) - 1e-2 / (1.0 - 0.81) * m / (v.sqrt() / (1.0f64 - 0.998001).sqrt() + 1e-8);
        let got = host(&p[0])[0] as f64;
        assert!((got - expected).abs() < 1e-6, "{got} vs {expected}");
    }

    /// The device update is the element-wise f32 recurrence, bit for bit (what resuming from a
    /// checkpoint relies on when the moments come back from the host).
    #[test]
    fn device_update_equals_the_elementwise_recurrence() {
        let g: Vec<f32> = (0..64).map(|i| ((i as f32) * 0.37).sin() * 1e-3).collect();
        let p0: Vec<f32> = (0..64).map(|i| ((i as f32) * 0.11).cos()).collect();
        let mut opt = AdamW::new(AdamWConfig::default(), vec![t(&[0.0; 64])]);
        let mut p = vec![t(&p0)];
        let (mut hp, mut m, mut v) = (p0.clone(), vec![0f32; 64], vec![0f32; 64]);
        for step in 1..=3 {
            opt.update(&mut p, &[t(&g)], 1e-4);
            let c = AdamWConfig::default();
            let (b1, b2, eps) = (c.beta1 as f32, c.beta2 as f32, c.eps as f32);
            let step_size = (1e-4 / (1.0 - c.beta1.powi(step))) as f32;
            let b2s = (1.0 - c.beta2.powi(step)).sqrt() as f32;
            let decay = (1.0 - 1e-4 * c.weight_decay) as f32;
            for i in 0..64 {
                m[i] = m[i] * b1 + g[i] * (1.0 - b1);
                v[i] = v[i] * b2 + g[i] * (1.0 - b2) * g[i];
                hp[i] = hp[i] * decay - m[i] * step_size / (v[i].sqrt() / b2s + eps);
            }
        }
        assert_eq!(host(&p[0]), hp);
        assert_eq!(host(&opt.exp_avg[0]), m);
        assert_eq!(host(&opt.exp_avg_sq[0]), v);
    }

    /// Tensors of several sizes and rates, updated in runs of equal rates: each element as the
    /// element-wise recurrence at its own tensor's rate, bit for bit.
    #[test]
    fn runs_of_equal_rates_update_each_element_as_alone() {
        let sizes = [5usize, 3, 7, 2];
        let lrs = [1e-3, 1e-3, 5e-4, 1e-3];
        let data = |k: usize, f: f32| -> Vec<f32> { (0..sizes[k]).map(|i| ((i + 10 * k) as f32 * f).sin()).collect() };
        let mut opt = AdamW::new(AdamWConfig::default(), sizes.iter().map(|&n| t(&vec![0.0; n])).collect());
        let mut p: Vec<Tensor<1>> = (0..4).map(|k| t(&data(k, 0.3))).collect();
        let mut hp: Vec<Vec<f32>> = (0..4).map(|k| data(k, 0.3)).collect();
        let (mut m, mut v): (Vec<Vec<f32>>, Vec<Vec<f32>>) =
            (sizes.iter().map(|&n| vec![0.0; n]).collect(), sizes.iter().map(|&n| vec![0.0; n]).collect());
        let c = AdamWConfig::default();
        for step in 1..=3 {
            let g: Vec<Vec<f32>> = (0..4).map(|k| data(k, 0.7 * step as f32).iter().map(|x| x * 1e-2).collect()).collect();
            opt.update_each(&mut p, &g.iter().map(|g| t(g)).collect::<Vec<_>>(), &lrs);
            let (b1, b2, eps) = (c.beta1 as f32, c.beta2 as f32, c.eps as f32);
            let b2s = (1.0 - c.beta2.powi(step)).sqrt() as f32;
            for k in 0..4 {
                let step_size = (lrs[k] / (1.0 - c.beta1.powi(step))) as f32;
                let decay = (1.0 - lrs[k] * c.weight_decay) as f32;
                for i in 0..sizes[k] {
                    m[k][i] = m[k][i] * b1 + g[k][i] * (1.0 - b1);
                    v[k][i] = v[k][i] * b2 + g[k][i] * (1.0 - b2) * g[k][i];
                    hp[k][i] = hp[k][i] * decay - m[k][i] * step_size / (v[k][i].sqrt() / b2s + eps);
                }
            }
        }
        for k in 0..4 {
            assert_eq!(
                (host(&p[k]), host(&opt.exp_avg[k]), host(&opt.exp_avg_sq[k])),
                (hp[k].clone(), m[k].clone(), v[k].clone()),
                "tensor {k}"
            );
        }
    }
}
