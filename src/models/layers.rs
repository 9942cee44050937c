//! The building blocks every model here shares: linear and convolution layers (with LoRA
//! branches), normalisation, activations and attention. Written once, used by CLIP, the UNet and
//! the VAE.
//!
//! catlora has its own layers rather than burn's `Module` derive and `nn` layers because
//! training needs three things those do not give together: LoRA on 1x1 convolutions as well as
//! linear layers (SD 1.x's `proj_in` / `proj_out`), branches switched on and off at run time
//! through a shared [`Gate`](super::lora::Gate) (CAT's adapter-off pass runs the same weights),
//! and parameters that a host-side optimiser replaces as plain tensors each step, which keeps a
//! resumed run byte-identical to an uninterrupted one. Each layer keeps the path it was loaded
//! from ([`super::path`]); a model's [`Walk`] hands out its layers in one fixed order, and
//! parameter visits and LoRA targets are both read off that walk.
use super::lora::LoraBranch;
pub use super::path::join;
use super::path::{Param, Vs};
use crate::precision::{Precision, in_f32, is_half, widen};
use anyhow::Result;
use burn::tensor::activation;
use burn::tensor::module::conv2d;
use burn::tensor::ops::ConvOptions;
use burn::tensor::{Device, FloatDType, Tensor};

/// Visits every parameter tensor of a model by its diffusers name, so tests and tools can mark
/// them trainable, read their gradients or perturb them.
pub trait ParamVisitor {
    fn visit1(&mut self, name: &str, t: &mut Tensor<1>);
    fn visit2(&mut self, name: &str, t: &mut Tensor<2>);
    fn visit4(&mut self, name: &str, t: &mut Tensor<4>);
}

/// One layer, or one parameter outside any layer, as a model's walk hands it out.
pub enum Layer<'a> {
    /// The flag: LoRA branches may sit on it (the projections of attention, feed-forward and
    /// `proj_in` / `proj_out` in the UNet's transformers; attention and MLP in CLIP's layers).
    Linear(&'a mut Linear, bool),
    Conv(&'a mut Conv2d, bool),
    GroupNorm(&'a mut GroupNorm),
    LayerNorm(&'a mut LayerNorm),
    P1(&'a mut Param<1>),
    P2(&'a mut Param<2>),
    P4(&'a mut Param<4>),
}

impl Layer<'_> {
    /// Visits the layer's parameter tensors.
    pub fn visit(self, v: &mut dyn ParamVisitor) {
        match self {
            Layer::Linear(l, _) => l.visit(v),
            Layer::Conv(c, _) => c.visit(v),
            Layer::GroupNorm(n) => n.visit(v),
            Layer::LayerNorm(n) => n.visit(v),
            Layer::P1(p) => v.visit1(&p.name, &mut p.value),
            Layer::P2(p) => v.visit2(&p.name, &mut p.value),
            Layer::P4(p) => v.visit4(&p.name, &mut p.value),
        }
    }
}

/// A model's one traversal: every layer, always in the same order (a parameter store keeps its
/// tensors in this order). Parameter visits and LoRA targets are read off it.
pub trait Walk {
    fn walk<'a>(&'a mut self, f: &mut dyn FnMut(Layer<'a>));

    /// Every parameter tensor, by its name in the weights file.
    fn visit(&mut self, v: &mut dyn ParamVisitor) {
        self.walk(&mut |layer| layer.visit(v))
    }

    /// Casts every parameter (not the LoRA branches, which keep their own type) to `precision`'s
    /// type (nothing to do for fp32), refusing one the backend behind `device` cannot compute.
    fn set_precision(&mut self, precision: Precision, device: &Device) -> Result<()> {
        if precision.is_half() {
            crate::kernels::check_dtype(device, precision.dtype())?;
            self.visit(&mut CastAll(precision.dtype()));
        }
        Ok(())
    }

    /// Every layer that can take a LoRA branch, by module path.
    fn lora_targets(&mut self) -> Vec<(String, LoraTarget<'_>)> {
        adaptable(self)
    }
}

struct CastAll(FloatDType);

impl ParamVisitor for CastAll {
    fn visit1(&mut self, _: &str, t: &mut Tensor<1>) {
        *t = t.clone().cast(self.0);
    }
    fn visit2(&mut self, _: &str, t: &mut Tensor<2>) {
        *t = t.clone().cast(self.0);
    }
    fn visit4(&mut self, _: &str, t: &mut Tensor<4>) {
        *t = t.clone().cast(self.0);
    }
}

/// The layers of `model`'s walk that can take a LoRA branch, by the path they were loaded from.
pub fn adaptable<W: Walk + ?Sized>(model: &mut W) -> Vec<(String, LoraTarget<'_>)> {
    let mut out = Vec::new();
    model.walk(&mut |layer| match layer {
        Layer::Linear(l, true) => out.push((l.path.clone(), LoraTarget::Linear(l))),
        Layer::Conv(c, true) => out.push((c.path.clone(), LoraTarget::Conv(c))),
        _ => {}
    });
    out
}

/// `y = x W + b`, plus the active LoRA branches. The weight is kept as `[in, out]`.
pub struct Linear {
    pub weight: Tensor<2>,
    pub bias: Option<Tensor<1>>,
    pub in_features: usize,
    pub out_features: usize,
    pub lora: Vec<LoraBranch>,
    /// The module path, e.g. `down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q`.
    pub path: String,
}

impl Linear {
    pub fn load(vs: &Vs, in_f: usize, out_f: usize, bias: bool) -> Result<Self> {
        let weight = vs.linear_weight("weight", out_f, in_f)?;
        let bias = if bias { Some(vs.tensor("bias", [out_f])?) } else { None };
        Ok(Self { weight, bias, in_features: in_f, out_features: out_f, lora: Vec::new(), path: vs.path().into() })
    }

    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let mut y = burn::tensor::module::linear(x.clone(), self.weight.clone(), self.bias.clone());
        for branch in &self.lora {
            if let Some(delta) = branch.delta(x.clone()) {
                y = y + delta;
            }
        }
        y
    }

    pub fn visit(&mut self, v: &mut dyn ParamVisitor) {
        v.visit2(&join(&self.path, "weight"), &mut self.weight);
        if let Some(b) = &mut self.bias {
            v.visit1(&join(&self.path, "bias"), b);
        }
    }
}

/// A 2-D convolution with PyTorch's weight layout `[out, in, kh, kw]` and symmetric padding.
/// A 1x1 convolution can carry LoRA branches (SD 1.x's `proj_in` / `proj_out`).
pub struct Conv2d {
    pub weight: Tensor<4>,
    pub bias: Option<Tensor<1>>,
    pub stride: usize,
    pub padding: usize,
    pub in_channels: usize,
    pub out_channels: usize,
    pub kernel: usize,
    pub lora: Vec<LoraBranch>,
    pub path: String,
}

impl Conv2d {
    pub fn load(vs: &Vs, cin: usize, cout: usize, kernel: usize, stride: usize, padding: usize) -> Result<Self> {
        let weight = vs.tensor("weight", [cout, cin, kernel, kernel])?;
        let bias = Some(vs.tensor("bias", [cout])?);
        Ok(Self { weight, bias, stride, padding, in_channels: cin, out_channels: cout, kernel, lora: Vec::new(), path: vs.path().into() })
    }

    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let mut y = conv_accurately(x.clone(), self.weight.clone(), self.bias.clone(), |x, w, b| match b {
            Some(b) if self.kernel == 3 && self.stride == 1 && self.padding == 1 => crate::kernels::conv3x3(x, w, b),
            b => conv2d(x, w, b, ConvOptions::new([self.stride; 2], [self.padding; 2], [1, 1], 1)),
        });
        if !self.lora.is_empty() {
            // A 1x1 convolution is a linear map over channels: apply the branches channels-last.
            let [b, c, h, wd] = x.dims();
            let flat = x.permute([0, 2, 3, 1]).reshape([b, h * wd, c]);
            for branch in &self.lora {
                if let Some(delta) = branch.delta(flat.clone()) {
                    let d = delta.reshape([b, h, wd, self.out_channels]).permute([0, 3, 1, 2]);
                    y = y + d;
                }
            }
        }
        y
    }

    pub fn visit(&mut self, v: &mut dyn ParamVisitor) {
        v.visit4(&join(&self.path, "weight"), &mut self.weight);
        if let Some(b) = &mut self.bias {
            v.visit1(&join(&self.path, "bias"), b);
        }
    }
}

/// `conv(x, weight, bias)`, in float32 where the backend's convolution would accumulate half
/// precision in half precision: burn's wgpu kernels do (a 320-channel 3x3 convolution in fp16 is
/// 1.8e-2 off float32's there, 8.7e-4 on flex; measured on lavapipe), flex and LibTorch do not.
pub fn conv_accurately(
    x: Tensor<4>,
    weight: Tensor<4>,
    bias: Option<Tensor<1>>,
    conv: impl FnOnce(Tensor<4>, Tensor<4>, Option<Tensor<1>>) -> Tensor<4>,
) -> Tensor<4> {
    if is_half(x.dtype()) && !crate::kernels::full_half_support(&x.device()) {
        in_f32(x, |x| conv(x, widen(weight), bias.map(widen)))
    } else {
        conv(x, weight, bias)
    }
}

/// A layer that can carry LoRA branches: a Linear, or a 1x1 convolution.
pub enum LoraTarget<'a> {
    Linear(&'a mut Linear),
    Conv(&'a mut Conv2d),
}

impl LoraTarget<'_> {
    pub fn branches(&mut self) -> &mut Vec<LoraBranch> {
        match self {
            LoraTarget::Linear(l) => &mut l.lora,
            LoraTarget::Conv(c) => &mut c.lora,
        }
    }

    /// `(in_features, out_features)`; `None` for a convolution that is not 1x1.
    pub fn features(&self) -> Option<(usize, usize)> {
        match self {
            LoraTarget::Linear(l) => Some((l.in_features, l.out_features)),
            LoraTarget::Conv(c) if c.kernel == 1 => Some((c.in_channels, c.out_channels)),
            LoraTarget::Conv(_) => None,
        }
    }

    pub fn is_conv(&self) -> bool {
        matches!(self, LoraTarget::Conv(_))
    }

    pub fn device(&self) -> burn::tensor::Device {
        match self {
            LoraTarget::Linear(l) => l.weight.device(),
            LoraTarget::Conv(c) => c.weight.device(),
        }
    }
}

/// Group normalisation over `[B, C, H, W]` with a per-channel affine transform.
pub struct GroupNorm {
    pub weight: Tensor<1>,
    pub bias: Tensor<1>,
    pub groups: usize,
    pub eps: f64,
    pub path: String,
}

impl GroupNorm {
    pub fn load(vs: &Vs, groups: usize, channels: usize, eps: f64) -> Result<Self> {
        anyhow::ensure!(
            channels.is_multiple_of(groups),
            "{}: {channels} channels do not divide into {groups} normalisation groups",
            vs.path()
        );
        Ok(Self { weight: vs.tensor("weight", [channels])?, bias: vs.tensor("bias", [channels])?, groups, eps, path: vs.path().into() })
    }

    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        self.apply(x, false)
    }

    /// `silu(self.forward(x))`, fused.
    pub fn forward_silu(&self, x: Tensor<4>) -> Tensor<4> {
        self.apply(x, true)
    }

    /// In float32 for a half-precision model, as PyTorch's autocast runs `group_norm`.
    fn apply(&self, x: Tensor<4>, silu: bool) -> Tensor<4> {
        in_f32(x, |x| crate::kernels::group_norm(x, widen(self.weight.clone()), widen(self.bias.clone()), self.groups, self.eps, silu))
    }

    pub fn visit(&mut self, v: &mut dyn ParamVisitor) {
        v.visit1(&join(&self.path, "weight"), &mut self.weight);
        v.visit1(&join(&self.path, "bias"), &mut self.bias);
    }
}

/// Layer normalisation over the last dimension.
pub struct LayerNorm {
    pub weight: Tensor<1>,
    pub bias: Tensor<1>,
    pub eps: f64,
    pub path: String,
}

impl LayerNorm {
    pub fn load(vs: &Vs, dim: usize, eps: f64) -> Result<Self> {
        Ok(Self { weight: vs.tensor("weight", [dim])?, bias: vs.tensor("bias", [dim])?, eps, path: vs.path().into() })
    }

    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        // Spelled out rather than burn's `layer_norm`: with flex's kernel for it, a zero adapter's
        // batched passes differed from the adapter-off pass (preservation terms 6e-14 instead of
        // 0), so its rows depend on the batch around them; these operations' rows do not.
        in_f32(x, |x| {
            let (var, mean) = x.clone().var_mean_bias(D - 1);
            let normed = (x - mean).div(var.add_scalar(self.eps).sqrt());
            normed * widen(self.weight.clone()).unsqueeze() + widen(self.bias.clone()).unsqueeze()
        })
    }

    pub fn visit(&mut self, v: &mut dyn ParamVisitor) {
        v.visit1(&join(&self.path, "weight"), &mut self.weight);
        v.visit1(&join(&self.path, "bias"), &mut self.bias);
    }
}

pub fn silu<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    activation::silu(x)
}

/// CLIP's `quick_gelu`: `x * sigmoid(1.702 x)`.
pub fn quick_gelu<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    x.clone() * activation::sigmoid(x.mul_scalar(1.702))
}

/// Exact (erf) GELU, as PyTorch's default.
pub fn gelu<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    activation::gelu(x)
}

/// Multi-head scaled dot-product attention on `[B, N, heads * dim]` inputs.
pub fn multi_head_attention(q: Tensor<3>, k: Tensor<3>, v: Tensor<3>, heads: usize, causal: bool) -> Tensor<3> {
    crate::kernels::attention(q, k, v, heads, causal)
}

/// Nearest-neighbour 2x upsampling, as `F.interpolate(scale_factor=2, mode="nearest")`.
pub fn upsample_nearest_2x(x: Tensor<4>) -> Tensor<4> {
    let [b, c, h, w] = x.dims();
    x.reshape([b, c, h, 1, w, 1]).expand([b, c, h, 2, w, 2]).reshape([b, c, h * 2, w * 2])
}

/// Multi-head attention with separate q / k / v / out projections. Self-attention when no
/// context is given, cross-attention otherwise.
pub struct Attention {
    pub to_q: Linear,
    pub to_k: Linear,
    pub to_v: Linear,
    pub to_out: Linear,
    pub heads: usize,
}

impl Attention {
    /// The diffusers attention layout: `to_q`, `to_k`, `to_v` (no bias unless `qkv_bias`) and
    /// `to_out.0` (with bias).
    pub fn load_diffusers(vs: &Vs, dim: usize, context_dim: usize, heads: usize, qkv_bias: bool) -> Result<Self> {
        Ok(Self {
            to_q: Linear::load(&vs.pp("to_q"), dim, dim, qkv_bias)?,
            to_k: Linear::load(&vs.pp("to_k"), context_dim, dim, qkv_bias)?,
            to_v: Linear::load(&vs.pp("to_v"), context_dim, dim, qkv_bias)?,
            to_out: Linear::load(&vs.pp("to_out.0"), dim, dim, true)?,
            heads,
        })
    }

    pub fn forward(&self, x: Tensor<3>, context: Option<Tensor<3>>, causal: bool) -> Tensor<3> {
        let ctx = context.unwrap_or_else(|| x.clone());
        let q = self.to_q.forward(x);
        let k = self.to_k.forward(ctx.clone());
        let v = self.to_v.forward(ctx);
        self.to_out.forward(multi_head_attention(q, k, v, self.heads, causal))
    }

    /// The four projections; `adaptable`: whether LoRA branches may sit on them.
    pub fn walk<'a>(&'a mut self, adaptable: bool, f: &mut dyn FnMut(Layer<'a>)) {
        for lin in [&mut self.to_q, &mut self.to_k, &mut self.to_v, &mut self.to_out] {
            f(Layer::Linear(lin, adaptable));
        }
    }
}
