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

impl CifarKind {
    fn label_bytes(self) -> usize {
        match self {
            CifarKind::Cifar10 => 1,
            CifarKind::Cifar100 => 2,
        }
    }
    /// Number of classes.
    pub fn num_classes(self) -> usize {
        match self {
            CifarKind::Cifar10 => 10,
            CifarKind::Cifar100 => 100,
        }
    }
}

/// Decodes one CIFAR binary file into HWC pixels and labels.
pub fn read_cifar_file(path: &Path, kind: CifarKind) -> Result<(Vec<u8>, Vec<u32>)> {
    let bytes = read_file(path)?;
    let rec = kind.label_bytes() + PIXELS;
    if bytes.is_empty() {
        return Err(DataError::Empty {
            what: path.display().to_string(),
        });
    }
    if bytes.len() % rec != 0 {
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

fn read_many(
    dir: &Path,
    files: &[&str],
    kind: CifarKind,
    hint: &str,
) -> Result<(Vec<u8>, Vec<u32>)> {
    let mut images = Vec::new();
    let mut labels = Vec::new();
    for f in files {
        let p = find_file(dir, &[f.to_string()], hint)?;
        let (i, l) = read_cifar_file(&p, kind)?;
        images.extend(i);
        labels.extend(l);
    }
    Ok((images, labels))
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

/// Reads the full CIFAR train and test splits from `dir` (in file order).
pub fn load_cifar(dir: &Path, kind: CifarKind) -> Result<(Dataset, Dataset)> {
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
    let names = class_names(&dir, kind);
    let c = kind.num_classes();
    let (ti, tl) = read_many(&dir, train_files, kind, hint)?;
    let train = Dataset::new("cifar train", ti, tl, (32, 32, 3), c, names.clone(), vec![])?;
    let (vi, vl) = read_many(&dir, test_files, kind, hint)?;
    let test = Dataset::new("cifar test", vi, vl, (32, 32, 3), c, names, vec![])?;
    Ok((train, test))
}
