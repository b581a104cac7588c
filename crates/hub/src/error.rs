//! The crate's error type.

use std::path::PathBuf;

/// Everything that can go wrong when resolving, reading, importing or exporting a checkpoint.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HubError {
    /// A `--checkpoint` string that is neither a usable local path nor a well-formed `hf://` id.
    #[error("bad checkpoint reference `{reference}`: {reason}")]
    BadReference {
        /// What was given.
        reference: String,
        /// What is wrong and what to type instead.
        reason: String,
    },
    /// `HF_HUB_OFFLINE` is set (or the Hub cannot be reached) and the file is not in the cache.
    #[error(
        "{reference} is not in the Hugging Face cache {} and the Hub is {why}: run `longtail pull {reference}` on a connected machine (same HF_HOME / HF_HUB_CACHE), or copy its `models--…` folder into that cache",
        .cache.display()
    )]
    NotCached {
        /// The `hf://` reference.
        reference: String,
        /// Cache directory that was searched.
        cache: PathBuf,
        /// `offline (HF_HUB_OFFLINE=1)` or `unreachable (…)`.
        why: String,
    },
    /// The Hub answered, but with an error (unknown repo, missing file, no access …).
    #[error("cannot fetch {reference} from {endpoint}: {message}")]
    Hub {
        /// The `hf://` reference.
        reference: String,
        /// Endpoint that was asked.
        endpoint: String,
        /// hf-hub's message.
        message: String,
    },
    /// A file or directory that should exist does not.
    #[error("{}: {what}", .path.display())]
    NotFound {
        /// Path that was looked up.
        path: PathBuf,
        /// What was expected there.
        what: String,
    },
    /// A file is not valid safetensors: truncated, a header that lies about sizes or offsets,
    /// bad JSON.
    #[error("{} is not a valid safetensors file: {reason}", .path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A weight tensor holds NaN or infinite values.
    #[error("{}: tensor `{name}` has {count} NaN or infinite values", .path.display())]
    NonFinite {
        /// The file.
        path: PathBuf,
        /// Tensor name.
        name: String,
        /// How many values are not finite.
        count: usize,
    },
    /// A state dict whose keys do not form any network this tool can build.
    #[error("{}: cannot recognise the network: {reason}", .path.display())]
    Layout {
        /// The file.
        path: PathBuf,
        /// What was found or missing.
        reason: String,
    },
    /// A state dict that does not match the expected network (keys, shapes, class count).
    #[error("{}: {reason}", .path.display())]
    Mismatch {
        /// The file.
        path: PathBuf,
        /// The missing / unexpected keys and wrong shapes, or the conflicting class count.
        reason: String,
    },
    /// A run directory or checkpoint without what export needs.
    #[error("{}: {reason}", .path.display())]
    NotARun {
        /// The path given.
        path: PathBuf,
        /// What is missing.
        reason: String,
    },
    /// The output directory exists and is not empty; nothing was written.
    #[error("{} already exists and is not empty: choose another directory or remove it (nothing was written)", .path.display())]
    OutputExists {
        /// The output directory.
        path: PathBuf,
    },
    /// An option that cannot be used as given (a model card field that would break its YAML).
    #[error("invalid {name} `{value}`: {reason}")]
    BadOption {
        /// The option (`--license`).
        name: &'static str,
        /// What was given, with control characters escaped (`mit\nfoo`).
        value: String,
        /// What is accepted.
        reason: String,
    },
    /// A file system operation failed.
    #[error("{}: {source}", .path.display())]
    Io {
        /// Path involved.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
    /// A backbone could not be built or loaded.
    #[error(transparent)]
    Backbone(#[from] longtail_backbone::BackboneError),
    /// The engine failed (reading a checkpoint, the run config, the data).
    #[error(transparent)]
    Train(#[from] longtail_train::TrainError),
    /// A tensor operation failed.
    #[error(transparent)]
    Tensor(#[from] candle_core::Error),
}

impl HubError {
    /// An [`HubError::Io`] for `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        HubError::Io {
            path: path.into(),
            source,
        }
    }
}

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, HubError>;
