//! The re-balancing operations on hand-computed values (docs/baselines.md §10), and every stage
//! applied end to end to tiny trained runs: what each stage may and may not change, the stored
//! result reused, and bad input as typed errors.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, IndexOp, Tensor};
use longtail_backbone::{Arch, BackboneConfig, Blocks, Layout, MultiExpert};
use longtail_baselines::CrossEntropy;
use longtail_data::AugmentKind;
use longtail_decouple::head::{
    class_norms, classifier_names, is_classifier, logit_adjust_offsets, max_norm_project,
    max_norm_threshold, tau_normalize, wb_class_balanced_loss, Head, HeadKind,
};
use longtail_decouple::{apply, DecoupleError, Stage, StageOptions, TauSource};
use longtail_train::{
    train_run, DataConfig, LrSchedule, Method, MethodConfig, MethodKind, OptimConfig, OutMode,
    Preset, Progress, RunConfig, SgdConfig, TrainError,
};

fn close(got: &[f64], want: &[f64], tol: f64) {
    assert_eq!(got.len(), want.len(), "{got:?} vs {want:?}");
    for (g, w) in got.iter().zip(want) {
        assert!((g - w).abs() < tol, "{got:?} vs {want:?}");
    }
}

/// Oracle 8: rows with norms [3, 1] → τ = 1: [1, 1]; τ = 0.5: [√3, 1]; τ = 0: unchanged.
#[test]
fn tau_norm_matches_hand_computed_norms() {
    let dev = Device::Cpu;
    // Linear layout [C, D]: class 0 = (3·0.6, 3·0.8), class 1 = (0, 1).
    let w = Tensor::new(&[[1.8f64, 2.4], [0.0, 1.0]], &dev).unwrap();
    for (tau, want) in [(1.0, [1.0, 1.0]), (0.5, [1.732051, 1.0]), (0.0, [3.0, 1.0])] {
        let t = tau_normalize(&w, 0, tau).unwrap();
        close(&class_norms(&t, 0).unwrap(), &want, 1e-6);
        // The direction is kept: class 0 stays ∝ (0.6, 0.8).
        let row: Vec<f64> = t.i(0).unwrap().to_vec1().unwrap();
        assert!((row[0] / row[1] - 0.75).abs() < 1e-12, "{row:?}");
    }
    // Cosine layout [D, C]: the same classes as columns.
    let wt = w.t().unwrap().contiguous().unwrap();
    let t = tau_normalize(&wt, 1, 0.5).unwrap();
    close(&class_norms(&t, 1).unwrap(), &[1.732051, 1.0], 1e-6);
    assert!(tau_normalize(&w, 0, -1.0).is_err());
}

/// Oracle 6: z = [2, 1, 0.5], π = [0.7, 0.2, 0.1], τ = 1 → [2.356675, 2.609438, 2.802585]; the
/// argmax moves from class 0 to class 2.
#[test]
fn post_hoc_logit_adjustment_matches_hand_computed_values() {
    let prior = [0.7, 0.2, 0.1];
    let z = [2.0, 1.0, 0.5];
    let o = logit_adjust_offsets(&prior, 1.0).unwrap();
    let adjusted: Vec<f64> = z.iter().zip(&o).map(|(z, o)| z + o).collect();
    close(&adjusted, &[2.356675, 2.609438, 2.802585], 1e-6);
    // τ = 0.5: −log(π^0.5) = −0.5·log π (the 1e-12 is below the tolerance).
    let half = logit_adjust_offsets(&prior, 0.5).unwrap();
    close(&half, &[0.178337, 0.804719, 1.151293], 1e-6);
    // τ = 0: log(1 + 1e-12) ≈ 0, no adjustment.
    close(&logit_adjust_offsets(&prior, 0.0).unwrap(), &[0.0; 3], 1e-9);
}

/// Oracle 9: norms [3, 2, 1], thresh 0.1 → δ = 1.2 → [1.2, 1.2, 1.0].
#[test]
fn max_norm_clips_rows_to_the_threshold() {
    let dev = Device::Cpu;
    let w = Tensor::new(&[[0.0f32, 3.0], [2.0, 0.0], [0.6, 0.8]], &dev).unwrap();
    let delta = max_norm_threshold(&class_norms(&w, 0).unwrap(), 0.1).unwrap();
    assert!((delta - 1.2).abs() < 1e-6, "{delta}");
    let p = max_norm_project(&w, 0, delta).unwrap();
    close(&class_norms(&p, 0).unwrap(), &[1.2, 1.2, 1.0], 1e-6);
    let rows: Vec<Vec<f32>> = p.to_vec2().unwrap();
    assert_eq!(rows[2], vec![0.6, 0.8], "a row under δ is untouched");
    assert!((rows[0][1] - 1.2).abs() < 1e-6 && rows[0][0] == 0.0);
    // Columns (the cosine layout).
    let pc = max_norm_project(&w.t().unwrap(), 1, delta).unwrap();
    close(&class_norms(&pc, 1).unwrap(), &[1.2, 1.2, 1.0], 1e-6);
    assert!(max_norm_threshold(&[], 0.1).is_err());
}

/// Weight balancing's loss: z = [[2, 1, 0.5], [0.2, 0.4, −0.1]], y = [2, 0], w = [0.5, 1, 2]:
/// mean over the 6 terms of w_y·BCE(softmax, one-hot) = 1.2313156833 (computed in f64 with
/// `math.exp` / `math.log`).
#[test]
fn weight_balancing_loss_matches_hand_computed_value() {
    let dev = Device::Cpu;
    let z = Tensor::new(&[[2.0f32, 1.0, 0.5], [0.2, 0.4, -0.1]], &dev).unwrap();
    let y = Tensor::new(&[2u32, 0], &dev).unwrap();
    let w = Tensor::new(&[0.5f32, 1.0, 2.0], &dev).unwrap();
    let l = wb_class_balanced_loss(&z, &y, &w)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!((l as f64 - 1.2313156833).abs() < 1e-5, "{l}");
}

/// A tiny network: ResNet-32 layout with one block per stage and 16 channels.
fn tiny_model(experts: usize, use_norm: bool) -> BackboneConfig {
    let mut cfg = BackboneConfig::new(Arch::Resnet32, Layout::SharedLayer1, experts, 10);
    cfg.in_channels = 1;
    cfg.blocks_per_stage = Some(Blocks::Uniform(1));
    cfg.widths = Some(vec![16, 16, 16]);
    cfg.use_norm = use_norm;
    cfg
}

/// The head computed here equals the backbone's own classifier, for both kinds.
#[test]
fn heads_compute_the_backbone_logits() {
    let dev = Device::Cpu;
    for use_norm in [false, true] {
        let (varmap, model) = MultiExpert::seeded(&tiny_model(2, use_norm), 3, &dev).unwrap();
        let heads = Head::read_all(&varmap, model.config()).unwrap();
        assert_eq!(heads.len(), 2);
        assert_eq!(
            heads[0].kind,
            if use_norm {
                HeadKind::Cosine { scale: 30.0 }
            } else {
                HeadKind::Linear
            }
        );
        let x = Tensor::randn(0f32, 1.0, (3, 1, 12, 12), &dev).unwrap();
        let out = model.forward_t(&x, false).unwrap();
        for (e, h) in heads.iter().enumerate() {
            let mine = h.logits(&out.features.i((.., e, ..)).unwrap()).unwrap();
            let theirs = out.expert_logits.i((.., e, ..)).unwrap();
            let d = (mine - theirs)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(d < 1e-4, "expert {e}, norm {use_norm}: {d}");
        }
    }
    assert_eq!(
        classifier_names(1, 0),
        (
            "backbone.linear.weight".into(),
            "backbone.linear.bias".into()
        )
    );
    assert!(is_classifier("backbone.linears.1.bias", 2));
    assert!(!is_classifier("backbone.layer3s.1.0.conv1.weight", 2));
}

/// Writes a Fashion-MNIST-shaped IDX folder: 10 classes of 12×12 images, `per_class` train and
/// 6 test images per class, each class a bright block at its own place plus LCG noise.
fn tiny_idx(dir: &Path, per_class: usize) -> PathBuf {
    let d = dir.join("idx");
    std::fs::create_dir_all(&d).unwrap();
    let mut state = 7u64;
    let mut make = |n: usize| {
        let (mut images, mut labels) = (vec![], vec![]);
        for i in 0..n * 10 {
            let c = i % 10;
            let (cy, cx) = ((c / 4) * 4, (c % 4) * 3);
            for y in 0..12 {
                for x in 0..12 {
                    state = state
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    let inside = y >= cy && y < cy + 4 && x >= cx && x < cx + 3;
                    images.push(if inside { 200u8 } else { 20 } + (state >> 59) as u8);
                }
            }
            labels.push(c as u8);
        }
        (images, labels)
    };
    let write = |path: PathBuf, dims: &[u32], data: &[u8]| {
        let mut bytes = vec![0u8, 0, 8, dims.len() as u8];
        for d in dims {
            bytes.extend(d.to_be_bytes());
        }
        bytes.extend(data);
        std::fs::write(path, bytes).unwrap();
    };
    for (prefix, n) in [("train", per_class), ("t10k", 6)] {
        let (im, lb) = make(n);
        let count = lb.len() as u32;
        write(
            d.join(format!("{prefix}-images-idx3-ubyte")),
            &[count, 12, 12],
            &im,
        );
        write(d.join(format!("{prefix}-labels-idx1-ubyte")), &[count], &lb);
    }
    d
}

/// Cross-entropy on the mean of the experts (the CE baseline's loss, for any number of experts).
struct MeanCe;

impl MethodKind for MeanCe {
    fn name(&self) -> &'static str {
        "ce"
    }
    fn summary(&self) -> &'static str {
        "CE on the mean logits, any number of experts (test only)"
    }
    fn presets(&self) -> &'static [Preset] {
        &[]
    }
    fn check(&self, _: &RunConfig) -> Result<(), TrainError> {
        Ok(())
    }
    fn build(&self, _: &RunConfig, _: &[usize], _: &Device) -> Result<Box<dyn Method>, TrainError> {
        Ok(Box::new(CrossEntropy))
    }
}

/// Trains a 1-epoch run on tiny IDX data into `dir/run`.
fn tiny_run(dir: &Path, experts: usize, use_norm: bool, val: Option<f64>) -> PathBuf {
    let idx = tiny_idx(dir, 30);
    let mut data = DataConfig::new("fmnist", Some(10.0), AugmentKind::default());
    data.data_dir = Some(idx);
    data.val_fraction = val;
    let schedule = LrSchedule::Steps {
        warmup: 0,
        step1: 1,
        step2: 1,
        gamma: 0.1,
    };
    let mut optim = OptimConfig::new(1, 16, 0.05, SgdConfig::default(), schedule);
    optim.eval_batch_size = 64;
    let cfg = RunConfig {
        preset: None,
        seed: 0,
        method: MethodConfig::bare("ce"),
        data,
        model: tiny_model(experts, use_norm),
        optim,
    };
    let out = dir.join("run");
    train_run(
        &cfg,
        &MeanCe,
        &out,
        OutMode::New,
        Progress::Quiet,
        &Device::Cpu,
    )
    .unwrap();
    out
}

fn tensors(path: &Path) -> BTreeMap<String, Vec<u8>> {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(k, v)| (k, v.data().to_vec()))
        .collect()
}

fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

fn short() -> StageOptions {
    StageOptions {
        epochs: Some(2),
        batch_size: Some(32),
        ..StageOptions::default()
    }
}

/// Every stage on a 2-expert linear run with a validation split: cRT and WB change only the
/// classifiers (the trunk and the expert stages bit-identical, BN statistics included), LWS and
/// LA change no weight at all, τ-norm's τ comes from the validation split, WB's rows end under
/// δ, and a second call returns the stored result.
#[test]
fn stages_on_a_two_expert_linear_run() {
    let dir = tempfile::tempdir().unwrap();
    let run = tiny_run(dir.path(), 2, false, Some(0.2));
    let dev = Device::Cpu;
    let before = tensors(&run.join("last.safetensors"));
    let model_of = |stage: &str| run.join(format!("stage-{stage}/model.safetensors"));

    // cRT: trunk bit-identical, every classifier changed.
    let crt = apply(&run, &Stage::Crt, &short(), &dev).unwrap();
    assert!(!crt.reused);
    assert_eq!(crt.epochs.len(), 2);
    assert!(crt.val.is_some() && crt.before_val.is_some());
    assert_eq!(crt.test.num_experts, 2);
    let after = tensors(&model_of("crt"));
    let mut changed = 0;
    for (name, bytes) in &before {
        if name.starts_with("optimizer.") {
            continue;
        }
        if is_classifier(name, 2) {
            assert_ne!(&after[name], bytes, "{name} was not re-trained");
            changed += 1;
        } else {
            assert_eq!(&after[name], bytes, "{name} changed");
        }
    }
    assert_eq!(changed, 4, "2 experts × (weight, bias)");
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("stage-crt/result.json")).unwrap())
            .unwrap();
    for k in ["overall", "many", "medium", "few"] {
        assert!(summary["test"].get(k).is_some(), "{summary}");
        assert!(summary["before_test"].get(k).is_some(), "{summary}");
    }
    assert_eq!(
        summary["test"]["overall"].as_f64().unwrap(),
        crt.test.report.accuracy
    );

    // The same call again: read back, same numbers, nothing rewritten.
    let stamp = std::fs::metadata(model_of("crt"))
        .unwrap()
        .modified()
        .unwrap();
    let again = apply(&run, &Stage::Crt, &short(), &dev).unwrap();
    assert!(again.reused);
    assert_eq!(again.test.logits, crt.test.logits);
    assert_eq!(again.test.report.accuracy, crt.test.report.accuracy);
    assert_eq!(
        std::fs::metadata(model_of("crt"))
            .unwrap()
            .modified()
            .unwrap(),
        stamp
    );
    // Other settings: computed anew, deterministic for the same seed.
    let other = StageOptions {
        seed: Some(5),
        ..short()
    };
    let reseeded = apply(&run, &Stage::Crt, &other, &dev).unwrap();
    assert!(!reseeded.reused);
    let forced = apply(
        &run,
        &Stage::Crt,
        &StageOptions {
            force: true,
            ..other
        },
        &dev,
    )
    .unwrap();
    assert!(!forced.reused);
    assert_eq!(forced.test.logits, reseeded.test.logits, "seeded");

    // LWS: no weight changes, only the per-class scales; logits = f ⊙ z.
    let lws = apply(&run, &Stage::Lws, &short(), &dev).unwrap();
    let after = tensors(&model_of("lws"));
    for (name, bytes) in &before {
        if !name.starts_with("optimizer.") {
            assert_eq!(&after[name], bytes, "{name} changed");
        }
    }
    let scale = f32s(&after["stage.logit_scale"]);
    assert_eq!(scale.len(), 20);
    assert!(scale.iter().any(|&s| (s - 1.0).abs() > 1e-4), "{scale:?}");
    for (i, z) in lws.test.expert_logits.iter().enumerate() {
        let want = lws.before_test.expert_logits[i] * scale[(i / 10 % 2) * 10 + i % 10];
        assert!((z - want).abs() <= 1e-5 * want.abs().max(1.0), "{i}");
    }

    // Post-hoc LA with τ given: test logits = before + (−log(π^τ + 1e-12)).
    let la = apply(&run, &Stage::LogitAdjust { tau: Some(1.0) }, &short(), &dev).unwrap();
    assert_eq!(la.tau_source, Some(TauSource::Given));
    let stored = tensors(&model_of("la-1"));
    let offsets = f32s(&stored["stage.logit_offset"]);
    assert_eq!(offsets.len(), 10);
    for (i, z) in la.test.logits.iter().enumerate() {
        let want = la.before_test.logits[i] + offsets[i % 10];
        assert!((z - want).abs() < 1e-4, "{i}: {z} vs {want}");
    }
    // Rarer classes get larger offsets.
    assert!(offsets[9] > offsets[0], "{offsets:?}");
    // LA without τ: chosen on the validation split, from the grid.
    let la_auto = apply(&run, &Stage::LogitAdjust { tau: None }, &short(), &dev).unwrap();
    assert_eq!(la_auto.tau_source, Some(TauSource::Validation));
    let t = la_auto.tau.unwrap();
    assert!((0.0..=2.0).contains(&t) && ((t * 10.0).round() - t * 10.0).abs() < 1e-9);

    // τ-norm: τ from the validation split; rows end with norm ‖w‖^(1−τ), bias 0.
    let tn = apply(&run, &Stage::TauNorm { tau: None }, &short(), &dev).unwrap();
    assert_eq!(tn.tau_source, Some(TauSource::Validation));
    let tau = tn.tau.unwrap();
    let after = tensors(&model_of("tau-norm"));
    for e in 0..2 {
        let (w, b) = classifier_names(2, e);
        let old = Tensor::from_vec(f32s(&before[&w]), (10, 16), &dev).unwrap();
        let new = Tensor::from_vec(f32s(&after[&w]), (10, 16), &dev).unwrap();
        let want: Vec<f64> = class_norms(&old, 0)
            .unwrap()
            .iter()
            .map(|n| n.powf(1.0 - tau))
            .collect();
        close(&class_norms(&new, 0).unwrap(), &want, 1e-4);
        assert!(f32s(&after[&b]).iter().all(|&v| v == 0.0));
    }

    // WB: trunk identical, every class vector at most δ of its expert's stage-1 norms.
    let wb = apply(
        &run,
        &Stage::WeightBalancing { thresh: 0.1 },
        &short(),
        &dev,
    )
    .unwrap();
    assert_eq!(wb.epochs.len(), 2);
    let after = tensors(&model_of("wb"));
    for e in 0..2 {
        let (w, _) = classifier_names(2, e);
        let old = Tensor::from_vec(f32s(&before[&w]), (10, 16), &dev).unwrap();
        let new = Tensor::from_vec(f32s(&after[&w]), (10, 16), &dev).unwrap();
        let delta = max_norm_threshold(&class_norms(&old, 0).unwrap(), 0.1).unwrap();
        for n in class_norms(&new, 0).unwrap() {
            assert!(n <= delta + 1e-5, "{n} > {delta}");
        }
    }
    for (name, bytes) in &before {
        if !name.starts_with("optimizer.") && !is_classifier(name, 2) {
            assert_eq!(&after[name], bytes, "{name} changed");
        }
    }
}

/// On a one-expert cosine run without a validation split: τ-norm is the identity (and says so),
/// τ falls back to 1, cRT re-trains the cosine weight.
#[test]
fn stages_on_a_cosine_run_without_validation() {
    let dir = tempfile::tempdir().unwrap();
    let run = tiny_run(dir.path(), 1, true, None);
    let dev = Device::Cpu;
    let tn = apply(&run, &Stage::TauNorm { tau: None }, &short(), &dev).unwrap();
    assert_eq!(tn.tau, Some(1.0));
    assert_eq!(tn.tau_source, Some(TauSource::Default));
    assert!(tn.val.is_none());
    assert!(
        tn.notes.iter().any(|n| n.contains("cosine")),
        "{:?}",
        tn.notes
    );
    assert_eq!(tn.test.logits, tn.before_test.logits);
    let la = apply(&run, &Stage::LogitAdjust { tau: None }, &short(), &dev).unwrap();
    assert_eq!(
        (la.tau, la.tau_source),
        (Some(1.0), Some(TauSource::Default))
    );
    let crt = apply(&run, &Stage::Crt, &short(), &dev).unwrap();
    let before = tensors(&run.join("last.safetensors"));
    let after = tensors(&run.join("stage-crt/model.safetensors"));
    assert_ne!(
        after["backbone.linear.weight"],
        before["backbone.linear.weight"]
    );
    assert!(!after.contains_key("backbone.linear.bias"));
    assert_eq!(crt.test.num_experts, 1);
}

/// A missing folder, a folder without a run and an unfinished run are clear errors.
#[test]
fn bad_run_folders_are_typed_errors() {
    let dir = tempfile::tempdir().unwrap();
    let dev = Device::Cpu;
    let e = apply(
        &dir.path().join("nope"),
        &Stage::Crt,
        &StageOptions::default(),
        &dev,
    )
    .unwrap_err();
    assert!(matches!(e, DecoupleError::NotARun { .. }), "{e}");
    assert!(e.to_string().contains("no such run folder"), "{e}");
    let e = apply(dir.path(), &Stage::Lws, &StageOptions::default(), &dev).unwrap_err();
    assert!(e.to_string().contains("last.safetensors"), "{e}");
    let bad = StageOptions {
        lr: Some(-1.0),
        ..StageOptions::default()
    };
    let run = tiny_run(dir.path(), 1, false, None);
    let e = apply(&run, &Stage::Crt, &bad, &dev).unwrap_err();
    assert!(matches!(e, DecoupleError::Options(_)), "{e}");
    let e = "ncm".parse::<Stage>().unwrap_err();
    assert!(matches!(e, DecoupleError::Stage(_)), "{e}");
}
