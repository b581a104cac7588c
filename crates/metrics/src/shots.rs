//! Many / medium / few-shot class groups, defined by training-set counts.

use serde::{Deserialize, Serialize};

/// The shot group of one class, by how many training images it has.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Shot {
    /// Head classes.
    Many,
    /// Body classes.
    Medium,
    /// Tail classes.
    Few,
}

impl Shot {
    /// The three groups in report order.
    pub const ALL: [Shot; 3] = [Shot::Many, Shot::Medium, Shot::Few];

    /// Lower-case name, as in the official logs (`many_shot_acc`, …).
    pub fn name(self) -> &'static str {
        match self {
            Shot::Many => "many",
            Shot::Medium => "medium",
            Shot::Few => "few",
        }
    }
}

/// Which thresholds split classes into groups.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ShotRule {
    /// RIDE / SADE (`test.py`): many `n > 100`, medium `20 <= n <= 100`, few `n < 20`.
    #[default]
    Ride,
    /// OLTR (Liu et al., CVPR 2019): many `n >= 100`, few `n <= 20`, medium in between.
    Oltr,
}

impl ShotRule {
    /// The group of a class with `n` training images.
    pub fn group(self, n: usize) -> Shot {
        match self {
            ShotRule::Ride if n > 100 => Shot::Many,
            ShotRule::Ride if n < 20 => Shot::Few,
            ShotRule::Oltr if n >= 100 => Shot::Many,
            ShotRule::Oltr if n <= 20 => Shot::Few,
            _ => Shot::Medium,
        }
    }
}

impl std::str::FromStr for ShotRule {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "ride" | "sade" => Ok(ShotRule::Ride),
            "oltr" => Ok(ShotRule::Oltr),
            _ => Err(format!("unknown shot rule `{s}` (expected ride or oltr)")),
        }
    }
}

/// The group of every class, from the training counts.
pub fn shot_groups(train_counts: &[usize], rule: ShotRule) -> Vec<Shot> {
    train_counts.iter().map(|&n| rule.group(n)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boundaries_follow_each_rule() {
        let counts = [101, 100, 20, 19, 5];
        use Shot::*;
        assert_eq!(
            shot_groups(&counts, ShotRule::Ride),
            [Many, Medium, Medium, Few, Few]
        );
        assert_eq!(
            shot_groups(&counts, ShotRule::Oltr),
            [Many, Many, Few, Few, Few]
        );
        assert_eq!(ShotRule::Oltr.group(21), Medium);
    }
}
