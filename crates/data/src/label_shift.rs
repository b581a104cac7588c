//! Test-time label shift: the SADE / LADE test-agnostic protocol (docs/sade.md §3).

use crate::dataset::Dataset;
use crate::error::{DataError, Result};
use crate::profile::ldam_subset;

/// A test class distribution built from a balanced test set.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum TestDist {
    /// Follows the training imbalance with ratio ρ: `n_k = floor(n_max · (1/ρ)^(k/(C−1)))` for the
    /// class of training-frequency rank `k` (0 = most frequent).
    Forward(f64),
    /// The full balanced test set.
    Uniform,
    /// Inverts it: rank `k` replaced by `C−1−k`.
    Backward(f64),
}

impl TestDist {
    /// The eleven SADE distributions in report order: forward 50, 25, 10, 5, 2, uniform,
    /// backward 2, 5, 10, 25, 50.
    pub fn all() -> [TestDist; 11] {
        use TestDist::*;
        [
            Forward(50.0),
            Forward(25.0),
            Forward(10.0),
            Forward(5.0),
            Forward(2.0),
            Uniform,
            Backward(2.0),
            Backward(5.0),
            Backward(10.0),
            Backward(25.0),
            Backward(50.0),
        ]
    }

    /// The name used in SADE's logs and the fixtures: `forward50`, `uniform`, `backward2`, ….
    pub fn name(&self) -> String {
        match self {
            TestDist::Forward(r) => format!("forward{r}"),
            TestDist::Uniform => "uniform".into(),
            TestDist::Backward(r) => format!("backward{r}"),
        }
    }

    /// Per-class counts for a test set of `n_max` per class, classes ranked by `train_counts`
    /// (descending, ties by class index). `int(n_max · f^(r/(C−1)))` in f64 with `f = 1/ρ`,
    /// as SADE's `IMBALANCECIFAR100(train=False, imb_factor=f, reverse=…)`.
    pub fn counts(&self, train_counts: &[usize], n_max: usize) -> Result<Vec<usize>> {
        let c = train_counts.len();
        let (ratio, backward) = match *self {
            TestDist::Forward(r) => (r, false),
            TestDist::Backward(r) => (r, true),
            TestDist::Uniform => (1.0, false),
        };
        if !(ratio.is_finite() && ratio >= 1.0) {
            return Err(DataError::BadImbalance { value: ratio });
        }
        let mut order: Vec<usize> = (0..c).collect();
        order.sort_by(|&a, &b| train_counts[b].cmp(&train_counts[a]));
        let mut rank = vec![0; c];
        for (r, &class) in order.iter().enumerate() {
            rank[class] = r;
        }
        let f = 1.0 / ratio;
        let denom = (c as f64 - 1.0).max(1.0);
        Ok(rank
            .iter()
            .map(|&r| {
                let k = if backward { c - 1 - r } else { r };
                (n_max as f64 * f.powf(k as f64 / denom)) as usize
            })
            .collect())
    }
}

impl std::fmt::Display for TestDist {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name())
    }
}

impl std::str::FromStr for TestDist {
    type Err = DataError;
    fn from_str(s: &str) -> Result<Self> {
        let bad = || DataError::UnknownTestDist { name: s.into() };
        let ratio = |r: &str| -> Result<f64> {
            r.parse::<f64>()
                .ok()
                .filter(|r| r.is_finite() && *r >= 1.0)
                .ok_or_else(bad)
        };
        if s == "uniform" {
            Ok(TestDist::Uniform)
        } else if let Some(r) = s.strip_prefix("forward") {
            Ok(TestDist::Forward(ratio(r)?))
        } else if let Some(r) = s.strip_prefix("backward") {
            Ok(TestDist::Backward(ratio(r)?))
        } else {
            Err(bad())
        }
    }
}

/// The label-shifted subset of a class-balanced test set.
///
/// Classes are ranked by `train_counts`; per-class counts come from [`TestDist::counts`]. The
/// images are drawn like SADE's CIFAR test sets: `np.random.seed(seed)` once, then per class in
/// label order shuffle that class's ascending indices and keep the first `n_c`, stacked class by
/// class. With `seed = 0` this reproduces SADE's CIFAR-100 test sets exactly. `Uniform` keeps
/// every image (in that per-class shuffled order, as `imb_factor = 1` does).
pub fn label_shift(
    test: &Dataset,
    train_counts: &[usize],
    dist: TestDist,
    seed: u64,
) -> Result<Dataset> {
    if train_counts.len() != test.num_classes {
        return Err(DataError::BadParameter {
            name: "training counts",
            value: format!("{} classes", train_counts.len()),
            reason: format!("the test set has {} classes", test.num_classes),
        });
    }
    let seed = u32::try_from(seed).map_err(|_| DataError::BadParameter {
        name: "seed",
        value: seed.to_string(),
        reason: "numpy's legacy seed must be below 2^32".into(),
    })?;
    let have = test.class_counts();
    let n_max = *have.first().ok_or_else(|| DataError::Empty {
        what: "test set".into(),
    })?;
    if n_max == 0 {
        return Err(DataError::EmptyClass {
            what: "label shift test set".into(),
            class: 0,
        });
    }
    if let Some(class) = have.iter().position(|&n| n != n_max) {
        return Err(DataError::Unbalanced {
            class,
            got: have[class],
            want: n_max,
        });
    }
    let counts = dist.counts(train_counts, n_max)?;
    Ok(test.subset(&ldam_subset(&test.labels, &counts, seed)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for d in TestDist::all() {
            assert_eq!(d.name().parse::<TestDist>().unwrap(), d);
        }
        assert!("forward0.5".parse::<TestDist>().is_err());
        assert!("sideways".parse::<TestDist>().is_err());
    }

    #[test]
    fn ranking_follows_training_counts() {
        // Class 2 is the most frequent, then 0, then 1.
        let c = TestDist::Forward(4.0).counts(&[50, 10, 90], 100).unwrap();
        assert_eq!(c, [50, 25, 100]);
        let c = TestDist::Backward(4.0).counts(&[50, 10, 90], 100).unwrap();
        assert_eq!(c, [50, 100, 25]);
    }
}
