//! The baselines' losses on fixed logits against the formulas of docs/baselines.md and its
//! test oracle (§10), their gradients, bad settings as typed errors, and every preset.

use candle_core::{DType, Device, Result, Tensor, Var};
use longtail_backbone::ExpertOutput;
use longtail_baselines::{
    class_balanced_weights, ops, BaselineError, Bsce, Cb, CbLoss, CbSettings, ClassBalancedMethod,
    Focal, FocalForm, FocalMethod, FocalSettings, La, LaSettings, LdamDrw, LdamDrwMethod,
    LdamDrwSettings, LogitAdjustedMethod, Wb, PRESETS,
};
use longtail_data::Batch;
use longtail_losses::{drw_weights, ldam_margins, LossError};
use longtail_train::{Method, MethodConfig, MethodKind};

const CPU: Device = Device::Cpu;

fn close(got: f64, want: f64, tol: f64) {
    assert!((got - want).abs() <= tol, "got {got}, want {want}");
}

/// `[B, C]` f64 logits.
fn logits(rows: &[&[f64]]) -> Tensor {
    let c = rows[0].len();
    let flat: Vec<f64> = rows.iter().flat_map(|r| r.iter().copied()).collect();
    Tensor::from_vec(flat, (rows.len(), c), &CPU).unwrap()
}

fn output(z: &Tensor) -> ExpertOutput {
    let b = z.dim(0).unwrap();
    ExpertOutput {
        expert_logits: z.unsqueeze(1).unwrap(),
        logits: z.clone(),
        features: Tensor::zeros((b, 1, 1), DType::F64, &CPU).unwrap(),
    }
}

fn batch(labels: &[u32]) -> Batch {
    Batch {
        images: Tensor::zeros((labels.len(), 1, 1, 1), DType::F32, &CPU).unwrap(),
        labels: Tensor::new(labels, &CPU).unwrap(),
        indices: (0..labels.len()).collect(),
    }
}

fn scalar(t: &Tensor) -> f64 {
    t.to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap()
}

fn loss_of(m: &dyn Method, rows: &[&[f64]], labels: &[u32]) -> f64 {
    scalar(&m.loss(&output(&logits(rows)), &batch(labels)).unwrap())
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// The one-vs-all focal loss of CB Eq. 12–13 written out with scalars: Σ_i w_i Σ_c
/// (1 − p^t)^γ (−log p^t) / B on logits shifted by `bias`.
fn sigmoid_focal_ref(rows: &[&[f64]], labels: &[u32], gamma: f64, w: &[f64], bias: f64) -> f64 {
    let mut total = 0.0;
    for (i, row) in rows.iter().enumerate() {
        for (c, &z) in row.iter().enumerate() {
            let p = sigmoid(z + bias);
            let pt = if c as u32 == labels[i] { p } else { 1.0 - p };
            total += w[i] * (1.0 - pt).powf(gamma) * -pt.ln();
        }
    }
    total / rows.len() as f64
}

fn ce_ref(row: &[f64], y: usize) -> f64 {
    let lse = row.iter().map(|z| z.exp()).sum::<f64>().ln();
    lse - row[y]
}

/// Central finite differences of `f` at `z` against the autograd gradient of `f`.
fn check_gradient(z: &[&[f64]], f: impl Fn(&Tensor) -> Result<Tensor>) {
    let var = Var::from_tensor(&logits(z)).unwrap();
    let grads = f(var.as_tensor()).unwrap().backward().unwrap();
    let g = grads
        .get(var.as_tensor())
        .unwrap()
        .to_vec2::<f64>()
        .unwrap();
    let eps = 1e-6;
    for i in 0..z.len() {
        for c in 0..z[0].len() {
            let mut plus: Vec<Vec<f64>> = z.iter().map(|r| r.to_vec()).collect();
            let mut minus = plus.clone();
            plus[i][c] += eps;
            minus[i][c] -= eps;
            let at = |rows: &Vec<Vec<f64>>| {
                let refs: Vec<&[f64]> = rows.iter().map(|r| r.as_slice()).collect();
                scalar(&f(&logits(&refs)).unwrap())
            };
            let fd = (at(&plus) - at(&minus)) / (2.0 * eps);
            close(g[i][c], fd, 1e-6);
        }
    }
}

// ---- focal (docs/baselines.md §2, oracle 7) ----

#[test]
fn softmax_focal_matches_oracle_7() {
    // Two classes, logits (ln 9, 0): p_y = 0.9.
    let z = [9f64.ln(), 0.0];
    for (gamma, want) in [(2.0, 0.0010536), (1.0, 0.0105361), (0.0, 0.1053605)] {
        let m = FocalMethod::new(
            FocalSettings {
                gamma,
                form: FocalForm::Softmax,
            },
            2,
        )
        .unwrap();
        close(loss_of(&m, &[&z], &[0]), want, 1e-6);
    }
}

#[test]
fn sigmoid_focal_sums_every_one_vs_all_term() {
    // One class: σ(ln 9) = 0.9 is the oracle's p_t.
    let one = logits(&[&[9f64.ln()]]);
    let y = Tensor::new(&[0u32], &CPU).unwrap();
    close(
        scalar(&ops::sigmoid_focal(&one, &y, 2.0, None).unwrap()),
        0.0010536,
        1e-6,
    );
    // Two classes (ln 9, −ln 9), y = 0: both terms have p_t = 0.9.
    let two = logits(&[&[9f64.ln(), -(9f64.ln())]]);
    close(
        scalar(&ops::sigmoid_focal(&two, &y, 1.0, None).unwrap()),
        2.0 * 0.0105361,
        1e-6,
    );
    // Through the method: the prior bias −log(C − 1) is added before the sigmoids.
    let rows: [&[f64]; 2] = [&[2.0, -1.0, 0.5], &[-3.0, 4.0, 0.0]];
    for gamma in [0.0, 0.5, 2.0] {
        let m = FocalMethod::new(
            FocalSettings {
                gamma,
                form: FocalForm::Sigmoid,
            },
            3,
        )
        .unwrap();
        let want = sigmoid_focal_ref(&rows, &[0, 2], gamma, &[1.0, 1.0], -(2f64.ln()));
        close(loss_of(&m, &rows, &[0, 2]), want, 1e-9);
    }
    // Large logits stay finite (the stable softplus form).
    let big = logits(&[&[80.0, -80.0]]);
    let v = scalar(&ops::sigmoid_focal(&big, &y, 1.0, None).unwrap());
    assert!((0.0..1e-30).contains(&v), "{v}");
}

#[test]
fn focal_gradients_match_finite_differences() {
    let rows: [&[f64]; 2] = [&[1.5, -0.5, 0.25], &[0.1, 0.2, -2.0]];
    let y = Tensor::new(&[1u32, 2], &CPU).unwrap();
    check_gradient(&rows, |z| ops::softmax_focal(z, &y, 2.0));
    check_gradient(&rows, |z| ops::softmax_focal(z, &y, 0.5));
    let w = Tensor::new(&[0.3f64, 2.0], &CPU).unwrap();
    check_gradient(&rows, |z| ops::sigmoid_focal(z, &y, 1.0, Some(&w)));
    check_gradient(&rows, |z| ops::sigmoid_focal(z, &y, 0.0, None));
    // A learnt sample (p = 1 in float) gives a finite gradient, not NaN.
    let var = Var::from_tensor(&logits(&[&[200.0, 0.0]])).unwrap();
    let y0 = Tensor::new(&[0u32], &CPU).unwrap();
    let g = ops::softmax_focal(var.as_tensor(), &y0, 0.5)
        .unwrap()
        .backward()
        .unwrap();
    let g = g.get(var.as_tensor()).unwrap().to_vec2::<f64>().unwrap();
    assert!(g[0].iter().all(|v| v.is_finite()), "{g:?}");
}

// ---- class-balanced (§3, oracles 2 and 11) ----

#[test]
fn class_balanced_weights_match_oracle_2() {
    let cases: [(f64, [f64; 3]); 4] = [
        (0.99, [0.042237, 0.280044, 2.677719]),
        (0.9999, [0.027159, 0.270369, 2.702472]),
        (0.9, [0.239329, 0.367442, 2.393229]),
        (0.0, [1.0, 1.0, 1.0]),
    ];
    for (beta, want) in cases {
        let w = class_balanced_weights(&[100, 10, 1], beta).unwrap();
        for (g, w) in w.iter().zip(want) {
            close(*g, w, 1e-6);
        }
    }
}

#[test]
fn weighted_reductions_match_oracle_11() {
    // Per-sample CE 1 and 2: logits (0, ln(e − 1)) with y = 0, (ln(e² − 1), 0) with y = 1.
    let e = std::f64::consts::E;
    let z = logits(&[&[0.0, (e - 1.0).ln()], &[(e * e - 1.0).ln(), 0.0]]);
    let y = Tensor::new(&[0u32, 1], &CPU).unwrap();
    let w = Tensor::new(&[0.5f64, 2.0], &CPU).unwrap();
    close(
        scalar(&ops::weighted_ce_torch(&z, &y, &w).unwrap()),
        1.8,
        1e-9,
    );
    close(
        scalar(&ops::weighted_ce_batch(&z, &y, &w).unwrap()),
        2.25,
        1e-9,
    );
}

#[test]
fn class_balanced_losses_by_hand() {
    let counts = [100, 10, 1];
    let rows: [&[f64]; 3] = [&[2.0, -1.0, 0.5], &[-3.0, 4.0, 0.0], &[0.3, 0.3, -0.7]];
    let labels = [0u32, 1, 2];
    let beta = 0.99;
    let cw = class_balanced_weights(&counts, beta).unwrap();
    let w: Vec<f64> = labels.iter().map(|&y| cw[y as usize]).collect();
    let bias = -(2f64.ln());
    for (loss, gamma) in [
        (CbLoss::Softmax, 1.0),
        (CbLoss::Sigmoid, 2.0),
        (CbLoss::Focal, 0.5),
    ] {
        let m = ClassBalancedMethod::new(CbSettings { beta, loss, gamma }, &counts, &CPU).unwrap();
        let want = match loss {
            CbLoss::Softmax => {
                rows.iter()
                    .enumerate()
                    .map(|(i, r)| w[i] * ce_ref(r, labels[i] as usize))
                    .sum::<f64>()
                    / 3.0
            }
            CbLoss::Sigmoid => sigmoid_focal_ref(&rows, &labels, 0.0, &w, bias),
            CbLoss::Focal => sigmoid_focal_ref(&rows, &labels, gamma, &w, bias),
        };
        // The weights are stored as f32.
        close(loss_of(&m, &rows, &labels), want, 1e-6);
    }
}

// ---- LDAM-DRW (§4, oracles 3, 4, 5) ----

/// CIFAR-100-LT IF 100 class counts, n_i = floor(500 · 0.01^(i/99)) (oracle 1).
fn cifar100_counts() -> Vec<usize> {
    (0..100)
        .map(|i| (500.0 * 0.01f64.powf(i as f64 / 99.0)).floor() as usize)
        .collect()
}

#[test]
fn ldam_margins_and_drw_weights_match_oracles_3_and_4() {
    let m = ldam_margins(&[500, 50, 5], 0.5).unwrap();
    for (g, w) in m.iter().zip([0.158114, 0.281171, 0.5]) {
        close(*g, w, 1e-6);
    }
    let counts = cifar100_counts();
    assert_eq!(counts.iter().sum::<usize>(), 10847);
    let w = drw_weights(&counts, 0.9999).unwrap();
    close(w[0], 0.044876, 1e-6);
    close(w[99], 4.378313, 1e-6);
}

#[test]
fn ldam_loss_matches_oracle_5_and_drw_switches_after_its_epoch() {
    let settings = LdamDrwSettings {
        max_margin: 0.5,
        drw_epoch: Some(3),
        drw_beta: 0.9999,
    };
    let counts = [500, 50, 5];
    let mut m = LdamDrwMethod::new(&settings, 30.0, &counts, &CPU).unwrap();
    // s·cos = 30·(0.5, 0.2, −0.1); margined target 30·(−0.1 − 0.5) = −18.
    let s_cos = [15.0, 6.0, -3.0];
    close(loss_of(&m, &[&s_cos], &[2]), 33.000123, 1e-5);
    close(ce_ref(&[15.0, 6.0, -18.0], 2), 33.000123, 1e-6);

    // Two samples: unweighted mean before the DRW epoch, Σ w ℓ / Σ w after it.
    let rows: [&[f64]; 2] = [&[3.0, 1.0, -2.0], &[0.5, 2.5, 1.0]];
    let margins = ldam_margins(&counts, 0.5).unwrap();
    let l = |r: &[f64], y: usize| {
        let mut r = r.to_vec();
        r[y] -= 30.0 * margins[y];
        ce_ref(&r, y)
    };
    let (l0, l1) = (l(rows[0], 0), l(rows[1], 2));
    let w = drw_weights(&counts, 0.9999).unwrap();
    for epoch in 1..=3 {
        m.begin_epoch(epoch).unwrap();
        assert!(!m.reweighting());
        close(loss_of(&m, &rows, &[0, 2]), (l0 + l1) / 2.0, 1e-5);
    }
    m.begin_epoch(4).unwrap();
    assert!(m.reweighting());
    let want = (w[0] * l0 + w[2] * l1) / (w[0] + w[2]);
    close(loss_of(&m, &rows, &[0, 2]), want, 1e-5);
}

// ---- balanced softmax and logit adjustment (§5, oracle 6) ----

#[test]
fn logit_adjusted_and_balanced_softmax_match_oracle_6() {
    let z: &[f64] = &[2.0, 1.0, 0.5];
    let counts = [700, 200, 100];
    let bs = LogitAdjustedMethod::balanced_softmax(&counts, &CPU).unwrap();
    let la1 = LogitAdjustedMethod::logit_adjusted(&counts, 1.0, &CPU).unwrap();
    let la_half = LogitAdjustedMethod::logit_adjusted(&counts, 0.5, &CPU).unwrap();
    let la0 = LogitAdjustedMethod::logit_adjusted(&counts, 0.0, &CPU).unwrap();
    for m in [&bs, &la1] {
        close(loss_of(m, &[z], &[2]), 3.574289, 1e-6);
        close(loss_of(m, &[z], &[0]), 0.128379, 1e-6);
    }
    close(loss_of(&la_half, &[z], &[2]), 2.720577, 1e-6);
    close(loss_of(&la0, &[z], &[2]), 1.964369, 1e-6);
    assert_eq!(bs.name(), "bsce");
    assert_eq!(la1.name(), "la");
    // Prediction is the raw logits.
    let out = output(&logits(&[z]));
    assert_eq!(
        bs.predict(&out).unwrap().to_vec2::<f64>().unwrap(),
        vec![z.to_vec()]
    );
}

#[test]
fn adjusted_ce_gradient_is_softmax_of_the_shifted_logits_minus_one_hot() {
    let rows: [&[f64]; 2] = [&[2.0, 1.0, 0.5], &[-1.0, 0.0, 3.0]];
    let offsets = [0.7f64.ln(), 0.2f64.ln(), 0.1f64.ln()];
    let o = Tensor::new(&offsets, &CPU).unwrap();
    let y = Tensor::new(&[2u32, 0], &CPU).unwrap();
    let var = Var::from_tensor(&logits(&rows)).unwrap();
    let grads = ops::adjusted_ce(var.as_tensor(), &y, &o)
        .unwrap()
        .backward()
        .unwrap();
    let g = grads
        .get(var.as_tensor())
        .unwrap()
        .to_vec2::<f64>()
        .unwrap();
    for (i, (row, label)) in rows.iter().zip([2usize, 0]).enumerate() {
        let shifted: Vec<f64> = row.iter().zip(offsets).map(|(z, o)| z + o).collect();
        let sum: f64 = shifted.iter().map(|v| v.exp()).sum();
        for c in 0..3 {
            let want = (shifted[c].exp() / sum - f64::from(c == label)) / 2.0;
            close(g[i][c], want, 1e-9);
        }
    }
    check_gradient(&rows, |z| ops::adjusted_ce(z, &y, &o));
}

// ---- bad settings are typed errors ----

#[test]
fn bad_settings_and_counts_are_typed_errors() {
    let out_of_range = |e: BaselineError, f: &str| match e {
        BaselineError::Setting(LossError::OutOfRange { field, .. }) => assert_eq!(field, f),
        other => panic!("{f}: {other:?}"),
    };
    let focal = |gamma| FocalSettings {
        gamma,
        form: FocalForm::Sigmoid,
    };
    out_of_range(FocalMethod::new(focal(-0.5), 10).unwrap_err(), "gamma");
    assert!(matches!(
        FocalMethod::new(focal(f64::NAN), 10).unwrap_err(),
        BaselineError::Setting(LossError::NonFinite { .. })
    ));
    assert!(matches!(
        FocalMethod::new(focal(1.0), 1).unwrap_err(),
        BaselineError::TooFewClasses { classes: 1, .. }
    ));

    let cb = |beta, gamma| CbSettings {
        beta,
        loss: CbLoss::Focal,
        gamma,
    };
    for beta in [1.0, 1.5, -0.1] {
        out_of_range(
            ClassBalancedMethod::new(cb(beta, 1.0), &[5, 3], &CPU).unwrap_err(),
            "beta",
        );
    }
    out_of_range(
        ClassBalancedMethod::new(cb(0.9, -1.0), &[5, 3], &CPU).unwrap_err(),
        "gamma",
    );
    assert!(matches!(
        ClassBalancedMethod::new(cb(0.9, 1.0), &[5, 0, 3], &CPU).unwrap_err(),
        BaselineError::Setting(LossError::EmptyClass { class: 1 })
    ));

    out_of_range(
        LogitAdjustedMethod::logit_adjusted(&[5, 3], -1.0, &CPU).unwrap_err(),
        "tau",
    );
    assert!(matches!(
        LogitAdjustedMethod::balanced_softmax(&[5, 0], &CPU).unwrap_err(),
        BaselineError::Setting(LossError::EmptyClass { class: 1 })
    ));

    let ldam = LdamDrwSettings {
        max_margin: 0.5,
        drw_epoch: Some(1),
        drw_beta: 0.9999,
    };
    assert!(matches!(
        LdamDrwMethod::new(&ldam, 30.0, &[4, 0, 2], &CPU).unwrap_err(),
        BaselineError::Setting(LossError::EmptyClass { class: 1 })
    ));
    let bad = LdamDrwSettings {
        max_margin: -0.1,
        ..ldam.clone()
    };
    out_of_range(
        LdamDrwMethod::new(&bad, 30.0, &[4, 2], &CPU).unwrap_err(),
        "max_margin",
    );
    let bad = LdamDrwSettings {
        drw_beta: 1.0,
        ..ldam
    };
    out_of_range(
        LdamDrwMethod::new(&bad, 30.0, &[4, 2], &CPU).unwrap_err(),
        "drw_beta",
    );
}

#[test]
fn registry_checks_refuse_bad_configs() {
    let preset = |name: &str| {
        PRESETS
            .iter()
            .flat_map(|p| p.iter())
            .find(|p| p.name == name)
            .unwrap()
            .config()
    };
    let msg = |r: std::result::Result<(), longtail_train::TrainError>| r.unwrap_err().to_string();

    let mut c = preset("focal.fmnist-lt");
    c.method = MethodConfig::new(
        "focal",
        &FocalSettings {
            gamma: -1.0,
            form: FocalForm::Softmax,
        },
    )
    .unwrap();
    assert!(msg(Focal.check(&c)).contains("gamma"));
    let mut c = preset("focal.fmnist-lt");
    c.method
        .settings
        .insert("gama".into(), toml::Value::Float(1.0));
    assert!(msg(Focal.check(&c)).contains("gama"));
    let mut c = preset("focal.fmnist-lt");
    c.model.num_experts = 3;
    assert!(msg(Focal.check(&c)).contains("one expert"));

    let mut c = preset("cb.fmnist-lt");
    c.method
        .settings
        .insert("beta".into(), toml::Value::Float(1.0));
    assert!(msg(Cb.check(&c)).contains("beta"));

    let mut c = preset("la.fmnist-lt");
    c.method = MethodConfig::new("la", &LaSettings { tau: -0.5 }).unwrap();
    assert!(msg(La.check(&c)).contains("tau"));

    let mut c = preset("bsce.fmnist-lt");
    c.method
        .settings
        .insert("tau".into(), toml::Value::Float(1.0));
    assert!(msg(Bsce.check(&c)).contains("tau"));

    let mut c = preset("ldam-drw.cifar100-lt");
    c.model.use_norm = false;
    assert!(msg(LdamDrw.check(&c)).contains("cosine"));

    let mut c = preset("wb.cifar100-lt");
    c.optim.sgd.weight_decay = 0.0;
    assert!(msg(Wb.check(&c)).contains("weight_decay"));
}

// ---- presets ----

#[test]
fn every_preset_passes_its_check_and_survives_toml() {
    let kinds: [&dyn MethodKind; 6] = [&Focal, &Cb, &LdamDrw, &Bsce, &La, &Wb];
    for (kind, presets) in kinds.iter().zip(PRESETS) {
        assert_eq!(kind.presets().len(), presets.len());
        let mut datasets = Vec::new();
        for p in *presets {
            let c = p.config();
            assert_eq!(c.method.name, kind.name(), "{}", p.name);
            assert!(
                p.name.starts_with(&format!("{}.", kind.name())),
                "{}",
                p.name
            );
            c.check_common()
                .unwrap_or_else(|e| panic!("{}: {e}", p.name));
            kind.check(&c).unwrap_or_else(|e| panic!("{}: {e}", p.name));
            let back = longtail_train::RunConfig::from_toml(&c.to_toml().unwrap()).unwrap();
            assert_eq!(back, c, "{}", p.name);
            datasets.push(p.name.split_once('.').unwrap().1.to_string());
        }
        assert_eq!(
            datasets,
            ["fmnist-lt", "cifar10-lt", "cifar100-lt", "imagenet-lt"],
            "{}",
            kind.name()
        );
    }
}

#[test]
fn presets_carry_the_papers_values() {
    let find = |name: &str| {
        PRESETS
            .iter()
            .flat_map(|p| p.iter())
            .find(|p| p.name == name)
            .unwrap()
            .config()
    };
    // LDAM recipe: 200 epochs, no Nesterov, wd 2e-4, ×0.01 at 160 and 180.
    let c = find("ldam-drw.cifar100-lt");
    assert_eq!((c.optim.epochs, c.optim.batch_size), (200, 128));
    assert!(!c.optim.sgd.nesterov && c.optim.sgd.weight_decay == 2e-4);
    assert!(c.model.use_norm && c.model.scale == 30.0 && !c.model.reduce_dimension);
    let s: LdamDrwSettings = c.method.settings().unwrap();
    assert_eq!(
        (s.max_margin, s.drw_epoch, s.drw_beta),
        (0.5, Some(160), 0.9999)
    );
    let s: CbSettings = find("cb.cifar100-lt").method.settings().unwrap();
    assert_eq!((s.loss, s.beta, s.gamma), (CbLoss::Focal, 0.9, 1.0));
    let s: CbSettings = find("cb.cifar10-lt").method.settings().unwrap();
    assert_eq!(s.beta, 0.9999);
    assert!(!find("focal.cifar10-lt").model.use_norm);
    let c = find("la.cifar100-lt");
    assert_eq!(c.optim.epochs, 1419);
    assert_eq!(c.optim.schedule.lr(0.1, 692, 1419), 0.1 * 0.1);
    assert_eq!(c.optim.schedule.lr(0.1, 691, 1419), 0.1);
    let c = find("wb.cifar100-lt");
    assert_eq!(
        (c.optim.batch_size, c.optim.lr, c.optim.sgd.weight_decay),
        (64, 0.01, 5e-3)
    );

    // The bundled-set presets differ from each other in the method only (and WB in its decay).
    let base = find("focal.fmnist-lt");
    for p in PRESETS.iter().flat_map(|p| p.iter()) {
        if !p.name.ends_with(".fmnist-lt") {
            continue;
        }
        let mut c = p.config();
        c.method = base.method.clone();
        c.preset = base.preset.clone();
        if p.name == "wb.fmnist-lt" {
            assert_eq!(c.optim.sgd.weight_decay, 5e-3);
            c.optim.sgd.weight_decay = base.optim.sgd.weight_decay;
        }
        assert_eq!(c, base, "{}", p.name);
    }
}
