//! CIFAR-10 and CIFAR-100 binary files (the "binary version" on the CIFAR page).
//!
//! CIFAR-10 (`data_batch_1..5.bin`, `test_batch.bin`): records of 1 label byte + 3072 pixel bytes,
//! the red, green and blue 32×32 planes in row-major order. CIFAR-100 (`train.bin`, `test.bin`):
//! coarse label byte, fine label byte, then the same 3072 bytes. Pixels are returned HWC.

use std::path::{Path, PathBuf};

use super::{check_dir, find_file, read_file};
use crate::dataset::Dataset;
use crate::error::{DataError, Result};

const PIXELS: usize = 32 * 32 * 3;

/// CIFAR-10 class names (`batches.meta.txt`).
pub const CIFAR10_CLASSES: [&str; 10] = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
];

/// Which CIFAR binary layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CifarKind {
    /// 10 classes, 1 label byte per record.
    Cifar10,
    /// 100 fine classes, a coarse then a fine label byte per record (the fine label is used).
    Cifar100,
}

/// How many records each CIFAR binary file must hold.
///
/// The published files hold exactly 10,000 records each (CIFAR-10's `data_batch_1..5.bin` and
/// `test_batch.bin`, CIFAR-100's `test.bin`) or 50,000 (CIFAR-100's `train.bin`); a file that is
/// cut short, over-long or from another data set is an error ([`DataError::RecordCount`]) rather
/// than a silently smaller or larger data set. [`load_cifar`], and so `load_splits` and the CLI,
/// always use [`CifarRecords::Official`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CifarRecords {
    /// Exactly the published counts ([`CifarKind::official_records`]). The default.
    #[default]
    Official,
    /// Any whole number of records, at least one. Only for tests and tools that build tiny or
    /// hand-cut CIFAR-format files on purpose (through [`load_cifar_with`] or
    /// `load::load_splits_with`); nothing in the CLI sets it.
    AnyWhole,
}

impl CifarKind {
    fn label_bytes(self) -> usize {
        match self {
            CifarKind::Cifar10 => 1,
            CifarKind::Cifar100 => 2,
        }
    }
    /// Bytes per record: the label byte(s) and 3072 pixel bytes (3073 for CIFAR-10, 3074 for
    /// CIFAR-100).
    pub fn record_bytes(self) -> usize {
        self.label_bytes() + PIXELS
    }
    /// Number of classes.
    pub fn num_classes(self) -> usize {
        match self {
            CifarKind::Cifar10 => 10,
            CifarKind::Cifar100 => 100,
        }
    }
    /// The records the published file `file_name` holds: 50,000 for CIFAR-100's `train.bin`,
    /// 10,000 for every other file (CIFAR-10's five batches and test batch, CIFAR-100's `test.bin`).
    pub fn official_records(self, file_name: &str) -> usize {
        match (self, file_name) {
            (CifarKind::Cifar100, "train.bin") => 50_000,
            _ => 10_000,
        }
    }
    fn format_name(self) -> &'static str {
        match self {
            CifarKind::Cifar10 => "CIFAR-10",
            CifarKind::Cifar100 => "CIFAR-100",
        }
    }
}

/// The [`DataError::RecordCount`] of a CIFAR file of `len` bytes that should hold `expected`
/// records, or `None` if it does.
fn record_count_error(
    path: &Path,
    len: u64,
    kind: CifarKind,
    expected: usize,
) -> Option<DataError> {
    let rec = kind.record_bytes() as u64;
    if (expected as u64).checked_mul(rec) == Some(len) {
        return None;
    }
    Some(DataError::RecordCount {
        path: path.to_path_buf(),
        found: usize::try_from(len / rec).unwrap_or(usize::MAX),
        stray_bytes: (len % rec) as usize,
        record_bytes: rec as usize,
        expected,
        rule: format!(
            "as in the {} binary version's {} (is the file cut short, over-long or of another data set?)",
            kind.format_name(),
            file_name(path)
        ),
    })
}

/// Decodes the bytes of one CIFAR binary file into HWC pixels and labels; `path` names the
/// source in errors.
///
/// With `expected_records = Some(n)` the bytes must hold exactly `n` records
/// ([`DataError::RecordCount`] otherwise); with `None` any whole number of records, at least one,
/// is accepted. Allocates at most about `bytes.len()` bytes.
pub fn parse_cifar(
    path: &Path,
    bytes: &[u8],
    kind: CifarKind,
    expected_records: Option<usize>,
) -> Result<(Vec<u8>, Vec<u32>)> {
    let rec = kind.record_bytes();
    if let Some(e) =
        expected_records.and_then(|n| record_count_error(path, bytes.len() as u64, kind, n))
    {
        return Err(e);
    }
    if bytes.is_empty() {
        return Err(DataError::Empty {
            what: path.display().to_string(),
        });
    }
    if !bytes.len().is_multiple_of(rec) {
        return Err(DataError::Truncated {
            path: path.to_path_buf(),
            index: bytes.len() / rec,
            got: bytes.len() % rec,
            want: rec,
        });
    }
    let n = bytes.len() / rec;
    let mut images = vec![0u8; n * PIXELS];
    let mut labels = Vec::with_capacity(n);
    for (i, r) in bytes.chunks_exact(rec).enumerate() {
        if kind == CifarKind::Cifar100 && r[0] >= 20 {
            return Err(DataError::LabelOutOfRange {
                source_name: format!("{} (coarse label)", path.display()),
                index: i,
                label: r[0] as u32,
                num_classes: 20,
            });
        }
        let label = r[kind.label_bytes() - 1] as u32;
        if label as usize >= kind.num_classes() {
            return Err(DataError::LabelOutOfRange {
                source_name: path.display().to_string(),
                index: i,
                label,
                num_classes: kind.num_classes(),
            });
        }
        labels.push(label);
        let planes = &r[kind.label_bytes()..];
        let out = &mut images[i * PIXELS..(i + 1) * PIXELS];
        for p in 0..1024 {
            out[3 * p] = planes[p];
            out[3 * p + 1] = planes[1024 + p];
            out[3 * p + 2] = planes[2048 + p];
        }
    }
    Ok((images, labels))
}

/// Decodes one CIFAR binary file holding any whole number of records (at least one) into HWC
/// pixels and labels. [`load_cifar`] also checks each file's record count; see
/// [`read_cifar_file_exact`].
pub fn read_cifar_file(path: &Path, kind: CifarKind) -> Result<(Vec<u8>, Vec<u32>)> {
    parse_cifar(path, &read_file(path)?, kind, None)
}

/// [`read_cifar_file`] for a file that must hold exactly `records` records: a file of any other
/// size is a [`DataError::RecordCount`], found from its size before anything is read.
pub fn read_cifar_file_exact(
    path: &Path,
    kind: CifarKind,
    records: usize,
) -> Result<(Vec<u8>, Vec<u32>)> {
    check_file_size(path, kind, records)?;
    parse_cifar(path, &read_file(path)?, kind, Some(records))
}

/// Fails with [`DataError::RecordCount`] unless the file at `path` is `records` records long.
fn check_file_size(path: &Path, kind: CifarKind, records: usize) -> Result<()> {
    let len = std::fs::metadata(path)
        .map_err(|e| DataError::io(path, e))?
        .len();
    match record_count_error(path, len, kind, records) {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// The directory holding the `.bin` files: `dir` itself, or the tarball's
/// `cifar-10-batches-bin` / `cifar-100-binary` folder inside it.
fn resolve_dir(dir: &Path, kind: CifarKind) -> Result<PathBuf> {
    check_dir(dir)?;
    let (probe, sub) = match kind {
        CifarKind::Cifar10 => ("data_batch_1.bin", "cifar-10-batches-bin"),
        CifarKind::Cifar100 => ("train.bin", "cifar-100-binary"),
    };
    if !dir.join(probe).is_file() && dir.join(sub).join(probe).is_file() {
        Ok(dir.join(sub))
    } else {
        Ok(dir.to_path_buf())
    }
}

/// Decodes `paths` in order and concatenates them; `records` says what each must hold.
fn read_many(
    paths: &[PathBuf],
    kind: CifarKind,
    records: CifarRecords,
) -> Result<(Vec<u8>, Vec<u32>)> {
    let mut images = Vec::new();
    let mut labels = Vec::new();
    for p in paths {
        let (i, l) = match records {
            CifarRecords::Official => {
                read_cifar_file_exact(p, kind, kind.official_records(&file_name(p)))?
            }
            CifarRecords::AnyWhole => read_cifar_file(p, kind)?,
        };
        images.extend(i);
        labels.extend(l);
    }
    Ok((images, labels))
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn class_names(dir: &Path, kind: CifarKind) -> Vec<String> {
    let file = match kind {
        CifarKind::Cifar10 => "batches.meta.txt",
        CifarKind::Cifar100 => "fine_label_names.txt",
    };
    let from_file: Vec<String> = std::fs::read_to_string(dir.join(file))
        .map(|s| {
            s.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(String::from)
                .collect()
        })
        .unwrap_or_default();
    if from_file.len() == kind.num_classes() {
        from_file
    } else if kind == CifarKind::Cifar10 {
        CIFAR10_CLASSES.iter().map(|s| s.to_string()).collect()
    } else {
        Vec::new()
    }
}

/// Reads the full CIFAR train and test splits from `dir` (in file order), each file holding
/// exactly its published number of records ([`CifarRecords::Official`]).
pub fn load_cifar(dir: &Path, kind: CifarKind) -> Result<(Dataset, Dataset)> {
    load_cifar_with(dir, kind, CifarRecords::Official)
}

/// [`load_cifar`] with an explicit record-count rule (tests use [`CifarRecords::AnyWhole`] for
/// tiny files).
///
/// Every file is looked for first, then (with [`CifarRecords::Official`]) every file's size is
/// checked, so a missing, cut or over-long file fails before anything is read.
pub fn load_cifar_with(
    dir: &Path,
    kind: CifarKind,
    records: CifarRecords,
) -> Result<(Dataset, Dataset)> {
    let dir = resolve_dir(dir, kind)?;
    let (train_files, test_files, hint): (&[&str], &[&str], &str) = match kind {
        CifarKind::Cifar10 => (
            &[
                "data_batch_1.bin",
                "data_batch_2.bin",
                "data_batch_3.bin",
                "data_batch_4.bin",
                "data_batch_5.bin",
            ],
            &["test_batch.bin"],
            "CIFAR-10 binary version, cifar-10-binary.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html",
        ),
        CifarKind::Cifar100 => (
            &["train.bin"],
            &["test.bin"],
            "CIFAR-100 binary version, cifar-100-binary.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html",
        ),
    };
    let find = |files: &[&str]| -> Result<Vec<PathBuf>> {
        files
            .iter()
            .map(|f| find_file(&dir, &[f.to_string()], hint))
            .collect()
    };
    let (train_paths, test_paths) = (find(train_files)?, find(test_files)?);
    if records == CifarRecords::Official {
        for p in train_paths.iter().chain(&test_paths) {
            check_file_size(p, kind, kind.official_records(&file_name(p)))?;
        }
    }
    let names = class_names(&dir, kind);
    let c = kind.num_classes();
    let (ti, tl) = read_many(&train_paths, kind, records)?;
    let train = Dataset::new("cifar train", ti, tl, (32, 32, 3), c, names.clone(), vec![])?;
    let (vi, vl) = read_many(&test_paths, kind, records)?;
    let test = Dataset::new("cifar test", vi, vl, (32, 32, 3), c, names, vec![])?;
    Ok((train, test))
}
