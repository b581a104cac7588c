//! The preset registry.

use std::collections::HashSet;

use longtail_backbone::Blocks;
use longtail_tlc::{Tlc, TlcLoss, TlcSettings, PRESETS};
use longtail_train::{MethodKind, RunConfig};

fn preset(name: &str) -> RunConfig {
    PRESETS
        .iter()
        .find(|p| p.name == name)
        .unwrap_or_else(|| panic!("no preset {name}"))
        .config()
}

fn settings(c: &RunConfig) -> TlcSettings {
    Tlc::settings(c).unwrap()
}

fn lr(c: &RunConfig, epoch: usize) -> f64 {
    c.optim.schedule.lr(c.optim.lr, epoch, c.optim.epochs)
}

#[test]
fn every_preset_builds_and_is_valid() {
    let mut names = HashSet::new();
    for p in PRESETS {
        assert!(names.insert(p.name), "duplicate preset {}", p.name);
        assert!(p.name.starts_with("tlc."));
        let r = p.config();
        Tlc.check(&r).unwrap();
        r.check_common().unwrap();
        let s = settings(&r);
        s.loss.check().unwrap();
        assert!(
            s.loss.reweight_epoch < r.optim.epochs,
            "{}: DRW phase must be reached",
            p.name
        );
        TlcLoss::new(s.loss.clone(), &vec![10; r.model.num_classes]).unwrap();
        assert_eq!(RunConfig::from_toml(&r.to_toml().unwrap()).unwrap(), r);
    }
}

#[test]
fn cifar_schedule_matches_the_official_lambda_lr() {
    let r = preset("tlc.cifar10-lt.if100.e3");
    for (e, want) in [
        (1, 0.02),
        (5, 0.1),
        (6, 0.1),
        (160, 0.1),
        (161, 1e-3),
        (180, 1e-3),
        (181, 1e-5),
        (200, 1e-5),
    ] {
        assert!((lr(&r, e) - want).abs() < 1e-12, "epoch {e}: {}", lr(&r, e));
    }
    assert_eq!(settings(&r).loss.annealing_period(), 13200.0);
    assert_eq!(r.optim.eval_batch_size, 4096);
    let c100 = preset("tlc.cifar100-lt.if100.e3");
    assert_eq!(
        (c100.model.num_classes, c100.optim.sgd.weight_decay),
        (100, 5e-4)
    );
    let inet = preset("tlc.imagenet-lt.e3");
    assert_eq!(settings(&inet).loss.annealing_period(), 29000.0);
    assert!((lr(&inet, 61) - 0.01).abs() < 1e-12 && (lr(&inet, 81) - 0.001).abs() < 1e-12);
    assert_eq!(inet.optim.eval_batch_size, 512);
    let fm = preset("tlc.fmnist-lt");
    assert_eq!(
        (fm.model.in_channels, fm.model.blocks_per_stage.clone()),
        (1, Some(Blocks::PerStage(vec![1, 1, 1])))
    );
    // DRW and the lr drop start together, at epoch 25 of 32.
    assert_eq!(
        (fm.optim.epochs, settings(&fm).loss.reweight_epoch),
        (32, 24)
    );
    assert!((lr(&fm, 24) - 0.1).abs() < 1e-12 && (lr(&fm, 25) - 0.01).abs() < 1e-12);
}
