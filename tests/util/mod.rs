//! Helpers shared by the end-to-end test binaries (`mod util;` in each).
#![allow(dead_code)] // each test binary uses its own subset

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn longtail(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_longtail"))
        .args(args)
        .current_dir(dir)
        .env("RAYON_NUM_THREADS", "2")
        .output()
        .expect("the longtail binary runs")
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Asserts a clean failure: exit status 2 and exactly one `error:` line naming the problem
/// (informational lines such as the chosen device may precede it; clap adds its usage hint).
pub fn assert_fails(o: &Output, needle: &str) {
    let err = stderr(o);
    assert_eq!(
        o.status.code(),
        Some(2),
        "stdout: {} stderr: {err}",
        stdout(o)
    );
    let errors: Vec<&str> = err.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "one error line expected, got: {err}");
    assert!(errors[0].contains(needle), "`{needle}` not in: {err}");
}

pub fn write_idx(path: &Path, dims: &[u32], data: &[u8]) {
    let mut bytes = vec![0u8, 0, 8, dims.len() as u8];
    for d in dims {
        bytes.extend(d.to_be_bytes());
    }
    bytes.extend(data);
    std::fs::write(path, bytes).unwrap();
}

/// How [`write_tiny_idx`] draws its images: 10 classes, each a bright 4×3 block at its own
/// position on a dark background (`side`×`side` pixels), plus noise from a seeded LCG
/// (`state >> noise_shift`); `invert` flips every pixel (255 − v) for an out-of-distribution set.
pub struct TinyIdx {
    pub side: usize,
    pub train_per_class: usize,
    pub test_per_class: usize,
    pub seed: u64,
    pub bright: u8,
    pub dark: u8,
    pub noise_shift: u32,
    pub invert: bool,
}

/// Writes a Fashion-MNIST-shaped IDX directory `dir/name` (`train-*` then `t10k-*` images and
/// labels, drawn in that order from one noise stream) and returns its path.
pub fn write_tiny_idx(dir: &Path, name: &str, spec: &TinyIdx) -> std::path::PathBuf {
    let d = dir.join(name);
    std::fs::create_dir_all(&d).unwrap();
    let side = spec.side;
    let mut state = spec.seed;
    let mut make = |n: usize| {
        let (mut images, mut labels) = (vec![], vec![]);
        for i in 0..n * 10 {
            let c = i % 10;
            let (cy, cx) = ((c / 4) * 4, (c % 4) * 3);
            for y in 0..side {
                for x in 0..side {
                    state = state
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    let inside = y >= cy && y < cy + 4 && x >= cx && x < cx + 3;
                    let base = if inside { spec.bright } else { spec.dark };
                    let v = base + (state >> spec.noise_shift) as u8;
                    images.push(if spec.invert { 255 - v } else { v });
                }
            }
            labels.push(c as u8);
        }
        (images, labels)
    };
    for (prefix, n) in [
        ("train", spec.train_per_class),
        ("t10k", spec.test_per_class),
    ] {
        let (im, lb) = make(n);
        let (count, s) = (lb.len() as u32, side as u32);
        write_idx(
            &d.join(format!("{prefix}-images-idx3-ubyte")),
            &[count, s, s],
            &im,
        );
        write_idx(
            &d.join(format!("{prefix}-labels-idx1-ubyte")),
            &[count],
            &lb,
        );
    }
    d
}

/// A Fashion-MNIST-shaped IDX directory: `per_class` train and 6 test images per class, each
/// class a different bright square position on a dark background plus deterministic noise.
pub fn tiny_idx(dir: &Path, per_class: usize) -> PathBuf {
    let spec = TinyIdx {
        side: 12,
        train_per_class: per_class,
        test_per_class: 6,
        seed: 7,
        bright: 220,
        dark: 20,
        noise_shift: 60,
        invert: false,
    };
    write_tiny_idx(dir, "idx", &spec)
}

/// The `ride.fmnist-lt` preset pointed at the tiny IDX data (IF 10), with `epochs` epochs.
pub fn tiny_config(dir: &Path, method: &str, epochs: usize, per_class: usize) -> PathBuf {
    let idx = tiny_idx(dir, per_class);
    let o = longtail(dir, &["presets", &format!("{method}.fmnist-lt")]);
    assert!(o.status.success(), "{}", stderr(&o));
    let mut cfg: toml::Table = toml::from_str(&stdout(&o)).unwrap();
    let data = cfg["data"].as_table_mut().unwrap();
    data.insert("dataset".into(), "fmnist".into());
    data.insert("data_dir".into(), idx.to_string_lossy().into_owned().into());
    data.insert("imbalance".into(), 10.0.into());
    let optim = cfg["optim"].as_table_mut().unwrap();
    optim.insert("epochs".into(), (epochs as i64).into());
    optim.insert("batch_size".into(), 16.into());
    let path = dir.join(format!("{method}.toml"));
    std::fs::write(&path, toml::to_string(&cfg).unwrap()).unwrap();
    path
}
