//! Streaming memory does not grow with the data set: iterating a JPEG tree whose decoded
//! pixels are several times the prefetch queue keeps the resident set within a bound set by
//! the batch size, not by the number of images. Its own test binary, so no other test's
//! allocations move the resident set.

use std::sync::Arc;

use candle_core::Device;
use longtail_data::synth::{write_tree, TreeSpec};
use longtail_data::{
    load_image_lists_streamed, Augment, Batcher, BatcherConfig, DatasetName, Normalize,
    SamplerKind, Transform,
};

/// `VmRSS` of this process in bytes.
fn rss() -> f64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    let l = s.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    l[6..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse::<f64>()
        .unwrap()
        * 1024.0
}

#[test]
fn iterating_a_large_tree_keeps_memory_bounded() {
    if !std::path::Path::new("/proc/self/status").exists() {
        return; // no procfs: nothing to measure
    }
    let dir = tempfile::tempdir().unwrap();
    // 400 images of 256×192: 59 MB of RGB once decoded, 59× the 1 MB a batch of 8 decoded
    // images takes, and 150× the two prefetched batches of 8 × 3 × 32 × 32 floats.
    write_tree(
        dir.path(),
        &TreeSpec {
            layout: DatasetName::ImageList,
            train_counts: vec![100; 4],
            test_per_class: 1,
            val_per_class: 0,
            sizes: vec![(256, 192), (192, 256)],
            quality: 80,
            seed: 1,
        },
    )
    .unwrap();
    let s = load_image_lists_streamed(dir.path(), 32).unwrap();
    let decoded = s.train.len() as f64 * 256.0 * 192.0 * 3.0;
    let cfg = BatcherConfig {
        sampler: SamplerKind::Shuffled,
        transform: Transform::train(Augment::imagenet_lt(32), Normalize::imagenet()),
        batch_size: 8,
        seed: 0,
        epoch: 0,
        prefetch: 2,
    };
    let pool = Arc::new(
        rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap(),
    );
    let train = Arc::new(s.train);
    let mut batches = Batcher::with_config(train, cfg, &Device::Cpu, Some(pool)).unwrap();
    // After the first batches the allocator has its working set; measure growth from there.
    for _ in 0..4 {
        batches.next().unwrap().unwrap();
    }
    let base = rss();
    let mut peak = base;
    let mut n = 0;
    for b in batches {
        // A slow consumer: the producer runs ahead as far as the queue lets it.
        std::thread::sleep(std::time::Duration::from_millis(2));
        n += b.unwrap().indices.len();
        peak = peak.max(rss());
    }
    assert_eq!(n, 400 - 32);
    let growth = peak - base;
    assert!(
        growth < decoded / 8.0,
        "resident set grew by {:.1} MB while streaming {:.1} MB of decoded pixels",
        growth / 1e6,
        decoded / 1e6
    );
}
