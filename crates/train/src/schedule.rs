//! Learning-rate schedules, stepped once per epoch as in the official trainers.

use serde::{Deserialize, Serialize};

use crate::TrainError;

/// A per-epoch learning-rate schedule.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum LrSchedule {
    /// The official `CustomLR` (RIDE/SADE/TLC `utils/util.py` and `train.py`, docs/ride.md §5): with the
    /// 0-based epoch index `i`, the factor is 1 for `i < step1`, γ for `step1 <= i < step2`,
    /// γ² from `step2`; during warm-up (`i < warmup`) it is also multiplied by `(i + 1) / warmup`.
    Steps {
        /// Warm-up epochs W.
        warmup: usize,
        /// First decay epoch (0-based index), e.g. 160.
        step1: usize,
        /// Second decay epoch, e.g. 180.
        step2: usize,
        /// Decay factor γ (0.01 on CIFAR, 0.1 on ImageNet-LT / iNat).
        gamma: f64,
    },
    /// Piecewise-constant factors from given 1-based epochs on, after a linear warm-up of
    /// `epoch / warmup` (TLC `main.py`'s `adjust_learning_rate`, docs/tlc.md §5).
    Piecewise {
        /// Warm-up epochs.
        warmup: usize,
        /// `(from_epoch, factor)`: from this 1-based epoch on, the rate is `base · factor`
        /// (the latest applicable entry wins).
        steps: Vec<(usize, f64)>,
    },
    /// Cosine annealing from the base rate to `min_lr` over the run (after a linear warm-up).
    Cosine {
        /// Warm-up epochs.
        warmup: usize,
        /// Final learning rate.
        min_lr: f64,
    },
    /// The base rate throughout.
    Constant,
}

impl LrSchedule {
    /// Checks the schedule against the run length.
    pub fn check(&self, epochs: usize) -> Result<(), TrainError> {
        match *self {
            LrSchedule::Steps {
                step1,
                step2,
                gamma,
                ..
            } => {
                if step1 > step2 || !(gamma > 0.0 && gamma.is_finite()) {
                    return Err(TrainError::Config(format!(
                        "lr steps need step1 <= step2 and gamma > 0 (got {step1}, {step2}, {gamma})"
                    )));
                }
            }
            LrSchedule::Cosine { min_lr, warmup } => {
                if min_lr.is_nan() || min_lr < 0.0 || warmup > epochs {
                    return Err(TrainError::Config(format!(
                        "cosine needs min_lr >= 0 and warmup <= epochs (got {min_lr}, {warmup})"
                    )));
                }
            }
            LrSchedule::Piecewise { ref steps, .. } => {
                if steps
                    .iter()
                    .any(|&(e, f)| e == 0 || !(f > 0.0 && f.is_finite()))
                {
                    return Err(TrainError::Config(format!(
                        "piecewise lr steps need 1-based epochs and positive factors (got {steps:?})"
                    )));
                }
            }
            LrSchedule::Constant => {}
        }
        Ok(())
    }

    /// The learning rate of the 1-based trainer `epoch` of a run of `epochs` epochs.
    pub fn lr(&self, base_lr: f64, epoch: usize, epochs: usize) -> f64 {
        let i = epoch.saturating_sub(1);
        match *self {
            LrSchedule::Steps {
                warmup,
                step1,
                step2,
                gamma,
            } => {
                let mut f = if i >= step2 {
                    gamma * gamma
                } else if i >= step1 {
                    gamma
                } else {
                    1.0
                };
                if i < warmup {
                    f *= (i + 1) as f64 / warmup as f64;
                }
                base_lr * f
            }
            LrSchedule::Piecewise { warmup, ref steps } => {
                if epoch <= warmup {
                    return base_lr * epoch.max(1) as f64 / warmup as f64;
                }
                let f = steps
                    .iter()
                    .filter(|(from, _)| epoch >= *from)
                    .max_by_key(|(from, _)| *from);
                base_lr * f.map_or(1.0, |(_, f)| *f)
            }
            LrSchedule::Cosine { warmup, min_lr } => {
                if i < warmup {
                    return base_lr * (i + 1) as f64 / warmup as f64;
                }
                let span = epochs.saturating_sub(warmup).max(1) as f64;
                let t = (i - warmup) as f64 / span;
                min_lr + 0.5 * (base_lr - min_lr) * (1.0 + (std::f64::consts::PI * t).cos())
            }
            LrSchedule::Constant => base_lr,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// docs/ride.md §5: CIFAR RIDE gives 0.02, 0.04, 0.06, 0.08, 0.1 for epochs 1–5, 0.1 until 160,
    /// 0.001 for 161–180 and 1e-5 for 181–200.
    #[test]
    fn custom_lr_matches_the_official_cifar_sequence() {
        let s = LrSchedule::Steps {
            warmup: 5,
            step1: 160,
            step2: 180,
            gamma: 0.01,
        };
        let lr = |e| s.lr(0.1, e, 200);
        let close = |a: f64, b: f64| (a - b).abs() < 1e-12 * b.max(1.0);
        for (e, want) in [
            (1, 0.02),
            (2, 0.04),
            (3, 0.06),
            (4, 0.08),
            (5, 0.1),
            (6, 0.1),
        ] {
            assert!(close(lr(e), want), "epoch {e}: {}", lr(e));
        }
        assert!(close(lr(160), 0.1));
        assert!(close(lr(161), 0.001));
        assert!(close(lr(180), 0.001));
        assert!(close(lr(181), 1e-5));
        assert!(close(lr(200), 1e-5));
    }

    #[test]
    fn cosine_starts_at_base_and_ends_near_min() {
        let s = LrSchedule::Cosine {
            warmup: 0,
            min_lr: 0.0,
        };
        assert!((s.lr(0.1, 1, 10) - 0.1).abs() < 1e-12);
        assert!((s.lr(0.1, 6, 10) - 0.05).abs() < 1e-12);
        assert!(s.lr(0.1, 10, 10) < 0.003);
        let w = LrSchedule::Cosine {
            warmup: 2,
            min_lr: 0.0,
        };
        assert!((w.lr(0.1, 1, 10) - 0.05).abs() < 1e-12);
    }

    /// TLC: lr·e/W during warm-up, then the factor of the latest step reached.
    #[test]
    fn piecewise_follows_tlc() {
        let s = LrSchedule::Piecewise {
            warmup: 5,
            steps: vec![(161, 0.01), (181, 0.0001)],
        };
        assert!((s.lr(0.1, 1, 200) - 0.02).abs() < 1e-12);
        assert!((s.lr(0.1, 160, 200) - 0.1).abs() < 1e-12);
        assert!((s.lr(0.1, 161, 200) - 0.001).abs() < 1e-12);
        assert!((s.lr(0.1, 200, 200) - 1e-5).abs() < 1e-15);
    }

    #[test]
    fn bad_schedules_are_rejected() {
        let s = LrSchedule::Steps {
            warmup: 0,
            step1: 10,
            step2: 5,
            gamma: 0.1,
        };
        assert!(s.check(20).is_err());
        assert!(LrSchedule::Cosine {
            warmup: 30,
            min_lr: 0.0
        }
        .check(20)
        .is_err());
    }
}
