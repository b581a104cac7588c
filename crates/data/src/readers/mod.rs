//! Readers for the on-disk formats: CIFAR binary, IDX (MNIST / Fashion-MNIST) and image lists;
//! with the `hub` feature, CIFAR from the Hugging Face Hub's parquet files.

pub mod cifar;
#[cfg(feature = "hub")]
pub mod hub;
pub mod idx;
pub mod image_list;

use std::path::{Path, PathBuf};

use crate::error::{DataError, Result};

/// Reads a whole file, naming the path in the error.
pub(crate) fn read_file(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| DataError::io(path, e))
}

/// Fails with [`DataError::MissingDir`] unless `dir` is a directory.
pub(crate) fn check_dir(dir: &Path) -> Result<()> {
    if dir.is_dir() {
        Ok(())
    } else {
        Err(DataError::MissingDir {
            path: dir.to_path_buf(),
        })
    }
}

/// The first of `names` that exists in `dir`, else [`DataError::MissingFile`] for the first name.
pub(crate) fn find_file(dir: &Path, names: &[String], hint: &str) -> Result<PathBuf> {
    for n in names {
        let p = dir.join(n);
        if p.is_file() {
            return Ok(p);
        }
    }
    Err(DataError::MissingFile {
        path: dir.join(&names[0]),
        hint: hint.into(),
    })
}
