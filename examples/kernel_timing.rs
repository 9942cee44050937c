//! Times each fused kernel against its composition on Stable Diffusion 1.5's shapes at 256 px
//! (forward, and forward + backward with the input and the weights tracked). A development aid:
//! `cargo run --release --example kernel_timing`.
use burn::tensor::{Device, Distribution, Tensor};
use catlora::kernels;
use std::time::Instant;

fn time(mut f: impl FnMut()) -> f64 {
    f();
    let runs = 5;
    let t = Instant::now();
    for _ in 0..runs {
        f();
    }
    t.elapsed().as_secs_f64() * 1e3 / runs as f64
}

fn main() {
    let dev = Device::flex();
    let r = |s: [usize; 4]| Tensor::<4>::random(s, Distribution::Normal(0.0, 1.0), &dev);
    let r1 = |n: usize| Tensor::<1>::random([n], Distribution::Normal(0.0, 1.0), &dev);
    println!("{:<34} {:>10} {:>10} {:>12} {:>12}", "op", "fused ms", "composed", "fused f+b", "composed f+b");
    for (c, s) in [(320, 32), (640, 16), (1280, 8), (1280, 4)] {
        let (x, w, b) = (r([1, c, s, s]), r([c, c, 3, 3]), r1(c));
        type Conv = fn(Tensor<4>, Tensor<4>, Tensor<1>) -> Tensor<4>;
        let fwd = |f: Conv| time(|| drop(f(x.clone(), w.clone(), b.clone()).into_data()));
        let fb = |f: Conv| {
            time(|| {
                let (xg, wg) = (x.clone().autodiff().require_grad(), w.clone().autodiff().require_grad());
                let g = f(xg.clone(), wg.clone(), b.clone()).sum().backward();
                drop(xg.grad(&g).unwrap().into_data());
                drop(wg.grad(&g).unwrap().into_data());
            })
        };
        println!(
            "{:<34} {:>10.2} {:>10.2} {:>12.2} {:>12.2}",
            format!("conv3x3 {c}ch {s}x{s}"),
            fwd(kernels::conv3x3),
            fwd(kernels::conv3x3_composed),
            fb(kernels::conv3x3),
            fb(kernels::conv3x3_composed)
        );
    }
    for (c, s) in [(320, 32), (640, 16), (1280, 8)] {
        let (x, w, b) = (r([1, c, s, s]), r1(c), r1(c));
        type Gn = fn(Tensor<4>, Tensor<1>, Tensor<1>, usize, f64, bool) -> Tensor<4>;
        let fwd = |f: Gn| time(|| drop(f(x.clone(), w.clone(), b.clone(), 32, 1e-5, true).into_data()));
        let fb = |f: Gn| {
            time(|| {
                let xg = x.clone().autodiff().require_grad();
                let g = f(xg.clone(), w.clone(), b.clone(), 32, 1e-5, true).sum().backward();
                drop(xg.grad(&g).unwrap().into_data());
            })
        };
        println!(
            "{:<34} {:>10.2} {:>10.2} {:>12.2} {:>12.2}",
            format!("group_norm+silu {c}ch {s}x{s}"),
            fwd(kernels::group_norm),
            fwd(kernels::group_norm_composed),
            fb(kernels::group_norm),
            fb(kernels::group_norm_composed)
        );
    }
    let r3 = |s: [usize; 3]| Tensor::<3>::random(s, Distribution::Normal(0.0, 1.0), &dev);
    for (n, m, c) in [(1024, 1024, 320), (1024, 77, 320), (256, 256, 640), (64, 64, 1280)] {
        let (q, k, v) = (r3([1, n, c]), r3([1, m, c]), r3([1, m, c]));
        type Att = fn(Tensor<3>, Tensor<3>, Tensor<3>, usize, bool) -> Tensor<3>;
        let fwd = |f: Att| time(|| drop(f(q.clone(), k.clone(), v.clone(), 8, false).into_data()));
        let fb = |f: Att| {
            time(|| {
                let qg = q.clone().autodiff().require_grad();
                let g = f(qg.clone(), k.clone(), v.clone(), 8, false).sum().backward();
                drop(qg.grad(&g).unwrap().into_data());
            })
        };
        println!(
            "{:<34} {:>10.2} {:>10.2} {:>12.2} {:>12.2}",
            format!("attention {n}x{m} {c}ch 8 heads"),
            fwd(kernels::attention),
            fwd(kernels::attention_composed),
            fb(kernels::attention),
            fb(kernels::attention_composed)
        );
    }
}
