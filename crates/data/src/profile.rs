//! Long-tail profiles (how many images each class keeps) and the exact LDAM-DRW subset.

use crate::error::{DataError, Result};
use crate::mt19937::Mt19937;

/// Checks an imbalance factor (`max/min` count ratio): finite and at least 1.
pub fn check_imbalance(imbalance: f64) -> Result<()> {
    if imbalance.is_finite() && imbalance >= 1.0 {
        Ok(())
    } else {
        Err(DataError::BadImbalance { value: imbalance })
    }
}

/// The exponential profile `n_i = int(n_max · f^(i/(C−1)))`, `f = 1/imbalance`, `i = 0..C−1`.
///
/// Evaluated in f64 exactly as LDAM-DRW's `get_img_num_per_cls` (`img_max * (imb_factor **
/// (cls_idx / (cls_num - 1.0)))`, then `int()`), so CIFAR-10-LT IF 100 gives 5000, 2997, …, 50
/// (total 12,406) and CIFAR-100-LT 500, 477, …, 5 (total 10,847) (docs/ride.md §6). One class
/// keeps `n_max`.
pub fn exponential_counts(n_max: f64, classes: usize, imbalance: f64) -> Result<Vec<usize>> {
    check_imbalance(imbalance)?;
    if classes == 0 {
        return Err(DataError::BadParameter {
            name: "number of classes",
            value: "0".into(),
            reason: "at least one class is needed".into(),
        });
    }
    let factor = 1.0 / imbalance;
    if classes == 1 {
        return Ok(vec![n_max as usize]);
    }
    Ok((0..classes)
        .map(|i| (n_max * factor.powf(i as f64 / (classes as f64 - 1.0))) as usize)
        .collect())
}

/// The step profile of LDAM-DRW: the first `C/2` classes keep `n_max`, the rest `n_max / imbalance`
/// (both truncated by `int()`).
pub fn step_counts(n_max: f64, classes: usize, imbalance: f64) -> Result<Vec<usize>> {
    check_imbalance(imbalance)?;
    let half = classes / 2;
    Ok((0..classes)
        .map(|i| {
            if i < half {
                n_max as usize
            } else {
                (n_max / imbalance) as usize
            }
        })
        .collect())
}

/// The LDAM-DRW subset: the indices kept when each class `c` keeps `counts[c]` images.
///
/// `np.random.seed(seed)` once, then for `c = 0..C−1` in label order: take the ascending indices of
/// class `c`, `np.random.shuffle` them, keep the first `counts[c]` (all if fewer). One RNG stream
/// runs through every class, and the result is stacked class by class in shuffled order, as in
/// `IMBALANCECIFAR10.gen_imbalanced_data` (docs/ride.md §6). Labels must be `< counts.len()`.
pub fn ldam_subset(labels: &[u32], counts: &[usize], seed: u32) -> Vec<usize> {
    let mut per_class: Vec<Vec<usize>> = vec![Vec::new(); counts.len()];
    for (i, &l) in labels.iter().enumerate() {
        if let Some(v) = per_class.get_mut(l as usize) {
            v.push(i);
        }
    }
    let mut rng = Mt19937::new(seed);
    let mut kept = Vec::with_capacity(counts.iter().sum());
    for (idx, &n) in per_class.iter_mut().zip(counts) {
        rng.shuffle(idx);
        kept.extend_from_slice(&idx[..n.min(idx.len())]);
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fmnist_lt_profile() {
        let c = exponential_counts(1000.0, 10, 100.0).unwrap();
        assert_eq!(c, [1000, 599, 359, 215, 129, 77, 46, 27, 16, 10]);
    }

    #[test]
    fn step_profile_halves() {
        assert_eq!(step_counts(500.0, 4, 10.0).unwrap(), [500, 500, 50, 50]);
    }

    #[test]
    fn imbalance_below_one_is_an_error() {
        for bad in [0.5, 0.0, -3.0, f64::NAN, f64::INFINITY] {
            let e = exponential_counts(100.0, 10, bad).unwrap_err();
            assert!(matches!(e, DataError::BadImbalance { .. }), "{e}");
        }
    }

    #[test]
    fn subset_keeps_first_n_of_each_shuffled_class() {
        let labels: Vec<u32> = (0..30).map(|i| (i % 3) as u32).collect();
        let kept = ldam_subset(&labels, &[10, 4, 1], 0);
        assert_eq!(kept.len(), 15);
        assert!(kept[..10].iter().all(|&i| labels[i] == 0));
        assert!(kept[10..14].iter().all(|&i| labels[i] == 1));
        assert_eq!(labels[kept[14]], 2);
        // Class 0 is the shuffle of 0,3,…,27 with seed 0: the n = 10 reference case mapped by 3·k.
        let want: Vec<usize> = [2, 8, 4, 9, 1, 6, 7, 3, 0, 5]
            .iter()
            .map(|k| 3 * k)
            .collect();
        assert_eq!(&kept[..10], &want[..]);
    }
}
