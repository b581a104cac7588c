//! Where a trunk comes from: a local folder (`config.json` + `model.safetensors`, optionally
//! `preprocessor_config.json`) or a Hub model repository `hf://owner/name[@revision]`, fetched
//! through the Hugging Face cache (hf-hub 1.0, sync API, as `longtail-hub` and the data crate's
//! Hub reader do).
//!
//! Offline use: [`HubOptions::from_env`] reads `HF_HUB_OFFLINE` (hf-hub 1.0 has no such switch)
//! and asks for no retries; offline, a file not in the cache fails at once with
//! [`TrunkError::NotCached`]. Online, an unreachable Hub falls back to a cached copy at once.

use std::fmt;
use std::path::{Component, Path, PathBuf};

use hf_hub::{HFClient, HFError};

use crate::error::{Result, TrunkError};

/// How the Hub is reached: the project's one settings type (`HF_HUB_OFFLINE`, endpoint, cache
/// directory, retries), shared with the data crate's Hub reader and `longtail-hub`.
pub use longtail_data::readers::hub::HubDataOptions as HubOptions;

/// Scheme of a Hub reference.
pub const SCHEME: &str = "hf://";
/// The config file.
pub const CONFIG_FILE: &str = "config.json";
/// The weights file.
pub const MODEL_FILE: &str = "model.safetensors";
/// The image processor's config (optional).
pub const PREPROCESSOR_FILE: &str = "preprocessor_config.json";

/// A trunk's location.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TrunkRef {
    /// A folder holding [`CONFIG_FILE`] and [`MODEL_FILE`].
    Local(PathBuf),
    /// A model repository on the Hub.
    Hub {
        /// `owner/name`.
        repo: String,
        /// Branch, tag or commit; `None` is `main`.
        revision: Option<String>,
    },
}

/// Hub names: letters, digits, `-`, `_`, `.`; not empty, not `.`/`..`.
fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s != "."
        && s != ".."
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

impl TrunkRef {
    /// Parses `hf://owner/name[@revision]` (e.g. `hf://facebook/dinov2-small`), or anything
    /// else as a local folder.
    pub fn parse(s: &str) -> Result<Self> {
        let Some(rest) = s.strip_prefix(SCHEME) else {
            return Ok(TrunkRef::Local(PathBuf::from(s)));
        };
        let bad = |why: &str| TrunkError::Hub {
            reference: s.to_string(),
            message: format!("{why} (expected hf://owner/name[@revision])"),
        };
        let (owner, name_rev) = rest.split_once('/').ok_or_else(|| bad("no model name"))?;
        let (name, revision) = match name_rev.split_once('@') {
            Some((n, r)) => (n, Some(r)),
            None => (name_rev, None),
        };
        if !valid_name(owner) || !valid_name(name) {
            return Err(bad("bad owner or model name"));
        }
        if revision.is_some_and(|r| !valid_name(r)) {
            return Err(bad("bad revision"));
        }
        Ok(TrunkRef::Hub {
            repo: format!("{owner}/{name}"),
            revision: revision.map(String::from),
        })
    }

    /// A Hub model by id (`facebook/dinov2-small`), at `main`.
    pub fn hub(repo: &str) -> Result<Self> {
        Self::parse(&format!("{SCHEME}{repo}"))
    }
}

impl fmt::Display for TrunkRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TrunkRef::Local(p) => write!(f, "{}", p.display()),
            TrunkRef::Hub { repo, revision } => {
                write!(f, "{SCHEME}{repo}")?;
                if let Some(r) = revision {
                    write!(f, "@{r}")?;
                }
                Ok(())
            }
        }
    }
}

/// Short names of the usual trunks, for preset names (`ride.cifar100-lt.clip-b16`) and
/// `--backbone`: `(alias, hf:// reference)`.
pub const ALIASES: &[(&str, &str)] = &[
    ("vit-b16", "hf://google/vit-base-patch16-224-in21k"),
    ("vit-l16", "hf://google/vit-large-patch16-224-in21k"),
    ("clip-b16", "hf://openai/clip-vit-base-patch16"),
    ("clip-l14", "hf://openai/clip-vit-large-patch14"),
    ("dinov2-s", "hf://facebook/dinov2-small"),
    ("dinov2-b", "hf://facebook/dinov2-base"),
    ("dinov2-l", "hf://facebook/dinov2-large"),
];

/// The `hf://` reference of an alias of [`ALIASES`] (`dinov2-s` → `hf://facebook/dinov2-small`).
pub fn alias(name: &str) -> Option<&'static str> {
    ALIASES.iter().find(|(a, _)| *a == name).map(|(_, r)| *r)
}

/// The files of a trunk on this machine, and what identifies them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrunkFiles {
    /// `config.json`.
    pub config: PathBuf,
    /// `model.safetensors`.
    pub model: PathBuf,
    /// `preprocessor_config.json`, when the model has one.
    pub preprocessor: Option<PathBuf>,
    /// The trunk's id: `hf://owner/name` for the Hub (without the revision), the canonical folder
    /// path for a local trunk.
    pub id: String,
    /// The commit the Hub cache resolved (40 hex digits), or for a local folder
    /// `blake3:<hash of config.json and model.safetensors>`.
    pub revision: String,
}

/// `owner/name`'s `file` in `repo`, from the cache or the Hub.
fn fetch(repo: &str, revision: Option<&str>, file: &str, opts: &HubOptions) -> Result<PathBuf> {
    let shown = match revision {
        Some(r) => format!("{SCHEME}{repo}@{r}/{file}"),
        None => format!("{SCHEME}{repo}/{file}"),
    };
    let hub_error = |message: String| TrunkError::Hub {
        reference: shown.clone(),
        message: format!(
            "{} (at {})",
            message.replace('\n', " "),
            opts.endpoint_name()
        ),
    };
    let (owner, name) = repo
        .split_once('/')
        .ok_or_else(|| hub_error("expected owner/name".into()))?;
    let mut b = HFClient::builder()
        .cache_dir(opts.cache())
        .retry_max_attempts(opts.retries);
    if let Some(e) = &opts.endpoint {
        b = b.endpoint(e.clone());
    }
    let client = b.build_sync().map_err(|e| hub_error(e.to_string()))?;
    let result = client
        .model(owner.to_string(), name.to_string())
        .download_file()
        .filename(file.to_string())
        .maybe_revision(revision.map(String::from))
        .local_files_only(opts.offline)
        .send();
    let path = result.map_err(|e| match e {
        HFError::LocalEntryNotFound { .. } => TrunkError::NotCached {
            reference: shown.clone(),
            cache: opts.cache(),
            why: "offline (HF_HUB_OFFLINE=1)".into(),
        },
        HFError::Request { .. } => TrunkError::NotCached {
            reference: shown.clone(),
            cache: opts.cache(),
            why: format!(
                "unreachable at {} ({})",
                opts.endpoint_name(),
                e.to_string().replace('\n', " ")
            ),
        },
        other => hub_error(other.to_string()),
    })?;
    // hf-hub builds the path from the cached refs file without checking it (see
    // longtail-hub's `fetch`): refuse one that leads outside the cache.
    let inside = path
        .strip_prefix(opts.cache())
        .is_ok_and(|rest| rest.components().all(|c| matches!(c, Component::Normal(_))));
    if !inside {
        return Err(hub_error(format!(
            "the cache resolves it to {}, outside the cache {} (a corrupt refs/{} file?)",
            path.display(),
            opts.cache().display(),
            revision.unwrap_or("main")
        )));
    }
    Ok(path)
}

/// The commit of a snapshot path `<cache>/models--o--n/snapshots/<commit>/<file>`.
fn snapshot_commit(path: &Path) -> Option<String> {
    let snap = path.parent()?;
    (snap.parent()?.file_name()? == "snapshots")
        .then(|| snap.file_name()?.to_str().map(String::from))
        .flatten()
}

/// A blake3 hash of files, streamed.
pub(crate) fn hash_files(paths: &[&Path]) -> Result<String> {
    let mut h = blake3::Hasher::new();
    for p in paths {
        let f = std::fs::File::open(p).map_err(crate::error::io(p))?;
        h.update_reader(f).map_err(crate::error::io(p))?;
        // A separator, so that moving bytes between files changes the hash.
        h.update(b"\0file\0");
    }
    Ok(format!("blake3:{}", h.finalize().to_hex()))
}

/// Finds (and for the Hub, downloads or reads from the cache) a trunk's files.
pub fn locate(reference: &TrunkRef, opts: &HubOptions) -> Result<TrunkFiles> {
    match reference {
        TrunkRef::Local(dir) => {
            if !dir.is_dir() {
                let s = dir.to_string_lossy();
                let looks_like_id = s.matches('/').count() == 1
                    && !s.starts_with(['.', '/'])
                    && s.split('/').all(valid_name);
                let what = if looks_like_id {
                    format!("no such folder; for a Hub model write {SCHEME}{s}")
                } else {
                    "no such folder (a trunk folder holds config.json and model.safetensors)".into()
                };
                return Err(TrunkError::MissingFile {
                    path: dir.clone(),
                    what,
                });
            }
            let dir = dir.canonicalize().map_err(crate::error::io(dir))?;
            let config = dir.join(CONFIG_FILE);
            let model = dir.join(MODEL_FILE);
            for (p, what) in [
                (&config, "no config.json in the trunk folder"),
                (&model, "no model.safetensors in the trunk folder"),
            ] {
                if !p.is_file() {
                    return Err(TrunkError::MissingFile {
                        path: p.clone(),
                        what: what.into(),
                    });
                }
            }
            let pre = dir.join(PREPROCESSOR_FILE);
            let revision = hash_files(&[&config, &model])?;
            Ok(TrunkFiles {
                config,
                model,
                preprocessor: pre.is_file().then_some(pre),
                id: dir.display().to_string(),
                revision,
            })
        }
        TrunkRef::Hub { repo, revision } => {
            let rev = revision.as_deref();
            let config = fetch(repo, rev, CONFIG_FILE, opts)?;
            let model = fetch(repo, rev, MODEL_FILE, opts)?;
            // Optional: a repository without one (or a cache without it) uses the family's
            // defaults.
            let preprocessor = match fetch(repo, rev, PREPROCESSOR_FILE, opts) {
                Ok(p) => Some(p),
                Err(TrunkError::NotCached { .. }) | Err(TrunkError::Hub { .. }) => None,
                Err(e) => return Err(e),
            };
            let commit = snapshot_commit(&model).unwrap_or_else(|| rev.unwrap_or("main").into());
            Ok(TrunkFiles {
                config,
                model,
                preprocessor,
                id: format!("{SCHEME}{repo}"),
                revision: commit,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_references() {
        assert_eq!(
            TrunkRef::parse("hf://facebook/dinov2-small@main").unwrap(),
            TrunkRef::Hub {
                repo: "facebook/dinov2-small".into(),
                revision: Some("main".into())
            }
        );
        assert_eq!(
            TrunkRef::hub("google/vit-base-patch16-224")
                .unwrap()
                .to_string(),
            "hf://google/vit-base-patch16-224"
        );
        assert_eq!(
            TrunkRef::parse("models/vit").unwrap(),
            TrunkRef::Local("models/vit".into())
        );
        for bad in [
            "hf://",
            "hf://x",
            "hf://x/",
            "hf://a/b@",
            "hf://a/b/c",
            "hf://a b/c",
        ] {
            assert!(
                matches!(TrunkRef::parse(bad), Err(TrunkError::Hub { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn a_bare_hub_id_gets_a_hint() {
        let e = locate(
            &TrunkRef::parse("someone/some-trunk").unwrap(),
            &HubOptions::from_env(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("hf://someone/some-trunk"), "{e}");
    }

    #[test]
    fn snapshot_commits_come_from_the_path() {
        assert_eq!(
            snapshot_commit(Path::new("/c/models--a--b/snapshots/abc123/config.json")).as_deref(),
            Some("abc123")
        );
        assert_eq!(snapshot_commit(Path::new("/x/y/config.json")), None);
    }
}
