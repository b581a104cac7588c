//! Mixup (Zhang, Cissé, Dauphin, Lopez-Paz, ICLR 2018) as a training option of **any** method:
//! `[optim] mixup_alpha = α` in a run config, `--mixup α` on `longtail train`.
//!
//! Per batch (docs/balpoe.md §2.3, BalPoE's `utils/combiner.py` and `mixup_criterion`):
//!
//! 1. one scalar `λ ~ Beta(α, α)` for the whole batch and one permutation `p` of its rows;
//! 2. the images `x̃ = λ·x + (1 − λ)·x[p]` go through **one** forward pass;
//! 3. the loss is `λ·L(z, y) + (1 − λ)·L(z, y[p])`: the method's own [`Method::loss`] called
//!    twice on the same output, once with the batch and once with its labels (and data-set
//!    indices) permuted, so every method gets mixup without knowing of it.
//!
//! `λ` and `p` come from ChaCha8 seeded by `(run seed, epoch, batch index)`
//! ([`longtail_data::sample_seed`] on a stream of their own), so a run is reproducible and a
//! resumed run draws exactly what the uninterrupted one drew.
//!
//! Differs from official: the official code draws `λ` from NumPy's global generator, which its
//! CIFAR data set re-seeds with 0 after `--seed` (docs/balpoe.md §6 pitfall 8), so its `λ`
//! stream is the same for every seed; here the run seed changes it.

use candle_core::{DType, Tensor, D};
use longtail_backbone::ExpertOutput;
use longtail_data::{sample_seed, Batch};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Beta, Distribution};

use crate::{Method, TrainError};

/// Mixed into the run seed so that mixup's stream differs from the augmentation's and the
/// sampler's (which use the same `(seed, epoch, position)` mixing).
const MIXUP_STREAM: u64 = 0x6d69_7875_705f_6c61;

/// Checks a mixup α: finite and `> 0` (Beta(α, α) is undefined otherwise).
pub fn check_alpha(alpha: f64) -> Result<(), TrainError> {
    if alpha.is_finite() && alpha > 0.0 {
        Ok(())
    } else {
        Err(TrainError::Config(format!(
            "optim.mixup_alpha must be a finite number > 0 (got {alpha}); leave it out to train without mixup"
        )))
    }
}

/// One batch's mixing: the weight `λ` of the batch's own images and the permutation `p` that
/// picks the partner of each row.
#[derive(Clone, Debug, PartialEq)]
pub struct MixupDraw {
    /// `λ ∈ [0, 1]`, drawn from Beta(α, α).
    pub lambda: f64,
    /// `p`: row `i` is mixed with row `p[i]`; a permutation of `0..B`.
    pub perm: Vec<usize>,
}

impl MixupDraw {
    /// The draw of batch `index` (0-based, counted within the epoch) of `epoch` in a run seeded
    /// with `seed`, for a batch of `batch` rows: first `λ`, then the permutation, from one
    /// ChaCha8 stream.
    pub fn draw(
        alpha: f64,
        batch: usize,
        seed: u64,
        epoch: u64,
        index: u64,
    ) -> Result<Self, TrainError> {
        check_alpha(alpha)?;
        let beta = Beta::new(alpha, alpha).map_err(|e| {
            TrainError::Config(format!("optim.mixup_alpha {alpha}: Beta(α, α): {e}"))
        })?;
        let mut rng = ChaCha8Rng::seed_from_u64(sample_seed(seed ^ MIXUP_STREAM, epoch, index));
        let lambda = beta.sample(&mut rng).clamp(0.0, 1.0);
        let mut perm: Vec<usize> = (0..batch).collect();
        perm.shuffle(&mut rng);
        Ok(Self { lambda, perm })
    }

    /// The two batches the loss sees: `(mixed images with the labels y, the same mixed images
    /// with the labels y[p] and indices permuted alike)`. The images are
    /// `λ·x + (1 − λ)·x[p]`.
    pub fn mix(&self, batch: &Batch) -> Result<(Batch, Batch), TrainError> {
        let n = batch.indices.len();
        if self.perm.len() != n || batch.images.dim(0)? != n || batch.labels.dim(0)? != n {
            return Err(TrainError::Config(format!(
                "mixup: a permutation of {} rows for a batch of {n} images ({} image rows, {} labels)",
                self.perm.len(),
                batch.images.dim(0)?,
                batch.labels.dim(0)?
            )));
        }
        let ids: Vec<u32> = self.perm.iter().map(|&i| i as u32).collect();
        let ids = Tensor::from_vec(ids, n, batch.images.device())?;
        let partner = batch.images.index_select(&ids, 0)?;
        let images = ((&batch.images * self.lambda)? + (partner * (1.0 - self.lambda))?)?;
        let own = Batch {
            images: images.clone(),
            labels: batch.labels.clone(),
            indices: batch.indices.clone(),
        };
        let other = Batch {
            images,
            labels: batch.labels.index_select(&ids, 0)?,
            indices: self.perm.iter().map(|&i| batch.indices[i]).collect(),
        };
        Ok((own, other))
    }
}

/// `λ·L(out, own) + (1 − λ)·L(out, other)` with `L` the method's own loss (docs/balpoe.md
/// §2.3, official `mixup_criterion`). `own` and `other` are the two batches of
/// [`MixupDraw::mix`]; `out` is the network's output on their (shared) mixed images.
pub fn mixup_loss(
    method: &dyn Method,
    out: &ExpertOutput,
    own: &Batch,
    other: &Batch,
    lambda: f64,
) -> candle_core::Result<Tensor> {
    let a = method.loss(out, own)?;
    let b = method.loss(out, other)?;
    (a * lambda)? + (b * (1.0 - lambda))?
}

/// The training "correct" count of a mixed batch: `λ·hits(y) + (1 − λ)·hits(y[p])`, the official
/// logged train accuracy (docs/balpoe.md §2.3), rounded to whole images so that it adds up with
/// the unmixed count. `prediction` is the method's `[B, C]` prediction on the mixed images.
pub fn mixup_hits(
    prediction: &Tensor,
    own: &Tensor,
    other: &Tensor,
    lambda: f64,
) -> candle_core::Result<usize> {
    let guess = prediction.argmax(D::Minus1)?;
    let hits = |labels: &Tensor| -> candle_core::Result<f64> {
        Ok(guess
            .eq(&labels.to_dtype(DType::U32)?)?
            .to_dtype(DType::U32)?
            .sum_all()?
            .to_scalar::<u32>()? as f64)
    };
    let weighted = lambda * hits(own)? + (1.0 - lambda) * hits(other)?;
    Ok(weighted.round() as usize)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn batch(dev: &Device) -> Batch {
        // 3 one-pixel "images" 1, 2, 3 with labels 0, 1, 2 at data-set indices 10, 11, 12.
        Batch {
            images: Tensor::new(&[1f32, 2., 3.], dev)
                .unwrap()
                .reshape((3, 1, 1, 1))
                .unwrap(),
            labels: Tensor::new(&[0u32, 1, 2], dev).unwrap(),
            indices: vec![10, 11, 12],
        }
    }

    #[test]
    fn mix_blends_images_and_permutes_labels_and_indices() {
        let dev = Device::Cpu;
        let d = MixupDraw {
            lambda: 0.7,
            perm: vec![2, 0, 1],
        };
        let (own, other) = d.mix(&batch(&dev)).unwrap();
        let x: Vec<f32> = own.images.flatten_all().unwrap().to_vec1().unwrap();
        // 0.7·[1, 2, 3] + 0.3·[3, 1, 2] = [1.6, 1.7, 2.7]
        for (g, w) in x.iter().zip([1.6f32, 1.7, 2.7]) {
            assert!((g - w).abs() < 1e-6, "{x:?}");
        }
        assert_eq!(own.labels.to_vec1::<u32>().unwrap(), [0, 1, 2]);
        assert_eq!(other.labels.to_vec1::<u32>().unwrap(), [2, 0, 1]);
        assert_eq!(other.indices, [12, 10, 11]);
        let y: Vec<f32> = other.images.flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(x, y);
        let wrong = MixupDraw {
            lambda: 0.5,
            perm: vec![0, 1],
        };
        assert!(wrong.mix(&batch(&dev)).is_err());
    }

    #[test]
    fn draws_are_seeded_permutations_in_the_unit_interval() {
        let a = MixupDraw::draw(0.4, 16, 7, 3, 5).unwrap();
        assert_eq!(a, MixupDraw::draw(0.4, 16, 7, 3, 5).unwrap());
        let mut sorted = a.perm.clone();
        sorted.sort();
        assert_eq!(sorted, (0..16).collect::<Vec<_>>());
        assert!((0.0..=1.0).contains(&a.lambda));
        // Another batch, epoch or seed draws another λ.
        for other in [
            MixupDraw::draw(0.4, 16, 7, 3, 6).unwrap(),
            MixupDraw::draw(0.4, 16, 7, 4, 5).unwrap(),
            MixupDraw::draw(0.4, 16, 8, 3, 5).unwrap(),
        ] {
            assert_ne!(other.lambda, a.lambda);
        }
        // Beta(α, α) has mean 1/2 and variance 1/(4(2α + 1)): 1/7.2 for α = 0.4.
        let n = 4000;
        let l: Vec<f64> = (0..n)
            .map(|i| MixupDraw::draw(0.4, 1, 1, 1, i).unwrap().lambda)
            .collect();
        let mean = l.iter().sum::<f64>() / n as f64;
        let var = l.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n as f64;
        assert!((mean - 0.5).abs() < 0.02, "mean {mean}");
        assert!((var - 1.0 / 7.2).abs() < 0.01, "variance {var}");
        for bad in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            assert!(MixupDraw::draw(bad, 4, 0, 1, 0).is_err(), "{bad}");
        }
    }

    #[test]
    fn hits_are_the_lambda_weighted_official_count() {
        let dev = Device::Cpu;
        // Predictions 0, 1, 1, 2.
        let p = Tensor::new(
            &[[5f32, 0., 0.], [0., 5., 0.], [0., 5., 0.], [0., 0., 5.]],
            &dev,
        )
        .unwrap();
        let own = Tensor::new(&[0u32, 1, 1, 2], &dev).unwrap(); // 4 hits
        let other = Tensor::new(&[1u32, 1, 0, 0], &dev).unwrap(); // 1 hit
                                                                  // 0.7·4 + 0.3·1 = 3.1 → 3; 0.2·4 + 0.8·1 = 1.6 → 2.
        assert_eq!(mixup_hits(&p, &own, &other, 0.7).unwrap(), 3);
        assert_eq!(mixup_hits(&p, &own, &other, 0.2).unwrap(), 2);
    }
}
