//! ViT (`google/vit-*`): transformers' `ViTModel`.
//!
//! The patch and position embeddings and the encoder blocks are candle-transformers'
//! (`models::vit::{Embeddings, Encoder}`: the same computation as transformers' `ViTEmbeddings`
//! and `ViTEncoder`, checked against `fixtures/hf/vit_tiny_random`). Written here: the final
//! LayerNorm over every token and the pooler, because candle-transformers' `vit::Model` is the
//! image classifier (LayerNorm of the CLS token only, then its `classifier`) and has no pooler.
//!
//! Like `ViTModel` without `interpolate_pos_encoding`, the input must be the config's
//! `image_size` (candle-transformers leaves position interpolation unimplemented).

use candle_core::{IndexOp, Module, Tensor};
use candle_nn::{LayerNorm, Linear, VarBuilder};
use candle_transformers::models::vit as ct;

use crate::config::{Activation, VitConfig};
use crate::error::{Result, TrunkError};
use crate::weights::Manifest;
use crate::TrunkOutput;

/// A ViT trunk.
#[derive(Debug, Clone)]
pub struct Vit {
    embeddings: ct::Embeddings,
    encoder: ct::Encoder,
    layernorm: LayerNorm,
    /// `pooler.dense` and its activation (`None`: tanh); `None` when the checkpoint has no
    /// pooler.
    pooler: Option<(Linear, Option<Activation>)>,
    cfg: VitConfig,
}

/// The pooler's output width.
fn pooler_size(cfg: &VitConfig) -> usize {
    cfg.pooler_output_size.unwrap_or(cfg.hidden_size)
}

impl Vit {
    /// Every tensor a `ViTModel` with this config has (transformers 4 names), the pooler
    /// included.
    pub(crate) fn manifest(cfg: &VitConfig) -> Manifest {
        let (d, i, p) = (cfg.hidden_size, cfg.intermediate_size, cfg.patch_size);
        let n = (cfg.image_size / p) * (cfg.image_size / p);
        let mut m: Manifest = vec![
            ("embeddings.cls_token".into(), vec![1, 1, d]),
            ("embeddings.position_embeddings".into(), vec![1, n + 1, d]),
            (
                "embeddings.patch_embeddings.projection.weight".into(),
                vec![d, cfg.num_channels, p, p],
            ),
            (
                "embeddings.patch_embeddings.projection.bias".into(),
                vec![d],
            ),
            ("layernorm.weight".into(), vec![d]),
            ("layernorm.bias".into(), vec![d]),
            ("pooler.dense.weight".into(), vec![pooler_size(cfg), d]),
            ("pooler.dense.bias".into(), vec![pooler_size(cfg)]),
        ];
        for l in 0..cfg.num_hidden_layers {
            let pre = format!("encoder.layer.{l}");
            let mut lin = |name: &str, out: usize, inp: usize, bias: bool| {
                m.push((format!("{pre}.{name}.weight"), vec![out, inp]));
                if bias {
                    m.push((format!("{pre}.{name}.bias"), vec![out]));
                }
            };
            for qkv in ["query", "key", "value"] {
                lin(&format!("attention.attention.{qkv}"), d, d, cfg.qkv_bias);
            }
            lin("attention.output.dense", d, d, true);
            lin("intermediate.dense", i, d, true);
            lin("output.dense", d, i, true);
            for ln in ["layernorm_before", "layernorm_after"] {
                m.push((format!("{pre}.{ln}.weight"), vec![d]));
                m.push((format!("{pre}.{ln}.bias"), vec![d]));
            }
        }
        m
    }

    /// The pooler's tensors, which a checkpoint may lack (`ViTForImageClassification` saves
    /// none).
    pub(crate) const OPTIONAL: [&'static str; 2] = ["pooler.dense.weight", "pooler.dense.bias"];

    /// Builds the trunk from checked weights.
    pub(crate) fn new(cfg: &VitConfig, vb: VarBuilder) -> Result<Self> {
        let act = Activation::parse(&cfg.hidden_act).and_then(Activation::to_candle);
        let ct_cfg = ct::Config {
            hidden_size: cfg.hidden_size,
            num_hidden_layers: cfg.num_hidden_layers,
            num_attention_heads: cfg.num_attention_heads,
            intermediate_size: cfg.intermediate_size,
            hidden_act: act.unwrap_or(candle_nn::Activation::Gelu),
            layer_norm_eps: cfg.layer_norm_eps,
            image_size: cfg.image_size,
            patch_size: cfg.patch_size,
            num_channels: cfg.num_channels,
            qkv_bias: cfg.qkv_bias,
        };
        let embeddings = ct::Embeddings::new(&ct_cfg, false, vb.pp("embeddings"))?;
        let encoder = ct::Encoder::new(&ct_cfg, vb.pp("encoder"))?;
        let layernorm =
            candle_nn::layer_norm(cfg.hidden_size, cfg.layer_norm_eps, vb.pp("layernorm"))?;
        let pooler = if vb.contains_tensor("pooler.dense.weight") {
            // `check` accepted `tanh` or an activation `Activation::parse` knows.
            let act = Activation::parse(&cfg.pooler_act);
            let dense =
                candle_nn::linear(cfg.hidden_size, pooler_size(cfg), vb.pp("pooler.dense"))?;
            Some((dense, act))
        } else {
            None
        };
        Ok(Vit {
            embeddings,
            encoder,
            layernorm,
            pooler,
            cfg: cfg.clone(),
        })
    }

    /// The config.
    pub fn config(&self) -> &VitConfig {
        &self.cfg
    }

    /// Whether the checkpoint had a pooler.
    pub fn has_pooler(&self) -> bool {
        self.pooler.is_some()
    }

    /// Width of `pooled`.
    pub fn pooled_dim(&self) -> usize {
        if self.pooler.is_some() {
            pooler_size(&self.cfg)
        } else {
            self.cfg.hidden_size
        }
    }

    /// `pixels` [B, 3, S, S] (S = `image_size`) → `last_hidden_state` [B, 1 + (S/P)², D] (after
    /// the final LayerNorm) and `pooled` = `pooler_output` = act(dense(last_hidden_state[:, 0])).
    ///
    /// Without a pooler in the checkpoint, `pooled` is `last_hidden_state[:, 0]` (what
    /// `ViTForImageClassification` classifies); transformers would instead initialise a random
    /// pooler.
    pub fn forward(&self, pixels: &Tensor) -> Result<TrunkOutput> {
        let (_, c, h, w) = pixels.dims4().map_err(|_| bad_rank(pixels))?;
        let s = self.cfg.image_size;
        if c != self.cfg.num_channels || h != s || w != s {
            return Err(TrunkError::BadInput {
                model: "vit",
                reason: format!(
                    "input is {c}×{h}×{w}, the trunk takes {}×{s}×{s} (ViT does not interpolate its position embeddings)",
                    self.cfg.num_channels
                ),
            });
        }
        let x = self.embeddings.forward(pixels, None, false)?;
        let x = self.encoder.forward(&x)?;
        let last_hidden_state = self.layernorm.forward(&x)?;
        let cls = last_hidden_state.i((.., 0, ..))?;
        let pooled = match &self.pooler {
            Some((dense, act)) => {
                let y = dense.forward(&cls)?;
                match act {
                    Some(a) => a.apply(&y)?,
                    None => y.tanh()?,
                }
            }
            None => cls,
        };
        Ok(TrunkOutput {
            last_hidden_state,
            pooled,
            embeds: None,
        })
    }
}

/// The error for an input that is not 4-D.
pub(crate) fn bad_rank(pixels: &Tensor) -> TrunkError {
    TrunkError::BadInput {
        model: "trunk",
        reason: format!(
            "expected [B, 3, H, W] pixels, got shape {:?}",
            pixels.dims()
        ),
    }
}
