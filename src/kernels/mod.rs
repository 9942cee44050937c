//! Fused operations with their own backward pass, written for burn's pure-Rust CPU backend
//! (`flex`), where the composed forms spend most of their time in copies and element-wise passes:
//! the 3x3 convolution without im2col, group normalisation fused with its affine transform and the
//! SiLU after it, and multi-head attention that keeps no score matrices for its backward pass.
//! Each has a tensor-level function that uses the kernel where one exists (flex; LibTorch calls
//! PyTorch's; the wgpu backends have attention alone, in [`blocked_attention`]) and the
//! composition of burn's own operations elsewhere, and each is tested against that composition,
//! forward and backward.
//!
//! They are burn backend extensions (`#[backend_extension]`): [`KernelOps`] and [`AttentionOps`]
//! route a dispatch tensor to the backend's kernel ([`flex`], `libtorch`, `cube`) or, for tensors
//! that record a graph, to the autodiff wrapper ([`autodiff`]) that registers its backward pass.
// burn marks its LibTorch backend deprecated in favour of CubeCL, whose CUDA build downloads LLVM.
#![cfg_attr(feature = "libtorch", allow(deprecated))]
pub mod attention;
pub mod autodiff;
pub mod blocked_attention;
pub mod conv3x3;
#[cfg(any(feature = "wgpu", feature = "vulkan"))]
pub mod cube;
pub mod flex;
pub mod group_norm;
#[cfg(feature = "libtorch")]
pub mod libtorch;

use burn::backend::{Backend, DispatchDevice, backend_extension, tensor::FloatTensor};
use burn::tensor::module::conv2d;
use burn::tensor::ops::ConvOptions;
use burn::tensor::{Device, Tensor};

/// Work (element operations) below which a kernel stays on the calling thread: waking rayon's
/// pool costs more than it saves on small tensors (the toy models, cross-attention to 77 tokens).
const PARALLEL_WORK: usize = 1 << 17;

/// Whether `work` element operations are worth spreading over the thread pool.
pub(crate) fn parallel(work: usize) -> bool {
    work >= PARALLEL_WORK && rayon::current_num_threads() > 1
}

/// Runs `f` on every item, on the pool when the work is large enough (the `rayon` iterator and
/// the plain one yield the same items).
macro_rules! for_each_maybe_par {
    ($work:expr, $par:expr, $seq:expr, $f:expr) => {
        if $crate::kernels::parallel($work) { $par.for_each($f) } else { $seq.for_each($f) }
    };
}
pub(crate) use for_each_maybe_par;

/// The element types the kernels are written for (f64 for the gradient checks).
pub trait Real: num_traits::Float + Send + Sync + 'static + burn::tensor::Element + bytemuck::Pod {
    fn as_f64(self) -> f64;
    fn of(v: f64) -> Self;
}

impl Real for f32 {
    fn as_f64(self) -> f64 {
        self as f64
    }
    fn of(v: f64) -> Self {
        v as f32
    }
}

impl Real for f64 {
    fn as_f64(self) -> f64 {
        self
    }
    fn of(v: f64) -> Self {
        v
    }
}

/// The fused forward operations, per backend.
#[backend_extension(Flex, LibTorch: cfg(feature = "libtorch"), Autodiff)]
pub trait KernelOps: Backend {
    /// 3x3 convolution, stride 1, padding 1: `x [N, C, H, W]`, `weight [O, C, 3, 3]`, `bias [O]`.
    fn conv3x3(x: FloatTensor<Self>, weight: FloatTensor<Self>, bias: FloatTensor<Self>) -> FloatTensor<Self>;

    /// `silu(group_norm(x) · weight + bias)`, or without the SiLU: `x [N, C, H, W]`, `weight`
    /// and `bias [C]`.
    fn group_norm(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        groups: usize,
        eps: f64,
        silu: bool,
    ) -> FloatTensor<Self>;
}

/// Multi-head scaled dot-product attention, per backend: a trait of its own because the wgpu
/// backends (`Cube`) have this fused operation alone ([`blocked_attention`], in burn's operations).
#[backend_extension(Flex, LibTorch: cfg(feature = "libtorch"), Cube: cfg(any(feature = "wgpu", feature = "vulkan")), Autodiff)]
pub trait AttentionOps: Backend {
    /// Attention on `q [B, N, heads·D]`, `k` and `v [B, M, heads·D]`.
    fn attention(q: FloatTensor<Self>, k: FloatTensor<Self>, v: FloatTensor<Self>, heads: usize, causal: bool) -> FloatTensor<Self>;
}

/// Input, weight and bias gradients, each computed only when needed.
pub type OptionalGrads<B> = (Option<FloatTensor<B>>, Option<FloatTensor<B>>, Option<FloatTensor<B>>);

/// The backward passes the autodiff wrapper calls on the inner backend.
pub trait KernelBackward: Backend {
    /// The gradients of `x`, `weight` and `bias` from the output gradient, each only when needed.
    fn conv3x3_backward(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        needed: conv3x3::Needed,
    ) -> OptionalGrads<Self>;

    /// The gradients of `x`, `weight` and `bias` of [`KernelOps::group_norm`].
    #[allow(clippy::too_many_arguments)]
    fn group_norm_backward(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        groups: usize,
        eps: f64,
        silu: bool,
        grad: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>);
}

/// The attention's passes the autodiff wrapper calls on the inner backend.
pub trait AttentionBackward: Backend {
    /// [`AttentionOps::attention`] and each row's log-sum-exp `[B, heads, N]`.
    fn attention_with_lse(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        heads: usize,
        causal: bool,
    ) -> (FloatTensor<Self>, FloatTensor<Self>);

    /// The gradients of `q`, `k` and `v` of [`AttentionOps::attention`].
    #[allow(clippy::too_many_arguments)]
    fn attention_backward(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        out: FloatTensor<Self>,
        lse: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        heads: usize,
        causal: bool,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>);
}

/// Whether tensors on `device` run on flex (directly or under autodiff).
pub fn on_flex(device: &Device) -> bool {
    matches!(device.clone().without_autodiff().as_dispatch(), DispatchDevice::Flex(_))
}

/// Whether tensors on `device` run on burn's LibTorch backend (PyTorch's kernels).
pub fn on_libtorch(device: &Device) -> bool {
    #[cfg(feature = "libtorch")]
    if matches!(device.clone().without_autodiff().as_dispatch(), DispatchDevice::LibTorch(_)) {
        return true;
    }
    let _ = device;
    false
}

/// Whether tensors on `device` run on burn's cubecl backend (wgpu, vulkan).
pub fn on_cube(device: &Device) -> bool {
    #[cfg(any(feature = "wgpu", feature = "vulkan"))]
    if matches!(device.clone().without_autodiff().as_dispatch(), DispatchDevice::Cube(_)) {
        return true;
    }
    let _ = device;
    false
}

/// Whether the backend behind `device` computes half precision with float32 sums and has
/// bfloat16 (flex and LibTorch); burn's wgpu backends have neither.
pub fn full_half_support(device: &Device) -> bool {
    on_flex(device) || on_libtorch(device)
}

/// Refuses a half-precision type the backend behind `device` cannot compute: the wgpu backends'
/// shaders have no bfloat16 (WGSL has none; cubecl stops with "UnsupportedType(cube.bf16)").
pub fn check_dtype(device: &Device, dtype: burn::tensor::FloatDType) -> anyhow::Result<()> {
    if dtype == burn::tensor::FloatDType::BF16 && !full_half_support(device) {
        anyhow::bail!("--precision bf16: the wgpu / vulkan backend has no bfloat16 kernels; use fp16 or fp32 there");
    }
    Ok(())
}

/// A convolution with a 3x3 kernel, stride 1 and padding 1, as `conv2d` computes it.
pub fn conv3x3(x: Tensor<4>, weight: Tensor<4>, bias: Tensor<1>) -> Tensor<4> {
    if on_flex(&x.device()) {
        Tensor::from_dispatch(burn::backend::Dispatch::conv3x3(x.into_dispatch(), weight.into_dispatch(), bias.into_dispatch()))
    } else {
        conv3x3_composed(x, weight, bias)
    }
}

/// Group normalisation of `x [N, C, H, W]` with a per-channel affine transform, followed by SiLU
/// when `silu`.
pub fn group_norm(x: Tensor<4>, weight: Tensor<1>, bias: Tensor<1>, groups: usize, eps: f64, silu: bool) -> Tensor<4> {
    if on_flex(&x.device()) || on_libtorch(&x.device()) {
        let out = burn::backend::Dispatch::group_norm(x.into_dispatch(), weight.into_dispatch(), bias.into_dispatch(), groups, eps, silu);
        Tensor::from_dispatch(out)
    } else {
        group_norm_composed(x, weight, bias, groups, eps, silu)
    }
}

/// Group norm from differentiable primitives: the reference the kernel is tested against, and
/// the form on other backends. The statistics are folded into one per-channel scale and shift,
/// so the full-size tensor is touched by two element-wise ops instead of four.
pub fn group_norm_composed(x: Tensor<4>, weight: Tensor<1>, bias: Tensor<1>, groups: usize, eps: f64, silu: bool) -> Tensor<4> {
    let [b, c, h, w] = x.dims();
    let per = c / groups;
    let (var, mean) = x.clone().reshape([b, groups, per * h * w]).var_mean_bias(2);
    let per_channel = |t: Tensor<3>| t.expand([b, groups, per]).reshape([b, c, 1, 1]);
    let scale = per_channel(var.add_scalar(eps).sqrt().recip()) * weight.reshape([1, c, 1, 1]);
    let shift = bias.reshape([1, c, 1, 1]) - per_channel(mean) * scale.clone();
    let y = x * scale + shift;
    if silu { burn::tensor::activation::silu(y) } else { y }
}

/// Multi-head attention on `[B, N, heads·D]` queries and `[B, M, heads·D]` keys and values,
/// causal (each query sees the keys up to its own position) when `causal`.
pub fn attention(q: Tensor<3>, k: Tensor<3>, v: Tensor<3>, heads: usize, causal: bool) -> Tensor<3> {
    // PyTorch's CUDA kernels take half precision only for head sizes that are multiples of 8
    // (SD's 40, 64, 80, 160 are; the tiny test models' 4 is not).
    let libtorch_fits = || !crate::precision::is_half(q.dtype()) || (q.dims()[2] / heads).is_multiple_of(8);
    if on_flex(&q.device()) || on_cube(&q.device()) || (on_libtorch(&q.device()) && libtorch_fits()) {
        Tensor::from_dispatch(burn::backend::Dispatch::attention(q.into_dispatch(), k.into_dispatch(), v.into_dispatch(), heads, causal))
    } else {
        attention_composed(q, k, v, heads, causal)
    }
}

/// Attention from burn's operations: scores, softmax and the weighted sum, spelled out under
/// autodiff (whose graph then keeps the score matrices), burn's fused `attention` otherwise.
pub fn attention_composed(q: Tensor<3>, k: Tensor<3>, v: Tensor<3>, heads: usize, causal: bool) -> Tensor<3> {
    let [_, n, inner] = q.dims();
    let m = k.dims()[1];
    let d = inner / heads;
    let split = |t| blocked_attention::split(t, heads);
    let (q, k, v) = (split(q), split(k), split(v));
    let out = if q.is_autodiff() || k.is_autodiff() || v.is_autodiff() {
        let scores = q.matmul(k.swap_dims(2, 3)).mul_scalar(1.0 / (d as f64).sqrt());
        let scores =
            if causal { scores.clone() + blocked_attention::causal_mask(0, n, m, &scores.device()).cast(scores.dtype()) } else { scores };
        // The softmax in float32 for half-precision inputs, as PyTorch's autocast runs it.
        crate::precision::in_f32(scores, |s| burn::tensor::activation::softmax(s, 3)).matmul(v)
    } else {
        let opts = burn::tensor::ops::AttentionModuleOptions { scale: None, softcap: None, is_causal: causal };
        burn::tensor::module::attention(q, k, v, None, None, opts)
    };
    blocked_attention::merge(out)
}

/// The same convolution through burn's `conv2d`: the reference the kernel is tested against.
pub fn conv3x3_composed(x: Tensor<4>, weight: Tensor<4>, bias: Tensor<1>) -> Tensor<4> {
    conv2d(x, weight, Some(bias), ConvOptions::new([1, 1], [1, 1], [1, 1], 1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{DType, Distribution};

    fn random<const D: usize>(shape: [usize; D], dtype: DType, device: &Device) -> Tensor<D> {
        Tensor::<D>::random(shape, Distribution::Normal(0.0, 1.0), device).cast(dtype)
    }

    fn host<const D: usize>(t: Tensor<D>) -> Vec<f64> {
        t.into_data().convert::<f64>().as_slice::<f64>().unwrap().to_vec()
    }

    /// Max abs difference relative to the reference's largest value.
    fn rel(got: &[f64], want: &[f64]) -> f64 {
        assert_eq!(got.len(), want.len());
        let scale = want.iter().fold(1e-30f64, |m, v| m.max(v.abs()));
        got.iter().zip(want).fold(0f64, |m, (a, b)| m.max((a - b).abs())) / scale
    }

    /// Output and every input's gradient of `f` on fresh leaves, for a loss that weighs each
    /// output element differently.
    /// (`W`: the weight's rank, 4 for a convolution, 1 for group norm.)
    fn run<const W: usize>(
        f: fn(Tensor<4>, Tensor<W>, Tensor<1>) -> Tensor<4>,
        x: &Tensor<4>,
        w: &Tensor<W>,
        b: &Tensor<1>,
        weights: &Tensor<4>,
    ) -> Vec<Vec<f64>> {
        let (x, w, b) = (x.clone().autodiff().require_grad(), w.clone().autodiff().require_grad(), b.clone().autodiff().require_grad());
        let y = f(x.clone(), w.clone(), b.clone());
        let grads = (y.clone() * weights.clone()).sum().backward();
        vec![host(y.without_autodiff()), host(x.grad(&grads).unwrap()), host(w.grad(&grads).unwrap()), host(b.grad(&grads).unwrap())]
    }

    #[test]
    fn group_norm_matches_its_composition_forward_and_backward() {
        let dev = Device::flex();
        // In f64 the composition's own gradient is off by about 1e-8 relative (measured against the
        // kernel, which group_norm.rs checks against finite differences of itself).
        for (dtype, tol) in [(DType::F32, 2e-5), (DType::F64, 1e-7)] {
            for silu in [false, true] {
                let x = random([2, 6, 5, 3], dtype, &dev).mul_scalar(3.0).add_scalar(1.5);
                let w = random([6], dtype, &dev);
                let b = random([6], dtype, &dev);
                let r = random([2, 6, 5, 3], dtype, &dev);
                let f = if silu { |x, w, b| group_norm(x, w, b, 3, 1e-5, true) } else { |x, w, b| group_norm(x, w, b, 3, 1e-5, false) };
                let g = if silu {
                    |x, w, b| group_norm_composed(x, w, b, 3, 1e-5, true)
                } else {
                    |x, w, b| group_norm_composed(x, w, b, 3, 1e-5, false)
                };
                let fused = run(f, &x, &w, &b, &r);
                let composed = run(g, &x, &w, &b, &r);
                for (name, (a, c)) in ["output", "d input", "d weight", "d bias"].iter().zip(fused.iter().zip(&composed)) {
                    let e = rel(a, c);
                    assert!(e <= tol, "{dtype:?} silu {silu} {name}: {e:e}");
                }
            }
        }
    }

    #[test]
    fn attention_matches_its_composition_forward_and_backward() {
        let dev = Device::flex();
        // Self-attention longer than a block, cross-attention to few keys, and causal.
        for (n, m, causal) in [(150, 150, false), (9, 5, false), (12, 12, true)] {
            for (dtype, tol) in [(DType::F32, 2e-5), (DType::F64, 1e-11)] {
                let (heads, d) = (3, 4);
                let q = random([2, n, heads * d], dtype, &dev);
                let k = random([2, m, heads * d], dtype, &dev);
                let v = random([2, m, heads * d], dtype, &dev);
                let r = random([2, n, heads * d], dtype, &dev);
                let grads = |f: fn(Tensor<3>, Tensor<3>, Tensor<3>, usize, bool) -> Tensor<3>| {
                    let (q, k, v) =
                        (q.clone().autodiff().require_grad(), k.clone().autodiff().require_grad(), v.clone().autodiff().require_grad());
                    let y = f(q.clone(), k.clone(), v.clone(), heads, causal);
                    let g = (y.clone() * r.clone()).sum().backward();
                    vec![host(y.without_autodiff()), host(q.grad(&g).unwrap()), host(k.grad(&g).unwrap()), host(v.grad(&g).unwrap())]
                };
                let (fused, composed) = (grads(attention), grads(attention_composed));
                for (name, (a, c)) in ["output", "d q", "d k", "d v"].iter().zip(fused.iter().zip(&composed)) {
                    let e = rel(a, c);
                    assert!(e <= tol, "{n}x{m} causal {causal} {dtype:?} {name}: {e:e}");
                }
                let plain = host(attention(q.clone(), k.clone(), v.clone(), heads, causal));
                assert!(rel(&plain, &composed[0]) <= tol, "no graph");
            }
        }
    }

    #[test]
    fn blocked_attention_matches_the_composition_forward_and_backward() {
        let dev = Device::flex();
        // Blocks that divide the rows, that do not, one row each, and all rows in one; causal too.
        for (n, m, causal, rows) in [(150, 150, false, 50), (150, 150, false, 64), (9, 5, false, 1), (12, 12, true, 5), (12, 12, true, 12)]
        {
            for (dtype, tol) in [(DType::F32, 2e-5), (DType::F64, 1e-11)] {
                let heads = 3;
                let q = random([2, n, 12], dtype, &dev);
                let k = random([2, m, 12], dtype, &dev);
                let v = random([2, m, 12], dtype, &dev);
                let r = random([2, n, 12], dtype, &dev);
                let (qg, kg, vg) =
                    (q.clone().autodiff().require_grad(), k.clone().autodiff().require_grad(), v.clone().autodiff().require_grad());
                let y = attention_composed(qg.clone(), kg.clone(), vg.clone(), heads, causal);
                let g = (y.clone() * r.clone()).sum().backward();
                let want = [y.without_autodiff(), qg.grad(&g).unwrap(), kg.grad(&g).unwrap(), vg.grad(&g).unwrap()];
                let (out, lse) = blocked_attention::forward(q.clone(), k.clone(), v.clone(), heads, causal, rows);
                assert_eq!(lse.dims(), [2, heads, n]);
                let (dq, dk, dv) = blocked_attention::backward(q, k, v, out.clone(), lse, r, heads, causal, rows);
                for (name, (a, c)) in ["output", "d q", "d k", "d v"].iter().zip([out, dq, dk, dv].into_iter().zip(want.iter().cloned())) {
                    let e = rel(&host(a), &host(c));
                    assert!(e <= tol, "{n}x{m} causal {causal} rows {rows} {dtype:?} {name}: {e:e}");
                }
            }
        }
    }

    #[test]
    fn conv3x3_matches_conv2d_forward_and_backward() {
        let dev = Device::flex();
        for (dtype, tol) in [(DType::F32, 1e-5), (DType::F64, 1e-12)] {
            let x = random([2, 5, 7, 6], dtype, &dev);
            let w = random([4, 5, 3, 3], dtype, &dev);
            let b = random([4], dtype, &dev);
            let r = random([2, 4, 7, 6], dtype, &dev);
            let fused = run(conv3x3, &x, &w, &b, &r);
            let composed = run(conv3x3_composed, &x, &w, &b, &r);
            for (name, (a, c)) in ["output", "d input", "d weight", "d bias"].iter().zip(fused.iter().zip(&composed)) {
                let e = rel(a, c);
                assert!(e <= tol, "{dtype:?} {name}: {e:e}");
            }
            // Without a graph, and with frozen weights (only the input tracked).
            assert!(rel(&host(conv3x3(x.clone(), w.clone(), b.clone())), &composed[0]) <= tol);
            let xg = x.clone().autodiff().require_grad();
            let grads = (conv3x3(xg.clone(), w.clone(), b.clone()) * r.clone()).sum().backward();
            assert!(rel(&host(xg.grad(&grads).unwrap()), &composed[1]) <= tol);
        }
    }
}
