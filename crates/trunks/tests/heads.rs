//! Multi-expert heads on the tiny random DINOv2 / ViT trunks: every method's loss trains them
//! (RIDE, CE), they are deterministic, checkpoint atomically with the trunk in the metadata, and
//! their `[N, E, C]` logits feed test-time aggregation.

use std::collections::BTreeMap;

use candle_core::{Device, Tensor};
use longtail_aggregate::{experts_first, AggregatorConfig, TestTimeAggregator};
use longtail_data::Dataset;
use longtail_metrics::{shot_groups, ShotRule};
use longtail_train::{Method, MethodKind, RunConfig};
use longtail_trunks::{
    evaluate_heads, extract_features, load_heads, read_features, save_heads, train_heads,
    ExpertHeads, ExtractOptions, FeatureSet, HeadClassifier, HeadsConfig, HeadsEpoch, HeadsFit,
    LoadOptions, PretrainedTrunk, TrunkError, TrunkRef,
};

use crate::common::{trunk_folder, TestResult};

const SIDE: usize = 16;
const CLASSES: usize = 10;

/// A long-tailed 10-class set of 16×16 gray images: class `c` is a bright 4×4 block at its own
/// place on a dark, noisy background; `per_class(c)` images of class `c`.
fn blocks(per_class: impl Fn(usize) -> usize, seed: u64) -> Dataset {
    let mut state = seed;
    let (mut images, mut labels) = (vec![], vec![]);
    for c in 0..CLASSES {
        for _ in 0..per_class(c) {
            let (cy, cx) = ((c / 4) * 4 + 2, (c % 4) * 4);
            for y in 0..SIDE {
                for x in 0..SIDE {
                    state = state
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    let inside = (cy..cy + 4).contains(&y) && (cx..cx + 4).contains(&x);
                    images.push(if inside { 200 } else { 30 } + (state >> 59) as u8);
                }
            }
            labels.push(c as u32);
        }
    }
    Dataset::new(
        "blocks",
        images,
        labels,
        (SIDE, SIDE, 1),
        CLASSES,
        vec![],
        vec![],
    )
    .unwrap()
}

/// Training counts 120 · 0.1^(c/9) (imbalance 10: one many-shot class, seven medium, two
/// few), test 10 per class.
fn splits() -> (Dataset, Dataset) {
    let train = blocks(
        |c| (120.0 * 0.1f64.powf(c as f64 / 9.0)).round() as usize,
        1,
    );
    (train, blocks(|_| 10, 2))
}

struct Cached {
    trunk: PretrainedTrunk,
    train: FeatureSet,
    test: FeatureSet,
    counts: Vec<usize>,
}

/// The fixture trunk `name`, the features of both splits through the feature cache.
fn cached(dir: &std::path::Path, name: &str) -> Cached {
    let trunk = PretrainedTrunk::load(
        &TrunkRef::Local(trunk_folder(dir, name)),
        &LoadOptions::default(),
    )
    .unwrap();
    let (train, test) = splits();
    let mut sets = vec![];
    for (split, data) in [("train", &train), ("test", &test)] {
        let path = dir.join(format!("cache/{name}.{split}.safetensors"));
        extract_features(&trunk, data, &path, &ExtractOptions::default()).unwrap();
        sets.push(FeatureSet::from(
            read_features(&path, &Device::Cpu).unwrap(),
        ));
    }
    let test_set = sets.pop().unwrap();
    let train_set = sets.pop().unwrap();
    Cached {
        counts: train_set.class_counts(CLASSES),
        trunk,
        train: train_set,
        test: test_set,
    }
}

fn preset(name: &str) -> RunConfig {
    longtail_ride::presets::PRESETS
        .iter()
        .find(|p| p.name == name)
        .unwrap()
        .config()
}

/// `ride.fmnist-lt`'s loss and optimisation, `epochs` long, batch 32.
fn ride_config(epochs: usize) -> RunConfig {
    let mut cfg = preset("ride.fmnist-lt");
    cfg.optim.epochs = epochs;
    cfg.optim.batch_size = 32;
    cfg
}

fn build(kind: &dyn MethodKind, cfg: &RunConfig, counts: &[usize]) -> Box<dyn Method> {
    kind.check(cfg).unwrap();
    kind.build(cfg, counts, &Device::Cpu).unwrap()
}

fn train(
    c: &Cached,
    cfg: &RunConfig,
    kind: &dyn MethodKind,
    heads_cfg: &HeadsConfig,
) -> (candle_nn::VarMap, ExpertHeads, HeadsFit) {
    let mut method = build(kind, cfg, &c.counts);
    let (varmap, heads) = ExpertHeads::seeded(heads_cfg, cfg.seed, &Device::Cpu).unwrap();
    let shots = shot_groups(&c.counts, ShotRule::Ride);
    let fit = train_heads(
        &heads,
        &varmap,
        method.as_mut(),
        &c.train,
        Some(&c.test),
        &shots,
        &cfg.train_config(),
        |_| {},
    )
    .unwrap();
    (varmap, heads, fit)
}

fn first_last(h: &[HeadsEpoch]) -> (&HeadsEpoch, &HeadsEpoch) {
    (&h[0], h.last().unwrap())
}

#[test]
fn ride_and_ce_heads_learn_on_dinov2_features() -> TestResult {
    let d = tempfile::tempdir()?;
    let c = cached(d.path(), "dinov2_tiny_random");
    let dim = c.trunk.trunk.feature_dim();
    assert_eq!(c.train.features.dims(), &[c.train.len(), dim]);

    // RIDE: 3 cosine experts (the preset's model: use_norm, s = 30).
    let cfg = ride_config(12);
    let heads_cfg = HeadsConfig::for_run(&cfg, dim);
    assert_eq!(heads_cfg.num_experts, 3);
    assert_eq!(heads_cfg.classifier, HeadClassifier::Cosine { scale: 30.0 });
    let (_, heads, fit) = train(&c, &cfg, &longtail_ride::Ride, &heads_cfg);
    let (first, last) = first_last(&fit.history);
    eprintln!("RIDE {first:?}\n  → {last:?}");
    assert!(
        last.loss < 0.8 * first.loss,
        "RIDE loss {first:?} → {last:?}"
    );
    assert!(
        last.accuracy > first.accuracy && last.accuracy > 0.6,
        "RIDE training accuracy {first:?} → {last:?}"
    );
    let test = fit.test.as_ref().unwrap();
    // Chance is 10 %.
    assert!(test.report.accuracy > 0.5, "{:?}", test.report);
    assert!(
        test.report.many.is_some() && test.report.medium.is_some() && test.report.few.is_some()
    );
    assert_eq!((test.num_experts, test.experts.len()), (3, 3));
    assert_eq!(test.expert_logits.len(), c.test.len() * 3 * CLASSES);
    assert_eq!(fit.history.len(), 12);

    // The output has the backbone's shapes, and `logits` is the experts' mean.
    let out = heads.forward(&c.test.features.narrow(0, 0, 5)?)?;
    assert_eq!(out.expert_logits.dims(), &[5, 3, CLASSES]);
    assert_eq!(out.features.dims(), &[5, 3, dim]);
    let mean = out.expert_logits.mean(1)?;
    assert!(crate::common::max_abs_diff(&mean, &out.logits) < 1e-6);

    // Test-time aggregation on the heads' [N, E, C] logits: two "views" of the test set (the
    // clean features, and the same features with a fixed small perturbation).
    let n = c.test.len();
    let plain = Tensor::from_vec(test.expert_logits.clone(), (n, 3, CLASSES), &Device::Cpu)?;
    let noise = Tensor::from_vec(
        (0..n * dim)
            .map(|i| ((i * 7919 % 97) as f32 / 97.0 - 0.5) * 0.2)
            .collect(),
        (n, dim),
        &Device::Cpu,
    )?;
    let view_b = heads.forward(&(&c.test.features + noise)?)?.expert_logits;
    let agg = TestTimeAggregator::new(AggregatorConfig::cifar100_lt())?;
    let fitted = agg.fit(&experts_first(&plain)?, &experts_first(&view_b)?)?;
    assert_eq!(fitted.weights.len(), 3);
    assert!((fitted.weights.iter().sum::<f64>() - 1.0).abs() < 1e-6);
    assert_eq!(
        fitted.predict(&experts_first(&plain)?)?.dims(),
        &[n, CLASSES]
    );

    // CE: the same recipe with one plain expert (ce_baseline_of: use_norm stays as the recipe's).
    let ce_cfg = longtail_baselines::ce_baseline_of(&cfg);
    let ce_heads = HeadsConfig::for_run(&ce_cfg, dim);
    assert_eq!(ce_heads.num_experts, 1);
    let (_, _, ce) = train(&c, &ce_cfg, &longtail_baselines::Ce, &ce_heads);
    let (first, last) = first_last(&ce.history);
    eprintln!("CE {first:?}\n  → {last:?}");
    assert!(last.loss < 0.8 * first.loss, "CE loss {first:?} → {last:?}");
    assert!(
        last.accuracy > first.accuracy && last.accuracy > 0.6,
        "CE training accuracy {first:?} → {last:?}"
    );
    assert!(ce.test.unwrap().report.accuracy > 0.5);
    Ok(())
}

#[test]
fn linear_heads_with_adapters_learn_on_vit_features() -> TestResult {
    let d = tempfile::tempdir()?;
    let c = cached(d.path(), "vit_tiny_random");
    let cfg = ride_config(12);
    let heads_cfg = HeadsConfig {
        classifier: HeadClassifier::Linear,
        adapter: Some(16),
        ..HeadsConfig::for_run(&cfg, c.trunk.trunk.feature_dim())
    };
    let (varmap, _, fit) = train(&c, &cfg, &longtail_ride::Ride, &heads_cfg);
    let (first, last) = first_last(&fit.history);
    eprintln!("linear + adapters {first:?}\n  → {last:?}");
    assert!(last.loss < first.loss, "{first:?} → {last:?}");
    assert!(last.accuracy > first.accuracy, "{first:?} → {last:?}");
    // The adapters moved away from their zero start.
    let up = varmap.data().lock().unwrap()["experts.0.adapter.up.weight"]
        .as_tensor()
        .clone();
    assert!(up.abs()?.sum_all()?.to_scalar::<f32>()? > 0.0);
    // Six tensors per expert, and the standardisation's mean and variance.
    assert_eq!(varmap.all_vars().len(), 3 * 6 + 2);
    Ok(())
}

#[test]
fn training_is_deterministic_and_checkpoints_round_trip() -> TestResult {
    let d = tempfile::tempdir()?;
    let c = cached(d.path(), "dinov2_tiny_random");
    let cfg = ride_config(3);
    let heads_cfg = HeadsConfig::for_run(&cfg, c.trunk.trunk.feature_dim());
    let meta = BTreeMap::from([
        ("trunk".to_string(), c.trunk.files.id.clone()),
        ("revision".to_string(), c.trunk.files.revision.clone()),
        ("config".to_string(), cfg.to_toml()?),
    ]);
    let mut files = vec![];
    let mut histories = vec![];
    for run in 0..2 {
        let (varmap, _, fit) = train(&c, &cfg, &longtail_ride::Ride, &heads_cfg);
        let path = d.path().join(format!("heads{run}.safetensors"));
        save_heads(&path, &varmap, &heads_cfg, &meta)?;
        files.push(std::fs::read(&path)?);
        histories.push(fit.history.iter().map(|h| h.loss).collect::<Vec<_>>());
    }
    assert_eq!(histories[0], histories[1]);
    assert!(files[0] == files[1], "same seed, same bytes");
    // Nothing but the two checkpoints and the cache folder: no temporary left behind.
    assert_eq!(std::fs::read_dir(d.path())?.count(), 4);

    let (varmap, heads, fit) = train(&c, &cfg, &longtail_ride::Ride, &heads_cfg);
    let path = d.path().join("heads0.safetensors");
    let loaded = load_heads(&path, &Device::Cpu)?;
    assert_eq!(loaded.heads.config(), &heads_cfg);
    assert_eq!(loaded.metadata["trunk"], c.trunk.files.id);
    assert_eq!(loaded.metadata["config"], cfg.to_toml()?);
    let x = c.test.features.narrow(0, 0, 7)?;
    let a = heads.forward(&x)?.expert_logits;
    let b = loaded.heads.forward(&x)?.expert_logits;
    assert_eq!(crate::common::max_abs_diff(&a, &b), 0.0);
    // The evaluation of the loaded heads is the final one of the run.
    let shots = shot_groups(&c.counts, ShotRule::Ride);
    let again = evaluate_heads(
        &loaded.heads,
        &|o| Ok(o.logits.clone()),
        &c.test,
        &shots,
        13,
    )?;
    assert_eq!(again.report, fit.test.unwrap().report);
    drop(varmap);
    Ok(())
}

#[test]
fn bad_inputs_are_typed_errors() -> TestResult {
    let d = tempfile::tempdir()?;
    let dev = Device::Cpu;
    let (_, heads) = ExpertHeads::seeded(&HeadsConfig::new(2, 3, 8), 0, &dev)?;
    let err = heads.forward(&Tensor::zeros((4, 9), candle_core::DType::F32, &dev)?);
    assert!(err
        .unwrap_err()
        .to_string()
        .contains("8-wide features, got 9-wide"));

    assert!(matches!(
        HeadsConfig::new(0, 3, 8).check(),
        Err(TrunkError::BadHeads(_))
    ));
    let features = Tensor::zeros((4, 8), candle_core::DType::F32, &dev)?;
    assert!(matches!(
        FeatureSet::new(features.clone(), vec![0, 1]),
        Err(TrunkError::BadHeads(_))
    ));

    // A label the heads cannot predict.
    let (varmap, heads) = ExpertHeads::seeded(&HeadsConfig::new(3, 3, 8), 0, &dev)?;
    let set = FeatureSet::new(features, vec![0, 1, 2, 5])?;
    let cfg = ride_config(1);
    let mut method = build(&longtail_ride::Ride, &cfg, &[2, 1, 1]);
    let shots = shot_groups(&[2, 1, 1], ShotRule::Ride);
    let err = train_heads(
        &heads,
        &varmap,
        method.as_mut(),
        &set,
        None,
        &shots,
        &cfg.train_config(),
        |_| {},
    )
    .err()
    .unwrap();
    assert!(err.to_string().contains("label 5"), "{err}");

    // A file that is not a heads checkpoint.
    let path = d.path().join("other.safetensors");
    candle_core::safetensors::save(
        &std::collections::HashMap::from([(
            "x".to_string(),
            Tensor::zeros(2, candle_core::DType::F32, &dev)?,
        )]),
        &path,
    )?;
    assert!(matches!(
        load_heads(&path, &dev),
        Err(TrunkError::BadHeads(m)) if m.contains("not a heads checkpoint")
    ));
    Ok(())
}
