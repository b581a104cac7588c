//! Seeded mutation fuzzing of the file parsers: CIFAR binary, IDX (raw and gzipped) and image
//! lists.
//!
//! Each format starts from small valid files and applies a fixed-seed series of random
//! mutations (bit flips, truncation, inserted and deleted bytes, header fields overwritten with
//! huge values). Every case must end in a typed error or a valid result, never a panic; a valid
//! result must be no larger than its input can hold; and the largest single allocation made
//! while parsing (measured by this binary's global allocator, per thread) must stay within a
//! bound tied to the input size. A failure names the case number to replay.

use std::path::Path;

use longtail_fixtures::fuzz::{env_or, largest_during as run, Largest};

use longtail_data::load::{load_splits_with, LoadOptions};
use longtail_data::readers::cifar::{parse_cifar, CifarKind, CifarRecords};
use longtail_data::readers::idx::{dataset_from_idx, encode_idx, maybe_gunzip, parse_idx};
use longtail_data::readers::image_list::{ImageList, MAX_LABEL};
use longtail_data::{DataSpec, DatasetName};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::util::cifar_record;

/// Cases per format (each a fresh mutation of a valid file); `LONGTAIL_FUZZ_CASES` overrides it
/// for a longer local run.
const CASES: usize = 400;
/// The fixed seed; each format mixes in its own salt. `LONGTAIL_FUZZ_SEED` overrides it.
const SEED: u64 = 0x1415_F022;

fn cases() -> usize {
    env_or("LONGTAIL_FUZZ_CASES", CASES)
}

fn seed() -> u64 {
    env_or("LONGTAIL_FUZZ_SEED", SEED)
}

#[global_allocator]
static ALLOCATOR: Largest = Largest;

/// Slack for fixed-size allocations (paths, error messages, small vectors).
const SLACK: usize = 64 << 10;

// ---- Mutations ------------------------------------------------------------------------------

/// Values a mutated header field takes: huge, boundary and small.
const FIELDS: [u32; 8] = [
    u32::MAX,
    u32::MAX - 1,
    0x8000_0000,
    0x7fff_ffff,
    0x0001_0000,
    0,
    1,
    10_000,
];

/// One to three random mutations of `input`; `header` is how many leading bytes hold
/// big-endian u32 fields worth overwriting (0: none).
fn mutate(rng: &mut ChaCha8Rng, input: &[u8], header: usize) -> Vec<u8> {
    let mut b = input.to_vec();
    for _ in 0..rng.random_range(1..=3) {
        let len = b.len();
        match rng.random_range(0..7) {
            // Flip one bit.
            0 if len > 0 => {
                let i = rng.random_range(0..len);
                b[i] ^= 1 << rng.random_range(0..8);
            }
            // Truncate.
            1 => b.truncate(rng.random_range(0..=len)),
            // Insert 1..16 random bytes.
            2 => {
                let at = rng.random_range(0..=len);
                let n = rng.random_range(1..=16);
                let bytes: Vec<u8> = (0..n).map(|_| rng.random()).collect();
                b.splice(at..at, bytes);
            }
            // Delete a range.
            3 if len > 0 => {
                let at = rng.random_range(0..len);
                let n = rng.random_range(1..=(len - at).min(64));
                b.drain(at..at + n);
            }
            // Overwrite a header field with a huge or boundary value.
            4 if header >= 4 && len >= 4 => {
                let fields = header.min(len) / 4;
                let at = 4 * rng.random_range(0..fields);
                let v = FIELDS[rng.random_range(0..FIELDS.len())];
                b[at..at + 4].copy_from_slice(&v.to_be_bytes());
            }
            // Append a copy of a chunk (a file that is too long).
            5 if len > 0 => {
                let at = rng.random_range(0..len);
                let n = rng.random_range(1..=(len - at).min(4096));
                let chunk = b[at..at + n].to_vec();
                b.extend(chunk);
            }
            // Set one byte to a random value.
            _ if len > 0 => {
                let i = rng.random_range(0..len);
                b[i] = rng.random();
            }
            _ => b.push(rng.random()),
        }
    }
    b
}

fn rng(salt: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed() ^ salt)
}

/// Fails the test with every case that broke a rule.
fn report(format: &str, failures: Vec<String>) {
    assert!(
        failures.is_empty(),
        "{format}: {} cases failed (LONGTAIL_FUZZ_SEED={}, LONGTAIL_FUZZ_CASES={}):\n{}",
        failures.len(),
        seed(),
        cases(),
        failures.join("\n")
    );
}

fn gzip(raw: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(raw).unwrap();
    e.finish().unwrap()
}

// ---- CIFAR binary ---------------------------------------------------------------------------

#[test]
fn cifar_binary_never_panics_and_stays_bounded() {
    let p = Path::new("fuzz/test_batch.bin");
    let c10: Vec<u8> = (0..3)
        .flat_map(|i| cifar_record(i, &[i as u8 * 3]))
        .collect();
    let c100: Vec<u8> = (0..2)
        .flat_map(|i| cifar_record(i, &[i as u8 * 7, i as u8 * 40]))
        .collect();
    let mut rng = rng(1);
    let mut failures = vec![];
    for case in 0..cases() {
        let (kind, seed, rec) = if case % 2 == 0 {
            (CifarKind::Cifar10, &c10, 3073)
        } else {
            (CifarKind::Cifar100, &c100, 3074)
        };
        // Half the cases mutate only labels and lengths (records stay whole more often).
        let bytes = mutate(&mut rng, seed, if case % 4 < 2 { 0 } else { 8 });
        let expected = (case % 3 == 0).then_some(seed.len() / rec);
        let (r, largest) = run(|| parse_cifar(p, &bytes, kind, expected));
        let Some(r) = r else {
            failures.push(format!("case {case}: panic on {} bytes", bytes.len()));
            continue;
        };
        if let Ok((images, labels)) = &r {
            if labels.len() * rec != bytes.len() || images.len() != labels.len() * 3072 {
                failures.push(format!(
                    "case {case}: {} labels and {} pixel bytes from {} bytes",
                    labels.len(),
                    images.len(),
                    bytes.len()
                ));
            }
            if expected.is_some_and(|n| n != labels.len()) {
                failures.push(format!("case {case}: {} records accepted", labels.len()));
            }
        }
        if largest > bytes.len() + SLACK {
            failures.push(format!(
                "case {case}: allocated {largest} bytes for {} input bytes",
                bytes.len()
            ));
        }
    }
    report("CIFAR binary", failures);
}

/// The whole CIFAR-10 path (`load_splits`) on a directory where one file is mutated.
#[test]
fn cifar_directories_never_panic() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let files: Vec<(String, Vec<u8>)> = (1..=5)
        .map(|b| format!("data_batch_{b}.bin"))
        .chain(["test_batch.bin".to_string()])
        .enumerate()
        .map(|(k, name)| {
            let recs: Vec<u8> = (0..10)
                .flat_map(|i| cifar_record(k * 10 + i, &[i as u8]))
                .collect();
            (name, recs)
        })
        .collect();
    let total: usize = files.iter().map(|f| f.1.len()).sum();
    let mut rng = rng(2);
    let mut failures = vec![];
    let cases = cases() / 5;
    for case in 0..cases {
        for (name, bytes) in &files {
            std::fs::write(dir.join(name), bytes).unwrap();
        }
        let (name, seed) = &files[rng.random_range(0..files.len())];
        let bytes = mutate(&mut rng, seed, 0);
        std::fs::write(dir.join(name), &bytes).unwrap();
        let spec = DataSpec {
            name: DatasetName::Cifar10Lt,
            data_dir: Some(dir.to_path_buf()),
            imbalance: 1.0 + (case % 3) as f64,
            val_fraction: (case % 2 == 0).then_some(0.2),
            seed: case as u64,
        };
        for records in [CifarRecords::AnyWhole, CifarRecords::Official] {
            let input = total + bytes.len();
            let (r, largest) = run(|| {
                load_splits_with(
                    &spec,
                    LoadOptions {
                        cifar_records: records,
                    },
                )
            });
            match r {
                None => failures.push(format!("case {case} ({records:?}): panic")),
                Some(Ok(s)) => {
                    let n = s.train.len() + s.test.len() + s.val.map_or(0, |v| v.len());
                    if records == CifarRecords::Official || n * 3073 > input {
                        failures.push(format!("case {case} ({records:?}): {n} images accepted"));
                    }
                }
                Some(Err(_)) => {}
            }
            if largest > 4 * input + SLACK {
                failures.push(format!(
                    "case {case}: allocated {largest} bytes for {input} input bytes"
                ));
            }
        }
    }
    report("CIFAR directories", failures);
}

// ---- IDX ------------------------------------------------------------------------------------

#[test]
fn idx_never_panics_and_stays_bounded() {
    let images: Vec<u8> = (0..5 * 4 * 3).map(|i| (i * 7 % 256) as u8).collect();
    let seeds = [
        encode_idx(&[5, 4, 3], &images),
        encode_idx(&[5], &[0, 1, 2, 3, 4]),
        encode_idx(&[5, 2, 2, 3], &images),
    ];
    let valid_labels = parse_idx(Path::new("l"), &seeds[1]).unwrap();
    let valid_images = parse_idx(Path::new("i"), &seeds[0]).unwrap();
    let mut rng = rng(3);
    let mut failures = vec![];
    for case in 0..cases() {
        let seed = &seeds[case % seeds.len()];
        // A third of the cases: mutate the raw file, then gzip it; a third: mutate the gzip
        // file; a third: raw.
        let (bytes, gz) = match case % 3 {
            0 => (gzip(&mutate(&mut rng, seed, 16)), true),
            1 => (mutate(&mut rng, &gzip(seed), 0), true),
            _ => (mutate(&mut rng, seed, 16), false),
        };
        let p = Path::new(if gz {
            "fuzz-idx3-ubyte.gz"
        } else {
            "fuzz-idx3-ubyte"
        });
        let input = bytes.len();
        let (r, largest) = run(|| -> longtail_data::Result<_> {
            let raw = maybe_gunzip(p, bytes.clone())?;
            let a = parse_idx(p, &raw)?;
            let payload = a.data.len();
            let inner = a.dims.iter().try_fold(1usize, |x, &d| x.checked_mul(d));
            // As images with valid labels, and as labels with valid images.
            let as_images = dataset_from_idx(
                p,
                a.clone(),
                Path::new("l"),
                valid_labels.clone(),
                10,
                vec![],
            );
            let as_labels = dataset_from_idx(
                Path::new("i"),
                valid_images.clone(),
                p,
                a.clone(),
                10,
                vec![],
            );
            Ok((
                raw.len(),
                payload,
                inner,
                as_images.map(|d| d.len()),
                as_labels.map(|d| d.len()),
            ))
        });
        let limit = if gz { 1032 * input } else { input };
        match r {
            None => failures.push(format!("case {case}: panic on {input} bytes (gz: {gz})")),
            Some(Ok((raw, payload, inner, as_images, as_labels))) => {
                if raw > limit || payload > raw || inner != Some(payload) {
                    failures.push(format!(
                        "case {case}: {payload} of {raw} bytes from {input} (dims product {inner:?})"
                    ));
                }
                for n in [as_images, as_labels].into_iter().flatten() {
                    if n != 5 {
                        failures.push(format!("case {case}: a data set of {n} images"));
                    }
                }
            }
            Some(Err(_)) => {}
        }
        if largest > 4 * limit + SLACK {
            failures.push(format!(
                "case {case}: allocated {largest} bytes for {input} input bytes (gz: {gz})"
            ));
        }
    }
    report("IDX", failures);
}

// ---- Image lists ----------------------------------------------------------------------------

/// Text tokens spliced into image lists: numbers at and beyond the label bound, signs, odd
/// whitespace, separators.
const TOKENS: [&str; 14] = [
    " 4000000000",
    " 4294967295",
    " 18446744073709551616",
    " 1048575",
    " 1048576",
    " -1",
    " +3",
    " 0x10",
    "\t",
    "\r\n",
    "\n\n",
    "\u{a0}7",
    " é.png 1",
    "\0",
];

#[test]
fn image_lists_never_panic_and_stay_bounded() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    std::fs::create_dir_all(root.join("imgs/a b")).unwrap();
    for k in 0..3 {
        image::RgbImage::from_fn(3, 2, |x, y| image::Rgb([k * 50, x as u8, y as u8]))
            .save(root.join(format!("imgs/a b/{k}.png")))
            .unwrap();
    }
    let seed = b"imgs/a b/0.png 0\nimgs/a b/1.png 1\n\nimgs/a b/2.png 2\n  imgs/a b/0.png  1  \n";
    std::fs::write(root.join("test.txt"), "imgs/a b/2.png 0\n").unwrap();
    let list = root.join("train.txt");
    let mut rng = rng(4);
    let mut failures = vec![];
    for case in 0..cases() {
        let mut bytes = mutate(&mut rng, seed, 0);
        if case % 2 == 0 {
            let at = rng.random_range(0..=bytes.len());
            let t = TOKENS[rng.random_range(0..TOKENS.len())];
            bytes.splice(at..at, t.bytes());
        }
        std::fs::write(&list, &bytes).unwrap();
        let input = bytes.len();
        let (r, largest) = run(|| {
            ImageList::read(&list, root).map(|l| {
                let c = l.num_classes();
                (l.entries.len(), c, l.first_missing_class(c))
            })
        });
        let lines = bytes.split(|&b| b == b'\n').count();
        match r {
            None => failures.push(format!("case {case}: panic on {bytes:?}")),
            Some(Ok((n, classes, missing))) => {
                if n == 0 || n > lines || classes > MAX_LABEL as usize + 1 {
                    failures.push(format!(
                        "case {case}: {n} entries, {classes} classes from {lines} lines"
                    ));
                }
                if missing.is_some_and(|m| m >= classes) {
                    failures.push(format!("case {case}: missing class {missing:?}"));
                }
            }
            Some(Err(_)) => {}
        }
        if largest > 64 * input + SLACK {
            failures.push(format!(
                "case {case}: allocated {largest} bytes for {input} input bytes"
            ));
        }
        // Every fifth case also goes through load_splits (decoding the tiny PNGs it names).
        if case % 5 == 0 {
            let spec = DataSpec {
                name: DatasetName::ImageList,
                data_dir: Some(root.to_path_buf()),
                ..DataSpec::default()
            };
            let (r, largest) = run(|| load_splits_with(&spec, LoadOptions::default()));
            match r {
                None => failures.push(format!("case {case}: load_splits panicked on {bytes:?}")),
                Some(Ok(s)) if s.train.len() > lines || s.train.num_classes > lines => failures
                    .push(format!(
                        "case {case}: {} images of {} classes from {lines} lines",
                        s.train.len(),
                        s.train.num_classes
                    )),
                _ => {}
            }
            // The named PNGs are tiny and decode at their own size: 192 KiB (a 256² RGB image)
            // per line is far above what any of them needs.
            if largest > 64 * input + (256 * 256 * 3) * (lines + 1) + SLACK {
                failures.push(format!(
                    "case {case}: load_splits allocated {largest} bytes for {input} input bytes"
                ));
            }
        }
    }
    report("image lists", failures);
}
