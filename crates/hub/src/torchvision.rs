//! ImageNet-pretrained torchvision / timm ResNet-50, ResNeXt-50 and ResNet-152 state dicts
//! (keys `conv1.weight`, `layer3.0.conv1.weight`, `fc.weight`, …) as the starting point of a
//! multi-expert trunk.

use std::collections::HashMap;
use std::path::Path;

use candle_core::Tensor;
use candle_nn::VarMap;
use longtail_backbone::{BackboneConfig, ShapeMismatch, DATA_PARALLEL_PREFIX};

use crate::error::{HubError, Result};
use crate::file::read_checked;

/// What [`load_torchvision_trunk`] / [`load_torchvision_file`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrunkReport {
    /// Our keys that received a pretrained tensor, sorted.
    pub loaded: Vec<String>,
    /// Our keys left as they were: the expert classifiers (`linear`, `linears.{e}`), sorted.
    pub kept: Vec<String>,
    /// File keys not used on purpose: the ImageNet classifier `fc.*` and
    /// `num_batches_tracked`, sorted.
    pub skipped: Vec<String>,
}

/// Our key(s) for one torchvision key under `cfg`: the stem and the shared stages keep their name
/// under `backbone.`; a per-expert stage `layer{i}` is copied to `layer{i}s.{e}` for every expert
/// `e`, as SADE initialises Places-LT from a pretrained ResNet-152 (docs/sade.md §1.1, `init_weights`
/// in `model/model.py`). `None` for keys that have no place in the trunk.
pub fn our_keys(cfg: &BackboneConfig, key: &str) -> Option<Vec<String>> {
    let key = key.strip_prefix(DATA_PARALLEL_PREFIX).unwrap_or(key);
    if key.starts_with("conv1.") || key.starts_with("bn1.") {
        return Some(vec![format!("backbone.{key}")]);
    }
    let rest = key.strip_prefix("layer")?;
    let (stage, tail) = rest.split_once('.')?;
    let stage: usize = stage.parse().ok()?;
    if stage <= cfg.shared_stages() {
        Some(vec![format!("backbone.{key}")])
    } else {
        Some(
            (0..cfg.num_experts)
                .map(|e| format!("backbone.layer{stage}s.{e}.{tail}"))
                .collect(),
        )
    }
}

/// Copies a torchvision/timm ImageNet ResNet state dict into the trunk of `varmap` (built from
/// `cfg`, e.g. SADE Places-LT: ResNet-152, no reduced dimension, three experts).
///
/// Strict on the trunk: every `varmap` key except the classifiers must receive a tensor of the
/// same shape, and every file key other than `fc.*` and `num_batches_tracked` must find a place;
/// otherwise nothing is copied and the error lists the missing and unexpected keys and the wrong
/// shapes (an expert width reduced to 192/384 cannot take torchvision's 256/512, for example).
/// The classifiers keep their (seeded) initialisation: the official code leaves them random.
/// `source` only labels errors.
pub fn load_torchvision_trunk(
    varmap: &VarMap,
    cfg: &BackboneConfig,
    tensors: &HashMap<String, Tensor>,
    source: &Path,
) -> Result<TrunkReport> {
    let data = varmap.data().lock().unwrap_or_else(|e| e.into_inner());
    let is_head = |k: &str| k.starts_with("backbone.linear");
    let mut plan: Vec<(String, &Tensor)> = vec![];
    let mut skipped = vec![];
    let mut unexpected = vec![];
    let mut mismatched = vec![];
    for (k, t) in tensors {
        let bare = k.strip_prefix(DATA_PARALLEL_PREFIX).unwrap_or(k);
        if bare.starts_with("fc.") || bare.ends_with(".num_batches_tracked") {
            skipped.push(k.clone());
            continue;
        }
        match our_keys(cfg, k) {
            None => unexpected.push(k.clone()),
            Some(targets) => {
                for target in targets {
                    match data.get(&target) {
                        None => unexpected.push(format!("{k} (as {target})")),
                        Some(v) if v.dims() != t.dims() => mismatched.push(ShapeMismatch {
                            name: target,
                            expected: v.dims().to_vec(),
                            got: t.dims().to_vec(),
                        }),
                        Some(_) => plan.push((target, t)),
                    }
                }
            }
        }
    }
    let planned: std::collections::HashSet<&str> = plan.iter().map(|(k, _)| k.as_str()).collect();
    let mut missing: Vec<String> = data
        .keys()
        .filter(|k| !is_head(k.as_str()) && !planned.contains(k.as_str()))
        .filter(|k| !mismatched.iter().any(|m| &m.name == *k))
        .cloned()
        .collect();
    if !(missing.is_empty() && unexpected.is_empty() && mismatched.is_empty()) {
        missing.sort();
        unexpected.sort();
        mismatched.sort_by(|a, b| a.name.cmp(&b.name));
        return Err(HubError::Mismatch {
            path: source.to_path_buf(),
            reason: format!(
                "pretrained trunk does not fit the model: missing keys [{}]; unexpected keys [{}]; shape mismatches [{}]",
                missing.join(", "),
                unexpected.join(", "),
                mismatched.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
            ),
        });
    }
    let mut loaded = Vec::with_capacity(plan.len());
    for (target, t) in plan {
        let var = &data[&target];
        var.set(&t.to_dtype(var.dtype())?.to_device(var.device())?)?;
        loaded.push(target);
    }
    loaded.sort();
    skipped.sort();
    let mut kept: Vec<String> = data
        .keys()
        .filter(|k| is_head(k.as_str()))
        .cloned()
        .collect();
    kept.sort();
    Ok(TrunkReport {
        loaded,
        kept,
        skipped,
    })
}

/// [`load_torchvision_trunk`] from a safetensors file, checked by [`read_checked`] first.
pub fn load_torchvision_file(
    varmap: &VarMap,
    cfg: &BackboneConfig,
    path: &Path,
) -> Result<TrunkReport> {
    let file = read_checked(path, &candle_core::Device::Cpu)?;
    load_torchvision_trunk(varmap, cfg, &file.tensors, path)
}
