//! Training-loop tests on tiny synthetic data: learning, bit-identical resume, NaN stop; and,
//! as modules, byte-reproducible checkpoints, checkpoint-reading fuzz tests, and run folders
//! (lock, resume checks) and size limits, and mixup as a training option.

mod checkpoint_bytes;
mod fuzz;
mod mixup;
mod run_folder;

use std::collections::BTreeMap;
use std::sync::Arc;

use candle_core::{Device, Tensor};
use longtail_backbone::{Arch, BackboneConfig, Blocks, ExpertOutput, Layout, MultiExpert};
use longtail_baselines::CrossEntropy;
use longtail_data::Batch;
use longtail_data::{shot_groups, Augment, Dataset, Normalize, SamplerKind, ShotRule, Transform};
use longtail_train::{
    checkpoint, fit, LrSchedule, Method, Progress, RunOptions, SgdConfig, TrainConfig, TrainData,
    TrainError,
};

/// 3 classes of 8×8 grey images: a bright row band at the top, middle or bottom, plus noise
/// from a fixed linear congruential generator, long-tailed 24 / 12 / 6.
fn tiny(counts: &[usize], salt: u64) -> Dataset {
    let mut state = 12345u64 ^ salt;
    let mut noise = || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (state >> 59) as u8
    };
    let (mut images, mut labels) = (vec![], vec![]);
    for (c, &n) in counts.iter().enumerate() {
        for _ in 0..n {
            for y in 0..8 {
                for _x in 0..8 {
                    let on = y / 3 == c || (c == 2 && y >= 6);
                    images.push(if on { 200 } else { 30 } + noise());
                }
            }
            labels.push(c as u32);
        }
    }
    Dataset::new(
        "tiny",
        images,
        labels,
        (8, 8, 1),
        counts.len(),
        vec![],
        vec![],
    )
    .unwrap()
}

fn setup() -> (BackboneConfig, TrainData) {
    let mut cfg = BackboneConfig::new(Arch::Resnet32, Layout::SharedLayer1, 2, 3);
    cfg.in_channels = 1;
    cfg.blocks_per_stage = Some(Blocks::Uniform(1));
    cfg.widths = Some(vec![16, 16, 16]);
    let train = tiny(&[24, 12, 6], 1);
    let shots = shot_groups(&train.class_counts(), ShotRule::Ride);
    let norm = Normalize {
        mean: vec![0.5],
        std: vec![0.25],
    };
    let data = TrainData {
        train: Arc::new(train),
        val: Some(Arc::new(tiny(&[3, 3, 3], 2))),
        test: Arc::new(tiny(&[5, 5, 5], 3)),
        train_transform: Transform::train(Augment::none(), norm.clone()),
        eval_transform: Transform::eval(norm),
        shots,
    };
    (cfg, data)
}

fn train_cfg(epochs: usize) -> TrainConfig {
    TrainConfig {
        epochs,
        batch_size: 16,
        lr: 0.05,
        schedule: LrSchedule::Steps {
            warmup: 1,
            step1: 3,
            step2: 4,
            gamma: 0.1,
        },
        sgd: SgdConfig::default(),
        seed: 7,
        accumulate: 1,
        sampler: SamplerKind::Shuffled,
        eval_batch_size: 32,
        mixup_alpha: None,
        sync_bn: false,
        lr_groups: vec![],
    }
}

fn opts(dir: &std::path::Path, resume: bool) -> RunOptions {
    RunOptions {
        out_dir: dir.to_path_buf(),
        resume,
        metadata: BTreeMap::from([("config".to_string(), "tiny".to_string())]),
        progress: Progress::Quiet,
        device: Device::Cpu,
        comm: longtail_train::Communicator::local(),
    }
}

fn weights(vm: &candle_nn::VarMap) -> Vec<(String, Vec<f32>)> {
    let data = vm.data().lock().unwrap();
    let mut v: Vec<_> = data
        .iter()
        .map(|(k, t)| {
            (
                k.clone(),
                t.as_tensor()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap(),
            )
        })
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

#[test]
fn loss_goes_down_and_metrics_are_logged() -> Result<(), TrainError> {
    let dir = tempfile::tempdir().unwrap();
    let (cfg, data) = setup();
    let (vm, model) = MultiExpert::seeded(&cfg, 1, &Device::Cpu)?;
    let s = fit(
        &model,
        &vm,
        &mut CrossEntropy,
        &data,
        &train_cfg(5),
        &opts(dir.path(), false),
    )?;
    let first = s.history.first().unwrap().loss;
    let last = s.history.last().unwrap().loss;
    assert!(last < 0.7 * first, "loss {first} → {last}");
    assert_eq!(s.history.len(), 5);
    assert!(s.history.iter().all(|r| r.val_accuracy.is_some()));
    let lines = std::fs::read_to_string(dir.path().join("metrics.jsonl")).unwrap();
    assert_eq!(lines.lines().count(), 5);
    assert!(lines.contains("\"many_shot_acc\"") && lines.contains("\"few_shot_acc\""));
    // The learning rate follows the schedule: 0.05 until the 0-based step at 3, then ×0.1.
    assert!((s.history[2].lr - 0.05).abs() < 1e-12 && (s.history[3].lr - 0.005).abs() < 1e-12);
    assert_eq!(
        checkpoint::load(&dir.path().join("last.safetensors"), &Device::Cpu)?.epoch()?,
        5
    );
    assert!(dir.path().join("best.safetensors").exists());
    assert_eq!(s.test.experts.len(), 2);
    Ok(())
}

#[test]
fn a_resumed_run_is_bit_identical_to_an_uninterrupted_one() -> Result<(), TrainError> {
    let (cfg, data) = setup();
    let straight = tempfile::tempdir().unwrap();
    let (vm_a, model_a) = MultiExpert::seeded(&cfg, 3, &Device::Cpu)?;
    fit(
        &model_a,
        &vm_a,
        &mut CrossEntropy,
        &data,
        &train_cfg(4),
        &opts(straight.path(), false),
    )?;

    // "Killed" after epoch 2: a fresh process would rebuild the model from the seed, then resume.
    let split = tempfile::tempdir().unwrap();
    let (vm_b, model_b) = MultiExpert::seeded(&cfg, 3, &Device::Cpu)?;
    fit(
        &model_b,
        &vm_b,
        &mut CrossEntropy,
        &data,
        &train_cfg(2),
        &opts(split.path(), false),
    )?;
    let (vm_c, model_c) = MultiExpert::seeded(&cfg, 99, &Device::Cpu)?; // other init: must be overwritten
    let s = fit(
        &model_c,
        &vm_c,
        &mut CrossEntropy,
        &data,
        &train_cfg(4),
        &opts(split.path(), true),
    )?;
    assert_eq!(s.resumed_from, 2);
    assert_eq!(weights(&vm_a), weights(&vm_c));
    let a = std::fs::read_to_string(straight.path().join("metrics.jsonl")).unwrap();
    let c = std::fs::read_to_string(split.path().join("metrics.jsonl")).unwrap();
    let strip = |s: &str| -> Vec<(f64, f64)> {
        s.lines()
            .map(|l| {
                let r: longtail_train::EpochRecord = serde_json::from_str(l).unwrap();
                (r.loss, r.test_accuracy)
            })
            .collect()
    };
    assert_eq!(strip(&a), strip(&c));
    Ok(())
}

#[test]
fn an_existing_run_is_not_overwritten_without_resume() -> Result<(), TrainError> {
    let dir = tempfile::tempdir().unwrap();
    let (cfg, data) = setup();
    let (vm, model) = MultiExpert::seeded(&cfg, 1, &Device::Cpu)?;
    fit(
        &model,
        &vm,
        &mut CrossEntropy,
        &data,
        &train_cfg(1),
        &opts(dir.path(), false),
    )?;
    let e = fit(
        &model,
        &vm,
        &mut CrossEntropy,
        &data,
        &train_cfg(2),
        &opts(dir.path(), false),
    )
    .unwrap_err();
    assert!(e.to_string().contains("--resume"), "{e}");
    let mut other = opts(dir.path(), true);
    other.metadata.insert("config".into(), "different".into());
    let e = fit(&model, &vm, &mut CrossEntropy, &data, &train_cfg(2), &other).unwrap_err();
    assert!(e.to_string().contains("another config"), "{e}");
    Ok(())
}

/// Cross-entropy that turns NaN from epoch 2 on.
struct NanFrom2(usize);
impl Method for NanFrom2 {
    fn name(&self) -> &str {
        "nan"
    }
    fn begin_epoch(&mut self, epoch: usize) -> candle_core::Result<()> {
        self.0 = epoch;
        Ok(())
    }
    fn loss(&self, out: &ExpertOutput, batch: &Batch) -> candle_core::Result<Tensor> {
        let l = candle_nn::loss::cross_entropy(&out.logits, &batch.labels)?;
        if self.0 >= 2 {
            l.log()?.affine(0.0, f64::NAN)
        } else {
            Ok(l)
        }
    }
}

#[test]
fn a_nan_loss_stops_and_keeps_the_last_good_checkpoint() -> Result<(), TrainError> {
    let dir = tempfile::tempdir().unwrap();
    let (cfg, data) = setup();
    let (vm, model) = MultiExpert::seeded(&cfg, 1, &Device::Cpu)?;
    let e = fit(
        &model,
        &vm,
        &mut NanFrom2(0),
        &data,
        &train_cfg(3),
        &opts(dir.path(), false),
    )
    .unwrap_err();
    assert!(
        matches!(
            e,
            TrainError::NonFiniteLoss {
                epoch: 2,
                step: 0,
                ..
            }
        ),
        "{e}"
    );
    let ck = checkpoint::load(&dir.path().join("last.safetensors"), &Device::Cpu)?;
    assert_eq!(ck.epoch()?, 1);
    Ok(())
}

#[test]
fn bad_settings_are_rejected_before_training() {
    let dir = tempfile::tempdir().unwrap();
    let (cfg, data) = setup();
    let (vm, model) = MultiExpert::seeded(&cfg, 1, &Device::Cpu).unwrap();
    let mut c = train_cfg(2);
    c.lr = -1.0;
    assert!(matches!(
        fit(
            &model,
            &vm,
            &mut CrossEntropy,
            &data,
            &c,
            &opts(dir.path(), false)
        ),
        Err(TrainError::Config(_))
    ));
    assert!(!dir.path().join("last.safetensors").exists());
}

/// `lr_groups` reach the optimizer of a run: a group at scale 0 (with no weight decay to move
/// it either) keeps its parameters, the others train; a group that matches nothing is refused.
#[test]
fn lr_groups_set_each_parameters_learning_rate_in_a_run() -> Result<(), TrainError> {
    let dir = tempfile::tempdir().unwrap();
    let (cfg, data) = setup();
    let (vm, model) = MultiExpert::seeded(&cfg, 1, &Device::Cpu)?;
    let before = weights(&vm);
    let mut tc = train_cfg(2);
    tc.sgd.weight_decay = 0.0;
    tc.lr_groups = vec![longtail_train::LrGroup {
        prefix: "backbone.linears.".into(),
        scale: 0.0,
    }];
    fit(
        &model,
        &vm,
        &mut CrossEntropy,
        &data,
        &tc,
        &opts(dir.path(), false),
    )?;
    let after = weights(&vm);
    let changed = |name: &str| {
        let b = &before.iter().find(|(n, _)| n == name).unwrap().1;
        let a = &after.iter().find(|(n, _)| n == name).unwrap().1;
        a != b
    };
    assert!(!changed("backbone.linears.0.weight"));
    assert!(changed("backbone.conv1.weight"));

    tc.lr_groups[0].prefix = "backbone.linear.".into();
    let other = tempfile::tempdir().unwrap();
    let e = fit(
        &model,
        &vm,
        &mut CrossEntropy,
        &data,
        &tc,
        &opts(other.path(), false),
    )
    .unwrap_err();
    assert!(
        e.to_string().contains("matches no trainable parameter"),
        "{e}"
    );
    Ok(())
}
