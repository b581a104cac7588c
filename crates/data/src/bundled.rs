//! The bundled default data set `fmnist-lt`: a long-tailed Fashion-MNIST subset compiled into the
//! binary, so training runs on a fresh machine with no data and no network.
//!
//! Recipe (also in `assets/fmnist-lt/README.md`), from the Debian package `dataset-fashion-mnist`:
//! - train: the LDAM-DRW procedure on `train-*-ubyte.gz` with `n_max = 1000`, IF 100, i.e.
//!   `n_i = int(1000 · 0.01^(i/9))` = 1000, 599, 359, 215, 129, 77, 46, 27, 16, 10 (2,478 images):
//!   `np.random.seed(0)`, then per class in label order shuffle the class's ascending indices and
//!   keep the first `n_i`;
//! - test: the same with a fresh `np.random.seed(0)` on `t10k-*-ubyte.gz`, 100 per class (1,000 images).
//!
//! Stored as gzipped IDX files plus one text file of original indices per split.

use std::io::Write;
use std::path::Path;

use flate2::write::GzEncoder;
use flate2::Compression;

use crate::dataset::Dataset;
use crate::error::{DataError, Result};
use crate::profile::{exponential_counts, ldam_subset};
use crate::readers::idx::{
    dataset_from_idx, encode_idx, load_idx_dir, maybe_gunzip, parse_idx, FASHION_MNIST_CLASSES,
};

/// `n_max` of the bundled training part.
pub const N_MAX: usize = 1000;
/// Imbalance factor of the bundled training part.
pub const IMBALANCE: f64 = 100.0;
/// Images per class in the bundled test part.
pub const TEST_PER_CLASS: usize = 100;

/// The asset files, in the order [`build_assets`] returns them.
pub const ASSET_NAMES: [&str; 6] = [
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "train-indices.txt",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
    "t10k-indices.txt",
];

const EMBEDDED: [&[u8]; 6] = [
    include_bytes!("../assets/fmnist-lt/train-images-idx3-ubyte.gz"),
    include_bytes!("../assets/fmnist-lt/train-labels-idx1-ubyte.gz"),
    include_bytes!("../assets/fmnist-lt/train-indices.txt"),
    include_bytes!("../assets/fmnist-lt/t10k-images-idx3-ubyte.gz"),
    include_bytes!("../assets/fmnist-lt/t10k-labels-idx1-ubyte.gz"),
    include_bytes!("../assets/fmnist-lt/t10k-indices.txt"),
];

fn class_names() -> Vec<String> {
    FASHION_MNIST_CLASSES
        .iter()
        .map(|s| s.to_string())
        .collect()
}

fn decode_split(images: &[u8], labels: &[u8], indices: &[u8], name: &str) -> Result<Dataset> {
    let ip = Path::new("<embedded>").join(format!("{name}-images"));
    let lp = Path::new("<embedded>").join(format!("{name}-labels"));
    let i = parse_idx(&ip, &maybe_gunzip(&ip, images.to_vec())?)?;
    let l = parse_idx(&lp, &maybe_gunzip(&lp, labels.to_vec())?)?;
    let mut d = dataset_from_idx(&ip, i, &lp, l, 10, class_names())?;
    let text = std::str::from_utf8(indices).map_err(|e| DataError::BadFormat {
        path: Path::new("<embedded>").join(format!("{name}-indices.txt")),
        reason: e.to_string(),
    })?;
    let src: Vec<usize> = text
        .lines()
        .enumerate()
        .map(|(k, l)| {
            l.trim().parse().map_err(|_| DataError::ListLine {
                path: Path::new("<embedded>").join(format!("{name}-indices.txt")),
                line: k + 1,
                reason: format!("`{l}` is not an index"),
            })
        })
        .collect::<Result<_>>()?;
    if src.len() != d.len() {
        return Err(DataError::CountMismatch {
            what: format!("embedded {name} indices"),
            images: d.len(),
            labels: src.len(),
        });
    }
    d.source_indices = src;
    Ok(d)
}

/// The embedded `(train, test)` splits; `source_indices` are positions in the original
/// Fashion-MNIST `train` / `t10k` files.
pub fn load() -> Result<(Dataset, Dataset)> {
    Ok((
        decode_split(EMBEDDED[0], EMBEDDED[1], EMBEDDED[2], "train")?,
        decode_split(EMBEDDED[3], EMBEDDED[4], EMBEDDED[5], "t10k")?,
    ))
}

/// Draws the bundled `(train, test)` splits from the Fashion-MNIST IDX files in `dir`, following
/// the recipe in the module documentation.
pub fn build_from_dir(dir: &Path) -> Result<(Dataset, Dataset)> {
    let (train, test) = load_idx_dir(dir, 10, class_names())?;
    let counts = exponential_counts(N_MAX as f64, 10, IMBALANCE)?;
    let train = train.subset(&ldam_subset(&train.labels, &counts, 0));
    let test = test.subset(&ldam_subset(&test.labels, &[TEST_PER_CLASS; 10], 0));
    Ok((train, test))
}

/// The six asset files' bytes for `(train, test)`, in [`ASSET_NAMES`] order (gzip level 9, no
/// file name, mtime 0).
pub fn build_assets(train: &Dataset, test: &Dataset) -> Result<Vec<Vec<u8>>> {
    let mut out = Vec::new();
    for d in [train, test] {
        let gz = |raw: Vec<u8>| -> Result<Vec<u8>> {
            let mut e = GzEncoder::new(Vec::new(), Compression::best());
            e.write_all(&raw).map_err(|e| DataError::io("<gzip>", e))?;
            e.finish().map_err(|e| DataError::io("<gzip>", e))
        };
        let labels: Vec<u8> = d.labels.iter().map(|&l| l as u8).collect();
        out.push(gz(encode_idx(&[d.len(), d.height, d.width], &d.images))?);
        out.push(gz(encode_idx(&[d.len()], &labels))?);
        let mut text = String::new();
        for i in &d.source_indices {
            text.push_str(&i.to_string());
            text.push('\n');
        }
        out.push(text.into_bytes());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_set_has_the_recipe_counts() {
        let (train, test) = load().unwrap();
        assert_eq!(
            train.class_counts(),
            [1000, 599, 359, 215, 129, 77, 46, 27, 16, 10]
        );
        assert_eq!(test.class_counts(), [100; 10]);
        assert_eq!((train.height, train.width, train.channels), (28, 28, 1));
        // Kept images are stacked class by class, and source indices are distinct.
        assert!(train.labels.windows(2).all(|w| w[0] <= w[1]));
        let mut s = train.source_indices.clone();
        s.sort_unstable();
        s.dedup();
        assert_eq!(s.len(), train.len());
        assert!(s.iter().all(|&i| i < 60_000));
    }

    #[test]
    fn assets_round_trip() {
        let (train, test) = load().unwrap();
        let files = build_assets(&train, &test).unwrap();
        let again_train = decode_split(&files[0], &files[1], &files[2], "train").unwrap();
        let again_test = decode_split(&files[3], &files[4], &files[5], "t10k").unwrap();
        assert_eq!(again_train, train);
        assert_eq!(again_test, test);
    }
}
