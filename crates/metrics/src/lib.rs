//! Metrics for long-tailed classification, on plain slices (no tensors).
//!
//! - [`shots`]: many / medium / few class groups from training counts.
//! - [`classification`]: top-1, per-class accuracy, confusion matrix and group accuracies.
//! - `uncertainty`: failure prediction (AUROC, FPR@95), calibration (ECE), risk–coverage, OOD detection.

pub mod classification;
mod error;
pub mod shots;
pub mod uncertainty;

pub use classification::{argmax_rows, classification_report, ClassificationReport};
pub use error::MetricsError;
pub use shots::{shot_groups, Shot, ShotRule};
