//! The 3x3 convolution with stride 1 and padding 1 (every ResNet convolution of Stable
//! Diffusion's UNet and VAE) as one matrix product per image, in a "wide" geometry that needs no
//! layout conversion.
//!
//! The input is padded to `[C, (H+2)·(W+2)]` and the output computed wide, `[O, H·(W+2)]` (two
//! spare columns per row, dropped afterwards): then the input seen by kernel tap `(kh, kw)` is
//! the padded input shifted by `kh·(W+2) + kw`, so the column matrix `cols [C·9, H·(W+2)]` is nine
//! contiguous copies per channel, and `Y_wide = W [O, C·9] · cols`. Backward: the weight gradient
//! is `dY_wide · cols^T` and the input gradient `W^T · dY_wide` scattered back along the same
//! shifts. Each product reads its operands with unit strides (the weight gradient straight into
//! its `[O, C, 3, 3]` layout), which the matrix kernels need to run at full speed.
use super::{Real, for_each_maybe_par};
use gemm::Parallelism;
use rayon::prelude::*;

/// The geometry of one image: `c` channels of `h × w`, padded rows of `wp = w + 2`, each
/// channel's padded buffer `stride` long (two spare elements keep the last tap's view inside),
/// and `wide = h · wp` columns.
#[derive(Clone, Copy)]
struct Geometry {
    h: usize,
    w: usize,
    wp: usize,
    stride: usize,
    wide: usize,
}

impl Geometry {
    fn new(h: usize, w: usize) -> Self {
        let wp = w + 2;
        Self { h, w, wp, stride: (h + 2) * wp + 2, wide: h * wp }
    }

    fn shift(&self, tap: usize) -> usize {
        (tap / 3) * self.wp + tap % 3
    }

    /// `[c, h, w]` into the zero-bordered `[c, stride]` layout.
    fn pad<T: Real>(&self, x: &[T], c: usize) -> Vec<T> {
        let mut out = vec![T::zero(); c * self.stride];
        let hw = self.h * self.w;
        let f = |(o, src): (&mut [T], &[T])| {
            for row in 0..self.h {
                o[(row + 1) * self.wp + 1..][..self.w].copy_from_slice(&src[row * self.w..][..self.w]);
            }
        };
        for_each_maybe_par!(
            c * hw,
            out.par_chunks_mut(self.stride).zip(x.par_chunks(hw)).take(c),
            out.chunks_mut(self.stride).zip(x.chunks(hw)).take(c),
            f
        );
        out
    }

    /// The column matrix `[c·9, wide]` of a padded input.
    fn cols<T: Real>(&self, xp: &[T], c: usize) -> Vec<T> {
        let mut cols = vec![T::zero(); c * 9 * self.wide];
        let f = |(dst, src): (&mut [T], &[T])| {
            for (tap, d) in dst.chunks_mut(self.wide).enumerate() {
                d.copy_from_slice(&src[self.shift(tap)..][..self.wide]);
            }
        };
        let n = 9 * self.wide;
        for_each_maybe_par!(
            c * n,
            cols.par_chunks_mut(n).zip(xp.par_chunks(self.stride)).take(c),
            cols.chunks_mut(n).zip(xp.chunks(self.stride)).take(c),
            f
        );
        cols
    }

    /// `[c, h, w]` in the wide layout `[c, wide]`, spare columns zero.
    fn widen<T: Real>(&self, x: &[T], c: usize) -> Vec<T> {
        let mut out = vec![T::zero(); c * self.wide];
        let hw = self.h * self.w;
        let f = |(o, src): (&mut [T], &[T])| {
            for row in 0..self.h {
                o[row * self.wp..][..self.w].copy_from_slice(&src[row * self.w..][..self.w]);
            }
        };
        for_each_maybe_par!(
            c * hw,
            out.par_chunks_mut(self.wide).zip(x.par_chunks(hw)).take(c),
            out.chunks_mut(self.wide).zip(x.chunks(hw)).take(c),
            f
        );
        out
    }

    /// The interior `[c, h, w]` of a wide `[c, wide]` tensor, appended to `out`.
    fn crop_into<T: Real>(&self, wide: &[T], c: usize, out: &mut Vec<T>) {
        for ch in 0..c {
            for row in 0..self.h {
                out.extend_from_slice(&wide[ch * self.wide + row * self.wp..][..self.w]);
            }
        }
    }
}

/// `dst [m, n] (+)= lhs [m, k] · rhs [k, n]`, strides as (row, column), on every thread.
#[allow(clippy::too_many_arguments)]
fn matmul<T: Real>(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [T],
    accumulate: bool,
    lhs: &[T],
    lhs_s: (usize, usize),
    rhs: &[T],
    rhs_s: (usize, usize),
) {
    assert!(dst.len() >= m * n, "destination too small");
    // SAFETY: the destination is m × n row-major and checked above; the callers' operand views
    // are whole buffers of the stated shapes.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            lhs.as_ptr(),
            lhs_s.1 as isize,
            lhs_s.0 as isize,
            rhs.as_ptr(),
            rhs_s.1 as isize,
            rhs_s.0 as isize,
            T::one(),
            T::one(),
            false,
            false,
            false,
            if super::parallel(m * n * k / 8) { Parallelism::Rayon(0) } else { Parallelism::None },
        )
    }
}

/// Forward: `y [n, o, h, w]` from `x [n, c, h, w]`, `weight [o, c, 3, 3]` and `bias [o]`.
#[allow(clippy::too_many_arguments)]
pub fn forward<T: Real>(x: &[T], n: usize, c: usize, h: usize, w: usize, weight: &[T], o: usize, bias: &[T]) -> Vec<T> {
    let g = Geometry::new(h, w);
    let mut y = Vec::with_capacity(n * o * h * w);
    let mut wide = vec![T::zero(); o * g.wide];
    for img in 0..n {
        let cols = g.cols(&g.pad(&x[img * c * h * w..][..c * h * w], c), c);
        matmul(o, g.wide, c * 9, &mut wide, false, weight, (c * 9, 1), &cols, (g.wide, 1));
        let start = y.len();
        g.crop_into(&wide, o, &mut y);
        let f = |(ch, &b): (&mut [T], &T)| ch.iter_mut().for_each(|v| *v = *v + b);
        for_each_maybe_par!(
            o * h * w,
            y[start..].par_chunks_mut(h * w).zip(bias.par_iter()),
            y[start..].chunks_mut(h * w).zip(bias.iter()),
            f
        );
    }
    y
}

/// Which gradients a backward pass computes (frozen weights need none of theirs).
#[derive(Clone, Copy, Debug)]
pub struct Needed {
    pub input: bool,
    pub weight: bool,
    pub bias: bool,
}

/// Backward: the gradients of the input, the weight and the bias from the output gradient
/// `dy [n, o, h, w]`, each only when `needed` (empty otherwise).
#[allow(clippy::too_many_arguments)]
pub fn backward<T: Real>(
    x: &[T],
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    weight: &[T],
    o: usize,
    dy: &[T],
    needed: Needed,
) -> (Vec<T>, Vec<T>, Vec<T>) {
    let g = Geometry::new(h, w);
    let mut dx = Vec::with_capacity(if needed.input { n * c * h * w } else { 0 });
    let mut dw = if needed.weight { vec![T::zero(); o * c * 9] } else { Vec::new() };
    let mut dcols = if needed.input { vec![T::zero(); c * 9 * g.wide] } else { Vec::new() };
    for img in 0..n {
        if !(needed.input || needed.weight) {
            break;
        }
        let dy_wide = g.widen(&dy[img * o * h * w..][..o * h * w], o);
        if needed.weight {
            // dw [o, c·9] (+)= dy_wide [o, wide] · cols^T
            let cols = g.cols(&g.pad(&x[img * c * h * w..][..c * h * w], c), c);
            matmul(o, c * 9, g.wide, &mut dw, img > 0, &dy_wide, (g.wide, 1), &cols, (1, g.wide));
        }
        if !needed.input {
            continue;
        }
        // dcols [c·9, wide] = W^T · dy_wide, then each tap's row adds back at its shift.
        matmul(c * 9, g.wide, o, &mut dcols, false, weight, (1, c * 9), &dy_wide, (g.wide, 1));
        let mut dxp = vec![T::zero(); c * g.stride];
        let f = |(d, src): (&mut [T], &[T])| {
            for (tap, s) in src.chunks(g.wide).enumerate() {
                d[g.shift(tap)..][..g.wide].iter_mut().zip(s).for_each(|(a, &v)| *a = *a + v);
            }
        };
        let n = 9 * g.wide;
        for_each_maybe_par!(c * n, dxp.par_chunks_mut(g.stride).zip(dcols.par_chunks(n)), dxp.chunks_mut(g.stride).zip(dcols.chunks(n)), f);
        for ch in 0..c {
            for row in 0..h {
                dx.extend_from_slice(&dxp[ch * g.stride + (row + 1) * g.wp + 1..][..w]);
            }
        }
    }
    // One pass over dy: cheap next to the products, so on the calling thread.
    let db = (0..if needed.bias { o } else { 0 })
        .map(|ch| {
            (0..n).map(|img| dy[(img * o + ch) * h * w..][..h * w].iter().fold(T::zero(), |a, &v| a + v)).fold(T::zero(), |a, v| a + v)
        })
        .collect();
    (dx, dw, db)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The convolution written out element by element.
    #[allow(clippy::too_many_arguments)]
    fn direct(x: &[f64], n: usize, c: usize, h: usize, w: usize, weight: &[f64], o: usize, bias: &[f64]) -> Vec<f64> {
        let mut y = vec![0.0; n * o * h * w];
        for b in 0..n {
            for oc in 0..o {
                for i in 0..h {
                    for j in 0..w {
                        let mut s = bias[oc];
                        for ic in 0..c {
                            for kh in 0..3 {
                                for kw in 0..3 {
                                    let (ii, jj) = (i as isize + kh as isize - 1, j as isize + kw as isize - 1);
                                    if ii >= 0 && jj >= 0 && (ii as usize) < h && (jj as usize) < w {
                                        s += weight[((oc * c + ic) * 3 + kh) * 3 + kw]
                                            * x[((b * c + ic) * h + ii as usize) * w + jj as usize];
                                    }
                                }
                            }
                        }
                        y[((b * o + oc) * h + i) * w + j] = s;
                    }
                }
            }
        }
        y
    }

    fn values(n: usize, seed: f64) -> Vec<f64> {
        (0..n).map(|i| ((i as f64) * 0.731 + seed).sin()).collect()
    }

    /// Forward against the direct sum; backward against the adjoint identities
    /// `<dy, conv(x)> = <dx, x>` (linear in x, bias aside) and `<dy, conv_w(x)> = <dw, w>`.
    #[test]
    fn matches_the_direct_sum_and_its_adjoints() {
        let (n, c, h, w, o) = (2, 3, 5, 4, 4);
        let x = values(n * c * h * w, 0.3);
        let weight = values(o * c * 9, 1.1);
        let bias = values(o, 2.0);
        let y = forward(&x, n, c, h, w, &weight, o, &bias);
        let want = direct(&x, n, c, h, w, &weight, o, &bias);
        let err = y.iter().zip(&want).fold(0f64, |m, (a, b)| m.max((a - b).abs()));
        assert!(err < 1e-12, "{err}");

        let dy = values(n * o * h * w, 0.9);
        let all = Needed { input: true, weight: true, bias: true };
        let (dx, dw, db) = backward(&x, n, c, h, w, &weight, o, &dy, all);
        let (dx_only, none, _) = backward(&x, n, c, h, w, &weight, o, &dy, Needed { weight: false, bias: false, ..all });
        assert_eq!((dx_only, none.len()), (dx.clone(), 0));
        let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(p, q)| p * q).sum::<f64>();
        let zero_bias = vec![0.0; o];
        let y0 = direct(&x, n, c, h, w, &weight, o, &zero_bias);
        assert!((dot(&dy, &y0) - dot(&dx, &x)).abs() < 1e-9);
        assert!((dot(&dy, &y0) - dot(&dw, &weight)).abs() < 1e-9);
        for (oc, g) in db.iter().enumerate() {
            let s: f64 = (0..n).map(|b| dy[(b * o + oc) * h * w..][..h * w].iter().sum::<f64>()).sum();
            assert!((g - s).abs() < 1e-12);
        }
    }
}
