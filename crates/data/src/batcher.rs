//! Batches of normalised tensors, augmented in parallel ahead of the consumer.

use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;
use std::thread::JoinHandle;

use candle_core::{Device, Tensor};
use rayon::prelude::*;

use crate::dataset::Dataset;
use crate::error::{DataError, Result};
use crate::sampler::{epoch_order, SamplerKind, Shard};
use crate::stream::decode_rgb;
use crate::transform::{sample_seed, Prepared, Transform};

/// One batch.
#[derive(Clone, Debug)]
pub struct Batch {
    /// `[B, C, H, W]` f32, transformed and normalised.
    pub images: Tensor,
    /// `[B]` u32 labels.
    pub labels: Tensor,
    /// The data-set index of each row.
    pub indices: Vec<usize>,
}

/// Everything that fixes an epoch's batches.
#[derive(Clone, Debug)]
pub struct BatcherConfig {
    /// The sample order.
    pub sampler: SamplerKind,
    /// Train or eval transform.
    pub transform: Transform,
    /// Images per batch; the last batch may be smaller (`drop_last` false).
    pub batch_size: usize,
    /// Run seed.
    pub seed: u64,
    /// Epoch number (0-based or 1-based, as the caller likes; only its value matters).
    pub epoch: u64,
    /// How many finished batches may wait for the consumer (at least 1).
    pub prefetch: usize,
}

/// An iterator over one epoch's batches.
///
/// A producer thread builds the batches in order, each with its images transformed in parallel
/// (rayon), and keeps up to `prefetch` of them ready in a bounded channel. Sample `k` of the
/// epoch is transformed with the random stream [`sample_seed`]`(seed, epoch, k)`, so the batches
/// are identical whatever the number of threads; the order comes from
/// [`epoch_order`]`(sampler, …, seed, epoch)` alone.
pub struct Batcher {
    rx: Option<Receiver<Result<Batch>>>,
    handle: Option<JoinHandle<()>>,
    received: usize,
    total: usize,
    failed: bool,
    order: Arc<Vec<usize>>,
}

impl std::fmt::Debug for Batcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batcher")
            .field("received", &self.received)
            .field("total", &self.total)
            .finish_non_exhaustive()
    }
}

impl Batcher {
    /// Starts an epoch with the default prefetch of 2 batches, on rayon's global pool.
    pub fn new(
        data: Arc<Dataset>,
        sampler: SamplerKind,
        transform: Transform,
        batch_size: usize,
        seed: u64,
        epoch: u64,
        device: &Device,
    ) -> Result<Batcher> {
        let cfg = BatcherConfig {
            sampler,
            transform,
            batch_size,
            seed,
            epoch,
            prefetch: 2,
        };
        Batcher::with_config(data, cfg, device, None)
    }

    /// Starts an epoch; `pool` (if given) runs the per-image work instead of rayon's global pool.
    pub fn with_config(
        data: Arc<Dataset>,
        cfg: BatcherConfig,
        device: &Device,
        pool: Option<Arc<rayon::ThreadPool>>,
    ) -> Result<Batcher> {
        Batcher::sharded(data, cfg, device, pool, Shard::WHOLE)
    }

    /// Starts rank `shard.rank`'s share of an epoch of data-parallel training: the epoch order
    /// of [`Batcher::with_config`], padded and dealt to the ranks as [`Shard::positions`] says.
    /// Each sample keeps the augmentation stream of its position in the whole epoch, so the
    /// ranks' batches `b` together hold exactly the samples (and augmentations) of the
    /// one-rank batch `b` of `world ×` the batch size.
    pub fn sharded(
        data: Arc<Dataset>,
        cfg: BatcherConfig,
        device: &Device,
        pool: Option<Arc<rayon::ThreadPool>>,
        shard: Shard,
    ) -> Result<Batcher> {
        if cfg.batch_size == 0 {
            return Err(DataError::BadParameter {
                name: "batch size",
                value: "0".into(),
                reason: "it must be positive".into(),
            });
        }
        if data.is_empty() {
            return Err(DataError::Empty {
                what: "the data set to batch".into(),
            });
        }
        let prepared = cfg
            .transform
            .prepare(data.height, data.width, data.channels)?;
        if data.is_streamed() && !prepared.takes_any_size() {
            return Err(DataError::BadParameter {
                name: "transform of a streamed data set",
                value: format!("{:?}", cfg.transform.augment),
                reason: "images of mixed sizes need a first stage that fixes the size (random-resized-crop, or resize + centre crop) and no pad-crop or rotation".into(),
            });
        }
        let full = epoch_order(
            cfg.sampler,
            &data.labels,
            data.num_classes,
            cfg.seed,
            cfg.epoch,
        );
        let positions: Vec<u64> = shard
            .positions(full.len())
            .into_iter()
            .map(|p| p as u64)
            .collect();
        let order = Arc::new(
            positions
                .iter()
                .map(|&p| full[p as usize % full.len()])
                .collect::<Vec<_>>(),
        );
        let total = order.len().div_ceil(cfg.batch_size);
        let (tx, rx) = sync_channel(cfg.prefetch.max(1));
        let device = device.clone();
        let thread_order = Arc::clone(&order);
        let handle = std::thread::Builder::new()
            .name("longtail-batcher".into())
            .spawn(move || {
                let chunks = thread_order.chunks(cfg.batch_size);
                for (chunk, at) in chunks.zip(positions.chunks(cfg.batch_size)) {
                    let work =
                        || make_batch(&data, &prepared, chunk, at, cfg.seed, cfg.epoch, &device);
                    let batch = match &pool {
                        Some(p) => p.install(work),
                        None => work(),
                    };
                    let stop = batch.is_err();
                    if tx.send(batch).is_err() || stop {
                        return;
                    }
                }
            })
            .map_err(|e| DataError::io("longtail-batcher thread", e))?;
        Ok(Batcher {
            rx: Some(rx),
            handle: Some(handle),
            received: 0,
            total,
            failed: false,
            order,
        })
    }

    /// Batches in the epoch (`ceil(samples / batch_size)`).
    pub fn num_batches(&self) -> usize {
        self.total
    }

    /// The epoch's sample order (data-set indices).
    pub fn order(&self) -> &[usize] {
        &self.order
    }
}

/// Transforms the images `chunk` (at epoch positions `at`) into one batch. A streamed set's
/// images are decoded here, on the pool's threads, one at a time per thread: what is in memory
/// is this batch and the ones waiting in the channel, whatever the size of the set.
fn make_batch(
    data: &Dataset,
    prepared: &Prepared,
    chunk: &[usize],
    at: &[u64],
    seed: u64,
    epoch: u64,
    device: &Device,
) -> Result<Batch> {
    let per = prepared.out_len();
    let mut buf = vec![0f32; chunk.len() * per];
    if data.is_streamed() {
        buf.par_chunks_mut(per)
            .zip(chunk.par_iter())
            .enumerate()
            .try_for_each(|(k, (out, &i))| {
                let path = data.image_path(i).expect("a streamed set has paths");
                let img = decode_rgb(&path)?;
                prepared.apply_decoded(
                    &img.pixels,
                    (img.height, img.width),
                    sample_seed(seed, epoch, at[k]),
                    &path,
                    out,
                )
            })?;
    } else {
        buf.par_chunks_mut(per)
            .zip(chunk.par_iter())
            .enumerate()
            .for_each(|(k, (out, &i))| {
                prepared.apply(data.image(i), sample_seed(seed, epoch, at[k]), out);
            });
    }
    let (c, h, w) = prepared.out_shape();
    let images = Tensor::from_vec(buf, (chunk.len(), c, h, w), device)?;
    let labels: Vec<u32> = chunk.iter().map(|&i| data.labels[i]).collect();
    let labels = Tensor::from_vec(labels, chunk.len(), device)?;
    Ok(Batch {
        images,
        labels,
        indices: chunk.to_vec(),
    })
}

impl Iterator for Batcher {
    type Item = Result<Batch>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.received == self.total {
            return None;
        }
        match self.rx.as_ref()?.recv() {
            Ok(item) => {
                self.received += 1;
                if item.is_err() {
                    self.failed = true;
                }
                Some(item)
            }
            Err(_) => {
                self.failed = true;
                Some(Err(DataError::ProducerStopped {
                    done: self.received,
                    total: self.total,
                }))
            }
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = self.total - self.received;
        (0, Some(left))
    }
}

impl Drop for Batcher {
    fn drop(&mut self) {
        // Closing the channel makes the producer stop at its next send.
        drop(self.rx.take());
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}
