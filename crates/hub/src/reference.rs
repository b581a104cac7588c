//! Checkpoint references: a local path or `hf://owner/repo[@revision][/file.safetensors]`,
//! resolved to a local file through the Hugging Face cache (hf-hub 1.0, sync API).

use std::fmt;
use std::path::{Component, Path, PathBuf};
use std::str::FromStr;

use hf_hub::{HFClient, HFClientSync, HFError};

use crate::error::{HubError, Result};

/// Scheme of a Hub reference.
pub const SCHEME: &str = "hf://";
/// File a Hub reference names when it names none: what `longtail export` writes.
pub const MODEL_FILE: &str = "model.safetensors";
/// The JSON config written beside [`MODEL_FILE`].
pub const CONFIG_FILE: &str = "config.json";
/// The model card written beside [`MODEL_FILE`].
pub const CARD_FILE: &str = "README.md";

/// A model repository file on the Hub.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HubRef {
    /// User or organisation.
    pub owner: String,
    /// Repository name.
    pub repo: String,
    /// Branch, tag or commit; `None` is `main`.
    pub revision: Option<String>,
    /// Path of the file inside the repository ([`MODEL_FILE`] by default).
    pub file: String,
}

impl HubRef {
    /// `owner/repo`.
    pub fn repo_id(&self) -> String {
        format!("{}/{}", self.owner, self.repo)
    }

    /// The same repository and revision, another file.
    pub fn with_file(&self, file: &str) -> HubRef {
        HubRef {
            file: file.to_string(),
            ..self.clone()
        }
    }
}

impl fmt::Display for HubRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{SCHEME}{}/{}", self.owner, self.repo)?;
        if let Some(r) = &self.revision {
            write!(f, "@{r}")?;
        }
        if self.file != MODEL_FILE {
            write!(f, "/{}", self.file)?;
        }
        Ok(())
    }
}

/// What `--checkpoint` names: a local file or directory, or a file on the Hub.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CheckpointRef {
    /// A checkpoint file, a run directory or an exported model directory.
    Local(PathBuf),
    /// `hf://owner/repo[@revision][/file.safetensors]`.
    Hub(HubRef),
}

/// Hub names: letters, digits, `-`, `_`, `.`; not empty, not `.`/`..` (the Hub's own rule,
/// minus length limits).
fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s != "."
        && s != ".."
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

impl CheckpointRef {
    /// Parses `hf://owner/repo[@revision][/path/in/repo.safetensors]`, or anything else as a
    /// local path.
    ///
    /// The revision runs up to the next `/` (a branch, tag or 40-hex commit; `refs/pr/N` is not
    /// supported). The file defaults to [`MODEL_FILE`].
    pub fn parse(s: &str) -> Result<Self> {
        let Some(rest) = s.strip_prefix(SCHEME) else {
            if s.is_empty() {
                return Err(HubError::BadReference {
                    reference: s.into(),
                    reason: "empty".into(),
                });
            }
            return Ok(CheckpointRef::Local(PathBuf::from(s)));
        };
        let bad = |reason: &str| HubError::BadReference {
            reference: s.to_string(),
            reason: format!("{reason} (expected hf://owner/repo[@revision][/file.safetensors])"),
        };
        let (owner, rest) = rest
            .split_once('/')
            .ok_or_else(|| bad("no repository name"))?;
        let (repo_rev, file) = match rest.split_once('/') {
            Some((a, f)) => (a, Some(f)),
            None => (rest, None),
        };
        let (repo, revision) = match repo_rev.split_once('@') {
            Some((r, rev)) => (r, Some(rev)),
            None => (repo_rev, None),
        };
        if !valid_name(owner) {
            return Err(bad(&format!("bad owner `{owner}`")));
        }
        if !valid_name(repo) {
            return Err(bad(&format!("bad repository name `{repo}`")));
        }
        if let Some(r) = revision {
            if !valid_name(r) {
                return Err(bad(&format!("bad revision `{r}`")));
            }
        }
        let file = match file {
            None | Some("") => MODEL_FILE.to_string(),
            Some(f) => {
                if !f.split('/').all(valid_name) {
                    return Err(bad(&format!("bad file path `{f}`")));
                }
                f.to_string()
            }
        };
        Ok(CheckpointRef::Hub(HubRef {
            owner: owner.into(),
            repo: repo.into(),
            revision: revision.map(String::from),
            file,
        }))
    }
}

impl FromStr for CheckpointRef {
    type Err = HubError;
    fn from_str(s: &str) -> Result<Self> {
        CheckpointRef::parse(s)
    }
}

impl fmt::Display for CheckpointRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CheckpointRef::Local(p) => write!(f, "{}", p.display()),
            CheckpointRef::Hub(h) => h.fmt(f),
        }
    }
}

/// How the Hub is reached: the same settings as the data crate's Hub reader (one type, so a
/// run's data and its checkpoint are fetched alike). [`HubOptions::from_env`] reads
/// `HF_HUB_OFFLINE` and asks for no retries: opening a checkpoint makes one request and, if the
/// Hub cannot be reached, falls back to the cached copy at once (hf-hub does that for connect and
/// timeout errors), so a machine without network fails or succeeds in milliseconds rather than
/// after hf-hub's 5 back-off retries (2–4 s, docs/candle.md §4). hf-hub 1.0 has no offline switch of
/// its own, so `offline` is honoured here.
pub use longtail_data::readers::hub::{offline_from_env, HubDataOptions as HubOptions};

/// An hf-hub client for `opts` (cache, endpoint, retries); errors name `reference`.
fn client(opts: &HubOptions, reference: &HubRef) -> Result<HFClientSync> {
    let mut b = HFClient::builder()
        .cache_dir(opts.cache())
        .retry_max_attempts(opts.retries);
    if let Some(e) = &opts.endpoint {
        b = b.endpoint(e.clone());
    }
    b.build_sync().map_err(|e| HubError::Hub {
        reference: reference.to_string(),
        endpoint: opts.endpoint_name(),
        message: e.to_string(),
    })
}

/// Fetches (or finds in the cache) one file of a Hub repository; returns its path in the cache
/// (`<cache>/models--owner--repo/snapshots/<commit>/<file>`).
///
/// hf-hub builds that path from the cached `refs/<revision>` file (or the Hub's commit header)
/// without checking it: a refs file holding `../..` or an absolute path would lead outside the
/// cache. Such a path is refused ([`HubError::Hub`]) rather than read.
pub fn fetch(reference: &HubRef, opts: &HubOptions) -> Result<PathBuf> {
    let path = fetch_unchecked(reference, opts)?;
    let inside = path
        .strip_prefix(opts.cache())
        .is_ok_and(|rest| rest.components().all(|c| matches!(c, Component::Normal(_))));
    if !inside {
        return Err(HubError::Hub {
            reference: reference.to_string(),
            endpoint: opts.endpoint_name(),
            message: format!(
                "the cache resolves it to {}, outside the cache {} (a corrupt refs/{} file? it should hold a 40-hex commit)",
                path.display(),
                opts.cache().display(),
                reference.revision.as_deref().unwrap_or("main")
            ),
        });
    }
    Ok(path)
}

fn fetch_unchecked(reference: &HubRef, opts: &HubOptions) -> Result<PathBuf> {
    let client = client(opts, reference)?;
    let repo = client.model(reference.owner.clone(), reference.repo.clone());
    let result = repo
        .download_file()
        .filename(reference.file.clone())
        .maybe_revision(reference.revision.clone())
        .local_files_only(opts.offline)
        .send();
    result.map_err(|e| match e {
        HFError::LocalEntryNotFound { .. } => HubError::NotCached {
            reference: reference.to_string(),
            cache: opts.cache(),
            why: "offline (HF_HUB_OFFLINE=1)".into(),
        },
        HFError::Request { .. } => HubError::NotCached {
            reference: reference.to_string(),
            cache: opts.cache(),
            why: format!(
                "unreachable at {} ({})",
                opts.endpoint_name(),
                e.to_string().replace('\n', " ")
            ),
        },
        other => HubError::Hub {
            reference: reference.to_string(),
            endpoint: opts.endpoint_name(),
            message: other.to_string().replace('\n', " "),
        },
    })
}

/// What [`pull`] fetched.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pulled {
    /// The weights.
    pub model: PathBuf,
    /// `config.json` and `README.md` when the repository has them.
    pub extras: Vec<PathBuf>,
}

/// Pre-fetches a checkpoint into the cache: the named file, plus `config.json` and `README.md`
/// when the reference names the default [`MODEL_FILE`] and the repository has them.
/// `longtail pull` passes a few retries in `opts` (it runs on a connected machine, where retries
/// help against transient errors).
pub fn pull(reference: &HubRef, opts: &HubOptions) -> Result<Pulled> {
    let model = fetch(reference, opts)?;
    let mut extras = vec![];
    if reference.file == MODEL_FILE {
        for extra in [CONFIG_FILE, CARD_FILE] {
            match fetch(&reference.with_file(extra), opts) {
                Ok(p) => extras.push(p),
                // Optional files: a repository without them is fine.
                Err(HubError::Hub { .. }) | Err(HubError::NotCached { .. }) => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(Pulled { model, extras })
}

/// The checkpoint file inside a local path: the path itself if it is a file; for a directory,
/// `last.safetensors` (a training run) or else [`MODEL_FILE`] (an exported or imported model).
pub fn checkpoint_file(path: &Path) -> Result<PathBuf> {
    if path.is_dir() {
        for name in [longtail_train::trainer::LAST, MODEL_FILE] {
            let p = path.join(name);
            if p.is_file() {
                return Ok(p);
            }
        }
        return Err(HubError::NotFound {
            path: path.to_path_buf(),
            what: format!(
                "directory holds neither {} (a run) nor {MODEL_FILE} (an exported model)",
                longtail_train::trainer::LAST
            ),
        });
    }
    if path.is_file() {
        return Ok(path.to_path_buf());
    }
    let s = path.to_string_lossy();
    let looks_like_id = s.matches('/').count() == 1
        && !s.starts_with(['.', '/'])
        && s.split('/').all(valid_name)
        && !s.ends_with(".safetensors");
    if looks_like_id {
        return Err(HubError::BadReference {
            reference: s.to_string(),
            reason: format!("no such file or directory; for a Hub model write {SCHEME}{s}"),
        });
    }
    Err(HubError::NotFound {
        path: path.to_path_buf(),
        what: "no such checkpoint file or directory".into(),
    })
}

/// Resolves what a `--checkpoint` argument names to a local safetensors file, with the options
/// from the environment: `hf://…` through the cache, a directory to its checkpoint file.
pub fn resolve(reference: &CheckpointRef) -> Result<PathBuf> {
    resolve_with(reference, &HubOptions::from_env())
}

/// [`resolve`] with explicit options.
pub fn resolve_with(reference: &CheckpointRef, opts: &HubOptions) -> Result<PathBuf> {
    match reference {
        CheckpointRef::Local(p) => checkpoint_file(p),
        CheckpointRef::Hub(h) => fetch(h, opts),
    }
}

/// [`resolve`] for a path that may spell an `hf://` reference (as `--checkpoint` arrives in a
/// `PathBuf`).
pub fn resolve_path(path: &Path) -> Result<PathBuf> {
    match path.to_str() {
        Some(s) => resolve(&CheckpointRef::parse(s)?),
        None => checkpoint_file(path),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_hub_references() {
        let r = CheckpointRef::parse("hf://me/ride-c10").unwrap();
        assert_eq!(
            r,
            CheckpointRef::Hub(HubRef {
                owner: "me".into(),
                repo: "ride-c10".into(),
                revision: None,
                file: MODEL_FILE.into()
            })
        );
        assert_eq!(r.to_string(), "hf://me/ride-c10");
        let r = CheckpointRef::parse("hf://me/ride-c10@v1.0/weights/best.safetensors").unwrap();
        let CheckpointRef::Hub(h) = &r else { panic!() };
        assert_eq!(h.revision.as_deref(), Some("v1.0"));
        assert_eq!(h.file, "weights/best.safetensors");
        assert_eq!(h.repo_id(), "me/ride-c10");
        assert_eq!(
            r.to_string(),
            "hf://me/ride-c10@v1.0/weights/best.safetensors"
        );
        assert_eq!(
            CheckpointRef::parse("runs/a/last.safetensors").unwrap(),
            CheckpointRef::Local("runs/a/last.safetensors".into())
        );
    }

    #[test]
    fn rejects_malformed_hub_references() {
        for bad in [
            "hf://",
            "hf://owner",
            "hf://owner/",
            "hf:///repo",
            "hf://o/r@",
            "hf://o/r/../x",
            "hf://o w/r",
            "",
        ] {
            let e = CheckpointRef::parse(bad).unwrap_err().to_string();
            assert!(e.starts_with("bad checkpoint reference"), "{bad}: {e}");
        }
    }

    #[test]
    fn a_bare_repo_id_gets_a_hint() {
        let e = checkpoint_file(Path::new("someone/some-model"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("hf://someone/some-model"), "{e}");
        let e = checkpoint_file(Path::new("/no/such/file.safetensors"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("no such checkpoint"), "{e}");
    }
}
