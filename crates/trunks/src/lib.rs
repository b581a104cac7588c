//! Pretrained foundation trunks in Hugging Face format, one idea: a frozen image encoder from the
//! Hub (or a folder) that turns images into features for light multi-expert heads.
//!
//! - [`Trunk`]: ViT (`google/vit-*`, transformers' `ViTModel`), the CLIP vision tower with its
//!   projection (`openai/clip-vit-*`, `CLIPVisionModelWithProjection`) and DINOv2
//!   (`facebook/dinov2-*`, `Dinov2Model`, position embeddings interpolated bicubically to the
//!   input). [`Trunk::forward`] gives a [`TrunkOutput`]: `last_hidden_state`, the pooled
//!   feature (`pooler_output`) and CLIP's `image_embeds`. The encoders of ViT and CLIP are
//!   candle-transformers'; what it lacks is written here, and each module says why.
//! - [`PretrainedTrunk::load`]: from a folder (`config.json` + `model.safetensors`) or
//!   `hf://owner/name[@revision]` through the Hugging Face cache ([`HubOptions`],
//!   `HF_HUB_OFFLINE`), with its [`Preprocess`] read from `preprocessor_config.json`.
//! - [`cache`]: [`extract_features`] streams a data set's features to a safetensors file whose
//!   metadata names the trunk, its revision, the preprocessing and the data's fingerprint, and
//!   reuses the file while they match.
//! - [`heads`]: [`ExpertHeads`], E light heads (cosine or linear, optionally a residual adapter
//!   each) over the trunk feature with the backbone's `ExpertOutput`, so that every registered
//!   method's loss trains them; [`train_heads`] over a [`FeatureSet`], [`evaluate_heads`]
//!   (many / medium / few, every expert), [`save_heads`] / [`load_heads`].
//!
//! ```no_run
//! use longtail_trunks::{PretrainedTrunk, LoadOptions, TrunkRef};
//! let trunk = PretrainedTrunk::load(&TrunkRef::parse("hf://facebook/dinov2-small")?, &LoadOptions::default())?;
//! let images = vec![0u8; 2 * 32 * 32 * 3]; // two 32×32 RGB images, HWC
//! let x = trunk.preprocess.apply(&images, (32, 32, 3), &trunk.device)?;
//! let out = trunk.trunk.forward(&x)?;
//! assert_eq!(out.pooled.dims(), &[2, trunk.trunk.feature_dim()]);
//! # Ok::<(), longtail_trunks::TrunkError>(())
//! ```
#![deny(missing_docs)]

pub mod cache;
pub mod clip;
pub mod config;
pub mod dinov2;
pub mod error;
pub mod heads;
pub mod preprocess;
pub mod source;
pub mod vit;
mod weights;

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};

pub use cache::{
    extract_features, read_features, CacheStatus, CachedFeatures, ExtractOptions, FeatureKind,
    ImageBatch, ImageSource,
};
pub use clip::ClipVision;
pub use config::{Activation, ClipVisionConfig, Dinov2Config, Family, TrunkConfig, VitConfig};
pub use dinov2::Dinov2;
pub use error::{Result, TrunkError};
pub use heads::{
    evaluate_heads, init_heads, load_heads, save_heads, train_heads, ExpertHeads, FeatureSet,
    HeadClassifier, HeadsConfig, HeadsEpoch, HeadsFit, LoadedHeads,
};
pub use preprocess::{Preprocess, Resample, Resize};
pub use source::{alias, locate, HubOptions, TrunkFiles, TrunkRef, ALIASES};
pub use vit::Vit;

use weights::Weights;

/// What a trunk returns for a batch.
#[derive(Clone, Debug)]
pub struct TrunkOutput {
    /// Every token after the last block, [B, 1 + patches, D] (transformers'
    /// `last_hidden_state`).
    pub last_hidden_state: Tensor,
    /// One vector per image, [B, [`Trunk::feature_dim`]]: transformers' `pooler_output` (ViT:
    /// the pooler on the CLS token; CLIP: the post-LayerNorm CLS token; DINOv2: the CLS token).
    pub pooled: Tensor,
    /// CLIP's `image_embeds` [B, projection_dim] (the projected pooled feature); `None` for the
    /// others.
    pub embeds: Option<Tensor>,
}

/// A trunk of one of the three families.
#[derive(Clone, Debug)]
pub enum Trunk {
    /// ViT.
    Vit(Vit),
    /// CLIP vision tower with projection.
    Clip(ClipVision),
    /// DINOv2.
    Dinov2(Dinov2),
}

impl Trunk {
    /// Builds the trunk for `cfg` from a state dict with transformers' key names (either
    /// spelling, see the `weights` module), checking every tensor's presence and shape first.
    /// `path` names the weights in errors.
    pub fn from_tensors(
        cfg: &TrunkConfig,
        tensors: HashMap<String, Tensor>,
        path: &std::path::Path,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let family = cfg.family();
        let mut canonical = HashMap::with_capacity(tensors.len());
        for (k, t) in tensors {
            if let Some(name) = weights::canonical(family, &k) {
                let t = if t.dtype() == dtype {
                    t
                } else {
                    t.to_dtype(dtype)?
                };
                canonical.insert(name, t.to_device(device)?);
            }
        }
        Self::build(
            cfg,
            Weights {
                path: path.to_path_buf(),
                tensors: canonical,
            },
            dtype,
            device,
        )
    }

    /// Reads `model` (safetensors) and builds the trunk for `cfg`.
    pub fn from_file(
        cfg: &TrunkConfig,
        model: &std::path::Path,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let w = Weights::load(model, cfg.family(), dtype, device)?;
        Self::build(cfg, w, dtype, device)
    }

    /// A trunk for `cfg` with random weights (N(0, 0.02²), LayerNorms at identity): the real
    /// size and speed, for benchmarks and tests.
    pub fn random(cfg: &TrunkConfig, dtype: DType, device: &Device) -> Result<Self> {
        let manifest = Self::manifest(cfg);
        let tensors = weights::random(&manifest, dtype, device)?;
        Self::build(
            cfg,
            Weights {
                path: "<random>".into(),
                tensors,
            },
            dtype,
            device,
        )
    }

    /// Every tensor name (transformers 4 spelling) and shape the config calls for.
    pub fn manifest(cfg: &TrunkConfig) -> Vec<(String, Vec<usize>)> {
        match cfg {
            TrunkConfig::Vit(c) => Vit::manifest(c),
            TrunkConfig::Clip(c) => ClipVision::manifest(c),
            TrunkConfig::Dinov2(c) => Dinov2::manifest(c),
        }
    }

    fn build(cfg: &TrunkConfig, w: Weights, dtype: DType, device: &Device) -> Result<Self> {
        let manifest = Self::manifest(cfg);
        Ok(match cfg {
            TrunkConfig::Vit(c) => {
                // A pooler is optional, but then both of its tensors are absent.
                let optional: &[&str] = if w.has(Vit::OPTIONAL[0]) || w.has(Vit::OPTIONAL[1]) {
                    &[]
                } else {
                    &Vit::OPTIONAL
                };
                w.check(&manifest, optional)?;
                Trunk::Vit(Vit::new(c, w.into_var_builder(dtype, device))?)
            }
            TrunkConfig::Clip(c) => {
                w.check(&manifest, &[])?;
                Trunk::Clip(ClipVision::new(c, w.into_var_builder(dtype, device))?)
            }
            TrunkConfig::Dinov2(c) => {
                w.check(&manifest, &[])?;
                Trunk::Dinov2(Dinov2::new(c, w.into_var_builder(dtype, device))?)
            }
        })
    }

    /// `pixels` [B, 3, H, W], preprocessed → the trunk's outputs (eval mode: no dropout).
    pub fn forward(&self, pixels: &Tensor) -> Result<TrunkOutput> {
        match self {
            Trunk::Vit(m) => m.forward(pixels),
            Trunk::Clip(m) => m.forward(pixels),
            Trunk::Dinov2(m) => m.forward(pixels),
        }
    }

    /// Width of [`TrunkOutput::pooled`], the feature a head reads.
    pub fn feature_dim(&self) -> usize {
        match self {
            Trunk::Vit(m) => m.pooled_dim(),
            Trunk::Clip(m) => m.config().hidden_size,
            Trunk::Dinov2(m) => m.config().hidden_size,
        }
    }

    /// Width of [`TrunkOutput::embeds`] (CLIP's projection), if the trunk has one.
    pub fn embed_dim(&self) -> Option<usize> {
        match self {
            Trunk::Clip(m) => Some(m.config().projection_dim),
            _ => None,
        }
    }

    /// Width of the tokens in `last_hidden_state`.
    pub fn hidden_size(&self) -> usize {
        match self {
            Trunk::Vit(m) => m.config().hidden_size,
            Trunk::Clip(m) => m.config().hidden_size,
            Trunk::Dinov2(m) => m.config().hidden_size,
        }
    }

    /// The family.
    pub fn family(&self) -> Family {
        match self {
            Trunk::Vit(_) => Family::Vit,
            Trunk::Clip(_) => Family::Clip,
            Trunk::Dinov2(_) => Family::Dinov2,
        }
    }
}

/// How a trunk is loaded.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// The Hub settings (offline, cache directory, endpoint, retries).
    pub hub: HubOptions,
    /// Where the trunk runs.
    pub device: Device,
    /// The weights' and activations' dtype (F32 on the CPU).
    pub dtype: DType,
}

impl Default for LoadOptions {
    /// The Hub settings from the environment, F32 on the CPU.
    fn default() -> Self {
        LoadOptions {
            hub: HubOptions::from_env(),
            device: Device::Cpu,
            dtype: DType::F32,
        }
    }
}

/// A trunk with its config, preprocessing and provenance.
#[derive(Clone, Debug)]
pub struct PretrainedTrunk {
    /// The network.
    pub trunk: Trunk,
    /// Its config.
    pub config: TrunkConfig,
    /// How images are prepared for it.
    pub preprocess: Preprocess,
    /// Where its files are and what identifies them.
    pub files: TrunkFiles,
    /// The device it runs on.
    pub device: Device,
}

impl PretrainedTrunk {
    /// Locates the trunk's files ([`locate`]), reads its config and weights, and its
    /// preprocessing from `preprocessor_config.json` (else [`Preprocess::defaults`]).
    pub fn load(reference: &TrunkRef, opts: &LoadOptions) -> Result<Self> {
        let files = locate(reference, &opts.hub)?;
        Self::from_files(files, opts)
    }

    /// [`PretrainedTrunk::load`] for files already located.
    pub fn from_files(files: TrunkFiles, opts: &LoadOptions) -> Result<Self> {
        let config = TrunkConfig::from_file(&files.config)?;
        let preprocess = match &files.preprocessor {
            Some(p) => Preprocess::from_file(p, &config)?,
            None => Preprocess::defaults(&config),
        };
        let trunk = Trunk::from_file(&config, &files.model, opts.dtype, &opts.device)?;
        Ok(PretrainedTrunk {
            trunk,
            config,
            preprocess,
            files,
            device: opts.device.clone(),
        })
    }

    /// Preprocesses `n` u8 HWC images of one size and runs the trunk on them.
    pub fn forward_images(
        &self,
        pixels: &[u8],
        shape: (usize, usize, usize),
    ) -> Result<TrunkOutput> {
        let x = self.preprocess.apply(pixels, shape, &self.device)?;
        self.trunk.forward(&x)
    }
}
