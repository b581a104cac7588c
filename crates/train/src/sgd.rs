//! SGD with momentum, Nesterov and coupled weight decay, with PyTorch's semantics.
//!
//! candle-nn's `SGD` has no momentum, and candle-optimisers is pinned to candle 0.10
//! (`docs/candle.md` §2), so the few lines are written here.

use std::collections::BTreeMap;

use candle_core::{backprop::GradStore, Tensor, Var};

use crate::TrainError;

/// Hyper-parameters of [`Sgd`].
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SgdConfig {
    /// Momentum μ (0.9 in every official config).
    pub momentum: f64,
    /// Coupled L2 weight decay, added to the gradient (`torch.optim.SGD(weight_decay=…)`).
    pub weight_decay: f64,
    /// Nesterov momentum (RIDE, SADE, TLC all use it).
    pub nesterov: bool,
}

impl Default for SgdConfig {
    fn default() -> Self {
        Self {
            momentum: 0.9,
            weight_decay: 5e-4,
            nesterov: true,
        }
    }
}

/// A learning rate of its own for the parameters whose names start with `prefix`: `scale` times
/// the run's (scheduled) learning rate. PyTorch's SGD parameter groups, as SADE's Places-LT
/// trainer builds them (classifiers at 10× the rest); the schedule multiplies every group alike,
/// as `MultiStepLR` does.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LrGroup {
    /// Parameter-name prefix (`backbone.linears` for the classifiers; `""` matches every name).
    pub prefix: String,
    /// Multiplier of the learning rate for these parameters (≥ 0).
    pub scale: f64,
}

/// `torch.optim.SGD(params, lr, momentum, weight_decay, nesterov, dampening=0)`.
///
/// One step, for each parameter `w` with gradient `g`:
/// `g ← g + wd·w`; `buf ← g` on the first step, else `buf ← μ·buf + g`;
/// `d ← g + μ·buf` (Nesterov) or `d ← buf`; `w ← w − lr·d`.
/// Parameters without a gradient (BN running statistics, unused experts) are left untouched,
/// and so is their momentum, exactly as PyTorch does.
pub struct Sgd {
    params: Vec<(String, Var)>,
    momentum: BTreeMap<String, Tensor>,
    cfg: SgdConfig,
    lr: f64,
    /// Per parameter (in `params` order): its multiple of `lr` ([`LrGroup`]; 1 by default).
    lr_scale: Vec<f64>,
}

impl Sgd {
    /// An optimizer over the named trainable parameters.
    pub fn new(params: Vec<(String, Var)>, cfg: SgdConfig) -> Result<Self, TrainError> {
        if !(0.0..1.0).contains(&cfg.momentum)
            || cfg.weight_decay.is_nan()
            || cfg.weight_decay < 0.0
        {
            return Err(TrainError::Config(format!(
                "sgd needs 0 <= momentum < 1 and weight_decay >= 0 (got {} and {})",
                cfg.momentum, cfg.weight_decay
            )));
        }
        if cfg.nesterov && cfg.momentum == 0.0 {
            return Err(TrainError::Config(
                "nesterov momentum requires momentum > 0".into(),
            ));
        }
        let lr_scale = vec![1.0; params.len()];
        Ok(Self {
            params,
            momentum: BTreeMap::new(),
            cfg,
            lr: 0.0,
            lr_scale,
        })
    }

    /// Gives each parameter the scale of the first group whose prefix its name starts with
    /// (1 when none does). A group that matches no parameter is an error: it would be a typo
    /// that silently trains everything at one rate.
    pub fn set_lr_groups(&mut self, groups: &[LrGroup]) -> Result<(), TrainError> {
        for g in groups {
            if !(g.scale >= 0.0 && g.scale.is_finite()) {
                return Err(TrainError::Config(format!(
                    "lr group `{}`: the scale must be a finite number >= 0 (got {})",
                    g.prefix, g.scale
                )));
            }
        }
        let mut used = vec![false; groups.len()];
        for (scale, (name, _)) in self.lr_scale.iter_mut().zip(&self.params) {
            *scale = match groups.iter().position(|g| name.starts_with(&g.prefix)) {
                Some(i) => {
                    used[i] = true;
                    groups[i].scale
                }
                None => 1.0,
            };
        }
        if let Some(i) = used.iter().position(|u| !u) {
            return Err(TrainError::Config(format!(
                "lr group `{}` matches no trainable parameter (names look like `{}`)",
                groups[i].prefix,
                self.params.first().map_or("", |(n, _)| n.as_str())
            )));
        }
        Ok(())
    }

    /// Each parameter's multiple of the learning rate, in [`Sgd::params`] order.
    pub fn lr_scales(&self) -> &[f64] {
        &self.lr_scale
    }

    /// Sets the learning rate used by the next [`Sgd::step`].
    pub fn set_lr(&mut self, lr: f64) {
        self.lr = lr;
    }

    /// The current learning rate.
    pub fn lr(&self) -> f64 {
        self.lr
    }

    /// The parameters this optimizer updates.
    pub fn params(&self) -> &[(String, Var)] {
        &self.params
    }

    /// Applies one update from `grads`.
    pub fn step(&mut self, grads: &GradStore) -> Result<(), TrainError> {
        let g: Vec<Option<Tensor>> = self
            .params
            .iter()
            .map(|(_, v)| grads.get(v.as_tensor()).cloned())
            .collect();
        self.step_with(&g)
    }

    /// Applies one update from gradients given in the order of [`Sgd::params`] (`None`: no gradient).
    pub fn step_with(&mut self, grads: &[Option<Tensor>]) -> Result<(), TrainError> {
        let SgdConfig {
            momentum: mu,
            weight_decay: wd,
            nesterov,
        } = self.cfg;
        for (((name, var), g), scale) in self.params.iter().zip(grads).zip(&self.lr_scale) {
            let Some(g) = g else { continue };
            let mut g = g.clone();
            if wd != 0.0 {
                g = (g + (var.as_tensor() * wd)?)?;
            }
            let d = if mu != 0.0 {
                let buf = match self.momentum.get(name) {
                    Some(buf) => ((buf * mu)? + &g)?,
                    None => g.clone(),
                };
                let d = if nesterov {
                    (&g + (&buf * mu)?)?
                } else {
                    buf.clone()
                };
                // Gradients carry candle's op graph (they are computed from tracked forward
                // tensors); a buffer kept across steps must be detached, or every step's graph
                // stays alive through the chain of buffers.
                self.momentum.insert(name.clone(), buf.detach());
                d
            } else {
                g
            };
            var.set(&(var.as_tensor() - (d * (self.lr * scale))?)?)?;
        }
        Ok(())
    }

    /// The momentum buffers by parameter name, for checkpoints.
    pub fn state(&self) -> &BTreeMap<String, Tensor> {
        &self.momentum
    }

    /// Restores momentum buffers saved by [`Sgd::state`].
    pub fn load_state(&mut self, state: BTreeMap<String, Tensor>) -> Result<(), TrainError> {
        for (name, buf) in &state {
            let Some((_, var)) = self.params.iter().find(|(n, _)| n == name) else {
                return Err(TrainError::Checkpoint(format!(
                    "optimizer state has a buffer for `{name}`, which is not a trainable parameter"
                )));
            };
            if buf.dims() != var.dims() {
                return Err(TrainError::Checkpoint(format!(
                    "optimizer buffer `{name}` has shape {:?}, the parameter {:?}",
                    buf.dims(),
                    var.dims()
                )));
            }
        }
        self.momentum = state;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// Parameter groups: the classifier at the run's lr, the rest at a tenth of it (SADE's
    /// Places-LT groups). Plain SGD, g = 1 for both: each moves by its own lr.
    #[test]
    fn lr_groups_scale_each_parameters_step() -> Result<(), TrainError> {
        let head = Var::new(&[1.0f32], &Device::Cpu)?;
        let trunk = Var::new(&[1.0f32], &Device::Cpu)?;
        let cfg = SgdConfig {
            momentum: 0.0,
            weight_decay: 0.0,
            nesterov: false,
        };
        let params = vec![
            ("backbone.linears.0.weight".into(), head.clone()),
            ("backbone.layer4s.0.0.conv1.weight".into(), trunk.clone()),
        ];
        let groups = [
            LrGroup {
                prefix: "backbone.linears".into(),
                scale: 1.0,
            },
            LrGroup {
                prefix: "".into(),
                scale: 0.1,
            },
        ];
        let mut opt = Sgd::new(params.clone(), cfg)?;
        opt.set_lr_groups(&groups)?;
        assert_eq!(opt.lr_scales(), [1.0, 0.1]);
        opt.set_lr(0.01);
        let loss = (head.as_tensor() + trunk.as_tensor())?.sum_all()?;
        opt.step(&loss.backward()?)?;
        assert!((head.as_tensor().to_vec1::<f32>()?[0] - 0.99).abs() < 1e-7);
        assert!((trunk.as_tensor().to_vec1::<f32>()?[0] - 0.999).abs() < 1e-7);

        // A prefix that matches nothing, or a negative scale, is refused.
        let mut opt = Sgd::new(params, cfg)?;
        let typo = [LrGroup {
            prefix: "backbone.linear.".into(),
            scale: 1.0,
        }];
        let e = opt.set_lr_groups(&typo).unwrap_err().to_string();
        assert!(e.contains("matches no trainable parameter"), "{e}");
        let negative = [LrGroup {
            prefix: "".into(),
            scale: -1.0,
        }];
        assert!(opt.set_lr_groups(&negative).is_err());
        Ok(())
    }

    /// Hand-computed: w=1, loss = 0.5·w²·k (g = k·w), lr 0.1, μ 0.9, wd 0.1, Nesterov.
    /// step 1: g = 1 + 0.1 = 1.1, buf = 1.1, d = 1.1 + 0.99 = 2.09, w = 1 − 0.209 = 0.791
    /// step 2: g = 0.791 + 0.0791 = 0.8701, buf = 0.99 + 0.8701 = 1.8601,
    ///         d = 0.8701 + 1.67409 = 2.54419, w = 0.791 − 0.254419 = 0.536581
    #[test]
    fn nesterov_steps_match_hand_computation() -> Result<(), TrainError> {
        let w = Var::new(&[1.0f32], &Device::Cpu)?;
        let cfg = SgdConfig {
            momentum: 0.9,
            weight_decay: 0.1,
            nesterov: true,
        };
        let mut opt = Sgd::new(vec![("w".into(), w.clone())], cfg)?;
        opt.set_lr(0.1);
        let mut got = vec![];
        for _ in 0..2 {
            let loss = (w.as_tensor().sqr()? * 0.5)?.sum_all()?;
            opt.step(&loss.backward()?)?;
            got.push(w.as_tensor().to_vec1::<f32>()?[0]);
        }
        assert!((got[0] - 0.791).abs() < 1e-6, "{got:?}");
        assert!((got[1] - 0.536581).abs() < 1e-6, "{got:?}");
        Ok(())
    }

    /// Plain heavy-ball momentum without decay: buf = g, then μ·buf + g.
    #[test]
    fn heavy_ball_without_decay() -> Result<(), TrainError> {
        let w = Var::new(&[2.0f32], &Device::Cpu)?;
        let cfg = SgdConfig {
            momentum: 0.5,
            weight_decay: 0.0,
            nesterov: false,
        };
        let mut opt = Sgd::new(vec![("w".into(), w.clone())], cfg)?;
        opt.set_lr(1.0);
        // loss = 3w → g = 3 each step. step 1: w = 2 − 3 = −1; step 2: buf = 4.5, w = −5.5.
        for _ in 0..2 {
            let loss = (w.as_tensor() * 3.0)?.sum_all()?;
            opt.step(&loss.backward()?)?;
        }
        assert_eq!(w.as_tensor().to_vec1::<f32>()?, vec![-5.5]);
        Ok(())
    }

    #[test]
    fn parameters_without_gradient_are_untouched() -> Result<(), TrainError> {
        let w = Var::new(&[1.0f32], &Device::Cpu)?;
        let frozen = Var::new(&[7.0f32], &Device::Cpu)?;
        let mut opt = Sgd::new(
            vec![("w".into(), w.clone()), ("frozen".into(), frozen.clone())],
            SgdConfig::default(),
        )?;
        opt.set_lr(0.1);
        let loss = w.as_tensor().sum_all()?;
        opt.step(&loss.backward()?)?;
        assert_eq!(frozen.as_tensor().to_vec1::<f32>()?, vec![7.0]);
        assert!(opt.state().contains_key("w") && !opt.state().contains_key("frozen"));
        Ok(())
    }

    /// Regression: momentum buffers must not keep the autograd graph of past steps alive.
    #[test]
    fn momentum_buffers_hold_no_graph() -> Result<(), TrainError> {
        let w = Var::new(&[1.0f32, 2.0], &Device::Cpu)?;
        let mut opt = Sgd::new(vec![("w".into(), w.clone())], SgdConfig::default())?;
        opt.set_lr(0.1);
        for _ in 0..2 {
            let loss = (w.as_tensor().sqr()? * w.as_tensor())?.sum_all()?;
            opt.step(&loss.backward()?)?;
        }
        assert!(!opt.state()["w"].track_op());
        Ok(())
    }

    #[test]
    fn invalid_hyper_parameters_are_rejected() {
        let bad = SgdConfig {
            momentum: 1.5,
            ..Default::default()
        };
        assert!(matches!(Sgd::new(vec![], bad), Err(TrainError::Config(_))));
        let bad = SgdConfig {
            momentum: 0.0,
            nesterov: true,
            weight_decay: 0.0,
        };
        assert!(matches!(Sgd::new(vec![], bad), Err(TrainError::Config(_))));
    }
}
