//! Run folders and size limits (issue 14): the folder lock, what a resume needs (a run, the same
//! config field by field, the full optimizer state), and networks too large for the machine or
//! for the weights they are loaded from, refused before anything is allocated.

use std::collections::BTreeMap;

use candle_core::{DType, Device};
use candle_nn::{VarBuilder, VarMap};
use longtail_backbone::{Arch, BackboneConfig, Blocks, Layout, MultiExpert};
use longtail_baselines::CrossEntropy;
use longtail_data::AugmentKind;
use longtail_train::{
    check_fits_in, checkpoint, fit, load_run, DataConfig, LrSchedule, MethodConfig, OptimConfig,
    RunConfig, RunLock, SgdConfig, SizeEstimate, TrainError, LOCK_FILE,
};

use super::{opts, setup, train_cfg};

#[test]
fn a_run_folder_lock_is_exclusive_and_names_its_holder() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let lock = RunLock::acquire(&run, "longtail train").unwrap();
    assert!(run.is_dir());
    assert_eq!(lock.path(), run.join(LOCK_FILE));
    let me = format!("pid {}, longtail train", std::process::id());
    assert_eq!(
        std::fs::read_to_string(lock.path()).unwrap(),
        format!("{me}\n")
    );
    // flock is per open file: a second acquire fails even in the same process.
    let e = RunLock::acquire(&run, "longtail route").unwrap_err();
    match &e {
        TrainError::Locked { holder, .. } => assert_eq!(holder, &me),
        other => panic!("expected Locked, got {other:?}"),
    }
    let text = e.to_string();
    assert!(
        text.contains("in use by another longtail process (pid"),
        "{text}"
    );
    assert!(text.contains("run"), "{text}");
    drop(lock);
    let again = RunLock::acquire(&run, "longtail route").unwrap();
    assert_eq!(
        std::fs::read_to_string(again.path()).unwrap(),
        format!("pid {}, longtail route\n", std::process::id())
    );
}

#[test]
fn resume_needs_a_run_the_same_config_and_the_full_optimizer_state() -> Result<(), TrainError> {
    let (cfg, data) = setup();
    let dir = tempfile::tempdir().unwrap();
    let last = dir.path().join("last.safetensors");
    let (vm, model) = MultiExpert::seeded(&cfg, 1, &Device::Cpu)?;
    let e = fit(
        &model,
        &vm,
        &mut CrossEntropy,
        &data,
        &train_cfg(2),
        &opts(dir.path(), true),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("nothing to resume in"), "{e}");
    assert!(!last.exists());

    let with_config = |resume: bool, config: &str| {
        let mut o = opts(dir.path(), resume);
        o.metadata.insert("config".into(), config.into());
        o
    };
    let run = "seed = 7\n[optim]\nlr = 0.1\nepochs = 2\n";
    fit(
        &model,
        &vm,
        &mut CrossEntropy,
        &data,
        &train_cfg(1),
        &with_config(false, run),
    )?;
    let before = std::fs::read(&last).unwrap();
    let asked = "seed = 8\n[optim]\nlr = 0.05\nepochs = 2\nbatch = 3\n";
    let e = fit(
        &model,
        &vm,
        &mut CrossEntropy,
        &data,
        &train_cfg(1),
        &with_config(true, asked),
    )
    .unwrap_err()
    .to_string();
    for field in [
        "another config",
        "optim.lr: 0.1 in the run, 0.05 asked",
        "seed: 7 in the run, 8 asked",
        "optim.batch: not set in the run, 3 asked",
    ] {
        assert!(e.contains(field), "`{field}` not in: {e}");
    }
    assert!(!e.contains("epochs"), "{e}");
    assert_eq!(std::fs::read(&last).unwrap(), before);
    // The same config written differently is the same config.
    let same = "seed=7\n\n[optim]\nepochs = 2\nlr = 0.1\n";
    fit(
        &model,
        &vm,
        &mut CrossEntropy,
        &data,
        &train_cfg(1),
        &with_config(true, same),
    )?;

    // Without its momentum buffers (as an exported model), or with one missing, the checkpoint
    // cannot continue the run: refused, with what is missing.
    let ck = checkpoint::load(&last, &Device::Cpu)?;
    let trainable = longtail_train::trainable_vars(&vm).len();
    assert_eq!(ck.momentum.len(), trainable);
    checkpoint::save(&last, &vm, None, &ck.metadata)?;
    let e = fit(
        &model,
        &vm,
        &mut CrossEntropy,
        &data,
        &train_cfg(2),
        &with_config(true, run),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("lacks the optimizer state"), "{e}");
    assert!(
        e.contains(&format!("for {trainable} of the {trainable} trainable")),
        "{e}"
    );
    let mut partial: BTreeMap<_, _> = ck.momentum.clone();
    let dropped = partial.keys().next().unwrap().clone();
    partial.remove(&dropped);
    checkpoint::save(&last, &vm, Some(&partial), &ck.metadata)?;
    let e = fit(
        &model,
        &vm,
        &mut CrossEntropy,
        &data,
        &train_cfg(2),
        &with_config(true, run),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains(&format!("for 1 of the {trainable}")), "{e}");
    assert!(e.contains(&dropped), "{e}");
    Ok(())
}

fn run_config(model: BackboneConfig) -> RunConfig {
    let schedule = LrSchedule::Steps {
        warmup: 0,
        step1: 1,
        step2: 1,
        gamma: 0.1,
    };
    let mut optim = OptimConfig::new(1, 128, 0.1, SgdConfig::default(), schedule);
    optim.eval_batch_size = 256;
    RunConfig {
        preset: None,
        seed: 0,
        method: MethodConfig::bare("ce"),
        data: DataConfig::new("fmnist-lt", None, AugmentKind::default()),
        model,
        optim,
    }
}

fn small(mut cfg: BackboneConfig, blocks: Blocks) -> BackboneConfig {
    cfg.blocks_per_stage = Some(blocks);
    cfg
}

/// The estimate's parameter count is exactly what the network allocates, for every family and
/// layout (the size checks rely on it never counting more than a checkpoint must hold).
#[test]
fn the_size_estimate_counts_every_parameter_the_network_allocates() {
    let mut linear = BackboneConfig::baseline_cifar(7);
    linear.use_norm = false;
    linear.in_channels = 1;
    let mut shared3 = small(
        BackboneConfig::new(Arch::Resnet50, Layout::SharedLayer3, 2, 5),
        Blocks::Uniform(1),
    );
    shared3.widths = Some(vec![8, 16, 16, 32]);
    let configs = [
        small(BackboneConfig::ride_cifar(3, 10), Blocks::Uniform(1)),
        small(BackboneConfig::tlc_cifar(2, 7), Blocks::Uniform(2)),
        BackboneConfig::baseline_cifar(100),
        linear,
        small(
            BackboneConfig::ride_imagenet(Arch::Resnet50, 2, 5),
            Blocks::PerStage(vec![1, 2, 1, 1]),
        ),
        small(
            BackboneConfig::ride_imagenet(Arch::Resnext50, 2, 5),
            Blocks::Uniform(1),
        ),
        shared3,
    ];
    for cfg in configs {
        let vm = VarMap::new();
        MultiExpert::new(&cfg, VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu)).unwrap();
        let held: usize = vm.all_vars().iter().map(|v| v.elem_count()).sum();
        let est = SizeEstimate::of(&cfg, 32, 32);
        assert_eq!(est.parameters, held as f64, "{cfg:?}");
        assert!(est.activations_per_image > 0.0);
    }
}

/// `--experts 1000` on the bundled recipe needs about 65 GB (62 MB measured per expert): refused
/// on a 24 GB machine, with the estimate; the 3-expert recipe fits.
#[test]
fn a_run_that_cannot_fit_in_memory_is_refused_with_the_estimate() {
    let mut model = small(BackboneConfig::ride_cifar(3, 10), Blocks::Uniform(1));
    model.in_channels = 1;
    let mut cfg = run_config(model);
    let machine = 24e9;
    check_fits_in(&cfg, 28, 28, machine).unwrap();
    cfg.model.num_experts = 1000;
    let e = check_fits_in(&cfg, 28, 28, machine).unwrap_err();
    assert!(matches!(e, TrainError::TooLarge(_)), "{e:?}");
    let text = e.to_string();
    for needle in [
        "this run needs about",
        "GB of memory",
        "24.0 GB",
        "1000 experts",
    ] {
        assert!(text.contains(needle), "`{needle}` not in: {text}");
    }
    // Absurd sizes saturate instead of overflowing.
    cfg.model.num_experts = usize::MAX / 2;
    cfg.optim.batch_size = usize::MAX / 2;
    assert!(check_fits_in(&cfg, 28, 28, machine).is_err());
}

/// Evaluation holds a few of the largest activations at a time, not every layer's: the
/// ImageNet-LT recipe (ResNeXt-50, 3 experts, 1000 classes, 224²) at training batch 8 with the
/// official evaluation batch of 256 fits 24 GB (sizing evaluation like training asked 61 GB);
/// an evaluation batch of 20,000 is refused, naming the setting that fixes it.
#[test]
fn evaluation_batches_are_sized_as_forward_passes() {
    let model = BackboneConfig::ride_imagenet(Arch::Resnext50, 3, 1000);
    let mut cfg = run_config(model);
    cfg.optim.batch_size = 8;
    let machine = 24e9;
    check_fits_in(&cfg, 224, 224, machine).unwrap();
    let est = SizeEstimate::of(&cfg.model, 224, 224);
    // The largest activation: layer1's 256 × 56 × 56 outputs (ResNeXt-50's 3×3 width is 128).
    assert_eq!(est.largest_activation, (256 * 56 * 56) as f64);
    assert!(est.evaluation_bytes(256) < est.training_bytes(256) / 10.0);
    cfg.optim.eval_batch_size = 20_000;
    let e = check_fits_in(&cfg, 224, 224, machine)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("an evaluation batch of 20000") && e.contains("optim.eval_batch_size"),
        "{e}"
    );
}

/// A checkpoint whose stored config describes a larger network than its weights (here 100,000
/// classes on 3-class weights) is refused before the network is built.
#[test]
fn load_run_refuses_a_config_larger_than_the_weights_it_stores() -> Result<(), TrainError> {
    let (model, _) = setup();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("last.safetensors");
    let (vm, _) = MultiExpert::seeded(&model, 1, &Device::Cpu)?;
    let save = |classes: usize| -> Result<(), TrainError> {
        let mut m = model.clone();
        m.num_classes = classes;
        let meta = BTreeMap::from([
            ("config".to_string(), run_config(m).to_toml()?),
            ("class_counts".to_string(), "[24, 12, 6]".to_string()),
        ]);
        checkpoint::save(&path, &vm, None, &meta)
    };
    save(3)?;
    load_run(&path, &Device::Cpu)?;
    save(100_000)?;
    let e = load_run(&path, &Device::Cpu).err().unwrap().to_string();
    assert!(e.contains("describes a network of"), "{e}");
    assert!(e.contains("100000 classes"), "{e}");
    Ok(())
}
