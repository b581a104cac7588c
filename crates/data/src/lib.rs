//! Data for long-tailed classification: readers, the exact long-tailed subsets the field reports
//! on, test-time label shift, augmentation, samplers and a prefetching batcher.
//!
//! Main types and functions:
//! - [`Dataset`]: images in memory (u8, HWC) with labels, class names and original indices.
//! - [`load_splits`] from a [`DataSpec`] ([`DatasetName`]: the bundled `fmnist-lt`, `cifar10-lt`,
//!   `cifar100-lt`, `fmnist`, `image-list`) gives [`Splits`] (train, optional val, test).
//! - [`profile`]: the LDAM-DRW exponential profile and subset, drawn with a bit-exact copy of numpy's
//!   legacy MT19937 ([`Mt19937`]), so CIFAR-10/100-LT are the very images RIDE / SADE train on.
//! - [`label_shift()`] with [`TestDist`]: SADE's forward / uniform / backward test sets.
//! - [`Stats`]: counts, imbalance factor, many / medium / few split ([`ShotRule`]), Gini coefficient.
//! - [`Transform`] = [`Augment`] + [`Normalize`]; [`SamplerKind`]; [`Batcher`] yields [`Batch`]es of
//!   `[B, C, H, W]` f32 tensors, augmented in parallel ahead of the consumer, deterministic in
//!   `(seed, epoch, position)`.
//!
//! ```
//! use std::sync::Arc;
//! use longtail_data::{load_splits, Augment, Batcher, DataSpec, SamplerKind, Transform};
//!
//! let splits = load_splits(&DataSpec::default())?; // the bundled Fashion-MNIST-LT
//! assert_eq!(splits.train.len(), 2478);
//! let norm = splits.train_normalize();
//! let tf = Transform::train(Augment::cifar_ldam(), norm);
//! let mut batches = Batcher::new(Arc::new(splits.train), SamplerKind::Shuffled, tf, 64, 0, 0,
//!                                &candle_core::Device::Cpu)?;
//! let first = batches.next().unwrap()?;
//! assert_eq!(first.images.dims(), &[64, 1, 28, 28]);
//! # Ok::<(), longtail_data::DataError>(())
//! ```
#![deny(missing_docs)]

pub mod batcher;
pub mod bundled;
pub mod dataset;
pub mod error;
pub mod label_shift;
pub mod load;
pub mod mt19937;
pub mod profile;
pub mod readers;
pub mod sampler;
pub mod stats;
pub mod stream;
pub mod synth;
pub mod transform;

pub use batcher::{Batch, Batcher, BatcherConfig};
pub use dataset::{Dataset, ImageFiles};
pub use error::{DataError, Result};
pub use label_shift::{label_shift, TestDist};
pub use load::{
    benchmark_list_classes, image_list_classes, ldam_long_tail, load_benchmark,
    load_image_lists_streamed, load_splits, DataSpec, DatasetName, Splits, StreamOptions,
};
pub use longtail_metrics::{shot_groups, Shot, ShotRule};
pub use mt19937::Mt19937;
pub use sampler::{epoch_order, SamplerKind, Shard};
pub use stats::{gini, Stats};
pub use transform::{
    sample_seed, Augment, AugmentKind, ColorJitter, Normalize, Resize, TrainTransform, Transform,
};

impl Splits {
    /// The normalisation that fits this training set's channel count: Fashion-MNIST statistics
    /// for one channel, CIFAR statistics for three. Prefer [`DatasetName::normalize`] when the
    /// data set's name is known.
    pub fn train_normalize(&self) -> Normalize {
        if self.train.channels == 1 {
            Normalize::fashion_mnist()
        } else {
            Normalize::cifar()
        }
    }
}
