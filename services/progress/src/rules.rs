//! The progress rules the service applies, on its stored rows: credit
//! splits, threshold crossings and pace, as the contract documents them.
//! Integer arithmetic only (i128 for products).

use chrono::NaiveDate;
use milestones_api::progress as pb;
use milestones_domain::calendar::DateRange;

use crate::store::MilestoneRow;

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

/// The thresholds crossed for the first time when the value went from
/// `before` to `after`; marks them fired (at `now`) on the row.
pub fn crossings(m: &mut MilestoneRow, before: i64, after: i64, now: i64) -> Vec<Crossing> {
    if after <= before {
        return Vec::new();
    }
    m.fired.checkpoints.resize(m.checkpoints.len(), None);
    let mut out = Vec::new();
    for (i, c) in m.checkpoints.iter().enumerate() {
        if after >= c.target && m.fired.checkpoints[i].is_none() {
            m.fired.checkpoints[i] = Some(now);
            out.push(Crossing {
                kind: pb::MilestoneEventKind::CheckpointReached,
                checkpoint_index: Some(i),
                threshold: c.target,
            });
        }
    }
    if after >= m.target && m.fired.target.is_none() {
        m.fired.target = Some(now);
        out.push(Crossing {
            kind: pb::MilestoneEventKind::TargetReached,
            checkpoint_index: None,
            threshold: m.target,
        });
    }
    if let Some(stretch) = m.stretch_target {
        if after >= stretch && m.fired.stretch.is_none() {
            m.fired.stretch = Some(now);
            out.push(Crossing {
                kind: pb::MilestoneEventKind::StretchReached,
                checkpoint_index: None,
                threshold: stretch,
            });
        }
    }
    out.sort_by_key(|c| c.threshold);
    out
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
        i64::try_from(i128::from(a) * i128::from(b) / i128::from(c)).unwrap_or(if a >= 0 { i64::MAX } else { i64::MIN })
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
