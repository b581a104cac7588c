//! RIDE stage 2 on a trained run: learn the expert-assignment router with the backbone frozen,
//! save it next to the run, and evaluate routed predictions (docs/ride.md §4; the head itself is
//! [`ExpertRouter`]). Training uses the engine's epoch loop ([`train_epoch`]).
//!
//! Official recipe ([`RouterRecipe::default`]): 5 epochs, batch 512, RIDE's class-balanced
//! sampler with the run's training augmentation, Nesterov SGD (momentum 0.9, weight decay 5e-4)
//! from lr 0.01 with per-epoch cosine annealing to 0, BCE `pos_weight` 100. The backbone runs
//! in eval mode (BN running statistics), as the official `_hook_before_iter` puts frozen BN
//! layers in eval mode; only the head has gradients.

use std::path::Path;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use longtail_backbone::MultiExpert;
use longtail_data::{Batcher, Dataset, SamplerKind, Shot, Transform};
use longtail_metrics::{argmax_rows, classification_report, ClassificationReport};
use longtail_train::{checkpoint, train_epoch, Sgd, SgdConfig, Step};
use serde::Serialize;

use crate::{ExpertRouter, RideError, RouterConfig};

type Result<T> = std::result::Result<T, RideError>;

/// File name of a saved router inside a run directory.
pub const ROUTER_FILE: &str = "router.safetensors";

/// Stage-2 training settings.
#[derive(Clone, Debug)]
pub struct RouterRecipe {
    /// Epochs (each one pass of the class-balanced sampler over the training set's length).
    pub epochs: usize,
    /// Images per step.
    pub batch_size: usize,
    /// Initial learning rate, annealed per epoch with a cosine to 0.
    pub lr: f64,
    /// BCE weight of "consult the next expert" (more → more experts, more accuracy).
    pub pos_weight: f64,
    /// `k` of the top-k logit input; `None` for the official 30 (≤ 100 classes) or 50.
    pub top_k: Option<usize>,
    /// Seed of the head's initialisation, the sampler and the augmentation.
    pub seed: u64,
}

impl Default for RouterRecipe {
    fn default() -> Self {
        Self {
            epochs: 5,
            batch_size: 512,
            lr: 0.01,
            pos_weight: 100.0,
            top_k: None,
            seed: 0,
        }
    }
}

impl RouterRecipe {
    /// `CosineAnnealingLR(T_max = epochs, eta_min = 0)` stepped per epoch: the lr of `epoch`
    /// (1-based): `lr · (1 + cos(π (epoch − 1) / epochs)) / 2` (0.01, 0.009045, 0.006545, … for 5).
    pub fn lr_at(&self, epoch: usize) -> f64 {
        let t = (epoch - 1) as f64 / self.epochs as f64;
        self.lr * 0.5 * (1.0 + (std::f64::consts::PI * t).cos())
    }
}

/// One stage-2 epoch.
#[derive(Clone, Debug, Serialize)]
pub struct RouterEpoch {
    /// 1-based epoch.
    pub epoch: usize,
    /// Learning rate used.
    pub lr: f64,
    /// Mean loss over the epoch's steps.
    pub loss: f64,
    /// Fraction of (sample, step) targets that said "consult the next expert".
    pub positive: f64,
    /// Seconds the epoch took.
    pub seconds: f64,
}

/// Trains a router for `model` on `train` (frozen backbone, see the module docs), calling
/// `on_epoch` after each epoch.
pub fn train_router(
    model: &MultiExpert,
    train: &Arc<Dataset>,
    transform: &Transform,
    recipe: &RouterRecipe,
    device: &Device,
    mut on_epoch: impl FnMut(&RouterEpoch),
) -> Result<(VarMap, ExpertRouter)> {
    let e = model.config().num_experts;
    if e < 2 {
        return Err(RideError::Stage2(format!(
            "routing needs a model with at least 2 experts; this one has {e}"
        )));
    }
    if recipe.epochs == 0 || recipe.batch_size == 0 || !recipe.lr.is_finite() || recipe.lr <= 0.0 {
        return Err(RideError::Stage2(
            "the router recipe needs epochs, batch size and lr above 0".into(),
        ));
    }
    let cfg = router_config(model, train, transform, recipe, device)?;
    // The backbone is frozen: its forward passes keep no autograd graph.
    let model = &model.detached()?;
    let (varmap, router) = ExpertRouter::seeded(&cfg, recipe.seed, device)?;
    let params: Vec<(String, candle_core::Var)> = {
        let data = varmap.data().lock().expect("varmap lock");
        data.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    };
    let mut opt = Sgd::new(params, SgdConfig::default())?;
    for epoch in 1..=recipe.epochs {
        let lr = recipe.lr_at(epoch);
        opt.set_lr(lr);
        let batcher = Batcher::new(
            Arc::clone(train),
            SamplerKind::ClassBalanced,
            transform.clone(),
            recipe.batch_size,
            recipe.seed,
            epoch as u64,
            device,
        )?;
        let (mut pos, mut targets) = (0f64, 0usize);
        let stats = train_epoch(
            batcher,
            &mut opt,
            1,
            epoch,
            |batch| {
                let out = model.forward_t(&batch.images, false)?;
                let (logits, feats) = (out.expert_logits.detach(), out.features.detach());
                let (loss, t) = router
                    .loss_and_targets(&logits, &feats, &batch.labels)
                    .map_err(candle_core::Error::wrap)?;
                pos += t.sum_all()?.to_scalar::<f32>()? as f64;
                targets += t.elem_count();
                Ok(Step { loss, correct: 0 })
            },
            |_, _, _| {},
        )?;
        on_epoch(&RouterEpoch {
            epoch,
            lr,
            loss: stats.step_loss_sum / stats.steps.max(1) as f64,
            positive: pos / targets.max(1) as f64,
            seconds: stats.seconds,
        });
    }
    Ok((varmap, router))
}

/// The official head for `model` (feature width read from one forward of the first training
/// image as the model sees it), with the recipe's `pos_weight` and `top_k`.
fn router_config(
    model: &MultiExpert,
    data: &Arc<Dataset>,
    transform: &Transform,
    recipe: &RouterRecipe,
    device: &Device,
) -> Result<RouterConfig> {
    let mut one = Batcher::new(
        Arc::clone(data),
        SamplerKind::Sequential,
        transform.clone(),
        1,
        0,
        0,
        device,
    )?;
    let probe = one
        .next()
        .ok_or_else(|| RideError::Stage2("the training set is empty".into()))??
        .images;
    let d = model.forward_t(&probe, false)?.features.dim(2)?;
    let c = model.config().num_classes;
    let mut cfg = RouterConfig::official(model.config().num_experts, d, c);
    cfg.pos_weight = recipe.pos_weight;
    if let Some(k) = recipe.top_k {
        cfg.top_k = k;
    }
    Ok(cfg)
}

/// Writes the router's weights and config into `dir/router.safetensors` (atomically).
pub fn save_router(
    dir: &Path,
    varmap: &VarMap,
    router: &ExpertRouter,
) -> Result<std::path::PathBuf> {
    std::fs::create_dir_all(dir).map_err(|e| longtail_train::TrainError::io(dir, e))?;
    let path = dir.join(ROUTER_FILE);
    let meta = [
        ("kind".to_string(), "ride-router".to_string()),
        (
            "router_config".to_string(),
            serde_json::to_string(router.config()).map_err(|e| RideError::Stage2(e.to_string()))?,
        ),
    ]
    .into_iter()
    .collect();
    checkpoint::save(&path, varmap, None, &meta)?;
    Ok(path)
}

/// Reads a router written by [`save_router`] and checks that it fits `model`.
pub fn load_router(path: &Path, model: &MultiExpert, device: &Device) -> Result<ExpertRouter> {
    let ck = checkpoint::load(path, device)?;
    let bad = |reason: String| RideError::RouterFile {
        path: path.to_path_buf(),
        reason,
    };
    if ck.metadata.get("kind").map(String::as_str) != Some("ride-router") {
        return Err(bad("is not a router file (no kind = ride-router)".into()));
    }
    let cfg: RouterConfig = serde_json::from_str(
        ck.metadata
            .get("router_config")
            .ok_or_else(|| bad("has no router config in its metadata".into()))?,
    )
    .map_err(|e| bad(format!("has a bad router config: {e}")))?;
    let (e, c) = (model.config().num_experts, model.config().num_classes);
    if cfg.num_experts != e || cfg.num_classes != c {
        return Err(bad(format!(
            "routes {} experts over {} classes, but the model has {e} experts and {c} classes",
            cfg.num_experts, cfg.num_classes
        )));
    }
    let varmap = VarMap::new();
    let router = ExpertRouter::new(
        &cfg,
        VarBuilder::from_varmap(&varmap, DType::F32, device).pp("backbone"),
    )?;
    ck.restore_into(&varmap)?;
    Ok(router)
}

/// Routed vs all-experts evaluation.
#[derive(Clone, Debug, Serialize)]
pub struct RoutedEvaluation {
    /// The mean of all experts (RIDE's stage-1 prediction).
    pub all_experts: ClassificationReport,
    /// The routed prediction.
    pub routed: ClassificationReport,
    /// `used[k]`: fraction of test images that used `k + 1` experts.
    pub used: Vec<f64>,
    /// Mean number of experts per image.
    pub mean_experts: f64,
    /// Multiply-adds per image with routing (trunk + the experts each image used, averaged;
    /// the head's own cost, 2·16·D + k + 16 per step, is negligible and not counted).
    pub routed_macs: f64,
    /// Multiply-adds per image with every expert.
    pub all_macs: f64,
}

/// Evaluates `router` on `test`: every expert is computed once per batch (to report the
/// all-experts accuracy beside it) and routing picks from those results, so the routed numbers
/// are exactly what [`ExpertRouter::route`] gives with real subset computation; the routed
/// compute is reported as multiply-adds from [`MultiExpert::macs`].
pub fn evaluate_routed(
    model: &MultiExpert,
    router: &ExpertRouter,
    test: &Arc<Dataset>,
    transform: &Transform,
    shots: &[Shot],
    batch_size: usize,
    device: &Device,
) -> Result<RoutedEvaluation> {
    let e = model.config().num_experts;
    let c = model.config().num_classes;
    let model = &model.detached()?;
    let batcher = Batcher::new(
        Arc::clone(test),
        SamplerKind::Sequential,
        transform.clone(),
        batch_size,
        0,
        0,
        device,
    )?;
    let (mut all_logits, mut routed_logits, mut used) = (vec![], vec![], vec![]);
    let mut size = (0, 0);
    for batch in batcher {
        let batch = batch?;
        let (_, _, h, w) = batch.images.dims4()?;
        size = (h, w);
        let out = model.forward_t(&batch.images, false)?;
        let n = batch.indices.len();
        let routed = router.route(n, |expert, rows| {
            let idx = Tensor::new(rows, device)?;
            let pick = |t: &Tensor| -> candle_core::Result<Tensor> {
                t.narrow(1, expert, 1)?
                    .squeeze(1)?
                    .contiguous()?
                    .index_select(&idx, 0)
            };
            Ok((pick(&out.expert_logits)?, pick(&out.features)?))
        })?;
        all_logits.extend(
            out.logits
                .to_dtype(DType::F32)?
                .flatten_all()?
                .to_vec1::<f32>()?,
        );
        routed_logits.extend(routed.logits.flatten_all()?.to_vec1::<f32>()?);
        used.extend(routed.experts_used);
    }
    let labels = &test.labels;
    let report = |logits: &[f32]| -> Result<ClassificationReport> {
        Ok(classification_report(
            &argmax_rows(logits, c),
            labels,
            shots,
        )?)
    };
    let mut hist = vec![0f64; e];
    for &u in &used {
        hist[u - 1] += 1.0;
    }
    let n = used.len().max(1) as f64;
    let macs = |k: usize| -> Result<f64> {
        let experts: Vec<usize> = (0..k).collect();
        Ok(model.macs(size.0, size.1, &experts)?.total() as f64)
    };
    let mut routed_macs = 0.0;
    for (k, count) in hist.iter().enumerate() {
        routed_macs += count / n * macs(k + 1)?;
    }
    Ok(RoutedEvaluation {
        all_experts: report(&all_logits)?,
        routed: report(&routed_logits)?,
        used: hist.iter().map(|h| h / n).collect(),
        mean_experts: used.iter().sum::<usize>() as f64 / n,
        routed_macs,
        all_macs: macs(e)?,
    })
}
