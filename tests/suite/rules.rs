//! Domain rules at their edges: concurrent writers, lifecycle details,
//! immutable fields, and the all-tenants token.

use milestones_api::goal as pb;
use milestones_runtime::auth::{Role, ALL_TENANTS};
use milestones_suite::TestApp;
use tonic::Code;

use crate::fixtures::*;

fn mask(paths: &[&str]) -> Option<prost_types::FieldMask> {
    Some(prost_types::FieldMask {
        paths: paths.iter().map(|p| p.to_string()).collect(),
    })
}

/// Two writers racing with the same etag: exactly one wins, the other gets
/// ABORTED, and the winner's write is what is stored.
#[tokio::test]
async fn concurrent_updates_with_one_etag_let_one_win() {
    let app = TestApp::spawn().await;
    let mut c = app.admin("acme").await;
    let t = team(&mut c, "Sales", "").await;
    let mut tasks = Vec::new();
    for i in 0..6 {
        let mut c = app.admin("acme").await;
        let (name, etag) = (t.name.clone(), t.etag.clone());
        tasks.push(tokio::spawn(async move {
            c.update_team(pb::UpdateTeamRequest {
                team: Some(pb::Team {
                    name,
                    display_name: format!("writer {i}"),
                    etag,
                    ..Default::default()
                }),
                update_mask: mask(&["display_name"]),
                request_id: String::new(),
            })
            .await
        }));
    }
    let mut winners = Vec::new();
    for task in tasks {
        match task.await.expect("task") {
            Ok(r) => winners.push(r.into_inner()),
            Err(s) => assert_eq!(s.code(), Code::Aborted, "{s:?}"),
        }
    }
    assert_eq!(winners.len(), 1, "exactly one writer wins");
    let stored = c
        .get_team(pb::GetTeamRequest { name: t.name })
        .await
        .expect("get")
        .into_inner();
    assert_eq!(stored, winners[0]);
    app.stop().await;
}

/// Cancelling keeps the reason; closing checks the final value against the
/// outcome; an ADJUST review must change something.
#[tokio::test]
async fn lifecycle_details() {
    let app = TestApp::spawn().await;
    let mut c = app.admin("acme").await;
    let t = team(&mut c, "Sales", "").await;
    let arr = revenue_metric(&mut c, "ARR").await;
    let m = create_milestone(&mut c, milestone_in(&t.name, &arr.name, "FY2030", 1_000), true)
        .await
        .expect("m");
    let wrong = c
        .close_milestone(pb::CloseMilestoneRequest {
            name: m.name.clone(),
            outcome: pb::MilestoneState::Achieved as i32,
            final_value: 999,
            ..Default::default()
        })
        .await;
    assert_eq!(
        violated_fields(&expect_code(wrong, Code::InvalidArgument)),
        vec!["final_value"]
    );
    let same = c
        .review_milestone(pb::ReviewMilestoneRequest {
            name: m.name.clone(),
            outcome: pb::ReviewOutcome::Adjust as i32,
            notes: "no change".into(),
            adjusted_terms: Some(pb::MilestoneTerms {
                target: m.target,
                stretch_target: m.stretch_target,
                start_date: m.start_date,
                end_date: m.end_date,
                checkpoints: vec![],
            }),
            next_review_date: date(2099, 1, 1),
            request_id: String::new(),
        })
        .await;
    assert_eq!(
        violated_fields(&expect_code(same, Code::InvalidArgument)),
        vec!["adjusted_terms"]
    );
    let cancelled = c
        .cancel_milestone(pb::CancelMilestoneRequest {
            name: m.name.clone(),
            reason: "territory dissolved".into(),
            ..Default::default()
        })
        .await
        .expect("cancel")
        .into_inner();
    assert_eq!(cancelled.cancel_reason, "territory dissolved");
    assert_eq!(cancelled.state, pb::MilestoneState::Cancelled as i32);
    app.stop().await;
}

/// A parent's period cannot shrink around its children; children of a
/// closed parent can still be renamed, but nothing new links to it.
#[tokio::test]
async fn parents_and_children_stay_consistent() {
    let app = TestApp::spawn().await;
    let mut c = app.admin("acme").await;
    let t = team(&mut c, "Sales", "").await;
    let ada = member(&mut c, "Ada", pb::MemberRole::Rep).await;
    let arr = revenue_metric(&mut c, "ARR").await;
    let parent = create_milestone(&mut c, milestone_in(&t.name, &arr.name, "FY2027", 1_000), true)
        .await
        .expect("p");
    let mut child = milestone_in(&ada.name, &arr.name, "FY2027-Q4", 250);
    child.parent = parent.name.clone();
    let child = create_milestone(&mut c, child, true).await.expect("child");

    let shrink = c
        .update_milestone(pb::UpdateMilestoneRequest {
            milestone: Some(pb::Milestone {
                name: parent.name.clone(),
                end_date: date(2027, 6, 30),
                ..Default::default()
            }),
            update_mask: mask(&["end_date"]),
            revision_reason: "half year only".into(),
            request_id: String::new(),
        })
        .await;
    assert_eq!(
        violated_fields(&expect_code(shrink, Code::InvalidArgument)),
        vec!["milestone.end_date"]
    );

    c.cancel_milestone(pb::CancelMilestoneRequest {
        name: parent.name.clone(),
        reason: "reorg".into(),
        ..Default::default()
    })
    .await
    .expect("cancel parent");
    c.update_milestone(pb::UpdateMilestoneRequest {
        milestone: Some(pb::Milestone {
            name: child.name.clone(),
            display_name: "Q4 Ada".into(),
            ..Default::default()
        }),
        update_mask: None,
        revision_reason: String::new(),
        request_id: String::new(),
    })
    .await
    .expect_err("a full-mask update without terms is invalid");
    c.update_milestone(pb::UpdateMilestoneRequest {
        milestone: Some(pb::Milestone {
            name: child.name.clone(),
            display_name: "Q4 Ada".into(),
            ..Default::default()
        }),
        update_mask: mask(&["display_name"]),
        revision_reason: String::new(),
        request_id: String::new(),
    })
    .await
    .expect("children of a closed parent can still be renamed");
    app.stop().await;
}

/// Immutable fields can be echoed back but not changed, unknown enum
/// numbers are refused, and e-mail addresses are unique whatever their case.
#[tokio::test]
async fn immutables_enums_and_emails() {
    let app = TestApp::spawn().await;
    let mut c = app.admin("acme").await;
    let arr = revenue_metric(&mut c, "ARR").await;
    let mut changed = arr.clone();
    changed.unit = pb::MetricUnit::Count as i32;
    changed.currency_code = String::new();
    let r = c
        .update_metric(pb::UpdateMetricRequest {
            metric: Some(changed),
            update_mask: None,
            request_id: String::new(),
        })
        .await;
    assert_eq!(
        violated_fields(&expect_code(r, Code::InvalidArgument)),
        vec!["metric.unit"]
    );
    let mut echoed = arr.clone();
    echoed.display_name = "Annual Recurring Revenue".into();
    c.update_metric(pb::UpdateMetricRequest {
        metric: Some(echoed),
        update_mask: None,
        request_id: String::new(),
    })
    .await
    .expect("echoing immutable fields unchanged is fine");

    let bad_state = c
        .list_milestones(pb::ListMilestonesRequest {
            state: 42,
            ..Default::default()
        })
        .await;
    assert_eq!(
        violated_fields(&expect_code(bad_state, Code::InvalidArgument)),
        vec!["state"]
    );
    let bad_role = c
        .list_members(pb::ListMembersRequest {
            role: 9,
            ..Default::default()
        })
        .await;
    assert_eq!(
        violated_fields(&expect_code(bad_role, Code::InvalidArgument)),
        vec!["role"]
    );

    let ada = member(&mut c, "Ada Lovelace", pb::MemberRole::Rep).await;
    assert_eq!(ada.email, "ada.lovelace@example.com");
    let shouting = c
        .create_member(pb::CreateMemberRequest {
            member: Some(pb::Member {
                display_name: "Ada".into(),
                email: "ADA.Lovelace@Example.com".into(),
                role: pb::MemberRole::Rep as i32,
                ..Default::default()
            }),
            request_id: String::new(),
        })
        .await;
    expect_code(shouting, Code::AlreadyExists);
    app.stop().await;
}

/// The all-tenants claim is honoured only on service tokens, and only for
/// feeds.
#[tokio::test]
async fn all_tenants_tokens_only_watch_feeds() {
    let app = TestApp::spawn().await;
    let mut star_admin = app.goal(ALL_TENANTS, &[Role::Admin, Role::Service]).await;
    expect_code(
        star_admin.list_teams(pb::ListTeamsRequest::default()).await,
        Code::Unauthenticated,
    );
    let mut service = app.goal(ALL_TENANTS, &[Role::Service]).await;
    let r = service.list_teams(pb::ListTeamsRequest::default()).await;
    assert_eq!(reason(&expect_code(r, Code::PermissionDenied)), "PERMISSION_DENIED");
    service
        .watch_changes(pb::WatchChangesRequest { after_sequence: 0 })
        .await
        .expect("service tokens watch every tenant");
    app.stop().await;
}
