//! The in-memory data set every reader returns, and the split helpers.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::error::{DataError, Result};

/// The image files of a streamed data set: `root.join(paths[s])` is the image with source
/// index `s` (its line in the list file).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageFiles {
    /// The directory the paths are relative to.
    pub root: PathBuf,
    /// One relative path per source index.
    pub paths: Vec<PathBuf>,
}

/// A labelled image set: u8 pixels in memory (HWC, all images the same size), or image files
/// decoded on demand ([`Dataset::files`], a streamed set).
///
/// A streamed set (ImageNet-LT, iNaturalist 2018, Places-LT: 22–86 GB of pixels once decoded)
/// holds only paths and labels; the [`crate::Batcher`] decodes and transforms each image on its
/// worker threads. Its `height` / `width` are the nominal side the network sees (the crop size),
/// which is what memory estimates and MAC counts need; `images` is empty.
///
/// `source_indices[k]` is the position of image `k` in the original file order (the concatenated
/// `data_batch_1..5.bin`, the IDX file, the list file), so a subset can be compared with another
/// codebase's.
#[derive(Clone, Debug, PartialEq)]
pub struct Dataset {
    /// Pixels, `len · height · width · channels` bytes, image-major, HWC within an image.
    pub images: Vec<u8>,
    /// One label per image, each `< num_classes`.
    pub labels: Vec<u32>,
    /// Channels per pixel (1 or 3).
    pub channels: usize,
    /// Image height.
    pub height: usize,
    /// Image width.
    pub width: usize,
    /// Number of classes (labels run `0..num_classes`; a class may have no images).
    pub num_classes: usize,
    /// One name per class.
    pub class_names: Vec<String>,
    /// Index of each image in the original file order.
    pub source_indices: Vec<usize>,
    /// For a streamed set, its image files (indexed by source index); `None` for pixels in memory.
    pub files: Option<Arc<ImageFiles>>,
}

impl Dataset {
    /// Builds a data set, checking that sizes agree and every label is `< num_classes`.
    ///
    /// `class_names` may be empty, which names the classes `class_0`, `class_1`, …;
    /// `source_indices` may be empty, which means `0..len`. `what` names the source in errors.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        what: &str,
        images: Vec<u8>,
        labels: Vec<u32>,
        (height, width, channels): (usize, usize, usize),
        num_classes: usize,
        class_names: Vec<String>,
        source_indices: Vec<usize>,
    ) -> Result<Dataset> {
        let per = height * width * channels;
        if per == 0 {
            return Err(DataError::BadParameter {
                name: "image shape",
                value: format!("{height}x{width}x{channels}"),
                reason: "every side must be positive".into(),
            });
        }
        if images.len() != per * labels.len() {
            return Err(DataError::CountMismatch {
                what: what.into(),
                images: images.len() / per,
                labels: labels.len(),
            });
        }
        if let Some((index, &label)) = labels
            .iter()
            .enumerate()
            .find(|(_, &l)| l as usize >= num_classes)
        {
            return Err(DataError::LabelOutOfRange {
                source_name: what.into(),
                index,
                label,
                num_classes,
            });
        }
        let class_names = if class_names.is_empty() {
            (0..num_classes).map(|c| format!("class_{c}")).collect()
        } else if class_names.len() == num_classes {
            class_names
        } else {
            return Err(DataError::BadParameter {
                name: "class names",
                value: class_names.len().to_string(),
                reason: format!("{what} has {num_classes} classes"),
            });
        };
        let source_indices = if source_indices.is_empty() {
            (0..labels.len()).collect()
        } else if source_indices.len() == labels.len() {
            source_indices
        } else {
            return Err(DataError::CountMismatch {
                what: format!("{what} source indices"),
                images: labels.len(),
                labels: source_indices.len(),
            });
        };
        Ok(Dataset {
            images,
            labels,
            channels,
            height,
            width,
            num_classes,
            class_names,
            source_indices,
            files: None,
        })
    }

    /// A streamed data set over `files`: `labels[s]` is the label of `files.paths[s]`; the network
    /// sees `side × side` RGB crops. `class_names` may be empty (`class_0`, …). `what` names the
    /// source in errors.
    pub fn from_files(
        what: &str,
        files: ImageFiles,
        labels: Vec<u32>,
        side: usize,
        num_classes: usize,
        class_names: Vec<String>,
    ) -> Result<Dataset> {
        if files.paths.len() != labels.len() {
            return Err(DataError::CountMismatch {
                what: what.into(),
                images: files.paths.len(),
                labels: labels.len(),
            });
        }
        // Validate everything else through the in-memory constructor on a 1-pixel stand-in.
        let mut d = Dataset::new(
            what,
            vec![0; labels.len()],
            labels,
            (1, 1, 1),
            num_classes,
            class_names,
            vec![],
        )?;
        if side == 0 {
            return Err(DataError::BadParameter {
                name: "image size",
                value: "0".into(),
                reason: "the crop side must be positive".into(),
            });
        }
        d.images = Vec::new();
        d.channels = 3;
        d.height = side;
        d.width = side;
        d.files = Some(Arc::new(files));
        Ok(d)
    }

    /// Whether the images are files decoded on demand rather than pixels in memory.
    pub fn is_streamed(&self) -> bool {
        self.files.is_some()
    }

    /// The file of image `i` of a streamed set (`None` for pixels in memory).
    ///
    /// # Panics
    /// If `i >= len()`, like slice indexing.
    pub fn image_path(&self, i: usize) -> Option<PathBuf> {
        self.files
            .as_ref()
            .map(|f| f.root.join(&f.paths[self.source_indices[i]]))
    }

    /// The root directory of a streamed set's files.
    pub fn files_root(&self) -> Option<&Path> {
        self.files.as_ref().map(|f| f.root.as_path())
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether there are no images.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Bytes per image (`height · width · channels`).
    pub fn image_len(&self) -> usize {
        self.height * self.width * self.channels
    }

    /// Images per class, `num_classes` entries.
    pub fn class_counts(&self) -> Vec<usize> {
        let mut counts = vec![0; self.num_classes];
        for &l in &self.labels {
            counts[l as usize] += 1;
        }
        counts
    }

    /// The HWC bytes of image `i`.
    ///
    /// # Panics
    /// If `i >= len()`, like slice indexing, and for a streamed set (no pixels in memory: see
    /// [`Dataset::is_streamed`]; the [`crate::Batcher`] decodes those).
    pub fn image(&self, i: usize) -> &[u8] {
        let n = self.image_len();
        &self.images[i * n..(i + 1) * n]
    }

    /// The images at `indices`, in that order (repeats allowed), keeping their source indices.
    ///
    /// # Panics
    /// If an index is `>= len()`, like slice indexing; [`Dataset::try_subset`] returns an error instead.
    pub fn subset(&self, indices: &[usize]) -> Dataset {
        let mut images = Vec::new();
        if self.files.is_none() {
            images.reserve(indices.len() * self.image_len());
            for &i in indices {
                images.extend_from_slice(self.image(i));
            }
        }
        Dataset {
            images,
            labels: indices.iter().map(|&i| self.labels[i]).collect(),
            channels: self.channels,
            height: self.height,
            width: self.width,
            num_classes: self.num_classes,
            class_names: self.class_names.clone(),
            source_indices: indices.iter().map(|&i| self.source_indices[i]).collect(),
            files: self.files.clone(),
        }
    }

    /// [`Dataset::subset`] with a typed error for an out-of-range index.
    pub fn try_subset(&self, indices: &[usize]) -> Result<Dataset> {
        if let Some(&bad) = indices.iter().find(|&&i| i >= self.len()) {
            return Err(DataError::BadParameter {
                name: "subset index",
                value: bad.to_string(),
                reason: format!("the set has {} images", self.len()),
            });
        }
        Ok(self.subset(indices))
    }

    /// Indices of each class's images, ascending.
    pub fn class_indices(&self) -> Vec<Vec<usize>> {
        let mut per = vec![Vec::new(); self.num_classes];
        for (i, &l) in self.labels.iter().enumerate() {
            per[l as usize].push(i);
        }
        per
    }

    /// Fails with [`DataError::EmptyClass`] if a class has no image.
    pub fn check_no_empty_class(&self, what: &str) -> Result<()> {
        match self.class_counts().iter().position(|&n| n == 0) {
            Some(class) => Err(DataError::EmptyClass {
                what: what.into(),
                class,
            }),
            None => Ok(()),
        }
    }

    /// Carves a validation set out of this training set, stratified by class.
    ///
    /// Class `c` with `n_c` images gives `round(fraction · n_c)` of them, clamped so that a class
    /// with at least two images gives at least one and keeps at least one. Which images go is
    /// drawn with ChaCha8 seeded by `seed`. Returns `(train, val)`, each in ascending original order.
    pub fn split_validation(&self, fraction: f64, seed: u64) -> Result<(Dataset, Dataset)> {
        if !(fraction > 0.0 && fraction < 1.0) {
            return Err(DataError::BadParameter {
                name: "validation fraction",
                value: fraction.to_string(),
                reason: "it must lie strictly between 0 and 1".into(),
            });
        }
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut val = Vec::new();
        let mut train = Vec::new();
        for mut idx in self.class_indices() {
            let n = idx.len();
            let mut v = (fraction * n as f64).round() as usize;
            if n >= 2 {
                v = v.clamp(1, n - 1);
            } else {
                v = 0;
            }
            idx.shuffle(&mut rng);
            val.extend_from_slice(&idx[..v]);
            train.extend_from_slice(&idx[v..]);
        }
        val.sort_unstable();
        train.sort_unstable();
        Ok((self.subset(&train), self.subset(&val)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> Dataset {
        let labels = vec![0, 1, 1, 2, 0, 1];
        let images: Vec<u8> = (0..6 * 2 * 2).map(|x| x as u8).collect();
        Dataset::new("tiny", images, labels, (2, 2, 1), 3, vec![], vec![]).unwrap()
    }

    #[test]
    fn counts_subset_and_image() {
        let d = tiny();
        assert_eq!(d.class_counts(), [2, 3, 1]);
        assert_eq!(d.image(1), &[4, 5, 6, 7]);
        let s = d.subset(&[5, 0, 5]);
        assert_eq!(s.labels, [1, 0, 1]);
        assert_eq!(s.source_indices, [5, 0, 5]);
        assert_eq!(s.image(0), &[20, 21, 22, 23]);
        assert!(d.try_subset(&[6]).is_err());
    }

    #[test]
    fn new_rejects_bad_labels_and_sizes() {
        let e = Dataset::new("x", vec![0; 8], vec![0, 3], (2, 2, 1), 3, vec![], vec![]);
        assert!(matches!(
            e,
            Err(DataError::LabelOutOfRange {
                index: 1,
                label: 3,
                ..
            })
        ));
        let e = Dataset::new("x", vec![0; 7], vec![0, 1], (2, 2, 1), 3, vec![], vec![]);
        assert!(matches!(e, Err(DataError::CountMismatch { .. })));
    }

    #[test]
    fn validation_split_is_stratified_and_disjoint() {
        let d = tiny();
        let (train, val) = d.split_validation(0.5, 3).unwrap();
        assert_eq!(train.len() + val.len(), d.len());
        assert_eq!(val.class_counts(), [1, 2, 0]);
        let mut all: Vec<usize> = train
            .source_indices
            .iter()
            .chain(&val.source_indices)
            .copied()
            .collect();
        all.sort_unstable();
        assert_eq!(all, (0..6).collect::<Vec<_>>());
        assert_eq!(d.split_validation(0.5, 3).unwrap().1, val);
        assert!(d.split_validation(1.0, 3).is_err());
    }
}
