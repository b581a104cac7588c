//! Reading and writing safetensors files defensively: every file from elsewhere is checked
//! before any of it is used, and every output directory appears complete or not at all.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};

use crate::error::{HubError, Result};

/// The tensors and string metadata of a safetensors file.
#[derive(Debug)]
pub struct TensorFile {
    /// Tensors by name.
    pub tensors: HashMap<String, Tensor>,
    /// `__metadata__` (empty when absent).
    pub metadata: BTreeMap<String, String>,
}

/// Reads a safetensors file and checks it: a header that parses, offsets and shapes that agree
/// with each other and with the file length (safetensors' own validation), and finite values in
/// every float tensor. Any failure is a [`HubError::Corrupt`] or [`HubError::NonFinite`] naming
/// the file.
pub fn read_checked(path: &Path, device: &Device) -> Result<TensorFile> {
    let bytes = std::fs::read(path).map_err(|e| HubError::io(path, e))?;
    let corrupt = |reason: String| HubError::Corrupt {
        path: path.to_path_buf(),
        reason,
    };
    if bytes.len() < 8 {
        return Err(corrupt(format!(
            "{} bytes, shorter than the 8-byte header length",
            bytes.len()
        )));
    }
    let header_len = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes"));
    if header_len > (bytes.len() - 8) as u64 {
        return Err(corrupt(format!(
            "header claims {header_len} bytes but the file has only {} after the length (truncated?)",
            bytes.len() - 8
        )));
    }
    // Validates the JSON header, dtypes, that each tensor's byte range matches its shape, and
    // that the ranges tile the data section exactly (no gap, no overlap, no missing bytes).
    let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| corrupt(e.to_string()))?;
    let (_, header) =
        safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| corrupt(e.to_string()))?;
    let metadata: BTreeMap<String, String> = header
        .metadata()
        .clone()
        .map(|m| m.into_iter().collect())
        .unwrap_or_default();
    drop(st);
    let tensors = candle_core::safetensors::load_buffer(&bytes, device)
        .map_err(|e| corrupt(e.to_string().replace('\n', " ")))?;
    for (name, t) in &tensors {
        let count = non_finite(t)?;
        if count > 0 {
            return Err(HubError::NonFinite {
                path: path.to_path_buf(),
                name: name.clone(),
                count,
            });
        }
    }
    Ok(TensorFile { tensors, metadata })
}

/// Number of NaN / ±inf values in a float tensor (0 for integer tensors).
pub fn non_finite(t: &Tensor) -> Result<usize> {
    if !t.dtype().is_float() {
        return Ok(0);
    }
    Ok(t.to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?
        .iter()
        .filter(|v| !v.is_finite())
        .count())
}

/// Serialises tensors and metadata to safetensors bytes, byte-reproducibly (the engine's
/// [`longtail_train::checkpoint::to_bytes`]: metadata keys sorted, tensors in a fixed order),
/// so exporting the same run twice gives identical files.
pub fn to_bytes(
    tensors: &BTreeMap<String, Tensor>,
    metadata: &BTreeMap<String, String>,
) -> Result<Vec<u8>> {
    longtail_train::checkpoint::to_bytes(tensors.iter().map(|(k, v)| (k.as_str(), v)), metadata)
        .map_err(|e| HubError::Corrupt {
            path: PathBuf::from("<memory>"),
            reason: format!("cannot serialise: {e}"),
        })
}

/// Writes `files` (name → bytes) as the directory `out`, atomically: they are written and
/// fsynced into a hidden sibling directory which is then renamed to `out`. If `out` exists and
/// is not empty, nothing is written ([`HubError::OutputExists`]); if anything fails, the
/// temporary directory is removed and `out` is untouched.
pub fn write_dir_atomic(out: &Path, files: &[(&str, Vec<u8>)]) -> Result<()> {
    if out.exists() {
        let empty = out.is_dir()
            && std::fs::read_dir(out)
                .map_err(|e| HubError::io(out, e))?
                .next()
                .is_none();
        if !empty {
            return Err(HubError::OutputExists {
                path: out.to_path_buf(),
            });
        }
    }
    let parent = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(|e| HubError::io(parent, e))?;
    let name = out
        .file_name()
        .ok_or_else(|| HubError::NotFound {
            path: out.to_path_buf(),
            what: "not a directory name".into(),
        })?
        .to_string_lossy()
        .into_owned();
    let tmp = parent.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| -> std::io::Result<()> {
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp)?;
        }
        std::fs::create_dir(&tmp)?;
        for (file, bytes) in files {
            let p = tmp.join(file);
            let mut f = std::fs::File::create(&p)?;
            std::io::Write::write_all(&mut f, bytes)?;
            f.sync_all()?;
        }
        if out.exists() {
            // Empty (checked above): replace it.
            std::fs::remove_dir(out)?;
        }
        std::fs::rename(&tmp, out)?;
        if let Ok(d) = std::fs::File::open(parent) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    result.map_err(|e| {
        let _ = std::fs::remove_dir_all(&tmp);
        HubError::io(out, e)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_dir_refuses_a_non_empty_target_and_fills_an_empty_one() {
        let d = tempfile::tempdir().unwrap();
        let out = d.path().join("m");
        std::fs::create_dir(&out).unwrap();
        write_dir_atomic(&out, &[("a.txt", b"1".to_vec())]).unwrap();
        assert_eq!(std::fs::read(out.join("a.txt")).unwrap(), b"1");
        let e = write_dir_atomic(&out, &[("a.txt", b"2".to_vec())]).unwrap_err();
        assert!(matches!(e, HubError::OutputExists { .. }), "{e}");
        assert_eq!(std::fs::read(out.join("a.txt")).unwrap(), b"1");
        // No temporary directory left behind.
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 1);
    }
}
