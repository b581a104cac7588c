//! `hf://` references resolved from a Hub cache laid out by hand exactly as hf-hub and the Python
//! `huggingface_hub` write it (`models--owner--repo/{refs/main, blobs/<etag>,
//! snapshots/<commit>/<file> → ../../blobs/<etag>}`), with the network off.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use candle_core::Device;
use longtail_hub::{
    read_checked, resolve_with, CheckpointRef, HubError, HubOptions, HubRef, MODEL_FILE,
};

use crate::common::{values, TestResult};

const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";
const ETAG: &str = "5f2b9a1c0d3e4f5a6b7c8d9e0f1a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c";

/// Puts `bytes` in the cache as `file` of `owner/repo` at `COMMIT`, with `refs/<branch>`.
fn lay_out(
    cache: &Path,
    owner: &str,
    repo: &str,
    branch: &str,
    file: &str,
    bytes: &[u8],
) -> PathBuf {
    let folder = cache.join(format!("models--{owner}--{repo}"));
    std::fs::create_dir_all(folder.join("blobs")).unwrap();
    std::fs::create_dir_all(folder.join("refs")).unwrap();
    std::fs::write(folder.join("blobs").join(ETAG), bytes).unwrap();
    std::fs::write(folder.join("refs").join(branch), COMMIT).unwrap();
    let snap = folder.join("snapshots").join(COMMIT).join(file);
    std::fs::create_dir_all(snap.parent().unwrap()).unwrap();
    let depth = file.split('/').count() + 1;
    let target: PathBuf = std::iter::repeat_n("..", depth)
        .collect::<PathBuf>()
        .join("blobs")
        .join(ETAG);
    std::os::unix::fs::symlink(&target, &snap).unwrap();
    snap
}

fn tiny_checkpoint() -> Vec<u8> {
    let t = BTreeMap::from([("backbone.conv1.weight".to_string(), values(&[2, 3], 1))]);
    let meta = BTreeMap::from([("method".to_string(), "ride".to_string())]);
    longtail_hub::file::to_bytes(&t, &meta).unwrap()
}

fn hub(s: &str) -> CheckpointRef {
    CheckpointRef::parse(s).unwrap()
}

fn options(cache: &Path, offline: bool, endpoint: &str) -> HubOptions {
    HubOptions {
        offline,
        endpoint: Some(endpoint.into()),
        cache_dir: Some(cache.to_path_buf()),
        retries: 0,
    }
}

/// Nothing listens on port 9 (discard) on loopback: connections are refused at once.
const DEAD: &str = "http://127.0.0.1:9";

#[test]
fn offline_reads_the_cached_snapshot() -> TestResult {
    let d = tempfile::tempdir()?;
    let snap = lay_out(
        d.path(),
        "someone",
        "ride-c10",
        "main",
        MODEL_FILE,
        &tiny_checkpoint(),
    );
    let t0 = Instant::now();
    let got = resolve_with(
        &hub("hf://someone/ride-c10"),
        &options(d.path(), true, DEAD),
    )?;
    assert!(
        t0.elapsed() < Duration::from_millis(500),
        "{:?}",
        t0.elapsed()
    );
    assert_eq!(got, snap);
    let f = read_checked(&got, &Device::Cpu)?;
    assert_eq!(f.metadata["method"], "ride");
    assert_eq!(f.tensors["backbone.conv1.weight"].dims(), &[2, 3]);
    Ok(())
}

#[test]
fn revisions_and_nested_files_resolve_from_the_cache() -> TestResult {
    let d = tempfile::tempdir()?;
    let snap = lay_out(
        d.path(),
        "org",
        "m",
        "v1",
        "runs/best.safetensors",
        &tiny_checkpoint(),
    );
    let opts = options(d.path(), true, DEAD);
    assert_eq!(
        resolve_with(&hub("hf://org/m@v1/runs/best.safetensors"), &opts)?,
        snap
    );
    // A pinned commit needs no ref at all.
    assert_eq!(
        resolve_with(
            &hub(&format!("hf://org/m@{COMMIT}/runs/best.safetensors")),
            &opts
        )?,
        snap
    );
    // `main` was never cached.
    let e = resolve_with(&hub("hf://org/m/runs/best.safetensors"), &opts).unwrap_err();
    assert!(matches!(e, HubError::NotCached { .. }), "{e}");
    Ok(())
}

#[test]
fn an_unreachable_endpoint_falls_back_to_the_cache_fast() -> TestResult {
    let d = tempfile::tempdir()?;
    let snap = lay_out(
        d.path(),
        "someone",
        "sade",
        "main",
        MODEL_FILE,
        &tiny_checkpoint(),
    );
    let t0 = Instant::now();
    let got = resolve_with(&hub("hf://someone/sade"), &options(d.path(), false, DEAD))?;
    let took = t0.elapsed();
    assert_eq!(got, snap);
    eprintln!("unreachable endpoint, cached file: resolved in {took:?}");
    assert!(took < Duration::from_secs(1), "took {took:?}");
    Ok(())
}

#[test]
fn not_cached_is_one_clear_line_and_fast() -> TestResult {
    let d = tempfile::tempdir()?;
    for (offline, why) in [(true, "offline"), (false, "unreachable")] {
        let t0 = Instant::now();
        let e = resolve_with(
            &hub("hf://nobody/nothing@v2"),
            &options(d.path(), offline, DEAD),
        )
        .unwrap_err();
        let took = t0.elapsed();
        eprintln!("not cached, offline={offline}: failed in {took:?}");
        assert!(took < Duration::from_secs(1), "took {took:?}");
        let msg = e.to_string();
        assert!(matches!(e, HubError::NotCached { .. }), "{msg}");
        assert!(!msg.contains('\n'), "{msg}");
        for part in ["hf://nobody/nothing@v2", "longtail pull", why, "copy"] {
            assert!(msg.contains(part), "`{part}` missing from: {msg}");
        }
    }
    Ok(())
}

/// The only test that reads the environment (`HF_HUB_OFFLINE`, `HF_HUB_CACHE`): the others pass
/// every option explicitly, so setting them here cannot leak into them.
#[test]
fn hf_hub_offline_and_cache_come_from_the_environment() -> TestResult {
    let d = tempfile::tempdir()?;
    let snap = lay_out(
        d.path(),
        "envowner",
        "envrepo",
        "main",
        MODEL_FILE,
        &tiny_checkpoint(),
    );
    std::env::set_var("HF_HUB_CACHE", d.path());
    for v in ["1", "true", "YES", "on"] {
        std::env::set_var("HF_HUB_OFFLINE", v);
        assert!(longtail_hub::offline_from_env(), "{v}");
    }
    let opts = HubOptions::from_env();
    assert!(opts.offline);
    assert_eq!(opts.cache(), d.path());
    assert_eq!(opts.retries, 0);
    let got = longtail_hub::resolve_path(Path::new("hf://envowner/envrepo"))?;
    assert_eq!(got, snap);
    std::env::set_var("HF_HUB_OFFLINE", "0");
    assert!(!longtail_hub::offline_from_env());
    std::env::remove_var("HF_HUB_OFFLINE");
    std::env::remove_var("HF_HUB_CACHE");
    Ok(())
}

#[test]
fn local_directories_pick_their_checkpoint() -> TestResult {
    let d = tempfile::tempdir()?;
    let e = longtail_hub::checkpoint_file(d.path())
        .unwrap_err()
        .to_string();
    assert!(e.contains("neither"), "{e}");
    std::fs::write(d.path().join(MODEL_FILE), tiny_checkpoint())?;
    assert_eq!(
        longtail_hub::checkpoint_file(d.path())?,
        d.path().join(MODEL_FILE)
    );
    std::fs::write(d.path().join("last.safetensors"), tiny_checkpoint())?;
    assert_eq!(
        longtail_hub::checkpoint_file(d.path())?,
        d.path().join("last.safetensors")
    );
    let h = HubRef {
        owner: "a".into(),
        repo: "b".into(),
        revision: None,
        file: MODEL_FILE.into(),
    };
    assert_eq!(h.to_string(), "hf://a/b");
    Ok(())
}
