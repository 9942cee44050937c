//! Where each tensor sits in a weights file. A model is loaded through a [`Vs`] (candle's
//! "var store" pattern): `vs.pp("down_blocks").pp(1)` names a sub-module, `vs.tensor("weight",
//! ..)` one of its tensors. Each layer keeps the path it was loaded from, so a name is written
//! once, where the layer is built; parameter visits, LoRA module names and gradient checks read
//! it back from the layer.
use super::weights::Weights;
use anyhow::Result;
use burn::tensor::{Device, Tensor};
use std::fmt::Display;

/// `prefix.name`, or `name` at the root.
pub fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() { name.to_string() } else { format!("{prefix}.{name}") }
}

/// The weights and the module path below which the next layer loads.
#[derive(Clone)]
pub struct Vs<'w> {
    weights: &'w Weights,
    path: String,
}

impl<'w> Vs<'w> {
    pub fn root(weights: &'w Weights) -> Self {
        Self { weights, path: String::new() }
    }

    /// The sub-module `part` (a name or an index).
    pub fn pp(&self, part: impl Display) -> Self {
        Self { weights: self.weights, path: join(&self.path, &part.to_string()) }
    }

    pub fn path(&self) -> &str {
        &self.path
    }

    /// The full name of tensor `leaf` of this module.
    pub fn name(&self, leaf: &str) -> String {
        join(&self.path, leaf)
    }

    pub fn has(&self, leaf: &str) -> bool {
        self.weights.has(&self.name(leaf))
    }

    pub fn device(&self) -> &Device {
        self.weights.device()
    }

    pub fn tensor<const D: usize>(&self, leaf: &str, shape: [usize; D]) -> Result<Tensor<D>> {
        self.weights.tensor(&self.name(leaf), shape)
    }

    /// A PyTorch `[out, in]` linear weight, kept as `[in, out]`.
    pub fn linear_weight(&self, leaf: &str, out_f: usize, in_f: usize) -> Result<Tensor<2>> {
        self.weights.linear_weight(&self.name(leaf), out_f, in_f)
    }

    /// A parameter outside any layer (an embedding table, say), with its name.
    pub fn param<const D: usize>(&self, leaf: &str, shape: [usize; D]) -> Result<Param<D>> {
        Ok(Param { name: self.name(leaf), value: self.tensor(leaf, shape)? })
    }
}

/// A parameter tensor that belongs to no layer, under its full name.
pub struct Param<const D: usize> {
    pub name: String,
    pub value: Tensor<D>,
}
