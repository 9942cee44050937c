//! Timestep and sigma spacing: the numpy expressions of diffusers' `set_timesteps`, reproduced
//! operation for operation (numpy works in float64; results are rounded where diffusers rounds).
use super::config::TimestepSpacing;

/// `np.linspace(start, stop, num)`: `i * step + start`, the last value set to `stop`.
pub fn linspace(start: f64, stop: f64, num: usize) -> Vec<f64> {
    if num == 1 {
        return vec![start];
    }
    let step = (stop - start) / (num - 1) as f64;
    let mut v: Vec<f64> = (0..num).map(|i| i as f64 * step + start).collect();
    if let Some(last) = v.last_mut() {
        *last = stop;
    }
    v
}

/// `np.arange(start, stop, step)` for a float step: numpy fills `start + i * (second - start)`.
pub fn arange(start: f64, stop: f64, step: f64) -> Vec<f64> {
    let len = ((stop - start) / step).ceil().max(0.0) as usize;
    let delta = (start + step) - start;
    (0..len).map(|i| if i == 0 { start } else { start + i as f64 * delta }).collect()
}

/// `np.round`: halves go to the even neighbour.
pub fn round(x: f64) -> f64 {
    x.round_ties_even()
}

/// `leading` spacing: `arange(0, num) * (last // div)`, descending, plus `offset`.
pub fn leading(num: usize, div: usize, last: usize, offset: usize) -> Vec<f64> {
    let ratio = last / div;
    (0..num).rev().map(|i| (i * ratio + offset) as f64).collect()
}

/// `trailing` spacing: `round(arange(last, 0, -train / num)) - 1`.
pub fn trailing(num: usize, train: usize, last: usize) -> Vec<f64> {
    arange(last as f64, 0.0, -(train as f64 / num as f64)).into_iter().map(|t| round(t) - 1.0).collect()
}

/// Timesteps of DDIM and Euler for `num` steps (`linspace(0, train - 1, num)`, rounded for DDIM,
/// float32 for Euler; `leading` plus `steps_offset`; `trailing`).
pub fn train_spaced(spacing: TimestepSpacing, num: usize, train: usize, offset: usize, round_linspace: bool) -> Vec<f64> {
    match spacing {
        TimestepSpacing::Linspace => linspace(0.0, (train - 1) as f64, num)
            .into_iter()
            .rev()
            .map(|t| if round_linspace { round(t) } else { t as f32 as f64 })
            .collect(),
        TimestepSpacing::Leading => leading(num, num, train, offset),
        TimestepSpacing::Trailing => trailing(num, train, train),
    }
}

/// `np.interp(x, arange(len(fp)), fp)`: numpy's formula `slope * (x - j) + fp[j]`, exact at
/// the knots, clamped at the ends.
pub fn interp(x: f64, fp: &[f32]) -> f64 {
    let last = fp.len() - 1;
    if x <= 0.0 {
        return fp[0] as f64;
    }
    if x >= last as f64 {
        return fp[last] as f64;
    }
    let j = x.floor() as usize;
    if j as f64 == x {
        return fp[j] as f64;
    }
    let slope = (fp[j + 1] as f64 - fp[j] as f64) / 1.0;
    slope * (x - j as f64) + fp[j] as f64
}

/// `_sigma_to_t`: the fractional training timestep whose log-sigma (the float32 `log_sigmas`
/// table, increasing with t) matches `sigma`, by linear interpolation.
pub fn sigma_to_t(sigma: f64, log_sigmas: &[f32]) -> f64 {
    let log_sigma = sigma.max(1e-10).ln();
    // argmax of the running count of log_sigmas <= target: the last such index (0 if none), clipped.
    let last_le = log_sigmas.iter().rposition(|&l| log_sigma - l as f64 >= 0.0);
    let low = last_le.unwrap_or(0).min(log_sigmas.len() - 2);
    let (lo, hi) = (log_sigmas[low], log_sigmas[low + 1]);
    let w = ((lo as f64 - log_sigma) / (lo - hi) as f64).clamp(0.0, 1.0);
    (1.0 - w) * low as f64 + w * (low + 1) as f64
}

/// Karras et al. (2022) sigmas, rho = 7, from `sigma_max` down to `sigma_min`.
pub fn karras(sigma_min: f64, sigma_max: f64, num: usize) -> Vec<f64> {
    let rho = 7.0;
    let (min_inv, max_inv) = (sigma_min.powf(1.0 / rho), sigma_max.powf(1.0 / rho));
    linspace(0.0, 1.0, num).into_iter().map(|r| (max_inv + r * (min_inv - max_inv)).powf(rho)).collect()
}

/// Natural log of float32 values, rounded to float32 (numpy's float32 `np.log`).
pub fn ln_f32(x: f32) -> f32 {
    (x as f64).ln() as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numpy_semantics() {
        assert_eq!(linspace(0.0, 999.0, 11).iter().map(|&t| round(t)).collect::<Vec<_>>()[5], 500.0); // 499.5 -> 500
        assert_eq!(round(2.5), 2.0);
        assert_eq!(arange(1000.0, 0.0, -100.0), (1..=10).rev().map(|i| i as f64 * 100.0).collect::<Vec<_>>());
        assert_eq!(trailing(10, 1000, 1000)[9], 99.0);
        assert_eq!(leading(10, 10, 1000, 1), vec![901.0, 801.0, 701.0, 601.0, 501.0, 401.0, 301.0, 201.0, 101.0, 1.0]);
        let fp = [0.0f32, 1.0, 4.0];
        assert_eq!((interp(0.5, &fp), interp(1.25, &fp), interp(2.0, &fp), interp(9.0, &fp)), (0.5, 1.75, 4.0, 4.0));
        let logs = [0.0f32, 1.0, 2.0];
        assert_eq!(sigma_to_t(1.5f64.exp(), &logs), 1.5);
        assert_eq!(sigma_to_t(10f64.exp(), &logs), 2.0);
        assert_eq!(sigma_to_t((-1f64).exp(), &logs), 0.0);
        let k = karras(0.1, 10.0, 5);
        assert!((k[0] - 10.0).abs() < 1e-12 && (k[4] - 0.1).abs() < 1e-12 && k[1] < 10.0 && k[1] > k[2]);
    }
}
