//! RIDE distillation (docs/ride.md §4): the distillation term and its gradient on hand-computed
//! values, the frozen eval-mode teacher, the settings' typed errors and the preset pairs.

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor, Var};
use longtail_backbone::MultiExpert;
use longtail_data::Batch;
use longtail_ride::distill::{
    check_teacher, set_teacher, teacher_checkpoint, teacher_config, TEACHER_EXPERTS,
};
use longtail_ride::presets::{is_distillation_stage, PRESETS};
use longtail_ride::{
    distill_kl, DistillConfig, Ride, RideError, RideLoss, RideLossConfig, RideMethod,
};
use longtail_train::{
    checkpoint, trainable_vars, LrSchedule, MethodConfig, MethodKind, RunConfig, Sgd, SgdConfig,
    TrainError,
};

type R = Result<(), Box<dyn std::error::Error>>;

fn preset(name: &str) -> RunConfig {
    PRESETS
        .iter()
        .find(|p| p.name == name)
        .unwrap_or_else(|| panic!("no preset {name}"))
        .config()
}

fn settings(c: &RunConfig) -> RideLossConfig {
    c.method.settings().unwrap()
}

fn ride_error(e: &TrainError) -> &RideError {
    match e {
        TrainError::Method { source, .. } => source
            .downcast_ref::<RideError>()
            .unwrap_or_else(|| panic!("not a RideError: {e}")),
        other => panic!("not a method error: {other}"),
    }
}

// Fixed logits, B = 2, C = 3, T = 1.5. The expected values were computed by hand in f64 (Python):
//   p = softmax(t/T), q = softmax(s/T) row by row,
//   T²·Σ_i Σ_c p_ic (ln p_ic − ln q_ic) / B = 0.5509655114078675,
//   a·T/B·(q − p) with a = 0.7 = [[ 0.05381211636992829, −0.10441758719246347,  0.050605470822535074],
//                                 [ 0.013408979693758365, 0.09907970318660253, −0.11248868288036094]].
const STUDENT: [[f64; 3]; 2] = [[2.0, -1.0, 0.5], [0.0, 3.0, -2.0]];
const TEACHER: [[f64; 3]; 2] = [[1.0, 0.0, -1.0], [-0.5, 2.5, 1.0]];
const KL_T2: f64 = 0.5509655114078675;
const GRAD_A07: [[f64; 3]; 2] = [
    [
        0.05381211636992829,
        -0.10441758719246347,
        0.050605470822535074,
    ],
    [
        0.013408979693758365,
        0.09907970318660253,
        -0.11248868288036094,
    ],
];

#[test]
fn distillation_term_equals_hand_computed_kl_times_t_squared() -> R {
    let dev = Device::Cpu;
    let s = Tensor::new(&STUDENT, &dev)?;
    let t = Tensor::new(&TEACHER, &dev)?;
    let got = distill_kl(&s, &t, 1.5)?.to_scalar::<f64>()?;
    assert!((got - KL_T2).abs() < 1e-6, "{got} vs {KL_T2}");
    // f32 logits, as in training.
    let got32 = distill_kl(&s.to_dtype(DType::F32)?, &t.to_dtype(DType::F32)?, 1.5)?
        .to_scalar::<f32>()? as f64;
    assert!((got32 - KL_T2).abs() < 1e-6, "{got32} vs {KL_T2}");
    // Identical distributions give 0.
    assert!(distill_kl(&t, &t, 1.5)?.to_scalar::<f64>()?.abs() < 1e-12);
    // Mismatched shapes are a typed error.
    let e = distill_kl(&s, &t.narrow(1, 0, 2)?, 1.5).unwrap_err();
    assert!(e.to_string().contains("teacher logits"), "{e}");
    Ok(())
}

#[test]
fn distillation_gradient_is_the_scaled_softmax_difference() -> R {
    let dev = Device::Cpu;
    let t = Tensor::new(&TEACHER, &dev)?;
    let teacher_var = Var::from_tensor(&t)?;
    for (times_experts, experts, factor) in [(false, 3, 1.0), (true, 3, 3.0), (true, 4, 4.0)] {
        let s = Var::from_tensor(&Tensor::new(&STUDENT, &dev)?)?;
        let ride = Var::from_tensor(&Tensor::new(0.25f64, &dev)?)?;
        let d = DistillConfig {
            weight: 0.7,
            times_experts,
            ..DistillConfig::official("unused")
        };
        let loss = RideMethod::distilled_loss(
            ride.as_tensor(),
            s.as_tensor(),
            teacher_var.as_tensor(),
            experts,
            &d,
        )?;
        // E·(RIDE + a·T²·KL) with E = 1 when not times_experts.
        let want = factor * (0.25 + 0.7 * KL_T2);
        let got = loss.to_scalar::<f64>()?;
        assert!((got - want).abs() < 1e-6, "{got} vs {want}");
        let grads = loss.backward()?;
        let g = grads
            .get(s.as_tensor())
            .expect("student grad")
            .to_vec2::<f64>()?;
        for (row, want_row) in g.iter().zip(GRAD_A07) {
            for (&got, want) in row.iter().zip(want_row) {
                assert!(
                    (got - factor * want).abs() < 1e-9,
                    "{got} vs {}",
                    factor * want
                );
            }
        }
        let gr = grads
            .get(ride.as_tensor())
            .expect("RIDE grad")
            .to_scalar::<f64>()?;
        assert!((gr - factor).abs() < 1e-12);
        assert!(
            grads.get(teacher_var.as_tensor()).is_none(),
            "the teacher's logits are detached"
        );
    }
    Ok(())
}

/// A tiny RIDE config (ResNet-s with one block per stage, 1 channel, 4 classes).
fn tiny(experts: usize) -> RunConfig {
    let mut c = preset("ride.fmnist-lt");
    c.model.num_experts = experts;
    c.model.num_classes = 4;
    c
}

/// Writes a finished run's checkpoint of `cfg` (seeded weights) to `dir/last.safetensors`.
fn write_teacher(dir: &Path, cfg: &RunConfig, epoch: usize) -> R {
    std::fs::create_dir_all(dir)?;
    let (vm, _) = MultiExpert::seeded(&cfg.model, 7, &Device::Cpu)?;
    let mut meta = BTreeMap::new();
    meta.insert("config".to_string(), cfg.to_toml()?);
    meta.insert("class_counts".to_string(), "[40, 20, 8, 2]".to_string());
    meta.insert("epoch".to_string(), epoch.to_string());
    checkpoint::save(&dir.join("last.safetensors"), &vm, None, &meta)?;
    Ok(())
}

fn snapshot(vm: &candle_nn::VarMap) -> BTreeMap<String, Vec<f32>> {
    vm.data()
        .lock()
        .unwrap()
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                v.as_tensor()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap(),
            )
        })
        .collect()
}

#[test]
fn a_training_step_leaves_the_eval_mode_teacher_unchanged() -> R {
    let dev = Device::Cpu;
    let tmp = tempfile::tempdir()?;
    let teacher_dir = tmp.path().join("teacher");
    write_teacher(&teacher_dir, &tiny(TEACHER_EXPERTS), 48)?;
    let mut student = tiny(3);
    set_teacher(&mut student, &teacher_dir)?;
    Ride.check(&student)?;
    let counts = [40, 20, 8, 2];
    let mut method = Ride.build(&student, &counts, &dev)?;
    method.begin_epoch(1)?;

    let (svm, smodel) = MultiExpert::seeded(&student.model, 1, &dev)?;
    let images = Tensor::randn(0f32, 1.0, (6, 1, 12, 12), &dev)?;
    let labels = Tensor::new(&[0u32, 1, 2, 3, 0, 1], &dev)?;
    let batch = Batch {
        images: images.clone(),
        labels: labels.clone(),
        indices: (0..6).collect(),
    };
    // The teacher as loaded from the same file, for reference and for the before/after check.
    let reference = longtail_train::load_run(&teacher_checkpoint(&teacher_dir)?, &dev)?;
    let before = snapshot(&reference.varmap);
    let student_before = snapshot(&svm);

    let out = smodel.forward_t(&images, true)?;
    let loss = method.loss(&out, &batch)?;
    // The loss is E·(RIDE + a·T²·KL(teacher in eval mode ‖ student mean)), E = 3.
    let mut ride = RideLoss::new(&settings(&student), &counts, &dev)?;
    ride.begin_epoch(1);
    let ride_value = ride.forward(&out.expert_logits, &labels)?;
    let t_eval = reference.model.forward_t(&images, false)?.logits;
    let kl = distill_kl(&out.logits, &t_eval, 1.5)?;
    let want = ((ride_value + kl.clone())? * 3.0)?.to_scalar::<f32>()?;
    let got = loss.to_scalar::<f32>()?;
    assert!(
        (got - want).abs() < 1e-4 * want.abs().max(1.0),
        "{got} vs {want}"
    );
    assert!(kl.to_scalar::<f32>()? > 0.0, "teacher and student disagree");

    let mut sgd = Sgd::new(
        trainable_vars(&svm),
        SgdConfig {
            momentum: 0.9,
            weight_decay: 5e-4,
            nesterov: true,
        },
    )?;
    sgd.set_lr(0.1);
    sgd.step(&loss.backward()?)?;

    // The student moved; the teacher (weights and BN running statistics) did not.
    assert_ne!(snapshot(&svm), student_before);
    let again = longtail_train::load_run(&teacher_checkpoint(&teacher_dir)?, &dev)?;
    assert_eq!(snapshot(&again.varmap), before, "the file is untouched");
    // The teacher the method holds: the same logits as the reference after the step, so neither
    // its weights nor its BN statistics changed (train-mode BN would have updated them).
    let out2 = smodel.forward_t(&images, false)?;
    let loss2 = method.loss(&out2, &batch)?.to_scalar::<f32>()?;
    let mut ride2 = RideLoss::new(&settings(&student), &counts, &dev)?;
    ride2.begin_epoch(1);
    let want2 = ((ride2.forward(&out2.expert_logits, &labels)?
        + distill_kl(&out2.logits, &t_eval, 1.5)?)?
        * 3.0)?
        .to_scalar::<f32>()?;
    assert!(
        (loss2 - want2).abs() < 1e-4 * want2.abs().max(1.0),
        "{loss2} vs {want2}"
    );
    // Eval mode matters: a train-mode teacher (batch statistics) gives other logits on this
    // batch, so the two checks above would fail with one.
    let t_train = reference.model.forward_t(&images, true)?.logits;
    let gap = (t_train - &t_eval)?.abs()?.max_all()?.to_scalar::<f32>()?;
    assert!(gap > 1e-3, "train-mode and eval-mode teacher agree ({gap})");
    Ok(())
}

#[test]
fn settings_errors_are_typed() -> R {
    let bad = |d: DistillConfig| -> RideError {
        RideLossConfig {
            distill: Some(d),
            ..RideLossConfig::default()
        }
        .check()
        .unwrap_err()
    };
    let ok = DistillConfig::official("runs/t");
    assert!(matches!(
        bad(DistillConfig {
            temperature: 0.0,
            ..ok.clone()
        }),
        RideError::OutOfRange {
            field: "distill.temperature",
            ..
        }
    ));
    assert!(matches!(
        bad(DistillConfig {
            temperature: f64::NAN,
            ..ok.clone()
        }),
        RideError::NonFinite {
            field: "distill.temperature",
            ..
        }
    ));
    assert!(matches!(
        bad(DistillConfig {
            weight: -1.0,
            ..ok.clone()
        }),
        RideError::OutOfRange {
            field: "distill.weight",
            ..
        }
    ));
    assert!(matches!(
        bad(DistillConfig {
            weight: f64::INFINITY,
            ..ok.clone()
        }),
        RideError::NonFinite {
            field: "distill.weight",
            ..
        }
    ));
    assert!(matches!(
        bad(DistillConfig {
            teacher: "".into(),
            ..ok.clone()
        }),
        RideError::TeacherMissing { .. }
    ));
    // Through the registry entry: the same error, typed, inside TrainError::Method.
    let mut c = tiny(3);
    let mut s = settings(&c);
    s.distill = Some(DistillConfig {
        temperature: -1.0,
        ..ok.clone()
    });
    c.method = MethodConfig::new("ride", &s)?;
    let e = Ride.check(&c).unwrap_err();
    assert!(matches!(
        ride_error(&e),
        RideError::OutOfRange {
            field: "distill.temperature",
            ..
        }
    ));
    // A typo in the table is an error, not a silent default.
    let mut c = tiny(3);
    let mut table = c.method.settings.clone();
    let mut d = toml::Table::new();
    d.insert("teacher".into(), "runs/t".into());
    d.insert("temprature".into(), 2.0.into());
    table.insert("distill".into(), d.into());
    c.method.settings = table;
    assert!(matches!(Ride.check(&c), Err(TrainError::Config(m)) if m.contains("temprature")));

    // The teacher: missing, another class count, another data set, unfinished.
    let tmp = tempfile::tempdir()?;
    let mut student = tiny(3);
    set_teacher(&mut student, &tmp.path().join("nowhere"))?;
    assert!(matches!(
        check_teacher(&student),
        Err(RideError::TeacherMissing { .. })
    ));
    let e = Ride.build(&student, &[40, 20, 8, 2], &Device::Cpu);
    let mut m = e.map_err(|e| e.to_string())?;
    let err = m.begin_epoch(1).unwrap_err().to_string();
    assert!(
        err.contains("not found") && err.contains("nowhere"),
        "{err}"
    );

    let other_classes = tmp.path().join("five");
    let mut t5 = tiny(TEACHER_EXPERTS);
    t5.model.num_classes = 5;
    write_teacher(&other_classes, &t5, 48)?;
    set_teacher(&mut student, &other_classes)?;
    assert!(matches!(
        check_teacher(&student),
        Err(RideError::TeacherMismatch {
            what: "class count",
            ..
        })
    ));
    assert!(matches!(
        longtail_ride::Teacher::load(&student, &Device::Cpu),
        Err(RideError::TeacherMismatch {
            what: "class count",
            ..
        })
    ));

    let other_data = tmp.path().join("cifar");
    let mut tc = tiny(TEACHER_EXPERTS);
    tc.data.dataset = "fmnist".into();
    write_teacher(&other_data, &tc, 48)?;
    set_teacher(&mut student, &other_data)?;
    assert!(matches!(
        check_teacher(&student),
        Err(RideError::TeacherMismatch { what, .. }) if what.starts_with("data set")
    ));

    let rgb = tmp.path().join("rgb");
    let mut t3 = tiny(TEACHER_EXPERTS);
    t3.model.in_channels = 3;
    write_teacher(&rgb, &t3, 48)?;
    set_teacher(&mut student, &rgb)?;
    assert!(matches!(
        check_teacher(&student),
        Err(RideError::TeacherMismatch {
            what: "input channels",
            ..
        })
    ));

    let unfinished = tmp.path().join("half");
    write_teacher(&unfinished, &tiny(TEACHER_EXPERTS), 20)?;
    set_teacher(&mut student, &unfinished.join("last.safetensors"))?;
    assert!(matches!(
        check_teacher(&student),
        Err(RideError::TeacherUnfinished {
            epoch: 20,
            epochs: 48,
            ..
        })
    ));

    let not_a_run = tmp.path().join("junk.safetensors");
    std::fs::write(&not_a_run, b"not safetensors")?;
    set_teacher(&mut student, &not_a_run)?;
    assert!(matches!(check_teacher(&student), Err(RideError::Train(_))));

    // Only RIDE distils; a RIDE run without a teacher has no teacher config.
    let mut ce = tiny(1);
    ce.method = MethodConfig::bare("ce");
    assert!(matches!(
        set_teacher(&mut ce, Path::new("runs/t")),
        Err(RideError::NotRide { .. })
    ));
    assert!(matches!(
        teacher_config(&tiny(3)),
        Err(RideError::NotDistilling)
    ));
    assert_eq!(check_teacher(&tiny(3))?, None);
    Ok(())
}

#[test]
fn configs_without_distill_read_and_write_as_before() -> R {
    // A RIDE table without `distill` reads as no distillation and writes no `distill` key.
    let c = preset("ride.fmnist-lt");
    assert!(!c.method.settings.contains_key("distill"));
    assert_eq!(settings(&c).distill, None);
    assert!(!c.to_toml()?.contains("distill"));
    // Only `teacher` given: the official temperature, weight and ×E.
    let s: RideLossConfig = toml::from_str("[distill]\nteacher = \"runs/t\"\n")?;
    assert_eq!(s.distill, Some(DistillConfig::official("runs/t")));
    let d = s.distill.unwrap();
    assert_eq!((d.temperature, d.weight, d.times_experts), (1.5, 1.0, true));
    // --teacher on a plain recipe turns distillation on with those values.
    let mut c = preset("ride.fmnist-lt");
    set_teacher(&mut c, Path::new("runs/x"))?;
    assert_eq!(
        settings(&c).distill,
        Some(DistillConfig::official("runs/x"))
    );
    // and on a distill preset only replaces the path.
    let mut c = preset("ride.cifar100-lt.distill");
    set_teacher(&mut c, Path::new("runs/y"))?;
    assert_eq!(settings(&c).distill.unwrap().teacher, Path::new("runs/y"));
    Ok(())
}

fn warmup(c: &RunConfig) -> usize {
    match c.optim.schedule {
        LrSchedule::Steps { warmup, .. } => warmup,
        ref other => panic!("not a step schedule: {other:?}"),
    }
}

/// docs/ride.md §4, §5: each data set's teacher (6 experts, the plain recipe) and student
/// (3 experts as the official distill configs' `arch`, T_d 1.5, a 1, warm-up 20 on CIFAR).
#[test]
fn distill_presets_pair_up_with_the_official_values() {
    for base in [
        "ride.fmnist-lt",
        "ride.cifar100-lt",
        "ride.imagenet-lt",
        "ride.inat2018",
    ] {
        let plain = preset(base);
        let t = preset(&format!("{base}.teacher"));
        let s = preset(&format!("{base}.distill"));
        assert!(is_distillation_stage(&format!("{base}.teacher")));
        assert!(!is_distillation_stage(base));
        assert_eq!(t.model.num_experts, 6, "{base}");
        assert_eq!(s.model.num_experts, 3, "{base}");
        let d = settings(&s).distill.expect("the student distils");
        assert_eq!(
            d,
            DistillConfig::official(format!("runs/{base}.teacher-seed0"))
        );
        assert_eq!(settings(&t).distill, None);
        // The teacher is the plain recipe with 6 experts.
        let mut six = plain.clone();
        six.model.num_experts = 6;
        six.preset = t.preset.clone();
        assert_eq!(six, t, "{base}");
        // The teacher the CLI trains for the student (`--train-teacher`) is the teacher preset.
        assert_eq!(teacher_config(&s).unwrap(), t, "{base}");
        assert_eq!(warmup(&t), warmup(&plain));
        Ride.check(&s).unwrap();
    }
    assert_eq!(warmup(&preset("ride.cifar100-lt.distill")), 20);
    assert_eq!(warmup(&preset("ride.cifar100-lt.teacher")), 5);
    assert_eq!(warmup(&preset("ride.imagenet-lt.distill")), 5);
    assert_eq!(warmup(&preset("ride.fmnist-lt.distill")), 5);
    // A student config with changed numbers (--epochs 1) keeps them for its teacher.
    let mut s = preset("ride.fmnist-lt.distill");
    s.optim.epochs = 1;
    let t = teacher_config(&s).unwrap();
    assert_eq!((t.optim.epochs, warmup(&t), t.model.num_experts), (1, 2, 6));
}
