//! Helpers shared by the integration tests: fixture paths and tensor comparisons with the
//! tolerances the fixtures' README gives for float32.
#![allow(dead_code)]
pub mod cat_step;
use burn::tensor::{Device, Tensor, TensorData};
use catlora::io::safetensors::SafeTensorsFile;
use std::path::PathBuf;

pub fn fixtures() -> PathBuf {
    catlora::fixtures::fixtures_dir()
}

pub fn reference() -> SafeTensorsFile {
    SafeTensorsFile::open(&fixtures().join("reference.safetensors")).unwrap()
}

/// The device the tests run on: `$CATLORA_TEST_DEVICE` (any `--device` name of this build), else
/// the CPU backend.
pub fn device() -> Device {
    match std::env::var("CATLORA_TEST_DEVICE") {
        Ok(name) => catlora::device::parse(&name).unwrap_or_else(|e| panic!("CATLORA_TEST_DEVICE: {e:#}")),
        Err(_) => Device::flex(),
    }
}

pub fn tensor<const D: usize>(f: &SafeTensorsFile, name: &str, device: &Device) -> Tensor<D> {
    let (shape, v) = f.f32(name).unwrap();
    let shape: [usize; D] = shape.try_into().unwrap();
    Tensor::from_data(TensorData::new(v, shape), device)
}

pub fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().convert::<f32>().as_slice::<f32>().unwrap().to_vec()
}

/// Max abs error relative to the reference's max magnitude.
pub fn rel_max_err(got: &[f32], want: &[f32]) -> f32 {
    assert_eq!(got.len(), want.len(), "length mismatch");
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-12);
    got.iter().zip(want).fold(0f32, |m, (a, b)| m.max((a - b).abs())) / scale
}

pub fn mean_abs_err(got: &[f32], want: &[f32]) -> f32 {
    assert_eq!(got.len(), want.len(), "length mismatch");
    got.iter().zip(want).map(|(a, b)| (a - b).abs()).sum::<f32>() / got.len() as f32
}

/// Asserts a single forward pass matches: max abs error <= 1e-4 of the tensor's max magnitude.
pub fn assert_close(name: &str, got: &[f32], want: &[f32], tol: f32) {
    let e = rel_max_err(got, want);
    assert!(e <= tol, "{name}: relative max error {e:e} exceeds {tol:e}");
    eprintln!("{name}: relative max error {e:e}");
}
