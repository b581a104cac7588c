//! Evaluation under test-time label shift: SADE's test-agnostic protocol (docs/sade.md §3) with
//! plain averaging and with test-time self-supervised aggregation (docs/sade.md §2), for any
//! multi-expert checkpoint.
//!
//! For each test distribution (forward 50 … uniform … backward 50, [`TestDist::all`]):
//!
//! 1. the label-shifted test set is drawn from the balanced test set ([`TestDist::counts`] and
//!    `ldam_subset` with numpy's seed 0, as SADE's CIFAR scripts);
//! 2. **plain**: the mean of the experts' logits on the clean (eval-transform) images;
//! 3. **aggregated**: expert weights `w = softmax(ω)` learned on the same unlabeled images, each
//!    seen through two [`StrongAugment`] views (fresh views every epoch, as the official
//!    `DataLoader` draws them), with the run's `test_time` settings; then `argmax Σ_e w_e v_e` on
//!    the clean images (transductive, as official).
//!
//! [`ShiftEvaluator`] computes the clean logits of the whole balanced test set once; every
//! distribution is a subset of it.

use candle_core::{Device, Tensor};
use longtail_aggregate::{
    experts_first, mean_logits, AggregatorConfig, TestTimeAggregator, TestTimeSgd,
};
use longtail_backbone::MultiExpert;
use longtail_data::profile::ldam_subset;
use longtail_data::{Dataset, Shot, TestDist, Transform};
use longtail_metrics::{argmax_rows, classification_report};
use longtail_train::{evaluate_with, RunConfig};
use serde::Serialize;

use crate::{view_seed, Sade, SadeError, StrongAugment, StrongViews};

type Result<T> = std::result::Result<T, SadeError>;

fn shift_error(msg: impl Into<String>) -> SadeError {
    SadeError::Shift(msg.into())
}

/// How the shifted test sets are drawn and the weights learned.
#[derive(Clone, Debug, PartialEq)]
pub struct ShiftConfig {
    /// The test-time aggregator (optimiser on ω, batch, epochs, stop rule, shuffle seed).
    pub aggregator: AggregatorConfig,
    /// The strong augmentation of the two views.
    pub strong: StrongAugment,
    /// Seed of the label-shift sampling: numpy's legacy seed (official: 0 for every CIFAR set).
    pub shift_seed: u64,
    /// Seed of the strong views.
    pub view_seed: u64,
    /// Batch size of the clean forward passes.
    pub eval_batch: usize,
}

impl ShiftConfig {
    /// The settings of a run for images of `height × width`: a SADE run's own `test_time`
    /// (lr, momentum, wd, Nesterov, epochs, batch, stop rule, entropy weight, blur probability);
    /// any other method gets the CIFAR-100-LT values of `test_training_cifar.py` (lr 0.1, wd 5e-4,
    /// batch 128, 5 epochs, stop below 0.05). Images up to 64 pixels a side get the pad-4 crop
    /// (32² recipe), larger ones the random-resized crop to the same size (224² recipe). The
    /// run's seed seeds the views and the shuffle.
    pub fn for_run(cfg: &RunConfig, height: usize, width: usize) -> Result<Self> {
        let mut strong = if height.max(width) <= 64 {
            StrongAugment::cifar()
        } else {
            StrongAugment::imagenet(height.min(width))
        };
        let mut aggregator = AggregatorConfig::cifar100_lt();
        if cfg.method.name == "sade" {
            let t = &Sade::settings(cfg)?.test_time;
            if t.epochs > 5 {
                return Err(shift_error(format!(
                    "test_time.epochs is {}: the official procedure runs at most 5 passes",
                    t.epochs
                )));
            }
            aggregator = AggregatorConfig {
                sgd: TestTimeSgd {
                    lr: t.lr,
                    momentum: t.momentum,
                    nesterov: t.nesterov,
                    weight_decay: t.weight_decay,
                },
                batch_size: t.batch_size,
                max_epochs: t.epochs,
                stop_below: (t.min_weight > 0.0).then_some(t.min_weight),
                entropy_coef: t.entropy_weight,
                seed: 0,
            };
            strong.blur_probability = t.blur_probability;
        }
        aggregator.seed = cfg.seed;
        Ok(Self {
            aggregator: aggregator.check()?,
            strong,
            shift_seed: 0,
            view_seed: cfg.seed,
            eval_batch: 256,
        })
    }
}

/// Top-1 overall (micro, over the shifted set) and the mean per-class accuracy of each shot group.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Accuracy {
    /// Micro top-1 over all samples ("All" in SADE's tables).
    pub overall: f64,
    /// Many-shot classes; `None` when the group has no class with a test sample.
    pub many: Option<f64>,
    /// Medium-shot classes.
    pub medium: Option<f64>,
    /// Few-shot classes.
    pub few: Option<f64>,
}

/// The result for one test distribution.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ShiftResult {
    /// Its name: `forward50`, `uniform`, `backward2`, ….
    pub distribution: String,
    /// Images in the shifted set.
    pub samples: usize,
    /// Images of each class in the shifted set.
    pub class_counts: Vec<usize>,
    /// Mean of the experts' logits.
    pub plain: Accuracy,
    /// Test-time self-supervised aggregation.
    pub aggregated: Accuracy,
    /// The learned expert weights `softmax(ω)` (sum 1).
    pub weights: Vec<f64>,
    /// Epochs the aggregator ran.
    pub epochs: usize,
    /// Whether it stopped by the rounded-weight rule.
    pub stopped_early: bool,
    /// Mean cosine similarity of the two views' aggregated predictions in the last epoch.
    pub final_cosine: f64,
}

/// Evaluates one model under any number of test distributions.
pub struct ShiftEvaluator<'a> {
    /// The model on detached weights (no autograd graph through the many view passes).
    model: MultiExpert,
    test: &'a Dataset,
    train_counts: &'a [usize],
    shots: &'a [Shot],
    /// Clean expert logits of the whole test set, `[E, N, C]`.
    clean: Tensor,
    normalize: longtail_data::Normalize,
    config: ShiftConfig,
    device: Device,
}

impl<'a> ShiftEvaluator<'a> {
    /// Runs the clean forward pass over the whole balanced `test` set.
    ///
    /// `train_counts` ranks the classes; `shots` gives each class's group; `eval_transform` is the
    /// clean transform, whose normalisation the strong views share.
    pub fn new(
        model: &'a MultiExpert,
        test: &'a Dataset,
        train_counts: &'a [usize],
        shots: &'a [Shot],
        eval_transform: &Transform,
        config: ShiftConfig,
        device: &Device,
    ) -> Result<Self> {
        if train_counts.len() != test.num_classes || shots.len() != test.num_classes {
            return Err(shift_error(format!(
                "{} training counts and {} shot groups for a test set of {} classes",
                train_counts.len(),
                shots.len(),
                test.num_classes
            )));
        }
        let data = std::sync::Arc::new(test.clone());
        // The clean forward pass over the whole test set (only the experts' logits are used).
        let ev = evaluate_with(
            model,
            &|out| Ok(out.logits.clone()),
            &data,
            eval_transform,
            config.eval_batch,
            shots,
            device,
        )?;
        let (n, e, c) = (ev.labels.len(), ev.num_experts, ev.num_classes);
        let clean = experts_first(&Tensor::from_vec(ev.expert_logits, (n, e, c), device)?)?;
        Ok(Self {
            model: model.detached()?,
            test,
            train_counts,
            shots,
            clean,
            normalize: eval_transform.normalize.clone(),
            config,
            device: device.clone(),
        })
    }

    /// The settings.
    pub fn config(&self) -> &ShiftConfig {
        &self.config
    }

    /// The clean expert logits of the whole balanced test set, `[E, N, C]`: every distribution
    /// is a subset of them ([`ShiftEvaluator::indices`]), so other prediction rules (BalPoE's
    /// known test prior, docs/balpoe.md §3.3) can be scored without another forward pass.
    pub fn clean_logits(&self) -> &Tensor {
        &self.clean
    }

    /// Indices into the balanced test set of the images of `dist` (class by class, each class in
    /// its seeded shuffled order).
    pub fn indices(&self, dist: TestDist) -> Result<Vec<usize>> {
        let have = self.test.class_counts();
        let n_max = have.first().copied().unwrap_or(0);
        if n_max == 0 {
            return Err(shift_error("the test set is empty"));
        }
        if let Some(c) = have.iter().position(|&n| n != n_max) {
            return Err(shift_error(format!(
                "label shift needs a class-balanced test set: class {c} has {} images, class 0 has {n_max}",
                have[c]
            )));
        }
        let counts = dist.counts(self.train_counts, n_max)?;
        let seed = u32::try_from(self.config.shift_seed).map_err(|_| {
            shift_error("the label-shift seed must be below 2^32 (numpy's legacy seed)")
        })?;
        Ok(ldam_subset(&self.test.labels, &counts, seed))
    }

    /// Evaluates one distribution.
    pub fn run(&self, dist: TestDist) -> Result<ShiftResult> {
        let idx = self.indices(dist)?;
        if idx.is_empty() {
            return Err(shift_error(format!("the {dist} test set is empty")));
        }
        let labels: Vec<u32> = idx.iter().map(|&i| self.test.labels[i]).collect();
        let mut class_counts = vec![0; self.test.num_classes];
        for &l in &labels {
            class_counts[l as usize] += 1;
        }
        let ids = Tensor::from_vec(
            idx.iter().map(|&i| i as u32).collect::<Vec<_>>(),
            idx.len(),
            &self.device,
        )?;
        let clean = self.clean.index_select(&ids, 1)?;
        let plain = self.accuracy(&mean_logits(&clean)?, &labels)?;

        // Views differ between distributions: the seed mixes in the distribution's name.
        let name_hash = dist
            .name()
            .bytes()
            .fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(b as u64));
        let views = StrongViews::new(
            self.config.strong.clone(),
            &self.normalize,
            view_seed(self.config.view_seed, name_hash, 0),
        )?;
        let per_epoch = idx.len().div_ceil(self.config.aggregator.batch_size);
        let mut calls = 0usize;
        let aggregator = TestTimeAggregator::new(self.config.aggregator)?;
        let fit =
            aggregator.fit_with(idx.len(), |batch: &[usize]| -> Result<(Tensor, Tensor)> {
                let epoch = (calls / per_epoch) as u64;
                calls += 1;
                let images: Vec<usize> = batch.iter().map(|&i| idx[i]).collect();
                let a = views.batch(self.test, &images, 2 * epoch, &self.device)?;
                let b = views.batch(self.test, &images, 2 * epoch + 1, &self.device)?;
                let out = self.model.forward_t(&Tensor::cat(&[a, b], 0)?, false)?;
                let logits = experts_first(&out.expert_logits)?; // [E, 2B, C]
                let n = batch.len();
                Ok((logits.narrow(1, 0, n)?, logits.narrow(1, n, n)?))
            })?;
        let aggregated = self.accuracy(&fit.predict(&clean)?, &labels)?;
        Ok(ShiftResult {
            distribution: dist.name(),
            samples: idx.len(),
            class_counts,
            plain,
            aggregated,
            epochs: fit.trace.len(),
            stopped_early: fit.stopped_early,
            final_cosine: fit.trace.last().map_or(f64::NAN, |t| t.mean_cosine),
            weights: fit.weights,
        })
    }

    fn accuracy(&self, logits: &Tensor, labels: &[u32]) -> Result<Accuracy> {
        let c = self.test.num_classes;
        let values: Vec<f32> = logits.flatten_all()?.to_vec1()?;
        let r = classification_report(&argmax_rows(&values, c), labels, self.shots)?;
        Ok(Accuracy {
            overall: r.accuracy,
            many: r.many,
            medium: r.medium,
            few: r.few,
        })
    }
}

/// Parses `--test-dist`: `all` (the eleven distributions in report order) or one name
/// (`forward50`, `uniform`, `backward2`, …).
pub fn parse_distributions(s: &str) -> Result<Vec<TestDist>> {
    if s == "all" {
        return Ok(TestDist::all().to_vec());
    }
    s.split(',')
        .map(|d| {
            d.trim()
                .parse::<TestDist>()
                .map_err(|e| shift_error(format!("--test-dist {d} (or all): {e}")))
        })
        .collect()
}

/// The expected size of a shifted set: `Σ_k ⌊n_max · (1/ρ)^(k/(C−1))⌋` for `C` classes (both
/// directions), `C · n_max` for uniform (docs/sade.md §3).
pub fn expected_total(dist: TestDist, classes: usize, n_max: usize) -> usize {
    let ratio = match dist {
        TestDist::Forward(r) | TestDist::Backward(r) => r,
        TestDist::Uniform => 1.0,
    };
    let denom = (classes as f64 - 1.0).max(1.0);
    (0..classes)
        .map(|k| (n_max as f64 * (1.0 / ratio).powf(k as f64 / denom)) as usize)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_totals() {
        assert_eq!(parse_distributions("all").unwrap().len(), 11);
        assert_eq!(
            parse_distributions("forward10,uniform").unwrap(),
            [TestDist::Forward(10.0), TestDist::Uniform]
        );
        assert!(parse_distributions("sideways").is_err());
        // CIFAR-100: the totals of docs/sade.md §3.
        for (d, t) in [
            (TestDist::Forward(50.0), 2486),
            (TestDist::Forward(25.0), 2956),
            (TestDist::Forward(10.0), 3876),
            (TestDist::Forward(5.0), 4932),
            (TestDist::Forward(2.0), 7166),
            (TestDist::Uniform, 10000),
            (TestDist::Backward(50.0), 2486),
        ] {
            assert_eq!(expected_total(d, 100, 100), t, "{d}");
        }
    }
}
