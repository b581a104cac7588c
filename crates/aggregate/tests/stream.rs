//! The streaming aggregator across batches and distribution shifts.

use candle_core::Tensor;
use longtail_aggregate::{weighted_logits, StreamingAggregator, StreamingConfig, TestTimeSgd};

use crate::common::{agreeing_views, argmax, f32, Gen};

fn batches(gen: &mut Gen, agree: usize, count: usize) -> Vec<(Tensor, Tensor)> {
    (0..count)
        .map(|_| {
            let (a, b) = agreeing_views(gen, 3, 32, 10, agree, 6.0);
            (f32(&a), f32(&b))
        })
        .collect()
}

/// Distribution 1: expert 0 is the stable one; distribution 2: expert 2 is. The stream goes
/// through both without a reset (the official online script dies after the first one). The first
/// phase is kept short: once a weight saturates near 1, the others' gradients (∝ their weights)
/// are tiny and the stream needs many batches to turn (see `StreamingAggregator`'s doc).
#[test]
fn streaming_adapts_across_two_distributions() {
    let mut gen = Gen::new(21);
    let cfg = StreamingConfig {
        sgd: TestTimeSgd {
            lr: 0.05,
            ..TestTimeSgd::default()
        },
        entropy_coef: 0.0,
    };
    let mut s = StreamingAggregator::new(3, cfg).unwrap();
    for (a, b) in batches(&mut gen, 0, 8) {
        let out = s.step_and_predict(&a, &b, &a).unwrap();
        assert_eq!(out.dims(), &[32, 10]);
        let want = weighted_logits(&a, &s.weights()).unwrap();
        let diff = (out - want).unwrap().abs().unwrap().max_all().unwrap();
        assert_eq!(diff.to_scalar::<f32>().unwrap(), 0.0);
    }
    let after_first = s.weights();
    assert_eq!(argmax(&after_first), 0, "{after_first:?}");

    for (a, b) in batches(&mut gen, 2, 16) {
        s.step_and_predict(&a, &b, &b).unwrap();
    }
    let after_second = s.weights();
    assert_eq!(s.steps(), 24);
    assert!(
        after_second[2] > after_first[2] + 0.1,
        "{after_first:?} → {after_second:?}"
    );
    assert!(
        after_second[0] < after_first[0] - 0.05,
        "{after_first:?} → {after_second:?}"
    );
    assert_eq!(argmax(&after_second), 2, "{after_second:?}");
    assert!(s.last_loss().unwrap().cosine > 0.0);

    s.reset().unwrap();
    assert_eq!(s.steps(), 0);
    assert!(s.weights().iter().all(|w| (w - 1.0 / 3.0).abs() < 1e-12));
    assert!(s.last_loss().is_none());
}
