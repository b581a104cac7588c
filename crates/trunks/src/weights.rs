//! Reading a trunk's `model.safetensors`: key names brought to one spelling, then checked
//! against what the config calls for before any module is built.
//!
//! Two spellings of the same state dict exist. The checkpoints on the Hub were saved by
//! transformers 4 (`encoder.layer.0.attention.attention.query.weight`,
//! `encoder.layer.0.intermediate.dense.weight`), and models saved by transformers 5 use
//! `layers.0.attention.q_proj.weight` (ViT), `encoder.layer.0.attention.q_proj.weight`
//! (DINOv2) and `mlp.fc1` / `mlp.fc2` for ViT's MLP (the repository's fixtures,
//! `fixtures/hf/README.md`). Both are read; the canonical spelling here is transformers 4's, which
//! is also candle-transformers' (its ViT modules are built on it). Prefixes of the
//! classification models (`vit.`, `dinov2.`) are dropped, so `ViTForImageClassification` and
//! `Dinov2ForImageClassification` checkpoints load as trunks.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;

use crate::config::Family;
use crate::error::{Result, TrunkError};

/// A name and the shape the config calls for.
pub(crate) type Manifest = Vec<(String, Vec<usize>)>;

/// The weights of one trunk, keys in the canonical spelling, every tensor in `dtype` on `device`.
pub(crate) struct Weights {
    pub(crate) path: PathBuf,
    pub(crate) tensors: HashMap<String, Tensor>,
}

/// transformers 5 spelling → transformers 4 spelling, for the tail of a layer's key.
fn layer_suffix(family: Family, tail: &str) -> String {
    const ATTENTION: [(&str, &str); 4] = [
        ("attention.q_proj.", "attention.attention.query."),
        ("attention.k_proj.", "attention.attention.key."),
        ("attention.v_proj.", "attention.attention.value."),
        ("attention.o_proj.", "attention.output.dense."),
    ];
    for (new, old) in ATTENTION {
        if let Some(rest) = tail.strip_prefix(new) {
            return format!("{old}{rest}");
        }
    }
    if family == Family::Vit {
        if let Some(rest) = tail.strip_prefix("mlp.fc1.") {
            return format!("intermediate.dense.{rest}");
        }
        if let Some(rest) = tail.strip_prefix("mlp.fc2.") {
            return format!("output.dense.{rest}");
        }
    }
    tail.to_string()
}

/// The canonical name of `key` for `family`, or `None` for a tensor that belongs to something
/// other than the trunk (a classifier, CLIP's text tower, buffers).
pub(crate) fn canonical(family: Family, key: &str) -> Option<String> {
    match family {
        Family::Clip => {
            let ignored = key.starts_with("text_model.")
                || key.starts_with("text_projection.")
                || key == "logit_scale"
                || key.ends_with("position_ids");
            (!ignored).then(|| key.to_string())
        }
        Family::Vit | Family::Dinov2 => {
            let prefix = if family == Family::Vit {
                "vit."
            } else {
                "dinov2."
            };
            let key = key.strip_prefix(prefix).unwrap_or(key);
            if key.starts_with("classifier.") || key == "embeddings.mask_token" {
                return None;
            }
            let layer = key
                .strip_prefix("layers.")
                .or_else(|| key.strip_prefix("encoder.layer."));
            let Some(rest) = layer else {
                return Some(key.to_string());
            };
            let Some((index, tail)) = rest.split_once('.') else {
                return Some(key.to_string());
            };
            Some(format!(
                "encoder.layer.{index}.{}",
                layer_suffix(family, tail)
            ))
        }
    }
}

impl Weights {
    /// Reads `path` and renames its keys for `family`. Tensors that are not part of the trunk
    /// are dropped here; everything else must be in the manifest ([`Weights::check`]).
    pub(crate) fn load(path: &Path, family: Family, dtype: DType, device: &Device) -> Result<Self> {
        if !path.is_file() {
            return Err(TrunkError::MissingFile {
                path: path.to_path_buf(),
                what: "no model.safetensors (only safetensors weights are read; convert a \
                       pytorch_model.bin with transformers' save_pretrained)"
                    .into(),
            });
        }
        let raw =
            candle_core::safetensors::load(path, device).map_err(|e| TrunkError::BadConfig {
                path: path.to_path_buf(),
                reason: format!("not a readable safetensors file: {e}"),
            })?;
        let mut tensors = HashMap::with_capacity(raw.len());
        for (key, t) in raw {
            if let Some(name) = canonical(family, &key) {
                let t = if t.dtype() == dtype {
                    t
                } else {
                    t.to_dtype(dtype)?
                };
                tensors.insert(name, t);
            }
        }
        Ok(Weights {
            path: path.to_path_buf(),
            tensors,
        })
    }

    /// Checks every manifest entry is present with its shape, and that nothing else is left
    /// (a checkpoint with more layers than `num_hidden_layers`, say). Tensors marked optional
    /// by the caller (`optional`) may be absent.
    pub(crate) fn check(&self, manifest: &Manifest, optional: &[&str]) -> Result<()> {
        let want: BTreeMap<&str, &[usize]> = manifest
            .iter()
            .map(|(n, s)| (n.as_str(), s.as_slice()))
            .collect();
        for (name, shape) in &want {
            match self.tensors.get(*name) {
                None if optional.contains(name) => {}
                None => {
                    return Err(TrunkError::MissingTensor {
                        path: self.path.clone(),
                        name: name.to_string(),
                    })
                }
                Some(t) if t.dims() != *shape => {
                    return Err(TrunkError::ShapeMismatch {
                        path: self.path.clone(),
                        name: name.to_string(),
                        expected: shape.to_vec(),
                        got: t.dims().to_vec(),
                    })
                }
                Some(_) => {}
            }
        }
        let mut extra: Vec<&String> = self
            .tensors
            .keys()
            .filter(|k| !want.contains_key(k.as_str()))
            .collect();
        extra.sort();
        if let Some(first) = extra.first() {
            return Err(TrunkError::UnexpectedTensor {
                path: self.path.clone(),
                name: first.to_string(),
                count: extra.len(),
            });
        }
        Ok(())
    }

    /// Whether `name` is present.
    pub(crate) fn has(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// A VarBuilder over the (checked) tensors.
    pub(crate) fn into_var_builder(self, dtype: DType, device: &Device) -> VarBuilder<'static> {
        VarBuilder::from_tensors(self.tensors, dtype, device)
    }
}

/// Random weights of the right shapes for `manifest` (benchmarks, tests): N(0, 0.02²), LayerNorm
/// weights 1, LayerScale 1.
pub(crate) fn random(
    manifest: &Manifest,
    dtype: DType,
    device: &Device,
) -> Result<HashMap<String, Tensor>> {
    manifest
        .iter()
        .map(|(name, shape)| {
            let t = if name.ends_with("norm.weight")
                || name.contains("norm1.weight")
                || name.contains("norm2.weight")
                || name.contains("layernorm_before.weight")
                || name.contains("layernorm_after.weight")
                || name.contains("layer_norm1.weight")
                || name.contains("layer_norm2.weight")
                || name.ends_with("layrnorm.weight")
                || name.ends_with("lambda1")
            {
                Tensor::ones(shape.as_slice(), dtype, device)?
            } else if name.ends_with(".bias") {
                Tensor::zeros(shape.as_slice(), dtype, device)?
            } else {
                Tensor::randn(0f32, 0.02, shape.as_slice(), device)?.to_dtype(dtype)?
            };
            Ok((name.clone(), t))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_spellings_map_to_one() {
        use Family::*;
        for (family, a, b) in [
            (
                Vit,
                "layers.3.attention.q_proj.weight",
                "vit.encoder.layer.3.attention.attention.query.weight",
            ),
            (
                Vit,
                "layers.0.mlp.fc1.bias",
                "encoder.layer.0.intermediate.dense.bias",
            ),
            (
                Vit,
                "layers.0.mlp.fc2.weight",
                "encoder.layer.0.output.dense.weight",
            ),
            (
                Vit,
                "layers.11.attention.o_proj.bias",
                "encoder.layer.11.attention.output.dense.bias",
            ),
            (
                Dinov2,
                "encoder.layer.1.attention.v_proj.weight",
                "dinov2.encoder.layer.1.attention.attention.value.weight",
            ),
            (
                Dinov2,
                "encoder.layer.1.mlp.fc1.weight",
                "encoder.layer.1.mlp.fc1.weight",
            ),
        ] {
            assert_eq!(canonical(family, a), canonical(family, b), "{a} vs {b}");
            assert!(canonical(family, a).is_some());
        }
        assert_eq!(canonical(Vit, "classifier.weight"), None);
        assert_eq!(canonical(Dinov2, "embeddings.mask_token"), None);
        assert_eq!(
            canonical(Clip, "text_model.embeddings.token_embedding.weight"),
            None
        );
        assert_eq!(
            canonical(Clip, "visual_projection.weight").as_deref(),
            Some("visual_projection.weight")
        );
    }
}
