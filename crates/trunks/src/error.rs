//! The crate's error type.

use std::path::PathBuf;

/// Everything that can go wrong when locating, loading or running a trunk, or when writing and
/// reading a feature cache.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TrunkError {
    /// A file the trunk needs (`config.json`, `model.safetensors`) is not there.
    #[error("{}: {what}", .path.display())]
    MissingFile {
        /// The path that was looked up (or the `hf://` reference of the file).
        path: PathBuf,
        /// What was expected there and how to get it.
        what: String,
    },
    /// A `config.json` or `preprocessor_config.json` that cannot describe a supported trunk:
    /// bad JSON, an unknown `model_type`, sizes that do not fit together, an unsupported
    /// activation or resampling filter.
    #[error("{}: {reason}", .path.display())]
    BadConfig {
        /// The config file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A tensor the config calls for is absent from the weights file.
    #[error("{}: tensor `{name}` is missing (the weights do not match config.json)", .path.display())]
    MissingTensor {
        /// The weights file.
        path: PathBuf,
        /// The tensor's name (as transformers' `ViTModel` / `Dinov2Model` / CLIP save it).
        name: String,
    },
    /// A tensor whose shape is not the one the config calls for.
    #[error("{}: tensor `{name}` has shape {got:?}, the config calls for {expected:?}", .path.display())]
    ShapeMismatch {
        /// The weights file.
        path: PathBuf,
        /// The tensor's name.
        name: String,
        /// The shape the config implies.
        expected: Vec<usize>,
        /// The shape in the file.
        got: Vec<usize>,
    },
    /// The weights hold trunk tensors the config does not call for (more layers than
    /// `num_hidden_layers`, another family's keys): the config and the weights disagree.
    #[error("{}: tensor `{name}` is not part of the trunk config.json describes ({count} such tensors)", .path.display())]
    UnexpectedTensor {
        /// The weights file.
        path: PathBuf,
        /// The first such tensor, in sorted order.
        name: String,
        /// How many there are.
        count: usize,
    },
    /// `HF_HUB_OFFLINE` is set (or the Hub cannot be reached) and the file is not in the cache.
    #[error(
        "{reference} is not in the Hugging Face cache {} and the Hub is {why}: download it on a connected machine (same HF_HOME / HF_HUB_CACHE), or copy its `models--…` folder into that cache",
        .cache.display()
    )]
    NotCached {
        /// The `hf://` reference of the file.
        reference: String,
        /// Cache directory that was searched.
        cache: PathBuf,
        /// `offline (HF_HUB_OFFLINE=1)` or `unreachable (…)`.
        why: String,
    },
    /// The Hub answered, but with an error (unknown repository, missing file, no access …), or
    /// a reference that is not a well-formed `hf://owner/name[@revision]`.
    #[error("cannot fetch {reference}: {message}")]
    Hub {
        /// The `hf://` reference.
        reference: String,
        /// hf-hub's message, or what is wrong with the reference.
        message: String,
    },
    /// An input the trunk cannot take: not `[B, 3, H, W]`, a size the trunk's position
    /// embeddings do not cover, a side that is not a multiple of the patch size.
    #[error("bad input for {model}: {reason}")]
    BadInput {
        /// The trunk family.
        model: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// A feature cache file that cannot be read back: not safetensors, no metadata, wrong
    /// tensors.
    #[error("{}: not a usable feature cache: {reason}", .path.display())]
    BadCache {
        /// The cache file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A file could not be read or written.
    #[error("{}: {source}", .path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Expert heads that cannot be built, trained or read: bad sizes, features or labels that
    /// do not fit them, a file that is not a heads checkpoint.
    #[error("heads: {0}")]
    BadHeads(String),
    /// An error of the training engine (config, optimizer, checkpoint, method, metrics).
    #[error(transparent)]
    Train(Box<longtail_train::TrainError>),
    /// An error inside candle (a tensor operation).
    #[error(transparent)]
    Tensor(#[from] candle_core::Error),
}

impl From<longtail_train::TrainError> for TrunkError {
    fn from(e: longtail_train::TrainError) -> Self {
        TrunkError::Train(Box::new(e))
    }
}

/// The crate's result type.
pub type Result<T, E = TrunkError> = std::result::Result<T, E>;

/// An `Io` error for `path`.
pub(crate) fn io(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> TrunkError + '_ {
    move |source| TrunkError::Io {
        path: path.to_path_buf(),
        source,
    }
}
