//! Uncertainty metrics on plain slices: failure prediction, calibration, selective risk, OOD.
//!
//! Each sample has a **confidence** score (higher = more trusted; for TLC, `c = 1 − u / max u` with
//! `u = w_E`, see [`confidence_from_uncertainty`]) and whether its prediction was **correct**.
//!
//! - [`failure_auroc`]: ROC-AUC of confidence separating correct (positive) from wrong predictions,
//!   ties counted ½ (the Mann–Whitney statistic, equal to `sklearn.metrics.roc_auc_score`).
//! - [`fpr_at_tpr`] / [`fpr_at_95_tpr`]: FPR where the ROC reaches a TPR, linearly interpolated as
//!   TLC's `scipy.interpolate.interp1d(tpr, fpr)` (docs/tlc.md §4).
//! - [`ece`], [`ece15`], [`ece10`], [`reliability_bins`]: expected calibration error and the
//!   reliability diagram.
//! - [`risk_coverage`]: the risk–coverage curve and its area (AURC, Geifman & El-Yaniv 2017).
//! - [`ood_auroc`]: in-distribution (positive) vs out-of-distribution scores.
//! - `*_by_group`: the same per group label (shot group, TLC's class region, …).
//!
//! Degenerate inputs never panic: empty inputs, mismatched lengths and NaN/inf scores are a
//! [`MetricsError`]; a metric that needs both classes (AUROC, FPR) on input with only one is an
//! error, and `None` in the per-group results (the official TLC code scores such a region 0).

use crate::MetricsError;

type Result<T> = std::result::Result<T, MetricsError>;

fn check_pair(confidence: &[f64], correct: &[bool]) -> Result<()> {
    if confidence.len() != correct.len() {
        return Err(MetricsError::LengthMismatch {
            what: "confidences and correctness flags",
            left: confidence.len(),
            right: correct.len(),
        });
    }
    if confidence.is_empty() {
        return Err(MetricsError::Empty("samples"));
    }
    check_finite("confidence", confidence)
}

fn check_finite(what: &'static str, scores: &[f64]) -> Result<()> {
    match scores.iter().position(|v| !v.is_finite()) {
        Some(index) => Err(MetricsError::NonFinite {
            what,
            index,
            value: scores[index],
        }),
        None => Ok(()),
    }
}

fn check_groups(groups: &[usize], n: usize) -> Result<()> {
    if groups.len() != n {
        return Err(MetricsError::LengthMismatch {
            what: "scores and group labels",
            left: n,
            right: groups.len(),
        });
    }
    Ok(())
}

fn single_class(metric: &str, positives: usize, negatives: usize) -> MetricsError {
    MetricsError::Invalid(format!(
        "{metric} is undefined with {positives} positive and {negatives} negative samples (needs both)"
    ))
}

/// TLC's confidence from uncertainty: `c = 1 − u / max(u)` (docs/tlc.md §4, issue #9).
///
/// Errors on empty input, non-finite or negative `u`; if every `u` is 0 all confidences are 1.
pub fn confidence_from_uncertainty(uncertainty: &[f64]) -> Result<Vec<f64>> {
    if uncertainty.is_empty() {
        return Err(MetricsError::Empty("uncertainties"));
    }
    check_finite("uncertainty", uncertainty)?;
    if let Some(index) = uncertainty.iter().position(|&u| u < 0.0) {
        return Err(MetricsError::Invalid(format!(
            "uncertainty of sample {index} is negative ({})",
            uncertainty[index]
        )));
    }
    let max = uncertainty.iter().cloned().fold(0.0, f64::max);
    Ok(uncertainty
        .iter()
        .map(|&u| if max > 0.0 { 1.0 - u / max } else { 1.0 })
        .collect())
}

/// Mann–Whitney AUROC of `positive` vs `negative` scores: `P(s⁺ > s⁻) + ½ P(s⁺ = s⁻)`.
/// `None` when either side is empty. Inputs must be finite.
fn mann_whitney(positive: &[f64], negative: &[f64]) -> Option<f64> {
    if positive.is_empty() || negative.is_empty() {
        return None;
    }
    let mut all: Vec<(f64, bool)> = positive
        .iter()
        .map(|&s| (s, true))
        .chain(negative.iter().map(|&s| (s, false)))
        .collect();
    all.sort_by(|a, b| a.0.total_cmp(&b.0));
    // Sum of the (average, 1-based) ranks of the positives.
    let mut rank_sum = 0.0;
    let mut i = 0;
    while i < all.len() {
        let mut j = i;
        while j < all.len() && all[j].0 == all[i].0 {
            j += 1;
        }
        let avg_rank = (i + 1 + j) as f64 / 2.0;
        rank_sum += avg_rank * all[i..j].iter().filter(|p| p.1).count() as f64;
        i = j;
    }
    let (np, nn) = (positive.len() as f64, negative.len() as f64);
    Some((rank_sum - np * (np + 1.0) / 2.0) / (np * nn))
}

fn split(
    confidence: &[f64],
    correct: &[bool],
    idx: impl Iterator<Item = usize>,
) -> (Vec<f64>, Vec<f64>) {
    let (mut pos, mut neg) = (Vec::new(), Vec::new());
    for i in idx {
        if correct[i] {
            pos.push(confidence[i]);
        } else {
            neg.push(confidence[i]);
        }
    }
    (pos, neg)
}

/// Failure-prediction AUROC: positive = correct prediction, score = confidence.
pub fn failure_auroc(confidence: &[f64], correct: &[bool]) -> Result<f64> {
    check_pair(confidence, correct)?;
    let (pos, neg) = split(confidence, correct, 0..confidence.len());
    mann_whitney(&pos, &neg).ok_or_else(|| single_class("failure auroc", pos.len(), neg.len()))
}

/// OOD-detection AUROC: in-distribution scores are the positives, OOD the negatives; with
/// confidence scores a good detector scores near 1.
///
/// Differs from official TLC (docs/tlc.md §4, pitfall 12): the official code normalises the ID and OOD
/// uncertainties each by its own maximum before comparing; pass scores normalised as you intend
/// (e.g. both by the ID maximum) instead.
pub fn ood_auroc(id_scores: &[f64], ood_scores: &[f64]) -> Result<f64> {
    if id_scores.is_empty() {
        return Err(MetricsError::Empty("in-distribution scores"));
    }
    if ood_scores.is_empty() {
        return Err(MetricsError::Empty("out-of-distribution scores"));
    }
    check_finite("in-distribution score", id_scores)?;
    check_finite("out-of-distribution score", ood_scores)?;
    Ok(mann_whitney(id_scores, ood_scores).expect("both sides are non-empty"))
}

/// A ROC curve: points from `(0, 0)` through one point per distinct score, highest first
/// (the points of `sklearn.metrics.roc_curve(drop_intermediate=False)`).
#[derive(Clone, Debug, PartialEq)]
pub struct RocCurve {
    /// False-positive rate of each point.
    pub fpr: Vec<f64>,
    /// True-positive rate of each point.
    pub tpr: Vec<f64>,
    /// Threshold of each point (`score ≥ threshold` is called positive); `+inf` for `(0, 0)`.
    pub thresholds: Vec<f64>,
}

fn roc_points(scores_labels: &mut [(f64, bool)]) -> Option<RocCurve> {
    let p = scores_labels.iter().filter(|s| s.1).count();
    let n = scores_labels.len() - p;
    if p == 0 || n == 0 {
        return None;
    }
    scores_labels.sort_by(|a, b| b.0.total_cmp(&a.0));
    let mut curve = RocCurve {
        fpr: vec![0.0],
        tpr: vec![0.0],
        thresholds: vec![f64::INFINITY],
    };
    let (mut tp, mut fp) = (0usize, 0usize);
    let mut i = 0;
    while i < scores_labels.len() {
        let s = scores_labels[i].0;
        while i < scores_labels.len() && scores_labels[i].0 == s {
            if scores_labels[i].1 {
                tp += 1;
            } else {
                fp += 1;
            }
            i += 1;
        }
        curve.fpr.push(fp as f64 / n as f64);
        curve.tpr.push(tp as f64 / p as f64);
        curve.thresholds.push(s);
    }
    Some(curve)
}

/// ROC curve of confidence for correct (positive) vs wrong predictions.
pub fn roc_curve(confidence: &[f64], correct: &[bool]) -> Result<RocCurve> {
    check_pair(confidence, correct)?;
    let mut pairs: Vec<(f64, bool)> = confidence
        .iter()
        .cloned()
        .zip(correct.iter().cloned())
        .collect();
    let p = pairs.iter().filter(|s| s.1).count();
    roc_points(&mut pairs).ok_or_else(|| single_class("roc curve", p, confidence.len() - p))
}

impl RocCurve {
    /// FPR at a TPR, linearly interpolated between the last point below it and the first point
    /// reaching it (what `interp1d(tpr, fpr)(target)` gives on this curve).
    pub fn fpr_at(&self, target_tpr: f64) -> f64 {
        let hi = self
            .tpr
            .iter()
            .position(|&t| t >= target_tpr)
            .unwrap_or(self.tpr.len() - 1);
        if hi == 0 || self.tpr[hi] == target_tpr {
            return self.fpr[hi];
        }
        let lo = hi - 1;
        let frac = (target_tpr - self.tpr[lo]) / (self.tpr[hi] - self.tpr[lo]);
        self.fpr[lo] + frac * (self.fpr[hi] - self.fpr[lo])
    }
}

/// FPR (wrong predictions accepted) at the threshold where `target_tpr` of the correct ones are
/// accepted; `target_tpr` in `[0, 1]`.
pub fn fpr_at_tpr(confidence: &[f64], correct: &[bool], target_tpr: f64) -> Result<f64> {
    if !(0.0..=1.0).contains(&target_tpr) {
        return Err(MetricsError::Invalid(format!(
            "target tpr {target_tpr} is outside [0, 1]"
        )));
    }
    Ok(roc_curve(confidence, correct)?.fpr_at(target_tpr))
}

/// FPR at 95 % TPR (TLC's "FPR-95").
pub fn fpr_at_95_tpr(confidence: &[f64], correct: &[bool]) -> Result<f64> {
    fpr_at_tpr(confidence, correct, 0.95)
}

/// Which edge of a calibration bin is closed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BinEdge {
    /// `(lo, hi]`, as Guo et al. 2017 (15 bins); a confidence of exactly 0 goes to the first bin.
    Right,
    /// `[lo, hi)`, as the ECE function the TLC author gave in issue #9 (10 bins); a confidence of
    /// exactly 1 goes to the last bin.
    Left,
}

/// One bin of a reliability diagram.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct ReliabilityBin {
    /// Lower edge.
    pub lower: f64,
    /// Upper edge.
    pub upper: f64,
    /// Samples in the bin.
    pub count: usize,
    /// Accuracy of the bin's samples (`None` if empty).
    pub accuracy: Option<f64>,
    /// Mean confidence of the bin's samples (`None` if empty).
    pub mean_confidence: Option<f64>,
}

fn bin_of(c: f64, edges: &[f64], edge: BinEdge) -> usize {
    let n = edges.len() - 1;
    match edge {
        // First i with c <= edges[i + 1].
        BinEdge::Right => edges[1..].iter().position(|&hi| c <= hi).unwrap_or(n - 1),
        // Last i with edges[i] <= c.
        BinEdge::Left => edges[..n].iter().rposition(|&lo| lo <= c).unwrap_or(0),
    }
}

fn bins_of(
    confidence: &[f64],
    correct: &[bool],
    idx: &[usize],
    n_bins: usize,
    edge: BinEdge,
) -> Vec<ReliabilityBin> {
    // Edges as numpy.linspace(0, 1, n + 1): i·(1/n), last exactly 1.
    let step = 1.0 / n_bins as f64;
    let mut edges: Vec<f64> = (0..=n_bins).map(|i| i as f64 * step).collect();
    edges[n_bins] = 1.0;
    let mut count = vec![0usize; n_bins];
    let mut hits = vec![0usize; n_bins];
    let mut conf = vec![0f64; n_bins];
    for &i in idx {
        let b = bin_of(confidence[i], &edges, edge);
        count[b] += 1;
        hits[b] += correct[i] as usize;
        conf[b] += confidence[i];
    }
    (0..n_bins)
        .map(|b| ReliabilityBin {
            lower: edges[b],
            upper: edges[b + 1],
            count: count[b],
            accuracy: (count[b] > 0).then(|| hits[b] as f64 / count[b] as f64),
            mean_confidence: (count[b] > 0).then(|| conf[b] / count[b] as f64),
        })
        .collect()
}

fn check_bins(confidence: &[f64], n_bins: usize) -> Result<()> {
    if n_bins == 0 {
        return Err(MetricsError::Invalid(
            "the number of bins must be at least 1".into(),
        ));
    }
    if let Some(index) = confidence.iter().position(|c| !(0.0..=1.0).contains(c)) {
        return Err(MetricsError::Invalid(format!(
            "confidence of sample {index} is {} (must be in [0, 1] for calibration)",
            confidence[index]
        )));
    }
    Ok(())
}

/// Reliability-diagram bins: `n_bins` equal-width bins over `[0, 1]`.
pub fn reliability_bins(
    confidence: &[f64],
    correct: &[bool],
    n_bins: usize,
    edge: BinEdge,
) -> Result<Vec<ReliabilityBin>> {
    check_pair(confidence, correct)?;
    check_bins(confidence, n_bins)?;
    let idx: Vec<usize> = (0..confidence.len()).collect();
    Ok(bins_of(confidence, correct, &idx, n_bins, edge))
}

fn ece_from_bins(bins: &[ReliabilityBin]) -> f64 {
    let total: usize = bins.iter().map(|b| b.count).sum();
    bins.iter()
        .filter_map(|b| Some(b.count as f64 * (b.accuracy? - b.mean_confidence?).abs()))
        .sum::<f64>()
        / total as f64
}

/// Expected calibration error `Σ_b (n_b / N) · |acc_b − conf_b|` over `n_bins` equal bins.
pub fn ece(confidence: &[f64], correct: &[bool], n_bins: usize, edge: BinEdge) -> Result<f64> {
    Ok(ece_from_bins(&reliability_bins(
        confidence, correct, n_bins, edge,
    )?))
}

/// ECE with 15 right-closed bins (Guo et al. 2017, the usual reporting).
pub fn ece15(confidence: &[f64], correct: &[bool]) -> Result<f64> {
    ece(confidence, correct, 15, BinEdge::Right)
}

/// ECE with 10 left-closed bins `[i/10, (i+1)/10)`, TLC's variant (issue #9).
pub fn ece10(confidence: &[f64], correct: &[bool]) -> Result<f64> {
    ece(confidence, correct, 10, BinEdge::Left)
}

/// The risk–coverage curve of selective prediction, and its area.
#[derive(Clone, Debug, PartialEq)]
pub struct RiskCoverage {
    /// Coverage `i / N` for `i = 1..=N` (the `i` most confident samples are accepted).
    pub coverage: Vec<f64>,
    /// Risk (error rate among accepted samples) at each coverage.
    pub risk: Vec<f64>,
    /// Area under the curve, `AURC = (1/N) Σ_i risk_i`.
    pub aurc: f64,
    /// AURC of an oracle that ranks every correct prediction first.
    pub optimal_aurc: f64,
}

impl RiskCoverage {
    /// Excess AURC, `AURC − optimal AURC` (Geifman et al. 2019).
    pub fn excess_aurc(&self) -> f64 {
        self.aurc - self.optimal_aurc
    }
}

fn risk_coverage_of(confidence: &[f64], correct: &[bool], idx: &[usize]) -> RiskCoverage {
    let mut order: Vec<usize> = idx.to_vec();
    order.sort_by(|&a, &b| confidence[b].total_cmp(&confidence[a]));
    let n = order.len();
    let (mut coverage, mut risk) = (Vec::with_capacity(n), Vec::with_capacity(n));
    // Tied confidences are one group; inside it errors are spread evenly, i.e. the expected
    // risk over random tie-breaking, so the result does not depend on the input order.
    let mut errors_before = 0usize;
    let mut i = 0;
    while i < n {
        let c = confidence[order[i]];
        let mut j = i;
        while j < n && confidence[order[j]] == c {
            j += 1;
        }
        let group = j - i;
        let group_errors = order[i..j].iter().filter(|&&s| !correct[s]).count();
        for t in 1..=group {
            let accepted = i + t;
            let errors = errors_before as f64 + t as f64 * group_errors as f64 / group as f64;
            coverage.push(accepted as f64 / n as f64);
            risk.push(errors / accepted as f64);
        }
        errors_before += group_errors;
        i = j;
    }
    let aurc = risk.iter().sum::<f64>() / n as f64;
    let n_correct = idx.iter().filter(|&&s| correct[s]).count();
    let optimal_aurc = (1..=n)
        .map(|k| k.saturating_sub(n_correct) as f64 / k as f64)
        .sum::<f64>()
        / n as f64;
    RiskCoverage {
        coverage,
        risk,
        aurc,
        optimal_aurc,
    }
}

/// Risk–coverage curve and AURC (lower is better). Defined for any non-empty input (all
/// correct gives AURC 0).
pub fn risk_coverage(confidence: &[f64], correct: &[bool]) -> Result<RiskCoverage> {
    check_pair(confidence, correct)?;
    let idx: Vec<usize> = (0..confidence.len()).collect();
    Ok(risk_coverage_of(confidence, correct, &idx))
}

/// One group's value of a metric.
#[derive(Clone, Debug, PartialEq)]
pub struct GroupValue {
    /// The group label.
    pub group: usize,
    /// Samples in the group.
    pub count: usize,
    /// The metric, `None` when undefined for this group (e.g. AUROC with only correct samples).
    pub value: Option<f64>,
}

/// Sample indices of each group label, ascending by label.
fn group_indices(groups: &[usize]) -> Vec<(usize, Vec<usize>)> {
    let mut map = std::collections::BTreeMap::<usize, Vec<usize>>::new();
    for (i, &g) in groups.iter().enumerate() {
        map.entry(g).or_default().push(i);
    }
    map.into_iter().collect()
}

fn by_group(groups: &[usize], f: impl Fn(&[usize]) -> Option<f64>) -> Vec<GroupValue> {
    group_indices(groups)
        .into_iter()
        .map(|(group, idx)| GroupValue {
            group,
            count: idx.len(),
            value: f(&idx),
        })
        .collect()
}

/// [`failure_auroc`] per group (`groups[i]` is sample `i`'s label).
pub fn failure_auroc_by_group(
    confidence: &[f64],
    correct: &[bool],
    groups: &[usize],
) -> Result<Vec<GroupValue>> {
    check_pair(confidence, correct)?;
    check_groups(groups, confidence.len())?;
    Ok(by_group(groups, |idx| {
        let (pos, neg) = split(confidence, correct, idx.iter().cloned());
        mann_whitney(&pos, &neg)
    }))
}

/// [`fpr_at_tpr`] per group.
pub fn fpr_at_tpr_by_group(
    confidence: &[f64],
    correct: &[bool],
    groups: &[usize],
    target_tpr: f64,
) -> Result<Vec<GroupValue>> {
    check_pair(confidence, correct)?;
    check_groups(groups, confidence.len())?;
    if !(0.0..=1.0).contains(&target_tpr) {
        return Err(MetricsError::Invalid(format!(
            "target tpr {target_tpr} is outside [0, 1]"
        )));
    }
    Ok(by_group(groups, |idx| {
        let mut pairs: Vec<(f64, bool)> =
            idx.iter().map(|&i| (confidence[i], correct[i])).collect();
        roc_points(&mut pairs).map(|c| c.fpr_at(target_tpr))
    }))
}

/// [`ece`] per group.
pub fn ece_by_group(
    confidence: &[f64],
    correct: &[bool],
    groups: &[usize],
    n_bins: usize,
    edge: BinEdge,
) -> Result<Vec<GroupValue>> {
    check_pair(confidence, correct)?;
    check_groups(groups, confidence.len())?;
    check_bins(confidence, n_bins)?;
    Ok(by_group(groups, |idx| {
        Some(ece_from_bins(&bins_of(
            confidence, correct, idx, n_bins, edge,
        )))
    }))
}

/// [`reliability_bins`] per group, ascending by label.
pub fn reliability_bins_by_group(
    confidence: &[f64],
    correct: &[bool],
    groups: &[usize],
    n_bins: usize,
    edge: BinEdge,
) -> Result<Vec<(usize, Vec<ReliabilityBin>)>> {
    check_pair(confidence, correct)?;
    check_groups(groups, confidence.len())?;
    check_bins(confidence, n_bins)?;
    Ok(group_indices(groups)
        .into_iter()
        .map(|(g, idx)| (g, bins_of(confidence, correct, &idx, n_bins, edge)))
        .collect())
}

/// [`risk_coverage`] per group, ascending by label.
pub fn risk_coverage_by_group(
    confidence: &[f64],
    correct: &[bool],
    groups: &[usize],
) -> Result<Vec<(usize, RiskCoverage)>> {
    check_pair(confidence, correct)?;
    check_groups(groups, confidence.len())?;
    Ok(group_indices(groups)
        .into_iter()
        .map(|(g, idx)| (g, risk_coverage_of(confidence, correct, &idx)))
        .collect())
}

/// AURC per group.
pub fn aurc_by_group(
    confidence: &[f64],
    correct: &[bool],
    groups: &[usize],
) -> Result<Vec<GroupValue>> {
    Ok(risk_coverage_by_group(confidence, correct, groups)?
        .into_iter()
        .map(|(group, rc)| GroupValue {
            group,
            count: rc.coverage.len(),
            value: Some(rc.aurc),
        })
        .collect())
}

/// [`ood_auroc`] of each in-distribution group against all OOD samples.
pub fn ood_auroc_by_group(
    id_scores: &[f64],
    id_groups: &[usize],
    ood_scores: &[f64],
) -> Result<Vec<GroupValue>> {
    ood_auroc(id_scores, ood_scores)?;
    check_groups(id_groups, id_scores.len())?;
    Ok(by_group(id_groups, |idx| {
        let pos: Vec<f64> = idx.iter().map(|&i| id_scores[i]).collect();
        mann_whitney(&pos, ood_scores)
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: bool = true;
    const F: bool = false;

    fn close(a: f64, b: f64) {
        assert!((a - b).abs() < 1e-12, "{a} vs {b}");
    }

    #[test]
    fn auroc_counts_pairs_and_half_ties() {
        // Correct: 0.9, 0.8, 0.4; wrong: 0.8, 0.3. Pairs (pos > neg): 0.9>0.8, 0.9>0.3, 0.8>0.3,
        // 0.4>0.3 = 4, tie 0.8=0.8 = ½, 0.4<0.8 = 0 → 4.5 / 6 = 0.75.
        let c = [0.9, 0.8, 0.4, 0.8, 0.3];
        let ok = [T, T, T, F, F];
        close(failure_auroc(&c, &ok).unwrap(), 0.75);
        // Order does not matter.
        close(
            failure_auroc(&[0.3, 0.8, 0.4, 0.8, 0.9], &[F, F, T, T, T]).unwrap(),
            0.75,
        );
        // All scores equal: 0.5.
        close(failure_auroc(&[0.5; 4], &[T, F, T, F]).unwrap(), 0.5);
        close(ood_auroc(&[0.9, 0.7], &[0.8, 0.1]).unwrap(), 0.75);
    }

    #[test]
    fn fpr_at_tpr_interpolates_like_interp1d() {
        // Correct: 0.9, 0.8, 0.7, 0.6; wrong: 0.85, 0.65.
        // ROC points (fpr, tpr): (0,0) (0,.25) (.5,.25) (.5,.5) (.5,.75) (1,.75) (1,1).
        let c = [0.9, 0.8, 0.7, 0.6, 0.85, 0.65];
        let ok = [T, T, T, T, F, F];
        let roc = roc_curve(&c, &ok).unwrap();
        assert_eq!(roc.tpr, [0.0, 0.25, 0.25, 0.5, 0.75, 0.75, 1.0]);
        assert_eq!(roc.fpr, [0.0, 0.0, 0.5, 0.5, 0.5, 1.0, 1.0]);
        // TPR 0.95 lies between (1, .75) and (1, 1) → 1; TPR 0.5 is reached exactly → 0.5;
        // TPR 0.6 between (.5, .5) and (.5, .75) → 0.5; TPR 0.1 between (0,0) and (0,.25) → 0.
        close(fpr_at_95_tpr(&c, &ok).unwrap(), 1.0);
        close(fpr_at_tpr(&c, &ok, 0.5).unwrap(), 0.5);
        close(fpr_at_tpr(&c, &ok, 0.6).unwrap(), 0.5);
        close(fpr_at_tpr(&c, &ok, 0.1).unwrap(), 0.0);
        // A sloped segment: correct 0.9, 0.5; wrong 0.7, 0.1 → points (0,0)(0,.5)(.5,.5)(.5,1)…
        // with ties 0.5 correct & 0.5 wrong: (0,0)(0,.5)(1,1): TPR .75 → FPR .5.
        close(fpr_at_tpr(&[0.9, 0.5, 0.5], &[T, T, F], 0.75).unwrap(), 0.5);
    }

    #[test]
    fn ece_by_hand_with_both_edge_conventions() {
        // 10 bins (edges as numpy.linspace; 5·0.1 is exactly 0.5). Samples: 0.95 ✓, 0.95 ✗,
        // 0.55 ✓, 0.5 ✗. Left-closed: bin [0.9, 1) {0.95, 0.95}: 2·|0.5 − 0.95|; bin [0.5, 0.6)
        // {0.55, 0.5}: 2·|0.5 − 0.525|.
        let c = [0.95, 0.95, 0.55, 0.5];
        let ok = [T, F, T, F];
        let left = ece(&c, &ok, 10, BinEdge::Left).unwrap();
        close(left, (2.0 * 0.45 + 2.0 * 0.025) / 4.0);
        // Right-closed: 0.5 goes to (0.4, 0.5]: |0 − 0.5|, 0.55 to (0.5, 0.6]: |1 − 0.55|.
        let right = ece(&c, &ok, 10, BinEdge::Right).unwrap();
        close(right, (2.0 * 0.45 + 0.5 + 0.45) / 4.0);
        // Edges: 1.0 is in the last left-closed bin, 0.0 in the first right-closed one.
        let bins = reliability_bins(&[1.0, 0.0], &[T, F], 10, BinEdge::Left).unwrap();
        assert_eq!((bins[9].count, bins[0].count), (1, 1));
        let bins = reliability_bins(&[1.0, 0.0], &[T, F], 10, BinEdge::Right).unwrap();
        assert_eq!((bins[9].count, bins[0].count), (1, 1));
        assert_eq!(bins[5].accuracy, None);
        // Perfect calibration: confidence 1 and all correct.
        close(ece15(&[1.0, 1.0], &[T, T]).unwrap(), 0.0);
        close(ece10(&[0.0, 0.0], &[F, F]).unwrap(), 0.0);
    }

    #[test]
    fn aurc_by_hand_and_with_ties() {
        // Sorted: 0.9 ✓, 0.8 ✗, 0.7 ✓, 0.6 ✗ → risks 0, 1/2, 1/3, 1/2 → AURC = (4/3) / 4 = 1/3.
        let rc = risk_coverage(&[0.7, 0.9, 0.6, 0.8], &[T, T, F, F]).unwrap();
        assert_eq!(rc.coverage, [0.25, 0.5, 0.75, 1.0]);
        close(rc.aurc, (0.0 + 0.5 + 1.0 / 3.0 + 0.5) / 4.0);
        // Oracle: ✓ ✓ ✗ ✗ → risks 0, 0, 1/3, 1/2.
        close(rc.optimal_aurc, (1.0 / 3.0 + 0.5) / 4.0);
        close(rc.excess_aurc(), 0.5 / 4.0);
        // One tie of a correct and a wrong sample: expected risks ½·(1/1), 1/2 → AURC = 1/2.
        let tie = risk_coverage(&[0.5, 0.5], &[T, F]).unwrap();
        close(tie.aurc, 0.5);
        close(risk_coverage(&[0.5, 0.5], &[F, T]).unwrap().aurc, 0.5);
        close(risk_coverage(&[0.2, 0.9], &[T, T]).unwrap().aurc, 0.0);
    }

    #[test]
    fn degenerate_inputs_are_errors_or_none() {
        assert_eq!(failure_auroc(&[], &[]), Err(MetricsError::Empty("samples")));
        assert!(matches!(
            failure_auroc(&[0.5, 0.6], &[T, T]),
            Err(MetricsError::Invalid(_))
        ));
        assert!(matches!(
            fpr_at_95_tpr(&[0.5], &[F]),
            Err(MetricsError::Invalid(_))
        ));
        assert!(matches!(
            failure_auroc(&[0.5, f64::NAN], &[T, F]),
            Err(MetricsError::NonFinite { index: 1, .. })
        ));
        assert!(matches!(
            ece15(&[0.5], &[T, F]),
            Err(MetricsError::LengthMismatch { .. })
        ));
        assert!(matches!(ece15(&[1.5], &[T]), Err(MetricsError::Invalid(_))));
        assert!(matches!(
            ece(&[0.5], &[T], 0, BinEdge::Left),
            Err(MetricsError::Invalid(_))
        ));
        assert!(matches!(
            ood_auroc(&[0.5], &[]),
            Err(MetricsError::Empty(_))
        ));
        assert!(matches!(
            fpr_at_tpr(&[0.5, 0.2], &[T, F], 1.5),
            Err(MetricsError::Invalid(_))
        ));
        assert!(matches!(
            risk_coverage(&[f64::INFINITY], &[T]),
            Err(MetricsError::NonFinite { .. })
        ));
        assert_eq!(
            confidence_from_uncertainty(&[0.0, 0.0]).unwrap(),
            [1.0, 1.0]
        );
        assert!(confidence_from_uncertainty(&[-1.0]).is_err());
    }

    #[test]
    fn per_group_metrics() {
        // Group 0: correct 0.9, wrong 0.1 → AUROC 1. Group 1: only correct → None.
        let c = [0.9, 0.1, 0.6, 0.7];
        let ok = [T, F, T, T];
        let g = [0, 0, 1, 1];
        let a = failure_auroc_by_group(&c, &ok, &g).unwrap();
        assert_eq!(
            a[0],
            GroupValue {
                group: 0,
                count: 2,
                value: Some(1.0)
            }
        );
        assert_eq!(
            a[1],
            GroupValue {
                group: 1,
                count: 2,
                value: None
            }
        );
        let f = fpr_at_tpr_by_group(&c, &ok, &g, 0.95).unwrap();
        assert_eq!((f[0].value, f[1].value), (Some(0.0), None));
        let e = ece_by_group(&c, &ok, &g, 10, BinEdge::Left).unwrap();
        close(e[0].value.unwrap(), (0.1 + 0.1) / 2.0);
        close(e[1].value.unwrap(), (0.4 + 0.3) / 2.0);
        let r = aurc_by_group(&c, &ok, &g).unwrap();
        close(r[0].value.unwrap(), 0.25);
        close(r[1].value.unwrap(), 0.0);
        let o = ood_auroc_by_group(&[0.9, 0.2], &[3, 5], &[0.5]).unwrap();
        assert_eq!(
            (o[0].group, o[0].value, o[1].value),
            (3, Some(1.0), Some(0.0))
        );
        let rb = reliability_bins_by_group(&c, &ok, &g, 10, BinEdge::Left).unwrap();
        assert_eq!(rb.len(), 2);
        assert!(matches!(
            aurc_by_group(&c, &ok, &[0]),
            Err(MetricsError::LengthMismatch { .. })
        ));
        assert_eq!(
            confidence_from_uncertainty(&[0.5, 0.25, 0.0]).unwrap(),
            [0.0, 0.5, 1.0]
        );
    }
}
