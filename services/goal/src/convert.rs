//! Conversions from stored rows to wire resources, and the stored forms of
//! enums and terms.

use chrono::NaiveDate;
use milestones_api::goal as pb;
use milestones_domain::calendar::{parse_date, DateRange, FiscalCalendar};
use milestones_domain::names::Collection;
use milestones_domain::terms::{Checkpoint, Terms};
use milestones_runtime::wire::{date_to_wire, micros_to_timestamp};
use serde::{Deserialize, Serialize};

use crate::entity::{member, membership, metric, milestone, review, revision, team, tenant_settings};

/// The etag of a row version.
pub fn etag(version: i64) -> String {
    format!("\"{version}\"")
}

fn date(s: &str) -> Option<milestones_api::Date> {
    parse_date(s).map(date_to_wire)
}

pub fn tenant_settings(row: Option<&tenant_settings::Model>) -> pb::TenantSettings {
    match row {
        Some(r) => pb::TenantSettings {
            name: "settings".into(),
            time_zone: r.time_zone.clone(),
            fiscal_year_start_month: r.fiscal_year_start_month,
            review_cadence_months: r.review_cadence_months,
            update_time: Some(micros_to_timestamp(r.update_time)),
            etag: etag(r.version),
        },
        None => pb::TenantSettings {
            name: "settings".into(),
            time_zone: "UTC".into(),
            fiscal_year_start_month: 1,
            review_cadence_months: 3,
            update_time: None,
            etag: etag(0),
        },
    }
}

pub fn team(r: &team::Model) -> pb::Team {
    pb::Team {
        name: Collection::Teams.name(&r.id),
        display_name: r.display_name.clone(),
        parent: r
            .parent_id
            .as_deref()
            .map(|p| Collection::Teams.name(p))
            .unwrap_or_default(),
        create_time: Some(micros_to_timestamp(r.create_time)),
        update_time: Some(micros_to_timestamp(r.update_time)),
        etag: etag(r.version),
    }
}

pub fn role_to_str(role: pb::MemberRole) -> Option<&'static str> {
    match role {
        pb::MemberRole::Rep => Some("rep"),
        pb::MemberRole::Manager => Some("manager"),
        pb::MemberRole::Admin => Some("admin"),
        pb::MemberRole::Unspecified => None,
    }
}

fn role_from_str(s: &str) -> pb::MemberRole {
    match s {
        "rep" => pb::MemberRole::Rep,
        "manager" => pb::MemberRole::Manager,
        "admin" => pb::MemberRole::Admin,
        _ => pb::MemberRole::Unspecified,
    }
}

pub fn member(r: &member::Model) -> pb::Member {
    pb::Member {
        name: Collection::Members.name(&r.id),
        display_name: r.display_name.clone(),
        email: r.email.clone(),
        role: role_from_str(&r.role) as i32,
        subject: r.subject.clone().unwrap_or_default(),
        create_time: Some(micros_to_timestamp(r.create_time)),
        update_time: Some(micros_to_timestamp(r.update_time)),
        etag: etag(r.version),
    }
}

pub fn membership(r: &membership::Model) -> pb::Membership {
    pb::Membership {
        name: Collection::Memberships.name(&r.id),
        member: Collection::Members.name(&r.member_id),
        team: Collection::Teams.name(&r.team_id),
        start_date: date(&r.start_date),
        end_date: r.end_date.as_deref().and_then(date),
        create_time: Some(micros_to_timestamp(r.create_time)),
        update_time: Some(micros_to_timestamp(r.update_time)),
        etag: etag(r.version),
    }
}

pub fn unit_to_str(u: pb::MetricUnit) -> Option<&'static str> {
    match u {
        pb::MetricUnit::Count => Some("count"),
        pb::MetricUnit::Currency => Some("currency"),
        pb::MetricUnit::Seconds => Some("seconds"),
        pb::MetricUnit::Unspecified => None,
    }
}

pub fn aggregation_to_str(a: pb::MetricAggregation) -> Option<&'static str> {
    match a {
        pb::MetricAggregation::Sum => Some("sum"),
        pb::MetricAggregation::Count => Some("count"),
        pb::MetricAggregation::Unspecified => None,
    }
}

pub fn metric(r: &metric::Model) -> pb::Metric {
    let unit = match r.unit.as_str() {
        "count" => pb::MetricUnit::Count,
        "currency" => pb::MetricUnit::Currency,
        "seconds" => pb::MetricUnit::Seconds,
        _ => pb::MetricUnit::Unspecified,
    };
    let aggregation = match r.aggregation.as_str() {
        "sum" => pb::MetricAggregation::Sum,
        "count" => pb::MetricAggregation::Count,
        _ => pb::MetricAggregation::Unspecified,
    };
    pb::Metric {
        name: Collection::Metrics.name(&r.id),
        display_name: r.display_name.clone(),
        description: r.description.clone(),
        unit: unit as i32,
        currency_code: r.currency_code.clone(),
        aggregation: aggregation as i32,
        allow_negative_values: r.allow_negative_values,
        create_time: Some(micros_to_timestamp(r.create_time)),
        update_time: Some(micros_to_timestamp(r.update_time)),
        etag: etag(r.version),
    }
}

/// The stored names of milestone states.
pub mod state {
    pub const DRAFT: &str = "draft";
    pub const ACTIVE: &str = "active";
    pub const ACHIEVED: &str = "achieved";
    pub const MISSED: &str = "missed";
    pub const CANCELLED: &str = "cancelled";
}

pub fn state_to_str(s: pb::MilestoneState) -> Option<&'static str> {
    match s {
        pb::MilestoneState::Draft => Some(state::DRAFT),
        pb::MilestoneState::Active => Some(state::ACTIVE),
        pb::MilestoneState::Achieved => Some(state::ACHIEVED),
        pb::MilestoneState::Missed => Some(state::MISSED),
        pb::MilestoneState::Cancelled => Some(state::CANCELLED),
        pb::MilestoneState::Unspecified => None,
    }
}

fn state_from_str(s: &str) -> pb::MilestoneState {
    match s {
        state::DRAFT => pb::MilestoneState::Draft,
        state::ACTIVE => pb::MilestoneState::Active,
        state::ACHIEVED => pb::MilestoneState::Achieved,
        state::MISSED => pb::MilestoneState::Missed,
        state::CANCELLED => pb::MilestoneState::Cancelled,
        _ => pb::MilestoneState::Unspecified,
    }
}

/// How terms are stored: as JSON, in the milestone row and in revisions.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredTerms {
    pub target: i64,
    pub stretch_target: Option<i64>,
    pub start_date: NaiveDate,
    pub end_date: NaiveDate,
    pub checkpoints: Vec<Checkpoint>,
}

impl From<&Terms> for StoredTerms {
    fn from(t: &Terms) -> Self {
        StoredTerms {
            target: t.target,
            stretch_target: t.stretch_target,
            start_date: t.period.start(),
            end_date: t.period.end(),
            checkpoints: t.checkpoints.clone(),
        }
    }
}

pub fn checkpoints_from_json(json: &str) -> Vec<Checkpoint> {
    serde_json::from_str(json).unwrap_or_default()
}

pub fn checkpoints_to_json(cps: &[Checkpoint]) -> String {
    serde_json::to_string(cps).unwrap_or_else(|_| "[]".to_string())
}

/// The terms stored in a milestone row.
pub fn terms_of(r: &milestone::Model) -> Option<Terms> {
    let period = DateRange::new(parse_date(&r.start_date)?, parse_date(&r.end_date)?)?;
    Some(Terms {
        target: r.target,
        stretch_target: r.stretch_target,
        period,
        checkpoints: checkpoints_from_json(&r.checkpoints),
    })
}

fn checkpoint(c: &Checkpoint) -> pb::Checkpoint {
    pb::Checkpoint {
        display_name: c.display_name.clone(),
        target: c.target,
        due_date: c.due_date.map(date_to_wire),
    }
}

fn terms_json_to_wire(json: &str) -> Option<pb::MilestoneTerms> {
    let t: StoredTerms = serde_json::from_str(json).ok()?;
    Some(pb::MilestoneTerms {
        target: t.target,
        stretch_target: t.stretch_target,
        start_date: Some(date_to_wire(t.start_date)),
        end_date: Some(date_to_wire(t.end_date)),
        checkpoints: t.checkpoints.iter().map(checkpoint).collect(),
    })
}

pub fn terms_to_json(t: &Terms) -> String {
    serde_json::to_string(&StoredTerms::from(t)).unwrap_or_default()
}

pub fn milestone(r: &milestone::Model, calendar: &FiscalCalendar) -> pb::Milestone {
    let owner_collection = if r.owner_kind == "team" {
        Collection::Teams
    } else {
        Collection::Members
    };
    let fiscal_period = parse_date(&r.start_date)
        .zip(parse_date(&r.end_date))
        .and_then(|(s, e)| DateRange::new(s, e))
        .and_then(|range| calendar.name_of(&range))
        .unwrap_or_default();
    pb::Milestone {
        name: Collection::Milestones.name(&r.id),
        display_name: r.display_name.clone(),
        description: r.description.clone(),
        owner: owner_collection.name(&r.owner_id),
        metric: Collection::Metrics.name(&r.metric_id),
        fiscal_period,
        start_date: date(&r.start_date),
        end_date: date(&r.end_date),
        target: r.target,
        stretch_target: r.stretch_target,
        checkpoints: checkpoints_from_json(&r.checkpoints).iter().map(checkpoint).collect(),
        parent: r
            .parent_id
            .as_deref()
            .map(|p| Collection::Milestones.name(p))
            .unwrap_or_default(),
        state: state_from_str(&r.state) as i32,
        next_review_date: r.next_review_date.as_deref().and_then(date),
        revision_count: r.revision_count,
        final_value: r.final_value,
        create_time: Some(micros_to_timestamp(r.create_time)),
        update_time: Some(micros_to_timestamp(r.update_time)),
        activate_time: r.activate_time.map(micros_to_timestamp),
        close_time: r.close_time.map(micros_to_timestamp),
        etag: etag(r.version),
        cancel_reason: r.cancel_reason.clone().unwrap_or_default(),
        assessment: r
            .assessment
            .as_deref()
            .and_then(|b| <pb::MilestoneAssessment as prost::Message>::decode(b).ok()),
    }
}

pub fn revision(r: &revision::Model) -> pb::MilestoneRevision {
    pb::MilestoneRevision {
        name: format!(
            "{}/revisions/{}",
            Collection::Milestones.name(&r.milestone_id),
            r.revision_number
        ),
        revision_number: r.revision_number,
        reason: r.reason.clone(),
        author: r.author.clone(),
        previous_terms: terms_json_to_wire(&r.previous_terms),
        new_terms: terms_json_to_wire(&r.new_terms),
        changed_fields: r
            .changed_fields
            .split(',')
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect(),
        create_time: Some(micros_to_timestamp(r.create_time)),
    }
}

pub fn review(r: &review::Model) -> pb::MilestoneReview {
    let milestone = Collection::Milestones.name(&r.milestone_id);
    pb::MilestoneReview {
        name: format!("{milestone}/reviews/{}", r.id),
        outcome: if r.outcome == "adjust" {
            pb::ReviewOutcome::Adjust
        } else {
            pb::ReviewOutcome::Keep
        } as i32,
        notes: r.notes.clone(),
        reviewer: r.reviewer.clone(),
        review_date: date(&r.review_date),
        next_review_date: date(&r.next_review_date),
        revision: r
            .revision_number
            .map(|n| format!("{milestone}/revisions/{n}"))
            .unwrap_or_default(),
        create_time: Some(micros_to_timestamp(r.create_time)),
    }
}
