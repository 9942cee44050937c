//! Multi-head scaled dot-product attention on the projections' own layout `[B, N, heads·D]`
//! (no head permutes), in blocks of query rows, keeping only the output and each row's
//! log-sum-exp for the backward pass: the score matrices `[heads, N, M]` are recomputed block by
//! block there instead of being stored (at 512 px, SD 1.5's largest self-attention would keep
//! 512 MB of scores per layer). The forward is the usual max-shifted softmax; the backward uses
//! `dS = P ⊙ (dP − rowsum(dO ⊙ O))`.
use super::{Real, for_each_maybe_par};
use gemm::Parallelism;
use rayon::prelude::*;

/// Query rows per block.
const BLOCK: usize = 128;

/// Shapes: `q [b, n, heads·d]`, `k` and `v [b, m, heads·d]`.
#[derive(Clone, Copy, Debug)]
pub struct Dims {
    pub b: usize,
    pub n: usize,
    pub m: usize,
    pub heads: usize,
    pub d: usize,
    pub causal: bool,
}

impl Dims {
    fn hd(&self) -> usize {
        self.heads * self.d
    }
    fn scale(&self) -> f64 {
        1.0 / (self.d as f64).sqrt()
    }
    fn blocks(&self) -> usize {
        self.n.div_ceil(BLOCK)
    }
}

/// A raw pointer shared by tasks that write disjoint elements.
#[derive(Clone, Copy)]
struct Shared<T>(*mut T);
unsafe impl<T> Send for Shared<T> {}
unsafe impl<T> Sync for Shared<T> {}

impl<T> Shared<T> {
    fn at(self, offset: usize) -> *mut T {
        // SAFETY (callers): offsets stay inside the buffer the pointer came from.
        unsafe { self.0.add(offset) }
    }
}

/// `dst [r, c] = beta · lhs [r, k] · rhs [k, c] (+ dst when `accumulate`)`, strided, single-threaded
/// (the blocks run in parallel). Never inlined, so that profiles attribute the products to
/// attention.
#[allow(clippy::too_many_arguments)]
#[inline(never)]
unsafe fn mm<T: Real>(
    r: usize,
    c: usize,
    k: usize,
    dst: *mut T,
    dst_rs: usize,
    accumulate: bool,
    lhs: *const T,
    lhs_rs: usize,
    lhs_cs: usize,
    rhs: *const T,
    rhs_rs: usize,
    rhs_cs: usize,
    beta: T,
) {
    // SAFETY: forwarded from the caller, who passes views inside live buffers.
    unsafe {
        gemm::gemm(
            r,
            c,
            k,
            dst,
            1,
            dst_rs as isize,
            accumulate,
            lhs,
            lhs_cs as isize,
            lhs_rs as isize,
            rhs,
            rhs_cs as isize,
            rhs_rs as isize,
            T::one(),
            beta,
            false,
            false,
            false,
            Parallelism::None,
        )
    }
}

/// Scores `S = scale · Q_blk K^T` of one block into `s [rows, m]`, with the causal mask as −∞.
#[inline(never)]
fn scores<T: Real>(q: &[T], k: &[T], dims: Dims, bh: usize, i0: usize, rows: usize, s: &mut [T]) {
    let (hd, d) = (dims.hd(), dims.d);
    let (b, h) = (bh / dims.heads, bh % dims.heads);
    let q0 = (b * dims.n + i0) * hd + h * d;
    let k0 = b * dims.m * hd + h * d;
    // SAFETY: Q_blk is rows × d at row stride hd inside q; K^T is d × m (row stride 1, column
    // stride hd) inside k; s holds rows × m.
    unsafe {
        mm(rows, dims.m, d, s.as_mut_ptr(), dims.m, false, q.as_ptr().add(q0), hd, 1, k.as_ptr().add(k0), 1, hd, T::of(dims.scale()))
    };
    if dims.causal {
        for r in 0..rows {
            for v in &mut s[r * dims.m + (i0 + r + 1).min(dims.m)..(r + 1) * dims.m] {
                *v = T::neg_infinity();
            }
        }
    }
}

/// Replaces a row of scores by `exp(s − max)`; returns `(max, Σ exp(s − max))`.
#[inline(never)]
fn softmax_row<T: Real>(row: &mut [T]) -> (T, T) {
    let max = row.iter().fold(T::neg_infinity(), |a, &x| a.max(x));
    let mut sum = T::zero();
    for x in row.iter_mut() {
        *x = (*x - max).exp();
        sum = sum + *x;
    }
    (max, sum)
}

/// The output `[b, n, heads·d]` and each row's log-sum-exp `[b, heads, n]`.
pub fn forward<T: Real>(q: &[T], k: &[T], v: &[T], dims: Dims) -> (Vec<T>, Vec<T>) {
    let (hd, d, m) = (dims.hd(), dims.d, dims.m);
    let mut out = vec![T::zero(); dims.b * dims.n * hd];
    let mut lse = vec![T::zero(); dims.b * dims.heads * dims.n];
    let (out_p, lse_p) = (Shared(out.as_mut_ptr()), Shared(lse.as_mut_ptr()));
    let work = dims.b * dims.heads * dims.n * dims.m * dims.d;
    let tasks = dims.b * dims.heads * dims.blocks();
    let f = |task: usize| {
        let (bh, blk) = (task / dims.blocks(), task % dims.blocks());
        let (b, h) = (bh / dims.heads, bh % dims.heads);
        let i0 = blk * BLOCK;
        let rows = BLOCK.min(dims.n - i0);
        let mut s = vec![T::zero(); rows * m];
        scores(q, k, dims, bh, i0, rows, &mut s);
        let mut inv = vec![T::zero(); rows];
        for (r, row) in s.chunks_mut(m).enumerate() {
            let (max, sum) = softmax_row(row);
            inv[r] = T::one() / sum;
            // SAFETY: row (bh, i0 + r) of lse belongs to this task alone.
            unsafe { *lse_p.at(bh * dims.n + i0 + r) = max + sum.ln() };
        }
        let o0 = (b * dims.n + i0) * hd + h * d;
        // SAFETY: P is rows × m; V is m × d at row stride hd; the output rows of this block and
        // head are written by this task alone.
        unsafe { mm(rows, d, m, out_p.at(o0), hd, false, s.as_ptr(), m, 1, v.as_ptr().add(b * m * hd + h * d), hd, 1, T::one()) };
        for (r, &f) in inv.iter().enumerate() {
            for j in 0..d {
                // SAFETY: as above.
                unsafe { *out_p.at(o0 + r * hd + j) = *out_p.at(o0 + r * hd + j) * f };
            }
        }
    };
    for_each_maybe_par!(work, (0..tasks).into_par_iter(), 0..tasks, f);
    (out, lse)
}

/// The gradients of `q`, `k` and `v` from the output gradient `dout`, recomputing each block's
/// probabilities from `lse`.
#[allow(clippy::too_many_arguments)]
pub fn backward<T: Real>(q: &[T], k: &[T], v: &[T], out: &[T], lse: &[T], dout: &[T], dims: Dims) -> (Vec<T>, Vec<T>, Vec<T>) {
    let (hd, d, m) = (dims.hd(), dims.d, dims.m);
    let mut dq = vec![T::zero(); q.len()];
    let mut dk = vec![T::zero(); k.len()];
    let mut dv = vec![T::zero(); v.len()];
    let (dq_p, dk_p, dv_p) = (Shared(dq.as_mut_ptr()), Shared(dk.as_mut_ptr()), Shared(dv.as_mut_ptr()));
    let scale = T::of(dims.scale());
    // One task per (sample, head): its key and value gradients sum over the query blocks.
    let work = dims.b * dims.heads * dims.n * dims.m * dims.d;
    let f = |bh: usize| {
        let (b, h) = (bh / dims.heads, bh % dims.heads);
        let kv0 = b * m * hd + h * d;
        let mut p = vec![T::zero(); BLOCK.min(dims.n) * m];
        let mut dp = vec![T::zero(); p.len()];
        for blk in 0..dims.blocks() {
            let i0 = blk * BLOCK;
            let rows = BLOCK.min(dims.n - i0);
            let (p, dp) = (&mut p[..rows * m], &mut dp[..rows * m]);
            scores(q, k, dims, bh, i0, rows, p);
            let q0 = (b * dims.n + i0) * hd + h * d;
            for r in 0..rows {
                let l = lse[bh * dims.n + i0 + r];
                p[r * m..(r + 1) * m].iter_mut().for_each(|x| *x = (*x - l).exp());
            }
            // SAFETY: every view below lies inside its buffer (shapes as in `forward`); the
            // gradient rows and columns of this (sample, head) are written by this task alone.
            unsafe {
                // dP = dO_blk V^T
                mm(rows, m, d, dp.as_mut_ptr(), m, false, dout.as_ptr().add(q0), hd, 1, v.as_ptr().add(kv0), 1, hd, T::one());
                // dV += P^T dO_blk
                mm(m, d, rows, dv_p.at(kv0), hd, true, p.as_ptr(), 1, m, dout.as_ptr().add(q0), hd, 1, T::one());
            }
            for r in 0..rows {
                let o = &out[q0 + r * hd..][..d];
                let g = &dout[q0 + r * hd..][..d];
                let di = o.iter().zip(g).fold(T::zero(), |a, (&x, &y)| a + x * y);
                for j in 0..m {
                    let idx = r * m + j;
                    dp[idx] = p[idx] * (dp[idx] - di);
                }
            }
            unsafe {
                // dQ_blk = scale · dS K ; dK += scale · dS^T Q_blk
                mm(rows, d, m, dq_p.at(q0), hd, false, dp.as_ptr(), m, 1, k.as_ptr().add(kv0), hd, 1, scale);
                mm(m, d, rows, dk_p.at(kv0), hd, true, dp.as_ptr(), 1, m, q.as_ptr().add(q0), hd, 1, scale);
            }
        }
    };
    let tasks = dims.b * dims.heads;
    for_each_maybe_par!(work, (0..tasks).into_par_iter(), 0..tasks, f);
    (dq, dk, dv)
}
