//! Realism assessments: the goal service asks the progress service what the
//! owner attained in comparable past periods and judges the target against
//! it (`milestones_domain::realism`). When progress cannot answer in time
//! the assessment says UNAVAILABLE; it never fails the milestone's write.

use std::time::Duration;

use milestones_api::goal as pb;
use milestones_api::progress as progress_pb;
use milestones_api::progress::progress_service_client::ProgressServiceClient;
use milestones_domain::calendar::DateRange;
use milestones_domain::realism::{assess, Realism};
use milestones_runtime::identity::ServiceIdentity;
use milestones_runtime::wire::{date_to_wire, micros_to_timestamp, now_micros};
use tonic::transport::Channel;

/// How many past periods an assessment looks at.
const PAST_PERIODS: i32 = 4;

/// Reaches the progress service for history.
#[derive(Clone)]
pub struct Assessor {
    channel: Option<Channel>,
    identity: ServiceIdentity,
    timeout: Duration,
}

impl std::fmt::Debug for Assessor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Assessor")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl Assessor {
    /// An assessor for the progress service at `endpoint` (connected lazily,
    /// so the goal service starts whether or not progress is up).
    pub fn new(endpoint: &str, identity: ServiceIdentity, timeout: Duration) -> Self {
        let channel = identity
            .endpoint(endpoint)
            .ok()
            .map(|e| e.connect_timeout(timeout).timeout(timeout).connect_lazy());
        Self {
            channel,
            identity,
            timeout,
        }
    }

    /// Assesses `target` for `owner` on `metric` over `period`, as of now.
    pub async fn assess(
        &self,
        tenant: &str,
        owner: &str,
        metric: &str,
        period: &DateRange,
        target: i64,
    ) -> pb::MilestoneAssessment {
        let length = match period.days() {
            0..=31 => progress_pb::PeriodLength::Month,
            32..=92 => progress_pb::PeriodLength::Quarter,
            93..=184 => progress_pb::PeriodLength::Half,
            _ => progress_pb::PeriodLength::Year,
        };
        let unavailable = |why: &str| pb::MilestoneAssessment {
            realism: pb::Realism::Unavailable as i32,
            target,
            explanation: format!("the owner's history could not be read ({why}); assess again later"),
            assess_time: Some(micros_to_timestamp(now_micros())),
            ..Default::default()
        };
        let Some(channel) = self.channel.clone() else {
            return unavailable("no progress endpoint is configured");
        };
        let mut request = tonic::Request::new(progress_pb::GetPerformanceHistoryRequest {
            owner: owner.to_string(),
            metric: metric.to_string(),
            period_length: length as i32,
            period_count: PAST_PERIODS,
            before_date: Some(date_to_wire(period.start())),
        });
        request.set_timeout(self.timeout);
        if self
            .identity
            .authorize(request.metadata_mut(), "goal-service", Some(tenant))
            .is_err()
        {
            return unavailable("no service token");
        }
        milestones_runtime::telemetry::inject(request.metadata_mut());
        let history = match tokio::time::timeout(
            self.timeout,
            ProgressServiceClient::new(channel).get_performance_history(request),
        )
        .await
        {
            Ok(Ok(r)) => r.into_inner(),
            // Progress has not heard of the owner or metric yet (they were
            // just created): there is no history to judge by.
            Ok(Err(status)) if status.code() == tonic::Code::NotFound => {
                progress_pb::GetPerformanceHistoryResponse::default()
            }
            Ok(Err(status)) => {
                tracing::warn!(code = ?status.code(), "performance history unavailable");
                return unavailable("the progress service answered with an error");
            }
            Err(_) => return unavailable("the progress service did not answer in time"),
        };
        let past: Vec<(i64, i64)> = history
            .periods
            .iter()
            .map(|p| (p.attained_value, p.activity_count))
            .collect();
        let a = assess(target, &past);
        let realism = match a.realism {
            Realism::InsufficientHistory => pb::Realism::InsufficientHistory,
            Realism::Sandbagged => pb::Realism::Sandbagged,
            Realism::Achievable => pb::Realism::Achievable,
            Realism::Ambitious => pb::Realism::Ambitious,
            Realism::Unrealistic => pb::Realism::Unrealistic,
        };
        let explanation = match a.realism {
            Realism::InsufficientHistory => format!(
                "only {} of the last {} periods had activity; at least 2 are needed",
                a.periods_considered,
                past.len()
            ),
            _ => format!(
                "the target is {}.{:02} % of the mean {} attained over {} past periods (best {})",
                a.target_to_mean_bp / 100,
                a.target_to_mean_bp % 100,
                a.mean,
                a.periods_considered,
                a.best
            ),
        };
        pb::MilestoneAssessment {
            realism: realism as i32,
            target,
            periods_considered: a.periods_considered as i32,
            mean_attained: a.mean,
            best_attained: a.best,
            target_to_mean_basis_points: a.target_to_mean_bp,
            history: history
                .periods
                .iter()
                .map(|p| pb::PastPeriod {
                    fiscal_period: p.fiscal_period.clone(),
                    attained_value: p.attained_value,
                    activity_count: p.activity_count,
                })
                .collect(),
            explanation,
            assess_time: Some(micros_to_timestamp(now_micros())),
        }
    }
}
