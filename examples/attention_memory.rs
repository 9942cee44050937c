//! Peak memory of attention under autodiff: a chain of self-attention layers (by default five at
//! 4096 tokens, 8 heads of 40: SD 1.5's largest ones at 512 px) run forward with their graph and
//! then backward, with catlora's attention (`fused`) or burn's operations spelled out
//! (`composed`). One mode per process, so that the high-water mark is that mode's. On the wgpu
//! backends over lavapipe the device memory is this process's, so the peak counts it. A
//! development aid:
//! `cargo run --release --features wgpu --example attention_memory -- wgpu fused [layers tokens]`.
use burn::tensor::{Distribution, Tensor};
use catlora::bench::machine::proc_status_mb;
use catlora::kernels;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: attention_memory <device> fused|composed [layers] [tokens]";
    let (Some(device), Some(mode)) = (args.first(), args.get(1)) else { anyhow::bail!(usage) };
    let number = |i: usize, default: usize| args.get(i).map_or(Ok(default), |v| v.parse::<usize>().map_err(|_| anyhow::anyhow!(usage)));
    let (layers, tokens) = (number(2, 5)?, number(3, 4096)?);
    let (heads, d) = (8, 40);
    let attention: fn(Tensor<3>, Tensor<3>, Tensor<3>, usize, bool) -> Tensor<3> = match mode.as_str() {
        "fused" => kernels::attention,
        "composed" => kernels::attention_composed,
        _ => anyhow::bail!(usage),
    };
    let dev = catlora::device::parse(device)?;
    let x = Tensor::<3>::random([1, tokens, heads * d], Distribution::Normal(0.0, 1.0), &dev).autodiff().require_grad();
    let _ = x.clone().sum().into_scalar::<f32>();
    let base = proc_status_mb("VmRSS")?;
    let t = std::time::Instant::now();
    let mut y = x.clone();
    for _ in 0..layers {
        y = attention(y.clone(), y.clone(), y.clone(), heads, false);
    }
    let grads = y.sum().backward();
    let g = x.grad(&grads).expect("the input's gradient").abs().sum().into_scalar::<f32>();
    println!(
        "{device} {mode}: {layers} layers of {tokens} tokens, peak {:.0} MiB above the inputs' {base:.0} MiB, {:.1} s, sum |dx| {g:.4e}",
        proc_status_mb("VmHWM")? - base,
        t.elapsed().as_secs_f64()
    );
    Ok(())
}
