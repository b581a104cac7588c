//! Trunks from a Hugging Face cache laid out by hand as hf-hub and Python's `huggingface_hub`
//! write it (`models--owner--name/{refs/main, blobs/<hash>, snapshots/<commit>/<file> →
//! ../../blobs/<hash>}`, as crates/hub/tests/cache.rs), with HF_HUB_OFFLINE=1 semantics.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use longtail_trunks::{HubOptions, LoadOptions, PretrainedTrunk, TrunkError, TrunkRef};

use crate::common::{fixture_files, hf_dir, max_abs_diff, TestResult};

const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

/// Nothing listens on port 9 (discard) on loopback: connections are refused at once.
const DEAD: &str = "http://127.0.0.1:9";

/// Puts `files` (name, bytes) into the cache as `owner/name` at `COMMIT`, with `refs/main`.
fn lay_out(cache: &Path, repo: &str, files: &[(&str, Vec<u8>)]) {
    let folder = cache.join(format!("models--{}", repo.replace('/', "--")));
    std::fs::create_dir_all(folder.join("blobs")).unwrap();
    std::fs::create_dir_all(folder.join("refs")).unwrap();
    std::fs::write(folder.join("refs").join("main"), COMMIT).unwrap();
    let snap = folder.join("snapshots").join(COMMIT);
    std::fs::create_dir_all(&snap).unwrap();
    for (name, bytes) in files {
        let blob = blake3::hash(bytes).to_hex().to_string();
        std::fs::write(folder.join("blobs").join(&blob), bytes).unwrap();
        let target: PathBuf = ["..", "..", "blobs", &blob].iter().collect();
        std::os::unix::fs::symlink(&target, snap.join(name)).unwrap();
    }
}

fn offline(cache: &Path) -> LoadOptions {
    LoadOptions {
        hub: HubOptions {
            offline: true,
            endpoint: Some(DEAD.into()),
            cache_dir: Some(cache.to_path_buf()),
            retries: 0,
        },
        ..Default::default()
    }
}

fn dinov2_files() -> Vec<(&'static str, Vec<u8>)> {
    let (config, model) = fixture_files("dinov2_tiny_random");
    vec![
        ("config.json", std::fs::read(config).unwrap()),
        ("model.safetensors", std::fs::read(model).unwrap()),
        (
            "preprocessor_config.json",
            br#"{"crop_size": {"height": 32, "width": 32}, "do_center_crop": true,
                 "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225],
                 "resample": 3, "size": {"shortest_edge": 36}}"#
                .to_vec(),
        ),
    ]
}

#[test]
fn offline_loads_a_trunk_from_the_cache() -> TestResult {
    let d = tempfile::tempdir()?;
    lay_out(d.path(), "someone/dinov2-tiny", &dinov2_files());
    let t0 = Instant::now();
    let trunk = PretrainedTrunk::load(
        &TrunkRef::parse("hf://someone/dinov2-tiny")?,
        &offline(d.path()),
    )?;
    assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
    assert_eq!(trunk.files.id, "hf://someone/dinov2-tiny");
    assert_eq!(trunk.files.revision, COMMIT);
    assert!(trunk.files.preprocessor.is_some());
    assert_eq!(trunk.preprocess.output_size(20, 30), (32, 32));
    // The same numbers as the fixture.
    let io = candle_core::safetensors::load(
        hf_dir().join("dinov2_tiny_random.io.safetensors"),
        &candle_core::Device::Cpu,
    )?;
    let out = trunk.trunk.forward(&io["pixel_values"])?;
    assert!(max_abs_diff(&out.last_hidden_state, &io["last_hidden_state"]) < 1e-4);
    // A pinned commit resolves without the ref.
    let pinned = PretrainedTrunk::load(
        &TrunkRef::parse(&format!("hf://someone/dinov2-tiny@{COMMIT}"))?,
        &offline(d.path()),
    )?;
    assert_eq!(pinned.files.revision, COMMIT);
    Ok(())
}

#[test]
fn without_a_preprocessor_config_the_family_defaults_apply() -> TestResult {
    let d = tempfile::tempdir()?;
    let mut files = dinov2_files();
    files.pop();
    lay_out(d.path(), "someone/dinov2-bare", &files);
    let trunk = PretrainedTrunk::load(
        &TrunkRef::parse("hf://someone/dinov2-bare")?,
        &offline(d.path()),
    )?;
    assert_eq!(trunk.files.preprocessor, None);
    assert_eq!(
        trunk.preprocess,
        longtail_trunks::Preprocess::defaults(&trunk.config)
    );
    Ok(())
}

#[test]
fn offline_and_not_cached_is_a_typed_error_at_once() -> TestResult {
    let d = tempfile::tempdir()?;
    // Nothing cached at all.
    let t0 = Instant::now();
    let e = PretrainedTrunk::load(&TrunkRef::parse("hf://nobody/nothing")?, &offline(d.path()))
        .unwrap_err();
    assert!(t0.elapsed() < Duration::from_secs(1), "{:?}", t0.elapsed());
    let TrunkError::NotCached { reference, why, .. } = &e else {
        panic!("{e}")
    };
    assert_eq!(reference, "hf://nobody/nothing/config.json");
    assert!(why.contains("offline"), "{e}");
    // The config is cached, the weights are not.
    lay_out(d.path(), "someone/half", &dinov2_files()[..1]);
    let e = PretrainedTrunk::load(&TrunkRef::parse("hf://someone/half")?, &offline(d.path()))
        .unwrap_err();
    assert!(
        matches!(&e, TrunkError::NotCached { reference, .. } if reference.ends_with("model.safetensors")),
        "{e}"
    );
    Ok(())
}

/// Online but unreachable: a cached trunk still loads (hf-hub falls back to the cache on a
/// connection error), and an uncached one is `NotCached` saying the Hub is unreachable.
#[test]
fn an_unreachable_hub_falls_back_to_the_cache() -> TestResult {
    let d = tempfile::tempdir()?;
    lay_out(d.path(), "someone/dinov2-tiny", &dinov2_files());
    let mut opts = offline(d.path());
    opts.hub.offline = false;
    let trunk = PretrainedTrunk::load(&TrunkRef::parse("hf://someone/dinov2-tiny")?, &opts)?;
    assert_eq!(trunk.files.revision, COMMIT);
    let e = PretrainedTrunk::load(&TrunkRef::parse("hf://nobody/nothing")?, &opts).unwrap_err();
    assert!(
        matches!(&e, TrunkError::NotCached { why, .. } if why.contains("unreachable")),
        "{e}"
    );
    Ok(())
}
