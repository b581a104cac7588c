//! Which images an epoch visits, in which order. The order depends only on `(seed, epoch)`, so a
//! run resumed at an epoch boundary sees the same batches.

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::transform::sample_seed;

/// How an epoch's sample order is drawn. Every kind gives an epoch of `len` samples.
///
/// In a run config it is spelled `shuffled`, `sequential`, `class-balanced` or `square-root`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SamplerKind {
    /// A random permutation of all images (`shuffle=True`).
    #[default]
    Shuffled,
    /// The images in their stored order (evaluation).
    Sequential,
    /// RIDE's class-balanced sampler (docs/ride.md, stage 2): pick a class uniformly, take the next
    /// image of that class's shuffled bucket, reshuffle a bucket when it runs out.
    /// Differs from official: buckets start fresh every epoch (the official sampler carries its
    /// bucket state across epochs), so the order depends on `(seed, epoch)` alone.
    ClassBalanced,
    /// Square-root sampling: class `c` is picked with probability ∝ `√n_c`, then an image of it
    /// uniformly at random.
    SquareRoot,
}

impl std::str::FromStr for SamplerKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "shuffled" | "shuffle" => Ok(SamplerKind::Shuffled),
            "sequential" => Ok(SamplerKind::Sequential),
            "class-balanced" | "balanced" => Ok(SamplerKind::ClassBalanced),
            "square-root" | "sqrt" => Ok(SamplerKind::SquareRoot),
            _ => Err(format!(
                "unknown sampler `{s}` (expected shuffled, sequential, class-balanced or square-root)"
            )),
        }
    }
}

/// The image indices of one epoch for a set with these `labels` and `num_classes`.
///
/// Classes without images are never picked by the class-based samplers.
pub fn epoch_order(
    kind: SamplerKind,
    labels: &[u32],
    num_classes: usize,
    seed: u64,
    epoch: u64,
) -> Vec<usize> {
    let n = labels.len();
    let mut rng = ChaCha8Rng::seed_from_u64(sample_seed(seed, epoch, u64::MAX));
    match kind {
        SamplerKind::Sequential => (0..n).collect(),
        SamplerKind::Shuffled => {
            let mut v: Vec<usize> = (0..n).collect();
            v.shuffle(&mut rng);
            v
        }
        SamplerKind::ClassBalanced | SamplerKind::SquareRoot => {
            let mut buckets: Vec<Vec<usize>> = vec![Vec::new(); num_classes];
            for (i, &l) in labels.iter().enumerate() {
                buckets[l as usize].push(i);
            }
            let classes: Vec<usize> = (0..num_classes)
                .filter(|&c| !buckets[c].is_empty())
                .collect();
            if classes.is_empty() {
                return Vec::new();
            }
            if kind == SamplerKind::ClassBalanced {
                let mut pos = vec![0usize; num_classes];
                for &c in &classes {
                    buckets[c].shuffle(&mut rng);
                }
                (0..n)
                    .map(|_| {
                        let c = classes[rng.random_range(0..classes.len())];
                        if pos[c] == buckets[c].len() {
                            buckets[c].shuffle(&mut rng);
                            pos[c] = 0;
                        }
                        pos[c] += 1;
                        buckets[c][pos[c] - 1]
                    })
                    .collect()
            } else {
                let weights: Vec<f64> = classes
                    .iter()
                    .map(|&c| (buckets[c].len() as f64).sqrt())
                    .collect();
                let total: f64 = weights.iter().sum();
                let mut cum = Vec::with_capacity(weights.len());
                let mut acc = 0.0;
                for w in &weights {
                    acc += w / total;
                    cum.push(acc);
                }
                (0..n)
                    .map(|_| {
                        let u: f64 = rng.random();
                        let k = cum.partition_point(|&x| x <= u).min(classes.len() - 1);
                        let b = &buckets[classes[k]];
                        b[rng.random_range(0..b.len())]
                    })
                    .collect()
            }
        }
    }
}

/// One rank's share of every epoch in data-parallel training (PyTorch's `DistributedSampler`
/// with `drop_last=False`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shard {
    /// This rank, `0..world`.
    pub rank: usize,
    /// Number of ranks.
    pub world: usize,
}

impl Shard {
    /// The whole epoch (one rank).
    pub const WHOLE: Shard = Shard { rank: 0, world: 1 };

    /// Rank `rank` of `world`; an error unless `rank < world`.
    pub fn new(rank: usize, world: usize) -> crate::Result<Shard> {
        if rank >= world {
            return Err(crate::DataError::BadParameter {
                name: "shard",
                value: format!("rank {rank} of {world}"),
                reason: "the rank must be below the world size".into(),
            });
        }
        Ok(Shard { rank, world })
    }

    /// The epoch positions this rank visits, for an epoch of `len` samples: the epoch is padded
    /// to `ceil(len / world) · world` positions by wrapping around (position `p ≥ len` is the
    /// sample at `p mod len`), and rank `r` takes positions `r, r + world, r + 2·world, …`, as
    /// `DistributedSampler` slices `indices[rank:total:world]`. Every rank gets the same count,
    /// so the ranks run the same number of steps.
    pub fn positions(&self, len: usize) -> Vec<usize> {
        if len == 0 {
            return Vec::new();
        }
        let total = len.div_ceil(self.world) * self.world;
        (self.rank..total).step_by(self.world).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// DistributedSampler(len=10, num_replicas=4): total 12, rank 1 gets indices[1:12:4] =
    /// positions 1, 5, 9; rank 3 gets 3, 7, 11 (11 wraps to sample position 1).
    #[test]
    fn shard_positions_pad_by_wrapping_and_stride() {
        assert_eq!(Shard::new(1, 4).unwrap().positions(10), [1, 5, 9]);
        assert_eq!(Shard::new(3, 4).unwrap().positions(10), [3, 7, 11]);
        assert_eq!(Shard::WHOLE.positions(3), [0, 1, 2]);
        let mut all: Vec<usize> = (0..4)
            .flat_map(|r| Shard::new(r, 4).unwrap().positions(10))
            .collect();
        all.sort();
        assert_eq!(all, (0..12).collect::<Vec<_>>());
        assert!(Shard::new(2, 2).is_err());
    }

    fn labels() -> Vec<u32> {
        // 900 of class 0, 90 of class 1, 10 of class 2.
        let mut l = vec![0; 900];
        l.extend(vec![1; 90]);
        l.extend(vec![2; 10]);
        l
    }

    fn class_freq(order: &[usize], labels: &[u32]) -> [usize; 3] {
        let mut f = [0; 3];
        for &i in order {
            f[labels[i] as usize] += 1;
        }
        f
    }

    #[test]
    fn shuffled_is_a_permutation_fixed_by_seed_and_epoch() {
        let l = labels();
        let a = epoch_order(SamplerKind::Shuffled, &l, 3, 5, 0);
        let mut s = a.clone();
        s.sort_unstable();
        assert_eq!(s, (0..1000).collect::<Vec<_>>());
        assert_eq!(a, epoch_order(SamplerKind::Shuffled, &l, 3, 5, 0));
        assert_ne!(a, epoch_order(SamplerKind::Shuffled, &l, 3, 5, 1));
    }

    #[test]
    fn class_balanced_visits_classes_evenly() {
        let l = labels();
        let o = epoch_order(SamplerKind::ClassBalanced, &l, 4, 1, 0);
        assert_eq!(o.len(), 1000);
        let f = class_freq(&o, &l);
        for n in f {
            assert!((n as f64 - 333.3).abs() < 60.0, "{f:?}");
        }
        // The 10 images of class 2 are each used about 33 times, none skipped.
        let mut used = [0; 10];
        for &i in &o {
            if i >= 990 {
                used[i - 990] += 1;
            }
        }
        assert!(used.iter().all(|&u| u > 0), "{used:?}");
    }

    #[test]
    fn square_root_follows_sqrt_counts() {
        let l = labels();
        let o = epoch_order(SamplerKind::SquareRoot, &l, 3, 2, 0);
        let f = class_freq(&o, &l);
        // Expected shares √900 : √90 : √10 = 30 : 9.49 : 3.16 → 704, 222, 74 per 1000.
        assert!((f[0] as f64 - 704.0).abs() < 60.0, "{f:?}");
        assert!((f[1] as f64 - 222.0).abs() < 50.0, "{f:?}");
        assert!((f[2] as f64 - 74.0).abs() < 30.0, "{f:?}");
    }
}
