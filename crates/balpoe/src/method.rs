//! BalPoE as a longtail method: the per-expert logit-adjusted loss as the training objective,
//! the product of the experts as the prediction (docs/balpoe.md §2–§3).

use candle_core::{Device, Tensor};
use longtail_backbone::ExpertOutput;
use longtail_data::Batch;
use longtail_train::{method_error, Method, MethodKind, Preset, RunConfig, TrainError};

use crate::{product_of_experts, BalPoeLoss, BalPoeSettings};

/// BalPoE as the registry knows it (`[method] name = "balpoe"`, settings: [`BalPoeSettings`]).
/// Mixup, which every official config turns on, is the engine's `[optim] mixup_alpha`.
#[derive(Debug, Default, Clone, Copy)]
pub struct BalPoe;

impl BalPoe {
    /// The settings of `cfg` and the τ of each of its experts, checked.
    pub fn settings(cfg: &RunConfig) -> Result<(BalPoeSettings, Vec<f64>), TrainError> {
        let s: BalPoeSettings = cfg.method.settings()?;
        let taus = s
            .taus(cfg.model.num_experts)
            .map_err(|e| method_error("balpoe", e))?;
        Ok((s, taus))
    }
}

impl MethodKind for BalPoe {
    fn name(&self) -> &'static str {
        "balpoe"
    }

    fn summary(&self) -> &'static str {
        "BalPoE (Sanchez Aimar et al., CVPR 2023): experts with logit-adjusted losses of biases τ_e·log π, averaged into a balanced product of experts; mixup"
    }

    fn presets(&self) -> &'static [Preset] {
        crate::presets::PRESETS
    }

    fn check(&self, cfg: &RunConfig) -> Result<(), TrainError> {
        Self::settings(cfg).map(|_| ())
    }

    fn build(
        &self,
        cfg: &RunConfig,
        class_counts: &[usize],
        device: &Device,
    ) -> Result<Box<dyn Method>, TrainError> {
        let (s, taus) = Self::settings(cfg)?;
        let loss =
            BalPoeLoss::new(&taus, class_counts, device).map_err(|e| method_error("balpoe", e))?;
        BalPoeMethod::new(loss, s.correct_residual_bias, device)
            .map(|m| Box::new(m) as Box<dyn Method>)
            .map_err(|e| method_error("balpoe", e))
    }
}

/// BalPoE's loss as a training objective; predicts with the product of the experts
/// ([`product_of_experts`]), less the residual bias when asked.
pub struct BalPoeMethod {
    loss: BalPoeLoss,
    /// `(1 − τ̄)·log π` as `[1, C]`, when `correct_residual_bias` is on.
    residual: Option<Tensor>,
}

impl BalPoeMethod {
    /// The method for `loss`; `correct_residual_bias` subtracts `(1 − τ̄)·log π` from the
    /// prediction ([`BalPoeSettings::correct_residual_bias`]).
    pub fn new(
        loss: BalPoeLoss,
        correct_residual_bias: bool,
        device: &Device,
    ) -> Result<Self, crate::BalPoeError> {
        let residual = if correct_residual_bias {
            let r: Vec<f32> = loss.residual_bias().iter().map(|&v| v as f32).collect();
            let c = r.len();
            Some(Tensor::from_vec(r, (1, c), device)?)
        } else {
            None
        };
        Ok(Self { loss, residual })
    }

    /// The loss.
    pub fn loss_fn(&self) -> &BalPoeLoss {
        &self.loss
    }
}

impl Method for BalPoeMethod {
    fn name(&self) -> &str {
        "balpoe"
    }

    fn loss(&self, out: &ExpertOutput, batch: &Batch) -> candle_core::Result<Tensor> {
        self.loss.forward(&out.expert_logits, &batch.labels)
    }

    fn predict(&self, out: &ExpertOutput) -> candle_core::Result<Tensor> {
        match &self.residual {
            None => Ok(out.logits.clone()),
            Some(_) => product_of_experts(&out.expert_logits, self.residual.as_ref()),
        }
    }
}
