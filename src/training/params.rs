//! The parameters a training run updates (an adapter's LoRA branches, or every tensor of a toy
//! model), kept on the device between steps: names, shapes and flat values, installed into the
//! model as fresh autodiff leaves before each step, and their gradients read back as device
//! tensors. Only the scalar losses (and, when clipping, the gradient norm) cross to the host in
//! a step; checkpoints and files copy the values out.
use crate::adapters::lora::{Adapter, BranchRef, Targets, branches_mut};
use crate::models::layers::{ParamVisitor, Walk};
use anyhow::{Result, bail, ensure};
use burn::tensor::{Device, Gradients, Tensor, TensorData};

/// One parameter tensor, of any rank the models use, as its owner hands it out.
pub enum Slot<'a> {
    T1(&'a mut Tensor<1>),
    T2(&'a mut Tensor<2>),
    T4(&'a mut Tensor<4>),
}

/// An installed autodiff leaf; its gradient comes back flat.
pub enum Leaf {
    T1(Tensor<1>),
    T2(Tensor<2>),
    T4(Tensor<4>),
}

fn flat<const D: usize>(t: &Tensor<D>) -> Tensor<1> {
    let n = t.dims().iter().product::<usize>();
    t.clone().without_autodiff().reshape([n])
}

fn leaf<const D: usize>(value: &Tensor<1>, dims: [usize; D], trainable: bool) -> Tensor<D> {
    let t = value.clone().reshape(dims);
    if trainable { t.autodiff().require_grad() } else { t }
}

impl Slot<'_> {
    pub fn dims(&self) -> Vec<usize> {
        match self {
            Slot::T1(t) => t.dims().to_vec(),
            Slot::T2(t) => t.dims().to_vec(),
            Slot::T4(t) => t.dims().to_vec(),
        }
    }

    /// The current value, flattened, without autodiff.
    pub fn value(&self) -> Tensor<1> {
        match self {
            Slot::T1(t) => flat(*t),
            Slot::T2(t) => flat(*t),
            Slot::T4(t) => flat(*t),
        }
    }

    /// Replaces the tensor with `value` (flat, same number of elements), as a fresh autodiff
    /// leaf when `trainable`.
    pub fn set(&mut self, value: &Tensor<1>, trainable: bool) -> Leaf {
        match self {
            Slot::T1(t) => {
                **t = leaf(value, t.dims(), trainable);
                Leaf::T1(t.clone())
            }
            Slot::T2(t) => {
                **t = leaf(value, t.dims(), trainable);
                Leaf::T2(t.clone())
            }
            Slot::T4(t) => {
                **t = leaf(value, t.dims(), trainable);
                Leaf::T4(t.clone())
            }
        }
    }
}

impl Leaf {
    pub fn grad(&self, grads: &Gradients) -> Option<Tensor<1>> {
        match self {
            Leaf::T1(t) => t.grad(grads).map(|g| flat(&g)),
            Leaf::T2(t) => t.grad(grads).map(|g| flat(&g)),
            Leaf::T4(t) => t.grad(grads).map(|g| flat(&g)),
        }
    }
}

/// Whatever holds parameters: hands out every slot by name, always in the same order.
pub trait ParamSource {
    fn each_param(&mut self, f: &mut dyn FnMut(&str, Slot<'_>));
}

/// A `ParamVisitor` that calls one closure for every parameter, whatever its rank.
pub struct Each<F: FnMut(&str, Slot<'_>)>(pub F);

impl<F: FnMut(&str, Slot<'_>)> ParamVisitor for Each<F> {
    fn visit1(&mut self, n: &str, t: &mut Tensor<1>) {
        (self.0)(n, Slot::T1(t))
    }
    fn visit2(&mut self, n: &str, t: &mut Tensor<2>) {
        (self.0)(n, Slot::T2(t))
    }
    fn visit4(&mut self, n: &str, t: &mut Tensor<4>) {
        (self.0)(n, Slot::T4(t))
    }
}

macro_rules! model_params {
    ($($model:ty),*) => {$(
        impl ParamSource for $model {
            fn each_param(&mut self, f: &mut dyn FnMut(&str, Slot<'_>)) {
                self.visit(&mut Each(f))
            }
        }
    )*};
}
model_params!(crate::models::unet::UNet, crate::models::vae::Vae, crate::models::clip_text::ClipTextModel);

/// The LoRA branches of one adapter: `<component>.<module>.down` (`[in, rank]`) and `.up`
/// (`[rank, out]`), UNet then text encoder, by module path.
pub struct AdapterParams<'a, 't> {
    pub targets: &'a mut Targets<'t>,
    pub adapter: &'a Adapter,
}

impl ParamSource for AdapterParams<'_, '_> {
    fn each_param(&mut self, f: &mut dyn FnMut(&str, Slot<'_>)) {
        for BranchRef { component, module, branch, .. } in branches_mut(self.targets, self.adapter) {
            let p = format!("{}.{module}", component.diffusers_prefix());
            f(&format!("{p}.down"), Slot::T2(&mut branch.down));
            f(&format!("{p}.up"), Slot::T2(&mut branch.up));
        }
    }
}

/// The values of a run's parameters on the device, flat, in the source's order.
pub struct Params {
    pub names: Vec<String>,
    pub shapes: Vec<Vec<usize>>,
    pub values: Vec<Tensor<1>>,
}

impl Params {
    /// Takes the current values of every parameter of `src`.
    pub fn collect(src: &mut dyn ParamSource) -> Self {
        let (mut names, mut shapes, mut values) = (Vec::new(), Vec::new(), Vec::new());
        src.each_param(&mut |n: &str, s: Slot<'_>| {
            names.push(n.to_string());
            shapes.push(s.dims());
            values.push(s.value());
        });
        Self { names, shapes, values }
    }

    pub fn sizes(&self) -> Vec<usize> {
        self.shapes.iter().map(|s| s.iter().product()).collect()
    }

    pub fn count(&self) -> usize {
        self.sizes().iter().sum()
    }

    /// Writes the values into `src`: autodiff leaves when `trainable` (returned in order),
    /// plain tensors otherwise.
    pub fn install(&self, src: &mut dyn ParamSource, trainable: bool) -> Vec<Leaf> {
        let mut leaves = Vec::with_capacity(self.values.len());
        let mut order_ok = true;
        src.each_param(&mut |n: &str, mut s: Slot<'_>| {
            let k = leaves.len();
            order_ok &= self.names.get(k).is_some_and(|m| m == n) && s.dims() == self.shapes[k];
            if order_ok {
                leaves.push(s.set(&self.values[k], trainable));
            }
        });
        // The sources are this crate's own models: a different order is a programming error.
        assert!(order_ok && leaves.len() == self.names.len(), "the parameters are visited in a different order or shape");
        leaves
    }

    /// The gradient of every leaf after `loss.backward()`, flat. A parameter without a gradient
    /// is an error naming it: the graph is cut somewhere, and a silent zero would hide that.
    pub fn gradients(&self, leaves: &[Leaf], grads: &Gradients) -> Result<Vec<Tensor<1>>> {
        let mut out = Vec::with_capacity(leaves.len());
        let mut missing = Vec::new();
        for (l, name) in leaves.iter().zip(&self.names) {
            match l.grad(grads) {
                Some(g) => out.push(g),
                None => missing.push(name.as_str()),
            }
        }
        if !missing.is_empty() {
            bail!("parameters without a gradient (the graph is cut): {}", missing.join(", "));
        }
        Ok(out)
    }

    /// Zero tensors of the parameters' sizes (gradient accumulators, optimiser moments).
    pub fn zeros(&self) -> Vec<Tensor<1>> {
        self.values.iter().map(|v| Tensor::zeros([v.dims()[0]], &v.device())).collect()
    }

    /// The values copied to the host.
    pub fn to_host(&self) -> Vec<Vec<f32>> {
        self.values.iter().map(host).collect()
    }

    /// Replaces the values with host ones (a checkpoint's), checking every length.
    pub fn set_host(&mut self, values: Vec<Vec<f32>>, what: &str) -> Result<()> {
        self.values = to_device(values, &self.names, &self.sizes(), &self.device(), what)?;
        Ok(())
    }

    pub fn device(&self) -> Device {
        self.values.first().map(|v| v.device()).unwrap_or_else(Device::flex)
    }
}

/// A flat device tensor copied to the host.
pub fn host(t: &Tensor<1>) -> Vec<f32> {
    t.to_data().convert::<f32>().as_slice::<f32>().expect("f32 data after convert").to_vec()
}

/// Host vectors as flat device tensors, each checked against its expected length.
pub fn to_device(values: Vec<Vec<f32>>, names: &[String], sizes: &[usize], device: &Device, what: &str) -> Result<Vec<Tensor<1>>> {
    ensure!(values.len() == sizes.len(), "{what}: {} tensors where {} are expected", values.len(), sizes.len());
    values
        .into_iter()
        .zip(names.iter().zip(sizes))
        .map(|(v, (name, &n))| {
            ensure!(v.len() == n, "{what}: `{name}` has {} values where {n} are expected", v.len());
            Ok(Tensor::from_data(TensorData::new(v, [n]), device))
        })
        .collect()
}

/// The global L2 norm of the gradients (one scalar read back).
pub fn global_norm(grads: &[Tensor<1>]) -> f64 {
    let total = grads.iter().map(|g| g.clone().square().sum()).reduce(|a, b| a + b);
    total.map_or(0.0, |t| host(&t)[0] as f64).sqrt()
}

/// Scales the gradients so that their global norm is at most `max` (`norm` as
/// [`global_norm`] gives it); the scale is `max / (norm + 1e-6)`, as PyTorch's
/// `clip_grad_norm_`.
pub fn clip_to_norm(grads: &mut [Tensor<1>], norm: f64, max: f64) {
    if norm > max {
        let s = (max / (norm + 1e-6)) as f32;
        for g in grads.iter_mut() {
            *g = g.clone().mul_scalar(s);
        }
    }
}

/// `acc + k · g` for every tensor (gradient accumulation over micro-batches and loss terms).
pub fn add_scaled(acc: &mut [Tensor<1>], grads: Vec<Tensor<1>>, k: f32) {
    for (a, g) in acc.iter_mut().zip(grads) {
        *a = a.clone() + if k == 1.0 { g } else { g.mul_scalar(k) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clipping_scales_to_the_limit_and_accumulation_adds() {
        let dev = Device::flex();
        let t = |v: Vec<f32>| Tensor::<1>::from_data(TensorData::new(v.clone(), [v.len()]), &dev);
        let mut g = vec![t(vec![3.0, 0.0]), t(vec![4.0])];
        let n = global_norm(&g);
        assert!((n - 5.0).abs() < 1e-6, "{n}");
        clip_to_norm(&mut g, n, 1.0);
        let after = global_norm(&g);
        assert!((after - 1.0).abs() < 1e-5, "{after}");
        clip_to_norm(&mut g, after, 10.0);
        assert!((global_norm(&g) - after).abs() < 1e-9, "no change under the limit");
        let mut acc = vec![t(vec![1.0, 1.0])];
        add_scaled(&mut acc, vec![t(vec![2.0, -4.0])], 0.5);
        assert_eq!(host(&acc[0]), vec![2.0, -1.0]);
    }

    #[test]
    fn host_values_are_checked_for_length() {
        let dev = Device::flex();
        let names = vec!["a".to_string()];
        let err = to_device(vec![vec![1.0; 3]], &names, &[4], &dev, "ckpt").unwrap_err().to_string();
        assert!(err.contains("`a` has 3 values where 4"), "{err}");
        let err = to_device(vec![], &names, &[4], &dev, "ckpt").unwrap_err().to_string();
        assert!(err.contains("0 tensors where 1"), "{err}");
    }
}
