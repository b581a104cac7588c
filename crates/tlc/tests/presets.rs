//! The preset registry.

use std::collections::HashSet;

use longtail_tlc::{preset, TlcError, TlcLoss, PRESETS};

#[test]
fn every_preset_builds_and_is_valid() {
    let mut names = HashSet::new();
    for p in PRESETS {
        assert!(names.insert(p.name), "duplicate preset {}", p.name);
        assert!(p.name.starts_with("tlc."));
        let r = (p.build)();
        r.loss.check().unwrap();
        assert!(
            r.loss.reweight_epoch < r.epochs,
            "{}: DRW phase must be reached",
            p.name
        );
        TlcLoss::new(r.loss.clone(), &vec![10; r.num_classes]).unwrap();
        assert_eq!(preset(p.name).unwrap(), r);
    }
    assert!(matches!(
        preset("tlc.nope"),
        Err(TlcError::UnknownPreset { .. })
    ));
}

#[test]
fn cifar_schedule_matches_the_official_lambda_lr() {
    let r = preset("tlc.cifar10-lt.if100.e3").unwrap();
    let lr = |e| r.learning_rate(e);
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
        assert!((lr(e) - want).abs() < 1e-12, "epoch {e}: {}", lr(e));
    }
    assert_eq!(r.loss.annealing_period(), 13200.0);
    let c100 = preset("tlc.cifar100-lt.if100.e3").unwrap();
    assert_eq!((c100.num_classes, c100.weight_decay), (100, 5e-4));
    let inet = preset("tlc.imagenet-lt.e3").unwrap();
    assert_eq!(inet.loss.annealing_period(), 29000.0);
    assert!(
        (inet.learning_rate(61) - 0.01).abs() < 1e-12
            && (inet.learning_rate(81) - 0.001).abs() < 1e-12
    );
    let fm = preset("tlc.fmnist-lt").unwrap();
    assert_eq!(
        (fm.input_shape, fm.stage_blocks.clone()),
        ([1, 28, 28], vec![1, 1, 1])
    );
    // DRW and the lr drop start together, at epoch 25 of 32.
    assert_eq!((fm.epochs, fm.loss.reweight_epoch), (32, 24));
    assert!(
        (fm.learning_rate(24) - 0.1).abs() < 1e-12 && (fm.learning_rate(25) - 0.01).abs() < 1e-12
    );
}
