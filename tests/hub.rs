//! End-to-end tests of `longtail pull / export / import` and `eval --checkpoint` on exported,
//! imported and `hf://` checkpoints (issue #8), each in a fresh temp dir.

mod util;
use util::{stderr, stdout, write_tiny_idx, TinyIdx};

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use candle_core::Device;
use longtail_fixtures::fixtures_dir;

fn longtail_env(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_longtail"));
    c.args(args)
        .current_dir(dir)
        .env("RAYON_NUM_THREADS", "2")
        .env_remove("HF_HUB_OFFLINE")
        .env_remove("HF_ENDPOINT")
        // Never the user's own cache.
        .env("HF_HOME", dir.join("hf-home"))
        .env_remove("HF_HUB_CACHE");
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("the longtail binary runs")
}

fn longtail(dir: &Path, args: &[&str]) -> Output {
    longtail_env(dir, args, &[])
}

/// Asserts a clean failure: exit status 2 and exactly one `error:` line, the last one, containing
/// `needle` (informational lines such as `eval`'s `device: …` may come before it).
fn assert_fails(o: &Output, needle: &str) {
    let err = stderr(o);
    assert_eq!(
        o.status.code(),
        Some(2),
        "stdout: {} stderr: {err}",
        stdout(o)
    );
    let errors: Vec<&str> = err.lines().filter(|l| l.starts_with("error")).collect();
    assert_eq!(errors.len(), 1, "one error line expected, got: {err}");
    let last = err.lines().rfind(|l| !l.trim().is_empty()).unwrap_or("");
    assert!(last.starts_with("error: "), "{err}");
    assert!(last.contains(needle), "`{needle}` not in: {err}");
}

/// A tiny Fashion-MNIST-shaped IDX directory (12×12, 10 classes, 20 train / 6 test per class).
fn tiny_idx(dir: &Path) -> PathBuf {
    let spec = TinyIdx {
        side: 12,
        train_per_class: 20,
        test_per_class: 6,
        seed: 11,
        bright: 220,
        dark: 20,
        noise_shift: 60,
        invert: false,
    };
    write_tiny_idx(dir, "idx", &spec)
}

/// Trains `ride.fmnist-lt` on the tiny data for one epoch with one block per stage into `run`.
fn tiny_run(dir: &Path) -> PathBuf {
    let idx = tiny_idx(dir);
    let o = longtail(dir, &["presets", "ride.fmnist-lt"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let mut cfg: toml::Table = toml::from_str(&stdout(&o)).unwrap();
    let data = cfg["data"].as_table_mut().unwrap();
    data.insert("dataset".into(), "fmnist".into());
    data.insert("data_dir".into(), idx.to_string_lossy().into_owned().into());
    data.insert("imbalance".into(), 10.0.into());
    let model = cfg["model"].as_table_mut().unwrap();
    model.insert("blocks_per_stage".into(), 1.into());
    let optim = cfg["optim"].as_table_mut().unwrap();
    optim.insert("epochs".into(), 1.into());
    optim.insert("batch_size".into(), 16.into());
    let path = dir.join("ride.toml");
    std::fs::write(&path, toml::to_string(&cfg).unwrap()).unwrap();
    let o = longtail(
        dir,
        &[
            "train",
            "--config",
            path.to_str().unwrap(),
            "--out",
            "run",
            "--quiet",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    dir.join("run")
}

fn eval_json(dir: &Path, checkpoint: &str, env: &[(&str, &str)]) -> serde_json::Value {
    let o = longtail_env(dir, &["eval", "--checkpoint", checkpoint, "--json"], env);
    assert!(o.status.success(), "{checkpoint}: {}", stderr(&o));
    serde_json::from_str(&stdout(&o)).unwrap()
}

/// Puts the files of `folder` into a Hub cache as `owner/repo` at a fixed commit, the way
/// hf-hub / huggingface_hub lay it out (blobs + relative symlinks + refs/main).
fn cache_folder(cache: &Path, owner: &str, repo: &str, folder: &Path) {
    let commit = "89abcdef0123456789abcdef0123456789abcdef";
    let root = cache.join(format!("models--{owner}--{repo}"));
    std::fs::create_dir_all(root.join("blobs")).unwrap();
    std::fs::create_dir_all(root.join("refs")).unwrap();
    std::fs::create_dir_all(root.join("snapshots").join(commit)).unwrap();
    std::fs::write(root.join("refs/main"), commit).unwrap();
    for (i, entry) in std::fs::read_dir(folder).unwrap().enumerate() {
        let entry = entry.unwrap();
        let etag = format!("{:064x}", i + 1);
        std::fs::copy(entry.path(), root.join("blobs").join(&etag)).unwrap();
        std::os::unix::fs::symlink(
            Path::new("../../blobs").join(&etag),
            root.join("snapshots").join(commit).join(entry.file_name()),
        )
        .unwrap();
    }
}

#[test]
fn export_then_eval_gives_the_run_numbers_locally_and_from_the_hub_cache() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    let _run = tiny_run(p);
    let o = longtail(
        p,
        &[
            "export",
            "run",
            "--to",
            "exported",
            "--repo",
            "me/tiny-ride",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("optimizer entries left out"),
        "{}",
        stdout(&o)
    );
    for f in ["model.safetensors", "config.json", "README.md"] {
        assert!(p.join("exported").join(f).is_file(), "{f}");
    }
    let from_run = eval_json(p, "run", &[]);
    let from_export = eval_json(p, "exported", &[]);
    assert_eq!(from_run, from_export);

    // The card's table holds the run's numbers.
    let card = std::fs::read_to_string(p.join("exported/README.md")).unwrap();
    let acc = from_run["accuracy"].as_f64().unwrap();
    let row = format!("| test | {:.2} |", 100.0 * acc);
    assert!(card.contains(&row), "`{row}` not in:\n{card}");
    assert!(
        card.contains("longtail eval --checkpoint hf://me/tiny-ride"),
        "{card}"
    );
    assert!(card.starts_with("---\nlibrary_name: longtail\n"), "{card}");

    // The same folder from a Hub cache, network off, and with an unreachable endpoint.
    let cache = p.join("hub-cache");
    cache_folder(&cache, "me", "tiny-ride", &p.join("exported"));
    let cache_s = cache.to_str().unwrap();
    for env in [
        vec![("HF_HUB_CACHE", cache_s), ("HF_HUB_OFFLINE", "1")],
        vec![
            ("HF_HUB_CACHE", cache_s),
            ("HF_ENDPOINT", "http://127.0.0.1:9"),
        ],
    ] {
        let t0 = Instant::now();
        let from_hub = eval_json(p, "hf://me/tiny-ride", &env);
        eprintln!("eval from the hub cache with {env:?}: {:?}", t0.elapsed());
        assert_eq!(from_hub, from_run, "{env:?}");
    }
    // Pull with the network off just finds the cached files.
    let o = longtail_env(
        p,
        &["pull", "hf://me/tiny-ride"],
        &[("HF_HUB_CACHE", cache_s), ("HF_HUB_OFFLINE", "1")],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("config.json"), "{}", stdout(&o));

    // Exporting again would overwrite: refused, card unchanged.
    let o = longtail(p, &["export", "run", "--to", "exported"]);
    assert_fails(&o, "already exists");
    assert_eq!(
        std::fs::read_to_string(p.join("exported/README.md")).unwrap(),
        card
    );
}

#[test]
fn hub_references_that_cannot_be_resolved_fail_fast_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    let empty = p.join("empty-cache");
    let empty_s = empty.to_str().unwrap();
    for (env, why) in [
        (
            vec![("HF_HUB_CACHE", empty_s), ("HF_HUB_OFFLINE", "1")],
            "offline",
        ),
        (
            vec![
                ("HF_HUB_CACHE", empty_s),
                ("HF_ENDPOINT", "http://127.0.0.1:9"),
            ],
            "unreachable",
        ),
    ] {
        for args in [
            vec!["eval", "--checkpoint", "hf://someone/ride-c100"],
            vec!["pull", "hf://someone/ride-c100"],
        ] {
            let t0 = Instant::now();
            let o = longtail_env(p, &args, &env);
            let took = t0.elapsed();
            eprintln!("{args:?} {why}: failed in {took:?}");
            assert_fails(&o, "longtail pull hf://someone/ride-c100");
            assert_fails(&o, why);
            // hf-hub's default (5 retries with back-off) takes 2-4 s; ours makes one request
            // for eval and at most 4 quick ones for pull.
            assert!(took < Duration::from_secs(3), "{args:?}: {took:?}");
        }
    }
    assert_fails(
        &longtail(p, &["eval", "--checkpoint", "someone/ride-c100"]),
        "hf://someone/ride-c100",
    );
    assert_fails(
        &longtail(p, &["pull", "someone/ride-c100"]),
        "hf://owner/repo",
    );
    assert_fails(
        &longtail(p, &["eval", "--checkpoint", "hf://someone"]),
        "bad checkpoint reference",
    );
}

fn max_abs_diff(a: &candle_core::Tensor, b: &candle_core::Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// Expected: the official eval-mode logits in `fixtures/official/<stem>.io.safetensors`.
#[test]
fn imported_official_models_reproduce_the_official_logits() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    let fx = fixtures_dir();
    for (stem, from, experts) in [
        ("ride_cifar_e3_c10", "ride", 3),
        ("ride_baseline_cifar_e1_c10", "ride", 1),
        ("sade_cifar_e3_c10", "sade", 3),
        ("tlc_cifar_e3_c10", "tlc", 3),
    ] {
        let file = fx.join(format!("{stem}.safetensors"));
        let o = longtail(
            p,
            &[
                "import",
                "--from",
                from,
                file.to_str().unwrap(),
                "--out",
                stem,
                "--classes",
                "10",
            ],
        );
        assert!(o.status.success(), "{stem}: {}", stderr(&o));
        let io =
            candle_core::safetensors::load(fx.join(format!("{stem}.io.safetensors")), &Device::Cpu)
                .unwrap();
        // Through our checkpoint folder, and directly from the official file.
        for source in [p.join(stem), file.clone()] {
            let loaded = longtail::hub::load_checkpoint(
                &source,
                &longtail::registry::Registry,
                &Device::Cpu,
            )
            .unwrap();
            assert_eq!(loaded.config.method.name, from);
            assert_eq!(loaded.config.data.dataset, "cifar10-lt");
            assert_eq!(loaded.config.model.num_experts, experts);
            assert_eq!(loaded.class_counts.len(), 10);
            assert_eq!(loaded.class_counts[0], 5000);
            let out = loaded.model.forward_t(&io["input"], false).unwrap();
            let d = max_abs_diff(&out.logits, &io["logits"]);
            assert!(
                d <= 1e-4,
                "{stem} via {}: logits differ by {d}",
                source.display()
            );
            let d = max_abs_diff(&out.expert_logits, &io["expert_logits"]);
            assert!(
                d <= 1e-4,
                "{stem} via {}: expert logits differ by {d}",
                source.display()
            );
        }
        let card = std::fs::read_to_string(p.join(stem).join("README.md")).unwrap();
        assert!(card.contains("imported from the official"), "{card}");
    }
}

#[test]
fn bad_official_files_are_refused_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    let fx = fixtures_dir();
    let ride = fx.join("ride_cifar_e3_c10.safetensors");
    let ride = ride.to_str().unwrap();
    let tlc = fx.join("tlc_cifar_e3_c10.safetensors");

    assert_fails(
        &longtail(
            p,
            &[
                "import",
                "--from",
                "ride",
                tlc.to_str().unwrap(),
                "--out",
                "a",
            ],
        ),
        "not an official ride model",
    );
    assert_fails(
        &longtail(
            p,
            &[
                "import",
                "--from",
                "ride",
                ride,
                "--out",
                "a",
                "--classes",
                "100",
            ],
        ),
        "10 classes but 100",
    );
    assert_fails(
        &longtail(
            p,
            &[
                "import",
                "--from",
                "ride",
                ride,
                "--out",
                "a",
                "--dataset",
                "cifar100-lt",
            ],
        ),
        "cifar100-lt has 100",
    );
    let bytes = std::fs::read(ride).unwrap();
    std::fs::write(p.join("cut.safetensors"), &bytes[..bytes.len() - 1000]).unwrap();
    assert_fails(
        &longtail(
            p,
            &["import", "--from", "ride", "cut.safetensors", "--out", "a"],
        ),
        "not a valid safetensors file",
    );
    assert!(!p.join("a").exists());

    // An existing folder is never overwritten.
    std::fs::create_dir(p.join("b")).unwrap();
    std::fs::write(p.join("b/keep.txt"), "mine").unwrap();
    assert_fails(
        &longtail(p, &["import", "--from", "ride", ride, "--out", "b"]),
        "already exists",
    );
    assert_eq!(
        std::fs::read_to_string(p.join("b/keep.txt")).unwrap(),
        "mine"
    );
    assert_eq!(std::fs::read_dir(p.join("b")).unwrap().count(), 1);
}

/// Issue 14 case 6: a 1-channel, 10-class official state dict is the bundled Fashion-MNIST-LT
/// (not CIFAR-10-LT), and an fmnist-lt import stores the bundled set's class counts (so
/// many / medium / few are right), not the full Fashion-MNIST profile's.
#[test]
fn one_channel_imports_are_fmnist_lt_with_the_bundled_class_counts() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    let run = tiny_run(p);
    // The run's weights as an official state dict: no optimizer state, no metadata.
    let bytes = std::fs::read(run.join("last.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let tensors: Vec<(String, safetensors::tensor::TensorView)> = st
        .tensors()
        .into_iter()
        .filter(|(n, _)| !n.starts_with("optimizer."))
        .collect();
    std::fs::write(
        p.join("official.safetensors"),
        safetensors::serialize(tensors, None).unwrap(),
    )
    .unwrap();
    let bundled = [1000, 599, 359, 215, 129, 77, 46, 27, 16, 10];
    for (out, extra) in [("inferred", None), ("named", Some("fmnist-lt"))] {
        let mut args = vec![
            "import",
            "--from",
            "ride",
            "official.safetensors",
            "--out",
            out,
        ];
        if let Some(d) = extra {
            args.extend(["--dataset", d]);
        }
        let o = longtail(p, &args);
        assert!(o.status.success(), "{}", stderr(&o));
        assert!(
            stdout(&o).contains("(resnet32, 3 experts"),
            "{}",
            stdout(&o)
        );
        let json: serde_json::Value =
            serde_json::from_slice(&std::fs::read(p.join(out).join("config.json")).unwrap())
                .unwrap();
        assert_eq!(json["dataset"], "fmnist-lt", "{out}");
        assert_eq!(json["class_counts"], serde_json::json!(bundled), "{out}");
    }
    // Evaluated with the right groups: 5 many-, 3 medium- and 2 few-shot classes.
    let v = eval_json(p, "inferred", &[]);
    assert_eq!(v["dataset"], "fmnist-lt");
    assert_eq!(v["group_classes"], serde_json::json!([5, 3, 2]));
    assert_fails(
        &longtail(
            p,
            &[
                "import",
                "--from",
                "ride",
                "official.safetensors",
                "--out",
                "cifar",
                "--dataset",
                "cifar10-lt",
            ],
        ),
        "the network takes 1-channel images but cifar10-lt has 3-channel ones",
    );
    assert!(!p.join("cifar").exists());
}
