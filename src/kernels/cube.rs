//! Attention on burn's cubecl backend (the `wgpu` and `vulkan` devices): without a graph, burn's
//! own fused attention; under autodiff, [`blocked_attention`]'s passes, so that the graph keeps
//! the output and one log-sum-exp per query row instead of the score matrices.
use super::{AttentionBackward, AttentionOps, attention_composed, blocked_attention};
use burn::backend::Cube;
use burn::backend::tensor::FloatTensor;
use burn::tensor::Tensor;

fn tensor<const D: usize>(x: FloatTensor<Cube>) -> Tensor<D> {
    Tensor::from_primitive::<Cube>(x)
}

fn primitive<const D: usize>(x: Tensor<D>) -> FloatTensor<Cube> {
    // Tensors built from cubecl primitives by cubecl operations stay cubecl float tensors.
    x.try_into_primitive::<Cube>().expect("a cubecl float tensor")
}

/// The block size for `q [B, N, ·]` and `k [B, M, ·]`.
fn rows(q: &Tensor<3>, k: &Tensor<3>, heads: usize) -> usize {
    let ([b, n, _], m) = (q.dims(), k.dims()[1]);
    blocked_attention::block_rows(b, heads, n, m)
}

impl AttentionOps for Cube {
    fn attention(q: FloatTensor<Self>, k: FloatTensor<Self>, v: FloatTensor<Self>, heads: usize, causal: bool) -> FloatTensor<Self> {
        primitive(attention_composed(tensor(q), tensor(k), tensor(v), heads, causal))
    }
}

impl AttentionBackward for Cube {
    fn attention_with_lse(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        heads: usize,
        causal: bool,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let (q, k, v) = (tensor(q), tensor(k), tensor(v));
        let rows = rows(&q, &k, heads);
        let (out, lse) = blocked_attention::forward(q, k, v, heads, causal, rows);
        (primitive(out), primitive(lse))
    }

    fn attention_backward(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        out: FloatTensor<Self>,
        lse: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        heads: usize,
        causal: bool,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        let (q, k) = (tensor(q), tensor(k));
        let rows = rows(&q, &k, heads);
        let (dq, dk, dv) = blocked_attention::backward(q, k, tensor(v), tensor(out), tensor(lse), tensor(grad), heads, causal, rows);
        (primitive(dq), primitive(dk), primitive(dv))
    }
}
