//! Helpers shared by the tests: the fixtures of `fixtures/hf` as trunk folders.

use std::path::{Path, PathBuf};

use candle_core::Tensor;

pub use longtail_fixtures::hf_dir;

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

/// `fixtures/hf/<name>.config.json` and `<name>.safetensors`.
pub fn fixture_files(name: &str) -> (PathBuf, PathBuf) {
    let d = hf_dir();
    (
        d.join(format!("{name}.config.json")),
        d.join(format!("{name}.safetensors")),
    )
}

/// A trunk folder in `dir/<name>` as `save_pretrained` writes it: config.json and
/// model.safetensors.
pub fn trunk_folder(dir: &Path, name: &str) -> PathBuf {
    let (config, model) = fixture_files(name);
    let folder = dir.join(name);
    std::fs::create_dir_all(&folder).unwrap();
    std::fs::copy(config, folder.join("config.json")).unwrap();
    std::fs::copy(model, folder.join("model.safetensors")).unwrap();
    folder
}

/// Deterministic pixels for `n` images of `h`×`w`×`c`, different for each `seed`.
pub fn pixels(n: usize, (h, w, c): (usize, usize, usize), seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n * h * w * c)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 56) as u8
        })
        .collect()
}
