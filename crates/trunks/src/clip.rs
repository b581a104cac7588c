//! CLIP vision tower with projection (`openai/clip-vit-*`): transformers'
//! `CLIPVisionModelWithProjection`.
//!
//! The encoder blocks are candle-transformers' (`models::clip::text_model::ClipEncoder`, the
//! same computation as transformers' `CLIPEncoder`, checked against
//! `fixtures/hf/clip_vision_tiny_random`). Written here:
//! - the embeddings, because candle-transformers' `ClipVisionEmbeddings` is private and, when
//!   the checkpoint lacks `class_embedding`, silently draws a random one (here a missing tensor
//!   is an error);
//! - the forward pass, because candle-transformers' `ClipVisionTransformer::forward` returns only
//!   the pooled output and `output_hidden_states` keeps every block's output; `last_hidden_state`
//!   is the encoder's output, `pooler_output` the post-LayerNorm CLS token, `image_embeds` its
//!   projection (`visual_projection`, no bias), as in transformers.
//!
//! candle-transformers' encoder fixes the activation to quick_gelu and the LayerNorm epsilon to
//! 1e-5 (what every `openai/clip-vit-*` checkpoint uses); other configs are refused by
//! [`crate::TrunkConfig::check`]. Like transformers without `interpolate_pos_encoding`, the input
//! must be the config's `image_size`.

use candle_core::{IndexOp, Module, Tensor};
use candle_nn::{Conv2d, LayerNorm, Linear, VarBuilder};
use candle_transformers::models::clip::{
    text_model::{Activation as ClipActivation, ClipEncoder},
    vision_model::ClipVisionConfig as CtConfig,
    EncoderConfig,
};

use crate::config::ClipVisionConfig;
use crate::error::{Result, TrunkError};
use crate::vit::bad_rank;
use crate::weights::Manifest;
use crate::TrunkOutput;

/// A CLIP vision trunk.
#[derive(Debug, Clone)]
pub struct ClipVision {
    class_embedding: Tensor,
    patch_embedding: Conv2d,
    /// [1 + N, D].
    position_embedding: Tensor,
    pre_layrnorm: LayerNorm,
    encoder: ClipEncoder,
    post_layernorm: LayerNorm,
    visual_projection: Linear,
    cfg: ClipVisionConfig,
}

impl ClipVision {
    /// Every tensor a `CLIPVisionModelWithProjection` with this config has.
    pub(crate) fn manifest(cfg: &ClipVisionConfig) -> Manifest {
        let (d, i, p) = (cfg.hidden_size, cfg.intermediate_size, cfg.patch_size);
        let n = (cfg.image_size / p) * (cfg.image_size / p);
        let v = "vision_model";
        let mut m: Manifest = vec![
            (format!("{v}.embeddings.class_embedding"), vec![d]),
            (
                format!("{v}.embeddings.patch_embedding.weight"),
                vec![d, cfg.num_channels, p, p],
            ),
            (
                format!("{v}.embeddings.position_embedding.weight"),
                vec![n + 1, d],
            ),
            (format!("{v}.pre_layrnorm.weight"), vec![d]),
            (format!("{v}.pre_layrnorm.bias"), vec![d]),
            (format!("{v}.post_layernorm.weight"), vec![d]),
            (format!("{v}.post_layernorm.bias"), vec![d]),
            (
                "visual_projection.weight".into(),
                vec![cfg.projection_dim, d],
            ),
        ];
        for l in 0..cfg.num_hidden_layers {
            let pre = format!("{v}.encoder.layers.{l}");
            let mut lin = |name: &str, out: usize, inp: usize| {
                m.push((format!("{pre}.{name}.weight"), vec![out, inp]));
                m.push((format!("{pre}.{name}.bias"), vec![out]));
            };
            for proj in ["q_proj", "k_proj", "v_proj", "out_proj"] {
                lin(&format!("self_attn.{proj}"), d, d);
            }
            lin("mlp.fc1", i, d);
            lin("mlp.fc2", d, i);
            for ln in ["layer_norm1", "layer_norm2"] {
                m.push((format!("{pre}.{ln}.weight"), vec![d]));
                m.push((format!("{pre}.{ln}.bias"), vec![d]));
            }
        }
        m
    }

    /// Builds the trunk from checked weights.
    pub(crate) fn new(cfg: &ClipVisionConfig, vb: VarBuilder) -> Result<Self> {
        let (d, p) = (cfg.hidden_size, cfg.patch_size);
        let n = (cfg.image_size / p) * (cfg.image_size / p);
        let v = vb.pp("vision_model");
        let e = v.pp("embeddings");
        let class_embedding = e.get(d, "class_embedding")?;
        let patch_embedding = candle_nn::conv2d_no_bias(
            cfg.num_channels,
            d,
            p,
            candle_nn::Conv2dConfig {
                stride: p,
                ..Default::default()
            },
            e.pp("patch_embedding"),
        )?;
        let position_embedding = e.pp("position_embedding").get((n + 1, d), "weight")?;
        let eps = cfg.layer_norm_eps;
        let pre_layrnorm = candle_nn::layer_norm(d, eps, v.pp("pre_layrnorm"))?;
        let post_layernorm = candle_nn::layer_norm(d, eps, v.pp("post_layernorm"))?;
        let ct = CtConfig {
            embed_dim: d,
            activation: ClipActivation::QuickGelu,
            intermediate_size: cfg.intermediate_size,
            num_hidden_layers: cfg.num_hidden_layers,
            num_attention_heads: cfg.num_attention_heads,
            projection_dim: cfg.projection_dim,
            num_channels: cfg.num_channels,
            image_size: cfg.image_size,
            patch_size: p,
        };
        let encoder = ClipEncoder::new(v.pp("encoder"), &EncoderConfig::Vision(ct))?;
        let visual_projection =
            candle_nn::linear_no_bias(d, cfg.projection_dim, vb.pp("visual_projection"))?;
        Ok(ClipVision {
            class_embedding,
            patch_embedding,
            position_embedding,
            pre_layrnorm,
            encoder,
            post_layernorm,
            visual_projection,
            cfg: cfg.clone(),
        })
    }

    /// The config.
    pub fn config(&self) -> &ClipVisionConfig {
        &self.cfg
    }

    /// `pixels` [B, 3, S, S] → `last_hidden_state` [B, 1 + (S/P)², D] (the encoder's output),
    /// `pooled` = `pooler_output` [B, D] (post-LayerNorm CLS token) and `embeds` =
    /// `image_embeds` [B, projection_dim].
    pub fn forward(&self, pixels: &Tensor) -> Result<TrunkOutput> {
        let (b, c, h, w) = pixels.dims4().map_err(|_| bad_rank(pixels))?;
        let s = self.cfg.image_size;
        if c != self.cfg.num_channels || h != s || w != s {
            return Err(TrunkError::BadInput {
                model: "clip",
                reason: format!(
                    "input is {c}×{h}×{w}, the trunk takes {}×{s}×{s} (CLIP does not interpolate its position embeddings)",
                    self.cfg.num_channels
                ),
            });
        }
        let d = self.cfg.hidden_size;
        let patches = self
            .patch_embedding
            .forward(pixels)?
            .flatten_from(2)?
            .transpose(1, 2)?;
        let cls = self
            .class_embedding
            .reshape((1, 1, d))?
            .broadcast_as((b, 1, d))?
            .to_dtype(patches.dtype())?;
        let x = Tensor::cat(&[&cls, &patches], 1)?.broadcast_add(&self.position_embedding)?;
        let x = self.pre_layrnorm.forward(&x)?;
        let last_hidden_state = self.encoder.forward(&x, None)?;
        let pooled = self
            .post_layernorm
            .forward(&last_hidden_state.i((.., 0, ..))?)?;
        let embeds = self.visual_projection.forward(&pooled)?;
        Ok(TrunkOutput {
            last_hidden_state,
            pooled,
            embeds: Some(embeds),
        })
    }
}
