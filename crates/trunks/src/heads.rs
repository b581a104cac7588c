//! Multi-expert heads on a frozen trunk: E light classifiers over the cached trunk feature,
//! trained with any registered method's loss (RIDE, SADE, TLC, CE).
//!
//! [`ExpertHeads`] gives the same [`ExpertOutput`] as the ResNet backbone
//! (`longtail_backbone::MultiExpert::forward_t`): every expert's logits `[B, E, C]`, their mean
//! `[B, C]` and the feature each classifier read `[B, E, D]`. So a [`longtail_train::Method`]
//! built by its `MethodKind::build` trains the heads unchanged; a method only reads the
//! expert logits and the batch's labels.
//!
//! Each expert is an optional residual bottleneck adapter `x + W_up·relu(W_down·x + b) + b'`
//! (its own, per expert; `W_up` starts at zero, so an expert starts as its classifier alone)
//! followed by a classifier: the cosine classifier of the backbone and of RIDE / SADE
//! (`NormedLinear`: `s · normalize(x) @ normalize(W, dim=0)`, W `[D, C]`) or `nn.Linear`.
//!
//! [`train_heads`] is the epoch loop over a feature set: the engine's [`Sgd`], the run config's
//! schedule ([`longtail_train::LrSchedule::lr`]) and sampler (`longtail_data::sampler::epoch_order`:
//! seeded, the order depends only on seed and epoch), the method's `begin_epoch`, `loss` and
//! `predict`. [`evaluate_heads`] gives the engine's [`Evaluation`] (many / medium / few, every
//! expert, the `[N, E, C]` logits for test-time aggregation). [`save_heads`] / [`load_heads`]
//! write and read the heads as an atomic safetensors checkpoint with their config and the
//! trunk in its metadata.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use candle_core::{DType, Device, Tensor, D};
use candle_nn::{Init, Module, VarBuilder, VarMap};
use longtail_backbone::ExpertOutput;
use longtail_data::sampler::epoch_order;
use longtail_data::Batch;
use longtail_metrics::{argmax_rows, classification_report, Shot};
use longtail_train::{checkpoint, Evaluation, Method, RunConfig, Sgd, TrainConfig, TrainError};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::cache::CachedFeatures;
use crate::error::{Result, TrunkError};

/// The `format` metadata value of a heads checkpoint (next to the engine's own `format`).
pub const HEADS_FORMAT: &str = "longtail-heads/1";

/// An expert's classifier.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum HeadClassifier {
    /// Cosine classifier with scale s, as the backbone's `NormedLinear` (weight `[D, C]`).
    Cosine {
        /// The scale s (30 in every official RIDE / SADE config).
        scale: f64,
    },
    /// `x Wᵀ + b`, W `[C, D]`.
    Linear,
}

/// The shape of a set of expert heads.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeadsConfig {
    /// Experts E.
    pub num_experts: usize,
    /// Classes C.
    pub num_classes: usize,
    /// Width D of the trunk feature the heads read.
    pub feature_dim: usize,
    /// Every expert's classifier.
    pub classifier: HeadClassifier,
    /// Hidden width of each expert's residual bottleneck adapter; `None`: no adapter.
    #[serde(default)]
    pub adapter: Option<usize>,
    /// Standardise every feature dimension with the training set's mean and standard deviation
    /// before the experts (statistics kept in the heads, fitted by [`train_heads`]). A frozen
    /// trunk's features share a large common component (the CLS token's own embedding), which a
    /// cosine classifier cannot remove; standardising it is the usual linear-probe practice.
    #[serde(default = "yes")]
    pub standardize: bool,
}

fn yes() -> bool {
    true
}

impl HeadsConfig {
    /// E cosine heads (s = 30) without adapters.
    pub fn new(num_experts: usize, num_classes: usize, feature_dim: usize) -> Self {
        Self {
            num_experts,
            num_classes,
            feature_dim,
            classifier: HeadClassifier::Cosine { scale: 30.0 },
            adapter: None,
            standardize: true,
        }
    }

    /// The heads a run config asks for on features of width `feature_dim`: its experts and
    /// classes (`model.num_experts`, `model.num_classes`) and its classifier (`model.use_norm`
    /// with `model.scale`, else linear), no adapter, standardised features.
    pub fn for_run(cfg: &RunConfig, feature_dim: usize) -> Self {
        Self {
            num_experts: cfg.model.num_experts,
            num_classes: cfg.model.num_classes,
            feature_dim,
            classifier: if cfg.model.use_norm {
                HeadClassifier::Cosine {
                    scale: cfg.model.scale,
                }
            } else {
                HeadClassifier::Linear
            },
            adapter: None,
            standardize: true,
        }
    }

    /// Checks the sizes and the scale.
    pub fn check(&self) -> Result<()> {
        let bad = |reason: String| Err(TrunkError::BadHeads(reason));
        if self.num_experts == 0 || self.num_classes < 2 || self.feature_dim == 0 {
            return bad(format!(
                "heads need at least 1 expert, 2 classes and a feature width (got {} experts, {} classes, width {})",
                self.num_experts, self.num_classes, self.feature_dim
            ));
        }
        if let HeadClassifier::Cosine { scale } = self.classifier {
            if !(scale > 0.0 && scale.is_finite()) {
                return bad(format!("the cosine scale must be positive (got {scale})"));
            }
        }
        if self.adapter == Some(0) {
            return bad("an adapter needs a hidden width of at least 1".into());
        }
        let params = self.num_parameters() as f64;
        if params > 1e10 {
            return bad(format!("{params:.3e} parameters is too many for heads"));
        }
        Ok(())
    }

    /// Trainable scalars of all experts.
    pub fn num_parameters(&self) -> usize {
        let (d, c) = (self.feature_dim, self.num_classes);
        let classifier = match self.classifier {
            HeadClassifier::Cosine { .. } => d * c,
            HeadClassifier::Linear => d * c + c,
        };
        let adapter = self.adapter.map_or(0, |a| 2 * a * d + a + d);
        self.num_experts * (classifier + adapter)
    }

    /// One line: `3 × cosine (s 30) heads, 10 classes, on 384-wide features`.
    pub fn describe(&self) -> String {
        let classifier = match self.classifier {
            HeadClassifier::Cosine { scale } => format!("cosine (s {scale})"),
            HeadClassifier::Linear => "linear".into(),
        };
        let adapter = self
            .adapter
            .map_or(String::new(), |a| format!(" with {a}-wide adapters"));
        let std = if self.standardize {
            "standardised "
        } else {
            ""
        };
        format!(
            "{} × {classifier} heads{adapter}, {} classes, on {std}{}-wide features ({} parameters)",
            self.num_experts,
            self.num_classes,
            self.feature_dim,
            self.num_parameters()
        )
    }

    /// The config as JSON (the `heads` entry of a checkpoint's metadata).
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("JSON of numbers")
    }

    /// Reads [`HeadsConfig::to_json`]'s output, checked.
    pub fn from_json(text: &str) -> Result<Self> {
        let cfg: Self = serde_json::from_str(text)
            .map_err(|e| TrunkError::BadHeads(format!("heads config: {e}")))?;
        cfg.check()?;
        Ok(cfg)
    }
}

/// `v / max(‖v‖₂, 1e-12)` along `dim`, as PyTorch `F.normalize` (and the backbone's classifier).
fn l2_normalize(v: &Tensor, dim: usize) -> candle_core::Result<Tensor> {
    let norm = v.sqr()?.sum_keepdim(dim)?.sqrt()?.maximum(1e-12)?;
    v.broadcast_div(&norm)
}

#[derive(Clone, Debug)]
enum Classifier {
    Cosine { weight: Tensor, scale: f64 },
    Linear(candle_nn::Linear),
}

impl Classifier {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Classifier::Cosine { weight, scale } => {
                l2_normalize(x, 1)?.matmul(&l2_normalize(weight, 0)?)? * *scale
            }
            Classifier::Linear(l) => l.forward(x),
        }
    }
}

#[derive(Clone, Debug)]
struct Adapter {
    down: candle_nn::Linear,
    up: candle_nn::Linear,
}

#[derive(Clone, Debug)]
struct Head {
    adapter: Option<Adapter>,
    classifier: Classifier,
}

/// E expert heads over a trunk feature (see the module docs).
///
/// Parameter names: `experts.{e}.classifier.weight` (`[D, C]` cosine, `[C, D]` linear, plus
/// `.bias`), `experts.{e}.adapter.down.{weight,bias}` (`[A, D]`, `[A]`) and
/// `experts.{e}.adapter.up.{weight,bias}` (`[D, A]`, `[D]`); with standardisation also
/// [`NORM_MEAN`] and [`NORM_VAR`] (`[D]`, statistics, not trained).
#[derive(Clone, Debug)]
pub struct ExpertHeads {
    cfg: HeadsConfig,
    /// The standardisation's mean and variance, `[D]` each.
    norm: Option<(Tensor, Tensor)>,
    experts: Vec<Head>,
}

/// Name of the standardisation's mean (the `running_` names keep them out of
/// `trainable_vars`, as batch-norm statistics).
pub const NORM_MEAN: &str = "feature_norm.running_mean";
/// Name of the standardisation's variance.
pub const NORM_VAR: &str = "feature_norm.running_var";
/// ε added to the variance before its square root.
const NORM_EPS: f64 = 1e-5;

fn linear(vb: &VarBuilder, out: usize, inp: usize) -> candle_core::Result<candle_nn::Linear> {
    let b = 1.0 / (inp as f64).sqrt();
    let u = Init::Uniform { lo: -b, up: b };
    let w = vb.get_with_hints((out, inp), "weight", u)?;
    let bias = vb.get_with_hints(out, "bias", u)?;
    Ok(candle_nn::Linear::new(w, Some(bias)))
}

impl ExpertHeads {
    /// Builds the heads from `vb` (new Vars get candle's unseeded initialisation; use
    /// [`ExpertHeads::seeded`] or [`init_heads`] for a reproducible start).
    pub fn new(cfg: &HeadsConfig, vb: VarBuilder) -> Result<Self> {
        cfg.check()?;
        let (d, c) = (cfg.feature_dim, cfg.num_classes);
        let norm = if cfg.standardize {
            Some((
                vb.get_with_hints(d, NORM_MEAN, Init::Const(0.0))?,
                vb.get_with_hints(d, NORM_VAR, Init::Const(1.0))?,
            ))
        } else {
            None
        };
        let mut experts = Vec::with_capacity(cfg.num_experts);
        for e in 0..cfg.num_experts {
            let vb = vb.pp(format!("experts.{e}"));
            let adapter = match cfg.adapter {
                Some(a) => {
                    let vb = vb.pp("adapter");
                    Some(Adapter {
                        down: linear(&vb.pp("down"), a, d)?,
                        up: linear(&vb.pp("up"), d, a)?,
                    })
                }
                None => None,
            };
            let vb = vb.pp("classifier");
            let classifier = match cfg.classifier {
                HeadClassifier::Cosine { scale } => Classifier::Cosine {
                    weight: vb.get_with_hints(
                        (d, c),
                        "weight",
                        Init::Uniform { lo: -1.0, up: 1.0 },
                    )?,
                    scale,
                },
                HeadClassifier::Linear => Classifier::Linear(linear(&vb, c, d)?),
            };
            experts.push(Head {
                adapter,
                classifier,
            });
        }
        Ok(Self {
            cfg: cfg.clone(),
            norm,
            experts,
        })
    }

    /// Sets the standardisation to the per-dimension mean and (biased) variance of `features`
    /// `[N, D]`, in the heads' `varmap` (whose [`NORM_MEAN`] / [`NORM_VAR`] Vars the heads
    /// read); nothing without standardisation. [`train_heads`] calls it on the training set.
    pub fn fit_standardization(&self, varmap: &VarMap, features: &Tensor) -> Result<()> {
        if self.norm.is_none() {
            return Ok(());
        }
        let (n, d) = features.dims2()?;
        if n == 0 || d != self.cfg.feature_dim {
            return Err(TrunkError::BadHeads(format!(
                "cannot standardise {}-wide features with {n} rows of width {d}",
                self.cfg.feature_dim
            )));
        }
        let x = features.to_dtype(DType::F32)?;
        let m = x.mean(0)?;
        let v = x.broadcast_sub(&m)?.sqr()?.mean(0)?;
        let data = varmap.data().lock().unwrap_or_else(|e| e.into_inner());
        for (name, value) in [(NORM_MEAN, m), (NORM_VAR, v)] {
            let var = data.get(name).ok_or_else(|| {
                TrunkError::BadHeads(format!("the heads' VarMap has no `{name}`"))
            })?;
            // Var::set writes into the Var's storage, which the heads' tensor shares.
            var.set(&value.to_device(var.device())?)?;
        }
        Ok(())
    }

    /// New heads in a fresh `VarMap` (F32 on `device`), initialised from `seed` ([`init_heads`]).
    pub fn seeded(cfg: &HeadsConfig, seed: u64, device: &Device) -> Result<(VarMap, Self)> {
        let varmap = VarMap::new();
        let heads = Self::new(cfg, VarBuilder::from_varmap(&varmap, DType::F32, device))?;
        init_heads(&varmap, cfg, seed)?;
        Ok((varmap, heads))
    }

    /// The config.
    pub fn config(&self) -> &HeadsConfig {
        &self.cfg
    }

    /// Trunk features `[B, D]` → every expert's logits `[B, E, C]`, their mean `[B, C]` and the
    /// feature each classifier read `[B, E, D]` (after the expert's adapter, if any).
    pub fn forward(&self, features: &Tensor) -> candle_core::Result<ExpertOutput> {
        let (_, d) = features.dims2()?;
        if d != self.cfg.feature_dim {
            return Err(candle_core::Error::Msg(format!(
                "the heads read {}-wide features, got {d}-wide ones (features of another trunk or output?)",
                self.cfg.feature_dim
            )));
        }
        let mut x = if features.dtype() == DType::F32 {
            features.clone()
        } else {
            features.to_dtype(DType::F32)?
        };
        if let Some((mean, var)) = &self.norm {
            x = x
                .broadcast_sub(mean)?
                .broadcast_div(&(var + NORM_EPS)?.sqrt()?)?;
        }
        let mut logits = Vec::with_capacity(self.experts.len());
        let mut feats = Vec::with_capacity(self.experts.len());
        for head in &self.experts {
            let h = match &head.adapter {
                Some(a) => (&x + a.up.forward(&a.down.forward(&x)?.relu()?)?)?,
                None => x.clone(),
            };
            logits.push(head.classifier.forward(&h)?);
            feats.push(h);
        }
        let expert_logits = Tensor::stack(&logits, 1)?;
        let features = Tensor::stack(&feats, 1)?;
        let logits = expert_logits.mean(1)?;
        Ok(ExpertOutput {
            expert_logits,
            logits,
            features,
        })
    }
}

/// FNV-1a of a name: the stream of its initialisation (as the backbone's `init_weights`).
fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Fills every Var of the heads in `varmap` from a ChaCha8 generator seeded with `seed`, one
/// stream per parameter name (candle's CPU RNG cannot be seeded):
/// - cosine classifier `[D, C]`: `U(-1, 1)`, then each class column to unit norm (the
///   backbone's `NormedLinear` initialisation);
/// - linear classifier and adapter `down`: weight and bias `U(±1/√fan_in)` (PyTorch's default);
/// - adapter `up`: zeros, so that every expert starts as its classifier on the trunk feature.
///
/// Same seed and config → bit-identical heads.
pub fn init_heads(varmap: &VarMap, cfg: &HeadsConfig, seed: u64) -> Result<()> {
    let data = varmap.data().lock().unwrap_or_else(|e| e.into_inner());
    for (name, var) in data.iter() {
        let dims = var.dims().to_vec();
        let n: usize = dims.iter().product();
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        rng.set_stream(fnv1a(name));
        let mut uniform = |b: f64| -> Vec<f32> {
            (0..n)
                .map(|_| ((rng.random::<f64>() * 2.0 - 1.0) * b) as f32)
                .collect()
        };
        let values = if name == NORM_MEAN || name.contains(".adapter.up.") {
            vec![0f32; n]
        } else if name == NORM_VAR {
            vec![1f32; n]
        } else if name.ends_with(".classifier.weight")
            && matches!(cfg.classifier, HeadClassifier::Cosine { .. })
        {
            let mut v = uniform(1.0);
            let (rows, cols) = (dims[0], dims[1]);
            for c in 0..cols {
                let norm = (0..rows)
                    .map(|r| (v[r * cols + c] as f64).powi(2))
                    .sum::<f64>()
                    .sqrt();
                let inv = if norm > 0.0 { 1.0 / norm } else { 0.0 };
                for r in 0..rows {
                    v[r * cols + c] = (v[r * cols + c] as f64 * inv) as f32;
                }
            }
            v
        } else if name.ends_with(".classifier.weight")
            || name.ends_with(".classifier.bias")
            || name.contains(".adapter.down.")
        {
            // All three read the D-wide trunk feature: fan-in D.
            uniform(1.0 / (cfg.feature_dim as f64).sqrt())
        } else {
            return Err(TrunkError::BadHeads(format!(
                "`{name}` is not a parameter of expert heads"
            )));
        };
        let t = Tensor::from_vec(values, dims, var.device())?.to_dtype(var.dtype())?;
        var.set(&t)?;
    }
    Ok(())
}

/// Features with their labels: what the heads train and are evaluated on.
#[derive(Clone, Debug)]
pub struct FeatureSet {
    /// `[N, D]` float.
    pub features: Tensor,
    /// One label per row.
    pub labels: Vec<u32>,
}

impl FeatureSet {
    /// Checks that `features` is `[N, D]` with one label per row.
    pub fn new(features: Tensor, labels: Vec<u32>) -> Result<Self> {
        let (n, _) = features.dims2()?;
        if n != labels.len() {
            return Err(TrunkError::BadHeads(format!(
                "{n} feature rows but {} labels",
                labels.len()
            )));
        }
        Ok(Self { features, labels })
    }

    /// Rows N.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether there are no rows.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Images per class for `num_classes` classes (labels out of range are not counted).
    pub fn class_counts(&self, num_classes: usize) -> Vec<usize> {
        let mut counts = vec![0; num_classes];
        for &l in &self.labels {
            if let Some(c) = counts.get_mut(l as usize) {
                *c += 1;
            }
        }
        counts
    }
}

impl From<CachedFeatures> for FeatureSet {
    fn from(c: CachedFeatures) -> Self {
        Self {
            features: c.features,
            labels: c.labels,
        }
    }
}

/// One epoch of [`train_heads`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HeadsEpoch {
    /// 1-based epoch.
    pub epoch: usize,
    /// Learning rate of the epoch.
    pub lr: f64,
    /// Mean training loss (per sample).
    pub loss: f64,
    /// Training accuracy of the method's prediction.
    pub accuracy: f64,
    /// Test accuracy after the epoch, when a test set was given.
    pub test_accuracy: Option<f64>,
    /// Test many-shot accuracy.
    pub many: Option<f64>,
    /// Test medium-shot accuracy.
    pub medium: Option<f64>,
    /// Test few-shot accuracy.
    pub few: Option<f64>,
    /// Wall time of the training pass (evaluation excluded).
    pub train_seconds: f64,
}

/// What [`train_heads`] returns.
#[derive(Clone, Debug)]
pub struct HeadsFit {
    /// Every epoch.
    pub history: Vec<HeadsEpoch>,
    /// The final heads on the test set, when one was given.
    pub test: Option<Evaluation>,
    /// Wall time of the training passes alone.
    pub train_seconds: f64,
    /// Wall time of the whole call (evaluations included).
    pub seconds: f64,
}

fn check_labels(set: &FeatureSet, num_classes: usize, what: &str) -> Result<()> {
    if let Some(&l) = set.labels.iter().find(|&&l| l as usize >= num_classes) {
        return Err(TrunkError::BadHeads(format!(
            "the {what} features have label {l}, but the heads have {num_classes} classes"
        )));
    }
    Ok(())
}

fn to_u32_tensor(v: &[usize], device: &Device) -> candle_core::Result<Tensor> {
    let n = v.len();
    Tensor::from_vec(v.iter().map(|&i| i as u32).collect::<Vec<_>>(), n, device)
}

/// Trains `heads` (whose Vars live in `varmap`) on `train` with `method`'s loss for
/// `cfg.epochs` epochs, then evaluates on `test` (also after every epoch, for the history).
///
/// First the standardisation, if the heads have one, is fitted to the training features
/// ([`ExpertHeads::fit_standardization`]).
/// Each epoch: `method.begin_epoch(epoch)` (1-based), the rate `cfg.schedule.lr(cfg.lr, epoch,
/// cfg.epochs)`, the sample order `epoch_order(cfg.sampler, labels, C, cfg.seed, epoch)`, then
/// batches of `cfg.batch_size` rows (the last may be shorter) through the heads, the method's
/// loss, and SGD ([`Sgd`]: momentum, Nesterov, weight decay from `cfg.sgd`), with gradients
/// averaged over `cfg.accumulate` batches per step. The [`Batch`] a method sees holds the
/// features in `images` (`[B, D]`), the labels and the row indices: every registered method
/// reads only the experts' logits and the labels. `on_epoch` is called after each epoch.
///
/// Deterministic: the same heads, data, config and seed give the same weights. A non-finite
/// loss stops with [`TrainError::NonFiniteLoss`] before any update from it.
#[allow(clippy::too_many_arguments)]
pub fn train_heads(
    heads: &ExpertHeads,
    varmap: &VarMap,
    method: &mut dyn Method,
    train: &FeatureSet,
    test: Option<&FeatureSet>,
    shots: &[Shot],
    cfg: &TrainConfig,
    mut on_epoch: impl FnMut(&HeadsEpoch),
) -> Result<HeadsFit> {
    cfg.check().map_err(TrunkError::from)?;
    let hc = heads.config();
    let c = hc.num_classes;
    if shots.len() != c {
        return Err(TrunkError::BadHeads(format!(
            "{} shot groups for {c} classes",
            shots.len()
        )));
    }
    if train.is_empty() {
        return Err(TrunkError::BadHeads("no training features".into()));
    }
    check_labels(train, c, "training")?;
    if let Some(t) = test {
        check_labels(t, c, "test")?;
    }
    heads.fit_standardization(varmap, &train.features)?;
    let device = train.features.device().clone();
    let mut opt = Sgd::new(longtail_train::trainable_vars(varmap), cfg.sgd)?;
    let labels = Tensor::new(train.labels.as_slice(), &device)?;
    let start = Instant::now();
    let mut history = Vec::with_capacity(cfg.epochs);
    let mut train_seconds = 0.0;
    let mut last_test = None;
    for epoch in 1..=cfg.epochs {
        let t0 = Instant::now();
        method.begin_epoch(epoch)?;
        let lr = cfg.schedule.lr(cfg.lr, epoch, cfg.epochs);
        opt.set_lr(lr);
        let order = epoch_order(cfg.sampler, &train.labels, c, cfg.seed, epoch as u64);
        let steps = order.len().div_ceil(cfg.batch_size);
        let (mut loss_sum, mut correct, mut seen) = (0.0f64, 0usize, 0usize);
        let mut pending: Vec<Option<Tensor>> = vec![None; opt.params().len()];
        let mut in_step = 0;
        for (index, rows) in order.chunks(cfg.batch_size).enumerate() {
            let idx = to_u32_tensor(rows, &device)?;
            let batch = Batch {
                images: train.features.index_select(&idx, 0)?,
                labels: labels.index_select(&idx, 0)?,
                indices: rows.to_vec(),
            };
            let out = heads.forward(&batch.images)?;
            let loss = method.loss(&out, &batch)?;
            let value = loss.to_dtype(DType::F32)?.to_scalar::<f32>()?;
            if !value.is_finite() {
                return Err(TrainError::NonFiniteLoss {
                    epoch,
                    step: index,
                    value,
                }
                .into());
            }
            let hits = method
                .predict(&out)?
                .argmax(D::Minus1)?
                .eq(&batch.labels)?
                .to_dtype(DType::U32)?
                .sum_all()?
                .to_scalar::<u32>()?;
            loss_sum += value as f64 * rows.len() as f64;
            correct += hits as usize;
            seen += rows.len();
            let scaled = if cfg.accumulate > 1 {
                (loss / cfg.accumulate as f64)?
            } else {
                loss
            };
            let grads = scaled.backward()?;
            for (slot, (_, var)) in pending.iter_mut().zip(opt.params()) {
                if let Some(g) = grads.get(var.as_tensor()) {
                    *slot = Some(match slot.take() {
                        Some(acc) => (acc + g)?,
                        None => g.clone(),
                    });
                }
            }
            in_step += 1;
            if in_step == cfg.accumulate || index + 1 == steps {
                let grads = std::mem::replace(&mut pending, vec![None; opt.params().len()]);
                opt.step_with(&grads)?;
                in_step = 0;
            }
        }
        let secs = t0.elapsed().as_secs_f64();
        train_seconds += secs;
        let eval = match test {
            Some(t) => Some(evaluate_heads(
                heads,
                &|o| method.predict(o),
                t,
                shots,
                cfg.eval_batch_size,
            )?),
            None => None,
        };
        let record = HeadsEpoch {
            epoch,
            lr,
            loss: loss_sum / seen.max(1) as f64,
            accuracy: correct as f64 / seen.max(1) as f64,
            test_accuracy: eval.as_ref().map(|e| e.report.accuracy),
            many: eval.as_ref().and_then(|e| e.report.many),
            medium: eval.as_ref().and_then(|e| e.report.medium),
            few: eval.as_ref().and_then(|e| e.report.few),
            train_seconds: secs,
        };
        on_epoch(&record);
        history.push(record);
        last_test = eval;
    }
    Ok(HeadsFit {
        history,
        test: last_test,
        train_seconds,
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// Runs the heads over `data` in order, `batch_size` rows at a time, and reports the
/// prediction `predict` gives (a method's [`Method::predict`], or the mean of the experts:
/// `&|o| Ok(o.logits.clone())`) and each expert alone, by many / medium / few (`shots` from
/// the training counts, `longtail_metrics::shot_groups`). The [`Evaluation`] also holds the
/// logits (`[N, C]` and `[N, E, C]`, row-major) for test-time aggregation and the uncertainty
/// metrics.
pub fn evaluate_heads(
    heads: &ExpertHeads,
    predict: &dyn Fn(&ExpertOutput) -> candle_core::Result<Tensor>,
    data: &FeatureSet,
    shots: &[Shot],
    batch_size: usize,
) -> Result<Evaluation> {
    let start = Instant::now();
    let c = heads.config().num_classes;
    let e = heads.config().num_experts;
    if shots.len() != c {
        return Err(TrunkError::BadHeads(format!(
            "{} shot groups for {c} classes",
            shots.len()
        )));
    }
    if data.is_empty() {
        return Err(TrunkError::BadHeads("no features to evaluate".into()));
    }
    check_labels(data, c, "evaluation")?;
    let n = data.len();
    let (mut logits, mut expert_logits) =
        (Vec::with_capacity(n * c), Vec::with_capacity(n * e * c));
    let bs = batch_size.max(1);
    for from in (0..n).step_by(bs) {
        let x = data.features.narrow(0, from, bs.min(n - from))?;
        let out = heads.forward(&x)?;
        logits.extend(to_vec(&predict(&out)?)?);
        expert_logits.extend(to_vec(&out.expert_logits)?);
    }
    let labels = data.labels.clone();
    let metrics = |r| TrunkError::from(TrainError::from(r));
    let report =
        classification_report(&argmax_rows(&logits, c), &labels, shots).map_err(metrics)?;
    let mut experts = Vec::with_capacity(e);
    for k in 0..e {
        let own: Vec<f32> = expert_logits
            .chunks(c)
            .skip(k)
            .step_by(e)
            .flatten()
            .copied()
            .collect();
        experts
            .push(classification_report(&argmax_rows(&own, c), &labels, shots).map_err(metrics)?);
    }
    Ok(Evaluation {
        report,
        experts,
        logits,
        expert_logits,
        labels,
        num_classes: c,
        num_experts: e,
        images_per_sec: n as f64 / start.elapsed().as_secs_f64().max(1e-9),
    })
}

fn to_vec(t: &Tensor) -> candle_core::Result<Vec<f32>> {
    t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()
}

/// Writes the heads in `varmap` to `path` as one safetensors file, atomically (temporary file +
/// rename, [`longtail_train::checkpoint::save`]): their tensors under the names of
/// [`ExpertHeads`], and `metadata` plus `heads_format` ([`HEADS_FORMAT`]) and `heads` (the
/// config as JSON). Callers add the trunk (`trunk`, `revision`, `family`), the feature kind, the
/// preprocessing and the run config (`config`) so that the file says what it was trained on.
pub fn save_heads(
    path: &Path,
    varmap: &VarMap,
    cfg: &HeadsConfig,
    metadata: &BTreeMap<String, String>,
) -> Result<()> {
    let mut meta = metadata.clone();
    meta.insert("heads_format".into(), HEADS_FORMAT.into());
    meta.insert("heads".into(), cfg.to_json());
    checkpoint::save(path, varmap, None, &meta)?;
    Ok(())
}

/// Heads read back by [`load_heads`].
pub struct LoadedHeads {
    /// The heads.
    pub heads: ExpertHeads,
    /// Their Vars.
    pub varmap: VarMap,
    /// The file's metadata.
    pub metadata: BTreeMap<String, String>,
}

/// Reads heads written by [`save_heads`] onto `device`: the config from the metadata, every
/// tensor present with its shape.
pub fn load_heads(path: &Path, device: &Device) -> Result<LoadedHeads> {
    let ck = checkpoint::load(path, device)?;
    if ck.metadata.get("heads_format").map(String::as_str) != Some(HEADS_FORMAT) {
        return Err(TrunkError::BadHeads(format!(
            "{} is not a heads checkpoint (no `heads_format = {HEADS_FORMAT}` metadata)",
            path.display()
        )));
    }
    let text = ck.metadata.get("heads").ok_or_else(|| {
        TrunkError::BadHeads(format!("{} has no `heads` metadata", path.display()))
    })?;
    let cfg = HeadsConfig::from_json(text)?;
    let varmap = VarMap::new();
    let heads = ExpertHeads::new(&cfg, VarBuilder::from_varmap(&varmap, DType::F32, device))?;
    ck.restore_into(&varmap)?;
    let extra = ck.tensors.len() - varmap.all_vars().len();
    if extra > 0 {
        return Err(TrunkError::BadHeads(format!(
            "{} holds {extra} tensors the heads config does not describe",
            path.display()
        )));
    }
    Ok(LoadedHeads {
        heads,
        varmap,
        metadata: ck.metadata,
    })
}
