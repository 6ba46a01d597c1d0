//! The authorisation matrix of docs/authorization.md, cell by cell: every
//! RPC of the three services called as an admin, a manager, a rep, an
//! integration (service), another tenant's admin, and with no token, an
//! expired token, a token signed by an unknown key, an `alg: none` token
//! and a token for another audience. Each cell asserts the exact code.
//!
//! The org, in tenant acme: Sales > EMEA (Mia, manager; Ada, rep) and
//! Sales > AMER (Bob, rep). The manager's and the rep's calls name things in
//! their reach (EMEA, Ada); rows marked "outside" name Bob's.

use std::time::Duration;

use chrono::{Days, Utc};
use futures::future::BoxFuture;
use milestones_api::goal as g;
use milestones_api::goal::goal_service_client::GoalServiceClient;
use milestones_api::progress as p;
use milestones_api::progress::progress_service_client::ProgressServiceClient;
use milestones_api::recognition as r;
use milestones_api::recognition::recognition_service_client::RecognitionServiceClient;
use milestones_runtime::auth::Role;
use milestones_suite::{eventually, Bearer, GoalClient, ProgressClient, RecognitionClient, TestApp};
use tonic::{Code, Status};

use crate::fixtures::date;

/// One caller's clients of the three services.
#[derive(Clone)]
struct Clients {
    goal: GoalClient,
    prog: ProgressClient,
    reco: RecognitionClient,
}

impl Clients {
    async fn new(app: &TestApp, token: Option<String>) -> Clients {
        let channel = app.channel().await;
        let bearer = Bearer::new(token.as_deref());
        Clients {
            goal: GoalServiceClient::with_interceptor(channel.clone(), bearer.clone()),
            prog: ProgressServiceClient::with_interceptor(channel.clone(), bearer.clone()),
            reco: RecognitionServiceClient::with_interceptor(channel, bearer),
        }
    }
}

/// The org and the resources the calls name.
#[derive(Clone)]
struct World {
    admin: Clients,
    sales: g::Team,
    emea: g::Team,
    amer: g::Team,
    ada: g::Member,
    bob: g::Member,
    arr: g::Metric,
    ada_goal: g::Milestone,
    emea_goal: g::Milestone,
    bob_goal: g::Milestone,
    activity: p::Activity,
    badge: r::Badge,
    rule: r::Rule,
    reward: r::Reward,
    recognition: r::Recognition,
    redemption: r::Redemption,
    kudos: r::Kudos,
    feedback: r::Feedback,
}

type Call = fn(World, Clients) -> BoxFuture<'static, Result<(), Status>>;

/// One RPC (or one case of it) and its expected code for: admin, manager,
/// rep, service, another tenant's admin.
struct Row {
    rpc: &'static str,
    expect: [Code; 5],
    call: Call,
}

const OK: Code = Code::Ok;
const PD: Code = Code::PermissionDenied;
const NF: Code = Code::NotFound;

fn uid() -> String {
    uuid::Uuid::now_v7().simple().to_string()
}

fn ok<T>(r: Result<T, Status>) -> Result<(), Status> {
    r.map(|_| ())
}

fn wire(d: chrono::NaiveDate) -> Option<milestones_api::Date> {
    use chrono::Datelike;
    date(d.year(), d.month() as i32, d.day() as i32)
}

fn today() -> chrono::NaiveDate {
    Utc::now().date_naive()
}

fn now() -> Option<prost_types::Timestamp> {
    Some(prost_types::Timestamp {
        seconds: Utc::now().timestamp(),
        nanos: 0,
    })
}

fn milestone_for(owner: &str, metric: &str, target: i64) -> g::Milestone {
    g::Milestone {
        display_name: format!("goal {}", uid()),
        owner: owner.into(),
        metric: metric.into(),
        start_date: wire(today() - Days::new(10)),
        end_date: wire(today() + Days::new(30)),
        target,
        ..Default::default()
    }
}

fn deal(member: &str, metric: &str, value: i64) -> p::RecordActivityRequest {
    p::RecordActivityRequest {
        member: member.into(),
        metric: metric.into(),
        value,
        occurred_at: now(),
        source: "crm".into(),
        request_id: uid(),
        ..Default::default()
    }
}

// === Fresh resources, made by the admin for one cell ===

async fn fresh_team(w: &World) -> g::Team {
    w.admin
        .goal
        .clone()
        .create_team(g::CreateTeamRequest {
            team: Some(g::Team {
                display_name: format!("t-{}", uid()),
                parent: w.sales.name.clone(),
                ..Default::default()
            }),
            request_id: String::new(),
        })
        .await
        .expect("team")
        .into_inner()
}

async fn fresh_member(w: &World) -> g::Member {
    let id = uid();
    w.admin
        .goal
        .clone()
        .create_member(g::CreateMemberRequest {
            member: Some(g::Member {
                display_name: format!("m-{id}"),
                email: format!("{id}@example.com"),
                role: g::MemberRole::Rep as i32,
                ..Default::default()
            }),
            request_id: String::new(),
        })
        .await
        .expect("member")
        .into_inner()
}

async fn fresh_membership(w: &World) -> g::Membership {
    let m = fresh_member(w).await;
    w.admin
        .goal
        .clone()
        .create_membership(g::CreateMembershipRequest {
            membership: Some(g::Membership {
                member: m.name,
                team: w.sales.name.clone(),
                start_date: wire(today() - Days::new(1)),
                ..Default::default()
            }),
            request_id: String::new(),
        })
        .await
        .expect("membership")
        .into_inner()
}

async fn fresh_metric(w: &World) -> g::Metric {
    w.admin
        .goal
        .clone()
        .create_metric(g::CreateMetricRequest {
            metric: Some(g::Metric {
                display_name: format!("calls {}", uid()),
                unit: g::MetricUnit::Count as i32,
                aggregation: g::MetricAggregation::Sum as i32,
                ..Default::default()
            }),
            request_id: String::new(),
        })
        .await
        .expect("metric")
        .into_inner()
}

/// A milestone for Ada (in the manager's reach), ACTIVE or DRAFT.
async fn fresh_milestone(w: &World, activate: bool) -> g::Milestone {
    w.admin
        .goal
        .clone()
        .create_milestone(g::CreateMilestoneRequest {
            milestone: Some(milestone_for(&w.ada.name, &w.arr.name, 5_000)),
            activate,
            request_id: String::new(),
        })
        .await
        .expect("milestone")
        .into_inner()
}

async fn fresh_activity(w: &World) -> p::Activity {
    w.admin
        .prog
        .clone()
        .record_activity(deal(&w.ada.name, &w.arr.name, 1))
        .await
        .expect("activity")
        .into_inner()
}

async fn fresh_badge(w: &World) -> r::Badge {
    w.admin
        .reco
        .clone()
        .create_badge(r::CreateBadgeRequest {
            badge: Some(badge(&uid())),
            request_id: String::new(),
        })
        .await
        .expect("badge")
        .into_inner()
}

fn badge(name: &str) -> r::Badge {
    r::Badge {
        display_name: format!("badge {name}"),
        tier: r::BadgeTier::Bronze as i32,
        ..Default::default()
    }
}

fn points_rule(name: &str) -> r::Rule {
    r::Rule {
        display_name: format!("rule {name}"),
        enabled: true,
        trigger: r::RuleTrigger::CheckpointReached as i32,
        points: 1,
        visibility: r::Visibility::Public as i32,
        ..Default::default()
    }
}

async fn fresh_rule(w: &World) -> r::Rule {
    w.admin
        .reco
        .clone()
        .create_rule(r::CreateRuleRequest {
            rule: Some(points_rule(&uid())),
            request_id: String::new(),
        })
        .await
        .expect("rule")
        .into_inner()
}

fn reward(name: &str) -> r::Reward {
    r::Reward {
        display_name: format!("reward {name}"),
        cost_points: 1,
        available: true,
        ..Default::default()
    }
}

async fn fresh_reward(w: &World) -> r::Reward {
    w.admin
        .reco
        .clone()
        .create_reward(r::CreateRewardRequest {
            reward: Some(reward(&uid())),
            request_id: String::new(),
        })
        .await
        .expect("reward")
        .into_inner()
}

fn rows() -> Vec<Row> {
    vec![
        // ===== goal: tenant settings and the org =====
        Row {
            rpc: "GetTenantSettings",
            expect: [OK, OK, OK, OK, OK],
            call: |_, mut c| {
                Box::pin(async move { ok(c.goal.get_tenant_settings(g::GetTenantSettingsRequest {}).await) })
            },
        },
        Row {
            rpc: "UpdateTenantSettings",
            expect: [OK, PD, PD, PD, OK],
            call: |_, mut c| {
                Box::pin(async move {
                    ok(c.goal
                        .update_tenant_settings(g::UpdateTenantSettingsRequest {
                            tenant_settings: Some(g::TenantSettings {
                                review_cadence_months: 3,
                                ..Default::default()
                            }),
                            update_mask: Some(prost_types::FieldMask {
                                paths: vec!["review_cadence_months".into()],
                            }),
                            request_id: String::new(),
                        })
                        .await)
                })
            },
        },
        Row {
            rpc: "CreateTeam",
            expect: [OK, PD, PD, PD, NF],
            call: |w, mut c| {
                Box::pin(async move {
                    ok(c.goal
                        .create_team(g::CreateTeamRequest {
                            team: Some(g::Team {
                                display_name: format!("t-{}", uid()),
                                parent: w.sales.name.clone(),
                                ..Default::default()
                            }),
                            request_id: String::new(),
                        })
                        .await)
                })
            },
        },
        Row {
            rpc: "GetTeam",
            expect: [OK, OK, OK, OK, NF],
            call: |w, mut c| {
                Box::pin(async move { ok(c.goal.get_team(g::GetTeamRequest { name: w.sales.name }).await) })
            },
        },
        Row {
            rpc: "ListTeams",
            expect: [OK, OK, OK, OK, OK],
            call: |_, mut c| Box::pin(async move { ok(c.goal.list_teams(g::ListTeamsRequest::default()).await) }),
        },
        Row {
            rpc: "UpdateTeam",
            expect: [OK, PD, PD, PD, NF],
            call: |w, mut c| {
                Box::pin(async move {
                    let mut t = fresh_team(&w).await;
                    t.display_name = format!("renamed {}", uid());
                    ok(c.goal
                        .update_team(g::UpdateTeamRequest {
                            team: Some(t),
                            update_mask: None,
                            request_id: String::new(),
                        })
                        .await)
                })
            },
        },
        Row {
            rpc: "DeleteTeam",
            expect: [OK, PD, PD, PD, NF],
            call: |w, mut c| {
                Box::pin(async move {
                    let t = fresh_team(&w).await;
                    ok(c.goal
                        .delete_team(g::DeleteTeamRequest {
                            name: t.name,
                            ..Default::default()
                        })
                        .await)
                })
            },
        },
        Row {
            rpc: "CreateMember",
            expect: [OK, PD, PD, PD, OK],
            call: |_, mut c| {
                Box::pin(async move {
                    let id = uid();
                    ok(c.goal
                        .create_member(g::CreateMemberRequest {
                            member: Some(g::Member {
                                display_name: format!("m-{id}"),
                                email: format!("{id}@example.com"),
                                role: g::MemberRole::Rep as i32,
                                ..Default::default()
                            }),
                            request_id: String::new(),
                        })
                        .await)
                })
            },
        },
        Row {
            rpc: "GetMember",
            expect: [OK, OK, OK, OK, NF],
            call: |w, mut c| {
                Box::pin(async move { ok(c.goal.get_member(g::GetMemberRequest { name: w.ada.name }).await) })
            },
        },
        Row {
            rpc: "ListMembers",
            expect: [OK, OK, OK, OK, OK],
            call: |_, mut c| Box::pin(async move { ok(c.goal.list_members(g::ListMembersRequest::default()).await) }),
        },
        Row {
            rpc: "UpdateMember",
            expect: [OK, PD, PD, PD, NF],
            call: |w, mut c| {
                Box::pin(async move {
                    let mut m = fresh_member(&w).await;
                    m.display_name = format!("renamed {}", uid());
                    ok(c.goal
                        .update_member(g::UpdateMemberRequest {
                            member: Some(m),
                            update_mask: Some(prost_types::FieldMask {
                                paths: vec!["display_name".into()],
                            }),
                            request_id: String::new(),
                        })
                        .await)
                })
            },
        },
        Row {
            rpc: "DeleteMember",
            expect: [OK, PD, PD, PD, NF],
            call: |w, mut c| {
                Box::pin(async move {
                    let m = fresh_member(&w).await;
                    ok(c.goal
                        .delete_member(g::DeleteMemberRequest {
                            name: m.name,
                            ..Default::default()
                        })
                        .await)
                })
            },
        },
        Row {
            rpc: "CreateMembership",
            expect: [OK, PD, PD, PD, NF],
            call: |w, mut c| {
                Box::pin(async move {
                    let m = fresh_member(&w).await;
                    ok(c.goal
                        .create_membership(g::CreateMembershipRequest {
                            membership: Some(g::Membership {
                                member: m.name,
                                team: w.sales.name.clone(),
                                start_date: wire(today()),
                                ..Default::default()
                            }),
                            request_id: String::new(),
                        })
                        .await)
                })
            },
        },
        Row {
            rpc: "GetMembership",
            expect: [OK, OK, OK, OK, NF],
            call: |w, mut c| {
                Box::pin(async move {
                    let ms = fresh_membership(&w).await;
                    ok(c.goal.get_membership(g::GetMembershipRequest { name: ms.name }).await)
                })
            },
        },
        Row {
            rpc: "ListMemberships",
            expect: [OK, OK, OK, OK, OK],
            call: |_, mut c| {
                Box::pin(async move { ok(c.goal.list_memberships(g::ListMembershipsRequest::default()).await) })
            },
        },
        Row {
            rpc: "UpdateMembership",
            expect: [OK, PD, PD, PD, NF],
            call: |w, mut c| {
                Box::pin(async move {
                    let mut ms = fresh_membership(&w).await;
                    ms.end_date = wire(today() + Days::new(100));
                    ok(c.goal
                        .update_membership(g::UpdateMembershipRequest {
                            membership: Some(ms),
                            update_mask: Some(prost_types::FieldMask {
                                paths: vec!["end_date".into()],
                            }),
                            request_id: String::new(),
                        })
                        .await)
                })
            },
        },
        Row {
            rpc: "DeleteMembership",
            expect: [OK, PD, PD, PD, NF],
            call: |w, mut c| {
                Box::pin(async move {
                    let ms = fresh_membership(&w).await;
                    ok(c.goal
                        .delete_membership(g::DeleteMembershipRequest {
                            name: ms.name,
                            ..Default::default()
                        })
                        .await)
                })
            },
        },
        Row {
            rpc: "CreateMetric",
            expect: [OK, PD, PD, PD, OK],
            call: |_, mut c| {
                Box::pin(async move {
                    ok(c.goal
                        .create_metric(g::CreateMetricRequest {
                            metric: Some(g::Metric {
                                display_name: format!("calls {}", uid()),
                                unit: g::MetricUnit::Count as i32,
                                aggregation: g::MetricAggregation::Sum as i32,
                                ..Default::default()
                            }),
                            request_id: String::new(),
                        })
                        .await)
                })
            },
        },
        Row {
            rpc: "GetMetric",
            expect: [OK, OK, OK, OK, NF],
            call: |w, mut c| {
                Box::pin(async move { ok(c.goal.get_metric(g::GetMetricRequest { name: w.arr.name }).await) })
            },
        },
        Row {
            rpc: "ListMetrics",
            expect: [OK, OK, OK, OK, OK],
            call: |_, mut c| Box::pin(async move { ok(c.goal.list_metrics(g::ListMetricsRequest::default()).await) }),
        },
        Row {
            rpc: "UpdateMetric",
            expect: [OK, PD, PD, PD, NF],
            call: |w, mut c| {
                Box::pin(async move {
                    let mut m = fresh_metric(&w).await;
                    m.display_name = format!("renamed {}", uid());
                    ok(c.goal
                        .update_metric(g::UpdateMetricRequest {
                            metric: Some(m),
                            update_mask: Some(prost_types::FieldMask {
                                paths: vec!["display_name".into()],
                            }),
                            request_id: String::new(),
                        })
                        .await)
                })
            },
        },
        Row {
            rpc: "DeleteMetric",
            expect: [OK, PD, PD, PD, NF],
            call: |w, mut c| {
                Box::pin(async move {
                    let m = fresh_metric(&w).await;
                    ok(c.goal
                        .delete_metric(g::DeleteMetricRequest {
                            name: m.name,
                            ..Default::default()
                        })
                        .await)
                })
            },
        },
        // ===== goal: milestones =====
        Row {
            rpc: "CreateMilestone",
            expect: [OK, OK, PD, PD, NF],
            call: |w, mut c| {
                Box::pin(async move {
                    ok(c.goal
                        .create_milestone(g::CreateMilestoneRequest {
                            milestone: Some(milestone_for(&w.ada.name, &w.arr.name, 100)),
                            activate: false,
                            request_id: String::new(),
                        })
                        .await)
                })
            },
        },
        Row {
            rpc: "CreateMilestone (outside: Bob's)",
            expect: [OK, PD, PD, PD, NF],
            call: |w, mut c| {
                Box::pin(async move {
                    ok(c.goal
                        .create_milestone(g::CreateMilestoneRequest {
                            milestone: Some(milestone_for(&w.bob.name, &w.arr.name, 100)),
                            activate: false,
                            request_id: String::new(),
                        })
                        .await)
                })
            },
        },
        Row {
            rpc: "GetMilestone",
            expect: [OK, OK, OK, OK, NF],
            call: |w, mut c| {
                Box::pin(async move {
                    ok(c.goal
                        .get_milestone(g::GetMilestoneRequest { name: w.ada_goal.name })
                        .await)
                })
            },
        },
        Row {
            rpc: "GetMilestone (team above: Sales' reps' team chain)",
            expect: [OK, OK, OK, OK, NF],
            call: |w, mut c| {
                Box::pin(async move {
                    ok(c.goal
                        .get_milestone(g::GetMilestoneRequest { name: w.emea_goal.name })
                        .await)
                })
            },
        },
        Row {
            rpc: "GetMilestone (outside: Bob's)",
            expect: [OK, PD, PD, OK, NF],
            call: |w, mut c| {
                Box::pin(async move {
                    ok(c.goal
                        .get_milestone(g::GetMilestoneRequest { name: w.bob_goal.name })
                        .await)
                })
            },
        },
        Row {
            rpc: "ListMilestones",
            expect: [OK, OK, OK, OK, OK],
            call: |_, mut c| {
                Box::pin(async move { ok(c.goal.list_milestones(g::ListMilestonesRequest::default()).await) })
            },
        },
        Row {
            rpc: "UpdateMilestone",
            expect: [OK, OK, PD, PD, NF],
            call: |w, mut c| {
                Box::pin(async move {
                    let mut m = fresh_milestone(&w, false).await;
                    m.target = 6_000;
                    ok(c.goal
                        .update_milestone(g::UpdateMilestoneRequest {
                            milestone: Some(m),
                            update_mask: Some(prost_types::FieldMask {
                                paths: vec!["target".into()],
                            }),
                            revision_reason: String::new(),
                            request_id: String::new(),
                        })
                        .await)
                })
            },
        },
        Row {
            rpc: "DeleteMilestone",
            expect: [OK, OK, PD, PD, NF],
            call: |w, mut c| {
                Box::pin(async move {
                    let m = fresh_milestone(&w, false).await;
                    ok(c.goal
                        .delete_milestone(g::DeleteMilestoneRequest {
                            name: m.name,
                            ..Default::default()
                        })
                        .await)
                })
            },
        },
        Row {
            rpc: "ActivateMilestone",
            expect: [OK, OK, PD, PD, NF],
            call: |w, mut c| {
                Box::pin(async move {
                    let m = fresh_milestone(&w, false).await;
                    ok(c.goal
                        .activate_milestone(g::ActivateMilestoneRequest {
                            name: m.name,
                            ..Default::default()
                        })
                        .await)
                })
            },
        },
        Row {
            rpc: "CloseMilestone",
            expect: [OK, OK, PD, PD, NF],
            call: |w, mut c| {
                Box::pin(async move {
                    let m = fresh_milestone(&w, true).await;
                    ok(c.goal
                        .close_milestone(g::CloseMilestoneRequest {
                            name: m.name,
                            outcome: g::MilestoneState::Missed as i32,
                            final_value: 0,
                            ..Default::default()
                        })
                        .await)
                })
            },
        },
        Row {
            rpc: "CancelMilestone",
            expect: [OK, OK, PD, PD, NF],
            call: |w, mut c| {
                Box::pin(async move {
                    let m = fresh_milestone(&w, true).await;
                    ok(c.goal
                        .cancel_milestone(g::CancelMilestoneRequest {
                            name: m.name,
                            reason: "reorganised".into(),
                            ..Default::default()
                        })
                        .await)
                })
            },
        },
        Row {
            rpc: "CancelMilestone (outside: Bob's)",
            expect: [OK, PD, PD, PD, NF],
            call: |w, mut c| {
                Box::pin(async move {
                    let m = w
                        .admin
                        .goal
                        .clone()
                        .create_milestone(g::CreateMilestoneRequest {
                            milestone: Some(milestone_for(&w.bob.name, &w.arr.name, 100)),
                            activate: true,
                            request_id: String::new(),
                        })
                        .await
                        .expect("bob's")
                        .into_inner();
                    ok(c.goal
                        .cancel_milestone(g::CancelMilestoneRequest {
                            name: m.name,
                            reason: "reorganised".into(),
                            ..Default::default()
                        })
                        .await)
                })
            },
        },
        Row {
            rpc: "ListMilestoneRevisions",
            expect: [OK, OK, OK, OK, NF],
            call: |w, mut c| {
                Box::pin(async move {
                    ok(c.goal
                        .list_milestone_revisions(g::ListMilestoneRevisionsRequest {
                            parent: w.ada_goal.name,
                            ..Default::default()
                        })
                        .await)
                })
            },
        },
        Row {
            rpc: "ReviewMilestone",
            expect: [OK, OK, PD, PD, NF],
            call: |w, mut c| {
                Box::pin(async move {
                    let m = fresh_milestone(&w, true).await;
                    ok(c.goal
                        .review_milestone(g::ReviewMilestoneRequest {
                            name: m.name,
                            outcome: g::ReviewOutcome::Keep as i32,
                            notes: "on track".into(),
                            ..Default::default()
                        })
                        .await)
                })
            },
        },
        Row {
            rpc: "ListMilestoneReviews",
            expect: [OK, OK, OK, OK, NF],
            call: |w, mut c| {
                Box::pin(async move {
                    ok(c.goal
                        .list_milestone_reviews(g::ListMilestoneReviewsRequest {
                            parent: w.ada_goal.name,
                            ..Default::default()
                        })
                        .await)
                })
            },
        },
        Row {
            rpc: "ListDueReviews",
            expect: [OK, OK, OK, OK, OK],
            call: |_, mut c| {
                Box::pin(async move { ok(c.goal.list_due_reviews(g::ListDueReviewsRequest::default()).await) })
            },
        },
        Row {
            rpc: "AssessMilestone",
            expect: [OK, OK, OK, OK, NF],
            call: |w, mut c| {
                Box::pin(async move {
                    ok(c.goal
                        .assess_milestone(g::AssessMilestoneRequest { name: w.ada_goal.name })
                        .await)
                })
            },
        },
        Row {
            rpc: "GetAlignment",
            expect: [OK, OK, OK, OK, NF],
            call: |w, mut c| {
                Box::pin(async move {
                    ok(c.goal
                        .get_alignment(g::GetAlignmentRequest { name: w.emea_goal.name })
                        .await)
                })
            },
        },
        Row {
            rpc: "WatchChanges",
            expect: [OK, PD, PD, OK, OK],
            call: |_, mut c| {
                Box::pin(async move { ok(c.goal.watch_changes(g::WatchChangesRequest { after_sequence: 0 }).await) })
            },
        },
        // ===== progress =====
        Row {
            rpc: "RecordActivity",
            expect: [OK, PD, PD, OK, NF],
            call: |w, mut c| {
                Box::pin(async move { ok(c.prog.record_activity(deal(&w.ada.name, &w.arr.name, 1)).await) })
            },
        },
        Row {
            rpc: "RecordActivities",
            expect: [OK, PD, PD, OK, NF],
            call: |w, mut c| {
                Box::pin(async move {
                    ok(c.prog
                        .record_activities(p::RecordActivitiesRequest {
                            requests: vec![deal(&w.ada.name, &w.arr.name, 1)],
                        })
                        .await)
                })
            },
        },
        Row {
            rpc: "VoidActivity",
            expect: [OK, PD, PD, OK, NF],
            call: |w, mut c| {
                Box::pin(async move {
                    let a = fresh_activity(&w).await;
                    ok(c.prog
                        .void_activity(p::VoidActivityRequest {
                            name: a.name,
                            reason: "duplicate".into(),
                            request_id: uid(),
                        })
                        .await)
                })
            },
        },
        Row {
            rpc: "GetActivity",
            expect: [OK, OK, OK, OK, NF],
            call: |w, mut c| {
                Box::pin(async move {
                    ok(c.prog
                        .get_activity(p::GetActivityRequest { name: w.activity.name })
                        .await)
                })
            },
        },
        Row {
            rpc: "GetActivity (outside: Bob's)",
            expect: [OK, PD, PD, OK, NF],
            call: |w, mut c| {
                Box::pin(async move {
                    let a = w
                        .admin
                        .prog
                        .clone()
                        .record_activity(deal(&w.bob.name, &w.arr.name, 1))
                        .await
                        .expect("bob's deal")
                        .into_inner();
                    ok(c.prog.get_activity(p::GetActivityRequest { name: a.name }).await)
                })
            },
        },
        Row {
            rpc: "ListActivities",
            expect: [OK, OK, OK, OK, OK],
            call: |_, mut c| {
                Box::pin(async move { ok(c.prog.list_activities(p::ListActivitiesRequest::default()).await) })
            },
        },
        Row {
            rpc: "GetProgress",
            expect: [OK, OK, OK, OK, NF],
            call: |w, mut c| {
                Box::pin(async move {
                    ok(c.prog
                        .get_progress(p::GetProgressRequest {
                            name: format!("{}/progress", w.ada_goal.name),
                        })
                        .await)
                })
            },
        },
        Row {
            rpc: "GetProgress (outside: Bob's)",
            expect: [OK, PD, PD, OK, NF],
            call: |w, mut c| {
                Box::pin(async move {
                    ok(c.prog
                        .get_progress(p::GetProgressRequest {
                            name: format!("{}/progress", w.bob_goal.name),
                        })
                        .await)
                })
            },
        },
        Row {
            rpc: "BatchGetProgress",
            expect: [OK, OK, OK, OK, NF],
            call: |w, mut c| {
                Box::pin(async move {
                    ok(c.prog
                        .batch_get_progress(p::BatchGetProgressRequest {
                            names: vec![
                                format!("{}/progress", w.ada_goal.name),
                                format!("{}/progress", w.emea_goal.name),
                            ],
                        })
                        .await)
                })
            },
        },
        Row {
            rpc: "GetLeaderboard",
            expect: [OK, OK, OK, OK, NF],
            call: |w, mut c| {
                Box::pin(async move {
                    ok(c.prog
                        .get_leaderboard(p::GetLeaderboardRequest {
                            team: w.emea.name,
                            metric: w.arr.name,
                            period: Some(p::get_leaderboard_request::Period::DateRange(p::DateRange {
                                start_date: wire(today() - Days::new(10)),
                                end_date: wire(today() + Days::new(30)),
                            })),
                            ..Default::default()
                        })
                        .await)
                })
            },
        },
        Row {
            rpc: "GetLeaderboard (outside: AMER)",
            expect: [OK, PD, PD, OK, NF],
            call: |w, mut c| {
                Box::pin(async move {
                    ok(c.prog
                        .get_leaderboard(p::GetLeaderboardRequest {
                            team: w.amer.name,
                            metric: w.arr.name,
                            period: Some(p::get_leaderboard_request::Period::DateRange(p::DateRange {
                                start_date: wire(today() - Days::new(10)),
                                end_date: wire(today() + Days::new(30)),
                            })),
                            ..Default::default()
                        })
                        .await)
                })
            },
        },
        Row {
            rpc: "GetTimeSeries",
            expect: [OK, OK, OK, OK, NF],
            call: |w, mut c| {
                Box::pin(async move {
                    ok(c.prog
                        .get_time_series(p::GetTimeSeriesRequest {
                            milestone: w.ada_goal.name,
                            granularity: p::TimeSeriesGranularity::Day as i32,
                        })
                        .await)
                })
            },
        },
        Row {
            rpc: "GetPerformanceHistory",
            expect: [OK, OK, OK, OK, NF],
            call: |w, mut c| {
                Box::pin(async move {
                    ok(c.prog
                        .get_performance_history(p::GetPerformanceHistoryRequest {
                            owner: w.ada.name,
                            metric: w.arr.name,
                            ..Default::default()
                        })
                        .await)
                })
            },
        },
        Row {
            rpc: "WatchProgress",
            expect: [OK, OK, OK, OK, NF],
            call: |w, mut c| {
                Box::pin(async move {
                    ok(c.prog
                        .watch_progress(p::WatchProgressRequest {
                            selector: Some(p::watch_progress_request::Selector::Team(w.emea.name)),
                        })
                        .await)
                })
            },
        },
        Row {
            rpc: "WatchProgress (outside: Bob)",
            expect: [OK, PD, PD, OK, NF],
            call: |w, mut c| {
                Box::pin(async move {
                    ok(c.prog
                        .watch_progress(p::WatchProgressRequest {
                            selector: Some(p::watch_progress_request::Selector::Member(w.bob.name)),
                        })
                        .await)
                })
            },
        },
        Row {
            rpc: "WatchMilestoneEvents",
            expect: [OK, PD, PD, OK, OK],
            call: |_, mut c| {
                Box::pin(async move {
                    ok(c.prog
                        .watch_milestone_events(p::WatchMilestoneEventsRequest { after_sequence: 0 })
                        .await)
                })
            },
        },
        // ===== recognition: catalog =====
        Row {
            rpc: "CreateBadge",
            expect: [OK, PD, PD, PD, OK],
            call: |_, mut c| {
                Box::pin(async move {
                    ok(c.reco
                        .create_badge(r::CreateBadgeRequest {
                            badge: Some(badge(&uid())),
                            request_id: String::new(),
                        })
                        .await)
                })
            },
        },
        Row {
            rpc: "GetBadge",
            expect: [OK, OK, OK, OK, NF],
            call: |w, mut c| {
                Box::pin(async move { ok(c.reco.get_badge(r::GetBadgeRequest { name: w.badge.name }).await) })
            },
        },
        Row {
            rpc: "ListBadges",
            expect: [OK, OK, OK, OK, OK],
            call: |_, mut c| Box::pin(async move { ok(c.reco.list_badges(r::ListBadgesRequest::default()).await) }),
        },
        Row {
            rpc: "UpdateBadge",
            expect: [OK, PD, PD, PD, NF],
            call: |w, mut c| {
                Box::pin(async move {
                    let mut b = fresh_badge(&w).await;
                    b.description = "shiny".into();
                    ok(c.reco
                        .update_badge(r::UpdateBadgeRequest {
                            badge: Some(b),
                            update_mask: Some(prost_types::FieldMask {
                                paths: vec!["description".into()],
                            }),
                            request_id: String::new(),
                        })
                        .await)
                })
            },
        },
        Row {
            rpc: "DeleteBadge",
            expect: [OK, PD, PD, PD, NF],
            call: |w, mut c| {
                Box::pin(async move {
                    let b = fresh_badge(&w).await;
                    ok(c.reco
                        .delete_badge(r::DeleteBadgeRequest {
                            name: b.name,
                            ..Default::default()
                        })
                        .await)
                })
            },
        },
        Row {
            rpc: "CreateRule",
            expect: [OK, PD, PD, PD, OK],
            call: |_, mut c| {
                Box::pin(async move {
                    ok(c.reco
                        .create_rule(r::CreateRuleRequest {
                            rule: Some(points_rule(&uid())),
                            request_id: String::new(),
                        })
                        .await)
                })
            },
        },
        Row {
            rpc: "GetRule",
            expect: [OK, OK, OK, OK, NF],
            call: |w, mut c| {
                Box::pin(async move { ok(c.reco.get_rule(r::GetRuleRequest { name: w.rule.name }).await) })
            },
        },
        Row {
            rpc: "ListRules",
            expect: [OK, OK, OK, OK, OK],
            call: |_, mut c| Box::pin(async move { ok(c.reco.list_rules(r::ListRulesRequest::default()).await) }),
        },
        Row {
            rpc: "UpdateRule",
            expect: [OK, PD, PD, PD, NF],
            call: |w, mut c| {
                Box::pin(async move {
                    let mut rule = fresh_rule(&w).await;
                    rule.points = 2;
                    ok(c.reco
                        .update_rule(r::UpdateRuleRequest {
                            rule: Some(rule),
                            update_mask: Some(prost_types::FieldMask {
                                paths: vec!["points".into()],
                            }),
                            request_id: String::new(),
                        })
                        .await)
                })
            },
        },
        Row {
            rpc: "DeleteRule",
            expect: [OK, PD, PD, PD, NF],
            call: |w, mut c| {
                Box::pin(async move {
                    let rule = fresh_rule(&w).await;
                    ok(c.reco
                        .delete_rule(r::DeleteRuleRequest {
                            name: rule.name,
                            ..Default::default()
                        })
                        .await)
                })
            },
        },
        // ===== recognition: awards, points, rewards =====
        Row {
            rpc: "GetRecognition",
            expect: [OK, OK, OK, OK, NF],
            call: |w, mut c| {
                Box::pin(async move {
                    ok(c.reco
                        .get_recognition(r::GetRecognitionRequest {
                            name: w.recognition.name,
                        })
                        .await)
                })
            },
        },
        Row {
            rpc: "ListRecognitions",
            expect: [OK, OK, OK, OK, OK],
            call: |_, mut c| {
                Box::pin(async move { ok(c.reco.list_recognitions(r::ListRecognitionsRequest::default()).await) })
            },
        },
        Row {
            rpc: "GetPointsBalance",
            expect: [OK, OK, OK, OK, NF],
            call: |w, mut c| {
                Box::pin(async move {
                    ok(c.reco
                        .get_points_balance(r::GetPointsBalanceRequest {
                            name: format!("{}/pointsBalance", w.ada.name),
                        })
                        .await)
                })
            },
        },
        Row {
            rpc: "GetPointsBalance (outside: Bob's)",
            expect: [OK, PD, PD, OK, NF],
            call: |w, mut c| {
                Box::pin(async move {
                    ok(c.reco
                        .get_points_balance(r::GetPointsBalanceRequest {
                            name: format!("{}/pointsBalance", w.bob.name),
                        })
                        .await)
                })
            },
        },
        Row {
            rpc: "ListPointsEntries",
            expect: [OK, OK, OK, OK, NF],
            call: |w, mut c| {
                Box::pin(async move {
                    ok(c.reco
                        .list_points_entries(r::ListPointsEntriesRequest {
                            parent: w.ada.name,
                            ..Default::default()
                        })
                        .await)
                })
            },
        },
        Row {
            rpc: "AdjustPoints",
            expect: [OK, PD, PD, PD, NF],
            call: |w, mut c| {
                Box::pin(async move {
                    ok(c.reco
                        .adjust_points(r::AdjustPointsRequest {
                            member: w.ada.name,
                            amount: 1,
                            reason: "bonus".into(),
                            request_id: uid(),
                        })
                        .await)
                })
            },
        },
        Row {
            rpc: "CreateReward",
            expect: [OK, PD, PD, PD, OK],
            call: |_, mut c| {
                Box::pin(async move {
                    ok(c.reco
                        .create_reward(r::CreateRewardRequest {
                            reward: Some(reward(&uid())),
                            request_id: String::new(),
                        })
                        .await)
                })
            },
        },
        Row {
            rpc: "GetReward",
            expect: [OK, OK, OK, OK, NF],
            call: |w, mut c| {
                Box::pin(async move { ok(c.reco.get_reward(r::GetRewardRequest { name: w.reward.name }).await) })
            },
        },
        Row {
            rpc: "ListRewards",
            expect: [OK, OK, OK, OK, OK],
            call: |_, mut c| Box::pin(async move { ok(c.reco.list_rewards(r::ListRewardsRequest::default()).await) }),
        },
        Row {
            rpc: "UpdateReward",
            expect: [OK, PD, PD, PD, NF],
            call: |w, mut c| {
                Box::pin(async move {
                    let mut rw = fresh_reward(&w).await;
                    rw.cost_points = 2;
                    ok(c.reco
                        .update_reward(r::UpdateRewardRequest {
                            reward: Some(rw),
                            update_mask: Some(prost_types::FieldMask {
                                paths: vec!["cost_points".into()],
                            }),
                            request_id: String::new(),
                        })
                        .await)
                })
            },
        },
        Row {
            rpc: "DeleteReward",
            expect: [OK, PD, PD, PD, NF],
            call: |w, mut c| {
                Box::pin(async move {
                    let rw = fresh_reward(&w).await;
                    ok(c.reco
                        .delete_reward(r::DeleteRewardRequest {
                            name: rw.name,
                            ..Default::default()
                        })
                        .await)
                })
            },
        },
        Row {
            rpc: "RedeemReward (for Ada)",
            expect: [OK, PD, OK, PD, NF],
            call: |w, mut c| {
                Box::pin(async move {
                    ok(c.reco
                        .redeem_reward(r::RedeemRewardRequest {
                            reward: w.reward.name,
                            member: w.ada.name,
                            request_id: uid(),
                            ..Default::default()
                        })
                        .await)
                })
            },
        },
        Row {
            rpc: "GetRedemption",
            expect: [OK, OK, OK, OK, NF],
            call: |w, mut c| {
                Box::pin(async move {
                    ok(c.reco
                        .get_redemption(r::GetRedemptionRequest {
                            name: w.redemption.name,
                        })
                        .await)
                })
            },
        },
        Row {
            rpc: "ListRedemptions",
            expect: [OK, OK, OK, OK, OK],
            call: |_, mut c| {
                Box::pin(async move { ok(c.reco.list_redemptions(r::ListRedemptionsRequest::default()).await) })
            },
        },
        // ===== recognition: people =====
        Row {
            rpc: "GiveKudos (to Bob)",
            expect: [OK, OK, OK, PD, NF],
            call: |w, mut c| {
                Box::pin(async move {
                    ok(c.reco
                        .give_kudos(r::GiveKudosRequest {
                            recipient: w.bob.name,
                            message: "thanks for the intro".into(),
                            visibility: r::Visibility::Public as i32,
                            request_id: uid(),
                            ..Default::default()
                        })
                        .await)
                })
            },
        },
        Row {
            rpc: "GetKudos",
            expect: [OK, OK, OK, OK, NF],
            call: |w, mut c| {
                Box::pin(async move { ok(c.reco.get_kudos(r::GetKudosRequest { name: w.kudos.name }).await) })
            },
        },
        Row {
            rpc: "ListKudos",
            expect: [OK, OK, OK, OK, OK],
            call: |_, mut c| Box::pin(async move { ok(c.reco.list_kudos(r::ListKudosRequest::default()).await) }),
        },
        Row {
            rpc: "CreateFeedback (on Ada's milestone)",
            expect: [PD, OK, PD, PD, NF],
            call: |w, mut c| {
                Box::pin(async move {
                    ok(c.reco
                        .create_feedback(r::CreateFeedbackRequest {
                            feedback: Some(r::Feedback {
                                member: w.ada.name,
                                milestone: w.ada_goal.name,
                                body: "great pipeline work".into(),
                                kind: r::FeedbackKind::Praise as i32,
                                ..Default::default()
                            }),
                            request_id: uid(),
                        })
                        .await)
                })
            },
        },
        Row {
            rpc: "GetFeedback",
            expect: [PD, OK, OK, PD, NF],
            call: |w, mut c| {
                Box::pin(async move {
                    ok(c.reco
                        .get_feedback(r::GetFeedbackRequest { name: w.feedback.name })
                        .await)
                })
            },
        },
        Row {
            rpc: "ListFeedback (Ada's; filtered to what the caller may see)",
            expect: [OK, OK, OK, PD, NF],
            call: |w, mut c| {
                Box::pin(async move {
                    ok(c.reco
                        .list_feedback(r::ListFeedbackRequest {
                            member: w.ada.name,
                            ..Default::default()
                        })
                        .await)
                })
            },
        },
        Row {
            rpc: "WatchRecognitions",
            expect: [OK, OK, OK, OK, OK],
            call: |_, mut c| {
                Box::pin(async move {
                    ok(c.reco
                        .watch_recognitions(r::WatchRecognitionsRequest { after_sequence: 0 })
                        .await)
                })
            },
        },
    ]
}

/// Creates a member of `team` whose token subject is `subject`.
async fn person(admin: &mut GoalClient, name: &str, subject: &str, role: g::MemberRole, team: &g::Team) -> g::Member {
    let m = admin
        .create_member(g::CreateMemberRequest {
            member: Some(g::Member {
                display_name: name.into(),
                email: format!("{subject}@example.com"),
                role: role as i32,
                subject: subject.into(),
                ..Default::default()
            }),
            request_id: String::new(),
        })
        .await
        .expect("member")
        .into_inner();
    admin
        .create_membership(g::CreateMembershipRequest {
            membership: Some(g::Membership {
                member: m.name.clone(),
                team: team.name.clone(),
                start_date: wire(today() - Days::new(60)),
                ..Default::default()
            }),
            request_id: String::new(),
        })
        .await
        .expect("membership");
    m
}

async fn team_named(admin: &mut GoalClient, name: &str, parent: &str) -> g::Team {
    admin
        .create_team(g::CreateTeamRequest {
            team: Some(g::Team {
                display_name: name.into(),
                parent: parent.into(),
                ..Default::default()
            }),
            request_id: String::new(),
        })
        .await
        .expect("team")
        .into_inner()
}

/// Builds the org, waits for progress and recognition to learn it, and
/// makes one of each resource the calls read.
async fn world(app: &TestApp) -> World {
    let admin = Clients::new(app, Some(app.token("acme", "boss", &[Role::Admin]))).await;
    let manager = Clients::new(app, Some(app.token("acme", "mia", &[Role::Manager]))).await;
    let mut goal = admin.goal.clone();
    let sales = team_named(&mut goal, "Sales", "").await;
    let emea = team_named(&mut goal, "EMEA", &sales.name).await;
    let amer = team_named(&mut goal, "AMER", &sales.name).await;
    person(&mut goal, "Mia", "mia", g::MemberRole::Manager, &emea).await;
    let ada = person(&mut goal, "Ada", "ada", g::MemberRole::Rep, &emea).await;
    let bob = person(&mut goal, "Bob", "bob", g::MemberRole::Rep, &amer).await;
    person(&mut goal, "Boss", "boss", g::MemberRole::Admin, &sales).await;
    let arr = goal
        .create_metric(g::CreateMetricRequest {
            metric: Some(g::Metric {
                display_name: "New ARR".into(),
                unit: g::MetricUnit::Currency as i32,
                currency_code: "EUR".into(),
                aggregation: g::MetricAggregation::Sum as i32,
                ..Default::default()
            }),
            request_id: String::new(),
        })
        .await
        .expect("metric")
        .into_inner();
    let create = |owner: String| {
        let mut goal = goal.clone();
        let arr = arr.name.clone();
        async move {
            goal.create_milestone(g::CreateMilestoneRequest {
                milestone: Some(milestone_for(&owner, &arr, 1_000)),
                activate: true,
                request_id: String::new(),
            })
            .await
            .expect("milestone")
            .into_inner()
        }
    };
    let ada_goal = create(ada.name.clone()).await;
    let emea_goal = create(emea.name.clone()).await;
    let bob_goal = create(bob.name.clone()).await;

    // Progress and recognition learn the org from goal's feed.
    eventually("progress to know the org", || {
        let mut prog = admin.prog.clone();
        let name = format!("{}/progress", bob_goal.name);
        async move { prog.get_progress(p::GetProgressRequest { name }).await.ok() }
    })
    .await;
    let mut reco = admin.reco.clone();
    let badge = reco
        .create_badge(r::CreateBadgeRequest {
            badge: Some(badge("Closer")),
            request_id: String::new(),
        })
        .await
        .expect("badge")
        .into_inner();
    let rule = reco
        .create_rule(r::CreateRuleRequest {
            rule: Some(r::Rule {
                display_name: "Target reached".into(),
                enabled: true,
                trigger: r::RuleTrigger::MilestoneAchieved as i32,
                badge: badge.name.clone(),
                points: 50,
                visibility: r::Visibility::Public as i32,
                ..Default::default()
            }),
            request_id: String::new(),
        })
        .await
        .expect("rule")
        .into_inner();
    let reward = reco
        .create_reward(r::CreateRewardRequest {
            reward: Some(reward("mug")),
            request_id: String::new(),
        })
        .await
        .expect("reward")
        .into_inner();
    let activity = admin
        .prog
        .clone()
        .record_activity(deal(&ada.name, &arr.name, 1_000))
        .await
        .expect("ada's deal")
        .into_inner();
    let recognition = eventually("ada's recognition", || {
        let mut reco = reco.clone();
        let member = ada.name.clone();
        async move {
            reco.list_recognitions(r::ListRecognitionsRequest {
                member,
                ..Default::default()
            })
            .await
            .ok()?
            .into_inner()
            .recognitions
            .into_iter()
            .next()
        }
    })
    .await;
    let redemption = reco
        .redeem_reward(r::RedeemRewardRequest {
            reward: reward.name.clone(),
            member: ada.name.clone(),
            request_id: uid(),
            ..Default::default()
        })
        .await
        .expect("redemption")
        .into_inner();
    let mut as_mia = manager.reco.clone();
    let kudos = as_mia
        .give_kudos(r::GiveKudosRequest {
            recipient: ada.name.clone(),
            message: "great quarter".into(),
            visibility: r::Visibility::Public as i32,
            request_id: uid(),
            ..Default::default()
        })
        .await
        .expect("kudos")
        .into_inner();
    let feedback = as_mia
        .create_feedback(r::CreateFeedbackRequest {
            feedback: Some(r::Feedback {
                member: ada.name.clone(),
                milestone: ada_goal.name.clone(),
                body: "keep it up".into(),
                kind: r::FeedbackKind::Praise as i32,
                ..Default::default()
            }),
            request_id: uid(),
        })
        .await
        .expect("feedback")
        .into_inner();
    World {
        admin,
        sales,
        emea,
        amer,
        ada,
        bob,
        arr,
        ada_goal,
        emea_goal,
        bob_goal,
        activity,
        badge,
        rule,
        reward,
        recognition,
        redemption,
        kudos,
        feedback,
    }
}

/// Tokens that must all be refused: expired, signed by an unknown key,
/// `alg: none`, and for another audience.
fn bad_tokens(app: &TestApp) -> Vec<(&'static str, Option<String>)> {
    use jsonwebtoken::{encode, EncodingKey, Header};
    use secrecy::ExposeSecret;
    let secret = app.settings.auth.hs256_secret.expose_secret().to_string();
    let now = Utc::now().timestamp();
    let claims = |exp: i64, aud: &str| {
        serde_json::json!({
            "sub": "boss", "tenant": "acme", "roles": ["admin"],
            "iss": app.settings.auth.issuer, "aud": aud,
            "exp": exp, "nbf": now - 10, "iat": now - 10,
        })
    };
    let sign = |claims: serde_json::Value, key: &str| {
        encode(&Header::default(), &claims, &EncodingKey::from_secret(key.as_bytes())).expect("sign")
    };
    let audience = app.settings.auth.audience.clone();
    let good = sign(claims(now + 600, &audience), &secret);
    let payload = good.split('.').nth(1).expect("payload").to_string();
    vec![
        ("no token", None),
        ("expired", Some(sign(claims(now - 3_600, &audience), &secret))),
        (
            "unknown key",
            Some(sign(claims(now + 600, &audience), "an-unknown-key-an-unknown-key-0123")),
        ),
        (
            "alg none",
            Some(format!("eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{payload}.")),
        ),
        ("wrong audience", Some(sign(claims(now + 600, "someone-else"), &secret))),
    ]
}

/// Every RPC, every caller: the exact code of each cell.
#[tokio::test]
async fn every_rpc_answers_each_caller_as_the_matrix_says() {
    let app = TestApp::spawn_all().await;
    let w = world(&app).await;
    let callers = [
        ("admin", app.token("acme", "boss", &[Role::Admin])),
        ("manager", app.token("acme", "mia", &[Role::Manager])),
        ("rep", app.token("acme", "ada", &[Role::Rep])),
        ("service", app.token("acme", "crm", &[Role::Service])),
        ("other tenant's admin", app.token("globex", "eve", &[Role::Admin])),
    ];
    // The other tenant's admin is a member there, so calls get past "who
    // are you" to the acme resource they name.
    let mut globex = GoalServiceClient::with_interceptor(app.channel().await, Bearer::new(Some(&callers[4].1)));
    let globex_sales = team_named(&mut globex, "Sales", "").await;
    person(&mut globex, "Eve", "eve", g::MemberRole::Admin, &globex_sales).await;
    let mut clients = Vec::new();
    for (who, token) in &callers {
        clients.push((*who, Clients::new(&app, Some(token.clone())).await));
    }
    let mut unauthenticated = Vec::new();
    for (why, token) in bad_tokens(&app) {
        unauthenticated.push((why, Clients::new(&app, token).await));
    }
    let mut wrong = Vec::new();
    let rows = rows();
    for row in &rows {
        for ((who, c), expected) in clients.iter().zip(row.expect) {
            let (got, message) =
                match tokio::time::timeout(Duration::from_secs(20), (row.call)(w.clone(), c.clone())).await {
                    Ok(Ok(())) => (Code::Ok, String::new()),
                    Ok(Err(s)) => (s.code(), s.message().to_string()),
                    Err(_) => (Code::DeadlineExceeded, "no answer in 20 s".to_string()),
                };
            if got != expected {
                wrong.push(format!(
                    "{} as {who}: expected {expected:?}, got {got:?} ({message})",
                    row.rpc
                ));
            }
        }
        for (why, c) in &unauthenticated {
            let got = match (row.call)(w.clone(), c.clone()).await {
                Ok(()) => Code::Ok,
                Err(s) => {
                    // Nothing about why, for the caller: that goes to the log.
                    assert!(
                        !s.message().contains("expired") && !s.message().contains("audience"),
                        "{s:?}"
                    );
                    s.code()
                }
            };
            if got != Code::Unauthenticated {
                wrong.push(format!("{} with {why}: expected Unauthenticated, got {got:?}", row.rpc));
            }
        }
    }
    assert!(wrong.is_empty(), "{} cells differ:\n{}", wrong.len(), wrong.join("\n"));
    // Every RPC of the three services has a row: compared with the
    // contracts themselves, so a new RPC without a row fails here.
    use prost::Message;
    let covered: std::collections::BTreeSet<String> = rows
        .iter()
        .map(|r| r.rpc.split(' ').next().unwrap_or_default().to_string())
        .collect();
    let files = prost_types::FileDescriptorSet::decode(milestones_api::FILE_DESCRIPTOR_SET).expect("descriptors");
    let declared: std::collections::BTreeSet<String> = files
        .file
        .iter()
        .filter(|f| f.package().starts_with("milestones."))
        .flat_map(|f| f.service.iter())
        .flat_map(|s| s.method.iter().map(|m| m.name().to_string()))
        .collect();
    assert_eq!(covered, declared, "one row (at least) per RPC");
    app.stop().await;
}
