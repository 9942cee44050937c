//! Attention on burn's cubecl backend (the `wgpu` and `vulkan` devices): [`blocked_attention`]'s
//! passes, with a graph or without, so that no `[B, heads, N, M]` score matrix is ever whole and
//! the graph keeps the output and one log-sum-exp per query row.
use super::{AttentionBackward, AttentionOps, blocked_attention};
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
    /// Without a graph too: burn's own attention on cubecl takes its fallback without the
    /// `autotune` feature, which materialises every `[B, heads, N, M]` score matrix (SD 1.5 at
    /// 768 px with guidance: 5.4 GB per layer in float32); the blocks keep one block's.
    fn attention(q: FloatTensor<Self>, k: FloatTensor<Self>, v: FloatTensor<Self>, heads: usize, causal: bool) -> FloatTensor<Self> {
        Self::attention_with_lse(q, k, v, heads, causal).0
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
