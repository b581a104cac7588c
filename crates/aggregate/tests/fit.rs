//! The epoch-based aggregator: direction of learning, stop rule, exact steps, determinism.

use candle_core::{Device, Tensor};
use longtail_aggregate::{
    stability_loss, AggregatorConfig, StreamingAggregator, StreamingConfig, TestTimeAggregator,
    TestTimeSgd,
};

use crate::common::{agreeing_views, argmax, f32, Gen};

fn no_stop(lr: f64) -> AggregatorConfig {
    AggregatorConfig {
        sgd: TestTimeSgd {
            lr,
            ..TestTimeSgd::default()
        },
        batch_size: 64,
        stop_below: None,
        ..AggregatorConfig::cifar100_lt()
    }
}

#[test]
fn agreeing_expert_gains_weight() {
    for agree in 0..3 {
        let (a, b) = agreeing_views(&mut Gen::new(agree as u64), 3, 256, 10, agree, 6.0);
        let fit = TestTimeAggregator::new(no_stop(0.1))
            .unwrap()
            .fit(&f32(&a), &f32(&b))
            .unwrap();
        assert_eq!(fit.trace.len(), 5);
        assert_eq!(argmax(&fit.weights), agree, "{:?}", fit.weights);
        assert!(fit.weights[agree] > 0.45, "{:?}", fit.weights);
        let (first, last) = (&fit.trace[0], &fit.trace[4]);
        assert!(last.mean_loss < first.mean_loss, "{first:?} → {last:?}");
        assert!(last.mean_cosine > first.mean_cosine);
        assert_eq!(first.steps, 4);
    }
}

#[test]
fn early_stop_fires_when_a_weight_rounds_below_threshold() {
    let (a, b) = agreeing_views(&mut Gen::new(11), 3, 256, 10, 1, 6.0);
    let cfg = AggregatorConfig {
        stop_below: Some(0.05),
        ..no_stop(5.0)
    };
    let fit = TestTimeAggregator::new(cfg).unwrap().fit(&a, &b).unwrap();
    assert!(fit.stopped_early);
    assert!(
        fit.trace.len() < cfg.max_epochs,
        "{} epochs",
        fit.trace.len()
    );
    let last = fit.trace.last().unwrap();
    assert!(last.stopped);
    assert!(last.rounded_weights.iter().any(|&w| w < 0.05), "{last:?}");
    // Every earlier epoch had all rounded weights ≥ 0.05, and did not stop.
    for t in &fit.trace[..fit.trace.len() - 1] {
        assert!(!t.stopped && t.rounded_weights.iter().all(|&w| w >= 0.05));
    }
    // Without the rule the same run goes on for all epochs.
    let fit = TestTimeAggregator::new(no_stop(5.0))
        .unwrap()
        .fit(&a, &b)
        .unwrap();
    assert!(!fit.stopped_early);
    assert_eq!(fit.trace.len(), cfg.max_epochs);
}

#[test]
fn early_stop_does_not_fire_while_weights_stay_above_threshold() {
    let (a, b) = agreeing_views(&mut Gen::new(12), 3, 256, 10, 1, 6.0);
    let cfg = AggregatorConfig {
        stop_below: Some(0.05),
        ..no_stop(0.05)
    };
    let fit = TestTimeAggregator::new(cfg).unwrap().fit(&a, &b).unwrap();
    assert!(!fit.stopped_early);
    assert_eq!(fit.trace.len(), 5);
    assert!(fit.trace.iter().all(|t| !t.stopped));
    assert!(fit.weights.iter().all(|&w| w > 0.05));
    // Weights still moved toward the agreeing expert.
    assert!(fit.weights[1] > 1.0 / 3.0);
}

/// The first step equals the hand-written update with the gradient of the loss taken by central
/// finite differences in f64: Nesterov's first step is `ω₁ = ω₀ − lr·(1 + μ)·(g + wd·ω₀)`; the
/// second uses `buf₁ = g₁' `, `buf₂ = μ·buf₁ + g₂'`, `ω₂ = ω₁ − lr·(g₂' + μ·buf₂)`.
#[test]
fn nesterov_steps_match_finite_difference_gradients() {
    let (a, b) = agreeing_views(&mut Gen::new(3), 3, 16, 5, 0, 2.0);
    let (lr, mu, wd) = (0.3, 0.9, 0.01);
    let sgd = TestTimeSgd {
        lr,
        momentum: mu,
        nesterov: true,
        weight_decay: wd,
    };
    let softmax = |o: &[f64]| {
        let s: f64 = o.iter().map(|x| x.exp()).sum();
        o.iter().map(|x| x.exp() / s).collect::<Vec<_>>()
    };
    let loss = |o: &[f64]| stability_loss(&a, &b, &softmax(o), 0.0).unwrap().loss;
    let grad = |o: &[f64]| {
        let h = 1e-5;
        (0..3)
            .map(|i| {
                let (mut p, mut m) = (o.to_vec(), o.to_vec());
                p[i] += h;
                m[i] -= h;
                (loss(&p) - loss(&m)) / (2.0 * h)
            })
            .collect::<Vec<_>>()
    };
    let w0 = vec![1.0 / 3.0; 3];
    let g1: Vec<f64> = grad(&w0).iter().zip(&w0).map(|(g, w)| g + wd * w).collect();
    let w1: Vec<f64> = w0
        .iter()
        .zip(&g1)
        .map(|(w, g)| w - lr * (1.0 + mu) * g)
        .collect();
    let g2: Vec<f64> = grad(&w1).iter().zip(&w1).map(|(g, w)| g + wd * w).collect();
    let buf2: Vec<f64> = g1.iter().zip(&g2).map(|(b, g)| mu * b + g).collect();
    let w2: Vec<f64> = (0..3)
        .map(|i| w1[i] - lr * (g2[i] + mu * buf2[i]))
        .collect();
    assert!(
        g1[0] < 0.0,
        "the agreeing expert's ω must have a descent direction: {g1:?}"
    );

    // One epoch of one full batch = one step; two epochs = two steps.
    for (epochs, want) in [(1, &w1), (2, &w2)] {
        let cfg = AggregatorConfig {
            sgd,
            batch_size: 16,
            max_epochs: epochs,
            stop_below: None,
            entropy_coef: 0.0,
            seed: 0,
        };
        let fit = TestTimeAggregator::new(cfg).unwrap().fit(&a, &b).unwrap();
        for (got, want) in fit.omega.iter().zip(want.iter()) {
            assert!((got - want).abs() < 1e-8, "{:?} vs {want:?}", fit.omega);
        }
    }
    // The streaming aggregator takes the same two steps.
    let mut s = StreamingAggregator::new(
        3,
        StreamingConfig {
            sgd,
            entropy_coef: 0.0,
        },
    )
    .unwrap();
    let l0 = s.step(&a, &b).unwrap();
    assert!((l0.loss - loss(&w0)).abs() < 1e-12);
    s.step(&a, &b).unwrap();
    for (got, want) in s.omega().iter().zip(&w2) {
        assert!((got - want).abs() < 1e-8);
    }
    assert_eq!(s.steps(), 2);
}

/// Hand-computed iNat objective (`−mean cos − 0.01·H`), E = 2, B = 1, C = 2, w = (½, ½):
/// view a: both experts give (ln 3, 0), so p_a = (¾, ¼); view b: (0, 0), so p_b = (½, ½).
/// cos = (3/8 + 1/8) / (√(10/16)·√(1/2)) = 0.5/√0.3125;
/// H = −(¾ ln ¾ + ¼ ln ¼)/2 − (2·½ ln ½)/2.
#[test]
fn entropy_variant_loss_matches_hand_computation() {
    let l3 = 3f64.ln();
    let a = Tensor::from_vec(vec![l3, 0.0, l3, 0.0], (2, 1, 2), &Device::Cpu).unwrap();
    let b = Tensor::zeros((2, 1, 2), candle_core::DType::F64, &Device::Cpu).unwrap();
    let cos = 0.5 / 0.3125f64.sqrt();
    let h = -(0.75 * 0.75f64.ln() + 0.25 * 0.25f64.ln()) / 2.0 - 0.5f64.ln() / 2.0;
    let v = stability_loss(&a, &b, &[0.5, 0.5], 0.01).unwrap();
    assert!((v.cosine - cos).abs() < 1e-12, "{v:?}");
    assert!((v.entropy - h).abs() < 1e-12, "{v:?}");
    assert!((v.loss - (-cos - 0.01 * h)).abs() < 1e-12, "{v:?}");
    assert!((v.loss - -0.900_704_602_7).abs() < 1e-9, "{v:?}");
    // Without the entropy term the loss is the negative cosine; f32 agrees to float precision.
    let v0 = stability_loss(&f32(&a), &f32(&b), &[0.5, 0.5], 0.0).unwrap();
    assert!((v0.loss + cos).abs() < 1e-6, "{v0:?}");
    // Weights that ignore the differing expert do not matter here: both experts are equal.
    let v1 = stability_loss(&a, &b, &[1.0, 0.0], 0.01).unwrap();
    assert!((v1.loss - v.loss).abs() < 1e-12);
}

#[test]
fn entropy_term_changes_the_learned_weights() {
    let (a, b) = agreeing_views(&mut Gen::new(5), 3, 128, 10, 0, 6.0);
    let plain = TestTimeAggregator::new(no_stop(0.2))
        .unwrap()
        .fit(&a, &b)
        .unwrap();
    let inat = TestTimeAggregator::new(AggregatorConfig {
        entropy_coef: 0.01,
        ..no_stop(0.2)
    })
    .unwrap()
    .fit(&a, &b)
    .unwrap();
    assert_ne!(plain.weights, inat.weights);
    assert!(inat.trace[0].mean_entropy > 0.0);
    let t = &inat.trace[0];
    // The reported loss is the combination of the reported terms (averages of per-batch values).
    assert!((t.mean_loss - (-t.mean_cosine - 0.01 * t.mean_entropy)).abs() < 1e-9);
}

#[test]
fn deterministic_given_the_seed() {
    let (a, b) = agreeing_views(&mut Gen::new(7), 3, 200, 10, 2, 6.0);
    let (a, b) = (f32(&a), f32(&b));
    let cfg = AggregatorConfig {
        batch_size: 48,
        seed: 42,
        ..no_stop(0.5)
    };
    let agg = TestTimeAggregator::new(cfg).unwrap();
    let one = agg.fit(&a, &b).unwrap();
    let two = agg.fit(&a, &b).unwrap();
    assert_eq!(
        one, two,
        "same seed, same data: bit-identical fit and trace"
    );

    // The closure API visits the same batches in the same order, so it gives the same result.
    let mut seen = Vec::new();
    let three = agg
        .fit_with(200, |idx: &[usize]| {
            seen.extend_from_slice(idx);
            let ids = Tensor::from_vec(
                idx.iter().map(|&i| i as u32).collect::<Vec<_>>(),
                idx.len(),
                &Device::Cpu,
            )?;
            Ok::<_, candle_core::Error>((a.index_select(&ids, 1)?, b.index_select(&ids, 1)?))
        })
        .unwrap();
    assert_eq!(one, three);
    // Each epoch is a permutation of all samples, and the epochs differ in order.
    assert_eq!(seen.len(), 200 * 5);
    let mut epoch0 = seen[..200].to_vec();
    epoch0.sort_unstable();
    assert_eq!(epoch0, (0..200).collect::<Vec<_>>());
    assert_ne!(seen[..200], seen[200..400]);

    let other = TestTimeAggregator::new(AggregatorConfig { seed: 43, ..cfg })
        .unwrap()
        .fit(&a, &b)
        .unwrap();
    assert_ne!(one.omega, other.omega, "another seed shuffles differently");
}

#[test]
fn fit_predict_is_the_weighted_sum() {
    let (a, b) = agreeing_views(&mut Gen::new(9), 3, 64, 4, 0, 3.0);
    let fit = TestTimeAggregator::new(no_stop(0.1))
        .unwrap()
        .fit(&a, &b)
        .unwrap();
    let got = fit.predict(&a).unwrap().to_vec2::<f64>().unwrap();
    let v = a.to_vec3::<f64>().unwrap();
    for (i, row) in got.iter().enumerate() {
        for (c, x) in row.iter().enumerate() {
            let want: f64 = (0..3).map(|e| fit.weights[e] * v[e][i][c]).sum();
            assert!((x - want).abs() < 1e-12);
        }
    }
}

#[test]
fn f64_f32_and_bf16_inputs_agree() {
    let (a, b) = agreeing_views(&mut Gen::new(13), 3, 96, 8, 1, 4.0);
    let agg = TestTimeAggregator::new(no_stop(0.1)).unwrap();
    let f64_fit = agg.fit(&a, &b).unwrap();
    let f32_fit = agg.fit(&f32(&a), &f32(&b)).unwrap();
    let bf16 = |t: &Tensor| t.to_dtype(candle_core::DType::BF16).unwrap();
    let bf16_fit = agg.fit(&bf16(&a), &bf16(&b)).unwrap();
    for e in 0..3 {
        assert!((f64_fit.weights[e] - f32_fit.weights[e]).abs() < 1e-5);
        // bf16 rounds the logits themselves (8 bits of mantissa), so only roughly equal.
        assert!((f64_fit.weights[e] - bf16_fit.weights[e]).abs() < 1e-2);
    }
}
