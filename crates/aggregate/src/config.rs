//! Configuration of the epoch-based and the streaming aggregators, with the official presets.

use crate::error::{AggregateError, Result};
use crate::sgd::TestTimeSgd;

/// Configuration of [`TestTimeAggregator`](crate::TestTimeAggregator) (docs/sade.md §2 steps 6–7).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AggregatorConfig {
    /// The optimiser on ω.
    pub sgd: TestTimeSgd,
    /// Samples per step (official: 128, hard-coded). The last batch of an epoch may be smaller.
    pub batch_size: usize,
    /// Full passes over the unlabeled set at most (official: 5).
    pub max_epochs: usize,
    /// Early stop: after an epoch, stop if any weight rounded to 2 decimals is below this
    /// (official: 0.05). `None` never stops early.
    pub stop_below: Option<f64>,
    /// λ of the entropy term, `loss = −mean cos − λ·H` (official: 0, iNaturalist 0.01).
    pub entropy_coef: f64,
    /// Seed of the per-epoch shuffle of the samples.
    ///
    /// Differs from official: PyTorch's `DataLoader(shuffle=True)` is unseeded there; here the
    /// order is a SplitMix64 Fisher–Yates permutation, fixed by this seed.
    pub seed: u64,
}

impl Default for AggregatorConfig {
    /// The CIFAR-100-LT preset.
    fn default() -> Self {
        Self::cifar100_lt()
    }
}

/// A named preset (`aggregate.<dataset>`), as run by the official `test_training_*.py` scripts.
#[derive(Clone, Copy, Debug)]
pub struct Preset {
    /// Name to pass to [`AggregatorConfig::preset`].
    pub name: &'static str,
    /// One line saying where its values come from.
    pub summary: &'static str,
    /// Builds it.
    pub build: fn() -> AggregatorConfig,
}

/// All presets.
pub const PRESETS: &[Preset] = &[
    Preset {
        name: "aggregate.cifar100-lt",
        summary: "test_training_cifar.py: lr 0.1, wd 5e-4, batch 128, 5 epochs",
        build: AggregatorConfig::cifar100_lt,
    },
    Preset {
        name: "aggregate.imagenet-lt",
        summary: "test_training_imagenet.py: lr 0.025, wd 5e-4, batch 128, 5 epochs",
        build: AggregatorConfig::imagenet_lt,
    },
    Preset {
        name: "aggregate.inaturalist2018",
        summary: "test_training_inat.py: lr 0.2, wd 2e-4, entropy 0.01, batch 128, 5 epochs",
        build: AggregatorConfig::inaturalist2018,
    },
    Preset {
        name: "aggregate.places-lt",
        summary: "test_training_places.py: lr 0.01, wd 4e-4, batch 128, 5 epochs",
        build: AggregatorConfig::places_lt,
    },
];

impl AggregatorConfig {
    fn official(lr: f64, weight_decay: f64, entropy_coef: f64) -> Self {
        Self {
            sgd: TestTimeSgd {
                lr,
                momentum: 0.9,
                nesterov: true,
                weight_decay,
            },
            batch_size: 128,
            max_epochs: 5,
            stop_below: Some(0.05),
            entropy_coef,
            seed: 0,
        }
    }

    /// CIFAR-100-LT: lr 0.1, wd 5e-4.
    pub fn cifar100_lt() -> Self {
        Self::official(0.1, 5e-4, 0.0)
    }

    /// ImageNet-LT: lr 0.025, wd 5e-4.
    pub fn imagenet_lt() -> Self {
        Self::official(0.025, 5e-4, 0.0)
    }

    /// iNaturalist 2018: lr 0.2, wd 2e-4, entropy term λ = 0.01.
    pub fn inaturalist2018() -> Self {
        Self::official(0.2, 2e-4, 0.01)
    }

    /// Places-LT: lr 0.01, wd 4e-4.
    pub fn places_lt() -> Self {
        Self::official(0.01, 4e-4, 0.0)
    }

    /// Looks a preset up by name (see [`PRESETS`]).
    pub fn preset(name: &str) -> Result<Self> {
        PRESETS
            .iter()
            .find(|p| p.name == name)
            .map(|p| (p.build)())
            .ok_or_else(|| AggregateError::UnknownPreset {
                name: name.into(),
                known: PRESETS
                    .iter()
                    .map(|p| p.name)
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }

    /// Validates every field.
    pub fn check(self) -> Result<Self> {
        self.sgd.check()?;
        if self.batch_size == 0 {
            return Err(AggregateError::Config {
                field: "batch_size",
                value: "0".into(),
                reason: "must be at least 1",
            });
        }
        if self.max_epochs == 0 {
            return Err(AggregateError::Config {
                field: "max_epochs",
                value: "0".into(),
                reason: "must be at least 1",
            });
        }
        if let Some(t) = self.stop_below {
            if !t.is_finite() {
                return Err(AggregateError::Config {
                    field: "stop_below",
                    value: t.to_string(),
                    reason: "must be finite",
                });
            }
        }
        check_entropy(self.entropy_coef)?;
        Ok(self)
    }
}

pub(crate) fn check_entropy(coef: f64) -> Result<()> {
    if coef.is_finite() {
        Ok(())
    } else {
        Err(AggregateError::Config {
            field: "entropy_coef",
            value: coef.to_string(),
            reason: "must be finite",
        })
    }
}

/// Configuration of [`StreamingAggregator`](crate::StreamingAggregator).
///
/// The official online script (`test_training_imagenet_online.py`) uses ImageNet-LT's optimiser
/// (lr 0.025, wd 5e-4) with batches of 64; the batch size is whatever the caller feeds.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StreamingConfig {
    /// The optimiser on ω.
    pub sgd: TestTimeSgd,
    /// λ of the entropy term (0 in the official online script).
    pub entropy_coef: f64,
}

impl Default for StreamingConfig {
    /// The official online setting: ImageNet-LT's lr 0.025, wd 5e-4, no entropy term.
    fn default() -> Self {
        let c = AggregatorConfig::imagenet_lt();
        Self {
            sgd: c.sgd,
            entropy_coef: 0.0,
        }
    }
}

impl From<AggregatorConfig> for StreamingConfig {
    /// Keeps the optimiser and entropy term; batch size, epochs, early stop and seed do not apply.
    fn from(c: AggregatorConfig) -> Self {
        Self {
            sgd: c.sgd,
            entropy_coef: c.entropy_coef,
        }
    }
}

impl StreamingConfig {
    /// Validates every field.
    pub fn check(self) -> Result<Self> {
        self.sgd.check()?;
        check_entropy(self.entropy_coef)?;
        Ok(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_are_valid_and_match_the_spec_table() {
        for p in PRESETS {
            let c = (p.build)().check().unwrap();
            assert_eq!(AggregatorConfig::preset(p.name).unwrap(), c);
            assert_eq!(
                (c.batch_size, c.max_epochs, c.stop_below),
                (128, 5, Some(0.05))
            );
            assert!(c.sgd.nesterov && c.sgd.momentum == 0.9);
        }
        let inat = AggregatorConfig::preset("aggregate.inaturalist2018").unwrap();
        assert_eq!(
            (inat.sgd.lr, inat.sgd.weight_decay, inat.entropy_coef),
            (0.2, 2e-4, 0.01)
        );
        let places = AggregatorConfig::places_lt();
        assert_eq!((places.sgd.lr, places.sgd.weight_decay), (0.01, 4e-4));
        let err = AggregatorConfig::preset("cifar").unwrap_err().to_string();
        assert!(err.contains("aggregate.cifar100-lt"), "{err}");
    }

    #[test]
    fn check_rejects_bad_values() {
        let base = AggregatorConfig::default();
        for c in [
            AggregatorConfig {
                batch_size: 0,
                ..base
            },
            AggregatorConfig {
                max_epochs: 0,
                ..base
            },
            AggregatorConfig {
                stop_below: Some(f64::NAN),
                ..base
            },
            AggregatorConfig {
                entropy_coef: f64::INFINITY,
                ..base
            },
        ] {
            assert!(
                matches!(c.check(), Err(AggregateError::Config { .. })),
                "{c:?}"
            );
        }
    }
}
