//! Named data sets and [`load_splits`]: from a name and a directory to train / val / test.

use std::path::{Path, PathBuf};

use crate::bundled;
use crate::dataset::Dataset;
use crate::error::{DataError, Result};
use crate::profile::{check_imbalance, exponential_counts, ldam_subset};
use crate::readers::cifar::{load_cifar_with, CifarKind, CifarRecords};
use crate::readers::idx::{load_idx_dir, DEBIAN_FASHION_MNIST_DIR, FASHION_MNIST_CLASSES};
use crate::readers::image_list::ImageList;
use crate::transform::Normalize;

/// The data sets [`load_splits`] knows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum DatasetName {
    /// The bundled Fashion-MNIST-LT (IF 100, 28×28×1, 10 classes); needs no files. The default.
    #[default]
    FmnistLt,
    /// CIFAR-10-LT from the CIFAR-10 binary files, LDAM-DRW subset.
    Cifar10Lt,
    /// CIFAR-100-LT from the CIFAR-100 binary files, LDAM-DRW subset.
    Cifar100Lt,
    /// Fashion-MNIST from an IDX directory (default: the Debian package's), LDAM-DRW subset.
    Fmnist,
    /// Your own image lists (`path label` per line: `train.txt` or `NAME_train.txt`, and
    /// `test.txt` / `val.txt`) under a root directory. [`load_splits`] decodes them into memory
    /// at their own size, which must be one for all (small same-sized sets, e.g. CIFAR as PNG,
    /// with the pad-and-crop recipes); [`load_image_lists_streamed`] streams any number of images
    /// of any sizes, as the benchmarks (what training with a resized-crop augmentation uses).
    ImageList,
    /// ImageNet-LT from `ImageNet_LT_{train,val,test}.txt` under the image root, streamed.
    ImagenetLt,
    /// iNaturalist 2018 from `iNaturalist18_{train,val}.txt`, streamed; the val list is the test set.
    Inat2018,
    /// Places-LT from `Places_LT_{train,val,test}.txt`, streamed.
    PlacesLt,
}

impl DatasetName {
    /// All names, in `--help` order.
    pub const ALL: [DatasetName; 8] = [
        DatasetName::FmnistLt,
        DatasetName::Cifar10Lt,
        DatasetName::Cifar100Lt,
        DatasetName::Fmnist,
        DatasetName::ImageList,
        DatasetName::ImagenetLt,
        DatasetName::Inat2018,
        DatasetName::PlacesLt,
    ];

    /// The command-line name.
    pub fn as_str(self) -> &'static str {
        match self {
            DatasetName::FmnistLt => "fmnist-lt",
            DatasetName::Cifar10Lt => "cifar10-lt",
            DatasetName::Cifar100Lt => "cifar100-lt",
            DatasetName::Fmnist => "fmnist",
            DatasetName::ImageList => "image-list",
            DatasetName::ImagenetLt => "imagenet-lt",
            DatasetName::Inat2018 => "inat2018",
            DatasetName::PlacesLt => "places-lt",
        }
    }

    /// The official list files of a streamed benchmark, `(train, test, validation)`, as RIDE's and
    /// SADE's loaders read them (docs/ride.md §6): ImageNet-LT and Places-LT test on their test
    /// list and have a val list (SADE selects models on it; RIDE uses none); iNaturalist 2018
    /// tests on its val list and has no validation. `None` for the other data sets.
    pub fn official_lists(self) -> Option<(&'static str, &'static str, Option<&'static str>)> {
        match self {
            DatasetName::ImagenetLt => Some((
                "ImageNet_LT_train.txt",
                "ImageNet_LT_test.txt",
                Some("ImageNet_LT_val.txt"),
            )),
            DatasetName::Inat2018 => {
                Some(("iNaturalist18_train.txt", "iNaturalist18_val.txt", None))
            }
            DatasetName::PlacesLt => Some((
                "Places_LT_train.txt",
                "Places_LT_test.txt",
                Some("Places_LT_val.txt"),
            )),
            _ => None,
        }
    }

    /// The class count of the full benchmark: 1000 (ImageNet-LT), 8142 (iNaturalist 2018),
    /// 365 (Places-LT); `None` for the others.
    pub fn benchmark_classes(self) -> Option<usize> {
        match self {
            DatasetName::ImagenetLt => Some(1000),
            DatasetName::Inat2018 => Some(8142),
            DatasetName::PlacesLt => Some(365),
            _ => None,
        }
    }

    /// Whether the data set is streamed from image files rather than held in memory.
    pub fn is_streamed(self) -> bool {
        self.official_lists().is_some()
    }

    /// The official training augmentation of a streamed benchmark: RandomResizedCrop → flip →
    /// ColorJitter(0.4, 0.4, 0.4, 0) for ImageNet-LT and Places-LT, without the jitter for
    /// iNaturalist 2018 (docs/ride.md §6); `None` for the others.
    pub fn official_augment(self) -> Option<crate::transform::AugmentKind> {
        use crate::transform::AugmentKind;
        match self {
            DatasetName::ImagenetLt | DatasetName::PlacesLt => Some(AugmentKind::Imagenet),
            DatasetName::Inat2018 => Some(AugmentKind::ResizedCropFlip),
            _ => None,
        }
    }

    /// One line to show when a streamed benchmark's lists hold another number of classes than
    /// the benchmark (a subset is a legitimate run, but worth a word).
    pub fn class_count_warning(self, classes: usize) -> Option<String> {
        let want = self.benchmark_classes()?;
        (classes != want).then(|| {
            format!(
                "warning: the {self} lists hold {classes} classes, the benchmark has {want}: training on a subset"
            )
        })
    }

    /// The normalisation RIDE / SADE use for this data set: CIFAR-10 statistics for both CIFAR-LT
    /// sets (docs/ride.md §6), Fashion-MNIST statistics for the Fashion-MNIST sets, ImageNet
    /// statistics for image lists.
    pub fn normalize(self) -> Normalize {
        match self {
            DatasetName::FmnistLt | DatasetName::Fmnist => Normalize::fashion_mnist(),
            DatasetName::Cifar10Lt | DatasetName::Cifar100Lt => Normalize::cifar(),
            DatasetName::ImageList | DatasetName::ImagenetLt | DatasetName::PlacesLt => {
                Normalize::imagenet()
            }
            DatasetName::Inat2018 => Normalize::inaturalist(),
        }
    }
}

impl std::fmt::Display for DatasetName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for DatasetName {
    type Err = DataError;
    fn from_str(s: &str) -> Result<Self> {
        DatasetName::ALL
            .into_iter()
            .find(|d| d.as_str() == s)
            .ok_or_else(|| DataError::UnknownDataset { name: s.into() })
    }
}

impl Normalize {
    /// The default normalisation of a data set (see [`DatasetName::normalize`]).
    pub fn for_dataset(name: DatasetName) -> Normalize {
        name.normalize()
    }
}

/// What to load.
#[derive(Clone, Debug, PartialEq)]
pub struct DataSpec {
    /// Which data set.
    pub name: DatasetName,
    /// Its directory (unused by `fmnist-lt`; `fmnist` defaults to the Debian package's). For
    /// `cifar10-lt` / `cifar100-lt` it may name the Hub instead, `hf://uoft-cs/cifar10` (feature
    /// `hub`; see `readers::hub`).
    pub data_dir: Option<PathBuf>,
    /// Imbalance factor `max/min` of the training subset (≥ 1; 1 keeps every image). `fmnist-lt`
    /// is fixed at 100; `image-list` ignores it (the lists are already long-tailed).
    pub imbalance: f64,
    /// Carve this fraction of each class out of the training set as a validation set.
    pub val_fraction: Option<f64>,
    /// Seed of the validation split. The long-tailed subset itself always uses numpy seed 0, the
    /// LDAM-DRW subset everyone reports on.
    pub seed: u64,
}

impl Default for DataSpec {
    fn default() -> Self {
        DataSpec {
            name: DatasetName::FmnistLt,
            data_dir: None,
            imbalance: bundled::IMBALANCE,
            val_fraction: None,
            seed: 0,
        }
    }
}

/// Train, optional validation, and test sets.
#[derive(Clone, Debug, PartialEq)]
pub struct Splits {
    /// Training set.
    pub train: Dataset,
    /// Validation set carved from the training set when asked (model selection happens here, never on test).
    pub val: Option<Dataset>,
    /// Test set.
    pub test: Dataset,
}

/// The LDAM-DRW long-tailed subset of a full training set: `n_max = len / C` (as
/// `IMBALANCECIFAR10`), the exponential profile with `imbalance`, numpy seed 0.
pub fn ldam_long_tail(train: &Dataset, imbalance: f64) -> Result<Dataset> {
    let n_max = train.len() as f64 / train.num_classes as f64;
    let counts = exponential_counts(n_max, train.num_classes, imbalance)?;
    Ok(train.subset(&ldam_subset(&train.labels, &counts, 0)))
}

fn need_dir<'a>(spec: &'a DataSpec, hint: &str) -> Result<&'a Path> {
    spec.data_dir
        .as_deref()
        .ok_or_else(|| DataError::NoDataDir {
            dataset: spec.name.to_string(),
            hint: hint.into(),
        })
}

/// A CIFAR `--data-dir` that names the Hub, `hf://owner/name[@revision][/config]` (`hf://` alone:
/// `uoft-cs/cifar10` or `uoft-cs/cifar100`), rather than a directory of binary files.
fn hub_reference(dir: &Path) -> Option<&str> {
    dir.to_str().filter(|s| s.starts_with("hf://"))
}

/// CIFAR train and test splits from the Hub's parquet files (`readers::hub`), with the options
/// from the environment (`HF_HUB_OFFLINE`, `HF_HUB_CACHE` / `HF_HOME`, `HF_ENDPOINT`).
#[cfg(feature = "hub")]
fn load_cifar_from_hub(reference: &str, kind: CifarKind) -> Result<(Dataset, Dataset)> {
    use crate::readers::hub::{load_cifar_hub, HubDataOptions, HubSource};
    load_cifar_hub(
        &HubSource::parse(reference, kind)?,
        kind,
        &HubDataOptions::from_env(),
    )
}

/// Without the `hub` feature an `hf://` data directory is an error that says how to get one.
#[cfg(not(feature = "hub"))]
fn load_cifar_from_hub(reference: &str, _kind: CifarKind) -> Result<(Dataset, Dataset)> {
    Err(DataError::BadParameter {
        name: "data directory",
        value: reference.into(),
        reason: "reading CIFAR from the Hub needs the `hub` cargo feature (cargo build --features hub); \
                 or pass a directory of the CIFAR binary files"
            .into(),
    })
}

/// Finds `train.txt` / `*_train.txt`-style list files for image-list data sets.
fn find_list(dir: &Path, split: &str) -> Result<Option<PathBuf>> {
    let plain = dir.join(format!("{split}.txt"));
    if plain.is_file() {
        return Ok(Some(plain));
    }
    let suffix = format!("_{split}.txt");
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| DataError::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_file()
                && p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.ends_with(&suffix))
        })
        .collect();
    found.sort();
    match found.len() {
        0 => Ok(None),
        1 => Ok(found.pop()),
        _ => Err(DataError::BadFormat {
            path: dir.to_path_buf(),
            reason: format!("several *{suffix} lists: {found:?}"),
        }),
    }
}

/// The train, optional val, and test lists of an image-list directory.
fn image_lists(dir: &Path) -> Result<(ImageList, Option<ImageList>, ImageList)> {
    crate::readers::check_dir(dir)?;
    let hint = "an image-list directory needs train.txt (or NAME_train.txt) and test.txt or val.txt, lines `relative/path label`";
    let train_list = find_list(dir, "train")?.ok_or_else(|| DataError::MissingFile {
        path: dir.join("train.txt"),
        hint: hint.into(),
    })?;
    let val_list = find_list(dir, "val")?;
    let (test_list, val_list) = match (find_list(dir, "test")?, val_list) {
        (Some(t), v) => (t, v),
        // iNaturalist: the val list doubles as the test set.
        (None, Some(v)) => (v, None),
        (None, None) => {
            return Err(DataError::MissingFile {
                path: dir.join("test.txt"),
                hint: hint.into(),
            })
        }
    };
    let train = ImageList::read(&train_list, dir)?;
    let test = ImageList::read(&test_list, dir)?;
    let val = val_list.map(|v| ImageList::read(&v, dir)).transpose()?;
    Ok((train, val, test))
}

fn load_image_lists(dir: &Path) -> Result<(Dataset, Option<Dataset>, Dataset)> {
    let (train, val, test) = image_lists(dir)?;
    let lists: Vec<&ImageList> = [Some(&train), Some(&test), val.as_ref()]
        .into_iter()
        .flatten()
        .collect();
    let classes = lists.iter().map(|l| l.num_classes()).max().unwrap_or(0);
    // Every class needs training images (`load_splits` checks it again on the data set): fail
    // before decoding anything.
    if let Some(class) = train.first_missing_class(classes) {
        return Err(DataError::EmptyClass {
            what: format!("{} training set", DatasetName::ImageList),
            class,
        });
    }
    // Into memory at the images' own size, which every split must share: nothing is resized
    // behind the user's back (lists of mixed sizes are streamed, `load_image_lists_streamed`).
    ImageList::check_one_size(&lists)?;
    let decode = |l: &ImageList| l.decode(classes, vec![]);
    Ok((
        decode(&train)?,
        val.as_ref().map(decode).transpose()?,
        decode(&test)?,
    ))
}

/// How a streamed data set is read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StreamOptions {
    /// The side of the square crops the network sees (224 in the papers).
    pub side: usize,
    /// Read the benchmark's validation list as the validation set (SADE's model selection on
    /// ImageNet-LT and Places-LT); off by default, as RIDE's loaders.
    pub val_list: bool,
}

impl Default for StreamOptions {
    fn default() -> Self {
        StreamOptions {
            side: 224,
            val_list: false,
        }
    }
}

/// Class count of lists: one more than the largest label of any.
fn lists_classes(lists: &[&ImageList]) -> usize {
    lists.iter().map(|l| l.num_classes()).max().unwrap_or(0)
}

/// Splits of a streamed benchmark (ImageNet-LT, iNaturalist 2018, Places-LT) from its official
/// lists under `root` ([`DatasetName::official_lists`]); paths in the lists are relative to
/// `root`. Nothing is decoded. The class count is one more than the largest label of the lists
/// read ([`DatasetName::class_count_warning`] says when it is not the benchmark's); every class
/// needs a training image.
///
/// Differs from official: SADE's Places-LT loader renumbers the classes by descending training
/// count (with numpy's unstable argsort, whose tie order cannot be reproduced); the labels here
/// are the lists' own. Accuracies, shot groups and per-class results are the same up to the
/// naming of the classes (docs/sade.md).
pub fn load_benchmark(name: DatasetName, root: &Path, opts: StreamOptions) -> Result<Splits> {
    let (train, test, val) = benchmark_lists(name, root, opts.val_list)?;
    streamed_splits(name, &train, &test, val.as_ref(), opts.side)
}

/// The class count [`load_benchmark`] finds in a benchmark's lists (one more than the largest
/// label of the lists it reads), reading only the list files: what a benchmark preset sizes its
/// classifier by, so that a subset of the benchmark trains as it is.
pub fn benchmark_list_classes(name: DatasetName, root: &Path, val_list: bool) -> Result<usize> {
    let (train, test, val) = benchmark_lists(name, root, val_list)?;
    Ok(lists_classes(
        &[&train, &test]
            .into_iter()
            .chain(val.as_ref())
            .collect::<Vec<_>>(),
    ))
}

/// A benchmark's official `(train, test, validation)` lists under `root`; the validation list
/// only when asked for and the benchmark has one.
fn benchmark_lists(
    name: DatasetName,
    root: &Path,
    val_list: bool,
) -> Result<(ImageList, ImageList, Option<ImageList>)> {
    let Some((train, test, val)) = name.official_lists() else {
        return Err(DataError::BadParameter {
            name: "streamed data set",
            value: name.to_string(),
            reason: "only imagenet-lt, inat2018 and places-lt have official lists".into(),
        });
    };
    crate::readers::check_dir(root)?;
    let read = |file: &str| -> Result<ImageList> {
        let path = root.join(file);
        if !path.is_file() {
            return Err(DataError::MissingFile {
                path,
                hint: format!(
                    "the {name} lists {train}, {test}{} sit in the image root; lines `relative/path label`",
                    val.map(|v| format!(", {v}")).unwrap_or_default()
                ),
            });
        }
        ImageList::read(&path, root)
    };
    let train = read(train)?;
    let test = read(test)?;
    let val = match (val_list, val) {
        (true, Some(v)) => Some(read(v)?),
        _ => None,
    };
    Ok((train, test, val))
}

fn streamed_splits(
    name: DatasetName,
    train: &ImageList,
    test: &ImageList,
    val: Option<&ImageList>,
    side: usize,
) -> Result<Splits> {
    let lists: Vec<&ImageList> = [Some(train), Some(test), val]
        .into_iter()
        .flatten()
        .collect();
    let classes = lists_classes(&lists);
    if let Some(class) = train.first_missing_class(classes) {
        return Err(DataError::EmptyClass {
            what: format!("{name} training set"),
            class,
        });
    }
    Ok(Splits {
        train: train.streamed(side, classes, vec![])?,
        val: val.map(|v| v.streamed(side, classes, vec![])).transpose()?,
        test: test.streamed(side, classes, vec![])?,
    })
}

/// An image-list directory (`train.txt` or `NAME_train.txt`, and `test.txt` / `val.txt`, as
/// [`DatasetName::ImageList`] finds them) as streamed sets of `side × side` crops, whatever the
/// number or sizes of the images: what training with a resized-crop augmentation reads, and
/// what `longtail bench data` measures. A `val` list is the validation set when there is also
/// a test list (else it is the test set, as iNaturalist's).
pub fn load_image_lists_streamed(dir: &Path, side: usize) -> Result<Splits> {
    let (train, val, test) = image_lists(dir)?;
    streamed_splits(DatasetName::ImageList, &train, &test, val.as_ref(), side)
}

/// The class count of an image-list directory's lists (one more than their largest label),
/// reading only the list files: what a recipe for your own lists sizes its classifier by.
pub fn image_list_classes(dir: &Path) -> Result<usize> {
    let (train, val, test) = image_lists(dir)?;
    Ok(lists_classes(
        &[&train, &test]
            .into_iter()
            .chain(val.as_ref())
            .collect::<Vec<_>>(),
    ))
}

/// Reader settings that [`load_splits`] keeps at their defaults, the real formats' rules.
///
/// Only tests (and tools that build tiny CIFAR-format files on purpose) change them, through
/// [`load_splits_with`]; the CLI never does.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LoadOptions {
    /// How many records each CIFAR binary file must hold (default: the published counts).
    pub cifar_records: CifarRecords,
}

/// Loads a named data set's splits.
///
/// The training set is the long-tailed subset (LDAM-DRW procedure, numpy seed 0); the test set
/// is the full balanced test split. With `val_fraction`, a stratified validation set is carved
/// from the training set ([`Dataset::split_validation`]); an image-list directory's own val list
/// is used when present and no fraction is given. Fails when a class of the training set is
/// empty.
pub fn load_splits(spec: &DataSpec) -> Result<Splits> {
    load_splits_with(spec, LoadOptions::default())
}

/// [`load_splits`] with explicit reader settings (see [`LoadOptions`]).
pub fn load_splits_with(spec: &DataSpec, options: LoadOptions) -> Result<Splits> {
    check_imbalance(spec.imbalance)?;
    let (train, list_val, test) = match spec.name {
        DatasetName::FmnistLt => {
            if (spec.imbalance - bundled::IMBALANCE).abs() > 1e-9 {
                return Err(DataError::BadParameter {
                    name: "imbalance factor for fmnist-lt",
                    value: spec.imbalance.to_string(),
                    reason: "the bundled set is fixed at 100; use --dataset fmnist (the IDX files) for other factors"
                        .into(),
                });
            }
            let (train, test) = bundled::load()?;
            (train, None, test)
        }
        DatasetName::Cifar10Lt | DatasetName::Cifar100Lt => {
            let kind = if spec.name == DatasetName::Cifar10Lt {
                CifarKind::Cifar10
            } else {
                CifarKind::Cifar100
            };
            let hint = match kind {
                CifarKind::Cifar10 => {
                    "the CIFAR-10 binary files data_batch_1..5.bin and test_batch.bin"
                }
                CifarKind::Cifar100 => "the CIFAR-100 binary files train.bin and test.bin",
            };
            let (train, test) = match spec.data_dir.as_deref().and_then(hub_reference) {
                Some(reference) => load_cifar_from_hub(reference, kind)?,
                None => load_cifar_with(need_dir(spec, hint)?, kind, options.cifar_records)?,
            };
            (ldam_long_tail(&train, spec.imbalance)?, None, test)
        }
        DatasetName::Fmnist => {
            let dir = spec
                .data_dir
                .clone()
                .unwrap_or_else(|| PathBuf::from(DEBIAN_FASHION_MNIST_DIR));
            let names = FASHION_MNIST_CLASSES
                .iter()
                .map(|s| s.to_string())
                .collect();
            let (train, test) = load_idx_dir(&dir, 10, names)?;
            (ldam_long_tail(&train, spec.imbalance)?, None, test)
        }
        DatasetName::ImageList => {
            let dir = need_dir(
                spec,
                "the image root holding train.txt and test.txt (lines `relative/path label`)",
            )?;
            load_image_lists(dir)?
        }
        DatasetName::ImagenetLt | DatasetName::Inat2018 | DatasetName::PlacesLt => {
            let dir = need_dir(
                spec,
                "the image root holding the official lists (e.g. ImageNet_LT_train.txt) and the images they name",
            )?;
            let s = load_benchmark(spec.name, dir, StreamOptions::default())?;
            (s.train, s.val, s.test)
        }
    };
    train.check_no_empty_class(&format!("{} training set", spec.name))?;
    let (train, val) = match spec.val_fraction {
        Some(f) => {
            let (t, v) = train.split_validation(f, spec.seed)?;
            (t, Some(v))
        }
        None => (train, list_val),
    };
    Ok(Splits { train, val, test })
}
