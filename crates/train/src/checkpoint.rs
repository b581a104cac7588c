//! Atomic checkpoints: weights, optimizer state and run metadata in one safetensors file.
//!
//! Layout: every `VarMap` entry under its own name (official state-dict keys, BN running
//! statistics included), the optimizer's momentum buffers under `optimizer.momentum.<name>`,
//! and string metadata (`format`, `epoch`, plus whatever the caller adds: the run config, the
//! method, class counts and names). Eval tools ignore the `optimizer.` entries.
//!
//! Files are written to a temporary name in the same directory, fsynced, then renamed over the
//! target, so a crash at any moment leaves either the previous checkpoint or the new one.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use candle_nn::VarMap;

use crate::TrainError;

/// Format tag stored in every checkpoint's metadata.
pub const FORMAT: &str = "longtail-checkpoint/1";
/// Prefix of the optimizer's momentum buffers inside a checkpoint.
pub const MOMENTUM_PREFIX: &str = "optimizer.momentum.";

/// A checkpoint read back from disk.
#[derive(Debug)]
pub struct Checkpoint {
    /// Model tensors (weights and BN statistics) by name.
    pub tensors: HashMap<String, Tensor>,
    /// Momentum buffers by parameter name (empty in an exported model).
    pub momentum: BTreeMap<String, Tensor>,
    /// String metadata.
    pub metadata: BTreeMap<String, String>,
}

impl Checkpoint {
    /// The completed 1-based epoch recorded in the metadata (0 if absent).
    pub fn epoch(&self) -> Result<usize, TrainError> {
        match self.metadata.get("epoch") {
            None => Ok(0),
            Some(e) => e.parse().map_err(|_| {
                TrainError::Checkpoint(format!("metadata `epoch` is not a number: `{e}`"))
            }),
        }
    }

    /// Copies the model tensors into `varmap` by name; every entry of the map must be present with
    /// the same shape, and every value finite.
    pub fn restore_into(&self, varmap: &VarMap) -> Result<(), TrainError> {
        let data = varmap.data().lock().expect("varmap lock poisoned");
        let mut missing = vec![];
        for (name, var) in data.iter() {
            let Some(t) = self.tensors.get(name) else {
                missing.push(name.clone());
                continue;
            };
            if t.dims() != var.dims() {
                return Err(TrainError::Checkpoint(format!(
                    "`{name}` has shape {:?} in the checkpoint but {:?} in the model (a checkpoint for another architecture or class count?)",
                    t.dims(),
                    var.dims()
                )));
            }
            var.set(&t.to_dtype(var.dtype())?.to_device(var.device())?)?;
        }
        if !missing.is_empty() {
            missing.sort();
            let shown = missing
                .iter()
                .take(5)
                .cloned()
                .collect::<Vec<_>>()
                .join(", ");
            return Err(TrainError::Checkpoint(format!(
                "{} model tensors are missing from the checkpoint (a checkpoint for another model?): {shown}{}",
                missing.len(),
                if missing.len() > 5 { ", …" } else { "" }
            )));
        }
        Ok(())
    }
}

/// Writes `varmap` (+ optional momentum buffers) and `metadata` atomically to `path`.
///
/// The bytes depend only on the tensors and the metadata ([`to_bytes`]): saving the same state
/// twice gives identical files.
pub fn save(
    path: &Path,
    varmap: &VarMap,
    momentum: Option<&BTreeMap<String, Tensor>>,
    metadata: &BTreeMap<String, String>,
) -> Result<(), TrainError> {
    let mut tensors: Vec<(String, Tensor)> = {
        let data = varmap.data().lock().expect("varmap lock poisoned");
        data.iter()
            .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
            .collect()
    };
    if let Some(m) = momentum {
        tensors.extend(
            m.iter()
                .map(|(k, v)| (format!("{MOMENTUM_PREFIX}{k}"), v.clone())),
        );
    }
    let mut meta = metadata.clone();
    meta.insert("format".into(), FORMAT.into());
    let bytes = to_bytes(tensors.iter().map(|(k, v)| (k.as_str(), v)), &meta)?;
    write_atomic(path, &bytes)
}

/// Serialises tensors and string metadata to safetensors bytes, byte-reproducibly.
///
/// `safetensors::serialize` writes the `__metadata__` map in `HashMap` order, which differs
/// from one process (one map) to the next; this writes the same layout with the order fixed.
/// The file is: the header length as a little-endian u64; the JSON header, `__metadata__` first
/// with its keys sorted, then each tensor's `dtype`, `shape` and `data_offsets` in storage order,
/// padded with spaces to a multiple of 8 bytes; then the tensors' little-endian data. Storage
/// order is the safetensors crate's own: by decreasing dtype alignment, then by name, so the
/// data section is byte-for-byte what `safetensors::serialize` writes. An empty `metadata` writes
/// no `__metadata__` entry. Fails on a duplicate tensor name.
pub fn to_bytes<'a>(
    tensors: impl IntoIterator<Item = (&'a str, &'a Tensor)>,
    metadata: &BTreeMap<String, String>,
) -> Result<Vec<u8>, TrainError> {
    use safetensors::tensor::{Dtype, TensorInfo, View};
    let mut tensors: Vec<(&str, &Tensor, Dtype)> = tensors
        .into_iter()
        .map(|(name, t)| (name, t, View::dtype(&t)))
        .collect();
    tensors.sort_by(|a, b| b.2.cmp(&a.2).then(a.0.cmp(b.0)));
    if let Some(w) = tensors.windows(2).find(|w| w[0].0 == w[1].0) {
        return Err(TrainError::Checkpoint(format!(
            "cannot serialize: two tensors are named `{}`",
            w[0].0
        )));
    }
    let mut header = String::from("{");
    if !metadata.is_empty() {
        header.push_str("\"__metadata__\":");
        header.push_str(&json(metadata)?);
    }
    let mut offset = 0usize;
    for (name, t, dtype) in &tensors {
        let len = View::data_len(t);
        let info = TensorInfo {
            dtype: *dtype,
            shape: t.dims().to_vec(),
            data_offsets: (offset, offset + len),
        };
        offset += len;
        if header.len() > 1 {
            header.push(',');
        }
        header.push_str(&json(name)?);
        header.push(':');
        header.push_str(&json(&info)?);
    }
    header.push('}');
    let mut header = header.into_bytes();
    header.resize(header.len().next_multiple_of(8), b' ');
    let mut out = Vec::with_capacity(8 + header.len() + offset);
    out.extend_from_slice(&(header.len() as u64).to_le_bytes());
    out.extend_from_slice(&header);
    for (name, t, _) in &tensors {
        // On the CPU, `View::data` cannot fail (it unwraps a device copy otherwise).
        let cpu = t
            .to_device(&Device::Cpu)
            .map_err(|e| TrainError::Checkpoint(format!("cannot serialize `{name}`: {e}")))?;
        out.extend_from_slice(&View::data(&&cpu));
    }
    Ok(out)
}

/// Compact JSON of `v` (serde_json's; a map's entries in its iteration order).
fn json<T: serde::Serialize + ?Sized>(v: &T) -> Result<String, TrainError> {
    serde_json::to_string(v).map_err(|e| TrainError::Checkpoint(format!("cannot serialize: {e}")))
}

/// Writes `bytes` to `path` through a temporary file in the same directory, then renames it.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), TrainError> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path.file_name().ok_or_else(|| {
        TrainError::Checkpoint(format!("`{}` is not a file path", path.display()))
    })?;
    let tmp: PathBuf = dir.join(format!(".{}.tmp", name.to_string_lossy()));
    let result = (|| {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        // Persist the rename itself.
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    result.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        TrainError::io(path, e)
    })
}

/// What a checkpoint's header says, without its tensors' values.
#[derive(Clone, Debug, PartialEq)]
pub struct Header {
    /// String metadata.
    pub metadata: BTreeMap<String, String>,
    /// Every tensor's shape by name (momentum buffers under [`MOMENTUM_PREFIX`] included).
    pub shapes: BTreeMap<String, Vec<usize>>,
}

impl Header {
    /// The names of the parameters that have a momentum buffer.
    pub fn momentum_names(&self) -> std::collections::BTreeSet<&str> {
        self.shapes
            .keys()
            .filter_map(|k| k.strip_prefix(MOMENTUM_PREFIX))
            .collect()
    }
}

/// Reads a checkpoint's header (metadata and tensor shapes), checking it as [`load`] does, but
/// decodes no tensor.
pub fn read_header(path: &Path) -> Result<Header, TrainError> {
    let bytes = std::fs::read(path).map_err(|e| TrainError::io(path, e))?;
    let bad = |e: &dyn std::fmt::Display| {
        TrainError::Checkpoint(format!(
            "{} is not a valid safetensors file: {e}",
            path.display()
        ))
    };
    let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| bad(&e))?;
    let shapes = st
        .tensors()
        .into_iter()
        .map(|(name, view)| (name, view.shape().to_vec()))
        .collect();
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| bad(&e))?;
    let metadata = header
        .metadata()
        .clone()
        .map(|m| m.into_iter().collect())
        .unwrap_or_default();
    Ok(Header { metadata, shapes })
}

/// Reads a checkpoint; any safetensors file works (missing metadata reads as empty).
pub fn load(path: &Path, device: &Device) -> Result<Checkpoint, TrainError> {
    let bytes = std::fs::read(path).map_err(|e| TrainError::io(path, e))?;
    let bad = |e: &dyn std::fmt::Display| {
        TrainError::Checkpoint(format!(
            "{} is not a valid safetensors file: {e}",
            path.display()
        ))
    };
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| bad(&e))?;
    let metadata: BTreeMap<String, String> = header
        .metadata()
        .clone()
        .map(|m| m.into_iter().collect())
        .unwrap_or_default();
    let all = candle_core::safetensors::load_buffer(&bytes, device).map_err(|e| bad(&e))?;
    let mut tensors = HashMap::new();
    let mut momentum = BTreeMap::new();
    for (name, t) in all {
        if t.dtype().is_float() {
            let bad_values = t
                .to_dtype(candle_core::DType::F32)?
                .flatten_all()?
                .to_vec1::<f32>()?
                .iter()
                .filter(|v| !v.is_finite())
                .count();
            if bad_values > 0 {
                return Err(TrainError::Checkpoint(format!(
                    "{}: tensor `{name}` has {bad_values} NaN or infinite values",
                    path.display()
                )));
            }
        }
        match name.strip_prefix(MOMENTUM_PREFIX) {
            Some(p) => {
                momentum.insert(p.to_string(), t);
            }
            None => {
                tensors.insert(name, t);
            }
        }
    }
    Ok(Checkpoint {
        tensors,
        momentum,
        metadata,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::DType;
    use candle_nn::Init;

    fn varmap() -> VarMap {
        let vm = VarMap::new();
        vm.get(
            (2, 3),
            "a.weight",
            Init::Const(0.5),
            DType::F32,
            &Device::Cpu,
        )
        .unwrap();
        vm.get(
            4,
            "bn.running_mean",
            Init::Const(0.0),
            DType::F32,
            &Device::Cpu,
        )
        .unwrap();
        vm
    }

    #[test]
    fn round_trip_keeps_tensors_momentum_and_metadata() -> Result<(), TrainError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("last.safetensors");
        let vm = varmap();
        let mut mom = BTreeMap::new();
        mom.insert(
            "a.weight".to_string(),
            Tensor::full(0.25f32, (2, 3), &Device::Cpu)?,
        );
        let meta = BTreeMap::from([("epoch".to_string(), "7".to_string())]);
        save(&path, &vm, Some(&mom), &meta)?;
        let ck = load(&path, &Device::Cpu)?;
        assert_eq!(ck.epoch()?, 7);
        assert_eq!(ck.metadata["format"], FORMAT);
        assert_eq!(ck.momentum["a.weight"].to_vec2::<f32>()?[1], vec![0.25; 3]);
        let other = varmap();
        other.data().lock().unwrap()["a.weight"].set(&Tensor::zeros(
            (2, 3),
            DType::F32,
            &Device::Cpu,
        )?)?;
        ck.restore_into(&other)?;
        assert_eq!(
            other.data().lock().unwrap()["a.weight"]
                .as_tensor()
                .to_vec2::<f32>()?[0],
            vec![0.5; 3]
        );
        // No temporary file is left behind.
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
        Ok(())
    }

    #[test]
    fn corrupt_and_mismatched_files_are_clear_errors() -> Result<(), TrainError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.safetensors");
        save(&path, &varmap(), None, &BTreeMap::new())?;
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 5]).unwrap();
        let e = load(&path, &Device::Cpu).unwrap_err().to_string();
        assert!(e.contains("not a valid safetensors"), "{e}");

        let small = VarMap::new();
        small.get(
            (3, 3),
            "a.weight",
            Init::Const(0.0),
            DType::F32,
            &Device::Cpu,
        )?;
        save(&path, &small, None, &BTreeMap::new())?;
        let e = load(&path, &Device::Cpu)?
            .restore_into(&varmap())
            .unwrap_err()
            .to_string();
        assert!(e.contains("shape"), "{e}");

        let nan = VarMap::new();
        nan.get(
            (2, 3),
            "a.weight",
            Init::Const(f64::NAN),
            DType::F32,
            &Device::Cpu,
        )?;
        save(&path, &nan, None, &BTreeMap::new())?;
        let e = load(&path, &Device::Cpu).unwrap_err().to_string();
        assert!(e.contains("NaN"), "{e}");
        Ok(())
    }

    #[test]
    fn an_unwritable_directory_is_an_io_error() {
        let e = save(
            Path::new("/proc/no/such/dir/x.safetensors"),
            &varmap(),
            None,
            &BTreeMap::new(),
        );
        assert!(matches!(e, Err(TrainError::Io { .. })));
    }
}
