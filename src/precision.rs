//! `--precision`: the element type of the frozen models' weights and activations, as kohya's and
//! diffusers' mixed precision: the text encoder, UNet and VAE compute in half precision while
//! everything that is trained or summed stays float32.
//!
//! Where float32 is kept, and why:
//! - the LoRA branches: their weights, their input (cast up) and their output (cast back down), so
//!   that the optimiser's updates of 1e-4 are not lost to half precision's 3 digits;
//! - normalisation statistics (group norm, layer norm) and the attention softmax of the
//!   composed path: a mean over 160 000 activations overflows float16's 65504;
//! - every model's input and output: a model takes float32 and returns float32, so the
//!   schedulers, the loss and the optimiser never see half precision;
//! - on the wgpu backends, the convolutions (`models::layers::conv_accurately`): burn's kernels
//!   there sum half precision in half precision.
//!
//! fp16 training also scales its loss (`training::loss_scale`); bf16 needs no scaling.
use burn::tensor::{DType, FloatDType, Tensor};
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    #[default]
    #[value(alias = "float32", alias = "float")]
    Fp32,
    #[value(alias = "float16", alias = "half")]
    Fp16,
    #[value(alias = "bfloat16")]
    Bf16,
}

impl Precision {
    pub fn dtype(self) -> FloatDType {
        match self {
            Precision::Fp32 => FloatDType::F32,
            Precision::Fp16 => FloatDType::F16,
            Precision::Bf16 => FloatDType::BF16,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Precision::Fp32 => "fp32",
            Precision::Fp16 => "fp16",
            Precision::Bf16 => "bf16",
        }
    }

    pub fn is_fp32(&self) -> bool {
        *self == Precision::Fp32
    }

    pub fn is_half(self) -> bool {
        self != Precision::Fp32
    }
}

/// Whether `dtype` is a half-precision type (16 bits).
pub fn is_half(dtype: DType) -> bool {
    matches!(dtype, DType::F16 | DType::BF16)
}

/// `t` in float32 when it is in half precision, else unchanged (f64 stays f64 in the gradient
/// checks).
pub fn widen<const D: usize>(t: Tensor<D>) -> Tensor<D> {
    if is_half(t.dtype()) { t.cast(FloatDType::F32) } else { t }
}

/// `f` computed in float32 when `x` is in half precision, its result cast back to `x`'s type.
pub fn in_f32<const D: usize>(x: Tensor<D>, f: impl FnOnce(Tensor<D>) -> Tensor<D>) -> Tensor<D> {
    let dtype = x.dtype();
    if is_half(dtype) { f(x.cast(FloatDType::F32)).cast(dtype) } else { f(x) }
}
