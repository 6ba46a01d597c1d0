//! The progress rules the service applies, on its stored rows: credit
//! splits, threshold crossings and pace, as the contract documents them.
//! Integer arithmetic only (i128 for products).

use chrono::NaiveDate;
use milestones_api::progress as pb;
use milestones_domain::calendar::DateRange;

use crate::store::{Fired, MilestoneRow, Reached};

/// A threshold crossed by a change of value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Crossing {
    pub kind: pb::MilestoneEventKind,
    pub checkpoint_index: Option<usize>,
    pub threshold: i64,
}

/// Splits `value` by basis-point shares (summing to 10000) so that the
/// parts sum exactly to `value`: each part is the floor of its exact share
/// of |value|, and the units left over go one each to the largest
/// remainders, ties to the share listed first. Negative values split their
/// magnitude and negate, so a credit note mirrors the deal it reverses.
pub fn split(value: i64, shares: &[u32]) -> Result<Vec<i64>, String> {
    let total: u64 = shares.iter().map(|s| u64::from(*s)).sum();
    if shares.is_empty() || total != 10_000 || shares.contains(&0) {
        return Err(format!(
            "shares must be positive and sum to 10000 basis points (got {total})"
        ));
    }
    let magnitude = i128::from(value).abs();
    let mut parts: Vec<i128> = Vec::with_capacity(shares.len());
    let mut remainders: Vec<(i128, usize)> = Vec::with_capacity(shares.len());
    for (i, s) in shares.iter().enumerate() {
        let exact = magnitude * i128::from(*s);
        parts.push(exact / 10_000);
        remainders.push((exact % 10_000, i));
    }
    let mut left = magnitude - parts.iter().sum::<i128>();
    // Largest remainder first; the earlier share wins a tie.
    remainders.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    for (_, i) in remainders {
        if left == 0 {
            break;
        }
        parts[i] += 1;
        left -= 1;
    }
    let sign = if value < 0 { -1 } else { 1 };
    Ok(parts.into_iter().map(|p| (p * sign) as i64).collect())
}

/// The thresholds `m.value` has reached that were never announced; marks
/// them announced (at `now`). A threshold is its kind and value, so a dip and
/// a recovery repeat nothing, while a raised target is a new threshold that
/// fires when reached, and a target lowered below the value fires at once.
pub fn crossings(m: &mut MilestoneRow, now: i64) -> Vec<Crossing> {
    let mut out: Vec<Crossing> = candidates(m)
        .filter(|c| m.value >= c.threshold && m.fired.first_reach(c.kind, c.threshold).is_none())
        .collect();
    for c in &out {
        m.fired.reached.push(Reached {
            kind: c.kind as i32,
            threshold: c.threshold,
            at: now,
        });
    }
    out.sort_by_key(|c| c.threshold);
    out
}

/// Every threshold of a milestone: its checkpoints, target and stretch
/// target.
fn candidates(m: &MilestoneRow) -> impl Iterator<Item = Crossing> + '_ {
    let checkpoints = m.checkpoints.iter().enumerate().map(|(i, c)| Crossing {
        kind: pb::MilestoneEventKind::CheckpointReached,
        checkpoint_index: Some(i),
        threshold: c.target,
    });
    let target = Crossing {
        kind: pb::MilestoneEventKind::TargetReached,
        checkpoint_index: None,
        threshold: m.target,
    };
    let stretch = m.stretch_target.map(|threshold| Crossing {
        kind: pb::MilestoneEventKind::StretchReached,
        checkpoint_index: None,
        threshold,
    });
    checkpoints.chain(std::iter::once(target)).chain(stretch)
}

/// The lowest threshold of `m` that `fired` has not announced (None: all
/// are). A change that stays below it announces nothing.
pub fn lowest_unannounced(m: &MilestoneRow, fired: &Fired) -> Option<i64> {
    thresholds(m)
        .filter(|(kind, t)| fired.first_reach(*kind, *t).is_none())
        .map(|(_, t)| t)
        .min()
}

/// Each threshold of a milestone as (kind, value).
pub fn thresholds(m: &MilestoneRow) -> impl Iterator<Item = (pb::MilestoneEventKind, i64)> + '_ {
    candidates(m).map(|c| (c.kind, c.threshold))
}

/// Pace and forecast of a row on `today`, as the wire documents them.
pub struct PaceView {
    pub elapsed_days: i64,
    pub total_days: i64,
    pub expected_value: i64,
    pub projected_value: i64,
    pub status: pb::ProgressStatus,
}

/// Pace and forecast on `today` (see `Progress` in the contract):
/// elapsed_days counts today and is clamped to 0..=total_days; expected =
/// target × elapsed / total; projected = value × total / elapsed (value
/// itself before the start and from the last day on); the status is the
/// first of CANCELLED, ACHIEVED, MISSED, NOT_STARTED, ON_TRACK, AT_RISK
/// (value ≥ 80 % of expected), OFF_TRACK that holds.
pub fn pace(m: &MilestoneRow, period: Option<&DateRange>, today: NaiveDate) -> PaceView {
    let Some(period) = period else {
        return PaceView {
            elapsed_days: 0,
            total_days: 0,
            expected_value: 0,
            projected_value: m.value,
            status: pb::ProgressStatus::Unspecified,
        };
    };
    let total = period.days();
    let elapsed = ((today - period.start()).num_days() + 1).clamp(0, total);
    let mul_div = |a: i64, b: i64, c: i64| -> i64 {
        if c == 0 {
            return a;
        }
        // Floor, as the contract says "rounded down": a negative forecast
        // (a period of credit notes) rounds away from zero.
        i64::try_from((i128::from(a) * i128::from(b)).div_euclid(i128::from(c))).unwrap_or(if a >= 0 {
            i64::MAX
        } else {
            i64::MIN
        })
    };
    let expected = mul_div(m.target, elapsed, total);
    let projected = if elapsed == 0 || elapsed == total {
        m.value
    } else {
        mul_div(m.value, total, elapsed)
    };
    let status = if m.state == "cancelled" {
        pb::ProgressStatus::Cancelled
    } else if m.value >= m.target {
        pb::ProgressStatus::Achieved
    } else if today > period.end() || m.state == "missed" {
        pb::ProgressStatus::Missed
    } else if today < period.start() {
        pb::ProgressStatus::NotStarted
    } else if m.value >= expected {
        pb::ProgressStatus::OnTrack
    } else if i128::from(m.value) * 5 >= i128::from(expected) * 4 {
        pb::ProgressStatus::AtRisk
    } else {
        pb::ProgressStatus::OffTrack
    };
    PaceView {
        elapsed_days: elapsed,
        total_days: total,
        expected_value: expected,
        projected_value: projected,
        status,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Fired;

    fn d(m: u32, day: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(2027, m, day).expect("valid date")
    }

    fn row(target: i64, value: i64, state: &str) -> MilestoneRow {
        MilestoneRow {
            id: "m".into(),
            tenant_id: "t".into(),
            owner_kind: "member".into(),
            owner_id: "a".into(),
            metric_id: "x".into(),
            start_date: "2027-01-01".into(),
            end_date: "2027-01-10".into(),
            target,
            stretch_target: Some(target.saturating_mul(2)),
            checkpoints: vec![
                milestones_domain::terms::Checkpoint {
                    display_name: "a".into(),
                    target: target / 4,
                    due_date: None,
                },
                milestones_domain::terms::Checkpoint {
                    display_name: "b".into(),
                    target: target / 2,
                    due_date: None,
                },
            ],
            state: state.into(),
            value,
            activity_count: 0,
            fired: Fired::default(),
            value_time: None,
        }
    }

    fn period() -> DateRange {
        DateRange::new(d(1, 1), d(1, 10)).expect("ordered")
    }

    /// Splits add up exactly and give leftovers to the largest remainders,
    /// the first listed on a tie, for positive and negative values.
    #[test]
    fn splits_are_exact() {
        assert_eq!(split(1_001, &[5_000, 3_000, 2_000]), Ok(vec![501, 300, 200]));
        assert_eq!(split(1, &[5_000, 5_000]), Ok(vec![1, 0]));
        assert_eq!(split(-1_001, &[5_000, 3_000, 2_000]), Ok(vec![-501, -300, -200]));
        assert!(split(10, &[5_000, 4_000]).is_err());
        assert!(split(10, &[10_000, 0]).is_err());
        // Many values and share lists: the sum is always exact and each part
        // within one unit of its exact share.
        let mut seed: u64 = 42;
        for _ in 0..2_000 {
            seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            let value = (seed >> 20) as i64 % 1_000_000_007 - 500_000_000;
            let n = 1 + (seed % 7) as usize;
            let mut shares = vec![10_000 / n as u32; n];
            shares[0] += 10_000 - shares.iter().sum::<u32>();
            let parts = split(value, &shares).expect("valid shares");
            assert_eq!(parts.iter().sum::<i64>(), value);
            for (p, s) in parts.iter().zip(&shares) {
                let exact = i128::from(value) * i128::from(*s) / 10_000;
                assert!((i128::from(*p) - exact).abs() <= 1);
            }
        }
        assert_eq!(split(i64::MAX, &[10_000]), Ok(vec![i64::MAX]));
    }

    /// Pace at fixed days of a 10-day period with a target of 1000.
    #[test]
    fn pace_follows_the_documented_formulas() {
        let cases = [
            // today, value, elapsed, expected, projected, status
            (d(1, 1), 100, 1, 100, 1_000, pb::ProgressStatus::OnTrack),
            (d(1, 5), 400, 5, 500, 800, pb::ProgressStatus::AtRisk),
            (d(1, 5), 399, 5, 500, 798, pb::ProgressStatus::OffTrack),
            (d(1, 5), 500, 5, 500, 1_000, pb::ProgressStatus::OnTrack),
            (d(1, 10), 999, 10, 1_000, 999, pb::ProgressStatus::AtRisk),
            (d(1, 10), 799, 10, 1_000, 799, pb::ProgressStatus::OffTrack),
            (d(1, 11), 999, 10, 1_000, 999, pb::ProgressStatus::Missed),
            (d(1, 3), 1_000, 3, 300, 3_333, pb::ProgressStatus::Achieved),
            // Rounded down, not toward zero: -100 × 10 / 3 = -333.3.
            (d(1, 3), -100, 3, 300, -334, pb::ProgressStatus::OffTrack),
        ];
        for (today, value, elapsed, expected, projected, status) in cases {
            let p = pace(&row(1_000, value, "active"), Some(&period()), today);
            assert_eq!(
                (p.elapsed_days, p.expected_value, p.projected_value, p.status),
                (elapsed, expected, projected, status),
                "on {today} with {value}"
            );
            assert_eq!(p.total_days, 10);
        }
        let before = pace(
            &row(1_000, 0, "active"),
            Some(&period()),
            NaiveDate::from_ymd_opt(2026, 12, 31).expect("valid"),
        );
        assert_eq!(
            (before.elapsed_days, before.expected_value, before.status),
            (0, 0, pb::ProgressStatus::NotStarted)
        );
        let cancelled = pace(&row(1_000, 2_000, "cancelled"), Some(&period()), d(1, 5));
        assert_eq!(cancelled.status, pb::ProgressStatus::Cancelled);
        let huge = pace(&row(i64::MAX, i64::MAX - 1, "active"), Some(&period()), d(1, 2));
        assert_eq!(huge.projected_value, i64::MAX, "saturates instead of overflowing");
    }

    /// Crossings fire once each, in threshold order, and never on the way
    /// down or again after a dip; a revised threshold is a new one.
    #[test]
    fn thresholds_fire_once() {
        let mut m = row(1_000, 2_000, "active");
        let kinds = |c: &[Crossing]| c.iter().map(|c| (c.kind, c.threshold)).collect::<Vec<_>>();
        assert_eq!(
            kinds(&crossings(&mut m, 1)),
            vec![
                (pb::MilestoneEventKind::CheckpointReached, 250),
                (pb::MilestoneEventKind::CheckpointReached, 500),
                (pb::MilestoneEventKind::TargetReached, 1_000),
                (pb::MilestoneEventKind::StretchReached, 2_000),
            ]
        );
        m.value = 0;
        assert!(crossings(&mut m, 2).is_empty());
        m.value = 2_000;
        assert!(
            crossings(&mut m, 3).is_empty(),
            "a void and a new activity repeat nothing"
        );
        assert_eq!(
            m.fired.first_reach(pb::MilestoneEventKind::TargetReached, 1_000),
            Some(1)
        );

        // A raised target fires when reached, once; the old one stays put.
        m.target = 3_000;
        assert!(crossings(&mut m, 4).is_empty());
        m.value = 3_000;
        assert_eq!(
            kinds(&crossings(&mut m, 5)),
            vec![(pb::MilestoneEventKind::TargetReached, 3_000)]
        );
        // Lowered below the value: fires at once.
        m.target = 2_500;
        assert_eq!(
            kinds(&crossings(&mut m, 6)),
            vec![(pb::MilestoneEventKind::TargetReached, 2_500)]
        );
        // Back to a threshold announced before: nothing.
        m.target = 1_000;
        assert!(crossings(&mut m, 7).is_empty());
    }
}
