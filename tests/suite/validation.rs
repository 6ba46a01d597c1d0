//! Bad input: every case gets the right code, field violations naming the
//! faulty fields, and writes nothing.

use milestones_api::goal as pb;
use milestones_suite::{GoalClient, TestApp};
use tonic::Code;

use crate::fixtures::*;

/// Everything the tenant has written, as a fingerprint: the number of
/// milestones and the head of the change feed.
async fn written(c: &mut GoalClient) -> (usize, i64) {
    let milestones = all_milestones(c).await.len();
    let mut feed = c
        .watch_changes(pb::WatchChangesRequest { after_sequence: 0 })
        .await
        .expect("watch")
        .into_inner();
    let mut head = 0;
    // Replay until the first heartbeat: it carries the head.
    while let Some(msg) = feed.message().await.expect("feed") {
        match msg.kind {
            Some(pb::watch_changes_response::Kind::Event(e)) => head = e.sequence,
            Some(pb::watch_changes_response::Kind::Heartbeat(h)) => {
                assert_eq!(h.head_sequence, head);
                break;
            }
            None => {}
        }
    }
    (milestones, head)
}

/// Every malformed milestone is refused with INVALID_ARGUMENT and the exact
/// faulty fields, unknown references with NOT_FOUND, and none writes.
#[tokio::test]
async fn bad_milestones_are_refused_and_write_nothing() {
    let app = TestApp::spawn().await;
    let mut c = app.admin("acme").await;
    let t = team(&mut c, "Sales", "").await;
    let arr = revenue_metric(&mut c, "New ARR").await;
    let calls = c
        .create_metric(pb::CreateMetricRequest {
            metric: Some(pb::Metric {
                display_name: "Calls".into(),
                unit: pb::MetricUnit::Count as i32,
                aggregation: pb::MetricAggregation::Count as i32,
                ..Default::default()
            }),
            request_id: String::new(),
        })
        .await
        .expect("calls")
        .into_inner();
    let parent = create_milestone(&mut c, milestone_in(&t.name, &arr.name, "FY2027-Q1", 1_000), true)
        .await
        .expect("parent");
    let before = written(&mut c).await;

    let base = || milestone_in(&t.name, &arr.name, "FY2027-Q1", 1_000);
    let with = |f: &dyn Fn(&mut pb::Milestone)| {
        let mut m = base();
        f(&mut m);
        m
    };
    let cases: Vec<(&str, pb::Milestone, Vec<&str>)> = vec![
        (
            "missing everything",
            pb::Milestone::default(),
            vec![
                "milestone.display_name",
                "milestone.owner",
                "milestone.metric",
                "milestone.start_date",
                "milestone.end_date",
                "milestone.target",
            ],
        ),
        (
            "end before start",
            with(&|m| {
                m.fiscal_period.clear();
                m.start_date = date(2027, 3, 1);
                m.end_date = date(2027, 2, 1);
            }),
            vec!["milestone.end_date"],
        ),
        ("zero target", with(&|m| m.target = 0), vec!["milestone.target"]),
        ("negative target", with(&|m| m.target = -5), vec!["milestone.target"]),
        (
            "stretch below target",
            with(&|m| m.stretch_target = Some(999)),
            vec!["milestone.stretch_target"],
        ),
        (
            "checkpoint above target",
            with(&|m| {
                m.checkpoints = vec![pb::Checkpoint {
                    display_name: "too far".into(),
                    target: 1_001,
                    due_date: None,
                }]
            }),
            vec!["milestone.checkpoints[0].target"],
        ),
        (
            "checkpoint outside the period",
            with(&|m| {
                m.checkpoints = vec![pb::Checkpoint {
                    display_name: "late".into(),
                    target: 500,
                    due_date: date(2028, 1, 1),
                }]
            }),
            vec!["milestone.checkpoints[0].due_date"],
        ),
        (
            "unknown fiscal period",
            with(&|m| m.fiscal_period = "FY2027-Q5".into()),
            vec!["milestone.fiscal_period"],
        ),
        (
            "impossible date",
            with(&|m| {
                m.fiscal_period.clear();
                m.start_date = date(2027, 2, 30);
                m.end_date = date(2027, 3, 31);
            }),
            vec!["milestone.start_date"],
        ),
        (
            "oversized name",
            with(&|m| m.display_name = "x".repeat(201)),
            vec!["milestone.display_name"],
        ),
        (
            "oversized description",
            with(&|m| m.description = "x".repeat(2_001)),
            vec!["milestone.description"],
        ),
        (
            "malformed owner",
            with(&|m| m.owner = "customers/1".into()),
            vec!["milestone.owner"],
        ),
        (
            "parent with another metric",
            with(&|m| {
                m.metric = calls.name.clone();
                m.parent = parent.name.clone();
            }),
            vec!["milestone.parent"],
        ),
        (
            "period outside the parent's",
            with(&|m| {
                m.fiscal_period = "FY2027-Q2".into();
                m.parent = parent.name.clone();
            }),
            vec!["milestone.parent"],
        ),
    ];
    for (case, milestone, fields) in cases {
        let status = expect_code(create_milestone(&mut c, milestone, false).await, Code::InvalidArgument);
        assert_eq!(violated_fields(&status), fields, "case {case:?}: {status:?}");
        assert_eq!(reason(&status), "INVALID_FIELDS");
    }

    // Unknown references: well-formed names that do not exist.
    for (case, milestone) in [
        ("unknown owner", with(&|m| m.owner = "teams/0000-missing".into())),
        ("unknown metric", with(&|m| m.metric = "metrics/0000-missing".into())),
        ("unknown parent", with(&|m| m.parent = "milestones/0000-missing".into())),
    ] {
        let status = expect_code(create_milestone(&mut c, milestone, false).await, Code::NotFound);
        assert!(status.message().contains("missing"), "case {case:?}: {status:?}");
    }
    assert_eq!(written(&mut c).await, before, "refused requests wrote nothing");

    // A closed parent is a precondition failure.
    c.cancel_milestone(pb::CancelMilestoneRequest {
        name: parent.name.clone(),
        reason: "reorg".into(),
        ..Default::default()
    })
    .await
    .expect("cancel parent");
    let closed_parent = create_milestone(&mut c, with(&|m| m.parent = parent.name.clone()), false).await;
    assert_eq!(
        reason(&expect_code(closed_parent, Code::FailedPrecondition)),
        "PARENT_CLOSED"
    );
    app.stop().await;
}

/// Bad org input: names, enums, dates and masks are checked field by field.
#[tokio::test]
async fn bad_org_input_is_refused() {
    let app = TestApp::spawn().await;
    let mut c = app.admin("acme").await;
    let empty_team = c
        .create_team(pb::CreateTeamRequest {
            team: Some(pb::Team {
                display_name: "".into(),
                parent: "nonsense".into(),
                ..Default::default()
            }),
            request_id: String::new(),
        })
        .await;
    assert_eq!(
        violated_fields(&expect_code(empty_team, Code::InvalidArgument)),
        vec!["team.display_name", "team.parent"]
    );
    let missing_team = c
        .create_team(pb::CreateTeamRequest {
            team: None,
            request_id: String::new(),
        })
        .await;
    assert_eq!(
        violated_fields(&expect_code(missing_team, Code::InvalidArgument)),
        vec!["team"]
    );
    let bad_member = c
        .create_member(pb::CreateMemberRequest {
            member: Some(pb::Member {
                display_name: "Ada".into(),
                email: "not-an-email".into(),
                ..Default::default()
            }),
            request_id: String::new(),
        })
        .await;
    assert_eq!(
        violated_fields(&expect_code(bad_member, Code::InvalidArgument)),
        vec!["member.email", "member.role"]
    );
    let bad_metric = c
        .create_metric(pb::CreateMetricRequest {
            metric: Some(pb::Metric {
                display_name: "ARR".into(),
                unit: pb::MetricUnit::Currency as i32,
                currency_code: "euro".into(),
                aggregation: 42,
                ..Default::default()
            }),
            request_id: String::new(),
        })
        .await;
    assert_eq!(
        violated_fields(&expect_code(bad_metric, Code::InvalidArgument)),
        vec!["metric.aggregation", "metric.currency_code"]
    );
    let t = team(&mut c, "Sales", "").await;
    let ada = member(&mut c, "Ada", pb::MemberRole::Rep).await;
    let backwards = membership(&mut c, &ada, &t, date(2027, 2, 1), date(2027, 1, 1)).await;
    assert_eq!(
        violated_fields(&expect_code(backwards, Code::InvalidArgument)),
        vec!["membership.end_date"]
    );
    let bad_mask = c
        .update_team(pb::UpdateTeamRequest {
            team: Some(pb::Team {
                name: t.name.clone(),
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["create_time".into()],
            }),
            request_id: String::new(),
        })
        .await;
    assert_eq!(
        violated_fields(&expect_code(bad_mask, Code::InvalidArgument)),
        vec!["update_mask"]
    );
    let metric = revenue_metric(&mut c, "ARR").await;
    let immutable = c
        .update_metric(pb::UpdateMetricRequest {
            metric: Some(pb::Metric {
                name: metric.name,
                unit: pb::MetricUnit::Count as i32,
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["unit".into()],
            }),
            request_id: String::new(),
        })
        .await;
    assert_eq!(
        violated_fields(&expect_code(immutable, Code::InvalidArgument)),
        vec!["update_mask.unit"]
    );
    let bad_name = c
        .get_team(pb::GetTeamRequest {
            name: "teams/../../etc".into(),
        })
        .await;
    assert_eq!(
        violated_fields(&expect_code(bad_name, Code::InvalidArgument)),
        vec!["name"]
    );
    let long_id = c
        .create_milestone(pb::CreateMilestoneRequest {
            milestone: Some(milestone_in(&t.name, "metrics/x", "FY2027", 1)),
            activate: false,
            request_id: "r".repeat(129),
        })
        .await;
    assert_eq!(
        violated_fields(&expect_code(long_id, Code::InvalidArgument)),
        vec!["request_id"]
    );
    app.stop().await;
}
