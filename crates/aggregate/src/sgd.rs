//! SGD with momentum, Nesterov and weight decay on the aggregation logits ω, written by hand.

use crate::error::{AggregateError, Result};

/// Hyperparameters of the optimiser on ω (docs/sade.md §2 step 6).
///
/// The official scripts build `torch.optim.SGD([ω], lr, momentum=0.9, weight_decay, nesterov=True)`
/// from each dataset's training config: CIFAR-100-LT lr 0.1 / wd 5e-4, ImageNet-LT 0.025 / 5e-4,
/// iNaturalist 0.2 / 2e-4, Places-LT 0.01 / 4e-4.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TestTimeSgd {
    /// Learning rate (> 0).
    pub lr: f64,
    /// Momentum μ in `[0, 1)`; 0.9 in every official config.
    pub momentum: f64,
    /// Nesterov momentum (official: true). Needs `momentum > 0`, as in PyTorch.
    pub nesterov: bool,
    /// L2 weight decay on ω (≥ 0). It pulls ω toward 0, i.e. the weights toward uniform.
    pub weight_decay: f64,
}

impl Default for TestTimeSgd {
    /// CIFAR-100-LT: lr 0.1, momentum 0.9, Nesterov, wd 5e-4.
    fn default() -> Self {
        Self {
            lr: 0.1,
            momentum: 0.9,
            nesterov: true,
            weight_decay: 5e-4,
        }
    }
}

impl TestTimeSgd {
    /// Validates the values (the same rules as `torch.optim.SGD`'s constructor).
    pub fn check(self) -> Result<Self> {
        let bad = |field, value: f64, reason| AggregateError::Config {
            field,
            value: value.to_string(),
            reason,
        };
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return Err(bad("lr", self.lr, "must be finite and positive"));
        }
        if !(self.momentum.is_finite() && (0.0..1.0).contains(&self.momentum)) {
            return Err(bad("momentum", self.momentum, "must be in [0, 1)"));
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return Err(bad(
                "weight_decay",
                self.weight_decay,
                "must be finite and non-negative",
            ));
        }
        if self.nesterov && self.momentum == 0.0 {
            return Err(bad(
                "momentum",
                self.momentum,
                "nesterov momentum requires a positive momentum",
            ));
        }
        Ok(self)
    }
}

/// The optimiser state: one momentum buffer per parameter, kept on the host in f64.
///
/// One step, with PyTorch's semantics (dampening 0; docs/sade.md pitfall 8):
/// `g ← g + wd·ω; buf ← μ·buf + g` (the first step sets `buf = g`);
/// `d ← g + μ·buf` with Nesterov, `d ← buf` without; `ω ← ω − lr·d`.
///
/// Differs from official: ω and the buffer live in f64 on the host (ω has one entry per expert),
/// where PyTorch keeps them in f32 on the GPU; the results differ by float rounding only.
#[derive(Clone, Debug)]
pub struct Sgd {
    config: TestTimeSgd,
    buf: Option<Vec<f64>>,
}

impl Sgd {
    /// A fresh optimiser (no momentum yet). Validates `config`.
    pub fn new(config: TestTimeSgd) -> Result<Self> {
        Ok(Self {
            config: config.check()?,
            buf: None,
        })
    }

    /// The hyperparameters.
    pub fn config(&self) -> TestTimeSgd {
        self.config
    }

    /// The momentum buffer, `None` before the first step.
    pub fn momentum_buffer(&self) -> Option<&[f64]> {
        self.buf.as_deref()
    }

    /// Forgets the momentum (the next step behaves like a first step).
    pub fn reset(&mut self) {
        self.buf = None;
    }

    /// Updates `params` in place from their gradient `grads`.
    pub fn step(&mut self, params: &mut [f64], grads: &[f64]) -> Result<()> {
        if params.len() != grads.len() {
            return Err(AggregateError::ShapeMismatch {
                what: "gradient of omega".into(),
                expected: vec![params.len()],
                got: vec![grads.len()],
            });
        }
        if grads.iter().any(|g| !g.is_finite()) {
            return Err(AggregateError::NonFinite {
                what: "gradient of omega".into(),
            });
        }
        let TestTimeSgd {
            lr,
            momentum: mu,
            nesterov,
            weight_decay: wd,
        } = self.config;
        let g: Vec<f64> = params.iter().zip(grads).map(|(p, g)| g + wd * p).collect();
        let d = if mu == 0.0 {
            g
        } else {
            let buf = match self.buf.take() {
                Some(b) if b.len() == g.len() => {
                    b.iter().zip(&g).map(|(b, g)| mu * b + g).collect()
                }
                _ => g.clone(),
            };
            let d = if nesterov {
                g.iter().zip(&buf).map(|(g, b)| g + mu * b).collect()
            } else {
                buf.clone()
            };
            self.buf = Some(buf);
            d
        };
        for (p, d) in params.iter_mut().zip(d) {
            *p -= lr * d;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) {
        assert!((a - b).abs() < 1e-12, "{a} vs {b}");
    }

    /// Two Nesterov steps computed by hand (lr 0.1, μ 0.9, wd 0.01, ω₀ = 0.5, g = 1 both times):
    /// step 1: g' = 1.005, buf = 1.005, d = 1.005 + 0.9·1.005 = 1.9095, ω = 0.30905;
    /// step 2: g' = 1 + 0.01·0.30905 = 1.0030905, buf = 0.9·1.005 + 1.0030905 = 1.9075905,
    ///         d = 1.0030905 + 0.9·1.9075905 = 2.71992195, ω = 0.30905 − 0.271992195 = 0.037057805.
    #[test]
    fn nesterov_matches_hand_computed_steps() {
        let mut opt = Sgd::new(TestTimeSgd {
            lr: 0.1,
            momentum: 0.9,
            nesterov: true,
            weight_decay: 0.01,
        })
        .unwrap();
        let mut w = [0.5, -0.2];
        opt.step(&mut w, &[1.0, 0.0]).unwrap();
        close(w[0], 0.30905);
        // Second parameter: g' = −0.002, buf = −0.002, d = −0.0038, ω = −0.2 + 0.00038.
        close(w[1], -0.19962);
        opt.step(&mut w, &[1.0, 0.0]).unwrap();
        close(w[0], 0.037057805);
        close(opt.momentum_buffer().unwrap()[0], 1.9075905);
    }

    #[test]
    fn plain_momentum_and_no_momentum() {
        let cfg = TestTimeSgd {
            lr: 0.5,
            momentum: 0.5,
            nesterov: false,
            weight_decay: 0.0,
        };
        let mut opt = Sgd::new(cfg).unwrap();
        let mut w = [1.0];
        opt.step(&mut w, &[2.0]).unwrap(); // buf 2, ω = 1 − 1 = 0
        close(w[0], 0.0);
        opt.step(&mut w, &[2.0]).unwrap(); // buf 3, ω = −1.5
        close(w[0], -1.5);
        let mut opt = Sgd::new(TestTimeSgd {
            momentum: 0.0,
            ..cfg
        })
        .unwrap();
        let mut w = [1.0];
        opt.step(&mut w, &[2.0]).unwrap();
        opt.step(&mut w, &[2.0]).unwrap();
        close(w[0], -1.0);
        assert!(opt.momentum_buffer().is_none());
    }

    #[test]
    fn rejects_bad_config_and_gradients() {
        let base = TestTimeSgd::default();
        for cfg in [
            TestTimeSgd { lr: 0.0, ..base },
            TestTimeSgd {
                lr: f64::NAN,
                ..base
            },
            TestTimeSgd {
                momentum: 1.0,
                ..base
            },
            TestTimeSgd {
                momentum: 0.0,
                ..base
            },
            TestTimeSgd {
                weight_decay: -1.0,
                ..base
            },
        ] {
            assert!(
                matches!(Sgd::new(cfg), Err(AggregateError::Config { .. })),
                "{cfg:?}"
            );
        }
        let mut opt = Sgd::new(base).unwrap();
        let mut w = [0.0, 0.0];
        assert!(matches!(
            opt.step(&mut w, &[1.0]),
            Err(AggregateError::ShapeMismatch { .. })
        ));
        assert!(matches!(
            opt.step(&mut w, &[1.0, f64::INFINITY]),
            Err(AggregateError::NonFinite { .. })
        ));
    }
}
