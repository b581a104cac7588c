//! Fixture location and comparison helpers.

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};

/// `shared/fixtures/official`, found by walking up from this crate (the repo may be cloned
/// anywhere with `shared/` beside it). Panics with a clear message when absent: a parity test
/// must never pass silently without its reference.
pub fn fixtures_dir() -> PathBuf {
    let start = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    for dir in start.ancestors() {
        for candidate in [
            dir.join("shared/fixtures/official"),
            dir.join("../shared/fixtures/official"),
        ] {
            if candidate.is_dir() {
                return candidate;
            }
        }
    }
    panic!(
        "fixtures not found: no shared/fixtures/official in any ancestor of {} (or beside it)",
        start.display()
    );
}

/// Loads a safetensors fixture.
pub fn load(name: &str) -> HashMap<String, Tensor> {
    let path = fixtures_dir().join(name);
    candle_core::safetensors::load(&path, &Device::Cpu)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// Reads a JSON sidecar.
pub fn json(name: &str) -> serde_json::Value {
    let path = fixtures_dir().join(name);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).expect("valid json")
}

/// Flattens any tensor to f64 values.
pub fn values(t: &Tensor) -> Vec<f64> {
    t.to_dtype(DType::F64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f64>()
        .unwrap()
}

/// Asserts `|got − want| ≤ atol + rtol·|want|` element-wise; returns the largest abs difference.
pub fn assert_close(what: &str, got: &Tensor, want: &Tensor, atol: f64, rtol: f64) -> f64 {
    assert_eq!(got.dims(), want.dims(), "{what}: shape");
    let (g, w) = (values(got), values(want));
    let mut worst = 0f64;
    for (i, (a, b)) in g.iter().zip(&w).enumerate() {
        let d = (a - b).abs();
        assert!(
            d <= atol + rtol * b.abs(),
            "{what}[{i}]: got {a}, want {b} (diff {d})"
        );
        worst = worst.max(d);
    }
    worst
}

/// `[E, B, C]` → `[B, E, C]` (the fixtures store experts first).
pub fn to_bec(t: &Tensor) -> Tensor {
    t.transpose(0, 1).unwrap().contiguous().unwrap()
}
