//! End-to-end test of RIDE distillation through the `longtail` binary (docs/ride.md §4): a tiny
//! 6-expert teacher trained for one epoch, then a 3-expert student distilled from it, the rerun
//! that skips both, the student's evaluation without its teacher, and the clean errors.

mod util;
use util::{assert_fails, longtail, stderr, stdout, write_tiny_idx, TinyIdx};

use std::path::{Path, PathBuf};

/// `longtail presets ride.fmnist-lt.distill` pointed at a tiny Fashion-MNIST-shaped IDX set
/// (12×12 images, IF 100), one epoch of batch 32.
fn tiny_student_config(dir: &Path) -> PathBuf {
    let spec = TinyIdx {
        side: 12,
        train_per_class: 100,
        test_per_class: 5,
        seed: 5,
        bright: 200,
        dark: 30,
        noise_shift: 59,
        invert: false,
    };
    let idx = write_tiny_idx(dir, "idx", &spec);
    let o = longtail(dir, &["presets", "ride.fmnist-lt.distill"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let mut cfg: toml::Table = toml::from_str(&stdout(&o)).unwrap();
    let data = cfg["data"].as_table_mut().unwrap();
    data.insert("dataset".into(), "fmnist".into());
    data.insert("data_dir".into(), idx.to_string_lossy().into_owned().into());
    let optim = cfg["optim"].as_table_mut().unwrap();
    optim.insert("epochs".into(), 1.into());
    optim.insert("batch_size".into(), 32.into());
    let path = dir.join("student.toml");
    std::fs::write(&path, toml::to_string(&cfg).unwrap()).unwrap();
    path
}

fn experts_of(run: &Path) -> i64 {
    let text = std::fs::read_to_string(run.join("config.toml")).unwrap();
    let cfg: toml::Table = toml::from_str(&text).unwrap();
    cfg["model"]["num_experts"].as_integer().unwrap()
}

fn lines(path: &Path) -> usize {
    std::fs::read_to_string(path).unwrap().lines().count()
}

#[test]
fn teacher_then_student_then_rerun_skips_both() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let cfg = tiny_student_config(dir);
    let cfg = cfg.to_str().unwrap();
    let teacher = dir.join("teacher");
    let student = dir.join("student");
    let args = [
        "train",
        "--config",
        cfg,
        "--train-teacher",
        "--teacher",
        teacher.to_str().unwrap(),
        "--out",
        student.to_str().unwrap(),
        "--quiet",
    ];
    let o = longtail(dir, &args);
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    let err = stderr(&o);
    assert!(err.contains("training the teacher"), "{err}");
    assert!(err.contains("distilling from the teacher"), "{err}");
    // The teacher has the 6 experts of the official teacher configs, the student 3, and the
    // student's config names its teacher.
    assert_eq!(experts_of(&teacher), 6);
    assert_eq!(experts_of(&student), 3);
    let text = std::fs::read_to_string(student.join("config.toml")).unwrap();
    assert!(text.contains("[method.distill]"), "{text}");
    assert!(text.contains(teacher.to_str().unwrap()), "{text}");
    let out = stdout(&o);
    assert_eq!(out.matches("after 1 epochs").count(), 2, "{out}");
    assert_eq!(lines(&teacher.join("metrics.jsonl")), 1);
    assert_eq!(lines(&student.join("metrics.jsonl")), 1);

    // The same command again: both runs are finished, so both are only evaluated.
    let before = std::fs::read(student.join("last.safetensors")).unwrap();
    let o = longtail(dir, &args);
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    assert_eq!(stdout(&o).matches("after 1 epochs").count(), 2);
    assert_eq!(lines(&teacher.join("metrics.jsonl")), 1);
    assert_eq!(
        std::fs::read(student.join("last.safetensors")).unwrap(),
        before
    );

    // A finished student evaluates without its teacher.
    std::fs::rename(&teacher, dir.join("teacher-moved")).unwrap();
    let o = longtail(
        dir,
        &["eval", "--checkpoint", student.to_str().unwrap(), "--json"],
    );
    assert!(o.status.success(), "{}", stderr(&o));

    // The teacher gone: a new student is refused before anything is written.
    let s2 = dir.join("s2");
    let o = longtail(
        dir,
        &[
            "train",
            "--config",
            cfg,
            "--teacher",
            teacher.to_str().unwrap(),
            "--out",
            s2.to_str().unwrap(),
            "--quiet",
        ],
    );
    assert_fails(&o, "not found");
    assert!(!s2.exists());

    // A teacher of another data set (the tiny fmnist one for the bundled fmnist-lt student).
    let o = longtail(
        dir,
        &[
            "train",
            "--preset",
            "ride.fmnist-lt.distill",
            "--teacher",
            dir.join("teacher-moved").to_str().unwrap(),
            "--out",
            s2.to_str().unwrap(),
        ],
    );
    assert_fails(&o, "data set");
    assert!(!s2.exists());
}

#[test]
fn teacher_flags_are_refused_where_they_cannot_apply() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let o = longtail(
        dir,
        &[
            "train",
            "--method",
            "ce",
            "--teacher",
            "runs/t",
            "--epochs",
            "1",
        ],
    );
    assert_fails(&o, "RIDE setting");
    let o = longtail(
        dir,
        &["train", "--preset", "ride.fmnist-lt", "--train-teacher"],
    );
    assert_fails(&o, "nothing to distil");
    // The default teacher of the distill preset does not exist here.
    let o = longtail(dir, &["train", "--preset", "ride.fmnist-lt.distill"]);
    assert_fails(&o, "runs/ride.fmnist-lt.teacher-seed0 not found");
    assert!(!dir.join("runs").exists());
}
