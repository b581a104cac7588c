//! CIFAR-10 and CIFAR-100 from the Hugging Face Hub's parquet files (cargo feature `hub`).
//!
//! The Hub's dataset repositories `uoft-cs/cifar10` and `uoft-cs/cifar100` hold one parquet file
//! per split (`plain_text/train-00000-of-00001.parquet`, `cifar100/test-…`), one row per image:
//! `img` is a struct whose `bytes` field is a PNG, the label is `label` (CIFAR-10) or
//! `fine_label` (CIFAR-100; `coarse_label` is ignored). The files are fetched through the
//! Hugging Face cache (hf-hub 1.0, sync API, the same version and approach as
//! `longtail-hub::reference`), decoded in parallel, and returned as the same [`Dataset`] (u8
//! HWC, labels, class names) as the binary reader, so `ldam_long_tail` and everything after it
//! apply unchanged.
//!
//! Offline use: `HF_HUB_OFFLINE=1` resolves from the cache only (hf-hub 1.0 has no such switch,
//! docs/candle.md §4, so [`HubDataOptions::from_env`] reads it and passes `local_files_only`); a miss
//! fails at once with [`DataError::MissingFile`] saying how to get the files. Online, there are
//! no retries: an unreachable Hub falls back to a cached copy at once (hf-hub does that for
//! connect and timeout errors) instead of after 5 back-off retries.
//!
//! Differs from candle-datasets' `cifar::load`: its `permute((0,3,2,1))` transposes the images
//! (H and W swapped, docs/candle.md §3); here a PNG row `y` is image row `y`, as in the binary files.

use std::path::{Path, PathBuf};

use hf_hub::{HFClient, HFError};
use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::record::Field;
use rayon::prelude::*;

use super::cifar::{CifarKind, CIFAR10_CLASSES};
use crate::dataset::Dataset;
use crate::error::{DataError, Result};

/// Scheme of a Hub data reference (`--data-dir hf://uoft-cs/cifar10`).
pub const SCHEME: &str = "hf://";
/// The Hub's CIFAR-10 dataset repository.
pub const CIFAR10_REPO: &str = "uoft-cs/cifar10";
/// The Hub's CIFAR-100 dataset repository.
pub const CIFAR100_REPO: &str = "uoft-cs/cifar100";
/// Parquet file of the training split, inside the config directory.
pub const TRAIN_FILE: &str = "train-00000-of-00001.parquet";
/// Parquet file of the test split, inside the config directory.
pub const TEST_FILE: &str = "test-00000-of-00001.parquet";
/// Column holding the image struct (its `bytes` field is a PNG).
pub const IMAGE_COLUMN: &str = "img";

const SIDE: usize = 32;
const PIXELS: usize = SIDE * SIDE * 3;

/// Where the parquet files of one CIFAR data set are on the Hub. Every field can be overridden.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HubSource {
    /// Dataset repository, `owner/name`.
    pub repo: String,
    /// Branch, tag or commit; `None` is `main`.
    pub revision: Option<String>,
    /// Path of the training split's parquet file inside the repository.
    pub train_file: String,
    /// Path of the test split's parquet file inside the repository.
    pub test_file: String,
    /// Column holding the class label.
    pub label_column: String,
}

/// Hub names: letters, digits, `-`, `_`, `.`; not empty, not `.`/`..` (as `longtail-hub`).
fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s != "."
        && s != ".."
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

impl HubSource {
    /// The `uoft-cs` repository of `kind` on `main`: `plain_text/{train,test}-00000-of-00001.parquet`
    /// and `label` for CIFAR-10, `cifar100/…` and `fine_label` for CIFAR-100.
    pub fn default_for(kind: CifarKind) -> Self {
        let (repo, config, label) = match kind {
            CifarKind::Cifar10 => (CIFAR10_REPO, "plain_text", "label"),
            CifarKind::Cifar100 => (CIFAR100_REPO, "cifar100", "fine_label"),
        };
        HubSource {
            repo: repo.into(),
            revision: None,
            train_file: format!("{config}/{TRAIN_FILE}"),
            test_file: format!("{config}/{TEST_FILE}"),
            label_column: label.into(),
        }
    }

    /// Parses `hf://owner/name[@revision][/config/dir]` (what `--data-dir` takes); `hf://` alone
    /// is [`HubSource::default_for`]. A directory replaces the default config directory
    /// (`plain_text` / `cifar100`): the files are `<dir>/train-00000-of-00001.parquet` and
    /// `<dir>/test-00000-of-00001.parquet`.
    pub fn parse(reference: &str, kind: CifarKind) -> Result<Self> {
        let bad = |reason: String| DataError::BadParameter {
            name: "hub data reference",
            value: reference.to_string(),
            reason: format!(
                "{reason} (expected hf://owner/name[@revision][/config], e.g. hf://{})",
                Self::default_for(kind).repo
            ),
        };
        let Some(rest) = reference.strip_prefix(SCHEME) else {
            return Err(bad(format!("does not start with {SCHEME}")));
        };
        let mut src = Self::default_for(kind);
        if rest.is_empty() {
            return Ok(src);
        }
        let (owner, rest) = rest
            .split_once('/')
            .ok_or_else(|| bad("no repository name".into()))?;
        let (repo_rev, dir) = match rest.split_once('/') {
            Some((a, d)) => (a, Some(d.trim_end_matches('/'))),
            None => (rest, None),
        };
        let (name, revision) = match repo_rev.split_once('@') {
            Some((n, r)) => (n, Some(r)),
            None => (repo_rev, None),
        };
        for (what, v) in [("owner", owner), ("repository name", name)] {
            if !valid_name(v) {
                return Err(bad(format!("bad {what} `{v}`")));
            }
        }
        if let Some(r) = revision {
            if !valid_name(r) {
                return Err(bad(format!("bad revision `{r}`")));
            }
        }
        src.repo = format!("{owner}/{name}");
        src.revision = revision.map(String::from);
        if let Some(d) = dir.filter(|d| !d.is_empty()) {
            if !d.split('/').all(valid_name) {
                return Err(bad(format!("bad directory `{d}`")));
            }
            src.train_file = format!("{d}/{TRAIN_FILE}");
            src.test_file = format!("{d}/{TEST_FILE}");
        }
        Ok(src)
    }

    /// `hf://owner/name[@revision]/file`, for messages.
    pub fn display_file(&self, file: &str) -> String {
        match &self.revision {
            Some(r) => format!("{SCHEME}{}@{r}/{file}", self.repo),
            None => format!("{SCHEME}{}/{file}", self.repo),
        }
    }
}

/// How the Hub is reached. [`HubDataOptions::from_env`] reads the standard variables.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HubDataOptions {
    /// Resolve from the cache only, never touch the network (`HF_HUB_OFFLINE=1`).
    pub offline: bool,
    /// Hub URL; `None` → `HF_ENDPOINT`, else `https://huggingface.co` (read by hf-hub).
    pub endpoint: Option<String>,
    /// Cache directory; `None` → `HF_HUB_CACHE`, `HUGGINGFACE_HUB_CACHE`, `$HF_HOME/hub`,
    /// `~/.cache/huggingface/hub` (read by hf-hub).
    pub cache_dir: Option<PathBuf>,
    /// Retries after a failed request (hf-hub's default is 5, with exponential back-off).
    pub retries: usize,
}

/// True when `HF_HUB_OFFLINE` is `1`, `true`, `yes` or `on` (any case), as Python's
/// `huggingface_hub` reads it.
pub fn offline_from_env() -> bool {
    std::env::var("HF_HUB_OFFLINE").is_ok_and(|v| {
        matches!(
            v.trim().to_ascii_lowercase().as_str(),
            "1" | "true" | "yes" | "on"
        )
    })
}

impl HubDataOptions {
    /// Options from the environment, with no retries (fail or fall back to the cache at once).
    pub fn from_env() -> Self {
        HubDataOptions {
            offline: offline_from_env(),
            endpoint: None,
            cache_dir: None,
            retries: 0,
        }
    }

    /// The cache directory in effect.
    pub fn cache(&self) -> PathBuf {
        self.cache_dir
            .clone()
            .unwrap_or_else(hf_hub::resolve_cache_dir)
    }

    /// The Hub URL in effect (`endpoint`, else `HF_ENDPOINT`, else huggingface.co), for messages.
    pub fn endpoint_name(&self) -> String {
        self.endpoint
            .clone()
            .or_else(|| std::env::var("HF_ENDPOINT").ok())
            .unwrap_or_else(|| "https://huggingface.co".into())
    }
}

impl Default for HubDataOptions {
    fn default() -> Self {
        Self::from_env()
    }
}

/// How to get the files onto a machine without network, for [`DataError::MissingFile`].
fn not_cached_hint(src: &HubSource, cache: &Path, why: &str) -> String {
    format!(
        "{why}; not in the Hugging Face cache {} — on a connected machine run \
         `huggingface-cli download --repo-type dataset {}` (or any longtail run with --data-dir hf://{} \
         and no HF_HUB_OFFLINE), then copy that cache here and point HF_HUB_CACHE (or HF_HOME) at it; \
         or use --data-dir with the CIFAR binary files",
        cache.display(),
        src.repo,
        src.repo,
    )
}

/// Fetches (or finds in the cache) one file of `src`'s dataset repository; returns its path in
/// the cache (`<cache>/datasets--owner--name/snapshots/<commit>/<file>`).
pub fn fetch(src: &HubSource, file: &str, opts: &HubDataOptions) -> Result<PathBuf> {
    let shown = PathBuf::from(src.display_file(file));
    let hub_error = |message: String| DataError::MissingFile {
        path: shown.clone(),
        hint: format!(
            "hub error at {}: {}",
            opts.endpoint_name(),
            message.replace('\n', " ")
        ),
    };
    let (owner, name) = src
        .repo
        .split_once('/')
        .ok_or_else(|| DataError::BadParameter {
            name: "hub dataset repository",
            value: src.repo.clone(),
            reason: "expected owner/name".into(),
        })?;
    let mut b = HFClient::builder()
        .cache_dir(opts.cache())
        .retry_max_attempts(opts.retries);
    if let Some(e) = &opts.endpoint {
        b = b.endpoint(e.clone());
    }
    let client = b.build_sync().map_err(|e| hub_error(e.to_string()))?;
    let result = client
        .dataset(owner.to_string(), name.to_string())
        .download_file()
        .filename(file.to_string())
        .maybe_revision(src.revision.clone())
        .local_files_only(opts.offline)
        .send();
    result.map_err(|e| match e {
        HFError::LocalEntryNotFound { .. } => DataError::MissingFile {
            path: shown.clone(),
            hint: not_cached_hint(src, &opts.cache(), "offline (HF_HUB_OFFLINE=1)"),
        },
        HFError::Request { .. } => DataError::MissingFile {
            path: shown.clone(),
            hint: not_cached_hint(
                src,
                &opts.cache(),
                &format!(
                    "the Hub is unreachable at {} ({})",
                    opts.endpoint_name(),
                    e.to_string().replace('\n', " ")
                ),
            ),
        },
        other => hub_error(other.to_string()),
    })
}

fn bad_format(path: &Path, reason: impl Into<String>) -> DataError {
    DataError::BadFormat {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// The class names the `datasets` library stores in the parquet footer (key `huggingface`,
/// `info.features.<label_column>.names`), when present.
fn names_from_metadata(
    reader: &SerializedFileReader<std::fs::File>,
    label_column: &str,
) -> Option<Vec<String>> {
    let kv = reader.metadata().file_metadata().key_value_metadata()?;
    let json = kv
        .iter()
        .find(|k| k.key == "huggingface")?
        .value
        .as_deref()?;
    let v: serde_json::Value = serde_json::from_str(json).ok()?;
    let features = v.get("info").unwrap_or(&v).get("features")?;
    features
        .get(label_column)?
        .get("names")?
        .as_array()?
        .iter()
        .map(|n| n.as_str().map(String::from))
        .collect()
}

fn label_of(field: &Field) -> Option<i64> {
    match *field {
        Field::Byte(v) => Some(v as i64),
        Field::Short(v) => Some(v as i64),
        Field::Int(v) => Some(v as i64),
        Field::Long(v) => Some(v),
        Field::UByte(v) => Some(v as i64),
        Field::UShort(v) => Some(v as i64),
        Field::UInt(v) => Some(v as i64),
        Field::ULong(v) => i64::try_from(v).ok(),
        _ => None,
    }
}

/// What [`read_cifar_parquet`] returns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParquetImages {
    /// Pixels, 32·32·3 bytes per image, HWC, in row order.
    pub images: Vec<u8>,
    /// One label per image.
    pub labels: Vec<u32>,
    /// Class names from the file's `huggingface` metadata; empty when it has none.
    pub class_names: Vec<String>,
}

/// Decodes one CIFAR parquet file in the Hub's schema: the PNG in `img.bytes` of each row
/// (32×32, converted to RGB) and the integer label in `label_column`, which must be below
/// `num_classes`. Errors name the file and the row.
pub fn read_cifar_parquet(
    path: &Path,
    label_column: &str,
    num_classes: usize,
) -> Result<ParquetImages> {
    let file = std::fs::File::open(path).map_err(|e| DataError::io(path, e))?;
    let reader = SerializedFileReader::new(file)
        .map_err(|e| bad_format(path, format!("not a readable parquet file: {e}")))?;
    let class_names = names_from_metadata(&reader, label_column).unwrap_or_default();
    let rows = reader
        .get_row_iter(None)
        .map_err(|e| bad_format(path, format!("cannot read rows: {e}")))?;
    let mut pngs: Vec<Vec<u8>> = Vec::new();
    let mut labels = Vec::new();
    for (i, row) in rows.enumerate() {
        let row = row.map_err(|e| bad_format(path, format!("row {i}: {e}")))?;
        let (mut png, mut label) = (None, None);
        for (name, field) in row.get_column_iter() {
            if name == IMAGE_COLUMN {
                let bytes = match field {
                    Field::Group(g) => g.get_column_iter().find_map(|(n, f)| match f {
                        Field::Bytes(b) if n == "bytes" => Some(b.data().to_vec()),
                        _ => None,
                    }),
                    Field::Bytes(b) => Some(b.data().to_vec()),
                    _ => None,
                };
                png = Some(bytes.ok_or_else(|| {
                    bad_format(
                        path,
                        format!("row {i}: column `{IMAGE_COLUMN}` has no PNG bytes"),
                    )
                })?);
            } else if name == label_column {
                let l = label_of(field).ok_or_else(|| {
                    bad_format(
                        path,
                        format!(
                            "row {i}: label column `{label_column}` is not an integer ({field})"
                        ),
                    )
                })?;
                if l < 0 || l as u64 >= num_classes as u64 {
                    return Err(DataError::LabelOutOfRange {
                        source_name: path.display().to_string(),
                        index: i,
                        label: l.clamp(0, u32::MAX as i64) as u32,
                        num_classes,
                    });
                }
                label = Some(l as u32);
            }
        }
        let missing = |col: &str| {
            let cols: Vec<String> = row.get_column_iter().map(|(n, _)| n.clone()).collect();
            bad_format(
                path,
                format!("row {i}: no column `{col}` (columns: {})", cols.join(", ")),
            )
        };
        pngs.push(png.ok_or_else(|| missing(IMAGE_COLUMN))?);
        labels.push(label.ok_or_else(|| missing(label_column))?);
    }
    if pngs.is_empty() {
        return Err(DataError::Empty {
            what: path.display().to_string(),
        });
    }
    let mut images = vec![0u8; pngs.len() * PIXELS];
    images
        .par_chunks_mut(PIXELS)
        .zip(pngs.par_iter())
        .enumerate()
        .try_for_each(|(i, (out, png))| -> Result<()> {
            let img = image::load_from_memory(png)
                .map_err(|e| bad_format(path, format!("row {i}: cannot decode image: {e}")))?
                .into_rgb8();
            if img.width() as usize != SIDE || img.height() as usize != SIDE {
                return Err(bad_format(
                    path,
                    format!(
                        "row {i}: image is {}x{}, CIFAR images are {SIDE}x{SIDE}",
                        img.width(),
                        img.height()
                    ),
                ));
            }
            // `image` buffers are row-major RGB: exactly HWC, no transpose.
            out.copy_from_slice(img.as_raw());
            Ok(())
        })?;
    Ok(ParquetImages {
        images,
        labels,
        class_names,
    })
}

fn class_names_for(kind: CifarKind, from_file: Vec<String>) -> Vec<String> {
    if from_file.len() == kind.num_classes() {
        from_file
    } else if kind == CifarKind::Cifar10 {
        CIFAR10_CLASSES.iter().map(|s| s.to_string()).collect()
    } else {
        Vec::new()
    }
}

/// Reads the full CIFAR train and test splits from the Hub (through the cache), as
/// [`crate::readers::cifar::load_cifar`] reads them from the binary files.
pub fn load_cifar_hub(
    src: &HubSource,
    kind: CifarKind,
    opts: &HubDataOptions,
) -> Result<(Dataset, Dataset)> {
    // Resolve both files first, so a missing one fails before any decoding.
    let train_path = fetch(src, &src.train_file, opts)?;
    let test_path = fetch(src, &src.test_file, opts)?;
    load_cifar_parquet(&train_path, &test_path, kind, &src.label_column)
}

/// Reads CIFAR train and test splits from two local parquet files in the Hub's schema.
pub fn load_cifar_parquet(
    train: &Path,
    test: &Path,
    kind: CifarKind,
    label_column: &str,
) -> Result<(Dataset, Dataset)> {
    let c = kind.num_classes();
    let tr = read_cifar_parquet(train, label_column, c)?;
    let te = read_cifar_parquet(test, label_column, c)?;
    let names = class_names_for(kind, tr.class_names);
    let shape = (SIDE, SIDE, 3);
    let train = Dataset::new(
        "cifar train (parquet)",
        tr.images,
        tr.labels,
        shape,
        c,
        names.clone(),
        vec![],
    )?;
    let test = Dataset::new(
        "cifar test (parquet)",
        te.images,
        te.labels,
        shape,
        c,
        names,
        vec![],
    )?;
    Ok((train, test))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_data_references() {
        let d = HubSource::parse("hf://", CifarKind::Cifar100).unwrap();
        assert_eq!(d, HubSource::default_for(CifarKind::Cifar100));
        assert_eq!(d.train_file, "cifar100/train-00000-of-00001.parquet");
        assert_eq!(d.label_column, "fine_label");
        let s = HubSource::parse("hf://me/c10@abc/v2/data", CifarKind::Cifar10).unwrap();
        assert_eq!(s.repo, "me/c10");
        assert_eq!(s.revision.as_deref(), Some("abc"));
        assert_eq!(s.test_file, "v2/data/test-00000-of-00001.parquet");
        assert_eq!(s.label_column, "label");
        assert_eq!(
            s.display_file(&s.train_file),
            "hf://me/c10@abc/v2/data/train-00000-of-00001.parquet"
        );
        for bad in [
            "hf://me",
            "hf://me/",
            "hf://me/r@",
            "hf://a/b/../x",
            "/data/cifar",
        ] {
            let e = HubSource::parse(bad, CifarKind::Cifar10).unwrap_err();
            assert!(e.to_string().contains("hub data reference"), "{bad}: {e}");
        }
    }
}
