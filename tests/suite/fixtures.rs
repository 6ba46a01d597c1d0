//! Builders for the resources tests need, and readers for error details.

use milestones_api::goal as pb;
use milestones_api::Date;
use milestones_suite::GoalClient;
use tonic::{Code, Status};
use tonic_types::StatusExt;

pub fn date(year: i32, month: i32, day: i32) -> Option<Date> {
    Some(Date { year, month, day })
}

pub async fn team(c: &mut GoalClient, name: &str, parent: &str) -> pb::Team {
    c.create_team(pb::CreateTeamRequest {
        team: Some(pb::Team {
            display_name: name.into(),
            parent: parent.into(),
            ..Default::default()
        }),
        request_id: String::new(),
    })
    .await
    .expect("create team")
    .into_inner()
}

pub async fn member(c: &mut GoalClient, name: &str, role: pb::MemberRole) -> pb::Member {
    let email = format!("{}@example.com", name.to_lowercase().replace(' ', "."));
    c.create_member(pb::CreateMemberRequest {
        member: Some(pb::Member {
            display_name: name.into(),
            email,
            role: role as i32,
            ..Default::default()
        }),
        request_id: String::new(),
    })
    .await
    .expect("create member")
    .into_inner()
}

pub async fn membership(
    c: &mut GoalClient,
    member: &pb::Member,
    team: &pb::Team,
    start: Option<Date>,
    end: Option<Date>,
) -> Result<pb::Membership, Status> {
    c.create_membership(pb::CreateMembershipRequest {
        membership: Some(pb::Membership {
            member: member.name.clone(),
            team: team.name.clone(),
            start_date: start,
            end_date: end,
            ..Default::default()
        }),
        request_id: String::new(),
    })
    .await
    .map(|r| r.into_inner())
}

pub async fn revenue_metric(c: &mut GoalClient, name: &str) -> pb::Metric {
    c.create_metric(pb::CreateMetricRequest {
        metric: Some(pb::Metric {
            display_name: name.into(),
            unit: pb::MetricUnit::Currency as i32,
            currency_code: "EUR".into(),
            aggregation: pb::MetricAggregation::Sum as i32,
            ..Default::default()
        }),
        request_id: String::new(),
    })
    .await
    .expect("create metric")
    .into_inner()
}

/// A milestone request for `owner` on `metric` over a fiscal period.
pub fn milestone_in(owner: &str, metric: &str, period: &str, target: i64) -> pb::Milestone {
    pb::Milestone {
        display_name: format!("{period} for {owner}"),
        owner: owner.into(),
        metric: metric.into(),
        fiscal_period: period.into(),
        target,
        ..Default::default()
    }
}

pub async fn create_milestone(c: &mut GoalClient, m: pb::Milestone, activate: bool) -> Result<pb::Milestone, Status> {
    c.create_milestone(pb::CreateMilestoneRequest {
        milestone: Some(m),
        activate,
        request_id: String::new(),
    })
    .await
    .map(|r| r.into_inner())
}

/// The fields named by a status's BadRequest detail.
pub fn violated_fields(status: &Status) -> Vec<String> {
    status
        .get_details_bad_request()
        .map(|br| br.field_violations.into_iter().map(|v| v.field).collect())
        .unwrap_or_default()
}

/// The status's ErrorInfo reason.
pub fn reason(status: &Status) -> String {
    status.get_details_error_info().map(|i| i.reason).unwrap_or_default()
}

/// Asserts `result` failed with `code`, returning the status.
#[track_caller]
pub fn expect_code<T: std::fmt::Debug>(result: Result<T, Status>, code: Code) -> Status {
    match result {
        Ok(v) => panic!("expected {code:?}, got OK: {v:?}"),
        Err(s) => {
            assert_eq!(s.code(), code, "unexpected status: {s:?}");
            s
        }
    }
}

/// Every milestone of the caller's tenant (all pages).
pub async fn all_milestones(c: &mut GoalClient) -> Vec<pb::Milestone> {
    let mut out = Vec::new();
    let mut token = String::new();
    loop {
        let page = c
            .list_milestones(pb::ListMilestonesRequest {
                page_size: 100,
                page_token: token,
                ..Default::default()
            })
            .await
            .expect("list milestones")
            .into_inner();
        out.extend(page.milestones);
        if page.next_page_token.is_empty() {
            return out;
        }
        token = page.next_page_token;
    }
}
