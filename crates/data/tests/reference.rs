//! Reference values: numpy's RNG, the LDAM-DRW counts and SADE's label-shift counts.

use longtail_data::profile::{exponential_counts, ldam_subset};
use longtail_data::{label_shift, Dataset, Mt19937, TestDist};

use crate::util::{fixture_json, ints};

/// Expected: fixtures/numpy/legacy_shuffle.json (numpy 2.4.6 `np.random.seed` / `shuffle`).
#[test]
fn numpy_legacy_vectors_bit_exact() {
    let j = fixture_json("numpy/legacy_shuffle.json");
    let mut rng = Mt19937::new(0);
    let got: Vec<u64> = (0..10).map(|_| rng.next_u32() as u64).collect();
    assert_eq!(got, ints(&j["mt19937_seed0_first_10_uint32"]));
    let mut rng = Mt19937::new(0);
    for want in j["mt19937_seed0_first_5_random_sample"].as_array().unwrap() {
        assert_eq!(rng.random_sample(), want.as_f64().unwrap());
    }
    let cases = j["cases"].as_array().unwrap();
    let mut checked = 0;
    for case in cases {
        let seed = case["seed"].as_u64().unwrap() as u32;
        let mut rng = Mt19937::new(seed);
        if let Some(n) = case["n"].as_u64() {
            let mut a: Vec<u64> = (0..n).collect();
            rng.shuffle(&mut a);
            let want = ints(&case["result_first_20"]);
            assert_eq!(&a[..want.len()], &want[..], "seed {seed} n {n}");
            let s: u64 = a.iter().enumerate().map(|(i, &x)| i as u64 * x).sum();
            assert_eq!(
                s,
                case["result_sum_of_i_times_ai"].as_u64().unwrap(),
                "seed {seed} n {n}"
            );
        } else {
            for (size, want) in ints(&case["sizes"])
                .iter()
                .zip(case["results"].as_array().unwrap())
            {
                let mut a: Vec<u64> = (0..*size).map(|x| x * 10).collect();
                rng.shuffle(&mut a);
                assert_eq!(a, ints(want), "size {size}");
            }
        }
        checked += 1;
    }
    assert!(checked >= 6, "only {checked} cases");
}

/// Expected: fixtures/official/cifar_lt_ldam_profile_counts.json (RIDE / SADE `get_img_num_per_cls`).
#[test]
fn ldam_counts_match_official() {
    let j = fixture_json("official/cifar_lt_ldam_profile_counts.json");
    let totals = [
        (
            "cifar10_lt",
            5000.0,
            10,
            [
                (100.0, "if100", 12406),
                (50.0, "if50", 13996),
                (10.0, "if10", 20431),
            ],
        ),
        (
            "cifar100_lt",
            500.0,
            100,
            [
                (100.0, "if100", 10847),
                (50.0, "if50", 12608),
                (10.0, "if10", 19573),
            ],
        ),
    ];
    for (set, n_max, classes, rows) in totals {
        for (imb, key, total) in rows {
            let got = exponential_counts(n_max, classes, imb).unwrap();
            let want: Vec<usize> = ints(&j["profiles"][set][key]["counts"])
                .iter()
                .map(|&x| x as usize)
                .collect();
            assert_eq!(got, want, "{set} {key}");
            assert_eq!(got.iter().sum::<usize>(), total, "{set} {key}");
        }
    }
}

/// A balanced CIFAR-100-sized test set (100 images per class, labels in a fixed interleaved order)
/// with 1×1×1 images whose byte is the original index mod 256.
fn balanced_test() -> Dataset {
    let labels: Vec<u32> = (0..10_000).map(|i| ((i * 37) % 100) as u32).collect();
    let images: Vec<u8> = (0..10_000).map(|i| (i % 256) as u8).collect();
    Dataset::new("test", images, labels, (1, 1, 1), 100, vec![], vec![]).unwrap()
}

/// Expected: fixtures/official/sade_cifar100_test_agnostic_counts.json (SADE `test_training_cifar.py`);
/// totals F50 2,486 … F2 7,166, uniform 10,000 (docs/sade.md §3).
#[test]
fn sade_cifar100_label_shift_counts() {
    let j = fixture_json("official/sade_cifar100_test_agnostic_counts.json");
    let test = balanced_test();
    let train_counts = exponential_counts(500.0, 100, 100.0).unwrap();
    let order: Vec<String> = j["order"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    let names: Vec<String> = TestDist::all().iter().map(|d| d.name()).collect();
    assert_eq!(names, order);
    for dist in TestDist::all() {
        let shifted = label_shift(&test, &train_counts, dist, 0).unwrap();
        let entry = &j["test_sets"][dist.name()];
        let want: Vec<usize> = ints(&entry["counts"]).iter().map(|&x| x as usize).collect();
        assert_eq!(shifted.class_counts(), want, "{dist}");
        assert_eq!(
            shifted.len() as u64,
            entry["total"].as_u64().unwrap(),
            "{dist}"
        );
    }
    let f50 = label_shift(&test, &train_counts, TestDist::Forward(50.0), 0).unwrap();
    assert_eq!(f50.len(), 2486);
    assert_eq!(
        label_shift(&test, &train_counts, TestDist::Forward(2.0), 0)
            .unwrap()
            .len(),
        7166
    );
}

/// Which images label shift keeps: per class in label order, numpy-shuffled indices, first n_c.
#[test]
fn label_shift_draws_like_numpy() {
    let test = balanced_test();
    let train_counts = exponential_counts(500.0, 100, 100.0).unwrap();
    let shifted = label_shift(&test, &train_counts, TestDist::Backward(10.0), 0).unwrap();
    let counts = TestDist::Backward(10.0).counts(&train_counts, 100).unwrap();
    let kept = ldam_subset(&test.labels, &counts, 0);
    assert_eq!(shifted.source_indices, kept);
    // Class 0 first: its ascending indices shuffled by a fresh seed-0 stream.
    let mut class0: Vec<usize> = (0..10_000).filter(|i| (i * 37) % 100 == 0).collect();
    Mt19937::new(0).shuffle(&mut class0);
    assert_eq!(&shifted.source_indices[..counts[0]], &class0[..counts[0]]);
    // Unbalanced test sets and mismatched class counts are errors.
    let unbalanced = test.subset(&(1..10_000).collect::<Vec<_>>());
    assert!(label_shift(&unbalanced, &train_counts, TestDist::Uniform, 0).is_err());
    assert!(label_shift(&test, &train_counts[..10], TestDist::Uniform, 0).is_err());
}
