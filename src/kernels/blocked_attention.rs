//! Multi-head attention in blocks of query rows, written with burn's tensor operations: the
//! memory-light attention of the backends that have no kernel of their own for it (the wgpu
//! ones). As the flex kernel, the forward keeps only the output and each row's log-sum-exp, and
//! the backward recomputes a block's probabilities from them, so a training step's graph holds no
//! `[heads, N, M]` score matrix (SD 1.5's largest self-attention at 512 px: 512 MB per layer and
//! sample in float32) and the largest temporary is one block's. The backward is the usual
//! `dS = P ⊙ (dP − rowsum(dO ⊙ O))`.
//!
//! Half-precision inputs keep their products in their own type and the softmax, the log-sum-exp
//! and the gradient accumulation in float32, as autocast runs the composition.
use crate::precision::widen;
use burn::tensor::{Device, Tensor, TensorData};

/// Elements of one block's score matrix, `batch · heads · rows · keys`: 64 MB in float32, so the
/// backward's three block-sized temporaries stay near 200 MB whatever the resolution.
pub const BLOCK_SCORES: usize = 1 << 24;

/// Query rows per block for `b` samples, `heads` heads and `m` keys, at most `n`.
pub fn block_rows(b: usize, heads: usize, n: usize, m: usize) -> usize {
    (BLOCK_SCORES / (b * heads * m).max(1)).clamp(1, n.max(1))
}

/// `[B, N, heads·D]` as `[B, heads, N, D]`.
pub(crate) fn split(t: Tensor<3>, heads: usize) -> Tensor<4> {
    let [b, n, inner] = t.dims();
    t.reshape([b, n, heads, inner / heads]).swap_dims(1, 2)
}

/// `[B, heads, N, D]` back to `[B, N, heads·D]`.
pub(crate) fn merge(t: Tensor<4>) -> Tensor<3> {
    let [b, heads, n, d] = t.dims();
    t.swap_dims(1, 2).reshape([b, n, heads * d])
}

/// The query blocks of `n` rows: `(first row, rows)`.
fn blocks(n: usize, rows: usize) -> impl Iterator<Item = (usize, usize)> {
    (0..n).step_by(rows).map(move |i0| (i0, rows.min(n - i0)))
}

/// The float32 scores `scale · Q_blk Kᵀ` of the block starting at query row `i0`, with the causal
/// mask (keys after the query's own position) as −∞.
fn scores(q_blk: Tensor<4>, k: &Tensor<4>, i0: usize, causal: bool) -> Tensor<4> {
    let [_, _, rows, d] = q_blk.dims();
    let m = k.dims()[2];
    let s = widen(q_blk.matmul(k.clone().swap_dims(2, 3))).mul_scalar(1.0 / (d as f64).sqrt());
    if causal { s.clone() + causal_mask(i0, rows, m, &k.device()).cast(s.dtype()) } else { s }
}

/// `[1, 1, rows, m]`: 0 where query row `i0 + r` may see key `j` (`j ≤ i0 + r`), −∞ after.
pub(crate) fn causal_mask(i0: usize, rows: usize, m: usize, device: &Device) -> Tensor<4> {
    let mut v = vec![0f32; rows * m];
    for r in 0..rows {
        for x in &mut v[r * m + (i0 + r + 1).min(m)..(r + 1) * m] {
            *x = f32::NEG_INFINITY;
        }
    }
    Tensor::<2>::from_data(TensorData::new(v, [rows, m]), device).reshape([1, 1, rows, m])
}

/// The attention of `q [B, N, heads·D]` over `k`, `v [B, M, heads·D]` in blocks of `rows` query
/// rows, and each row's float32 log-sum-exp `[B, heads, N]`.
pub fn forward(q: Tensor<3>, k: Tensor<3>, v: Tensor<3>, heads: usize, causal: bool, rows: usize) -> (Tensor<3>, Tensor<3>) {
    let [b, n, _] = q.dims();
    let dtype = v.dtype();
    let (q, k, v) = (split(q, heads), split(k, heads), split(v, heads));
    let (mut outs, mut lses) = (Vec::new(), Vec::new());
    for (i0, r) in blocks(n, rows) {
        let s = scores(q.clone().narrow(2, i0, r), &k, i0, causal);
        let max = s.clone().max_dim(3);
        let e = (s - max.clone()).exp();
        let sum = e.clone().sum_dim(3);
        outs.push((e / sum.clone()).cast(dtype).matmul(v.clone()));
        lses.push(max + sum.log());
    }
    (merge(Tensor::cat(outs, 2)), Tensor::cat(lses, 2).reshape([b, heads, n]))
}

/// The gradients of `q`, `k` and `v` from the output gradient `dout`, given the forward's output
/// `out` and log-sum-exp `lse`, in blocks of `rows` query rows.
#[allow(clippy::too_many_arguments)]
pub fn backward(
    q: Tensor<3>,
    k: Tensor<3>,
    v: Tensor<3>,
    out: Tensor<3>,
    lse: Tensor<3>,
    dout: Tensor<3>,
    heads: usize,
    causal: bool,
    rows: usize,
) -> (Tensor<3>, Tensor<3>, Tensor<3>) {
    let n = q.dims()[1];
    let d = q.dims()[2] / heads;
    let scale = 1.0 / (d as f64).sqrt();
    let dtype = q.dtype();
    let (q, k, v, out, dout) = (split(q, heads), split(k, heads), split(v, heads), split(out, heads), split(dout, heads));
    let lse = lse.unsqueeze_dim::<4>(3);
    let (mut dqs, mut dk, mut dv) = (Vec::new(), None::<Tensor<4>>, None::<Tensor<4>>);
    let add = |acc: Option<Tensor<4>>, x: Tensor<4>| Some(acc.map_or(x.clone(), |a| a + x));
    for (i0, r) in blocks(n, rows) {
        let (q_blk, do_blk) = (q.clone().narrow(2, i0, r), dout.clone().narrow(2, i0, r));
        let p = (scores(q_blk.clone(), &k, i0, causal) - lse.clone().narrow(2, i0, r)).exp();
        dv = add(dv, widen(p.clone().cast(dtype).swap_dims(2, 3).matmul(do_blk.clone())));
        let dp = widen(do_blk.clone().matmul(v.clone().swap_dims(2, 3)));
        let di = (widen(do_blk) * widen(out.clone().narrow(2, i0, r))).sum_dim(3);
        let ds = (p * (dp - di)).cast(dtype);
        dqs.push(ds.clone().matmul(k.clone()).mul_scalar(scale));
        dk = add(dk, widen(ds.swap_dims(2, 3).matmul(q_blk)).mul_scalar(scale));
    }
    let back = |t: Option<Tensor<4>>| merge(t.expect("at least one query row").cast(dtype));
    (merge(Tensor::cat(dqs, 2)), back(dk), back(dv))
}
