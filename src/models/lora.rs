//! LoRA branches as the layers hold them: `y = W x + w · s · B (A x)` with `s = alpha / rank`
//! and a run-time weight `w` shared by every branch of one adapter, so an adapter can be
//! switched off (or mixed with others) without rebuilding the model. Reading, creating and
//! saving adapters is `crate::adapters`' job.
use burn::tensor::Tensor;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

/// The run-time weight of one adapter, shared by all of its branches.
#[derive(Clone, Debug)]
pub struct Gate(Arc<AtomicU32>);

impl Gate {
    pub fn new(weight: f32) -> Self {
        Self(Arc::new(AtomicU32::new(weight.to_bits())))
    }
    pub fn get(&self) -> f32 {
        f32::from_bits(self.0.load(Ordering::Relaxed))
    }
    pub fn set(&self, weight: f32) {
        self.0.store(weight.to_bits(), Ordering::Relaxed)
    }
    /// Whether both are the gate of one adapter.
    pub fn same(&self, other: &Gate) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }

    /// Switches the adapter off until the guard is dropped (also when a panic unwinds), then
    /// restores its weight.
    pub fn switched_off(&self) -> GateOff<'_> {
        let weight = self.get();
        self.set(0.0);
        GateOff { gate: self, weight }
    }
}

/// The adapter of a [`Gate`] switched off for a scope; see [`Gate::switched_off`].
pub struct GateOff<'a> {
    gate: &'a Gate,
    weight: f32,
}

impl Drop for GateOff<'_> {
    fn drop(&mut self) {
        self.gate.set(self.weight)
    }
}

/// One low-rank branch on one layer. `down` is `A` stored as `[in, rank]`, `up` is `B` stored as
/// `[rank, out]` (the transposes of the PyTorch layouts), so the branch is `x A^T B^T`.
pub struct LoraBranch {
    pub down: Tensor<2>,
    pub up: Tensor<2>,
    /// alpha / rank
    pub scale: f32,
    pub gate: Gate,
}

impl LoraBranch {
    pub fn rank(&self) -> usize {
        self.down.dims()[1]
    }

    /// The branch's contribution for input `x [..., in]`, or `None` while switched off.
    pub fn delta<const D: usize>(&self, x: Tensor<D>) -> Option<Tensor<D>> {
        let w = self.gate.get();
        if w == 0.0 {
            return None;
        }
        // The branch computes in its own (float32) type when the model runs in half precision.
        let dtype = x.dtype();
        let h = burn::tensor::module::linear(x.cast(self.down.dtype()), self.down.clone(), None);
        let h = burn::tensor::module::linear(h, self.up.clone(), None);
        Some(h.mul_scalar(w * self.scale).cast(dtype))
    }
}
