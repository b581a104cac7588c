//! Weights in a `VarMap`: loading official state dicts, seeded initialisation, trainable subset.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use candle_core::{Device, Tensor, Var};
use candle_nn::VarMap;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;

use crate::config::BackboneConfig;
use crate::error::{BackboneError, Result, ShapeMismatch};

/// Prefix PyTorch `DataParallel` checkpoints put before every key (docs/ride.md §2); stripped on load.
pub const DATA_PARALLEL_PREFIX: &str = "module.";

/// What [`load_weights`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadReport {
    /// Keys copied into the VarMap, sorted.
    pub loaded: Vec<String>,
    /// Keys in the weights that were skipped on purpose (`num_batches_tracked`), sorted.
    pub ignored: Vec<String>,
}

/// True for the state-dict keys that are buffers without a Var: BN `num_batches_tracked`.
fn is_ignored_buffer(name: &str) -> bool {
    name.ends_with(".num_batches_tracked")
}

/// True for every VarMap entry an optimizer should update: all but BN `running_mean` and
/// `running_var`, which candle-nn keeps as Vars (docs/candle.md §2, pitfall 1) and which must not get
/// weight decay or momentum.
pub fn is_trainable(name: &str) -> bool {
    !(name.ends_with(".running_mean") || name.ends_with(".running_var"))
}

/// The trainable Vars of `varmap` with their names, sorted by name.
pub fn trainable_vars(varmap: &VarMap) -> Vec<(String, Var)> {
    let data = varmap.data().lock().unwrap_or_else(|e| e.into_inner());
    let mut vars: Vec<(String, Var)> = data
        .iter()
        .filter(|(n, _)| is_trainable(n))
        .map(|(n, v)| (n.clone(), v.clone()))
        .collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    vars
}

/// Number of trainable scalars in `varmap` (783,856 for RIDE ResNet-32 E = 3, C = 100).
pub fn num_trainable_params(varmap: &VarMap) -> usize {
    trainable_vars(varmap)
        .iter()
        .map(|(_, v)| v.elem_count())
        .sum()
}

/// Copies `tensors` (an official state dict, keys like `backbone.layer1.0.conv1.weight`) into the
/// VarMap by name, converting dtype and device to each Var's.
///
/// Strict, unlike the official warn-and-continue loader: if any VarMap key is
/// missing, any other key is unexpected, or any shape differs, nothing is copied and
/// [`BackboneError::StateDict`] lists them all. `num_batches_tracked` (int64 scalars) is accepted
/// and ignored, and a leading `module.` (DataParallel) is stripped.
pub fn load_weights(varmap: &VarMap, tensors: &HashMap<String, Tensor>) -> Result<LoadReport> {
    let mut file: HashMap<&str, &Tensor> = HashMap::with_capacity(tensors.len());
    for (k, t) in tensors {
        file.insert(k.strip_prefix(DATA_PARALLEL_PREFIX).unwrap_or(k), t);
    }
    let data = varmap.data().lock().unwrap_or_else(|e| e.into_inner());
    let mut missing = Vec::new();
    let mut mismatched = Vec::new();
    for (name, var) in data.iter() {
        match file.get(name.as_str()) {
            None => missing.push(name.clone()),
            Some(t) if t.dims() != var.dims() => mismatched.push(ShapeMismatch {
                name: name.clone(),
                expected: var.dims().to_vec(),
                got: t.dims().to_vec(),
            }),
            Some(_) => {}
        }
    }
    let mut ignored = Vec::new();
    let mut unexpected = Vec::new();
    for &k in file.keys() {
        if !data.contains_key(k) {
            if is_ignored_buffer(k) {
                ignored.push(k.to_string());
            } else {
                unexpected.push(k.to_string());
            }
        }
    }
    if !(missing.is_empty() && unexpected.is_empty() && mismatched.is_empty()) {
        missing.sort();
        unexpected.sort();
        mismatched.sort_by(|a, b| a.name.cmp(&b.name));
        return Err(BackboneError::StateDict {
            missing,
            unexpected,
            mismatched,
        });
    }
    let mut loaded = Vec::with_capacity(data.len());
    for (name, var) in data.iter() {
        let t = file[name.as_str()]
            .to_dtype(var.dtype())?
            .to_device(var.device())?;
        var.set(&t)?;
        loaded.push(name.clone());
    }
    loaded.sort();
    ignored.sort();
    Ok(LoadReport { loaded, ignored })
}

/// [`load_weights`] from a safetensors file.
pub fn load_weights_file(varmap: &VarMap, path: impl AsRef<Path>) -> Result<LoadReport> {
    let path = path.as_ref();
    let tensors = candle_core::safetensors::load(path, &Device::Cpu).map_err(|source| {
        BackboneError::Read {
            path: path.to_path_buf(),
            source,
        }
    })?;
    load_weights(varmap, &tensors)
}

/// 64-bit FNV-1a of a name: the ChaCha stream of that tensor.
fn fnv1a(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

/// How one tensor is initialised.
#[derive(Debug, Clone, Copy, PartialEq)]
enum InitKind {
    Const(f32),
    /// `N(0, std²)`.
    Normal(f32),
    /// `U(-b, b)`.
    Uniform(f32),
    /// NormedLinear `[in, out]`: `U(-1, 1)`, then each column scaled to unit L2 norm.
    NormedColumns,
}

fn init_kind(
    cfg: &BackboneConfig,
    names: &BTreeSet<&str>,
    name: &str,
    dims: &[usize],
) -> Option<InitKind> {
    let (prefix, leaf) = name.rsplit_once('.')?;
    let is_bn = names.contains(format!("{prefix}.running_mean").as_str());
    match (leaf, dims.len(), is_bn) {
        ("running_mean", 1, _) => Some(InitKind::Const(0.0)),
        ("running_var", 1, _) => Some(InitKind::Const(1.0)),
        ("weight", 1, true) => Some(InitKind::Const(1.0)),
        ("bias", 1, true) => Some(InitKind::Const(0.0)),
        ("weight", 4, false) => {
            // CIFAR: kaiming_normal_ fan_in (docs/ride.md §1.1); ImageNet: N(0, 2/(k·k·out)) (§1.2).
            let k = dims[2] * dims[3];
            let fan = if cfg.arch.is_cifar() {
                dims[1] * k
            } else {
                dims[0] * k
            };
            Some(InitKind::Normal((2.0 / fan as f64).sqrt() as f32))
        }
        ("weight", 2, false) if cfg.use_norm => Some(InitKind::NormedColumns),
        ("weight", 2, false) => {
            let fan_in = dims[1] as f64;
            if cfg.arch.is_cifar() {
                Some(InitKind::Normal((2.0 / fan_in).sqrt() as f32))
            } else {
                // The ImageNet init loop leaves nn.Linear at PyTorch's default U(±1/√fan_in).
                Some(InitKind::Uniform((1.0 / fan_in.sqrt()) as f32))
            }
        }
        ("bias", 1, false) => None, // nn.Linear bias: needs the weight's fan-in, see below.
        _ => None,
    }
}

/// Fills every Var of `varmap` from a ChaCha8 generator seeded with `seed` (one stream per
/// tensor name, so a tensor's values do not depend on which other tensors exist). candle's CPU
/// RNG cannot be seeded (docs/candle.md §2), hence this.
///
/// - convs: Kaiming normal, std √(2/fan_in) for ResNet-32 (docs/ride.md §1.1), √(2/(k²·out)) fan-out
///   for ResNet-50 / ResNeXt-50 (docs/ride.md §1.2);
/// - NormedLinear `[in, out]`: `U(-1, 1)`, then each class column to unit norm;
/// - `nn.Linear` (when `use_norm` is false): weight Kaiming normal fan-in on CIFAR, `U(±1/√in)`
///   on ImageNet; bias `U(±1/√in)` (PyTorch default);
/// - BN: γ = 1, β = 0, running mean 0, running var 1.
///
/// Same seed and config → bit-identical weights.
pub fn init_weights(varmap: &VarMap, cfg: &BackboneConfig, seed: u64) -> Result<()> {
    let data = varmap.data().lock().unwrap_or_else(|e| e.into_inner());
    let names: BTreeSet<&str> = data.keys().map(String::as_str).collect();
    for &name in &names {
        let var = &data[name];
        let dims = var.dims().to_vec();
        let kind = match init_kind(cfg, &names, name, &dims) {
            Some(kind) => kind,
            None => {
                // nn.Linear bias: PyTorch default U(±1/√fan_in) with the weight's fan-in.
                let weight = name.strip_suffix(".bias").map(|p| format!("{p}.weight"));
                match weight.as_deref().and_then(|w| data.get(w)) {
                    Some(w) if dims.len() == 1 && w.dims().len() == 2 && w.dims()[0] == dims[0] => {
                        InitKind::Uniform((1.0 / (w.dims()[1] as f64).sqrt()) as f32)
                    }
                    _ => {
                        return Err(BackboneError::UnknownParameter {
                            name: name.to_string(),
                            shape: dims,
                        })
                    }
                }
            }
        };
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        rng.set_stream(fnv1a(name));
        let n: usize = dims.iter().product();
        let values: Vec<f32> = match kind {
            InitKind::Const(c) => vec![c; n],
            InitKind::Normal(std) => (0..n)
                .map(|_| rng.sample::<f32, _>(StandardNormal) * std)
                .collect(),
            InitKind::Uniform(b) => (0..n).map(|_| rng.random::<f32>() * 2.0 * b - b).collect(),
            InitKind::NormedColumns => {
                let mut v: Vec<f32> = (0..n).map(|_| rng.random::<f32>() * 2.0 - 1.0).collect();
                let (rows, cols) = (dims[0], dims[1]);
                for c in 0..cols {
                    let norm = (0..rows)
                        .map(|r| (v[r * cols + c] as f64).powi(2))
                        .sum::<f64>()
                        .sqrt();
                    let inv = if norm > 0.0 { 1.0 / norm } else { 0.0 };
                    for r in 0..rows {
                        v[r * cols + c] = (v[r * cols + c] as f64 * inv) as f32;
                    }
                }
                v
            }
        };
        let t = Tensor::from_vec(values, dims, var.device())?.to_dtype(var.dtype())?;
        var.set(&t)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trainable_names() {
        assert!(is_trainable("backbone.bn1.weight"));
        assert!(is_trainable("backbone.linears.0.weight"));
        assert!(!is_trainable("backbone.bn1.running_mean"));
        assert!(!is_trainable("backbone.layer1.0.bn2.running_var"));
    }

    #[test]
    fn fnv_is_stable() {
        // FNV-1a test vectors.
        assert_eq!(fnv1a(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a("a"), 0xaf63_dc4c_8601_ec8c);
    }
}
