//! Fixture location and comparison helpers.

use candle_core::{DType, Tensor};

pub use longtail_fixtures::{json, load};

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
