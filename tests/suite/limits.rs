//! The per-tenant write rate limit over real gRPC.

use std::time::Duration;

use milestones_api::goal as g;
use milestones_runtime::auth::Role;
use milestones_suite::{fresh_database_url, test_settings, TestApp};
use tonic::Code;
use tonic_types::StatusExt;

use crate::fixtures::*;

fn create(name: &str) -> g::CreateTeamRequest {
    g::CreateTeamRequest {
        team: Some(g::Team {
            display_name: name.into(),
            ..Default::default()
        }),
        request_id: String::new(),
    }
}

/// Past its burst, a tenant's writes are RESOURCE_EXHAUSTED with a
/// RetryInfo delay and an ErrorInfo; its reads go on, another tenant writes
/// as usual, and after the delay the tenant writes again.
#[tokio::test]
async fn writes_over_a_tenants_rate_are_resource_exhausted() {
    let mut settings = test_settings(fresh_database_url().await, fresh_database_url().await, String::new());
    settings.limits.writes_per_second = 1;
    settings.limits.write_burst = 3;
    let app = TestApp::launch(settings, &["goal", "progress"], None).await;
    let mut acme = app.admin("acme").await;
    for i in 0..3 {
        acme.create_team(create(&format!("Team {i}")))
            .await
            .expect("within the burst");
    }
    let status = expect_code(acme.create_team(create("One too many")).await, Code::ResourceExhausted);
    let details = status.get_error_details();
    let delay = details.retry_info().and_then(|r| r.retry_delay).expect("a retry delay");
    assert!(delay > Duration::ZERO && delay <= Duration::from_secs(1), "{delay:?}");
    let info = details.error_info().expect("error info");
    assert_eq!(info.reason, "RATE_LIMITED");
    assert_eq!(info.domain, "goal.milestones.dev");

    let teams = acme
        .list_teams(g::ListTeamsRequest::default())
        .await
        .expect("reads are not limited")
        .into_inner()
        .teams;
    assert_eq!(teams.len(), 3, "the refused write wrote nothing");

    let mut globex = app.goal("globex", &[Role::Admin]).await;
    globex
        .create_team(create("Globex Sales"))
        .await
        .expect("another tenant has its own bucket");

    tokio::time::sleep(delay).await;
    acme.create_team(create("After the delay"))
        .await
        .expect("a write once the delay has passed");
    app.stop().await;
}
