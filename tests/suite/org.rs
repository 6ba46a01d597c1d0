//! The org tree: teams, members, memberships, metrics, settings.

use milestones_api::goal as pb;
use milestones_suite::TestApp;
use tonic::Code;

use crate::fixtures::*;

/// A team tree with members whose memberships change over time lists the
/// right members per subtree and date, and refuses overlapping memberships.
#[tokio::test]
async fn team_tree_members_and_memberships() {
    let app = TestApp::spawn().await;
    let mut c = app.admin("acme").await;
    let sales = team(&mut c, "Sales", "").await;
    let emea = team(&mut c, "EMEA", &sales.name).await;
    let dach = team(&mut c, "DACH", &emea.name).await;
    let amer = team(&mut c, "AMER", &sales.name).await;
    let ada = member(&mut c, "Ada Lovelace", pb::MemberRole::Rep).await;
    let bob = member(&mut c, "Bob Builder", pb::MemberRole::Rep).await;

    // Ada is in DACH for January, then moves to AMER.
    membership(&mut c, &ada, &dach, date(2027, 1, 1), date(2027, 1, 31))
        .await
        .expect("first membership");
    membership(&mut c, &ada, &amer, date(2027, 2, 1), None)
        .await
        .expect("second membership");
    membership(&mut c, &bob, &emea, date(2027, 1, 1), None)
        .await
        .expect("bob");
    // An overlapping membership is refused and names the clash.
    let clash = expect_code(
        membership(&mut c, &ada, &emea, date(2027, 1, 15), None).await,
        Code::FailedPrecondition,
    );
    assert_eq!(reason(&clash), "MEMBERSHIP_OVERLAP");

    let members_of = |team: &pb::Team, day| pb::ListMembersRequest {
        team: team.name.clone(),
        as_of_date: day,
        ..Default::default()
    };
    let emea_jan = c
        .list_members(members_of(&emea, date(2027, 1, 10)))
        .await
        .expect("list")
        .into_inner();
    let mut names: Vec<_> = emea_jan.members.iter().map(|m| m.display_name.clone()).collect();
    names.sort();
    assert_eq!(
        names,
        vec!["Ada Lovelace", "Bob Builder"],
        "EMEA's subtree in January includes DACH"
    );
    let emea_feb = c
        .list_members(members_of(&emea, date(2027, 2, 10)))
        .await
        .expect("list")
        .into_inner();
    assert_eq!(emea_feb.members.len(), 1, "Ada left for AMER in February");
    let sales_feb = c
        .list_members(members_of(&sales, date(2027, 2, 10)))
        .await
        .expect("list")
        .into_inner();
    assert_eq!(sales_feb.members.len(), 2);

    // Children of a parent, and top-level teams.
    let children = c
        .list_teams(pb::ListTeamsRequest {
            parent: sales.name.clone(),
            ..Default::default()
        })
        .await
        .expect("children")
        .into_inner();
    assert_eq!(children.teams.len(), 2);
    let roots = c
        .list_teams(pb::ListTeamsRequest {
            parent: "-".into(),
            ..Default::default()
        })
        .await
        .expect("roots")
        .into_inner();
    assert_eq!(
        roots.teams.iter().map(|t| &t.name).collect::<Vec<_>>(),
        vec![&sales.name]
    );

    // Moving a team under its own descendant is refused.
    let cycle = c
        .update_team(pb::UpdateTeamRequest {
            team: Some(pb::Team {
                name: emea.name.clone(),
                parent: dach.name.clone(),
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["parent".into()],
            }),
            request_id: String::new(),
        })
        .await;
    let cycle = expect_code(cycle, Code::InvalidArgument);
    assert_eq!(violated_fields(&cycle), vec!["team.parent"]);

    // A team in use cannot be deleted; an empty one can.
    let in_use = expect_code(
        c.delete_team(pb::DeleteTeamRequest {
            name: emea.name.clone(),
            ..Default::default()
        })
        .await,
        Code::FailedPrecondition,
    );
    assert_eq!(reason(&in_use), "TEAM_IN_USE");
    let empty = team(&mut c, "Empty", "").await;
    c.delete_team(pb::DeleteTeamRequest {
        name: empty.name.clone(),
        ..Default::default()
    })
    .await
    .expect("delete empty team");
    expect_code(
        c.get_team(pb::GetTeamRequest { name: empty.name }).await,
        Code::NotFound,
    );

    // Duplicate e-mail addresses are refused.
    let dup = c
        .create_member(pb::CreateMemberRequest {
            member: Some(pb::Member {
                display_name: "Ada Again".into(),
                email: ada.email.clone(),
                role: pb::MemberRole::Rep as i32,
                ..Default::default()
            }),
            request_id: String::new(),
        })
        .await;
    expect_code(dup, Code::AlreadyExists);
    app.stop().await;
}

/// Tenant settings default to UTC and a January fiscal year, and an update
/// changes how fiscal period names resolve.
#[tokio::test]
async fn settings_drive_the_fiscal_calendar() {
    let app = TestApp::spawn().await;
    let mut c = app.admin("acme").await;
    let s = c
        .get_tenant_settings(pb::GetTenantSettingsRequest {})
        .await
        .expect("settings")
        .into_inner();
    assert_eq!(
        (s.time_zone.as_str(), s.fiscal_year_start_month, s.review_cadence_months),
        ("UTC", 1, 3)
    );

    let bad = c
        .update_tenant_settings(pb::UpdateTenantSettingsRequest {
            tenant_settings: Some(pb::TenantSettings {
                time_zone: "Mars/Olympus".into(),
                fiscal_year_start_month: 13,
                ..Default::default()
            }),
            update_mask: None,
            request_id: String::new(),
        })
        .await;
    let bad = expect_code(bad, Code::InvalidArgument);
    assert_eq!(
        violated_fields(&bad),
        vec![
            "tenant_settings.time_zone",
            "tenant_settings.fiscal_year_start_month",
            "tenant_settings.review_cadence_months"
        ]
    );

    let updated = c
        .update_tenant_settings(pb::UpdateTenantSettingsRequest {
            tenant_settings: Some(pb::TenantSettings {
                time_zone: "Europe/Berlin".into(),
                fiscal_year_start_month: 2,
                etag: s.etag.clone(),
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["time_zone".into(), "fiscal_year_start_month".into()],
            }),
            request_id: String::new(),
        })
        .await
        .expect("update settings")
        .into_inner();
    assert_eq!(updated.fiscal_year_start_month, 2);
    assert_eq!(updated.review_cadence_months, 3, "fields outside the mask are kept");
    // The old etag is now stale.
    let stale = c
        .update_tenant_settings(pb::UpdateTenantSettingsRequest {
            tenant_settings: Some(pb::TenantSettings {
                review_cadence_months: 6,
                etag: s.etag,
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["review_cadence_months".into()],
            }),
            request_id: String::new(),
        })
        .await;
    assert_eq!(reason(&expect_code(stale, Code::Aborted)), "ETAG_MISMATCH");

    let t = team(&mut c, "Sales", "").await;
    let metric = revenue_metric(&mut c, "New ARR").await;
    let m = create_milestone(
        &mut c,
        milestone_in(&t.name, &metric.name, "FY2027-Q1", 1_000_000),
        false,
    )
    .await
    .expect("milestone");
    assert_eq!((m.start_date, m.end_date), (date(2026, 2, 1), date(2026, 4, 30)));
    assert_eq!(m.fiscal_period, "FY2027-Q1");
    app.stop().await;
}
