//! Every parameter of the UNet and the text encoder receives a gradient, and each gradient
//! agrees with a finite-difference estimate along a random direction. An op that records no
//! backward pass would leave a tensor without a gradient or with a wrong one.
mod common;
use burn::tensor::{Tensor, TensorData};
use catlora::models::clip_text::ClipTextModel;
use catlora::models::config::{ClipTextConfig, UNetConfig};
use catlora::models::layers::{ParamVisitor, Walk};
use catlora::models::unet::UNet;
use catlora::models::weights::Weights;
use catlora::rng::Rng;
use common::*;
use std::collections::BTreeMap;

/// Applies one closure to every parameter, whatever its rank.
struct Each<F: FnMut(&str, &mut dyn AnyTensor)>(F);

trait AnyTensor {
    fn make_trainable(&mut self);
    fn grad_values(&self, grads: &burn::tensor::Gradients) -> Option<Vec<f64>>;
    fn values(&self) -> Vec<f64>;
    fn set_values(&mut self, v: Vec<f64>);
}

macro_rules! any_tensor {
    ($d:literal) => {
        impl AnyTensor for Tensor<$d> {
            fn make_trainable(&mut self) {
                *self = self.clone().autodiff().require_grad();
            }
            fn grad_values(&self, grads: &burn::tensor::Gradients) -> Option<Vec<f64>> {
                self.grad(grads).map(values64)
            }
            fn values(&self) -> Vec<f64> {
                values64(self.clone())
            }
            fn set_values(&mut self, v: Vec<f64>) {
                let dims = self.dims();
                *self = Tensor::from_data(TensorData::new(v, dims), (&self.device(), burn::tensor::DType::F64));
            }
        }
    };
}
any_tensor!(1);
any_tensor!(2);
any_tensor!(4);

impl<F: FnMut(&str, &mut dyn AnyTensor)> ParamVisitor for Each<F> {
    fn visit1(&mut self, n: &str, t: &mut Tensor<1>) {
        (self.0)(n, t)
    }
    fn visit2(&mut self, n: &str, t: &mut Tensor<2>) {
        (self.0)(n, t)
    }
    fn visit4(&mut self, n: &str, t: &mut Tensor<4>) {
        (self.0)(n, t)
    }
}

fn values64<const D: usize>(t: Tensor<D>) -> Vec<f64> {
    t.into_data().convert::<f64>().as_slice::<f64>().unwrap().to_vec()
}

/// An f64 copy of a tensor: the checks run in double precision so that finite differences are
/// accurate to far better than the tolerance.
fn f64_tensor<const D: usize>(t: Tensor<D>) -> Tensor<D> {
    t.cast(burn::tensor::DType::F64)
}

/// Checks gradients of `loss(model)` for every parameter the visitor reaches.
fn check<M>(model: &mut M, visit: fn(&mut M, &mut dyn ParamVisitor), loss: impl Fn(&M) -> Tensor<1>, what: &str) {
    visit(
        model,
        &mut Each(|_, t: &mut dyn AnyTensor| {
            let v = t.values();
            t.set_values(v);
            t.make_trainable()
        }),
    );
    let l = loss(model);
    let grads = l.backward();
    let mut analytic: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    let mut missing = Vec::new();
    visit(
        model,
        &mut Each(|n: &str, t: &mut dyn AnyTensor| match t.grad_values(&grads) {
            Some(g) => {
                analytic.insert(n.to_string(), g);
            }
            None => missing.push(n.to_string()),
        }),
    );
    assert!(missing.is_empty(), "{what}: parameters without a gradient: {missing:?}");

    // Back to plain tensors for the finite differences.
    visit(
        model,
        &mut Each(|_, t: &mut dyn AnyTensor| {
            let v = t.values();
            t.set_values(v)
        }),
    );
    let mut rng = Rng::new(11);
    let mut worst = (0f64, String::new());
    let names: Vec<String> = analytic.keys().cloned().collect();
    for name in names {
        let g = &analytic[&name];
        let dir: Vec<f64> = rng.normal_vec(g.len()).into_iter().map(f64::from).collect();
        let slope: f64 = g.iter().zip(&dir).map(|(a, b)| a * b).sum();
        let mut orig = Vec::new();
        visit(
            model,
            &mut Each(|n: &str, t: &mut dyn AnyTensor| {
                if n == name {
                    orig = t.values()
                }
            }),
        );
        let scale = (orig.iter().map(|v| v.powi(2)).sum::<f64>() / orig.len() as f64).sqrt().max(1e-2);
        let h = 1e-5 * scale;
        let eval = |model: &mut M, s: f64| -> f64 {
            let v: Vec<f64> = orig.iter().zip(&dir).map(|(o, d)| o + s * d).collect();
            visit(
                model,
                &mut Each(|n: &str, t: &mut dyn AnyTensor| {
                    if n == name {
                        t.set_values(v.clone())
                    }
                }),
            );
            values64(loss(model))[0]
        };
        let fd = (eval(model, h) - eval(model, -h)) / (2.0 * h);
        visit(
            model,
            &mut Each(|n: &str, t: &mut dyn AnyTensor| {
                if n == name {
                    t.set_values(orig.clone())
                }
            }),
        );
        // Tensors whose true gradient is zero (the key bias, by softmax's shift invariance) are
        // compared on an absolute scale: the floor allows 1e-7 of rounding noise there.
        let err = (fd - slope).abs() / (slope.abs().max(fd.abs()) + 1e-3);
        if err > worst.0 {
            worst = (err, name.clone());
        }
        assert!(err < 1e-4, "{what} `{name}`: analytic directional derivative {slope:e}, finite difference {fd:e}");
    }
    eprintln!("{what}: {} tensors checked, worst relative disagreement {:.2e} at {}", analytic.len(), worst.0, worst.1);
}

/// A loss that weighs every output element differently, so no gradient cancels by symmetry.
fn weighted_sum<const D: usize>(out: Tensor<D>, weights: &Tensor<D>) -> Tensor<1> {
    (out * weights.clone()).sum()
}

#[test]
fn every_unet_parameter_gets_the_right_gradient() {
    let dev = device();
    let dir = fixtures().join("tiny-sd/unet");
    let cfg = UNetConfig::load(&dir.join("config.json")).unwrap();
    let mut unet = UNet::load(&Weights::open_dir(&dir, "diffusion_pytorch_model", &dev).unwrap(), &cfg).unwrap();
    let mut rng = Rng::new(3);
    // A small latent keeps the 2 forwards per tensor cheap; 16 is the smallest side the 4 levels allow.
    let x = f64_tensor(rng.normal_tensor([1, 4, 16, 16], &dev));
    let ctx = f64_tensor(rng.normal_tensor([1, 7, 32], &dev));
    let w = f64_tensor(rng.normal_tensor([1, 4, 16, 16], &dev));
    check(&mut unet, |m, v| m.visit(v), |m| weighted_sum(m.forward(x.clone(), &[421.0], &ctx), &w), "unet");
}

#[test]
fn every_text_encoder_parameter_gets_the_right_gradient() {
    let dev = device();
    let dir = fixtures().join("tiny-sd/text_encoder");
    let cfg = ClipTextConfig::load(&dir.join("config.json")).unwrap();
    let mut te = ClipTextModel::load(&Weights::open_dir(&dir, "model", &dev).unwrap(), &cfg, None).unwrap();
    let ids = vec![vec![49406u32, 320, 1125, 539, 320, 49407, 49407, 49407]];
    let w = f64_tensor(Rng::new(5).normal_tensor([1, 8, 32], &dev));
    check(&mut te, |m, v| m.visit(v), |m| weighted_sum(m.forward(&ids, 1), &w), "text encoder");
}
