//! Bad input gives typed errors, never a panic.

use candle_core::{DType, Device, Tensor};
use longtail_aggregate::{
    mean_logits, AggregateError, AggregatorConfig, StreamingAggregator, StreamingConfig,
    TestTimeAggregator,
};

fn zeros(shape: &[usize]) -> Tensor {
    Tensor::zeros(shape, DType::F32, &Device::Cpu).unwrap()
}

fn agg() -> TestTimeAggregator {
    TestTimeAggregator::new(AggregatorConfig::default()).unwrap()
}

#[test]
fn shape_errors() {
    let a = zeros(&[3, 8, 5]);
    assert!(matches!(
        agg().fit(&zeros(&[8, 5]), &zeros(&[8, 5])),
        Err(AggregateError::Rank { expected: 3, .. })
    ));
    assert!(matches!(
        agg().fit(&zeros(&[0, 8, 5]), &zeros(&[0, 8, 5])),
        Err(AggregateError::NoExperts { .. })
    ));
    assert!(matches!(
        agg().fit(&zeros(&[3, 0, 5]), &zeros(&[3, 0, 5])),
        Err(AggregateError::Empty { .. })
    ));
    let err = agg().fit(&a, &zeros(&[3, 8, 6])).unwrap_err();
    assert!(matches!(err, AggregateError::ViewMismatch { .. }));
    assert!(
        err.to_string().starts_with("view a has shape [3, 8, 5]"),
        "{err}"
    );
    assert!(matches!(
        mean_logits(&zeros(&[4])),
        Err(AggregateError::Rank { .. })
    ));
    let ints = Tensor::zeros((3, 8, 5), DType::U32, &Device::Cpu).unwrap();
    assert!(matches!(
        agg().fit(&ints, &ints),
        Err(AggregateError::Dtype { .. })
    ));
}

#[test]
fn non_finite_logits_are_rejected() {
    let mut v = vec![0f32; 3 * 4 * 2];
    v[5] = f32::NAN;
    let bad = Tensor::from_vec(v, (3, 4, 2), &Device::Cpu).unwrap();
    let ok = zeros(&[3, 4, 2]);
    let err = agg().fit(&ok, &bad).unwrap_err();
    assert!(
        matches!(&err, AggregateError::NonFinite { what } if what == "view b"),
        "{err}"
    );
    let inf = (zeros(&[3, 4, 2]) + f64::INFINITY).unwrap();
    assert!(matches!(
        mean_logits(&inf),
        Err(AggregateError::NonFinite { .. })
    ));
    let mut s = StreamingAggregator::new(3, StreamingConfig::default()).unwrap();
    assert!(matches!(
        s.step(&bad, &ok),
        Err(AggregateError::NonFinite { .. })
    ));
    assert_eq!(s.steps(), 0);
}

#[test]
fn closure_errors_and_bad_batches() {
    let a = zeros(&[3, 4, 2]);
    let err = agg()
        .fit_with(4, |_: &[usize]| {
            Err::<(Tensor, Tensor), _>("camera unplugged")
        })
        .unwrap_err();
    assert!(matches!(
        err,
        AggregateError::Source {
            epoch: 1,
            batch: 0,
            ..
        }
    ));
    assert!(err.to_string().contains("camera unplugged"), "{err}");

    // A batch with the wrong number of samples.
    let err = agg().fit_with(4, |_: &[usize]| {
        Ok::<_, AggregateError>((a.narrow(1, 0, 3)?, a.narrow(1, 0, 3)?))
    });
    assert!(
        matches!(err, Err(AggregateError::ShapeMismatch { .. })),
        "{err:?}"
    );
    // Non-finite values inside a closure batch.
    let nan = (zeros(&[3, 4, 2]) * f64::NAN).unwrap();
    let err = agg().fit_with(4, |_: &[usize]| {
        Ok::<_, AggregateError>((a.clone(), nan.clone()))
    });
    assert!(
        matches!(err, Err(AggregateError::NonFinite { .. })),
        "{err:?}"
    );
    assert!(matches!(
        agg().fit_with(0, |_: &[usize]| Ok::<_, AggregateError>((
            a.clone(),
            a.clone()
        ))),
        Err(AggregateError::NoSamples)
    ));
}

#[test]
fn config_and_streaming_errors() {
    let bad = AggregatorConfig {
        batch_size: 0,
        ..Default::default()
    };
    let err = TestTimeAggregator::new(bad).unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid config: batch_size = 0: must be at least 1"
    );
    assert!(matches!(
        StreamingAggregator::new(0, StreamingConfig::default()),
        Err(AggregateError::NoExperts { .. })
    ));
    let mut s = StreamingAggregator::new(3, StreamingConfig::default()).unwrap();
    let two = zeros(&[2, 4, 5]);
    assert!(matches!(
        s.step(&two, &two),
        Err(AggregateError::ShapeMismatch { .. })
    ));
    let three = zeros(&[3, 4, 5]);
    assert!(matches!(
        s.step_and_predict(&three, &three, &zeros(&[3, 5, 5])),
        Err(AggregateError::ShapeMismatch { .. })
    ));
    assert!(matches!(
        s.predict(&two),
        Err(AggregateError::ShapeMismatch { .. })
    ));
    assert_eq!(s.steps(), 0);
}
