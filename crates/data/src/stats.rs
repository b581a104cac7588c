//! Long-tail statistics of a class-count vector: imbalance factor, shot groups, Gini coefficient.

use std::fmt::Write as _;

use longtail_metrics::{shot_groups, Shot, ShotRule};

/// Statistics of per-class training counts.
#[derive(Clone, Debug, PartialEq)]
pub struct Stats {
    /// Images per class.
    pub counts: Vec<usize>,
    /// Total images.
    pub total: usize,
    /// `max / min` over classes (infinite when a class is empty, NaN when there are no classes).
    pub imbalance_factor: f64,
    /// The rule the groups follow.
    pub rule: ShotRule,
    /// Each class's group.
    pub groups: Vec<Shot>,
    /// Number of many-, medium- and few-shot classes.
    pub group_sizes: [usize; 3],
    /// Gini coefficient of the counts: `Σ_i Σ_j |n_i − n_j| / (2 C² mean)`; 0 when balanced,
    /// approaching 1 when one class holds everything.
    pub gini: f64,
}

impl Stats {
    /// Computes the statistics of `counts` under `rule`.
    pub fn from_counts(counts: &[usize], rule: ShotRule) -> Stats {
        let total: usize = counts.iter().sum();
        let max = counts.iter().copied().max();
        let min = counts.iter().copied().min();
        let imbalance_factor = match (max, min) {
            (Some(a), Some(b)) => a as f64 / b as f64,
            _ => f64::NAN,
        };
        let groups = shot_groups(counts, rule);
        let mut group_sizes = [0; 3];
        for g in &groups {
            group_sizes[Shot::ALL.iter().position(|s| s == g).unwrap_or(0)] += 1;
        }
        Stats {
            counts: counts.to_vec(),
            total,
            imbalance_factor,
            rule,
            groups,
            group_sizes,
            gini: gini(counts),
        }
    }

    /// A plain-text table: one row per class (index, name, training count, extra columns, group),
    /// then the summary lines. `extra` holds named per-class columns (e.g. test counts).
    pub fn table(&self, class_names: &[String], extra: &[(&str, Vec<usize>)]) -> String {
        let name_w = class_names
            .iter()
            .map(|n| n.len())
            .max()
            .unwrap_or(4)
            .max(4);
        let mut s = String::new();
        let _ = write!(s, "{:>5}  {:<name_w$}  {:>7}", "class", "name", "train");
        for (h, _) in extra {
            let _ = write!(s, "  {h:>7}");
        }
        let _ = writeln!(s, "  group");
        for (c, &n) in self.counts.iter().enumerate() {
            let name = class_names.get(c).map(String::as_str).unwrap_or("");
            let _ = write!(s, "{c:>5}  {name:<name_w$}  {n:>7}");
            for (_, col) in extra {
                let _ = write!(s, "  {:>7}", col.get(c).copied().unwrap_or(0));
            }
            let _ = writeln!(s, "  {}", self.groups[c].name());
        }
        let rule = match self.rule {
            ShotRule::Ride => "ride: many >100, medium 20-100, few <20",
            ShotRule::Oltr => "oltr: many >=100, medium 21-99, few <=20",
        };
        let _ = writeln!(s, "classes           {}", self.counts.len());
        let _ = writeln!(s, "training images   {}", self.total);
        let _ = writeln!(s, "imbalance factor  {:.2}", self.imbalance_factor);
        let _ = writeln!(
            s,
            "many/medium/few   {}/{}/{} ({rule})",
            self.group_sizes[0], self.group_sizes[1], self.group_sizes[2]
        );
        let _ = writeln!(s, "gini coefficient  {:.4}", self.gini);
        s
    }
}

/// Gini coefficient, from the ascending sort: `G = 2 Σ_i i·x_(i) / (C Σ x) − (C + 1)/C`, `i = 1..C`
/// (equal to the mean-absolute-difference form). 0 for no classes or no images.
pub fn gini(counts: &[usize]) -> f64 {
    let c = counts.len() as f64;
    let total: f64 = counts.iter().map(|&n| n as f64).sum();
    if counts.is_empty() || total == 0.0 {
        return 0.0;
    }
    let mut sorted = counts.to_vec();
    sorted.sort_unstable();
    let weighted: f64 = sorted
        .iter()
        .enumerate()
        .map(|(i, &n)| (i + 1) as f64 * n as f64)
        .sum();
    2.0 * weighted / (c * total) - (c + 1.0) / c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gini_matches_the_pairwise_definition() {
        let counts = [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50];
        let c = counts.len() as f64;
        let mean = counts.iter().sum::<usize>() as f64 / c;
        let pair: f64 = counts
            .iter()
            .flat_map(|&a| counts.iter().map(move |&b| (a as f64 - b as f64).abs()))
            .sum();
        let want = pair / (2.0 * c * c * mean);
        assert!((gini(&counts) - want).abs() < 1e-12);
        assert_eq!(gini(&[7, 7, 7]), 0.0);
        // One class holds all: (C − 1)/C.
        assert!((gini(&[0, 0, 0, 12]) - 0.75).abs() < 1e-12);
    }

    #[test]
    fn cifar10_lt_stats() {
        let counts = [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50];
        let s = Stats::from_counts(&counts, ShotRule::Ride);
        assert_eq!(s.total, 12406);
        assert_eq!(s.imbalance_factor, 100.0);
        assert_eq!(s.group_sizes, [8, 2, 0]);
        let t = s.table(&[], &[]);
        assert!(t.contains("many/medium/few   8/2/0"), "{t}");
        let s = Stats::from_counts(&[100, 20, 21], ShotRule::Oltr);
        assert_eq!(s.group_sizes, [1, 1, 1]);
    }
}
