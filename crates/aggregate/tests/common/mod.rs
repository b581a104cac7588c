//! Deterministic synthetic expert logits.

use candle_core::{DType, Device, Tensor};

/// A tiny LCG-driven uniform generator, so the tests need no `rand`.
pub struct Gen(u64);

impl Gen {
    pub fn new(seed: u64) -> Self {
        Self(
            seed.wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407),
        )
    }

    /// Uniform in `[-1, 1)`.
    pub fn next(&mut self) -> f64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
    }

    /// `n` values uniform in `[-scale, scale)`.
    pub fn vec(&mut self, n: usize, scale: f64) -> Vec<f64> {
        (0..n).map(|_| self.next() * scale).collect()
    }
}

/// Two views `[E, N, C]` (f64) where expert `agree` returns identical logits in both views and
/// every other expert returns independent logits per view (uniform in `[-scale, scale)`).
pub fn agreeing_views(
    gen: &mut Gen,
    experts: usize,
    n: usize,
    classes: usize,
    agree: usize,
    scale: f64,
) -> (Tensor, Tensor) {
    let mut a = Vec::with_capacity(experts * n * classes);
    let mut b = Vec::with_capacity(experts * n * classes);
    for e in 0..experts {
        let va = gen.vec(n * classes, scale);
        let vb = if e == agree {
            va.clone()
        } else {
            gen.vec(n * classes, scale)
        };
        a.extend(va);
        b.extend(vb);
    }
    let shape = (experts, n, classes);
    (
        Tensor::from_vec(a, shape, &Device::Cpu).unwrap(),
        Tensor::from_vec(b, shape, &Device::Cpu).unwrap(),
    )
}

pub fn f32(t: &Tensor) -> Tensor {
    t.to_dtype(DType::F32).unwrap()
}

pub fn argmax(w: &[f64]) -> usize {
    w.iter()
        .enumerate()
        .max_by(|x, y| x.1.total_cmp(y.1))
        .map(|(i, _)| i)
        .unwrap()
}
