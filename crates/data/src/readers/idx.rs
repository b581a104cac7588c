//! IDX files (MNIST, Fashion-MNIST), raw or gzipped.
//!
//! Layout: two zero bytes, an element-type byte (0x08 = unsigned byte, the only type images and
//! labels use), the number of dimensions, then each dimension as a big-endian u32, then the data.
//! Gzip is detected from the content (`1f 8b`), not the file name.

use std::io::Read;
use std::path::{Path, PathBuf};

use super::{check_dir, find_file, read_file};
use crate::dataset::Dataset;
use crate::error::{DataError, Result};

/// Fashion-MNIST class names, label order.
pub const FASHION_MNIST_CLASSES: [&str; 10] = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
];

/// Where the Debian package `dataset-fashion-mnist` installs the files.
pub const DEBIAN_FASHION_MNIST_DIR: &str = "/usr/share/datasets/fashion-mnist";

/// A decoded IDX array of unsigned bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdxArray {
    /// The dimensions, outermost first.
    pub dims: Vec<usize>,
    /// The elements, row-major.
    pub data: Vec<u8>,
}

/// Deflate's largest compression ratio (zlib's FAQ: 1032:1), which bounds what a gzip file of
/// `n` bytes can decompress to.
const MAX_DEFLATE_RATIO: u64 = 1032;

/// Decompresses `bytes` if they are gzip (every member, as `gunzip` does), else returns them.
///
/// The output is bounded by what deflate can encode in `bytes.len()` bytes (1032 per byte), so a
/// corrupt or hostile file cannot make it allocate more.
pub fn maybe_gunzip(path: &Path, bytes: Vec<u8>) -> Result<Vec<u8>> {
    if bytes.starts_with(&[0x1f, 0x8b]) {
        let limit = (bytes.len() as u64).saturating_mul(MAX_DEFLATE_RATIO);
        let mut out = Vec::new();
        flate2::read::MultiGzDecoder::new(&bytes[..])
            .take(limit.saturating_add(1))
            .read_to_end(&mut out)
            .map_err(|e| DataError::io(path, e))?;
        if out.len() as u64 > limit {
            return Err(DataError::BadFormat {
                path: path.to_path_buf(),
                reason: format!(
                    "gzip data of {} bytes decompresses to more than {limit} bytes, more than deflate can encode",
                    bytes.len()
                ),
            });
        }
        Ok(out)
    } else {
        Ok(bytes)
    }
}

/// Parses IDX bytes (already decompressed); `path` names the source in errors.
pub fn parse_idx(path: &Path, bytes: &[u8]) -> Result<IdxArray> {
    if bytes.len() < 4 {
        return Err(DataError::Truncated {
            path: path.to_path_buf(),
            index: 0,
            got: bytes.len(),
            want: 4,
        });
    }
    let magic = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
    let known_type = matches!(bytes[2], 0x08 | 0x09 | 0x0b | 0x0c | 0x0d | 0x0e);
    if bytes[0] != 0 || bytes[1] != 0 || !known_type || bytes[3] == 0 {
        return Err(DataError::BadMagic {
            path: path.to_path_buf(),
            got: magic,
            want: "0x0000TTNN: an IDX type byte TT and 1 to 4 dimensions NN".into(),
        });
    }
    if bytes[2] != 0x08 {
        return Err(DataError::BadFormat {
            path: path.to_path_buf(),
            reason: format!("element type {:#04x} is not unsigned byte (0x08)", bytes[2]),
        });
    }
    let nd = bytes[3] as usize;
    let header = 4 + 4 * nd;
    if bytes.len() < header {
        return Err(DataError::Truncated {
            path: path.to_path_buf(),
            index: 0,
            got: bytes.len(),
            want: header,
        });
    }
    let dims: Vec<usize> = bytes[4..header]
        .chunks_exact(4)
        .map(|d| u32::from_be_bytes([d[0], d[1], d[2], d[3]]) as usize)
        .collect();
    let overflow = || DataError::BadFormat {
        path: path.to_path_buf(),
        reason: format!("dimensions {dims:?} overflow"),
    };
    let record = dims[1..]
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(overflow)?;
    let total = dims[0].checked_mul(record).ok_or_else(overflow)?;
    let data = &bytes[header..];
    if data.len() != total {
        if record == 0 {
            return Err(DataError::BadFormat {
                path: path.to_path_buf(),
                reason: format!(
                    "dimensions {dims:?} hold no data, but {} bytes follow the header",
                    data.len()
                ),
            });
        }
        let (found, stray) = (data.len() / record, data.len() % record);
        // Ends inside an announced record: say which.
        if found < dims[0] && stray > 0 {
            return Err(DataError::Truncated {
                path: path.to_path_buf(),
                index: found,
                got: stray,
                want: record,
            });
        }
        return Err(DataError::RecordCount {
            path: path.to_path_buf(),
            found,
            stray_bytes: stray,
            record_bytes: record,
            expected: dims[0],
            rule: format!("as its IDX header announces (dimensions {dims:?})"),
        });
    }
    Ok(IdxArray {
        dims,
        data: data.to_vec(),
    })
}

/// Reads an IDX file, gzipped or raw.
pub fn read_idx(path: &Path) -> Result<IdxArray> {
    let bytes = maybe_gunzip(path, read_file(path)?)?;
    parse_idx(path, &bytes)
}

/// Encodes a u8 IDX array (the inverse of [`parse_idx`]).
pub fn encode_idx(dims: &[usize], data: &[u8]) -> Vec<u8> {
    let mut out = vec![0, 0, 0x08, dims.len() as u8];
    for &d in dims {
        out.extend_from_slice(&(d as u32).to_be_bytes());
    }
    out.extend_from_slice(data);
    out
}

/// Builds a data set from an images array (`[N, H, W]` or `[N, H, W, C]`) and a labels array (`[N]`).
pub fn dataset_from_idx(
    images_path: &Path,
    images: IdxArray,
    labels_path: &Path,
    labels: IdxArray,
    num_classes: usize,
    class_names: Vec<String>,
) -> Result<Dataset> {
    let (h, w, c) = match images.dims[..] {
        [_, h, w] => (h, w, 1),
        [_, h, w, c] => (h, w, c),
        _ => {
            return Err(DataError::BadFormat {
                path: images_path.to_path_buf(),
                reason: format!("images need 3 or 4 dimensions, found {:?}", images.dims),
            })
        }
    };
    if labels.dims.len() != 1 {
        return Err(DataError::BadFormat {
            path: labels_path.to_path_buf(),
            reason: format!("labels need 1 dimension, found {:?}", labels.dims),
        });
    }
    if images.dims[0] != labels.dims[0] {
        return Err(DataError::CountMismatch {
            what: format!(
                "images file {} and labels file {}",
                images_path.display(),
                labels_path.display()
            ),
            images: images.dims[0],
            labels: labels.dims[0],
        });
    }
    if images.dims[0] == 0 {
        return Err(DataError::Empty {
            what: format!("images file {}", images_path.display()),
        });
    }
    let labels: Vec<u32> = labels.data.iter().map(|&l| l as u32).collect();
    Dataset::new(
        &labels_path.display().to_string(),
        images.data,
        labels,
        (h, w, c),
        num_classes,
        class_names,
        vec![],
    )
}

/// The images and labels files of split `prefix` (`train` or `t10k`) in `dir`, raw or `.gz`.
pub fn idx_paths(dir: &Path, prefix: &str) -> Result<(PathBuf, PathBuf)> {
    let hint = "Fashion-MNIST IDX files: `apt-get install dataset-fashion-mnist` puts them in /usr/share/datasets/fashion-mnist";
    let names = |kind: &str, d: u8| {
        vec![
            format!("{prefix}-{kind}-idx{d}-ubyte"),
            format!("{prefix}-{kind}-idx{d}-ubyte.gz"),
            format!("{prefix}-{kind}.idx{d}-ubyte"),
            format!("{prefix}-{kind}.idx{d}-ubyte.gz"),
        ]
    };
    Ok((
        find_file(dir, &names("images", 3), hint)?,
        find_file(dir, &names("labels", 1), hint)?,
    ))
}

/// Reads the Fashion-MNIST (or MNIST) train and test splits from an IDX directory.
pub fn load_idx_dir(
    dir: &Path,
    num_classes: usize,
    class_names: Vec<String>,
) -> Result<(Dataset, Dataset)> {
    check_dir(dir)?;
    let load = |prefix: &str| -> Result<Dataset> {
        let (ip, lp) = idx_paths(dir, prefix)?;
        dataset_from_idx(
            &ip,
            read_idx(&ip)?,
            &lp,
            read_idx(&lp)?,
            num_classes,
            class_names.clone(),
        )
    };
    Ok((load("train")?, load("t10k")?))
}
