//! Helpers shared by the tests.

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::{Device, Tensor};

pub use longtail_fixtures::fixtures_dir;

pub type TestResult = Result<(), Box<dyn std::error::Error>>;

pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims(), "shape mismatch");
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// Deterministic values in [-1, 1) of `shape`, different for each `seed`.
pub fn values(shape: &[usize], seed: u64) -> Tensor {
    let n: usize = shape.iter().product();
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let v: Vec<f32> = (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

/// Writes a safetensors file.
pub fn write(path: &Path, tensors: &BTreeMap<String, Tensor>, meta: &[(&str, &str)]) {
    let meta: BTreeMap<String, String> = meta
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let bytes = longtail_hub::file::to_bytes(tensors, &meta).unwrap();
    std::fs::write(path, bytes).unwrap();
}
