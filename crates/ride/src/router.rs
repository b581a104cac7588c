//! RIDE's stage 2: the expert-assignment ("routing") module, which lets a sample stop after the
//! experts it needs (docs/ride.md §4; `ea_resnet_cifar.py`, `EAResNet.py`, `EAResNeXt.py`).
//!
//! There is one yes/no decision per step `i = 0..E−2`: "should this sample also consult expert
//! `i+1`?". Its input is expert `i`'s pooled features, L2-normalised, through a per-step
//! `Linear(D → 16)` + ReLU, concatenated *after* the `k` largest values (descending) of the running
//! mean of the expert logits `0..=i`; a `Linear(k + 16 → 1)` shared by all steps gives the logit.
//! At inference a sample continues while `sigmoid(logit) > 0.5`; its prediction is the mean of
//! the experts it used.
//!
//! Training (the backbone frozen, BN in eval mode): with `S_i` the sum of the logits of experts
//! `0..=i` and `correct_i = [argmax S_i = y]`, the target of step `i` is
//! `t_i = ¬correct_i ∧ (correct_{i+1} ∨ … ∨ correct_{E−1})` ("the current ensemble is wrong, a larger
//! one is right") and the loss is the mean over steps of `BCEWithLogits(logit_i, t_i, pos_weight)`
//! (`pos_weight` 100 in every official config: it is the accuracy/compute knob).
//!
//! State-dict names are the official ones under the model's `backbone.` prefix:
//! `expert_help_pred_hidden_fcs.{i}.{weight,bias}` and `expert_help_pred_fc.{weight,bias}`.

use candle_core::{DType, Device, Tensor, D};
use candle_nn::{Init, Linear, Module, VarBuilder, VarMap};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;
use serde::{Deserialize, Serialize};

use crate::error::RideError;

type Result<T> = std::result::Result<T, RideError>;

/// Width of the per-step hidden layer (fixed at 16 in the official code).
pub const ROUTER_HIDDEN: usize = 16;

/// Shape and loss settings of the router.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouterConfig {
    /// Number of experts of the model it routes (≥ 2).
    pub num_experts: usize,
    /// Feature width of an expert (48 for reduced CIFAR RIDE, 1536 for reduced ResNeXt-50).
    pub feature_dim: usize,
    /// Number of classes.
    pub num_classes: usize,
    /// `k` of the top-k logit input (`top_choices_num`): 30 on CIFAR and ImageNet ResNet-10,
    /// 50 on ResNet-50 / ResNeXt-50 / iNat. At most `num_classes`.
    pub top_k: usize,
    /// Weight of the positive ("consult the next expert") class in the BCE loss: 100 officially.
    pub pos_weight: f64,
}

impl RouterConfig {
    /// The official setting for a model: `top_k` 30 for ≤ 100 classes (CIFAR), else 50, capped at
    /// the class count (docs/ride.md §4 and issue #28); `pos_weight` 100.
    pub fn official(num_experts: usize, feature_dim: usize, num_classes: usize) -> Self {
        let k = if num_classes <= 100 { 30 } else { 50 };
        Self {
            num_experts,
            feature_dim,
            num_classes,
            top_k: k.min(num_classes),
            pos_weight: 100.0,
        }
    }

    fn validate(&self) -> Result<()> {
        let bad = |field: &'static str, value: f64, expected: &'static str| {
            Err(RideError::OutOfRange {
                field,
                value,
                expected,
            })
        };
        if self.num_experts < 2 {
            return bad(
                "num_experts",
                self.num_experts as f64,
                "at least 2 to route",
            );
        }
        if self.feature_dim == 0 {
            return bad("feature_dim", 0.0, "positive");
        }
        if self.top_k == 0 || self.top_k > self.num_classes {
            return bad(
                "top_k",
                self.top_k as f64,
                "between 1 and the number of classes",
            );
        }
        if !self.pos_weight.is_finite() {
            return Err(RideError::NonFinite {
                field: "pos_weight",
                value: self.pos_weight,
            });
        }
        if self.pos_weight <= 0.0 {
            return bad("pos_weight", self.pos_weight, "positive");
        }
        Ok(())
    }
}

/// What routing predicted for a batch.
#[derive(Debug)]
pub struct Routed {
    /// Mean logits of the experts each sample used, `[B, C]`.
    pub logits: Tensor,
    /// Number of experts each sample used (1 ..= E).
    pub experts_used: Vec<usize>,
}

/// The expert-assignment head (see the module docs).
#[derive(Clone, Debug)]
pub struct ExpertRouter {
    cfg: RouterConfig,
    hidden: Vec<Linear>,
    fc: Linear,
}

impl ExpertRouter {
    /// Creates (or fetches) the head's tensors under `vb` (the model's `backbone` prefix).
    pub fn new(cfg: &RouterConfig, vb: VarBuilder) -> Result<Self> {
        cfg.validate()?;
        let lin = |vb: VarBuilder, i: usize, o: usize| -> Result<Linear> {
            let w = vb.get_with_hints((o, i), "weight", Init::Const(0.0))?;
            let b = vb.get_with_hints(o, "bias", Init::Const(0.0))?;
            Ok(Linear::new(w, Some(b)))
        };
        let hidden = (0..cfg.num_experts - 1)
            .map(|i| {
                lin(
                    vb.pp(format!("expert_help_pred_hidden_fcs.{i}")),
                    cfg.feature_dim,
                    ROUTER_HIDDEN,
                )
            })
            .collect::<Result<Vec<_>>>()?;
        let fc = lin(vb.pp("expert_help_pred_fc"), cfg.top_k + ROUTER_HIDDEN, 1)?;
        Ok(Self {
            cfg: cfg.clone(),
            hidden,
            fc,
        })
    }

    /// A new head with seeded weights in a fresh VarMap (names under `backbone.`). Weights are
    /// Kaiming-normal (fan-in, gain √2) as the official CIFAR EA model initialises them, biases
    /// PyTorch's default `U(±1/√fan_in)`; the same seed gives bit-identical weights.
    pub fn seeded(cfg: &RouterConfig, seed: u64, device: &Device) -> Result<(VarMap, Self)> {
        cfg.validate()?;
        let varmap = VarMap::new();
        let router = Self::new(
            cfg,
            VarBuilder::from_varmap(&varmap, DType::F32, device).pp("backbone"),
        )?;
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut names: Vec<String> = varmap.data().lock().unwrap().keys().cloned().collect();
        names.sort();
        for name in names {
            let var = varmap.data().lock().unwrap()[&name].clone();
            let dims = var.dims().to_vec();
            let fan_in = if name.ends_with(".bias") {
                let w = name.replace(".bias", ".weight");
                varmap.data().lock().unwrap()[&w].dims()[1]
            } else {
                dims[1]
            };
            let n: usize = dims.iter().product();
            let values: Vec<f32> = if name.ends_with(".weight") {
                let std = (2.0 / fan_in as f64).sqrt() as f32;
                (0..n)
                    .map(|_| rng.sample::<f32, _>(StandardNormal) * std)
                    .collect()
            } else {
                let b = (1.0 / (fan_in as f64).sqrt()) as f32;
                (0..n).map(|_| rng.random::<f32>() * 2.0 * b - b).collect()
            };
            var.set(&Tensor::from_vec(values, dims, device)?)?;
        }
        Ok((varmap, router))
    }

    /// The head's settings.
    pub fn config(&self) -> &RouterConfig {
        &self.cfg
    }

    /// Step `step`'s decision logits `[B]` ("consult expert `step + 1`" when > 0) from expert
    /// `step`'s pooled features `[B, D]` and the running mean logits of experts `0..=step`
    /// `[B, C]`.
    pub fn step_logits(
        &self,
        step: usize,
        features: &Tensor,
        mean_logits: &Tensor,
    ) -> Result<Tensor> {
        let hidden = self.hidden.get(step).ok_or(RideError::OutOfRange {
            field: "router step",
            value: step as f64,
            expected: "below num_experts - 1",
        })?;
        let (b, d) = features
            .dims2()
            .map_err(|_| shape("features", "[B, D]", features))?;
        if d != self.cfg.feature_dim {
            return Err(shape("features", "[B, feature_dim]", features));
        }
        if mean_logits.dims() != [b, self.cfg.num_classes] {
            return Err(shape("mean_logits", "[B, num_classes]", mean_logits));
        }
        // Plain L2 normalisation, no epsilon (as the official code).
        let norm = features.sqr()?.sum_keepdim(1)?.sqrt()?;
        let h = hidden.forward(&features.broadcast_div(&norm)?)?.relu()?;
        let (sorted, _) = mean_logits.sort_last_dim(false)?;
        let top = sorted.narrow(1, 0, self.cfg.top_k)?;
        let input = Tensor::cat(&[&top, &h], 1)?;
        Ok(self.fc.forward(&input)?.squeeze(1)?)
    }

    /// The routing targets `[B, E−1]` (0/1 as f32): `t_i = ¬correct_i ∧ any(correct_{i+1..})`,
    /// `correct_i` = the summed logits of experts `0..=i` put `targets` first (ties go to the
    /// lowest class, as `argmax`).
    pub fn targets(expert_logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
        let (b, e, _) = expert_logits
            .dims3()
            .map_err(|_| shape("expert_logits", "[B, E, C]", expert_logits))?;
        let y: Vec<u32> = targets
            .to_dtype(DType::U32)?
            .to_vec1()
            .map_err(|_| shape("targets", "[B]", targets))?;
        if y.len() != b {
            return Err(shape("targets", "[B]", targets));
        }
        let classes = expert_logits.dim(2)?;
        if let Some((index, &target)) = y.iter().enumerate().find(|(_, &t)| t as usize >= classes) {
            return Err(RideError::TargetOutOfRange {
                index,
                target: target as i64,
                classes,
            });
        }
        let cum = expert_logits.to_dtype(DType::F32)?.cumsum(1)?;
        let pred: Vec<Vec<u32>> = cum.argmax(D::Minus1)?.to_vec2()?;
        let mut t = Vec::with_capacity(b * (e - 1));
        for (row, &label) in pred.iter().zip(&y) {
            let correct: Vec<bool> = row.iter().map(|&p| p == label).collect();
            for i in 0..e - 1 {
                let later = correct[i + 1..].iter().any(|&c| c);
                t.push(if !correct[i] && later { 1f32 } else { 0f32 });
            }
        }
        Ok(Tensor::from_vec(t, (b, e - 1), expert_logits.device())?)
    }

    /// The stage-2 loss: mean over steps and samples of
    /// `BCEWithLogits(logit_i, t_i, pos_weight) = −[P·t·log σ(x) + (1 − t)·log(1 − σ(x))]`,
    /// from every expert's logits `[B, E, C]` and pooled features `[B, E, D]` (all experts run
    /// at training time, as officially).
    pub fn loss(
        &self,
        expert_logits: &Tensor,
        features: &Tensor,
        targets: &Tensor,
    ) -> Result<Tensor> {
        Ok(self.loss_and_targets(expert_logits, features, targets)?.0)
    }

    /// [`ExpertRouter::loss`] and the routing targets `[B, E−1]` it was computed against (so a
    /// trainer can log the share of positives without deriving them a second time).
    pub fn loss_and_targets(
        &self,
        expert_logits: &Tensor,
        features: &Tensor,
        targets: &Tensor,
    ) -> Result<(Tensor, Tensor)> {
        let e = self.cfg.num_experts;
        let (b, fe, _) = features
            .dims3()
            .map_err(|_| shape("features", "[B, E, D]", features))?;
        if expert_logits.dims() != [b, e, self.cfg.num_classes] || fe != e {
            return Err(shape(
                "expert_logits",
                "[B, E, C] matching features",
                expert_logits,
            ));
        }
        let t = Self::targets(expert_logits, targets)?;
        let cum = expert_logits.cumsum(1)?;
        let mut total: Option<Tensor> = None;
        for i in 0..e - 1 {
            let mean = (cum.narrow(1, i, 1)?.squeeze(1)? / (i + 1) as f64)?;
            let x = self.step_logits(i, &features.narrow(1, i, 1)?.squeeze(1)?, &mean)?;
            let ti = t.narrow(1, i, 1)?.squeeze(1)?;
            // log σ(x) = −softplus(−x), log(1 − σ(x)) = −softplus(x); softplus(z) =
            // max(z, 0) + log(1 + exp(−|z|)) keeps both finite for any x.
            let softplus = |z: &Tensor| -> candle_core::Result<Tensor> {
                z.relu()? + (z.abs()?.neg()?.exp()? + 1.0)?.log()?
            };
            let pos = (ti.clone() * self.cfg.pos_weight)?.mul(&softplus(&x.neg()?)?)?;
            let neg = ti.affine(-1.0, 1.0)?.mul(&softplus(&x)?)?;
            let step = (pos + neg)?.mean_all()?;
            total = Some(match total {
                None => step,
                Some(t) => (t + step)?,
            });
        }
        Ok(((total.expect("num_experts >= 2") / (e - 1) as f64)?, t))
    }

    /// Routed prediction for `n` samples. `forward(expert, rows)` returns that expert's logits
    /// `[len, C]` and pooled features `[len, D]` for the listed rows (it is called for expert 0
    /// on every row, then for each later expert only on the rows still active). A row continues
    /// to expert `i + 1` while `sigmoid(step_logits(i)) > 0.5`, i.e. the logit is > 0.
    pub fn route<F>(&self, n: usize, mut forward: F) -> Result<Routed>
    where
        F: FnMut(usize, &[u32]) -> Result<(Tensor, Tensor)>,
    {
        let all: Vec<u32> = (0..n as u32).collect();
        let (logits, mut feats) = forward(0, &all)?;
        let dev = logits.device().clone();
        let mut sum = logits.to_dtype(DType::F32)?;
        let mut used = vec![1usize; n];
        let mut active = all;
        for step in 0..self.cfg.num_experts - 1 {
            if active.is_empty() {
                break;
            }
            let idx = Tensor::new(active.as_slice(), &dev)?;
            let mean = (sum.index_select(&idx, 0)? / (step + 1) as f64)?;
            let go: Vec<f32> = self
                .step_logits(step, &feats.to_dtype(DType::F32)?, &mean)?
                .to_vec1()?;
            let next: Vec<u32> = active
                .iter()
                .zip(&go)
                .filter(|(_, &g)| g > 0.0)
                .map(|(&row, _)| row)
                .collect();
            if next.is_empty() {
                break;
            }
            let (l, f) = forward(step + 1, &next)?;
            let rows = Tensor::new(next.as_slice(), &dev)?;
            sum = sum.index_add(&rows, &l.to_dtype(DType::F32)?, 0)?;
            for &r in &next {
                used[r as usize] += 1;
            }
            // Expert `step + 1`'s features of the rows that went on, in `next` order.
            feats = f;
            active = next;
        }
        let counts: Vec<f32> = used.iter().map(|&u| u as f32).collect();
        let counts = Tensor::from_vec(counts, (n, 1), &dev)?;
        Ok(Routed {
            logits: sum.broadcast_div(&counts)?,
            experts_used: used,
        })
    }
}

fn shape(what: &'static str, expected: &str, got: &Tensor) -> RideError {
    RideError::Shape {
        what,
        expected: expected.to_string(),
        got: format!("{:?} {:?}", got.dims(), got.dtype()),
    }
}
