//! What the finiteness check on weights costs: reading every tensor of a 1 GiB float32
//! safetensors file (64 tensors of 4 Mi values, the size of SD 1.5's largest layers) with
//! `SafeTensorsFile::f32` and with `f32_finite`, the page cache warm, median of 5 passes; then the
//! same projected onto SD 1.5's UNet (859.5 M parameters). A development aid:
//! `cargo run --release --example finite_check_timing`.
use catlora::io::safetensors::{OwnedTensor, SafeTensorsFile, write};
use std::collections::BTreeMap;
use std::time::Instant;

const TENSORS: usize = 64;
const VALUES: usize = 4 << 20;
const SD15_UNET_PARAMS: f64 = 859.5e6;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("weights.safetensors");
    let mut tensors = BTreeMap::new();
    for t in 0..TENSORS {
        let data: Vec<f32> = (0..VALUES).map(|i| ((i * 31 + t) % 1000) as f32 * 1e-3 - 0.5).collect();
        tensors.insert(format!("w{t:02}"), OwnedTensor { shape: vec![VALUES], data });
    }
    write(&path, &tensors, &BTreeMap::new())?;
    drop(tensors);
    let file = SafeTensorsFile::open(&path)?;
    let names: Vec<String> = file.names().cloned().collect();
    let pass = |finite: bool| -> anyhow::Result<f64> {
        let t = Instant::now();
        let mut sum = 0f64;
        for n in &names {
            let (_, v) = if finite { file.f32_finite(n)? } else { file.f32(n)? };
            sum += v[v.len() / 2] as f64;
        }
        std::hint::black_box(sum);
        Ok(t.elapsed().as_secs_f64())
    };
    pass(false)?;
    let (mut plain, mut checked) = (Vec::new(), Vec::new());
    for _ in 0..5 {
        plain.push(pass(false)?);
        checked.push(pass(true)?);
    }
    let (p, c) = (median(plain), median(checked));
    let n = (TENSORS * VALUES) as f64;
    println!("{} float32 values (1 GiB), median of 5:", TENSORS * VALUES);
    println!("  read as f32:             {:.3} s ({:.2} ns/value)", p, p / n * 1e9);
    println!("  read as f32 + finite:    {:.3} s ({:.2} ns/value)", c, c / n * 1e9);
    println!("  the check adds           {:.3} s ({:.1} % of the read)", c - p, (c - p) / p * 100.0);
    println!("  SD 1.5 UNet ({} M parameters): the check adds {:.3} s", SD15_UNET_PARAMS / 1e6, (c - p) / n * SD15_UNET_PARAMS);
    Ok(())
}
