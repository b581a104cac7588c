//! Mixup as a training option of any method (`[optim] mixup_alpha`, docs/balpoe.md §2.3): the
//! mixed loss on hand-computed values, off leaves the config and the loop as they were, and a
//! mixup run is reproducible and resumes bit for bit.

use candle_core::{Device, Tensor};
use longtail_backbone::{ExpertOutput, MultiExpert};
use longtail_baselines::CrossEntropy;
use longtail_data::Batch;
use longtail_train::mixup::{mixup_loss, MixupDraw};
use longtail_train::{fit, TrainError};

use super::{opts, setup, train_cfg, weights};

/// Two rows, two classes, logits [2, 0] and [0, 1], labels [0, 1]; the permutation swaps the rows,
/// so y[p] = [1, 0]. Softmax CE by hand:
/// L(y) = (ln(1 + e⁻²) + ln(1 + e⁻¹))/2 = (0.126928 + 0.313262)/2 = 0.220095,
/// L(y[p]) = (ln(1 + e²) + ln(1 + e))/2 = (2.126928 + 1.313262)/2 = 1.720095,
/// and with λ = 0.7: 0.7·0.220095 + 0.3·1.720095 = 0.670095.
#[test]
fn the_mixed_loss_is_lambda_weighted_over_both_label_sets() -> candle_core::Result<()> {
    let dev = Device::Cpu;
    let logits = Tensor::new(&[[2f32, 0.], [0., 1.]], &dev)?;
    let out = ExpertOutput {
        expert_logits: logits.unsqueeze(1)?,
        logits,
        features: Tensor::zeros((2, 1, 1), candle_core::DType::F32, &dev)?,
    };
    let batch = Batch {
        images: Tensor::new(&[1f32, 3.], &dev)?.reshape((2, 1, 1, 1))?,
        labels: Tensor::new(&[0u32, 1], &dev)?,
        indices: vec![4, 9],
    };
    let draw = MixupDraw {
        lambda: 0.7,
        perm: vec![1, 0],
    };
    let (own, other) = draw.mix(&batch).map_err(candle_core::Error::wrap)?;
    let l = mixup_loss(&CrossEntropy, &out, &own, &other, draw.lambda)?.to_scalar::<f32>()?;
    assert!((l - 0.670095).abs() < 1e-5, "{l}");
    // λ = 1 is the plain loss.
    let l1 = mixup_loss(&CrossEntropy, &out, &own, &other, 1.0)?.to_scalar::<f32>()?;
    assert!((l1 - 0.220095).abs() < 1e-5, "{l1}");
    // The images: 0.7·[1, 3] + 0.3·[3, 1] = [1.6, 2.4].
    let x: Vec<f32> = own.images.flatten_all()?.to_vec1()?;
    assert!(
        (x[0] - 1.6).abs() < 1e-6 && (x[1] - 2.4).abs() < 1e-6,
        "{x:?}"
    );
    Ok(())
}

#[test]
fn mixup_runs_are_reproducible_resume_exactly_and_differ_from_plain_ones() -> Result<(), TrainError>
{
    let (cfg, data) = setup();
    let mut mixed = train_cfg(3);
    mixed.mixup_alpha = Some(0.4);
    let run = |tc: &longtail_train::TrainConfig, dir: &std::path::Path, resume: bool, init: u64| {
        let (vm, model) = MultiExpert::seeded(&cfg, init, &Device::Cpu)?;
        let s = fit(
            &model,
            &vm,
            &mut CrossEntropy,
            &data,
            tc,
            &opts(dir, resume),
        )?;
        Ok::<_, TrainError>((weights(&vm), s))
    };
    let (a, b, plain, split) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let (wa, sa) = run(&mixed, a.path(), false, 5)?;
    let (wb, _) = run(&mixed, b.path(), false, 5)?;
    assert_eq!(wa, wb, "two mixup runs with one seed differ");
    assert_eq!(
        std::fs::read(a.path().join("metrics.jsonl")).unwrap(),
        std::fs::read(b.path().join("metrics.jsonl")).unwrap()
    );
    let (wp, sp) = run(&train_cfg(3), plain.path(), false, 5)?;
    assert_ne!(wa, wp, "mixup changed nothing");
    assert_ne!(sa.history[0].loss, sp.history[0].loss);
    // Killed after epoch 1, resumed from another init: the same weights as straight through.
    let mut first = mixed.clone();
    first.epochs = 1;
    run(&first, split.path(), false, 5)?;
    let (wc, sc) = run(&mixed, split.path(), true, 77)?;
    assert_eq!(sc.resumed_from, 1);
    assert_eq!(wa, wc, "a resumed mixup run drew other λ or permutations");
    Ok(())
}

#[test]
fn off_by_default_and_absent_from_the_written_config() {
    let mut c = longtail_train::OptimConfig::new(
        2,
        8,
        0.1,
        longtail_train::SgdConfig::default(),
        longtail_train::LrSchedule::Constant,
    );
    assert_eq!(c.mixup_alpha, None);
    let text = toml::to_string(&c).unwrap();
    assert!(!text.contains("mixup"), "{text}");
    let back: longtail_train::OptimConfig = toml::from_str(&text).unwrap();
    assert_eq!(back, c);
    c.mixup_alpha = Some(0.4);
    let text = toml::to_string(&c).unwrap();
    assert!(text.contains("mixup_alpha = 0.4"), "{text}");
    let mut bad = train_cfg(1);
    bad.mixup_alpha = Some(0.0);
    assert!(bad.check().unwrap_err().to_string().contains("mixup_alpha"));
}
