//! The per-class constants long-tail losses derive from the training class counts, in one
//! place for every method: LDAM margins, DRW ("effective number") weights, RIDE's diversity
//! temperatures and the class prior.
//!
//! ```
//! let counts = [500, 50, 5];
//! let m = longtail_losses::ldam_margins(&counts, 0.5)?;
//! assert!((m[2] - 0.5).abs() < 1e-12 && m[0] < m[1]);
//! let w = longtail_losses::drw_weights(&counts, 0.9999)?;
//! assert!((w.iter().sum::<f64>() - 3.0).abs() < 1e-9);
//! # Ok::<(), longtail_losses::LossError>(())
//! ```
#![deny(missing_docs)]

/// What can go wrong when deriving per-class constants.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum LossError {
    /// The class-count list is empty.
    #[error("no classes: the class-count list is empty")]
    NoClasses,
    /// A class has no training sample, so its margin, weight or prior is undefined.
    #[error("class {class} has no training sample (count 0)")]
    EmptyClass {
        /// Index of the empty class.
        class: usize,
    },
    /// A setting is NaN or infinite.
    #[error("{field} must be finite, got {value}")]
    NonFinite {
        /// Name of the setting.
        field: &'static str,
        /// The value given.
        value: f64,
    },
    /// A setting is finite but out of range.
    #[error("{field} must be {expected}, got {value}")]
    OutOfRange {
        /// Name of the setting.
        field: &'static str,
        /// The value given.
        value: f64,
        /// The valid range, in words.
        expected: &'static str,
    },
}

type Result<T> = std::result::Result<T, LossError>;

/// Fails with [`LossError::NoClasses`] for an empty list and [`LossError::EmptyClass`] for the
/// first class with no sample.
pub fn check_counts(class_counts: &[usize]) -> Result<()> {
    if class_counts.is_empty() {
        return Err(LossError::NoClasses);
    }
    match class_counts.iter().position(|&n| n == 0) {
        Some(class) => Err(LossError::EmptyClass { class }),
        None => Ok(()),
    }
}

/// Checks that `value` is finite and lies in `range`, described as `expected`.
pub fn check_range(
    field: &'static str,
    value: f64,
    range: impl std::ops::RangeBounds<f64>,
    expected: &'static str,
) -> Result<()> {
    if !value.is_finite() {
        return Err(LossError::NonFinite { field, value });
    }
    if range.contains(&value) {
        Ok(())
    } else {
        Err(LossError::OutOfRange {
            field,
            value,
            expected,
        })
    }
}

/// LDAM margins `m_j = max_margin · (n_min / n_j)^{1/4}` (Cao et al., NeurIPS 2019, Eq. 13):
/// proportional to `n_j^{-1/4}` and scaled so the rarest class gets `max_margin`
/// (docs/ride.md §3, docs/tlc.md §2.2).
pub fn ldam_margins(class_counts: &[usize], max_margin: f64) -> Result<Vec<f64>> {
    check_counts(class_counts)?;
    check_range("max_margin", max_margin, 0.0.., ">= 0")?;
    let raw: Vec<f64> = class_counts
        .iter()
        .map(|&n| (n as f64).powf(-0.25))
        .collect();
    let max = raw.iter().cloned().fold(f64::MIN, f64::max);
    Ok(raw.iter().map(|m| m * max_margin / max).collect())
}

/// Deferred re-weighting (DRW) class weights from the "effective number" of samples
/// (Cui et al., CVPR 2019, Eq. 4): `w_j = (1 − β)/(1 − β^{n_j})`, renormalised so
/// `Σ_j w_j = C` (docs/ride.md §3). With `β = 0` every weight is 1.
pub fn drw_weights(class_counts: &[usize], beta: f64) -> Result<Vec<f64>> {
    check_counts(class_counts)?;
    check_range("drw_beta", beta, 0.0..1.0, "in [0, 1)")?;
    let raw: Vec<f64> = class_counts
        .iter()
        .map(|&n| (1.0 - beta) / (1.0 - beta.powf(n as f64)))
        .collect();
    let sum: f64 = raw.iter().sum();
    let c = class_counts.len() as f64;
    Ok(raw.iter().map(|w| w / sum * c).collect())
}

/// Per-class diversity temperatures `T_j = T_base · t_j / max_k t_k` with
/// `t_j = C·p_j·r + 1 − r` and `p_j = n_j / Σn` (RIDE, docs/ride.md §3; TLC uses `T_base = 1`,
/// docs/tlc.md §2.2): `T_base` for the largest class, sharper (smaller) for tail classes. This
/// is the official code's division by the max, which produced the released models, not the
/// paper's shift form.
pub fn diversity_temperatures(
    class_counts: &[usize],
    base_temperature: f64,
    reweight_factor: f64,
) -> Result<Vec<f64>> {
    check_counts(class_counts)?;
    check_range(
        "base_diversity_temperature",
        base_temperature,
        f64::MIN_POSITIVE..,
        "> 0",
    )?;
    check_range("reweight_factor", reweight_factor, 0.0..=1.0, "in [0, 1]")?;
    let total: f64 = class_counts.iter().map(|&n| n as f64).sum();
    let c = class_counts.len() as f64;
    let t: Vec<f64> = class_counts
        .iter()
        .map(|&n| c * (n as f64 / total) * reweight_factor + 1.0 - reweight_factor)
        .collect();
    let max = t.iter().cloned().fold(f64::MIN, f64::max);
    Ok(t.iter().map(|t| base_temperature * t / max).collect())
}

/// The training class prior `π_j = n_j / Σ n`. Empty classes are allowed (prior 0) as long as
/// some class has samples; no samples at all is [`LossError::EmptyClass`] of class 0.
pub fn class_prior(class_counts: &[usize]) -> Result<Vec<f64>> {
    if class_counts.is_empty() {
        return Err(LossError::NoClasses);
    }
    let total: usize = class_counts.iter().sum();
    if total == 0 {
        return Err(LossError::EmptyClass { class: 0 });
    }
    Ok(class_counts
        .iter()
        .map(|&n| n as f64 / total as f64)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn margins_follow_the_quarter_power() {
        let m = ldam_margins(&[16, 1], 0.5).unwrap();
        assert!((m[1] - 0.5).abs() < 1e-15);
        assert!((m[0] - 0.25).abs() < 1e-15, "16^-1/4 = 1/2 of the rarest");
    }

    #[test]
    fn drw_weights_by_hand() {
        // β = 0.5, counts 1 and 2: raw 1 and 0.5/0.75 = 2/3, normalised to sum 2.
        let w = drw_weights(&[1, 2], 0.5).unwrap();
        assert!(
            (w[0] - 1.2).abs() < 1e-12 && (w[1] - 0.8).abs() < 1e-12,
            "{w:?}"
        );
        assert_eq!(drw_weights(&[3, 3], 0.0).unwrap(), vec![1.0, 1.0]);
    }

    #[test]
    fn temperatures_by_hand() {
        // C = 2, p = (0.75, 0.25), r = 0.5: t = (1.25, 0.75) → (1, 0.6) · T_base 2.
        let t = diversity_temperatures(&[3, 1], 2.0, 0.5).unwrap();
        assert!(
            (t[0] - 2.0).abs() < 1e-12 && (t[1] - 1.2).abs() < 1e-12,
            "{t:?}"
        );
    }

    #[test]
    fn bad_counts_and_settings_are_typed_errors() {
        assert_eq!(check_counts(&[]), Err(LossError::NoClasses));
        assert_eq!(
            ldam_margins(&[3, 0], 0.5),
            Err(LossError::EmptyClass { class: 1 })
        );
        assert!(matches!(
            drw_weights(&[3], 1.0),
            Err(LossError::OutOfRange {
                field: "drw_beta",
                ..
            })
        ));
        assert!(matches!(
            ldam_margins(&[3], f64::NAN),
            Err(LossError::NonFinite { .. })
        ));
        assert_eq!(
            class_prior(&[0, 0]),
            Err(LossError::EmptyClass { class: 0 })
        );
        assert_eq!(class_prior(&[1, 3]).unwrap(), vec![0.25, 0.75]);
    }
}
