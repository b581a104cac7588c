//! The feature cache: a frozen trunk's feature for every image of a data set, computed once and
//! kept in a safetensors file.
//!
//! [`extract_features`] runs the trunk batch by batch and streams the features to the file as
//! they come (the header's offsets are known from the image count and the feature width, so
//! nothing but one batch is held in memory), then the labels. The file is written under a
//! temporary name in the same folder and renamed into place, so a killed run leaves either the
//! old cache or none, never half a file. Its `__metadata__` records:
//!
//! | key | value |
//! |---|---|
//! | `format` | [`FORMAT`] |
//! | `trunk` | the trunk's id (`hf://owner/name`, or the canonical folder path) |
//! | `revision` | the Hub commit, or a blake3 of a local folder's config and weights |
//! | `family` | `vit`, `clip`, `dinov2` |
//! | `preprocess` | the [`crate::Preprocess`] as JSON |
//! | `features` | which output: `pooled` or `embeds` ([`FeatureKind`]) |
//! | `data` | the data's fingerprint ([`ImageSource::fingerprint`]) |
//! | `count`, `dim` | images and feature width |
//!
//! A later call with the same trunk, revision, preprocessing, feature kind and data reuses the
//! file; any difference rebuilds it, and [`CacheStatus::Built`] says which field differed.
//!
//! What the cache covers: the deterministic view of each image (resize, crop, normalise), which
//! is what a frozen trunk with linear or cosine heads trains on. What it does not: augmented
//! views (random crops, flips, colour jitter, SADE's strong augmentations) — each is a new
//! image for the trunk, so training with them runs the trunk every step; nor a trunk that is
//! tuned (LayerNorm, bias, adapter or LoRA parameters), whose features change as it trains.

use std::collections::BTreeMap;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use longtail_data::Dataset;

use crate::error::{io, Result, TrunkError};
use crate::PretrainedTrunk;

/// The `format` metadata value of the files this module writes.
pub const FORMAT: &str = "longtail-features/1";
/// Name of the features tensor, [N, D] F32.
pub const FEATURES: &str = "features";
/// Name of the labels tensor, `[N]` U32.
pub const LABELS: &str = "labels";

/// Which of the trunk's outputs is cached.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FeatureKind {
    /// [`crate::TrunkOutput::pooled`] (every family).
    #[default]
    Pooled,
    /// [`crate::TrunkOutput::embeds`] (CLIP's `image_embeds`).
    Embeds,
}

impl FeatureKind {
    /// The metadata spelling.
    pub fn name(self) -> &'static str {
        match self {
            FeatureKind::Pooled => "pooled",
            FeatureKind::Embeds => "embeds",
        }
    }
}

/// One batch of images: u8 HWC pixels back to back, and one label each.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageBatch {
    /// `labels.len() · h · w · c` bytes.
    pub pixels: Vec<u8>,
    /// One label per image.
    pub labels: Vec<u32>,
}

/// A data set the cache can read in batches: every image the same size.
pub trait ImageSource {
    /// Number of images.
    fn len(&self) -> usize;
    /// Whether there are none.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// (height, width, channels) of every image.
    fn image_shape(&self) -> (usize, usize, usize);
    /// The images in order, `batch_size` at a time (the last batch may be shorter).
    fn batches(&self, batch_size: usize) -> Box<dyn Iterator<Item = Result<ImageBatch>> + '_>;
    /// A fingerprint of the pixels and labels, in order: `blake3:<hex>` over the shape, the
    /// count, every image's bytes and the labels (little-endian u32). The default reads the
    /// batches once.
    fn fingerprint(&self) -> Result<String> {
        let mut h = fingerprint_start(self.image_shape(), self.len());
        for b in self.batches(1024) {
            let b = b?;
            h.update(&b.pixels);
            for l in &b.labels {
                h.update(&l.to_le_bytes());
            }
        }
        Ok(format!("blake3:{}", h.finalize().to_hex()))
    }
}

fn fingerprint_start((hh, w, c): (usize, usize, usize), n: usize) -> blake3::Hasher {
    let mut h = blake3::Hasher::new();
    for v in [hh, w, c, n] {
        h.update(&(v as u64).to_le_bytes());
    }
    h
}

impl ImageSource for Dataset {
    fn len(&self) -> usize {
        self.labels.len()
    }

    fn image_shape(&self) -> (usize, usize, usize) {
        (self.height, self.width, self.channels)
    }

    fn batches(&self, batch_size: usize) -> Box<dyn Iterator<Item = Result<ImageBatch>> + '_> {
        let per = self.height * self.width * self.channels;
        let bs = batch_size.max(1);
        Box::new((0..self.labels.len()).step_by(bs).map(move |start| {
            let end = (start + bs).min(self.labels.len());
            Ok(ImageBatch {
                pixels: self.images[start * per..end * per].to_vec(),
                labels: self.labels[start..end].to_vec(),
            })
        }))
    }

    /// The same hash as the default, over the image and label buffers directly (one pass).
    fn fingerprint(&self) -> Result<String> {
        let mut h = fingerprint_start(self.image_shape(), self.len());
        h.update(&self.images);
        for l in &self.labels {
            h.update(&l.to_le_bytes());
        }
        Ok(format!("blake3:{}", h.finalize().to_hex()))
    }
}

/// How [`extract_features`] runs.
#[derive(Clone, Debug)]
pub struct ExtractOptions {
    /// Images per trunk call.
    pub batch_size: usize,
    /// Which output to cache.
    pub kind: FeatureKind,
}

impl Default for ExtractOptions {
    /// Batches of 64, pooled features.
    fn default() -> Self {
        ExtractOptions {
            batch_size: 64,
            kind: FeatureKind::Pooled,
        }
    }
}

/// What [`extract_features`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CacheStatus {
    /// The file existed with matching metadata and was left as it was.
    Reused,
    /// The file was (re)written; `reason` says why (`no cache file`, `trunk changed`, …).
    Built {
        /// Why the old file, if any, could not be reused.
        reason: String,
    },
}

/// The metadata a cache for `trunk`, `data` and `opts` carries.
pub fn cache_metadata(
    trunk: &PretrainedTrunk,
    data_fingerprint: &str,
    count: usize,
    dim: usize,
    kind: FeatureKind,
) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("format".into(), FORMAT.into()),
        ("trunk".into(), trunk.files.id.clone()),
        ("revision".into(), trunk.files.revision.clone()),
        ("family".into(), trunk.trunk.family().name().into()),
        ("preprocess".into(), trunk.preprocess.to_json()),
        ("features".into(), kind.name().into()),
        ("data".into(), data_fingerprint.into()),
        ("count".into(), count.to_string()),
        ("dim".into(), dim.to_string()),
    ])
}

/// A parsed safetensors header.
struct Header {
    metadata: BTreeMap<String, String>,
    tensors: serde_json::Map<String, serde_json::Value>,
    /// 8 + header length: where the data starts.
    data_start: u64,
}

fn bad_cache(path: &Path, reason: impl Into<String>) -> TrunkError {
    TrunkError::BadCache {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// Reads only the header of a safetensors file (the features are not touched).
fn read_header(path: &Path) -> Result<Header> {
    let mut f = std::fs::File::open(path).map_err(io(path))?;
    let mut len = [0u8; 8];
    f.read_exact(&mut len)
        .map_err(|_| bad_cache(path, "shorter than a safetensors header"))?;
    let n = u64::from_le_bytes(len);
    if n > 100_000_000 {
        return Err(bad_cache(path, format!("header length {n} is implausible")));
    }
    let mut text = vec![0u8; n as usize];
    f.read_exact(&mut text)
        .map_err(|_| bad_cache(path, "truncated header"))?;
    let value: serde_json::Value =
        serde_json::from_slice(&text).map_err(|e| bad_cache(path, format!("bad header: {e}")))?;
    let serde_json::Value::Object(mut tensors) = value else {
        return Err(bad_cache(path, "header is not a JSON object"));
    };
    let metadata = match tensors.remove("__metadata__") {
        Some(m) => {
            serde_json::from_value(m).map_err(|e| bad_cache(path, format!("bad metadata: {e}")))?
        }
        None => BTreeMap::new(),
    };
    Ok(Header {
        metadata,
        tensors,
        data_start: 8 + n,
    })
}

/// The first metadata field on which `old` and `new` differ, worded for [`CacheStatus::Built`].
fn difference(old: &BTreeMap<String, String>, new: &BTreeMap<String, String>) -> Option<String> {
    let what = |k: &str| match k {
        "trunk" | "revision" | "family" => "trunk changed",
        "preprocess" => "preprocessing changed",
        "data" | "count" => "data changed",
        "features" | "dim" => "feature kind changed",
        _ => "format changed",
    };
    // Trunk first, then preprocessing, then data: the most useful reason when several differ.
    for k in [
        "format",
        "trunk",
        "revision",
        "family",
        "preprocess",
        "data",
        "count",
        "features",
        "dim",
    ] {
        if old.get(k) != new.get(k) {
            return Some(format!(
                "{} ({k}: {} → {})",
                what(k),
                old.get(k).map_or("none", String::as_str),
                new.get(k).map_or("none", String::as_str)
            ));
        }
    }
    None
}

/// Whether `path` is a complete cache with metadata `want`; `Err(reason)` when it must be
/// rebuilt.
fn reusable(path: &Path, want: &BTreeMap<String, String>) -> std::result::Result<(), String> {
    if !path.exists() {
        return Err("no cache file".into());
    }
    let header = read_header(path).map_err(|e| format!("unreadable cache ({e})"))?;
    if let Some(d) = difference(&header.metadata, want) {
        return Err(d);
    }
    let (n, d): (u64, u64) = (
        want["count"].parse().unwrap_or(0),
        want["dim"].parse().unwrap_or(0),
    );
    let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    if size != header.data_start + 4 * n * d + 4 * n {
        return Err(format!(
            "cache file is {size} bytes, not {}",
            header.data_start + 4 * n * d + 4 * n
        ));
    }
    Ok(())
}

/// The safetensors header for `n` features of width `d` and `n` labels, padded with spaces to
/// a multiple of 8 bytes (as the safetensors library writes it).
fn header_bytes(meta: &BTreeMap<String, String>, n: usize, d: usize) -> Vec<u8> {
    let fbytes = 4 * n * d;
    let header = serde_json::json!({
        "__metadata__": meta,
        FEATURES: {"dtype": "F32", "shape": [n, d], "data_offsets": [0, fbytes]},
        LABELS: {"dtype": "U32", "shape": [n], "data_offsets": [fbytes, fbytes + 4 * n]},
    });
    let mut text = serde_json::to_vec(&header).expect("JSON of strings and numbers");
    while !(8 + text.len()).is_multiple_of(8) {
        text.push(b' ');
    }
    let mut out = (text.len() as u64).to_le_bytes().to_vec();
    out.extend(text);
    out
}

/// Extracts `trunk`'s features for every image of `data` into the safetensors file `path`, or
/// reuses `path` when its metadata (trunk id and revision, preprocessing, feature kind, data
/// fingerprint) match. See the module docs for the file's layout.
pub fn extract_features(
    trunk: &PretrainedTrunk,
    data: &dyn ImageSource,
    path: &Path,
    opts: &ExtractOptions,
) -> Result<CacheStatus> {
    let dim = match opts.kind {
        FeatureKind::Pooled => trunk.trunk.feature_dim(),
        FeatureKind::Embeds => trunk.trunk.embed_dim().ok_or(TrunkError::BadInput {
            model: trunk.trunk.family().name(),
            reason: "this trunk has no projection (`embeds`); cache `pooled` features".into(),
        })?,
    };
    let n = data.len();
    let shape = data.image_shape();
    let meta = cache_metadata(trunk, &data.fingerprint()?, n, dim, opts.kind);
    let reason = match reusable(path, &meta) {
        Ok(()) => return Ok(CacheStatus::Reused),
        Err(reason) => reason,
    };
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&dir).map_err(io(&dir))?;
    let tmp = tempfile::NamedTempFile::new_in(&dir).map_err(io(&dir))?;
    let mut out = BufWriter::new(tmp.as_file());
    out.write_all(&header_bytes(&meta, n, dim))
        .map_err(io(path))?;
    let mut labels = Vec::with_capacity(n);
    let mut done = 0;
    for batch in data.batches(opts.batch_size) {
        let batch = batch?;
        let out_t = trunk.forward_images(&batch.pixels, shape)?;
        let feats = match opts.kind {
            FeatureKind::Pooled => out_t.pooled,
            FeatureKind::Embeds => out_t.embeds.expect("checked above"),
        };
        let feats = feats.to_dtype(DType::F32)?.to_device(&Device::Cpu)?;
        let rows = feats.dims2()?.0;
        if rows != batch.labels.len() {
            return Err(TrunkError::BadInput {
                model: "feature cache",
                reason: format!(
                    "a batch of {} labels gave {rows} feature rows",
                    batch.labels.len()
                ),
            });
        }
        let values = feats.flatten_all()?.to_vec1::<f32>()?;
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        out.write_all(&bytes).map_err(io(path))?;
        labels.extend_from_slice(&batch.labels);
        done += rows;
    }
    if done != n {
        return Err(TrunkError::BadInput {
            model: "feature cache",
            reason: format!("the source announced {n} images and gave {done}"),
        });
    }
    let bytes: Vec<u8> = labels.iter().flat_map(|l| l.to_le_bytes()).collect();
    out.write_all(&bytes).map_err(io(path))?;
    out.flush().map_err(io(path))?;
    drop(out);
    tmp.as_file().sync_all().map_err(io(path))?;
    tmp.persist(path).map_err(|e| TrunkError::Io {
        path: path.to_path_buf(),
        source: e.error,
    })?;
    Ok(CacheStatus::Built { reason })
}

/// A feature cache read back.
#[derive(Clone, Debug)]
pub struct CachedFeatures {
    /// [N, D] F32.
    pub features: Tensor,
    /// One label per row.
    pub labels: Vec<u32>,
    /// The file's metadata (see the module docs).
    pub metadata: BTreeMap<String, String>,
}

/// Reads a cache written by [`extract_features`], the features on `device`.
pub fn read_features(path: &Path, device: &Device) -> Result<CachedFeatures> {
    let header = read_header(path)?;
    if header.metadata.get("format").map(String::as_str) != Some(FORMAT) {
        return Err(bad_cache(path, format!("no `format = {FORMAT}` metadata")));
    }
    for name in [FEATURES, LABELS] {
        if !header.tensors.contains_key(name) {
            return Err(bad_cache(path, format!("no `{name}` tensor")));
        }
    }
    let tensors = candle_core::safetensors::load(path, &Device::Cpu)
        .map_err(|e| bad_cache(path, e.to_string()))?;
    let features = tensors[FEATURES].to_device(device)?;
    let labels = tensors[LABELS].to_vec1::<u32>()?;
    if features.dims().len() != 2 || features.dim(0)? != labels.len() {
        return Err(bad_cache(
            path,
            format!(
                "features {:?} and {} labels do not match",
                features.dims(),
                labels.len()
            ),
        ));
    }
    Ok(CachedFeatures {
        features,
        labels,
        metadata: header.metadata,
    })
}
