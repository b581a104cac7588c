//! The one error type of this crate.

use std::path::PathBuf;

/// Everything that can go wrong while reading, subsetting, augmenting or batching data.
///
/// Messages are lower-case and name what failed (path, record, expected and found values).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DataError {
    /// A file could not be opened or read.
    #[error("{}: {source}", .path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A data directory does not exist.
    #[error("data directory {} does not exist", .path.display())]
    MissingDir {
        /// The directory asked for.
        path: PathBuf,
    },
    /// A file the format needs is absent.
    #[error("{}: file not found ({hint})", .path.display())]
    MissingFile {
        /// The first candidate path that was looked for.
        path: PathBuf,
        /// What the file is and how to get it.
        hint: String,
    },
    /// A data set that is read from disk was asked for without a directory.
    #[error("data set {dataset} needs a data directory ({hint})")]
    NoDataDir {
        /// The data set name.
        dataset: String,
        /// What the directory must hold.
        hint: String,
    },
    /// A file ends inside a record, or its length is not a whole number of records.
    #[error("{}: record {index} is truncated ({got} of {want} bytes)", .path.display())]
    Truncated {
        /// The file.
        path: PathBuf,
        /// The record (0-based) that is cut short.
        index: usize,
        /// Bytes present for that record.
        got: usize,
        /// Bytes a record needs.
        want: usize,
    },
    /// A file holds more or fewer records than its format, or its own header, says it must
    /// (a cut or over-long file, or a file of another data set).
    #[error(
        "{}: {} of {record_bytes} bytes{}, expected exactly {expected} {rule}",
        .path.display(),
        count(*.found, "record"),
        stray(*.stray_bytes)
    )]
    RecordCount {
        /// The file.
        path: PathBuf,
        /// Whole records it holds.
        found: usize,
        /// Bytes after the last whole record (0 when the file ends on a record boundary).
        stray_bytes: usize,
        /// Bytes per record.
        record_bytes: usize,
        /// Records it must hold.
        expected: usize,
        /// Where `expected` comes from, in words: `as …`.
        rule: String,
    },
    /// A file does not start with the magic number of its format.
    #[error("{}: bad magic number {got:#010x} (expected {want})", .path.display())]
    BadMagic {
        /// The file.
        path: PathBuf,
        /// The first four bytes, big-endian.
        got: u32,
        /// What was expected, in words.
        want: String,
    },
    /// A file is in the right format but its header or shape is not usable.
    #[error("{}: {reason}", .path.display())]
    BadFormat {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A label is not below the number of classes.
    #[error(
        "{source_name}: record {index} has label {label}, not below the {num_classes} classes"
    )]
    LabelOutOfRange {
        /// The file or list the label came from.
        source_name: String,
        /// The record (0-based).
        index: usize,
        /// The label read.
        label: u32,
        /// The number of classes.
        num_classes: usize,
    },
    /// A class has no images where every class needs some.
    #[error("{what}: class {class} has no images")]
    EmptyClass {
        /// Which set or operation.
        what: String,
        /// The empty class.
        class: usize,
    },
    /// The imbalance factor is below 1 or not finite.
    #[error("imbalance factor {value} is invalid (it must be a finite number >= 1, e.g. 100)")]
    BadImbalance {
        /// The value given.
        value: f64,
    },
    /// A parameter is outside its valid range.
    #[error("invalid {name} {value}: {reason}")]
    BadParameter {
        /// The parameter.
        name: &'static str,
        /// The value given, formatted.
        value: String,
        /// The valid range.
        reason: String,
    },
    /// Images and labels disagree in number.
    #[error("{what}: {images} images but {labels} labels")]
    CountMismatch {
        /// Which pair of files.
        what: String,
        /// Images found.
        images: usize,
        /// Labels found.
        labels: usize,
    },
    /// A line of an image-list file cannot be parsed.
    #[error("{}:{line}: {reason}", .path.display())]
    ListLine {
        /// The list file.
        path: PathBuf,
        /// The 1-based line number.
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// An image file cannot be decoded.
    #[error("{}: cannot decode image: {source}", .path.display())]
    Decode {
        /// The image file.
        path: PathBuf,
        /// The decoder's error.
        source: image::ImageError,
    },
    /// An image file is unusable although its decoder did not fail: truncated (a JPEG without
    /// its end-of-image marker after the last scan, as PIL refuses without
    /// `LOAD_TRUNCATED_IMAGES`), empty, or of a shape the transform cannot take.
    #[error("{}: {reason}", .path.display())]
    BadImage {
        /// The image file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Images of one set differ in size where one size is required (decoding into memory).
    #[error("{}: image is {got_w}x{got_h}, the first image is {want_w}x{want_h}; images of mixed sizes are streamed, which needs a resized-crop augmentation (augment = \"imagenet\" or \"resized-crop-flip\")", .path.display())]
    MixedSizes {
        /// The odd image.
        path: PathBuf,
        /// Its width.
        got_w: u32,
        /// Its height.
        got_h: u32,
        /// The expected width.
        want_w: u32,
        /// The expected height.
        want_h: u32,
    },
    /// A data set name is not known.
    #[error("unknown data set `{name}` (expected fmnist-lt, cifar10-lt, cifar100-lt, fmnist, image-list, imagenet-lt, inat2018 or places-lt)")]
    UnknownDataset {
        /// The name given.
        name: String,
    },
    /// A test distribution name is not known.
    #[error("unknown test distribution `{name}` (expected uniform, forward<N> or backward<N>, e.g. forward50)")]
    UnknownTestDist {
        /// The name given.
        name: String,
    },
    /// The test set for label shift is not class-balanced.
    #[error("label shift needs a class-balanced test set; class {class} has {got} images, class 0 has {want}")]
    Unbalanced {
        /// The first class whose count differs.
        class: usize,
        /// Its count.
        got: usize,
        /// Class 0's count.
        want: usize,
    },
    /// A data set is empty where images are needed.
    #[error("{what} is empty")]
    Empty {
        /// Which set.
        what: String,
    },
    /// The batch producer thread stopped before the epoch ended (it panicked).
    #[error("the batch producer thread stopped after {done} of {total} batches")]
    ProducerStopped {
        /// Batches received.
        done: usize,
        /// Batches expected.
        total: usize,
    },
    /// A tensor could not be built.
    #[error(transparent)]
    Tensor(#[from] candle_core::Error),
}

impl DataError {
    /// Wraps an I/O error with its path.
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        DataError::Io {
            path: path.into(),
            source,
        }
    }
}

/// `1 record`, `2 records`.
fn count(n: usize, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

/// ` and 5 bytes more` after a record count, or nothing.
fn stray(bytes: usize) -> String {
    match bytes {
        0 => String::new(),
        1 => " and 1 byte more".into(),
        n => format!(" and {n} bytes more"),
    }
}

/// Result with [`DataError`].
pub type Result<T, E = DataError> = std::result::Result<T, E>;
