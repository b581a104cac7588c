//! End-to-end tests of the `longtail` binary, each in a fresh temp dir, on tiny data the tests
//! write in the real IDX format (12×12 grey images, 10 classes), so a training epoch takes
//! about a second.

mod util;
use util::{assert_fails, longtail, stderr, stdout, tiny_config};

use std::path::Path;
use std::process::{Command, Output};

/// Trains `method` on [`tiny_config`] data into `dir/out` and asserts that it succeeded.
fn train_tiny(dir: &Path, method: &str, epochs: usize, per_class: usize, out: &str) -> Output {
    let cfg = tiny_config(dir, method, epochs, per_class);
    let o = longtail(
        dir,
        &[
            "train",
            "--config",
            cfg.to_str().unwrap(),
            "--out",
            out,
            "--quiet",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    o
}

#[test]
fn data_prints_the_bundled_statistics() {
    let dir = tempfile::tempdir().unwrap();
    let o = longtail(dir.path(), &["data"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("2478") || out.contains("2,478"), "{out}");
    for word in ["many", "medium", "few", "Gini"] {
        assert!(
            out.to_lowercase().contains(&word.to_lowercase()),
            "{word} missing: {out}"
        );
    }
    let list = dir.path().join("idx.txt");
    let o = longtail(
        dir.path(),
        &["data", "--list-indices", list.to_str().unwrap()],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(std::fs::read_to_string(list).unwrap().lines().count(), 2478);
}

#[test]
fn train_then_eval_prints_groups_and_json() {
    let dir = tempfile::tempdir().unwrap();
    let o = train_tiny(dir.path(), "ride", 2, 30, "run");
    let run = dir.path().join("run");
    for f in ["last.safetensors", "config.toml", "metrics.jsonl"] {
        assert!(run.join(f).exists(), "{f}");
    }
    assert_eq!(
        std::fs::read_to_string(run.join("metrics.jsonl"))
            .unwrap()
            .lines()
            .count(),
        2
    );
    assert!(stdout(&o).contains("each expert alone"), "{}", stdout(&o));

    let o = longtail(dir.path(), &["eval", "--checkpoint", "run"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    for needle in ["mean of experts", "expert 2", "per-class accuracy", "many"] {
        assert!(out.contains(needle), "{needle}: {out}");
    }
    let o = longtail(
        dir.path(),
        &["eval", "--checkpoint", "run/last.safetensors", "--json"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["method"], "ride");
    assert_eq!(v["expert_accuracy"].as_array().unwrap().len(), 3);
    let acc = v["accuracy"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&acc));
    assert_eq!(v["samples"], 60);
    // The final line of the training metrics is the same evaluation as `eval`.
    let last = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    let last: serde_json::Value = serde_json::from_str(last.lines().last().unwrap()).unwrap();
    assert_eq!(last["test_accuracy"].as_f64().unwrap(), acc);
}

/// A run killed with SIGKILL mid-training and resumed ends with exactly the weights of an
/// uninterrupted run.
#[test]
fn a_killed_run_resumes_to_the_same_weights() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = tiny_config(dir.path(), "ride", 4, 60);
    let cfg = cfg.to_str().unwrap();
    let o = longtail(
        dir.path(),
        &["train", "--config", cfg, "--out", "straight", "--quiet"],
    );
    assert!(o.status.success(), "{}", stderr(&o));

    let mut child = Command::new(env!("CARGO_BIN_EXE_longtail"))
        .args(["train", "--config", cfg, "--out", "killed", "--quiet"])
        .current_dir(dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let metrics = dir.path().join("killed/metrics.jsonl");
    let t0 = std::time::Instant::now();
    while std::fs::read_to_string(&metrics).map_or(0, |s| s.lines().count()) < 1 {
        assert!(t0.elapsed().as_secs() < 300, "no epoch finished");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let done = std::fs::read_to_string(&metrics).unwrap().lines().count();
    assert!(done < 4, "the run finished before it could be killed");

    let o = longtail(dir.path(), &["train", "--config", cfg, "--out", "killed"]);
    assert_fails(&o, "--resume");
    let o = longtail(
        dir.path(),
        &[
            "train", "--config", cfg, "--out", "killed", "--resume", "--quiet",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let a = safetensors_tensors(&dir.path().join("straight/last.safetensors"));
    let b = safetensors_tensors(&dir.path().join("killed/last.safetensors"));
    assert_eq!(a.len(), b.len());
    for (name, bytes) in &a {
        assert!(b[name] == *bytes, "{name} differs after resume");
    }
    assert_eq!(std::fs::read_to_string(metrics).unwrap().lines().count(), 4);
}

fn safetensors_tensors(path: &Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(n, v)| (n, v.data().to_vec()))
        .collect()
}

#[test]
fn bad_input_gets_one_clear_line_and_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    assert_fails(
        &longtail(p, &["train", "--dataset", "mnist-lt"]),
        "unknown preset",
    );
    assert_fails(&longtail(p, &["data", "--dataset", "nope"]), "nope");
    assert_fails(
        &longtail(
            p,
            &[
                "train",
                "--preset",
                "ride.cifar10-lt",
                "--data-dir",
                "/no/such/dir",
                "--out",
                "x",
            ],
        ),
        "/no/such/dir",
    );
    assert!(!p.join("x/last.safetensors").exists());
    assert_fails(
        &longtail(p, &["eval", "--checkpoint", "missing.safetensors"]),
        "missing.safetensors",
    );
    std::fs::write(
        p.join("corrupt.safetensors"),
        b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\":",
    )
    .unwrap();
    assert_fails(
        &longtail(p, &["eval", "--checkpoint", "corrupt.safetensors"]),
        "not a valid safetensors",
    );
    assert_fails(
        &longtail(p, &["train", "--method", "sade", "--experts", "2"]),
        "3 experts",
    );
    assert_fails(&longtail(p, &["train", "--lr=-1"]), "learning rate");
    std::fs::write(p.join("typo.toml"), "seed = 1\nepochz = 3\n").unwrap();
    assert_fails(
        &longtail(p, &["train", "--config", "typo.toml"]),
        "typo.toml",
    );
    assert_fails(
        &longtail(
            p,
            &["train", "--epochs", "1", "--out", "/proc/forbidden/run"],
        ),
        "/proc/forbidden/run",
    );
}

#[test]
fn a_checkpoint_for_another_class_count_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    train_tiny(dir.path(), "ce", 1, 20, "run");
    // The run's own config says fmnist with 10 classes; CIFAR-100-LT has 100.
    let o = longtail(
        dir.path(),
        &[
            "eval",
            "--checkpoint",
            "run",
            "--dataset",
            "cifar100-lt",
            "--data-dir",
            "idx",
        ],
    );
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    // A checkpoint whose weights do not fit the model its config describes.
    let bytes = std::fs::read(dir.path().join("run/last.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let mut meta = meta.metadata().clone().unwrap();
    let cfg_text = meta["config"].replace("num_classes = 10", "num_classes = 7");
    meta.insert("config".into(), cfg_text);
    let tensors: Vec<(String, safetensors::tensor::TensorView)> = st.tensors();
    let out = safetensors::serialize(tensors, Some(meta)).unwrap();
    std::fs::write(dir.path().join("other.safetensors"), out).unwrap();
    assert_fails(
        &longtail(dir.path(), &["eval", "--checkpoint", "other.safetensors"]),
        "shape",
    );
}

#[test]
fn bench_train_compares_our_kernels_with_stock_on_both_models() {
    let dir = tempfile::tempdir().unwrap();
    let args = [
        "bench",
        "train",
        "--batch",
        "4",
        "--steps",
        "1",
        "--stock-steps",
        "1",
        "--eval-reps",
        "1",
        "--rounds",
        "1",
    ];
    let o = longtail(dir.path(), &args);
    let out = stdout(&o);
    assert!(o.status.success(), "{out}{}", stderr(&o));
    assert!(out.contains("GEMM 1024^3"), "{out}");
    // The models' own MAC counts: issue #5's 68.9 M (ResNet-32) and 100.4 M (RIDE-3 reduced).
    for (model, macs) in [("resnet32", "68.9"), ("ride3", "100.4")] {
        for ops in ["ours", "stock"] {
            let row = out
                .lines()
                .find(|l| l.split_whitespace().take(2).eq([model, ops]))
                .unwrap_or_else(|| panic!("no {model} {ops} row in:\n{out}"));
            let cols: Vec<&str> = row.split_whitespace().collect();
            assert_eq!(cols[2], macs, "{row}");
            let img_s: f64 = cols[5].parse().unwrap();
            assert!(img_s > 0.0, "{row}");
        }
        assert!(
            out.lines()
                .any(|l| l.starts_with(model) && l.contains("ours/stock: train")),
            "{out}"
        );
        // Same weights and data: ours and stock must compute the same losses.
        let ratio = out
            .lines()
            .find(|l| l.starts_with(model) && l.contains("max rel. diff"))
            .unwrap_or_else(|| panic!("no {model} loss comparison line in:\n{out}"));
        let diff: f64 = ratio
            .rsplit("max rel. diff ")
            .next()
            .unwrap()
            .trim_end_matches(')')
            .parse()
            .unwrap();
        assert!(diff < 1e-3, "{ratio}");
    }
    assert_fails(
        &longtail(dir.path(), &["bench", "train", "--models", "vgg16"]),
        "unknown model `vgg16`",
    );
    // The SIMD level of our kernels is printed, and LONGTAIL_ISA caps it.
    assert!(out.contains("simd: our direct 3x3 conv kernels"), "{out}");
    let capped = std::process::Command::new(env!("CARGO_BIN_EXE_longtail"))
        .args(["bench", "train", "--models", "resnet32", "--batch", "2"])
        .args([
            "--steps",
            "1",
            "--stock-steps",
            "0",
            "--eval-reps",
            "1",
            "--no-torch",
        ])
        .current_dir(dir.path())
        .env("RAYON_NUM_THREADS", "2")
        .env("LONGTAIL_ISA", "scalar")
        .output()
        .unwrap();
    assert!(capped.status.success(), "{}", stderr(&capped));
    assert!(
        stdout(&capped).contains("simd: our direct 3x3 conv kernels off (scalar"),
        "{}",
        stdout(&capped)
    );
    let bogus = std::process::Command::new(env!("CARGO_BIN_EXE_longtail"))
        .args(["presets"])
        .env("LONGTAIL_ISA", "sse9")
        .output()
        .unwrap();
    assert_fails(
        &bogus,
        "LONGTAIL_ISA=\"sse9\" is not an instruction set of ours",
    );
}

/// RIDE stage 2 end to end: a trained RIDE run gets a router file, routed and all-experts
/// accuracy and the experts-used split; `--eval-only` reads the saved router back and prints the
/// same numbers; a one-expert run is refused with one clear line.
#[test]
fn route_trains_saves_and_reevaluates_the_stage_two_router() {
    let dir = tempfile::tempdir().unwrap();
    train_tiny(dir.path(), "ride", 2, 30, "run");
    let route = |extra: &[&str]| {
        let mut args = vec![
            "route",
            "--checkpoint",
            "run",
            "--epochs",
            "2",
            "--batch-size",
            "32",
            "--json",
        ];
        args.extend_from_slice(extra);
        let o = longtail(dir.path(), &args);
        assert!(o.status.success(), "{}", stderr(&o));
        serde_json::from_str::<serde_json::Value>(&stdout(&o)).unwrap()
    };
    let trained = route(&[]);
    assert!(dir.path().join("run/router.safetensors").exists());
    let used: Vec<f64> = trained["used"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    assert_eq!(used.len(), 3);
    assert!((used.iter().sum::<f64>() - 1.0).abs() < 1e-9, "{used:?}");
    let mean = trained["mean_experts"].as_f64().unwrap();
    assert!((1.0..=3.0).contains(&mean), "{mean}");
    // Compute follows the split: trunk + experts used, between one expert and all of them.
    let (routed, all) = (
        trained["routed_macs"].as_f64().unwrap(),
        trained["all_macs"].as_f64().unwrap(),
    );
    assert!(
        routed <= all * (1.0 + 1e-12) && routed > 0.0,
        "{routed} vs {all}"
    );
    assert_eq!(trained["routed"]["samples"], 60);
    // The all-experts numbers are those of `longtail eval`.
    let o = longtail(dir.path(), &["eval", "--checkpoint", "run", "--json"]);
    let ev: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(trained["all_experts"]["accuracy"], ev["accuracy"]);
    // Read back: identical results.
    let again = route(&["--eval-only"]);
    assert_eq!(again, trained);

    train_tiny(dir.path(), "ce", 1, 30, "ce");
    assert_fails(
        &longtail(dir.path(), &["route", "--checkpoint", "ce"]),
        "routing needs a multi-expert model",
    );
    // A router file that does not fit the model, or is not a router at all, is refused.
    let o = longtail(
        dir.path(),
        &[
            "train",
            "--config",
            "ride.toml",
            "--experts",
            "2",
            "--out",
            "two",
            "--epochs",
            "1",
            "--quiet",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    std::fs::copy(
        dir.path().join("run/router.safetensors"),
        dir.path().join("two/router.safetensors"),
    )
    .unwrap();
    assert_fails(
        &longtail(dir.path(), &["route", "--checkpoint", "two", "--eval-only"]),
        "routes 3 experts over 10 classes, but the model has 2 experts",
    );
    std::fs::copy(
        dir.path().join("two/last.safetensors"),
        dir.path().join("two/router.safetensors"),
    )
    .unwrap();
    assert_fails(
        &longtail(dir.path(), &["route", "--checkpoint", "two", "--eval-only"]),
        "is not a router file",
    );
    assert_fails(
        &longtail(
            dir.path(),
            &[
                "route",
                "--checkpoint",
                "run",
                "--eval-only",
                "--out",
                "nowhere",
            ],
        ),
        "nowhere/router.safetensors",
    );
}

/// Writes `path` again without the tensors whose names start with `drop_prefix`, with the
/// metadata changed by `edit`.
fn rewrite_checkpoint(
    path: &Path,
    out: &Path,
    drop_prefix: &str,
    edit: impl FnOnce(&mut std::collections::HashMap<String, String>),
) {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let mut meta = meta.metadata().clone().unwrap();
    edit(&mut meta);
    let tensors: Vec<(String, safetensors::tensor::TensorView)> = st
        .tensors()
        .into_iter()
        .filter(|(n, _)| drop_prefix.is_empty() || !n.starts_with(drop_prefix))
        .collect();
    std::fs::write(out, safetensors::serialize(tensors, Some(meta)).unwrap()).unwrap();
}

/// Issue 14 case 1: a run folder is locked for the run's life (a second `train` or a `route`
/// into it is refused, naming the process that holds it), and an --out that holds a run or
/// other files is refused unless --resume or --overwrite.
#[test]
fn a_run_folder_is_locked_and_a_used_out_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    train_tiny(p, "ride", 1, 20, "run");
    let me = format!("pid {}, test", std::process::id());
    {
        let _held = longtail::train::RunLock::acquire(&p.join("run"), "test").unwrap();
        let o = longtail(
            p,
            &["train", "--config", "ride.toml", "--out", "run", "--resume"],
        );
        assert_fails(&o, &me);
        assert_fails(&o, "is in use by another longtail process");
        let o = longtail(p, &["route", "--checkpoint", "run", "--epochs", "1"]);
        assert_fails(&o, &me);
        assert!(!stdout(&o).contains("router epoch"), "{}", stdout(&o));
    }
    // Two real processes: the second names the first.
    let mut first = Command::new(env!("CARGO_BIN_EXE_longtail"))
        .args([
            "train",
            "--config",
            "ride.toml",
            "--epochs",
            "200",
            "--out",
            "busy",
            "--quiet",
        ])
        .current_dir(p)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let holder = format!("pid {}, longtail train", first.id());
    let t0 = std::time::Instant::now();
    while !std::fs::read_to_string(p.join("busy/.lock")).is_ok_and(|s| s.contains(&holder)) {
        assert!(
            t0.elapsed().as_secs() < 120,
            "the first run never took its lock"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let second = longtail(p, &["train", "--config", "ride.toml", "--out", "busy"]);
    first.kill().unwrap();
    first.wait().unwrap();
    assert_fails(&second, &holder);

    // A finished run is refused without --resume or --overwrite; --overwrite replaces it.
    assert_fails(
        &longtail(p, &["train", "--config", "ride.toml", "--out", "run"]),
        "run already holds a run (epoch 1 of 1): pass --resume to continue it, --overwrite to replace it",
    );
    assert_fails(
        &longtail(
            p,
            &[
                "train",
                "--config",
                "ride.toml",
                "--out",
                "run",
                "--resume",
                "--overwrite",
            ],
        ),
        "cannot be used with",
    );
    let o = longtail(
        p,
        &[
            "train",
            "--config",
            "ride.toml",
            "--out",
            "run",
            "--overwrite",
            "--epochs",
            "2",
            "--quiet",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let metrics = std::fs::read_to_string(p.join("run/metrics.jsonl")).unwrap();
    assert_eq!(metrics.lines().count(), 2, "{metrics}");

    // A folder holding something else is refused; --overwrite trains into it and keeps it.
    std::fs::create_dir(p.join("notes")).unwrap();
    std::fs::write(p.join("notes/todo.txt"), "mine").unwrap();
    assert_fails(
        &longtail(p, &["train", "--config", "ride.toml", "--out", "notes"]),
        "notes is not empty and holds no longtail run (todo.txt)",
    );
    assert!(!p.join("notes/config.toml").exists());
    let o = longtail(
        p,
        &[
            "train",
            "--config",
            "ride.toml",
            "--out",
            "notes",
            "--overwrite",
            "--quiet",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(p.join("notes/last.safetensors").exists());
    assert_eq!(
        std::fs::read_to_string(p.join("notes/todo.txt")).unwrap(),
        "mine"
    );
}

/// Issue 14 case 2: a refused resume writes nothing and lists each differing field; a
/// checkpoint without its optimizer state cannot be resumed.
#[test]
fn a_refused_resume_names_each_field_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    train_tiny(p, "ride", 1, 20, "run");
    let config = std::fs::read(p.join("run/config.toml")).unwrap();
    let last = std::fs::read(p.join("run/last.safetensors")).unwrap();
    let o = longtail(
        p,
        &[
            "train",
            "--config",
            "ride.toml",
            "--out",
            "run",
            "--resume",
            "--lr",
            "0.05",
            "--seed",
            "3",
        ],
    );
    assert_fails(
        &o,
        "run was trained with another config; resume with the same settings or choose another --out: optim.lr: 0.1 in the run, 0.05 asked; seed: 0 in the run, 3 asked",
    );
    assert_eq!(std::fs::read(p.join("run/config.toml")).unwrap(), config);
    assert_eq!(std::fs::read(p.join("run/last.safetensors")).unwrap(), last);

    // An exported-style checkpoint (no momentum buffers) in place of the run's last one.
    let path = p.join("run/last.safetensors");
    rewrite_checkpoint(&path, &path, "optimizer.", |_| {});
    assert_fails(
        &longtail(
            p,
            &["train", "--config", "ride.toml", "--out", "run", "--resume"],
        ),
        "lacks the optimizer state: no momentum buffer",
    );
    assert_eq!(std::fs::read(p.join("run/config.toml")).unwrap(), config);
}

/// Issue 14 case 3: sizes are checked before anything is allocated.
#[test]
fn oversized_networks_are_refused_before_allocation() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    if std::path::Path::new("/proc/meminfo").exists() {
        // 100,000 experts need terabytes on any machine: an error in well under a second of
        // work, not a kill by the kernel.
        let t0 = std::time::Instant::now();
        let o = longtail(
            p,
            &["train", "--experts", "100000", "--out", "big", "--quiet"],
        );
        assert_fails(&o, "this run needs about");
        assert_fails(&o, "100000 experts × 10 classes");
        assert!(t0.elapsed().as_secs() < 60);
        assert!(!p.join("big").exists());
    }
    // A checkpoint whose stored config says 100,000,000 classes is refused before the network
    // is built (it would take 19 GB).
    train_tiny(p, "ride", 1, 20, "run");
    rewrite_checkpoint(
        &p.join("run/last.safetensors"),
        &p.join("huge.safetensors"),
        "",
        |meta| {
            let cfg = meta["config"].replace("num_classes = 10", "num_classes = 100000000");
            meta.insert("config".into(), cfg);
        },
    );
    assert_fails(
        &longtail(p, &["eval", "--checkpoint", "huge.safetensors"]),
        "describes a network of",
    );
}

/// Issue 14 case 5: every flag takes effect or is an error.
#[test]
fn flags_that_would_be_ignored_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    train_tiny(p, "ce", 1, 20, "run");
    let o = longtail(p, &["train", "--data-dir", "idx", "--out", "x"]);
    assert_fails(
        &o,
        "data directory idx would not be used: the data set is fmnist-lt, which is bundled and reads no files; pass --dataset with it",
    );
    assert!(!p.join("x").exists());
    let help = stdout(&longtail(p, &["train", "--help"]));
    assert!(help.contains("pass --dataset"), "{help}");
    assert_fails(
        &longtail(
            p,
            &["train", "--preset", "ride.fmnist-lt", "--dataset", "fmnist"],
        ),
        "cannot be used with",
    );
    assert_fails(
        &longtail(
            p,
            &["eval", "--checkpoint", "run", "--data-dir", "/nonexistent"],
        ),
        "data directory /nonexistent does not exist",
    );
    assert_fails(
        &longtail(
            p,
            &[
                "eval",
                "--checkpoint",
                "run",
                "--dataset",
                "fmnist-lt",
                "--data-dir",
                "idx",
            ],
        ),
        "data directory idx would not be used",
    );
    assert_fails(
        &longtail(p, &["eval", "--checkpoint", "run", "--ood-data", "fmnist"]),
        "--ood-data is for the OOD AUROC of --uncertainty",
    );
    assert_fails(
        &longtail(p, &["eval", "--checkpoint", "run", "--plot-dir", "plots"]),
        "--plot-dir draws the --test-dist or --uncertainty plots",
    );
    assert_fails(
        &longtail(p, &["data", "--data-dir", "idx"]),
        "data directory idx would not be used",
    );
    assert_fails(
        &longtail(
            p,
            &["train", "--config", "ce.toml", "--out", "fresh", "--resume"],
        ),
        "nothing to resume in fresh",
    );
    assert!(!p.join("fresh").exists());
}

/// Issue 14 case 7: two identical runs write identical checkpoints and metrics (wall times go
/// to timing.jsonl), and exporting them gives identical model files.
#[test]
fn identical_runs_write_identical_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    train_tiny(p, "ride", 2, 20, "a");
    let o = longtail(
        p,
        &["train", "--config", "ride.toml", "--out", "b", "--quiet"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    for f in ["last.safetensors", "metrics.jsonl", "config.toml"] {
        let (a, b) = (
            std::fs::read(p.join("a").join(f)).unwrap(),
            std::fs::read(p.join("b").join(f)).unwrap(),
        );
        assert!(a == b, "{f} differs between identical runs");
    }
    let metrics = std::fs::read_to_string(p.join("a/metrics.jsonl")).unwrap();
    assert!(!metrics.contains("seconds") && !metrics.contains("images_per_sec"));
    let timing = std::fs::read_to_string(p.join("a/timing.jsonl")).unwrap();
    assert_eq!(timing.lines().count(), 2, "{timing}");
    assert!(timing.contains("\"images_per_sec\""), "{timing}");
    for run in ["a", "b"] {
        let o = longtail(p, &["export", run, "--to", &format!("{run}-hub")]);
        assert!(o.status.success(), "{}", stderr(&o));
    }
    assert!(
        std::fs::read(p.join("a-hub/model.safetensors")).unwrap()
            == std::fs::read(p.join("b-hub/model.safetensors")).unwrap(),
        "exported model files differ"
    );
}

/// Issue 14 case 8: a bad config leaves no folder, an OS error is said once, a license that
/// would break the card's YAML is refused, and `route` checks that it can write before training.
#[test]
fn small_failures_leave_nothing_and_say_things_once() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    let cfg = tiny_config(p, "ride", 1, 20);
    let text = std::fs::read_to_string(&cfg).unwrap();
    for (from, to, needle) in [
        (
            "momentum = 0.9",
            "momentum = 2.0",
            "optim.momentum must be at least 0 and below 1 (got 2)",
        ),
        (
            "weight_decay = 0.0005",
            "weight_decay = -1.0",
            "optim.weight_decay must be a finite number >= 0 (got -1)",
        ),
    ] {
        assert!(text.contains(from), "{text}");
        std::fs::write(p.join("bad.toml"), text.replace(from, to)).unwrap();
        assert_fails(
            &longtail(p, &["train", "--config", "bad.toml", "--out", "bad"]),
            needle,
        );
        assert!(!p.join("bad").exists());
    }
    let o = longtail(
        p,
        &["train", "--epochs", "1", "--out", "/proc/forbidden/run"],
    );
    assert_fails(&o, "/proc/forbidden/run");
    let err = stderr(&o);
    assert_eq!(err.matches("os error").count(), 1, "{err}");

    let o = longtail(
        p,
        &[
            "train",
            "--config",
            cfg.to_str().unwrap(),
            "--out",
            "run",
            "--quiet",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_fails(
        &longtail(
            p,
            &[
                "export",
                "run",
                "--to",
                "card",
                "--license",
                "mit\nfoo: bar",
            ],
        ),
        "invalid --license `mit\\nfoo: bar`",
    );
    assert!(!p.join("card").exists());

    // A folder `route` cannot write into: refused before any router epoch. Root writes into a
    // read-only folder anyway, so then a folder under /proc stands in.
    use std::os::unix::fs::PermissionsExt;
    let ro = p.join("ro");
    std::fs::create_dir(&ro).unwrap();
    std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o555)).unwrap();
    let out = if std::fs::write(ro.join("probe"), b"").is_err() {
        ro.to_string_lossy().into_owned()
    } else {
        "/proc/forbidden/route".to_string()
    };
    let o = longtail(
        p,
        &[
            "route",
            "--checkpoint",
            "run",
            "--out",
            &out,
            "--epochs",
            "1",
        ],
    );
    assert_fails(&o, &out);
    assert!(!stdout(&o).contains("router epoch"), "{}", stdout(&o));
    std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// A single-model baseline trains from its preset through the CLI (issue 16): `focal.fmnist-lt`
/// for one epoch on the bundled set, with its settings in the run's config and the method's name
/// in `eval --json`.
#[test]
fn a_baseline_trains_from_its_preset() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    let o = longtail(
        p,
        &[
            "train",
            "--preset",
            "focal.fmnist-lt",
            "--epochs",
            "1",
            "--out",
            "run",
            "--quiet",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let cfg: toml::Table =
        toml::from_str(&std::fs::read_to_string(p.join("run/config.toml")).unwrap()).unwrap();
    let method = cfg["method"].as_table().unwrap();
    assert_eq!(method["name"].as_str(), Some("focal"));
    assert_eq!(method["gamma"].as_float(), Some(1.0));
    assert_eq!(method["form"].as_str(), Some("sigmoid"));
    assert_eq!(cfg["model"]["num_experts"].as_integer(), Some(1));
    let metrics = std::fs::read_to_string(p.join("run/metrics.jsonl")).unwrap();
    assert_eq!(metrics.lines().count(), 1);
    let m: serde_json::Value = serde_json::from_str(metrics.lines().next().unwrap()).unwrap();
    let loss = m["loss"].as_f64().unwrap();
    assert!(loss.is_finite() && loss > 0.0, "{m}");

    let o = longtail(p, &["eval", "--checkpoint", "run", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["method"], "focal");
    assert_eq!(v["accuracy"].as_f64(), m["test_accuracy"].as_f64());
}
