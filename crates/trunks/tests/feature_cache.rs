//! The feature cache: written once, reused while trunk, preprocessing and data are the same,
//! rebuilt when any of them changes; atomic; read back equal to the trunk's own output.

use candle_core::Device;
use longtail_data::Dataset;
use longtail_trunks::{
    extract_features, read_features, CacheStatus, ExtractOptions, FeatureKind, LoadOptions,
    PretrainedTrunk, TrunkError, TrunkRef,
};

use crate::common::{max_abs_diff, pixels, trunk_folder, TestResult};

const SHAPE: (usize, usize, usize) = (20, 24, 3);

fn data(n: usize, seed: u64) -> Dataset {
    let labels = (0..n as u32).map(|i| i % 3).collect();
    Dataset::new(
        "test",
        pixels(n, SHAPE, seed),
        labels,
        SHAPE,
        3,
        vec![],
        vec![],
    )
    .unwrap()
}

fn load(folder: &std::path::Path) -> PretrainedTrunk {
    PretrainedTrunk::load(&TrunkRef::Local(folder.into()), &LoadOptions::default()).unwrap()
}

fn built(s: &CacheStatus) -> &str {
    match s {
        CacheStatus::Built { reason } => reason,
        CacheStatus::Reused => panic!("expected a rebuild"),
    }
}

#[test]
fn reused_when_nothing_changed_rebuilt_when_anything_did() -> TestResult {
    let d = tempfile::tempdir()?;
    let dino = load(&trunk_folder(d.path(), "dinov2_tiny_random"));
    let out_dir = d.path().join("cache");
    let path = out_dir.join("train.safetensors");
    let opts = ExtractOptions {
        batch_size: 4,
        ..Default::default()
    };
    let train = data(10, 1);

    let s = extract_features(&dino, &train, &path, &opts)?;
    assert_eq!(built(&s), "no cache file");
    let before = std::fs::metadata(&path)?.modified()?;
    assert_eq!(
        extract_features(&dino, &train, &path, &opts)?,
        CacheStatus::Reused
    );
    assert_eq!(
        std::fs::metadata(&path)?.modified()?,
        before,
        "reuse leaves the file alone"
    );
    // Only the cache file in its folder: no temporary left behind.
    assert_eq!(std::fs::read_dir(&out_dir)?.count(), 1);

    // The features are the trunk's pooled output, in order, with the labels.
    let got = read_features(&path, &Device::Cpu)?;
    let want = dino.forward_images(&train.images, SHAPE)?.pooled;
    assert!(max_abs_diff(&got.features, &want) < 1e-6);
    assert_eq!(got.labels, train.labels);
    assert_eq!(got.metadata["trunk"], dino.files.id);
    assert_eq!(got.metadata["revision"], dino.files.revision);
    assert!(got.metadata["revision"].starts_with("blake3:"));
    assert_eq!(got.metadata["count"], "10");

    // Data: one label changed, or one pixel.
    let mut relabelled = train.clone();
    relabelled.labels[7] = 0;
    assert!(built(&extract_features(&dino, &relabelled, &path, &opts)?).starts_with("data changed"));
    let mut repainted = relabelled.clone();
    repainted.images[0] ^= 1;
    assert!(built(&extract_features(&dino, &repainted, &path, &opts)?).starts_with("data changed"));
    assert_eq!(
        extract_features(&dino, &repainted, &path, &opts)?,
        CacheStatus::Reused
    );

    // Preprocessing.
    let mut other_prep = dino.clone();
    other_prep.preprocess.mean = [0.5; 3];
    assert!(
        built(&extract_features(&other_prep, &repainted, &path, &opts)?)
            .starts_with("preprocessing changed")
    );

    // Trunk: the same weights under another revision (a retrained checkpoint), then another model.
    let mut retrained = dino.clone();
    retrained.files.revision = "another".into();
    assert!(
        built(&extract_features(&retrained, &repainted, &path, &opts)?)
            .starts_with("trunk changed")
    );
    let vit = load(&trunk_folder(d.path(), "vit_tiny_random"));
    assert!(built(&extract_features(&vit, &repainted, &path, &opts)?).starts_with("trunk changed"));
    assert_eq!(
        extract_features(&vit, &repainted, &path, &opts)?,
        CacheStatus::Reused
    );
    Ok(())
}

/// A truncated cache (a copy cut short) is rebuilt, not trusted.
#[test]
fn a_damaged_cache_is_rebuilt() -> TestResult {
    let d = tempfile::tempdir()?;
    let dino = load(&trunk_folder(d.path(), "dinov2_tiny_random"));
    let path = d.path().join("f.safetensors");
    let train = data(5, 2);
    let opts = ExtractOptions::default();
    extract_features(&dino, &train, &path, &opts)?;
    let bytes = std::fs::read(&path)?;
    std::fs::write(&path, &bytes[..bytes.len() - 3])?;
    let s = extract_features(&dino, &train, &path, &opts)?;
    assert!(built(&s).contains("bytes"), "{s:?}");
    std::fs::write(&path, b"junk")?;
    let s = extract_features(&dino, &train, &path, &opts)?;
    assert!(built(&s).starts_with("unreadable"), "{s:?}");
    assert_eq!(std::fs::read(&path)?, bytes);
    Ok(())
}

/// CLIP's projected embeddings can be cached instead of the pooled feature (a different cache);
/// a trunk without a projection refuses.
#[test]
fn clip_embeddings_are_a_feature_kind_of_their_own() -> TestResult {
    let d = tempfile::tempdir()?;
    let clip = load(&trunk_folder(d.path(), "clip_vision_tiny_random"));
    let path = d.path().join("clip.safetensors");
    let train = data(3, 3);
    let pooled = ExtractOptions::default();
    let embeds = ExtractOptions {
        kind: FeatureKind::Embeds,
        ..Default::default()
    };
    extract_features(&clip, &train, &path, &pooled)?;
    assert_eq!(
        read_features(&path, &Device::Cpu)?.features.dims(),
        &[3, 32]
    );
    let s = extract_features(&clip, &train, &path, &embeds)?;
    assert!(built(&s).starts_with("feature kind changed"), "{s:?}");
    assert_eq!(
        read_features(&path, &Device::Cpu)?.features.dims(),
        &[3, 24]
    );
    let dino = load(&trunk_folder(d.path(), "dinov2_tiny_random"));
    let e = extract_features(&dino, &train, &path, &embeds).unwrap_err();
    assert!(matches!(e, TrunkError::BadInput { .. }), "{e}");
    Ok(())
}
