//! Which second stage to run ([`Stage`], parsed from `crt`, `lws`, `tau-norm[:τ]`, `la[:τ]`,
//! `wb[:thresh]`), and the optimisation recipe of the stages that train ([`Recipe`]).

use std::fmt;
use std::str::FromStr;

use longtail_data::{DatasetName, SamplerKind};
use serde::{Deserialize, Serialize};

use crate::error::{DecoupleError, Result};

/// MaxNorm's relative threshold in weight balancing (`thresh = 0.1` of the official demo,
/// docs/baselines.md §7).
pub const WB_THRESH: f64 = 0.1;
/// β of the class-balanced loss of weight balancing's stage 2 (docs/baselines.md §7).
pub const WB_BETA: f64 = 0.9999;
/// The τ grid searched on a validation split: 0, 0.1, …, 2.0, as the official `tau_norm.py`
/// sweep (docs/baselines.md §6).
pub const TAU_GRID_STEPS: usize = 20;
/// τ used when none is given and the run has no validation split (docs/baselines.md §5, §6: the
/// LA paper's headline rows and BoT's τ-norm use 1).
pub const DEFAULT_TAU: f64 = 1.0;

/// A second stage on a trained run: each re-balances the classifier(s) and leaves the trunk as
/// it is.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "stage", rename_all = "kebab-case")]
pub enum Stage {
    /// Classifier re-training (Kang et al., ICLR 2020): re-initialise every expert's classifier
    /// and train it with a class-balanced sampler, the trunk frozen (docs/baselines.md §6).
    Crt,
    /// Learnable weight scaling (Kang et al.): keep the classifier, learn one scale per class
    /// (initialised to 1) with a class-balanced sampler: logits `f ⊙ (Wx + b)`
    /// (docs/baselines.md §6).
    Lws,
    /// τ-normalisation (Kang et al.): `w̃_c = w_c / ‖w_c‖^τ`, bias dropped as the official
    /// script does (docs/baselines.md §6). `None`: chosen on the run's validation split from
    /// 0, 0.1, …, 2.0, or [`DEFAULT_TAU`] where there is none.
    TauNorm {
        /// The exponent τ, or `None` to choose it.
        tau: Option<f64>,
    },
    /// Post-hoc logit adjustment (Menon et al., ICLR 2021): predict with
    /// `z_c − log(π_c^τ + 1e-12)`, π the training prior (docs/baselines.md §5). `None`: chosen on
    /// the validation split as for τ-norm, or [`DEFAULT_TAU`].
    LogitAdjust {
        /// The strength τ, or `None` to choose it.
        tau: Option<f64>,
    },
    /// Weight balancing's stage 2 (Alshammari et al., CVPR 2022): fine-tune the classifier with
    /// the class-balanced loss (β 0.9999), weight decay 0.1 and MaxNorm, natural sampling
    /// (docs/baselines.md §7).
    WeightBalancing {
        /// MaxNorm's threshold: `δ = min‖w‖ + thresh · (max‖w‖ − min‖w‖)` of the stage-1 norms.
        thresh: f64,
    },
}

fn number(stage: &str, text: &str, lo: f64, hi: f64) -> Result<f64> {
    match text.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && (lo..=hi).contains(&v) => Ok(v),
        _ => Err(DecoupleError::Stage(format!(
            "`{stage}:{text}`: the parameter must be a number in [{lo}, {hi}]"
        ))),
    }
}

impl FromStr for Stage {
    type Err = DecoupleError;

    /// `crt`, `lws`, `tau-norm`, `tau-norm:0.7`, `la`, `la:1.0`, `wb`, `wb:0.1` (case-insensitive;
    /// `taunorm`, `tau_norm`, `logit-adjust` are accepted too).
    fn from_str(s: &str) -> Result<Self> {
        let lower = s.trim().to_ascii_lowercase();
        let (name, param) = match lower.split_once(':') {
            Some((n, p)) => (n.trim(), Some(p)),
            None => (lower.as_str(), None),
        };
        let stage = match name {
            "crt" => Stage::Crt,
            "lws" => Stage::Lws,
            "tau-norm" | "taunorm" | "tau_norm" => Stage::TauNorm {
                tau: param.map(|p| number(name, p, 0.0, 10.0)).transpose()?,
            },
            "la" | "logit-adjust" | "logit-adjustment" => Stage::LogitAdjust {
                tau: param.map(|p| number(name, p, 0.0, 10.0)).transpose()?,
            },
            "wb" | "weight-balancing" => Stage::WeightBalancing {
                thresh: param
                    .map(|p| number(name, p, 0.0, 1.0))
                    .transpose()?
                    .unwrap_or(WB_THRESH),
            },
            _ => {
                return Err(DecoupleError::Stage(format!(
                    "unknown stage `{s}` (expected crt, lws, tau-norm[:τ], la[:τ] or wb[:thresh])"
                )))
            }
        };
        if param.is_some() && matches!(stage, Stage::Crt | Stage::Lws) {
            return Err(DecoupleError::Stage(format!(
                "`{s}`: {name} takes no parameter"
            )));
        }
        Ok(stage)
    }
}

impl fmt::Display for Stage {
    /// The canonical spelling, which parses back to the same stage.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Stage::Crt => write!(f, "crt"),
            Stage::Lws => write!(f, "lws"),
            Stage::TauNorm { tau: None } => write!(f, "tau-norm"),
            Stage::TauNorm { tau: Some(t) } => write!(f, "tau-norm:{t}"),
            Stage::LogitAdjust { tau: None } => write!(f, "la"),
            Stage::LogitAdjust { tau: Some(t) } => write!(f, "la:{t}"),
            Stage::WeightBalancing { thresh } if *thresh == WB_THRESH => write!(f, "wb"),
            Stage::WeightBalancing { thresh } => write!(f, "wb:{thresh}"),
        }
    }
}

impl Stage {
    /// The stage's short name: `crt`, `lws`, `tau-norm`, `la` or `wb`.
    pub fn name(&self) -> &'static str {
        match self {
            Stage::Crt => "crt",
            Stage::Lws => "lws",
            Stage::TauNorm { .. } => "tau-norm",
            Stage::LogitAdjust { .. } => "la",
            Stage::WeightBalancing { .. } => "wb",
        }
    }

    /// The folder inside the run that holds this stage's result: `stage-<canonical spelling>`
    /// with `:` written as `-` (`stage-crt`, `stage-tau-norm`, `stage-la-0.5`), so settings that
    /// differ keep their own results side by side.
    pub fn folder(&self) -> String {
        format!("stage-{}", self.to_string().replace(':', "-"))
    }

    /// Whether the stage trains (cRT, LWS, WB) rather than only transforming weights or logits.
    pub fn trains(&self) -> bool {
        matches!(
            self,
            Stage::Crt | Stage::Lws | Stage::WeightBalancing { .. }
        )
    }

    /// The official recipe of a training stage (`None` for τ-norm and LA):
    /// - cRT: 10 epochs, batch 512, lr 0.2 cosine to 0, weight decay 5e-4, momentum 0.9,
    ///   class-balanced sampling (`cls_crt.yaml`, docs/baselines.md §6);
    /// - LWS: the same for 5 epochs (`cls_lws.yaml`);
    /// - WB: 10 epochs, batch 64, lr 0.01 cosine, weight decay 0.1, momentum 0.9, natural
    ///   sampling (`demo2_second-stage-training.py`, docs/baselines.md §7).
    pub fn official_recipe(&self) -> Option<Recipe> {
        let kang = |epochs| Recipe {
            epochs,
            batch_size: 512,
            lr: 0.2,
            weight_decay: 5e-4,
            momentum: 0.9,
            sampler: SamplerKind::ClassBalanced,
        };
        match self {
            Stage::Crt => Some(kang(10)),
            Stage::Lws => Some(kang(5)),
            Stage::WeightBalancing { .. } => Some(Recipe {
                epochs: 10,
                batch_size: 64,
                lr: 0.01,
                weight_decay: 0.1,
                momentum: 0.9,
                sampler: SamplerKind::Shuffled,
            }),
            Stage::TauNorm { .. } | Stage::LogitAdjust { .. } => None,
        }
    }

    /// The recipe used on a run of `dataset`: the official one, except on the small
    /// Fashion-MNIST sets (the bundled `fmnist-lt`, 2,478 training images) where a batch of 512
    /// would leave five steps per epoch: there cRT and LWS use batch 128 with the learning rate
    /// scaled linearly (0.05), same epochs. Differs from official: that bundled preset is ours.
    pub fn recipe_for(&self, dataset: DatasetName) -> Option<Recipe> {
        let mut r = self.official_recipe()?;
        if matches!(dataset, DatasetName::FmnistLt | DatasetName::Fmnist) && r.batch_size > 128 {
            r.lr *= 128.0 / r.batch_size as f64;
            r.batch_size = 128;
        }
        Some(r)
    }
}

/// Optimisation settings of a training stage: SGD (no Nesterov, as PyTorch's default in both
/// official codes) with the learning rate annealed per epoch by a cosine to 0.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Recipe {
    /// Epochs; each is one pass of the sampler over the training set's length.
    pub epochs: usize,
    /// Images per step.
    pub batch_size: usize,
    /// Initial learning rate.
    pub lr: f64,
    /// Coupled L2 weight decay on the trained parameters (LWS's scales included).
    pub weight_decay: f64,
    /// SGD momentum.
    pub momentum: f64,
    /// Training-sample order.
    pub sampler: SamplerKind,
}

impl Recipe {
    /// `CosineAnnealingLR(T_max = epochs, eta_min = 0)` stepped per epoch: the lr of the
    /// 1-based `epoch`, `lr · (1 + cos(π (epoch − 1) / epochs)) / 2`.
    pub fn lr_at(&self, epoch: usize) -> f64 {
        let t = (epoch.saturating_sub(1)) as f64 / self.epochs.max(1) as f64;
        self.lr * 0.5 * (1.0 + (std::f64::consts::PI * t).cos())
    }

    /// Checks that epochs and batch size are positive, the lr positive and finite, weight decay
    /// finite and non-negative, momentum in [0, 1).
    pub fn check(&self) -> Result<()> {
        if self.epochs == 0 || self.batch_size == 0 {
            return Err(DecoupleError::Options(
                "the stage needs at least one epoch and a positive batch size".into(),
            ));
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return Err(DecoupleError::Options(format!(
                "the stage's learning rate must be positive (got {})",
                self.lr
            )));
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return Err(DecoupleError::Options(format!(
                "the stage's weight decay must be >= 0 (got {})",
                self.weight_decay
            )));
        }
        if !(0.0..1.0).contains(&self.momentum) {
            return Err(DecoupleError::Options(format!(
                "the stage's momentum must be in [0, 1) (got {})",
                self.momentum
            )));
        }
        Ok(())
    }
}

/// The τ values searched on a validation split: 0, 0.1, …, 2.0.
pub fn tau_grid() -> Vec<f64> {
    (0..=TAU_GRID_STEPS).map(|i| i as f64 / 10.0).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_with_official_defaults_and_round_trip() {
        let cases = [
            ("crt", Stage::Crt),
            ("LWS", Stage::Lws),
            ("tau-norm", Stage::TauNorm { tau: None }),
            ("tau-norm:0.7", Stage::TauNorm { tau: Some(0.7) }),
            ("la", Stage::LogitAdjust { tau: None }),
            ("la:1.0", Stage::LogitAdjust { tau: Some(1.0) }),
            ("wb", Stage::WeightBalancing { thresh: 0.1 }),
            ("wb:0.2", Stage::WeightBalancing { thresh: 0.2 }),
        ];
        for (text, want) in cases {
            let got: Stage = text.parse().unwrap();
            assert_eq!(got, want, "{text}");
            assert_eq!(got.to_string().parse::<Stage>().unwrap(), want);
        }
        assert_eq!(
            Stage::LogitAdjust { tau: Some(0.5) }.folder(),
            "stage-la-0.5"
        );
        assert_eq!(Stage::WeightBalancing { thresh: 0.1 }.folder(), "stage-wb");
    }

    #[test]
    fn bad_names_and_parameters_are_errors() {
        for bad in ["ncm", "", "tau-norm:x", "la:-1", "la:nan", "crt:1", "wb:2"] {
            let e = bad.parse::<Stage>().unwrap_err().to_string();
            assert!(!e.is_empty(), "{bad}");
        }
        let e = "ncm".parse::<Stage>().unwrap_err().to_string();
        assert!(
            e.contains("unknown stage `ncm`") && e.contains("crt"),
            "{e}"
        );
    }

    #[test]
    fn official_recipes_and_cosine() {
        let crt = Stage::Crt.official_recipe().unwrap();
        assert_eq!((crt.epochs, crt.batch_size, crt.lr), (10, 512, 0.2));
        assert_eq!(crt.sampler, SamplerKind::ClassBalanced);
        assert_eq!(Stage::Lws.official_recipe().unwrap().epochs, 5);
        let wb = Stage::WeightBalancing { thresh: 0.1 }
            .official_recipe()
            .unwrap();
        assert_eq!((wb.epochs, wb.batch_size, wb.weight_decay), (10, 64, 0.1));
        assert_eq!(wb.sampler, SamplerKind::Shuffled);
        assert!(Stage::LogitAdjust { tau: None }.official_recipe().is_none());
        let small = Stage::Crt.recipe_for(DatasetName::FmnistLt).unwrap();
        assert_eq!((small.batch_size, small.lr), (128, 0.05));
        assert_eq!(Stage::Crt.recipe_for(DatasetName::Cifar100Lt).unwrap(), crt);
        // 0.2 · (1 + cos(π·5/10))/2 = 0.1 at epoch 6 of 10.
        assert!((crt.lr_at(1) - 0.2).abs() < 1e-12);
        assert!((crt.lr_at(6) - 0.1).abs() < 1e-12);
        assert_eq!(tau_grid().len(), 21);
        assert!((tau_grid()[7] - 0.7).abs() < 1e-12);
    }
}
