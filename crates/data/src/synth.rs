//! Synthetic JPEG trees in the official list layouts, for trying and measuring the streamed
//! pipeline (`longtail data --make-tree`, `longtail bench data`) and for tests, where the real
//! ImageNet-LT / iNaturalist / Places-LT images are not at hand.
//!
//! Every image is a real baseline JPEG of its own size: a smooth colour field whose mean colour
//! depends on the class (so a network can learn the classes) plus per-image noise.

use std::io::Write;
use std::path::{Path, PathBuf};

use image::codecs::jpeg::JpegEncoder;
use image::ExtendedColorType;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::error::{DataError, Result};
use crate::load::DatasetName;

/// What [`write_tree`] writes.
#[derive(Clone, Debug, PartialEq)]
pub struct TreeSpec {
    /// The layout: the list names of `imagenet-lt`, `inat2018`, `places-lt`, or `train.txt` /
    /// `test.txt` / `val.txt` for `image-list`.
    pub layout: DatasetName,
    /// Training images per class (the long tail).
    pub train_counts: Vec<usize>,
    /// Test images per class.
    pub test_per_class: usize,
    /// Validation images per class (written only where the layout has a val list of its own).
    pub val_per_class: usize,
    /// Image sizes `(width, height)`, used in turn.
    pub sizes: Vec<(u32, u32)>,
    /// JPEG quality, 1..=100.
    pub quality: u8,
    /// Seed of the pixels.
    pub seed: u64,
}

/// The files [`write_tree`] wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tree {
    /// The training list.
    pub train_list: PathBuf,
    /// The test list.
    pub test_list: PathBuf,
    /// The validation list, where the layout has one.
    pub val_list: Option<PathBuf>,
    /// Images written.
    pub images: usize,
    /// Bytes of JPEG written.
    pub bytes: u64,
}

/// Writes a JPEG tree under `root` in the layout of `spec.layout` (images under
/// `train/`, `val/`, `test/` with one folder per class; lists `relative/path label`).
pub fn write_tree(root: &Path, spec: &TreeSpec) -> Result<Tree> {
    if spec.sizes.is_empty() || spec.sizes.iter().any(|&(w, h)| w == 0 || h == 0) {
        return Err(DataError::BadParameter {
            name: "tree image sizes",
            value: format!("{:?}", spec.sizes),
            reason: "need at least one size, every side positive".into(),
        });
    }
    if !(1..=100).contains(&spec.quality) {
        return Err(DataError::BadParameter {
            name: "JPEG quality",
            value: spec.quality.to_string(),
            reason: "it must lie in 1..=100".into(),
        });
    }
    let (train, test, val) = match spec.layout.official_lists() {
        Some((t, s, v)) => (t.to_string(), s.to_string(), v.map(str::to_string)),
        None => (
            "train.txt".to_string(),
            "test.txt".to_string(),
            Some("val.txt".to_string()),
        ),
    };
    std::fs::create_dir_all(root).map_err(|e| DataError::io(root, e))?;
    let classes = spec.train_counts.len();
    let mut tree = Tree {
        train_list: root.join(&train),
        test_list: root.join(&test),
        val_list: None,
        images: 0,
        bytes: 0,
    };
    let mut k = 0usize;
    let mut split = |dir: &str, list: &Path, count: &dyn Fn(usize) -> usize| -> Result<()> {
        let mut lines = String::new();
        for c in 0..classes {
            let folder = format!("{dir}/c{c:05}");
            std::fs::create_dir_all(root.join(&folder))
                .map_err(|e| DataError::io(root.join(&folder), e))?;
            for i in 0..count(c) {
                let (w, h) = spec.sizes[k % spec.sizes.len()];
                let rel = format!("{folder}/{i:06}.JPEG");
                let bytes =
                    jpeg_bytes(w, h, c, classes, spec.quality, spec.seed ^ (k as u64) << 1)?;
                let path = root.join(&rel);
                std::fs::write(&path, &bytes).map_err(|e| DataError::io(&path, e))?;
                tree.bytes += bytes.len() as u64;
                tree.images += 1;
                k += 1;
                lines.push_str(&format!("{rel} {c}\n"));
            }
        }
        let mut f = std::fs::File::create(list).map_err(|e| DataError::io(list, e))?;
        f.write_all(lines.as_bytes())
            .map_err(|e| DataError::io(list, e))
    };
    split("train", &root.join(&train), &|c| spec.train_counts[c])?;
    split("test", &root.join(&test), &|_| spec.test_per_class)?;
    if let Some(v) = val.filter(|_| spec.val_per_class > 0) {
        split("val", &root.join(&v), &|_| spec.val_per_class)?;
        tree.val_list = Some(root.join(v));
    }
    Ok(tree)
}

/// One JPEG: a horizontal and vertical gradient around the class colour, with noise.
fn jpeg_bytes(
    w: u32,
    h: u32,
    class: usize,
    classes: usize,
    quality: u8,
    seed: u64,
) -> Result<Vec<u8>> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let hue = class as f32 / classes.max(1) as f32 * 6.0;
    let base: [f32; 3] = [
        128.0 + 100.0 * hue.cos(),
        128.0 + 100.0 * (hue + 2.1).cos(),
        128.0 + 100.0 * (hue + 4.2).cos(),
    ];
    let (gx, gy): (f32, f32) = (rng.random_range(-40.0..40.0), rng.random_range(-40.0..40.0));
    let mut px = Vec::with_capacity((w * h * 3) as usize);
    for y in 0..h {
        for x in 0..w {
            let t = gx * (x as f32 / w as f32 - 0.5) + gy * (y as f32 / h as f32 - 0.5);
            for b in base {
                let n: f32 = rng.random_range(-12.0..12.0);
                px.push((b + t + n).clamp(0.0, 255.0) as u8);
            }
        }
    }
    let mut out = Vec::new();
    JpegEncoder::new_with_quality(&mut out, quality)
        .encode(&px, w, h, ExtendedColorType::Rgb8)
        .map_err(|source| DataError::Decode {
            path: PathBuf::from("<synthetic jpeg>"),
            source,
        })?;
    Ok(out)
}
