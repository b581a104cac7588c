//! The batcher: shapes, labels, determinism across thread counts and epochs.

use std::sync::Arc;

use candle_core::{DType, Device};
use longtail_data::{Augment, Batcher, BatcherConfig, Dataset, Normalize, SamplerKind, Transform};

fn synthetic(n: usize) -> Dataset {
    let images: Vec<u8> = (0..n * 8 * 8 * 3).map(|i| (i * 7 % 256) as u8).collect();
    let labels: Vec<u32> = (0..n).map(|i| (i % 5) as u32).collect();
    Dataset::new("synthetic", images, labels, (8, 8, 3), 5, vec![], vec![]).unwrap()
}

fn collect(
    data: &Arc<Dataset>,
    sampler: SamplerKind,
    epoch: u64,
    threads: usize,
) -> Vec<(Vec<f32>, Vec<u32>, Vec<usize>)> {
    let pool = Arc::new(
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap(),
    );
    let cfg = BatcherConfig {
        sampler,
        transform: Transform::train(Augment::cifar(), Normalize::cifar()),
        batch_size: 16,
        seed: 42,
        epoch,
        prefetch: 2,
    };
    Batcher::with_config(Arc::clone(data), cfg, &Device::Cpu, Some(pool))
        .unwrap()
        .map(|b| {
            let b = b.unwrap();
            (
                b.images.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                b.labels.to_vec1::<u32>().unwrap(),
                b.indices,
            )
        })
        .collect()
}

#[test]
fn same_batches_with_one_or_two_threads() {
    let data = Arc::new(synthetic(70));
    for sampler in [
        SamplerKind::Shuffled,
        SamplerKind::ClassBalanced,
        SamplerKind::SquareRoot,
    ] {
        let one = collect(&data, sampler, 3, 1);
        let two = collect(&data, sampler, 3, 2);
        assert_eq!(one, two, "{sampler:?}");
        assert_eq!(one.len(), 5);
        // Resuming at epoch 3 gives the same batches; epoch 4 differs.
        assert_eq!(collect(&data, sampler, 3, 2), one);
        assert_ne!(collect(&data, sampler, 4, 2), one);
    }
}

#[test]
fn shapes_labels_and_last_batch() {
    let data = Arc::new(synthetic(70));
    let tf = Transform::eval(Normalize::cifar());
    let mut b = Batcher::new(
        Arc::clone(&data),
        SamplerKind::Sequential,
        tf,
        32,
        0,
        0,
        &Device::Cpu,
    )
    .unwrap();
    assert_eq!(b.num_batches(), 3);
    let first = b.next().unwrap().unwrap();
    assert_eq!(first.images.dims(), &[32, 3, 8, 8]);
    assert_eq!(first.images.dtype(), DType::F32);
    assert_eq!(first.labels.dtype(), DType::U32);
    assert_eq!(first.indices, (0..32).collect::<Vec<_>>());
    // Sample 1, channel 2, pixel (0, 0), normalised with the CIFAR statistics.
    let v: f32 = first
        .images
        .get(1)
        .unwrap()
        .get(2)
        .unwrap()
        .get(0)
        .unwrap()
        .get(0)
        .unwrap()
        .to_scalar()
        .unwrap();
    let raw = data.image(1)[2] as f32;
    assert!((v - (raw / 255.0 - 0.4465) / 0.2010).abs() < 1e-6);
    assert_eq!(
        first.labels.to_vec1::<u32>().unwrap()[..6],
        [0, 1, 2, 3, 4, 0]
    );
    let sizes: Vec<usize> = b.map(|x| x.unwrap().indices.len()).collect();
    assert_eq!(sizes, [32, 6]);
}

#[test]
fn bad_batcher_settings_are_errors() {
    let data = Arc::new(synthetic(4));
    let tf = Transform::eval(Normalize::cifar());
    assert!(Batcher::new(
        Arc::clone(&data),
        SamplerKind::Shuffled,
        tf.clone(),
        0,
        0,
        0,
        &Device::Cpu
    )
    .is_err());
    let grey = Transform::eval(Normalize::fashion_mnist());
    assert!(Batcher::new(
        Arc::clone(&data),
        SamplerKind::Shuffled,
        grey,
        2,
        0,
        0,
        &Device::Cpu
    )
    .is_err());
    let empty = Arc::new(data.subset(&[]));
    assert!(Batcher::new(
        empty,
        SamplerKind::Shuffled,
        tf.clone(),
        2,
        0,
        0,
        &Device::Cpu
    )
    .is_err());
    // Dropping a batcher mid-epoch stops its producer.
    let mut b = Batcher::new(data, SamplerKind::Shuffled, tf, 1, 0, 0, &Device::Cpu).unwrap();
    assert!(b.next().is_some());
    drop(b);
}

/// Data-parallel shards (issue 19): with 70 samples on 3 ranks (padded to 72 by wrapping), rank
/// r's batch b of 8 holds the epoch positions r, r + 3, … of the one-rank batch b of 24, with
/// the same augmentation, and the ranks see 24 samples each.
#[test]
fn shards_deal_the_one_rank_batches_with_their_augmentation() {
    let data = Arc::new(synthetic(70));
    let cfg = |batch_size| BatcherConfig {
        sampler: SamplerKind::Shuffled,
        transform: Transform::train(Augment::cifar(), Normalize::cifar()),
        batch_size,
        seed: 7,
        epoch: 2,
        prefetch: 2,
    };
    let rows = |b: longtail_data::Batch| {
        let n = b.indices.len();
        let flat = b.images.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let per = flat.len() / n;
        (0..n)
            .map(|i| (b.indices[i], flat[i * per..(i + 1) * per].to_vec()))
            .collect::<Vec<_>>()
    };
    let whole: Vec<_> = Batcher::with_config(Arc::clone(&data), cfg(24), &Device::Cpu, None)
        .unwrap()
        .flat_map(|b| rows(b.unwrap()))
        .collect();
    assert_eq!(whole.len(), 70);
    let shards: Vec<Vec<_>> = (0..3)
        .map(|r| {
            let shard = longtail_data::Shard::new(r, 3).unwrap();
            let b = Batcher::sharded(Arc::clone(&data), cfg(8), &Device::Cpu, None, shard).unwrap();
            assert_eq!(b.num_batches(), 3);
            b.flat_map(|b| rows(b.unwrap())).collect()
        })
        .collect();
    for (r, shard) in shards.iter().enumerate() {
        assert_eq!(shard.len(), 24);
        for (k, row) in shard.iter().enumerate() {
            let p = r + 3 * k;
            if p < 70 {
                assert_eq!(row, &whole[p], "rank {r}, position {p}");
            } else {
                // Padding: the sample of position p − 70, augmented as position p.
                assert_eq!(row.0, whole[p - 70].0);
            }
        }
    }
}
