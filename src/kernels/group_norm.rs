//! Group normalisation with its per-channel affine transform and, optionally, the SiLU that
//! follows it in every ResNet block: one pass for the statistics and one for the output (the
//! composed form makes about ten full-size passes), and the closed-form backward in two passes.
//! Groups are independent, so they run in parallel; statistics accumulate in f64.
use super::{Real, for_each_maybe_par};
use rayon::prelude::*;

/// The shape of a `[N, C, H, W]` input split into `groups`.
#[derive(Clone, Copy, Debug)]
pub struct Dims {
    pub n: usize,
    pub c: usize,
    pub hw: usize,
    pub groups: usize,
}

impl Dims {
    fn per_group(&self) -> usize {
        self.c / self.groups
    }
    fn len(&self) -> usize {
        self.per_group() * self.hw
    }
}

/// Mean and 1 / sqrt(biased variance + eps) of one group's values.
fn stats<T: Real>(x: &[T], eps: f64) -> (f64, f64) {
    let n = x.len() as f64;
    let mean = x.iter().map(|v| v.as_f64()).sum::<f64>() / n;
    let var = x.iter().map(|v| (v.as_f64() - mean).powi(2)).sum::<f64>() / n;
    (mean, 1.0 / (var + eps).sqrt())
}

fn sigmoid<T: Real>(y: T) -> T {
    T::one() / (T::one() + (-y).exp())
}

/// `silu(norm(x) · w + b)` (or without the SiLU) for `x [N, C, H, W]`.
pub fn forward<T: Real>(x: &[T], d: Dims, weight: &[T], bias: &[T], eps: f64, silu: bool) -> Vec<T> {
    let (cpg, len) = (d.per_group(), d.len());
    let mut out = vec![T::zero(); x.len()];
    let f = |(k, (o, xg)): (usize, (&mut [T], &[T]))| {
        let c0 = (k % d.groups) * cpg;
        normalise_group(o, xg, d.hw, &weight[c0..c0 + cpg], &bias[c0..c0 + cpg], eps, silu)
    };
    for_each_maybe_par!(
        x.len(),
        out.par_chunks_mut(len).zip(x.par_chunks(len)).enumerate(),
        out.chunks_mut(len).zip(x.chunks(len)).enumerate(),
        f
    );
    out
}

/// One group of the forward pass (never inlined, so that profiles can name it).
#[inline(never)]
fn normalise_group<T: Real>(o: &mut [T], xg: &[T], hw: usize, weight: &[T], bias: &[T], eps: f64, silu: bool) {
    let (mean, rstd) = stats(xg, eps);
    for (j, (ov, xv)) in o.chunks_mut(hw).zip(xg.chunks(hw)).enumerate() {
        let scale = rstd * weight[j].as_f64();
        let (shift, scale) = (T::of(bias[j].as_f64() - mean * scale), T::of(scale));
        if silu {
            ov.iter_mut().zip(xv).for_each(|(a, &v)| {
                let y = v * scale + shift;
                *a = y * sigmoid(y)
            });
        } else {
            ov.iter_mut().zip(xv).for_each(|(a, &v)| *a = v * scale + shift);
        }
    }
}

/// The gradients of `x`, `weight` and `bias` from the output gradient `dy`.
pub fn backward<T: Real>(x: &[T], d: Dims, weight: &[T], bias: &[T], eps: f64, silu: bool, dy: &[T]) -> (Vec<T>, Vec<T>, Vec<T>) {
    let (cpg, len) = (d.per_group(), d.len());
    let mut dx = vec![T::zero(); x.len()];
    // Per (sample, group): the per-channel sums of dL/dy·x̂ and dL/dy, reduced over samples after.
    type Chunks<'a, T> = (usize, (&'a mut [T], (&'a [T], &'a [T])));
    let f = |(k, (dxg, (xg, dyg))): Chunks<T>| {
        let c0 = (k % d.groups) * cpg;
        group_gradients(dxg, xg, dyg, d.hw, &weight[c0..c0 + cpg], &bias[c0..c0 + cpg], eps, silu)
    };
    let partial: Vec<(Vec<f64>, Vec<f64>)> = if super::parallel(x.len()) {
        dx.par_chunks_mut(len).zip(x.par_chunks(len).zip(dy.par_chunks(len))).enumerate().map(f).collect()
    } else {
        dx.chunks_mut(len).zip(x.chunks(len).zip(dy.chunks(len))).enumerate().map(f).collect()
    };
    let (mut dw, mut db) = (vec![0f64; d.c], vec![0f64; d.c]);
    for (k, (pw, pb)) in partial.iter().enumerate() {
        let c0 = (k % d.groups) * cpg;
        for j in 0..cpg {
            dw[c0 + j] += pw[j];
            db[c0 + j] += pb[j];
        }
    }
    (dx, dw.into_iter().map(T::of).collect(), db.into_iter().map(T::of).collect())
}

/// One group of the backward pass: writes its input gradient and returns the per-channel sums
/// of `dL/dy · x̂` and `dL/dy` (never inlined, so that profiles can name it).
#[allow(clippy::too_many_arguments)]
#[inline(never)]
fn group_gradients<T: Real>(
    dxg: &mut [T],
    xg: &[T],
    dyg: &[T],
    hw: usize,
    weight: &[T],
    bias: &[T],
    eps: f64,
    silu: bool,
) -> (Vec<f64>, Vec<f64>) {
    let cpg = weight.len();
    let (mean, rstd) = stats(xg, eps);
    let (mean_t, rstd_t) = (T::of(mean), T::of(rstd));
    // x̂ and the gradient reaching the affine output y (through the SiLU when there is one).
    let grad_y = |j: usize, v: T, g: T| -> (T, T) {
        let xhat = (v - mean_t) * rstd_t;
        if silu {
            let y = xhat * weight[j] + bias[j];
            let s = sigmoid(y);
            (xhat, g * s * (T::one() + y * (T::one() - s)))
        } else {
            (xhat, g)
        }
    };
    let (mut dw, mut db) = (vec![0f64; cpg], vec![0f64; cpg]);
    let (mut sum_g, mut sum_gx) = (0f64, 0f64);
    for j in 0..cpg {
        let w = weight[j].as_f64();
        let (mut gw, mut gb) = (0f64, 0f64);
        for i in j * hw..(j + 1) * hw {
            let (xhat, g) = grad_y(j, xg[i], dyg[i]);
            let (xhat, g) = (xhat.as_f64(), g.as_f64());
            gw += g * xhat;
            gb += g;
        }
        dw[j] = gw;
        db[j] = gb;
        sum_g += gb * w;
        sum_gx += gw * w;
    }
    let m = xg.len() as f64;
    let (mean_g, mean_gx) = (T::of(sum_g / m), T::of(sum_gx / m));
    for (j, &w) in weight.iter().enumerate() {
        for i in j * hw..(j + 1) * hw {
            let (xhat, g) = grad_y(j, xg[i], dyg[i]);
            dxg[i] = rstd_t * (g * w - mean_g - xhat * mean_gx);
        }
    }
    (dw, db)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The backward pass against central differences of the forward pass, in f64, for the loss
    /// `Σ r · out` (r fixed): every input, weight and bias element.
    #[test]
    fn backward_is_the_derivative_of_forward() {
        let d = Dims { n: 2, c: 4, hw: 6, groups: 2 };
        let v = |n: usize, s: f64| (0..n).map(|i| ((i as f64) * 0.613 + s).sin() * 2.0 + 0.5).collect::<Vec<f64>>();
        let (x, w, b, r) = (v(48, 0.1), v(4, 1.0), v(4, 2.0), v(48, 3.0));
        for silu in [false, true] {
            let loss = |x: &[f64], w: &[f64], b: &[f64]| forward(x, d, w, b, 1e-5, silu).iter().zip(&r).map(|(o, r)| o * r).sum::<f64>();
            let (dx, dw, db) = backward(&x, d, &w, &b, 1e-5, silu, &r);
            let h = 1e-6;
            let fd = |f: &dyn Fn(f64) -> f64| (f(h) - f(-h)) / (2.0 * h);
            for i in 0..48 {
                let g = fd(&|e| {
                    let mut x = x.clone();
                    x[i] += e;
                    loss(&x, &w, &b)
                });
                assert!((g - dx[i]).abs() < 1e-7 * (1.0 + g.abs()), "silu {silu} dx[{i}]: {} vs {g}", dx[i]);
            }
            for j in 0..4 {
                let gw = fd(&|e| {
                    let mut w = w.clone();
                    w[j] += e;
                    loss(&x, &w, &b)
                });
                let gb = fd(&|e| {
                    let mut b = b.clone();
                    b[j] += e;
                    loss(&x, &w, &b)
                });
                assert!(
                    (gw - dw[j]).abs() < 1e-7 * (1.0 + gw.abs()) && (gb - db[j]).abs() < 1e-7 * (1.0 + gb.abs()),
                    "silu {silu} channel {j}"
                );
            }
        }
    }
}
