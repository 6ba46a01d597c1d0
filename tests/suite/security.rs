//! Authentication, roles and tenant isolation.

use milestones_api::goal as pb;
use milestones_runtime::auth::{mint_token, AuthConfig, Role};
use milestones_suite::TestApp;
use tonic::Code;

use crate::fixtures::*;

/// Requests without a token, with a forged or expired one, or with a
/// malformed header never reach a handler.
#[tokio::test]
async fn requests_need_a_valid_token() {
    let app = TestApp::spawn().await;
    let mut none = app.goal_with_token(None).await;
    let s = expect_code(
        none.list_teams(pb::ListTeamsRequest::default()).await,
        Code::Unauthenticated,
    );
    assert_eq!(reason(&s), "UNAUTHENTICATED");

    let forged_config = AuthConfig {
        hs256_secret: "an-attacker-secret-an-attacker-secret".to_string().into(),
        issuer: "milestones".into(),
        audience: "milestones".into(),
        leeway_secs: 0,
    };
    let forged = mint_token(
        &forged_config,
        "acme",
        "mallory",
        &[Role::Admin],
        std::time::Duration::from_secs(60),
    )
    .expect("mint");
    let mut c = app.goal_with_token(Some(forged)).await;
    expect_code(
        c.list_teams(pb::ListTeamsRequest::default()).await,
        Code::Unauthenticated,
    );

    let mut garbage = app.goal_with_token(Some("not.a.jwt".into())).await;
    let s = expect_code(
        garbage.list_teams(pb::ListTeamsRequest::default()).await,
        Code::Unauthenticated,
    );
    assert!(
        !s.message().contains("InvalidToken"),
        "the reason stays in the log: {s:?}"
    );

    // Wrong audience, signed with the right key.
    let mut wrong_aud = app.settings.auth.to_config();
    wrong_aud.audience = "another-system".into();
    let t = mint_token(
        &wrong_aud,
        "acme",
        "ada",
        &[Role::Admin],
        std::time::Duration::from_secs(60),
    )
    .expect("mint");
    let mut c = app.goal_with_token(Some(t)).await;
    expect_code(
        c.list_teams(pb::ListTeamsRequest::default()).await,
        Code::Unauthenticated,
    );
    app.stop().await;
}

/// Another tenant's resources do not exist for the caller: reads and writes
/// by id answer NOT_FOUND and lists leave them out.
#[tokio::test]
async fn other_tenants_see_nothing() {
    let app = TestApp::spawn().await;
    let mut acme = app.admin("acme").await;
    let t = team(&mut acme, "Acme Sales", "").await;
    let arr = revenue_metric(&mut acme, "ARR").await;
    let m = create_milestone(&mut acme, milestone_in(&t.name, &arr.name, "FY2027-Q1", 10), false)
        .await
        .expect("m");

    let mut globex = app.admin("globex").await;
    let s = expect_code(
        globex.get_team(pb::GetTeamRequest { name: t.name.clone() }).await,
        Code::NotFound,
    );
    assert!(!s.message().contains("acme"));
    expect_code(
        globex
            .get_milestone(pb::GetMilestoneRequest { name: m.name.clone() })
            .await,
        Code::NotFound,
    );
    expect_code(
        globex
            .get_alignment(pb::GetAlignmentRequest { name: m.name.clone() })
            .await,
        Code::NotFound,
    );
    expect_code(
        globex
            .update_milestone(pb::UpdateMilestoneRequest {
                milestone: Some(pb::Milestone {
                    name: m.name.clone(),
                    display_name: "pwned".into(),
                    ..Default::default()
                }),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["display_name".into()],
                }),
                ..Default::default()
            })
            .await,
        Code::NotFound,
    );
    expect_code(
        globex
            .delete_team(pb::DeleteTeamRequest {
                name: t.name.clone(),
                ..Default::default()
            })
            .await,
        Code::NotFound,
    );
    // Using another tenant's team as owner or parent is NOT_FOUND too.
    let g_arr = revenue_metric(&mut globex, "ARR").await;
    expect_code(
        create_milestone(&mut globex, milestone_in(&t.name, &g_arr.name, "FY2027-Q1", 1), false).await,
        Code::NotFound,
    );
    expect_code(
        globex
            .create_team(pb::CreateTeamRequest {
                team: Some(pb::Team {
                    display_name: "x".into(),
                    parent: t.name.clone(),
                    ..Default::default()
                }),
                request_id: String::new(),
            })
            .await,
        Code::NotFound,
    );
    assert!(globex
        .list_teams(pb::ListTeamsRequest::default())
        .await
        .expect("list")
        .into_inner()
        .teams
        .is_empty());
    assert!(all_milestones(&mut globex).await.is_empty());
    // And acme's data is untouched.
    let still = acme
        .get_milestone(pb::GetMilestoneRequest { name: m.name })
        .await
        .expect("get")
        .into_inner();
    assert_eq!(still.display_name, m.display_name);
    app.stop().await;
}

/// Reps read but do not write; managers set milestones but not the org.
#[tokio::test]
async fn roles_limit_writes() {
    let app = TestApp::spawn().await;
    let mut admin = app.admin("acme").await;
    let t = team(&mut admin, "Sales", "").await;
    let arr = revenue_metric(&mut admin, "ARR").await;

    let mut rep = app.goal("acme", &[Role::Rep]).await;
    rep.get_team(pb::GetTeamRequest { name: t.name.clone() })
        .await
        .expect("reps read");
    let denied = rep
        .create_team(pb::CreateTeamRequest {
            team: Some(pb::Team {
                display_name: "mine".into(),
                ..Default::default()
            }),
            request_id: String::new(),
        })
        .await;
    assert_eq!(
        reason(&expect_code(denied, Code::PermissionDenied)),
        "PERMISSION_DENIED"
    );
    expect_code(
        create_milestone(&mut rep, milestone_in(&t.name, &arr.name, "FY2027-Q1", 1), false).await,
        Code::PermissionDenied,
    );
    expect_code(
        rep.watch_changes(pb::WatchChangesRequest { after_sequence: 0 }).await,
        Code::PermissionDenied,
    );

    // The manager's token subject is "tester": a manager member of Sales.
    let mia = admin
        .create_member(pb::CreateMemberRequest {
            member: Some(pb::Member {
                display_name: "Mia".into(),
                email: "mia@example.com".into(),
                role: pb::MemberRole::Manager as i32,
                subject: "tester".into(),
                ..Default::default()
            }),
            request_id: String::new(),
        })
        .await
        .expect("manager member")
        .into_inner();
    membership(&mut admin, &mia, &t, date(2026, 1, 1), None)
        .await
        .expect("membership");
    let mut manager = app.goal("acme", &[Role::Manager]).await;
    create_milestone(&mut manager, milestone_in(&t.name, &arr.name, "FY2027-Q1", 1), true)
        .await
        .expect("managers set milestones for their team");
    expect_code(
        manager
            .create_metric(pb::CreateMetricRequest {
                metric: Some(pb::Metric {
                    display_name: "x".into(),
                    ..Default::default()
                }),
                request_id: String::new(),
            })
            .await,
        Code::PermissionDenied,
    );
    app.stop().await;
}
