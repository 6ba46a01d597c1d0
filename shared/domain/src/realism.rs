//! Realism: is a target achievable, judged against what the owner attained
//! in comparable past periods? It warns; it never blocks.
//!
//! With `mean` and `best` the average and the highest value attained over
//! the past periods that had any activity:
//!
//! | class | when |
//! | --- | --- |
//! | insufficient history | fewer than [`MIN_PERIODS`] such periods |
//! | sandbagged | target < 90 % of mean |
//! | achievable | target ≤ 110 % of mean |
//! | ambitious | target ≤ 125 % of max(best, mean) |
//! | unrealistic | above that |

use crate::attainment::basis_points;

/// Fewest past periods with activity needed to judge.
pub const MIN_PERIODS: usize = 2;
/// Below this share of the mean, a target is sandbagged (basis points).
pub const SANDBAGGED_BELOW_BP: i64 = 9_000;
/// Up to this share of the mean, a target is achievable.
pub const ACHIEVABLE_UP_TO_BP: i64 = 11_000;
/// Up to this share of the best period, a target is ambitious.
pub const AMBITIOUS_UP_TO_BP: i64 = 12_500;

/// How realistic a target is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Realism {
    InsufficientHistory,
    Sandbagged,
    Achievable,
    Ambitious,
    Unrealistic,
}

/// The class and the numbers that led to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assessment {
    pub realism: Realism,
    pub periods_considered: usize,
    pub mean: i64,
    pub best: i64,
    /// target / mean in basis points (0 when the mean is not positive).
    pub target_to_mean_bp: i64,
}

/// Judges `target` against past periods: `(attained, activity_count)` each.
pub fn assess(target: i64, past: &[(i64, i64)]) -> Assessment {
    let values: Vec<i64> = past.iter().filter(|(_, n)| *n > 0).map(|(v, _)| *v).collect();
    let considered = values.len();
    let mean = if considered == 0 {
        0
    } else {
        let sum: i128 = values.iter().map(|v| i128::from(*v)).sum();
        i64::try_from(sum / considered as i128).unwrap_or(i64::MAX)
    };
    let best = values.iter().copied().max().unwrap_or(0);
    let ratio = if mean > 0 { basis_points(target, mean) } else { 0 };
    let realism = if considered < MIN_PERIODS || mean <= 0 {
        Realism::InsufficientHistory
    } else if ratio < SANDBAGGED_BELOW_BP {
        Realism::Sandbagged
    } else if ratio <= ACHIEVABLE_UP_TO_BP {
        Realism::Achievable
    } else if basis_points(target, best.max(mean)) <= AMBITIOUS_UP_TO_BP {
        Realism::Ambitious
    } else {
        Realism::Unrealistic
    };
    Assessment {
        realism,
        periods_considered: considered,
        mean,
        best,
        target_to_mean_bp: ratio,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each class at and around its boundary, with a mean of 1000 and a
    /// best period of 1200.
    #[test]
    fn classes_at_their_boundaries() {
        let past = [(800, 3), (1_200, 5), (1_000, 4), (0, 0)];
        let class = |t| assess(t, &past).realism;
        assert_eq!(
            assess(1_000, &past).periods_considered,
            3,
            "empty periods are not history"
        );
        assert_eq!(assess(1_000, &past).mean, 1_000);
        assert_eq!(class(899), Realism::Sandbagged);
        assert_eq!(class(900), Realism::Achievable);
        assert_eq!(class(1_100), Realism::Achievable);
        assert_eq!(class(1_101), Realism::Ambitious);
        assert_eq!(class(1_500), Realism::Ambitious);
        assert_eq!(class(1_501), Realism::Unrealistic);
        assert_eq!(assess(1_000, &[(5_000, 1)]).realism, Realism::InsufficientHistory);
        assert_eq!(assess(1_000, &[]).realism, Realism::InsufficientHistory);
        assert_eq!(
            assess(i64::MAX, &[(i64::MAX, 1), (i64::MAX, 1)]).realism,
            Realism::Achievable
        );
    }
}
