//! The same operations on burn's LibTorch backend, through PyTorch's own kernels: native group
//! norm (with the closed-form backward in torch operations) and memory-light attention with its
//! backward, keeping no score matrices: the flash attention kernels on CPU and the
//! memory-efficient (cutlass) kernels on CUDA, which take float32 and head sizes up to SD 1.5's
//! 160 (CUDA's flash kernels take half precision only). The 3x3 convolution is PyTorch's.
// burn marks its LibTorch backend deprecated in favour of CubeCL, whose CUDA build downloads LLVM.
#![allow(deprecated)]
use super::conv3x3::Needed;
use super::{AttentionBackward, AttentionOps, KernelBackward, KernelOps, OptionalGrads};
use burn::backend::LibTorch;
use burn::backend::libtorch::TchTensor;
use burn::backend::ops::ModuleOps;
use burn::tensor::ops::ConvOptions;
use tch::{Kind, Tensor};

fn t(x: &TchTensor) -> &Tensor {
    &x.tensor
}

fn wrap(x: Tensor) -> TchTensor {
    TchTensor::new(x)
}

fn options() -> ConvOptions<2> {
    ConvOptions::new([1, 1], [1, 1], [1, 1], 1)
}

/// `[B, N, heads·D]` as `[B, heads, N, D]` (a view).
fn heads_first(x: &Tensor, heads: i64) -> Tensor {
    let s = x.size();
    x.reshape([s[0], s[1], heads, s[2] / heads]).transpose(1, 2)
}

/// `[B, heads, N, D]` back to `[B, N, heads·D]`.
fn heads_last(x: &Tensor) -> Tensor {
    let s = x.size();
    x.transpose(1, 2).contiguous().reshape([s[0], s[2], s[1] * s[3]])
}

fn scale(q: &Tensor, heads: i64) -> f64 {
    1.0 / ((q.size()[2] / heads) as f64).sqrt()
}

/// `(x̂, mean, rstd)` of group norm over `[N, C, H, W]`, x̂ in the input's shape.
fn normalise(x: &Tensor, groups: i64, eps: f64) -> (Tensor, Tensor, Tensor) {
    // PyTorch's kernel takes contiguous input only.
    let x = &x.contiguous();
    let s = x.size();
    let hw: i64 = s[2..].iter().product();
    let (_, mean, rstd) = x.native_group_norm(None::<Tensor>, None::<Tensor>, s[0], s[1], hw, groups, eps);
    let grouped = x.reshape([s[0], groups, -1]);
    let mut xhat = grouped - mean.unsqueeze(-1);
    let _ = xhat.g_mul_(&rstd.unsqueeze(-1));
    let xhat = xhat.reshape(s.as_slice());
    (xhat, mean, rstd)
}

fn per_channel(v: &Tensor, c: i64) -> Tensor {
    v.reshape([1, c, 1, 1])
}

impl KernelOps for LibTorch {
    fn conv3x3(x: TchTensor, weight: TchTensor, bias: TchTensor) -> TchTensor {
        LibTorch::conv2d(x, weight, Some(bias), options())
    }

    fn group_norm(x: TchTensor, weight: TchTensor, bias: TchTensor, groups: usize, eps: f64, silu: bool) -> TchTensor {
        let x = t(&x).contiguous();
        let s = x.size();
        let hw: i64 = s[2..].iter().product();
        let (y, _, _) = x.native_group_norm(Some(t(&weight)), Some(t(&bias)), s[0], s[1], hw, groups as i64, eps);
        wrap(if silu { y.silu() } else { y })
    }
}

impl KernelBackward for LibTorch {
    fn conv3x3_backward(x: TchTensor, weight: TchTensor, grad: TchTensor, needed: Needed) -> OptionalGrads<Self> {
        let o = options();
        let dx = needed.input.then(|| LibTorch::conv2d_x_backward(x.clone(), weight.clone(), grad.clone(), o.clone()));
        let dw = needed.weight.then(|| LibTorch::conv2d_weight_backward(x.clone(), weight.clone(), grad.clone(), o));
        let db = needed.bias.then(|| LibTorch::conv2d_bias_backward(grad.clone(), weight, grad));
        (dx, dw, db)
    }

    fn group_norm_backward(
        x: TchTensor,
        weight: TchTensor,
        bias: TchTensor,
        groups: usize,
        eps: f64,
        silu: bool,
        grad: TchTensor,
    ) -> (TchTensor, TchTensor, TchTensor) {
        let (x, w, b, dy) = (t(&x), t(&weight), t(&bias), t(&grad));
        let s = x.size();
        let c = s[1];
        let (xhat, _, rstd) = normalise(x, groups as i64, eps);
        // In place where a buffer is not read again: the backward of the largest layers sets the
        // peak memory of a training step, and every full-size temporary counts.
        let g = if silu {
            // silu'(y) = σ(y) (1 + y (1 − σ(y)))
            let mut y = &xhat * per_channel(w, c) + per_channel(b, c);
            let sg = y.sigmoid();
            let _ = y.g_mul_(&sg.rsub_scalar(1.0));
            let _ = y.g_add_scalar_(1.0);
            let _ = y.g_mul_(&sg);
            drop(sg);
            let _ = y.g_mul_(dy);
            y
        } else {
            dy.shallow_clone()
        };
        let reduce = [0i64, 2, 3];
        let dw = (&g * &xhat).sum_dim_intlist(&reduce[..], false, None);
        let db = g.sum_dim_intlist(&reduce[..], false, None);
        let mut gw = (g * per_channel(w, c)).reshape([s[0], groups as i64, -1]);
        let xg = xhat.reshape([s[0], groups as i64, -1]);
        let mean_g = gw.mean_dim(-1, true, None);
        let mean_gx = (&gw * &xg).mean_dim(-1, true, None);
        // dx = rstd (g·w − mean(g·w) − x̂ mean(g·w·x̂)), built in gw's buffer.
        let _ = gw.g_sub_(&mean_g);
        let _ = gw.g_sub_(&(xg * mean_gx));
        let _ = gw.g_mul_(&rstd.unsqueeze(-1));
        (wrap(gw.reshape(s.as_slice())), wrap(dw), wrap(db))
    }
}

impl AttentionOps for LibTorch {
    fn attention(q: TchTensor, k: TchTensor, v: TchTensor, heads: usize, causal: bool) -> TchTensor {
        Self::attention_with_lse(q, k, v, heads, causal).0
    }
}

impl AttentionBackward for LibTorch {
    fn attention_with_lse(q: TchTensor, k: TchTensor, v: TchTensor, heads: usize, causal: bool) -> (TchTensor, TchTensor) {
        let h = heads as i64;
        let (q4, k4, v4) = (heads_first(t(&q), h), heads_first(t(&k), h), heads_first(t(&v), h));
        let sc = scale(t(&q), h);
        let (out, lse) = if t(&q).device().is_cuda() {
            let (out, lse, _, _) =
                Tensor::internal_scaled_dot_product_efficient_attention(&q4, &k4, &v4, None::<Tensor>, true, 0.0, causal, sc);
            (out, lse)
        } else {
            Tensor::internal_scaled_dot_product_flash_attention_for_cpu(&q4, &k4, &v4, 0.0, causal, None::<Tensor>, sc)
        };
        (wrap(heads_last(&out)), wrap(lse))
    }

    fn attention_backward(
        q: TchTensor,
        k: TchTensor,
        v: TchTensor,
        out: TchTensor,
        lse: TchTensor,
        grad: TchTensor,
        heads: usize,
        causal: bool,
    ) -> (TchTensor, TchTensor, TchTensor) {
        let h = heads as i64;
        if t(&q).device().is_cuda() {
            return efficient_attention_backward(t(&q), t(&k), t(&v), t(&out), t(&lse), t(&grad), h, causal);
        }
        let four = |x: &TchTensor| heads_first(t(x), h);
        let (dq, dk, dv) = Tensor::internal_scaled_dot_product_flash_attention_for_cpu_backward(
            &four(&grad),
            &four(&q),
            &four(&k),
            &four(&v),
            &four(&out),
            t(&lse),
            0.0,
            causal,
            None::<Tensor>,
            scale(t(&q), h),
        );
        (wrap(heads_last(&dq)), wrap(heads_last(&dk)), wrap(heads_last(&dv)))
    }
}

/// The CUDA backward of the memory-efficient kernel, as PyTorch's own
/// `_scaled_dot_product_efficient_attention_backward` calls it: tensors as `[B, N, heads, D]`
/// (a reshape of catlora's `[B, N, heads·D]`), no dropout (so the random-number state the forward
/// returned is not read), causal masking from the top left. The keys stay in one split, as in
/// PyTorch's deterministic mode: by default the kernel may split them and add the splits' query
/// gradients with atomics, in whatever order the splits finish, so the same step could give other
/// bits from run to run.
#[allow(clippy::too_many_arguments)]
fn efficient_attention_backward(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    out: &Tensor,
    lse: &Tensor,
    grad: &Tensor,
    heads: i64,
    causal: bool,
) -> (TchTensor, TchTensor, TchTensor) {
    let split = |x: &Tensor| {
        let s = x.size();
        x.contiguous().reshape([s[0], s[1], heads, s[2] / heads])
    };
    let merge = |x: Tensor| {
        let s = x.size();
        wrap(x.contiguous().reshape([s[0], s[1], s[2] * s[3]]))
    };
    let no_rng = Tensor::empty([0], (Kind::Int64, q.device()));
    let (dq, dk, dv, _) = Tensor::internal_efficient_attention_backward(
        &split(grad),
        &split(q),
        &split(k),
        &split(v),
        None::<Tensor>,
        &split(out),
        None::<Tensor>,
        None::<Tensor>,
        q.size()[1],
        k.size()[1],
        lse,
        0.0,
        &no_rng,
        &no_rng,
        causal as i64,
        false,
        scale(q, heads),
        Some(1),
        None::<i64>,
        false,
    );
    (merge(dq), merge(dk), merge(dv))
}
