//! Top-1, per-class and many/medium/few accuracy, and the confusion matrix.

use serde::{Deserialize, Serialize};

use crate::{MetricsError, Shot};

/// Accuracy of one evaluation, as RIDE's `test.py` reports it (docs/ride.md §7).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClassificationReport {
    /// Micro top-1 over all samples (the "All" column of SADE's tables).
    pub accuracy: f64,
    /// Accuracy of each class; `None` for a class with no test sample.
    pub per_class: Vec<Option<f64>>,
    /// Mean of the per-class accuracies over classes that have test samples.
    pub mean_class_accuracy: f64,
    /// Mean per-class accuracy inside the many / medium / few groups; `None` for an empty
    /// group (the official code prints NaN there, e.g. "few" of CIFAR-100-LT IF 10).
    pub many: Option<f64>,
    /// See [`ClassificationReport::many`].
    pub medium: Option<f64>,
    /// See [`ClassificationReport::many`].
    pub few: Option<f64>,
    /// Number of classes in each group (`many_class_num`, … in the official logs).
    pub group_classes: [usize; 3],
    /// `confusion[true][predicted]` counts.
    pub confusion: Vec<Vec<u64>>,
    /// Number of evaluated samples.
    pub samples: usize,
}

impl ClassificationReport {
    /// Accuracy of one group.
    pub fn group(&self, shot: Shot) -> Option<f64> {
        match shot {
            Shot::Many => self.many,
            Shot::Medium => self.medium,
            Shot::Few => self.few,
        }
    }
}

/// Builds the report from predictions and labels.
///
/// `shots[c]` is the group of class `c` (see [`crate::shot_groups`]); group accuracy is the mean
/// of per-class accuracies within the group, over classes present in the test set.
pub fn classification_report(
    predictions: &[u32],
    labels: &[u32],
    shots: &[Shot],
) -> Result<ClassificationReport, MetricsError> {
    let num_classes = shots.len();
    if predictions.len() != labels.len() {
        return Err(MetricsError::LengthMismatch {
            what: "predictions and labels",
            left: predictions.len(),
            right: labels.len(),
        });
    }
    if labels.is_empty() {
        return Err(MetricsError::Empty("labels"));
    }
    let mut confusion = vec![vec![0u64; num_classes]; num_classes];
    for (i, (&p, &y)) in predictions.iter().zip(labels).enumerate() {
        for (what, v) in [("label", y), ("prediction", p)] {
            if v as usize >= num_classes {
                return Err(MetricsError::ClassOutOfRange {
                    what,
                    index: i,
                    class: v,
                    num_classes,
                });
            }
        }
        confusion[y as usize][p as usize] += 1;
    }
    let correct: u64 = (0..num_classes).map(|c| confusion[c][c]).sum();
    let per_class: Vec<Option<f64>> = confusion
        .iter()
        .enumerate()
        .map(|(c, row)| {
            let n: u64 = row.iter().sum();
            (n > 0).then(|| row[c] as f64 / n as f64)
        })
        .collect();
    let mean = |sel: &dyn Fn(usize) -> bool| -> Option<f64> {
        let v: Vec<f64> = (0..num_classes)
            .filter(|&c| sel(c))
            .filter_map(|c| per_class[c])
            .collect();
        (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
    };
    let group_classes = Shot::ALL.map(|s| shots.iter().filter(|&&g| g == s).count());
    Ok(ClassificationReport {
        accuracy: correct as f64 / labels.len() as f64,
        mean_class_accuracy: mean(&|_| true).unwrap_or(f64::NAN),
        many: mean(&|c| shots[c] == Shot::Many),
        medium: mean(&|c| shots[c] == Shot::Medium),
        few: mean(&|c| shots[c] == Shot::Few),
        per_class,
        group_classes,
        confusion,
        samples: labels.len(),
    })
}

/// Index of the largest value of each row of a row-major `[n, c]` matrix (first on ties, as
/// `torch.argmax`); NaN never wins.
pub fn argmax_rows(values: &[f32], num_classes: usize) -> Vec<u32> {
    values
        .chunks(num_classes.max(1))
        .map(|row| {
            let mut best = 0;
            for (j, &v) in row.iter().enumerate() {
                if v > row[best] || row[best].is_nan() {
                    best = j;
                }
            }
            best as u32
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use Shot::*;

    #[test]
    fn groups_average_per_class_accuracy() {
        // class 0: 3/4 right; class 1: 1/2; class 2: 0/1; class 3: absent.
        let labels = [0, 0, 0, 0, 1, 1, 2];
        let preds = [0, 0, 0, 1, 1, 0, 0];
        let shots = [Many, Many, Few, Few];
        let r = classification_report(&preds, &labels, &shots).unwrap();
        assert!((r.accuracy - 4.0 / 7.0).abs() < 1e-12);
        assert_eq!(r.per_class, vec![Some(0.75), Some(0.5), Some(0.0), None]);
        assert!((r.many.unwrap() - 0.625).abs() < 1e-12);
        assert_eq!(r.medium, None);
        assert_eq!(r.few, Some(0.0));
        assert_eq!(r.group_classes, [2, 0, 2]);
        assert_eq!(r.confusion[1], vec![1, 1, 0, 0]);
        assert!((r.mean_class_accuracy - 1.25 / 3.0).abs() < 1e-12);
    }

    #[test]
    fn bad_inputs_are_errors() {
        assert!(matches!(
            classification_report(&[0], &[0, 1], &[Many, Few]),
            Err(MetricsError::LengthMismatch { .. })
        ));
        assert!(matches!(
            classification_report(&[0], &[5], &[Many, Few]),
            Err(MetricsError::ClassOutOfRange { class: 5, .. })
        ));
        assert!(matches!(
            classification_report(&[], &[], &[Many]),
            Err(MetricsError::Empty(_))
        ));
    }

    #[test]
    fn argmax_takes_first_maximum() {
        assert_eq!(
            argmax_rows(&[1.0, 3.0, 3.0, f32::NAN, 0.0, -1.0], 3),
            vec![1, 1]
        );
    }
}
