//! The kernels under autodiff: each forward registers a backward step that calls the inner
//! backend's backward kernel, and only the gradients of tracked inputs are kept.
use super::conv3x3::Needed;
use super::{AttentionBackward, AttentionOps, KernelBackward, KernelOps};
use burn::backend::autodiff::Autodiff;
use burn::backend::autodiff::checkpoint::{base::Checkpointer, strategy::CheckpointStrategy};
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::tensor::FloatTensor;

impl<B: KernelOps + KernelBackward, C: CheckpointStrategy> KernelOps for Autodiff<B, C> {
    fn conv3x3(x: FloatTensor<Self>, weight: FloatTensor<Self>, bias: FloatTensor<Self>) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct Conv3x3Backward;

        impl<B: KernelBackward> Backward<B, 3> for Conv3x3Backward {
            type State = (FloatTensor<B>, FloatTensor<B>);

            fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
                let [node_x, node_w, node_b] = ops.parents;
                let grad = grads.consume::<B>(&ops.node);
                let (x, w) = ops.state;
                let needed = Needed { input: node_x.is_some(), weight: node_w.is_some(), bias: node_b.is_some() };
                let (dx, dw, db) = B::conv3x3_backward(x, w, grad, needed);
                for (node, g) in [(node_x, dx), (node_w, dw), (node_b, db)] {
                    if let (Some(node), Some(g)) = (node, g) {
                        grads.register::<B>(node.id, g);
                    }
                }
            }
        }

        let (x, x_node) = x.into_parts();
        let (w, w_node) = weight.into_parts();
        let (b, b_node) = bias.into_parts();
        match Conv3x3Backward.prepare::<C>([x_node, w_node, b_node]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let out = B::conv3x3(x.clone(), w.clone(), b);
                prep.finish((x, w), out)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::conv3x3(x, w, b)),
        }
    }

    fn group_norm(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        groups: usize,
        eps: f64,
        silu: bool,
    ) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct GroupNormBackward;

        impl<B: KernelBackward> Backward<B, 3> for GroupNormBackward {
            type State = (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>, usize, f64, bool);

            fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
                let [node_x, node_w, node_b] = ops.parents;
                let grad = grads.consume::<B>(&ops.node);
                let (x, w, b, groups, eps, silu) = ops.state;
                let (dx, dw, db) = B::group_norm_backward(x, w, b, groups, eps, silu, grad);
                for (node, g) in [(node_x, dx), (node_w, dw), (node_b, db)] {
                    if let Some(node) = node {
                        grads.register::<B>(node.id, g);
                    }
                }
            }
        }

        let (x, x_node) = x.into_parts();
        let (w, w_node) = weight.into_parts();
        let (b, b_node) = bias.into_parts();
        // The state keeps the input; the statistics are recomputed in the backward pass.
        match GroupNormBackward.prepare::<C>([x_node, w_node, b_node]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let out = B::group_norm(x.clone(), w.clone(), b.clone(), groups, eps, silu);
                prep.finish((x, w, b, groups, eps, silu), out)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::group_norm(x, w, b, groups, eps, silu)),
        }
    }
}

impl<B: AttentionOps + AttentionBackward, C: CheckpointStrategy> AttentionOps for Autodiff<B, C> {
    fn attention(q: FloatTensor<Self>, k: FloatTensor<Self>, v: FloatTensor<Self>, heads: usize, causal: bool) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct AttentionBackwardStep;

        impl<B: AttentionBackward> Backward<B, 3> for AttentionBackwardStep {
            type State = (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>, FloatTensor<B>, FloatTensor<B>, usize, bool);

            fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
                let [node_q, node_k, node_v] = ops.parents;
                let grad = grads.consume::<B>(&ops.node);
                let (q, k, v, out, lse, heads, causal) = ops.state;
                let (dq, dk, dv) = B::attention_backward(q, k, v, out, lse, grad, heads, causal);
                for (node, g) in [(node_q, dq), (node_k, dk), (node_v, dv)] {
                    if let Some(node) = node {
                        grads.register::<B>(node.id, g);
                    }
                }
            }
        }

        let (q, q_node) = q.into_parts();
        let (k, k_node) = k.into_parts();
        let (v, v_node) = v.into_parts();
        // The state keeps the inputs, the output and one log-sum-exp per query row: no scores.
        match AttentionBackwardStep.prepare::<C>([q_node, k_node, v_node]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let (out, lse) = B::attention_with_lse(q.clone(), k.clone(), v.clone(), heads, causal);
                prep.finish((q, k, v, out.clone(), lse, heads, causal), out)
            }
            OpsKind::UnTracked(prep) => prep.finish(<B as AttentionOps>::attention(q, k, v, heads, causal)),
        }
    }
}
