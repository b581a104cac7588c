//! The trunks' configs, read from a Hugging Face `config.json`.
//!
//! Every field has the default of the `transformers` config class it mirrors (`ViTConfig`,
//! `CLIPVisionConfig`, `Dinov2Config`), because `save_pretrained` leaves default values out of
//! some configs (the `vision_config` of the older `openai/clip-vit-*` repositories, for one).
//! Fields this crate does not use (dropout rates, initialiser ranges, backbone stage names) are
//! ignored; the ones it uses are checked by [`TrunkConfig::check`].

use std::path::Path;

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use crate::error::{io, Result, TrunkError};

/// The three trunk families.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    /// `google/vit-*`: transformers' `ViTModel` (`model_type = "vit"`).
    Vit,
    /// `openai/clip-vit-*`: the vision half of CLIP with its projection,
    /// `CLIPVisionModelWithProjection` (`model_type = "clip"` or `"clip_vision_model"`).
    Clip,
    /// `facebook/dinov2-*`: transformers' `Dinov2Model` (`model_type = "dinov2"`).
    Dinov2,
}

impl Family {
    /// Lower-case name, as in metadata and messages.
    pub fn name(self) -> &'static str {
        match self {
            Family::Vit => "vit",
            Family::Clip => "clip",
            Family::Dinov2 => "dinov2",
        }
    }
}

impl std::fmt::Display for Family {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// An activation named by a config's `hidden_act` (transformers' `ACT2FN` names).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Activation {
    /// `gelu`: the exact, erf-based GELU.
    Gelu,
    /// `gelu_new`, `gelu_pytorch_tanh`: the tanh approximation of GELU.
    GeluTanh,
    /// `quick_gelu`: `x · σ(1.702 x)` (OpenAI CLIP).
    QuickGelu,
    /// `relu`.
    Relu,
    /// `silu`, `swish`.
    Silu,
}

impl Activation {
    /// The activation `name` names, if supported.
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "gelu" => Activation::Gelu,
            "gelu_new" | "gelu_pytorch_tanh" => Activation::GeluTanh,
            "quick_gelu" => Activation::QuickGelu,
            "relu" => Activation::Relu,
            "silu" | "swish" => Activation::Silu,
            _ => return None,
        })
    }

    /// Applies the activation.
    pub fn apply(self, xs: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Activation::Gelu => xs.gelu_erf(),
            Activation::GeluTanh => xs.gelu(),
            Activation::QuickGelu => xs * candle_nn::ops::sigmoid(&(xs * 1.702)?)?,
            Activation::Relu => xs.relu(),
            Activation::Silu => xs.silu(),
        }
    }

    /// The same activation as candle-nn's enum (used by candle-transformers' ViT), where it
    /// has one.
    pub(crate) fn to_candle(self) -> Option<candle_nn::Activation> {
        Some(match self {
            Activation::Gelu => candle_nn::Activation::Gelu,
            Activation::GeluTanh => candle_nn::Activation::NewGelu,
            Activation::Relu => candle_nn::Activation::Relu,
            Activation::Silu => candle_nn::Activation::Silu,
            Activation::QuickGelu => return None,
        })
    }
}

fn d_768() -> usize {
    768
}
fn d_12() -> usize {
    12
}
fn d_3072() -> usize {
    3072
}
fn d_gelu() -> String {
    "gelu".into()
}
fn d_224() -> usize {
    224
}
fn d_16() -> usize {
    16
}
fn d_3() -> usize {
    3
}
fn d_true() -> bool {
    true
}
fn d_tanh() -> String {
    "tanh".into()
}
fn d_eps_vit() -> f64 {
    1e-12
}

/// transformers' `ViTConfig` (the fields `ViTModel` uses).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VitConfig {
    /// Width of the tokens.
    #[serde(default = "d_768")]
    pub hidden_size: usize,
    /// Number of transformer blocks.
    #[serde(default = "d_12")]
    pub num_hidden_layers: usize,
    /// Attention heads per block.
    #[serde(default = "d_12")]
    pub num_attention_heads: usize,
    /// Width of the MLP.
    #[serde(default = "d_3072")]
    pub intermediate_size: usize,
    /// MLP activation.
    #[serde(default = "d_gelu")]
    pub hidden_act: String,
    /// LayerNorm epsilon.
    #[serde(default = "d_eps_vit")]
    pub layer_norm_eps: f64,
    /// Side of the (square) input the position embeddings were trained for.
    #[serde(default = "d_224")]
    pub image_size: usize,
    /// Side of a patch.
    #[serde(default = "d_16")]
    pub patch_size: usize,
    /// Input channels.
    #[serde(default = "d_3")]
    pub num_channels: usize,
    /// Whether query, key and value have biases.
    #[serde(default = "d_true")]
    pub qkv_bias: bool,
    /// Width of the pooler output (`None`: `hidden_size`).
    #[serde(default)]
    pub pooler_output_size: Option<usize>,
    /// Activation of the pooler.
    #[serde(default = "d_tanh")]
    pub pooler_act: String,
}

fn d_clip_act() -> String {
    "quick_gelu".into()
}
fn d_32() -> usize {
    32
}
fn d_512() -> usize {
    512
}
fn d_eps_clip() -> f64 {
    1e-5
}

/// transformers' `CLIPVisionConfig`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClipVisionConfig {
    /// Width of the tokens.
    #[serde(default = "d_768")]
    pub hidden_size: usize,
    /// Width of the MLP.
    #[serde(default = "d_3072")]
    pub intermediate_size: usize,
    /// Width of `image_embeds` (the projection's output).
    #[serde(default = "d_512")]
    pub projection_dim: usize,
    /// Number of transformer blocks.
    #[serde(default = "d_12")]
    pub num_hidden_layers: usize,
    /// Attention heads per block.
    #[serde(default = "d_12")]
    pub num_attention_heads: usize,
    /// Input channels.
    #[serde(default = "d_3")]
    pub num_channels: usize,
    /// Side of the (square) input.
    #[serde(default = "d_224")]
    pub image_size: usize,
    /// Side of a patch.
    #[serde(default = "d_32")]
    pub patch_size: usize,
    /// MLP activation.
    #[serde(default = "d_clip_act")]
    pub hidden_act: String,
    /// LayerNorm epsilon.
    #[serde(default = "d_eps_clip")]
    pub layer_norm_eps: f64,
}

fn d_14() -> usize {
    14
}
fn d_ratio() -> f64 {
    4.0
}
fn d_eps_dino() -> f64 {
    1e-6
}
fn d_one() -> f64 {
    1.0
}

/// transformers' `Dinov2Config` (the fields `Dinov2Model` uses).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Dinov2Config {
    /// Width of the tokens.
    #[serde(default = "d_768")]
    pub hidden_size: usize,
    /// Number of transformer blocks.
    #[serde(default = "d_12")]
    pub num_hidden_layers: usize,
    /// Attention heads per block.
    #[serde(default = "d_12")]
    pub num_attention_heads: usize,
    /// MLP width as a multiple of `hidden_size`.
    #[serde(default = "d_ratio")]
    pub mlp_ratio: f64,
    /// MLP activation (unused by the SwiGLU MLP).
    #[serde(default = "d_gelu")]
    pub hidden_act: String,
    /// LayerNorm epsilon.
    #[serde(default = "d_eps_dino")]
    pub layer_norm_eps: f64,
    /// Side of the square grid of position embeddings, in pixels (518 on the Hub's models:
    /// 37 × 37 patches); other input sizes interpolate them.
    #[serde(default = "d_224")]
    pub image_size: usize,
    /// Side of a patch.
    #[serde(default = "d_14")]
    pub patch_size: usize,
    /// Input channels.
    #[serde(default = "d_3")]
    pub num_channels: usize,
    /// Whether query, key and value have biases.
    #[serde(default = "d_true")]
    pub qkv_bias: bool,
    /// Initial LayerScale value (the weights carry the trained ones).
    #[serde(default = "d_one")]
    pub layerscale_value: f64,
    /// SwiGLU MLP (`facebook/dinov2-giant`) instead of fc1 → act → fc2.
    #[serde(default)]
    pub use_swiglu_ffn: bool,
}

/// A trunk's config: which family, and its sizes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "family", rename_all = "lowercase")]
pub enum TrunkConfig {
    /// A ViT.
    Vit(VitConfig),
    /// A CLIP vision tower with projection.
    Clip(ClipVisionConfig),
    /// A DINOv2.
    Dinov2(Dinov2Config),
}

#[derive(Deserialize)]
struct ModelType {
    model_type: Option<String>,
}

#[derive(Deserialize)]
struct FullClip {
    #[serde(default)]
    vision_config: Option<serde_json::Value>,
    #[serde(default = "d_512")]
    projection_dim: usize,
}

impl TrunkConfig {
    /// Reads `config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        if !path.is_file() {
            return Err(TrunkError::MissingFile {
                path: path.to_path_buf(),
                what: "no config.json: a trunk folder holds config.json and model.safetensors \
                       as transformers' save_pretrained writes them"
                    .into(),
            });
        }
        let text = std::fs::read_to_string(path).map_err(io(path))?;
        Self::from_json(&text, path)
    }

    /// Parses the text of a `config.json`; `path` names it in errors.
    ///
    /// `model_type` picks the family: `vit`, `dinov2`, `clip_vision_model` (a saved
    /// `CLIPVisionModelWithProjection`) or `clip` (a whole CLIP model, as the `openai/clip-vit-*`
    /// repositories hold: its `vision_config` and top-level `projection_dim` are used).
    pub fn from_json(text: &str, path: &Path) -> Result<Self> {
        let bad = |reason: String| TrunkError::BadConfig {
            path: path.to_path_buf(),
            reason,
        };
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|e| bad(format!("not valid JSON: {e}")))?;
        let kind: ModelType = serde_json::from_value(value.clone())
            .map_err(|e| bad(format!("bad `model_type`: {e}")))?;
        let parse = |v: serde_json::Value| -> Result<TrunkConfig> {
            let cfg = match kind.model_type.as_deref() {
                Some("vit") => TrunkConfig::Vit(serde_json::from_value(v).map_err(|e| bad(e.to_string()))?),
                Some("dinov2") => {
                    TrunkConfig::Dinov2(serde_json::from_value(v).map_err(|e| bad(e.to_string()))?)
                }
                Some("clip_vision_model") => {
                    TrunkConfig::Clip(serde_json::from_value(v).map_err(|e| bad(e.to_string()))?)
                }
                Some("clip") => {
                    let full: FullClip =
                        serde_json::from_value(v).map_err(|e| bad(e.to_string()))?;
                    let vision = full.vision_config.unwrap_or_else(|| serde_json::json!({}));
                    let mut c: ClipVisionConfig =
                        serde_json::from_value(vision).map_err(|e| bad(format!("vision_config: {e}")))?;
                    c.projection_dim = full.projection_dim;
                    TrunkConfig::Clip(c)
                }
                Some(other) => {
                    return Err(bad(format!(
                        "model_type `{other}` is not a supported trunk (vit, clip, clip_vision_model, dinov2)"
                    )))
                }
                None => {
                    return Err(bad(
                        "no `model_type`: cannot tell which trunk this is (vit, clip, clip_vision_model, dinov2)"
                            .into(),
                    ))
                }
            };
            Ok(cfg)
        };
        let cfg = parse(value)?;
        cfg.check(path)?;
        Ok(cfg)
    }

    /// The family.
    pub fn family(&self) -> Family {
        match self {
            TrunkConfig::Vit(_) => Family::Vit,
            TrunkConfig::Clip(_) => Family::Clip,
            TrunkConfig::Dinov2(_) => Family::Dinov2,
        }
    }

    /// (`hidden_size`, `num_attention_heads`, `num_hidden_layers`, `image_size`,
    /// `patch_size`, `num_channels`, `hidden_act`, `layer_norm_eps`).
    #[allow(clippy::type_complexity)]
    fn common(&self) -> (usize, usize, usize, usize, usize, usize, &str, f64) {
        match self {
            TrunkConfig::Vit(c) => (
                c.hidden_size,
                c.num_attention_heads,
                c.num_hidden_layers,
                c.image_size,
                c.patch_size,
                c.num_channels,
                &c.hidden_act,
                c.layer_norm_eps,
            ),
            TrunkConfig::Clip(c) => (
                c.hidden_size,
                c.num_attention_heads,
                c.num_hidden_layers,
                c.image_size,
                c.patch_size,
                c.num_channels,
                &c.hidden_act,
                c.layer_norm_eps,
            ),
            TrunkConfig::Dinov2(c) => (
                c.hidden_size,
                c.num_attention_heads,
                c.num_hidden_layers,
                c.image_size,
                c.patch_size,
                c.num_channels,
                &c.hidden_act,
                c.layer_norm_eps,
            ),
        }
    }

    /// Width of the tokens (`last_hidden_state`'s last dimension).
    pub fn hidden_size(&self) -> usize {
        self.common().0
    }

    /// Side of the square input the position embeddings were trained for.
    pub fn image_size(&self) -> usize {
        self.common().3
    }

    /// Side of a patch.
    pub fn patch_size(&self) -> usize {
        self.common().4
    }

    /// The MLP activation.
    pub fn activation(&self) -> Activation {
        Activation::parse(self.common().6).unwrap_or(Activation::Gelu)
    }

    /// Checks that the sizes fit together and that this crate can build the trunk.
    pub fn check(&self, path: &Path) -> Result<()> {
        let bad = |reason: String| {
            Err(TrunkError::BadConfig {
                path: path.to_path_buf(),
                reason,
            })
        };
        let (hidden, heads, layers, image, patch, channels, act, eps) = self.common();
        if hidden == 0 || heads == 0 || layers == 0 || image == 0 || patch == 0 {
            return bad(format!(
                "hidden_size {hidden}, num_attention_heads {heads}, num_hidden_layers {layers}, \
                 image_size {image}, patch_size {patch}: all must be positive"
            ));
        }
        if hidden % heads != 0 {
            return bad(format!(
                "hidden_size {hidden} is not a multiple of num_attention_heads {heads}"
            ));
        }
        if patch > image {
            return bad(format!("patch_size {patch} exceeds image_size {image}"));
        }
        if channels != 3 {
            return bad(format!(
                "num_channels {channels}: only RGB trunks (3 channels) are supported"
            ));
        }
        if !(eps.is_finite() && eps > 0.0) {
            return bad(format!("layer_norm_eps {eps} must be positive"));
        }
        let Some(activation) = Activation::parse(act) else {
            return bad(format!(
                "hidden_act `{act}` is not supported (gelu, gelu_new, gelu_pytorch_tanh, quick_gelu, relu, silu)"
            ));
        };
        match self {
            TrunkConfig::Vit(c) => {
                if c.intermediate_size == 0 {
                    return bad("intermediate_size must be positive".into());
                }
                if activation.to_candle().is_none() {
                    return bad(format!(
                        "hidden_act `{act}`: candle-transformers' ViT has no such activation"
                    ));
                }
                if c.pooler_act != "tanh" && Activation::parse(&c.pooler_act).is_none() {
                    return bad(format!("pooler_act `{}` is not supported", c.pooler_act));
                }
                if c.pooler_output_size == Some(0) {
                    return bad("pooler_output_size must be positive".into());
                }
            }
            TrunkConfig::Clip(c) => {
                if c.intermediate_size == 0 || c.projection_dim == 0 {
                    return bad("intermediate_size and projection_dim must be positive".into());
                }
                // candle-transformers' CLIP encoder hard-codes both (as every openai/clip-vit-*
                // checkpoint has them).
                if activation != Activation::QuickGelu {
                    return bad(format!(
                        "hidden_act `{act}`: the CLIP encoder (candle-transformers) supports quick_gelu only"
                    ));
                }
                if (eps - 1e-5).abs() > 1e-12 {
                    return bad(format!(
                        "layer_norm_eps {eps}: the CLIP encoder (candle-transformers) uses 1e-5 only"
                    ));
                }
            }
            TrunkConfig::Dinov2(c) => {
                if !(c.mlp_ratio.is_finite() && c.mlp_ratio > 0.0) {
                    return bad(format!("mlp_ratio {} must be positive", c.mlp_ratio));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_fill_missing_fields() {
        let c = TrunkConfig::from_json(
            r#"{"model_type": "clip", "projection_dim": 768, "vision_config": {"patch_size": 16}}"#,
            Path::new("config.json"),
        )
        .unwrap();
        let TrunkConfig::Clip(c) = c else { panic!() };
        assert_eq!(
            (c.hidden_size, c.patch_size, c.projection_dim, c.image_size),
            (768, 16, 768, 224)
        );
        let c = TrunkConfig::from_json(r#"{"model_type": "dinov2"}"#, Path::new("c")).unwrap();
        assert_eq!((c.patch_size(), c.hidden_size()), (14, 768));
    }

    #[test]
    fn wrong_configs_are_typed_errors() {
        for (json, needle) in [
            ("{", "not valid JSON"),
            (r#"{"hidden_size": 8}"#, "no `model_type`"),
            (r#"{"model_type": "bert"}"#, "not a supported trunk"),
            (
                r#"{"model_type": "vit", "hidden_size": 10, "num_attention_heads": 3}"#,
                "multiple",
            ),
            (
                r#"{"model_type": "vit", "hidden_act": "mish"}"#,
                "hidden_act",
            ),
            (
                r#"{"model_type": "dinov2", "hidden_size": "big"}"#,
                "invalid type",
            ),
            (
                r#"{"model_type": "clip_vision_model", "hidden_act": "gelu"}"#,
                "quick_gelu",
            ),
        ] {
            let e = TrunkConfig::from_json(json, Path::new("config.json")).unwrap_err();
            assert!(matches!(e, TrunkError::BadConfig { .. }), "{json}: {e}");
            assert!(e.to_string().contains(needle), "{json}: {e}");
        }
    }
}
