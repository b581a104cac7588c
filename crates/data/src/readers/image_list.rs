//! Image-list files in the ImageNet-LT / Places-LT / iNaturalist format: one `relative/path label`
//! per line, paths relative to a root directory (RIDE `LT_Dataset`, docs/ride.md §6).
//!
//! Reading the list decodes nothing. [`ImageList::streamed`] makes a data set whose images are
//! decoded when their batch is built (any sizes, any number); [`ImageList::decode`] decodes a
//! list of same-sized images into memory with the `image` crate in parallel (rayon).

use std::path::{Path, PathBuf};

use image::RgbImage;
use rayon::prelude::*;

use super::read_file;
use crate::dataset::{Dataset, ImageFiles};
use crate::error::{DataError, Result};

/// The largest label an image list may hold: 2^20 − 1, above every long-tailed benchmark
/// (iNaturalist 2018: 8,142 classes; Google Landmarks v2: about 200,000), so that a corrupt label
/// such as 4000000000 is an error rather than billions of classes to allocate.
pub const MAX_LABEL: u32 = (1 << 20) - 1;

/// A parsed image list: paths and labels, no pixels yet.
#[derive(Clone, Debug, PartialEq)]
pub struct ImageList {
    /// The list file (for error messages).
    pub list_path: PathBuf,
    /// The directory the paths are relative to.
    pub root: PathBuf,
    /// `(relative path, label)` in file order.
    pub entries: Vec<(PathBuf, u32)>,
}

impl ImageList {
    /// Parses `list_path`; paths in it are taken relative to `root`.
    ///
    /// Blank lines are skipped. The label is the last whitespace-separated field, so paths may
    /// contain spaces; it must be at most [`MAX_LABEL`] ([`DataError::ListLine`] naming the
    /// line otherwise).
    pub fn read(list_path: &Path, root: &Path) -> Result<ImageList> {
        let bytes = read_file(list_path)?;
        let text = String::from_utf8(bytes).map_err(|e| DataError::BadFormat {
            path: list_path.to_path_buf(),
            reason: format!("not UTF-8: {e}"),
        })?;
        let mut entries = Vec::new();
        for (k, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            let bad = |reason: String| DataError::ListLine {
                path: list_path.to_path_buf(),
                line: k + 1,
                reason,
            };
            let (path, label) = line
                .rsplit_once(char::is_whitespace)
                .ok_or_else(|| bad(format!("expected `path label`, found `{line}`")))?;
            let label: u32 = label
                .parse()
                .map_err(|_| bad(format!("label `{label}` is not a non-negative integer")))?;
            if label > MAX_LABEL {
                return Err(bad(format!(
                    "label {label} is above {MAX_LABEL}, the largest class index an image list may use"
                )));
            }
            entries.push((PathBuf::from(path.trim_end()), label));
        }
        if entries.is_empty() {
            return Err(DataError::Empty {
                what: list_path.display().to_string(),
            });
        }
        Ok(ImageList {
            list_path: list_path.to_path_buf(),
            root: root.to_path_buf(),
            entries,
        })
    }

    /// One more than the largest label.
    pub fn num_classes(&self) -> usize {
        self.entries
            .iter()
            .map(|e| e.1 as usize + 1)
            .max()
            .unwrap_or(0)
    }

    /// The smallest class below `num_classes` with no entry in this list, if any (a training
    /// list must have every class). Allocates at most `len + 1` flags: `n` entries cover at most
    /// `n` of the classes `0..=n`, so the smallest missing class is among them.
    pub fn first_missing_class(&self, num_classes: usize) -> Option<usize> {
        let mut seen = vec![false; num_classes.min(self.entries.len() + 1)];
        for &(_, l) in &self.entries {
            if let Some(s) = seen.get_mut(l as usize) {
                *s = true;
            }
        }
        seen.iter().position(|&s| !s)
    }

    /// Checks that every image of `lists` has the size of the first list's first image,
    /// reading only the headers (in parallel): [`DataError::MixedSizes`] names the first odd
    /// image. Decoding into memory needs one size; lists of mixed sizes are streamed instead.
    pub fn check_one_size(lists: &[&ImageList]) -> Result<()> {
        let size = |l: &ImageList, p: &Path| {
            let path = l.root.join(p);
            image::image_dimensions(&path).map_err(|source| DataError::Decode { path, source })
        };
        let Some((first, (p0, _))) = lists
            .iter()
            .find_map(|l| l.entries.first().map(|e| (*l, e)))
        else {
            return Ok(());
        };
        let (want_w, want_h) = size(first, p0)?;
        for l in lists {
            let sizes: Vec<(u32, u32)> = l
                .entries
                .par_iter()
                .map(|(p, _)| size(l, p))
                .collect::<Result<_>>()?;
            if let Some(k) = sizes.iter().position(|&s| s != (want_w, want_h)) {
                let (got_w, got_h) = sizes[k];
                return Err(DataError::MixedSizes {
                    path: l.root.join(&l.entries[k].0),
                    got_w,
                    got_h,
                    want_w,
                    want_h,
                });
            }
        }
        Ok(())
    }

    /// A streamed data set over this list's files: nothing is decoded here; the
    /// [`crate::Batcher`] decodes each image when its batch is built. The network sees
    /// `side × side` crops. Labels must be `< num_classes`.
    pub fn streamed(
        &self,
        side: usize,
        num_classes: usize,
        class_names: Vec<String>,
    ) -> Result<Dataset> {
        let files = ImageFiles {
            root: self.root.clone(),
            paths: self.entries.iter().map(|e| e.0.clone()).collect(),
        };
        Dataset::from_files(
            &self.list_path.display().to_string(),
            files,
            self.entries.iter().map(|e| e.1).collect(),
            side,
            num_classes,
            class_names,
        )
    }

    /// Decodes every image to RGB in parallel, at its own size, which must be the same for all
    /// ([`DataError::MixedSizes`] otherwise: images of mixed sizes are streamed, see
    /// [`ImageList::streamed`]). Labels must be `< num_classes`.
    pub fn decode(&self, num_classes: usize, class_names: Vec<String>) -> Result<Dataset> {
        let decoded: Vec<RgbImage> = self
            .entries
            .par_iter()
            .map(|(p, _)| {
                let path = self.root.join(p);
                Ok(image::open(&path)
                    .map_err(|source| DataError::Decode { path, source })?
                    .to_rgb8())
            })
            .collect::<Result<_>>()?;
        let (w, h) = decoded[0].dimensions();
        let mut images = Vec::with_capacity(decoded.len() * (w * h * 3) as usize);
        for (img, (p, _)) in decoded.iter().zip(&self.entries) {
            let (gw, gh) = img.dimensions();
            if (gw, gh) != (w, h) {
                return Err(DataError::MixedSizes {
                    path: self.root.join(p),
                    got_w: gw,
                    got_h: gh,
                    want_w: w,
                    want_h: h,
                });
            }
            images.extend_from_slice(img.as_raw());
        }
        let labels = self.entries.iter().map(|e| e.1).collect();
        Dataset::new(
            &self.list_path.display().to_string(),
            images,
            labels,
            (h as usize, w as usize, 3),
            num_classes,
            class_names,
            vec![],
        )
    }
}
