//! The kernels on flex tensors: contiguous f32 / f64 data in, fresh tensors out. Other element
//! types (half precision) take burn's own operations.
use super::conv3x3::Needed;
use super::group_norm::Dims;
use super::{AttentionBackward, AttentionOps, KernelBackward, KernelOps, Real, attention, conv3x3, group_norm};
use burn::backend::flex::{Flex, FlexTensor};
use burn::backend::ops::{FloatTensorOps, ModuleOps};
use burn::tensor::ops::ConvOptions;
use burn::tensor::{DType, TensorData};

fn data(t: &FlexTensor) -> (FlexTensor, Vec<usize>) {
    let t = t.to_contiguous();
    let shape = t.layout().shape().to_vec();
    (t, shape)
}

fn slice<T: Real>(t: &FlexTensor) -> &[T] {
    t.as_slice::<T>().expect("a contiguous tensor of the kernel's element type")
}

fn tensor<T: Real>(v: Vec<T>, shape: Vec<usize>) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(v, shape))
}

fn options() -> ConvOptions<2> {
    ConvOptions::new([1, 1], [1, 1], [1, 1], 1)
}

fn conv_forward<T: Real>(x: FlexTensor, weight: FlexTensor, bias: FlexTensor) -> FlexTensor {
    let (x, xs) = data(&x);
    let (w, ws) = data(&weight);
    let (b, _) = data(&bias);
    let (n, c, h, wd, o) = (xs[0], xs[1], xs[2], xs[3], ws[0]);
    tensor(conv3x3::forward(slice::<T>(&x), n, c, h, wd, slice::<T>(&w), o, slice::<T>(&b)), vec![n, o, h, wd])
}

type Grads3 = super::OptionalGrads<Flex>;

fn conv_backward<T: Real>(x: FlexTensor, weight: FlexTensor, grad: FlexTensor, needed: Needed) -> Grads3 {
    let (x, xs) = data(&x);
    let (w, ws) = data(&weight);
    let (g, _) = data(&grad);
    let (n, c, h, wd, o) = (xs[0], xs[1], xs[2], xs[3], ws[0]);
    let (dx, dw, db) = conv3x3::backward(slice::<T>(&x), n, c, h, wd, slice::<T>(&w), o, slice::<T>(&g), needed);
    (needed.input.then(|| tensor(dx, xs)), needed.weight.then(|| tensor(dw, ws)), needed.bias.then(|| tensor(db, vec![o])))
}

fn dims(shape: &[usize], groups: usize) -> Dims {
    Dims { n: shape[0], c: shape[1], hw: shape[2..].iter().product(), groups }
}

fn gn_forward<T: Real>(x: FlexTensor, weight: FlexTensor, bias: FlexTensor, groups: usize, eps: f64, silu: bool) -> FlexTensor {
    let (x, xs) = data(&x);
    let (w, _) = data(&weight);
    let (b, _) = data(&bias);
    tensor(group_norm::forward(slice::<T>(&x), dims(&xs, groups), slice::<T>(&w), slice::<T>(&b), eps, silu), xs)
}

#[allow(clippy::too_many_arguments)]
fn gn_backward<T: Real>(
    x: FlexTensor,
    weight: FlexTensor,
    bias: FlexTensor,
    groups: usize,
    eps: f64,
    silu: bool,
    grad: FlexTensor,
) -> (FlexTensor, FlexTensor, FlexTensor) {
    let (x, xs) = data(&x);
    let (w, ws) = data(&weight);
    let (b, _) = data(&bias);
    let (g, _) = data(&grad);
    let (dx, dw, db) = group_norm::backward(slice::<T>(&x), dims(&xs, groups), slice::<T>(&w), slice::<T>(&b), eps, silu, slice::<T>(&g));
    (tensor(dx, xs), tensor(dw, ws.clone()), tensor(db, ws))
}

fn attention_dims(q: &[usize], k: &[usize], heads: usize, causal: bool) -> attention::Dims {
    attention::Dims { b: q[0], n: q[1], m: k[1], heads, d: q[2] / heads, causal }
}

fn attention_forward<T: Real>(q: FlexTensor, k: FlexTensor, v: FlexTensor, heads: usize, causal: bool) -> (FlexTensor, FlexTensor) {
    let (q, qs) = data(&q);
    let (k, ks) = data(&k);
    let (v, _) = data(&v);
    let dims = attention_dims(&qs, &ks, heads, causal);
    let (out, lse) = attention::forward(slice::<T>(&q), slice::<T>(&k), slice::<T>(&v), dims);
    (tensor(out, qs.clone()), tensor(lse, vec![qs[0], heads, qs[1]]))
}

#[allow(clippy::too_many_arguments)]
fn attention_grads<T: Real>(
    q: FlexTensor,
    k: FlexTensor,
    v: FlexTensor,
    out: FlexTensor,
    lse: FlexTensor,
    grad: FlexTensor,
    heads: usize,
    causal: bool,
) -> (FlexTensor, FlexTensor, FlexTensor) {
    let (q, qs) = data(&q);
    let (k, ks) = data(&k);
    let (v, _) = data(&v);
    let (o, _) = data(&out);
    let (l, _) = data(&lse);
    let (g, _) = data(&grad);
    let dims = attention_dims(&qs, &ks, heads, causal);
    let (dq, dk, dv) =
        attention::backward(slice::<T>(&q), slice::<T>(&k), slice::<T>(&v), slice::<T>(&o), slice::<T>(&l), slice::<T>(&g), dims);
    (tensor(dq, qs), tensor(dk, ks.clone()), tensor(dv, ks))
}

/// Runs an f32 kernel on any narrower float type through f32 and casts the results back.
fn via_f32<const N: usize>(inputs: [FlexTensor; N], f: impl FnOnce([FlexTensor; N]) -> Vec<FlexTensor>) -> Vec<FlexTensor> {
    let dtype = inputs[0].dtype();
    let out = f(inputs.map(|t| if t.dtype() == DType::F32 { t } else { Flex::float_cast(t, burn::tensor::FloatDType::F32) }));
    if dtype == DType::F32 { out } else { out.into_iter().map(|t| Flex::float_cast(t, dtype.into())).collect() }
}

impl KernelOps for Flex {
    fn conv3x3(x: FlexTensor, weight: FlexTensor, bias: FlexTensor) -> FlexTensor {
        match x.dtype() {
            DType::F32 => conv_forward::<f32>(x, weight, bias),
            DType::F64 => conv_forward::<f64>(x, weight, bias),
            _ => Flex::conv2d(x, weight, Some(bias), options()),
        }
    }

    fn group_norm(x: FlexTensor, weight: FlexTensor, bias: FlexTensor, groups: usize, eps: f64, silu: bool) -> FlexTensor {
        match x.dtype() {
            DType::F64 => gn_forward::<f64>(x, weight, bias, groups, eps, silu),
            // The statistics are exact in f64 for every narrower type.
            _ => via_f32([x, weight, bias], |[x, w, b]| vec![gn_forward::<f32>(x, w, b, groups, eps, silu)]).remove(0),
        }
    }
}

impl KernelBackward for Flex {
    fn conv3x3_backward(x: FlexTensor, weight: FlexTensor, grad: FlexTensor, needed: Needed) -> Grads3 {
        match x.dtype() {
            DType::F32 => conv_backward::<f32>(x, weight, grad, needed),
            DType::F64 => conv_backward::<f64>(x, weight, grad, needed),
            _ => {
                let o = options();
                let dx = needed.input.then(|| Flex::conv2d_x_backward(x.clone(), weight.clone(), grad.clone(), o.clone()));
                let dw = needed.weight.then(|| Flex::conv2d_weight_backward(x.clone(), weight.clone(), grad.clone(), o));
                let db = needed.bias.then(|| Flex::conv2d_bias_backward(grad.clone(), weight, grad));
                (dx, dw, db)
            }
        }
    }

    fn group_norm_backward(
        x: FlexTensor,
        weight: FlexTensor,
        bias: FlexTensor,
        groups: usize,
        eps: f64,
        silu: bool,
        grad: FlexTensor,
    ) -> (FlexTensor, FlexTensor, FlexTensor) {
        match x.dtype() {
            DType::F64 => gn_backward::<f64>(x, weight, bias, groups, eps, silu, grad),
            _ => {
                let mut g = via_f32([x, weight, bias, grad], |[x, w, b, g]| {
                    let (dx, dw, db) = gn_backward::<f32>(x, w, b, groups, eps, silu, g);
                    vec![dx, dw, db]
                });
                let (db, dw) = (g.pop().unwrap(), g.pop().unwrap());
                (g.pop().unwrap(), dw, db)
            }
        }
    }
}

impl AttentionOps for Flex {
    fn attention(q: FlexTensor, k: FlexTensor, v: FlexTensor, heads: usize, causal: bool) -> FlexTensor {
        Self::attention_with_lse(q, k, v, heads, causal).0
    }
}

impl AttentionBackward for Flex {
    fn attention_with_lse(q: FlexTensor, k: FlexTensor, v: FlexTensor, heads: usize, causal: bool) -> (FlexTensor, FlexTensor) {
        match q.dtype() {
            DType::F64 => attention_forward::<f64>(q, k, v, heads, causal),
            _ => {
                // The log-sum-exp stays float32: the backward rebuilds the probabilities from it,
                // and half precision's 3 digits in an exponent would cost them 1e-2.
                let mut l = None;
                let o = via_f32([q, k, v], |[q, k, v]| {
                    let (o, lse) = attention_forward::<f32>(q, k, v, heads, causal);
                    l = Some(lse);
                    vec![o]
                });
                (o.into_iter().next().unwrap(), l.unwrap())
            }
        }
    }

    fn attention_backward(
        q: FlexTensor,
        k: FlexTensor,
        v: FlexTensor,
        out: FlexTensor,
        lse: FlexTensor,
        grad: FlexTensor,
        heads: usize,
        causal: bool,
    ) -> (FlexTensor, FlexTensor, FlexTensor) {
        let mut r = match q.dtype() {
            DType::F64 => {
                let (a, b, c) = attention_grads::<f64>(q, k, v, out, lse, grad, heads, causal);
                vec![a, b, c]
            }
            _ => via_f32([q, k, v, out, lse, grad], |[q, k, v, o, l, g]| {
                let (a, b, c) = attention_grads::<f32>(q, k, v, o, l, g, heads, causal);
                vec![a, b, c]
            }),
        };
        let (dv, dk) = (r.pop().unwrap(), r.pop().unwrap());
        (r.pop().unwrap(), dk, dv)
    }
}
