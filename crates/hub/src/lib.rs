//! Checkpoints from and to the Hugging Face Hub, and from the official PyTorch code bases.
//!
//! One idea: a checkpoint can come from anywhere a user has one (a run directory, an exported
//! folder, `hf://owner/repo`, an official RIDE / SADE / TLC state dict, an ImageNet-pretrained
//! torchvision ResNet) and is checked before any of it is used.
//!
//! Main items:
//! - [`CheckpointRef`] (`parse("hf://owner/repo[@revision][/file.safetensors]")` or a local
//!   path), [`resolve`] / [`resolve_path`] → a local file through the standard Hub cache
//!   (`HF_HOME`, `HF_HUB_CACHE`, `HF_ENDPOINT`; `HF_HUB_OFFLINE=1` reads the cache only),
//!   [`pull`] to pre-fetch, [`HubOptions`];
//! - [`read_checked`]: a safetensors file with its header, offsets and values validated;
//!   [`write_dir_atomic`]: an output folder that appears complete or not at all;
//! - [`export_run`]: run → `model.safetensors` + `config.json` + `README.md` ([`model_card`]);
//! - [`import_file`] / [`infer_backbone`]: official state dicts → our network, architecture read
//!   off the keys and shapes, loaded strictly;
//! - [`load_torchvision_trunk`]: an ImageNet ResNet-50 / ResNeXt-50 / ResNet-152 into a
//!   multi-expert trunk, layer3/layer4 copied into every expert (SADE Places-LT).
//!
//! ```
//! use longtail_hub::{CheckpointRef, HubRef};
//!
//! let r = CheckpointRef::parse("hf://someone/ride-cifar100@v1")?;
//! let CheckpointRef::Hub(HubRef { owner, revision, file, .. }) = r else { unreachable!() };
//! assert_eq!((owner.as_str(), revision.as_deref(), file.as_str()), ("someone", Some("v1"), "model.safetensors"));
//! # Ok::<(), longtail_hub::HubError>(())
//! ```

#![deny(missing_docs)]

mod error;
pub mod export;
pub mod file;
pub mod official;
pub mod reference;
pub mod run;
pub mod torchvision;

pub use error::{HubError, Result};
pub use export::{export_run, model_card, CardOptions, ExportReport, Results};
pub use file::{read_checked, write_dir_atomic, TensorFile};
pub use official::{import_file, import_tensors, infer_backbone, Imported, OfficialMethod};
pub use reference::{
    checkpoint_file, fetch, offline_from_env, pull, resolve, resolve_path, resolve_with,
    CheckpointRef, HubOptions, HubRef, Pulled, CARD_FILE, CONFIG_FILE, MODEL_FILE, SCHEME,
};
pub use run::{import_official, load_checkpoint, ImportOptions, ImportedRun, Presets};
pub use torchvision::{load_torchvision_file, load_torchvision_trunk, TrunkReport};
