//! The progress service over real gRPC: rollups up the team tree as of each
//! activity's date, shared credit, idempotency, voids, milestone events,
//! leaderboards, and ingestion while goal is down.

use std::collections::BTreeMap;
use std::time::Duration;

use milestones_api::goal as g;
use milestones_api::progress as p;
use milestones_runtime::auth::Role;
use milestones_suite::{eventually, GoalClient, ProgressClient, TestApp};
use tonic::Code;
use tonic_types::StatusExt;

use crate::fixtures::*;

/// 2026-`month`-`day` 12:00 UTC as a timestamp.
fn at(month: u32, day: u32) -> Option<prost_types::Timestamp> {
    let d = chrono::NaiveDate::from_ymd_opt(2026, month, day).expect("date");
    let t = d.and_hms_opt(12, 0, 0).expect("time").and_utc();
    Some(prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: 0,
    })
}

fn activity(
    member: &g::Member,
    metric: &g::Metric,
    value: i64,
    month: u32,
    day: u32,
    request_id: &str,
) -> p::RecordActivityRequest {
    p::RecordActivityRequest {
        member: member.name.clone(),
        metric: metric.name.clone(),
        value,
        occurred_at: at(month, day),
        source: "crm".into(),
        external_reference: String::new(),
        credit_splits: vec![],
        request_id: request_id.into(),
    }
}

/// `n` reps ("Rep 0", ...) in `team` since the start of 2026.
async fn reps_in(goal: &mut GoalClient, team: &g::Team, n: usize) -> Vec<g::Member> {
    let mut reps = Vec::new();
    for i in 0..n {
        let r = member(goal, &format!("Rep {i}"), g::MemberRole::Rep).await;
        membership(goal, &r, team, date(2026, 1, 1), None)
            .await
            .expect("membership");
        reps.push(r);
    }
    reps
}

/// Records once progress knows the member and metric (it learns them from
/// goal's feed a moment after they are created).
async fn record(c: &mut ProgressClient, req: p::RecordActivityRequest) -> p::Activity {
    eventually("the activity to be accepted", || {
        let mut c = c.clone();
        let req = req.clone();
        async move {
            match c.record_activity(req).await {
                Ok(a) => Some(a.into_inner()),
                Err(s) if s.code() == Code::NotFound => None,
                Err(s) => panic!("record failed: {s:?}"),
            }
        }
    })
    .await
}

/// The progress of a milestone once progress tracks it.
async fn progress_of(c: &mut ProgressClient, m: &g::Milestone) -> p::Progress {
    let name = format!("{}/progress", m.name);
    eventually("the milestone to be tracked", || {
        let mut c = c.clone();
        let name = name.clone();
        async move {
            c.get_progress(p::GetProgressRequest { name })
                .await
                .ok()
                .map(|r| r.into_inner())
        }
    })
    .await
}

/// Waits until the milestone's value is `value`.
async fn value_becomes(c: &mut ProgressClient, m: &g::Milestone, value: i64) -> p::Progress {
    let name = format!("{}/progress", m.name);
    eventually(&format!("{} to reach {value}", m.name), || {
        let mut c = c.clone();
        let name = name.clone();
        async move {
            let got = c.get_progress(p::GetProgressRequest { name }).await.ok()?.into_inner();
            (got.value == value).then_some(got)
        }
    })
    .await
}

async fn active(c: &mut GoalClient, owner: &str, metric: &g::Metric, period: &str, target: i64) -> g::Milestone {
    create_milestone(c, milestone_in(owner, &metric.name, period, target), true)
        .await
        .expect("milestone")
}

/// Reads the milestone event feed from `after` until it has been idle for a
/// heartbeat.
async fn events_after(app: &TestApp, after: i64) -> Vec<p::MilestoneEvent> {
    let mut c = app.progress("acme", &[Role::Admin]).await;
    let mut feed = c
        .watch_milestone_events(p::WatchMilestoneEventsRequest { after_sequence: after })
        .await
        .expect("watch")
        .into_inner();
    let mut out = Vec::new();
    loop {
        match feed.message().await.expect("feed").expect("open").kind {
            Some(p::watch_milestone_events_response::Kind::Event(e)) => out.push(e),
            Some(p::watch_milestone_events_response::Kind::Heartbeat(_)) => return out,
            None => {}
        }
    }
}

fn kinds_for(events: &[p::MilestoneEvent], milestone: &g::Milestone) -> Vec<p::MilestoneEventKind> {
    events
        .iter()
        .filter(|e| e.milestone == milestone.name)
        .map(|e| p::MilestoneEventKind::try_from(e.kind).expect("kind"))
        .collect()
}

/// One activity moves the rep's milestone and the milestones of the rep's
/// team and of its parent team, in one transaction, with the events of the
/// thresholds it crosses.
#[tokio::test]
async fn an_activity_rolls_up_the_team_tree() {
    let app = TestApp::spawn().await;
    let mut goal = app.admin("acme").await;
    let mut prog = app.progress("acme", &[Role::Service]).await;
    let sales = team(&mut goal, "Sales", "").await;
    let emea = team(&mut goal, "EMEA", &sales.name).await;
    let ada = member(&mut goal, "Ada", g::MemberRole::Rep).await;
    membership(&mut goal, &ada, &emea, date(2026, 1, 1), None)
        .await
        .expect("membership");
    let arr = revenue_metric(&mut goal, "ARR").await;
    let mut mine = milestone_in(&ada.name, &arr.name, "FY2026", 1_000);
    mine.stretch_target = Some(1_500);
    mine.checkpoints = vec![
        g::Checkpoint {
            display_name: "quarter".into(),
            target: 250,
            due_date: None,
        },
        g::Checkpoint {
            display_name: "half".into(),
            target: 500,
            due_date: None,
        },
    ];
    let mine = create_milestone(&mut goal, mine, true).await.expect("ada's");
    let emea_goal = active(&mut goal, &emea.name, &arr, "FY2026", 5_000).await;
    let sales_goal = active(&mut goal, &sales.name, &arr, "FY2026", 10_000).await;
    let other_metric = revenue_metric(&mut goal, "Services").await;
    let unrelated = active(&mut goal, &ada.name, &other_metric, "FY2026", 10).await;
    progress_of(&mut prog, &sales_goal).await;
    progress_of(&mut prog, &unrelated).await;

    let a = record(&mut prog, activity(&ada, &arr, 600, 3, 15, "deal-1")).await;
    assert_eq!(a.credited_amounts.len(), 1);
    for (m, expected_attainment) in [(&mine, 6_000), (&emea_goal, 1_200), (&sales_goal, 600)] {
        let got = value_becomes(&mut prog, m, 600).await;
        assert_eq!(got.attainment_basis_points, expected_attainment, "{}", m.display_name);
        assert_eq!(got.activity_count, 1);
    }
    assert_eq!(
        progress_of(&mut prog, &unrelated).await.value,
        0,
        "another metric does not count"
    );
    let mine_now = progress_of(&mut prog, &mine).await;
    assert_eq!(mine_now.checkpoints_reached, 2);

    let events = events_after(&app, 0).await;
    assert_eq!(
        kinds_for(&events, &mine),
        vec![
            p::MilestoneEventKind::CheckpointReached,
            p::MilestoneEventKind::CheckpointReached
        ]
    );
    assert!(kinds_for(&events, &emea_goal).is_empty());
    let first = events.iter().find(|e| e.milestone == mine.name).expect("event");
    assert_eq!(
        (first.threshold, first.value, first.activity.as_str()),
        (250, 600, a.name.as_str())
    );
    assert_eq!(first.owner_teams, vec![emea.name.clone(), sales.name.clone()]);

    // One more activity crosses target and stretch at once, in order.
    record(&mut prog, activity(&ada, &arr, 1_000, 4, 1, "deal-2")).await;
    value_becomes(&mut prog, &mine, 1_600).await;
    let events = events_after(&app, events.last().map_or(0, |e| e.sequence)).await;
    assert_eq!(
        kinds_for(&events, &mine),
        vec![
            p::MilestoneEventKind::TargetReached,
            p::MilestoneEventKind::StretchReached
        ]
    );
    app.stop().await;
}

/// A rep who moves team mid-period keeps earlier deals with the old team;
/// the common parent counts both.
#[tokio::test]
async fn a_rep_who_moves_team_keeps_earlier_deals_with_the_old_team() {
    let app = TestApp::spawn().await;
    let mut goal = app.admin("acme").await;
    let mut prog = app.progress("acme", &[Role::Admin]).await;
    let sales = team(&mut goal, "Sales", "").await;
    let emea = team(&mut goal, "EMEA", &sales.name).await;
    let amer = team(&mut goal, "AMER", &sales.name).await;
    let cy = member(&mut goal, "Cy", g::MemberRole::Rep).await;
    membership(&mut goal, &cy, &emea, date(2026, 1, 1), date(2026, 5, 31))
        .await
        .expect("emea");
    membership(&mut goal, &cy, &amer, date(2026, 6, 1), None)
        .await
        .expect("amer");
    let arr = revenue_metric(&mut goal, "ARR").await;
    let emea_goal = active(&mut goal, &emea.name, &arr, "FY2026", 1_000).await;
    let amer_goal = active(&mut goal, &amer.name, &arr, "FY2026", 1_000).await;
    let sales_goal = active(&mut goal, &sales.name, &arr, "FY2026", 1_000).await;
    progress_of(&mut prog, &sales_goal).await;

    record(&mut prog, activity(&cy, &arr, 100, 3, 10, "march")).await;
    record(&mut prog, activity(&cy, &arr, 40, 7, 10, "july")).await;
    value_becomes(&mut prog, &emea_goal, 100).await;
    value_becomes(&mut prog, &amer_goal, 40).await;
    value_becomes(&mut prog, &sales_goal, 140).await;

    // A membership correction reconciles: Cy actually moved on 1 March.
    let memberships = goal
        .list_memberships(g::ListMembershipsRequest {
            member: cy.name.clone(),
            ..Default::default()
        })
        .await
        .expect("memberships")
        .into_inner()
        .memberships;
    let (first, second) = if memberships[0].team == emea.name {
        (&memberships[0], &memberships[1])
    } else {
        (&memberships[1], &memberships[0])
    };
    let mut earlier_end = first.clone();
    earlier_end.end_date = date(2026, 2, 28);
    goal.update_membership(g::UpdateMembershipRequest {
        membership: Some(earlier_end),
        update_mask: Some(prost_types::FieldMask {
            paths: vec!["end_date".into()],
        }),
        request_id: String::new(),
    })
    .await
    .expect("end earlier");
    let mut earlier_start = second.clone();
    earlier_start.start_date = date(2026, 3, 1);
    goal.update_membership(g::UpdateMembershipRequest {
        membership: Some(earlier_start),
        update_mask: Some(prost_types::FieldMask {
            paths: vec!["start_date".into()],
        }),
        request_id: String::new(),
    })
    .await
    .expect("start earlier");
    value_becomes(&mut prog, &emea_goal, 0).await;
    value_becomes(&mut prog, &amer_goal, 140).await;
    value_becomes(&mut prog, &sales_goal, 140).await;

    // A deal recorded after the correction counts with the corrected org,
    // although the service planned earlier batches with a copy of the old
    // one (on PostgreSQL a batch plans with its kept copy and the write
    // finds that goal's feed has moved since).
    record(&mut prog, activity(&cy, &arr, 25, 3, 20, "late march")).await;
    assert_eq!(progress_of(&mut prog, &emea_goal).await.value, 0);
    assert_eq!(progress_of(&mut prog, &amer_goal).await.value, 165);
    assert_eq!(progress_of(&mut prog, &sales_goal).await.value, 165);
    app.stop().await;
}

/// A deal split 50/30/20 across reps in different teams credits integer
/// amounts that add up exactly, and each team counts only its rep's share.
#[tokio::test]
async fn a_shared_deal_splits_exactly() {
    let app = TestApp::spawn().await;
    let mut goal = app.admin("acme").await;
    let mut prog = app.progress("acme", &[Role::Service]).await;
    let (mut teams, mut reps, mut goals) = (Vec::new(), Vec::new(), Vec::new());
    let arr = revenue_metric(&mut goal, "ARR").await;
    for name in ["North", "South", "West"] {
        let t = team(&mut goal, name, "").await;
        let r = member(&mut goal, &format!("Rep {name}"), g::MemberRole::Rep).await;
        membership(&mut goal, &r, &t, date(2026, 1, 1), None)
            .await
            .expect("membership");
        goals.push(active(&mut goal, &t.name, &arr, "FY2026", 10_000).await);
        teams.push(t);
        reps.push(r);
    }
    progress_of(&mut prog, &goals[2]).await;
    let mut req = activity(&reps[0], &arr, 1_001, 5, 5, "shared-1");
    req.credit_splits = [(0, 5_000), (1, 3_000), (2, 2_000)]
        .iter()
        .map(|(i, bp)| p::CreditSplit {
            member: reps[*i].name.clone(),
            share_basis_points: *bp,
        })
        .collect();
    let a = record(&mut prog, req).await;
    let credited: BTreeMap<String, i64> = a
        .credited_amounts
        .iter()
        .map(|c| (c.member.clone(), c.amount))
        .collect();
    assert_eq!(credited.values().sum::<i64>(), 1_001);
    assert_eq!(
        credited[&reps[0].name], 501,
        "the leftover unit goes to the largest remainder"
    );
    assert_eq!(credited[&reps[1].name], 300);
    assert_eq!(credited[&reps[2].name], 200);
    for (g, amount) in goals.iter().zip([501, 300, 200]) {
        value_becomes(&mut prog, g, amount).await;
    }
    // Voiding takes back exactly each team's share, and the daily series
    // of each team milestone goes back to zero with it.
    prog.void_activity(p::VoidActivityRequest {
        name: a.name.clone(),
        reason: "deal lost".into(),
        request_id: "void-shared-1".into(),
    })
    .await
    .expect("void");
    for g in &goals {
        value_becomes(&mut prog, g, 0).await;
        let series = prog
            .get_time_series(p::GetTimeSeriesRequest {
                milestone: g.name.clone(),
                granularity: p::TimeSeriesGranularity::Day as i32,
            })
            .await
            .expect("series")
            .into_inner();
        assert!(
            !series.points.is_empty() && series.points.iter().all(|pt| pt.value == 0),
            "{:?}",
            series.points
        );
    }
    let bad = prog
        .record_activity(p::RecordActivityRequest {
            credit_splits: vec![
                p::CreditSplit {
                    member: reps[0].name.clone(),
                    share_basis_points: 6_000,
                },
                p::CreditSplit {
                    member: reps[1].name.clone(),
                    share_basis_points: 3_000,
                },
            ],
            ..activity(&reps[0], &arr, 10, 5, 5, "bad-split")
        })
        .await;
    assert_eq!(
        violated_fields(&expect_code(bad, Code::InvalidArgument)),
        vec!["credit_splits"]
    );
    app.stop().await;
}

/// A retried activity is applied once; the same request id with another
/// payload is refused; a void takes progress down and re-recording does not
/// repeat an event already published.
#[tokio::test]
async fn retries_voids_and_no_repeated_events() {
    let app = TestApp::spawn().await;
    let mut goal = app.admin("acme").await;
    let mut prog = app.progress("acme", &[Role::Service]).await;
    let ada = member(&mut goal, "Ada", g::MemberRole::Rep).await;
    let arr = revenue_metric(&mut goal, "ARR").await;
    let mine = active(&mut goal, &ada.name, &arr, "FY2026", 1_000).await;
    progress_of(&mut prog, &mine).await;

    let first = record(&mut prog, activity(&ada, &arr, 1_000, 2, 2, "r-1")).await;
    let retry = record(&mut prog, activity(&ada, &arr, 1_000, 2, 2, "r-1")).await;
    assert_eq!(first, retry);
    value_becomes(&mut prog, &mine, 1_000).await;
    let reused = prog.record_activity(activity(&ada, &arr, 999, 2, 2, "r-1")).await;
    assert_eq!(
        reason(&expect_code(reused, Code::FailedPrecondition)),
        "REQUEST_ID_REUSED"
    );

    let void = p::VoidActivityRequest {
        name: first.name.clone(),
        reason: "deal reversed".into(),
        request_id: "v-1".into(),
    };
    let voided = prog.void_activity(void.clone()).await.expect("void").into_inner();
    assert_eq!(voided.state, p::ActivityState::Voided as i32);
    assert_eq!(prog.void_activity(void).await.expect("void retry").into_inner(), voided);
    let again = prog
        .void_activity(p::VoidActivityRequest {
            name: first.name.clone(),
            reason: "again".into(),
            request_id: "v-2".into(),
        })
        .await;
    assert_eq!(
        reason(&expect_code(again, Code::FailedPrecondition)),
        "ACTIVITY_ALREADY_VOIDED"
    );
    value_becomes(&mut prog, &mine, 0).await;
    record(&mut prog, activity(&ada, &arr, 1_200, 2, 3, "r-2")).await;
    value_becomes(&mut prog, &mine, 1_200).await;
    let events = events_after(&app, 0).await;
    assert_eq!(
        kinds_for(&events, &mine),
        vec![p::MilestoneEventKind::TargetReached],
        "published once"
    );
    app.stop().await;
}

/// A revised target is a new threshold: raised, it is announced when
/// reached; lowered below the value, at once; set back to a threshold
/// already announced, never again.
#[tokio::test]
async fn revised_targets_are_new_thresholds() {
    let app = TestApp::spawn().await;
    let mut goal = app.admin("acme").await;
    let mut prog = app.progress("acme", &[Role::Service]).await;
    let ada = member(&mut goal, "Ada", g::MemberRole::Rep).await;
    let arr = revenue_metric(&mut goal, "ARR").await;
    let mine = active(&mut goal, &ada.name, &arr, "FY2026", 1_000).await;
    progress_of(&mut prog, &mine).await;
    async fn revise(goal: &mut GoalClient, prog: &ProgressClient, milestone: &g::Milestone, target: i64) {
        goal.update_milestone(g::UpdateMilestoneRequest {
            milestone: Some(g::Milestone {
                name: milestone.name.clone(),
                target,
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["target".into()],
            }),
            revision_reason: format!("target now {target}"),
            request_id: String::new(),
        })
        .await
        .expect("revise");
        let name = format!("{}/progress", milestone.name);
        eventually(&format!("the target to become {target}"), || {
            let mut c = prog.clone();
            let name = name.clone();
            async move {
                let got = c.get_progress(p::GetProgressRequest { name }).await.ok()?.into_inner();
                (got.target == target).then_some(())
            }
        })
        .await;
    }
    let reached = |events: &[p::MilestoneEvent]| -> Vec<i64> {
        events
            .iter()
            .filter(|e| e.milestone == mine.name && e.kind == p::MilestoneEventKind::TargetReached as i32)
            .map(|e| e.threshold)
            .collect()
    };

    record(&mut prog, activity(&ada, &arr, 1_200, 2, 2, "r-1")).await;
    value_becomes(&mut prog, &mine, 1_200).await;
    revise(&mut goal, &prog, &mine, 2_000).await;
    assert_eq!(reached(&events_after(&app, 0).await), vec![1_000], "not yet reached");
    record(&mut prog, activity(&ada, &arr, 800, 2, 3, "r-2")).await;
    value_becomes(&mut prog, &mine, 2_000).await;
    assert_eq!(reached(&events_after(&app, 0).await), vec![1_000, 2_000]);
    revise(&mut goal, &prog, &mine, 1_500).await;
    assert_eq!(
        reached(&events_after(&app, 0).await),
        vec![1_000, 2_000, 1_500],
        "a target lowered below the value is reached at once"
    );
    revise(&mut goal, &prog, &mine, 1_000).await;
    record(&mut prog, activity(&ada, &arr, 1, 2, 4, "r-3")).await;
    value_becomes(&mut prog, &mine, 2_001).await;
    assert_eq!(
        reached(&events_after(&app, 0).await),
        vec![1_000, 2_000, 1_500],
        "announced once"
    );
    app.stop().await;
}

/// A milestone whose period has ended below target gets PERIOD_ENDED and
/// MISSED once; one that made it gets PERIOD_ENDED only.
#[tokio::test]
async fn ended_periods_publish_missed_once() {
    let app = TestApp::spawn().await;
    let mut goal = app.admin("acme").await;
    let mut prog = app.progress("acme", &[Role::Service]).await;
    let ada = member(&mut goal, "Ada", g::MemberRole::Rep).await;
    let bob = member(&mut goal, "Bob", g::MemberRole::Rep).await;
    let sales = team(&mut goal, "Sales", "").await;
    let emea = team(&mut goal, "EMEA", &sales.name).await;
    membership(&mut goal, &ada, &emea, date(2025, 1, 1), None)
        .await
        .expect("membership");
    let arr = revenue_metric(&mut goal, "ARR").await;
    let missed = active(&mut goal, &ada.name, &arr, "FY2026-Q1", 1_000).await;
    let made = active(&mut goal, &bob.name, &arr, "FY2026-Q1", 10).await;
    progress_of(&mut prog, &missed).await;
    record(&mut prog, activity(&ada, &arr, 10, 2, 1, "a")).await;
    record(&mut prog, activity(&bob, &arr, 10, 2, 1, "b")).await;
    let missed_ref = &missed;
    let events = eventually("period-end events", || {
        let app = &app;
        async move {
            let events = events_after(app, 0).await;
            (kinds_for(&events, missed_ref).len() == 2).then_some(events)
        }
    })
    .await;
    assert_eq!(
        kinds_for(&events, &missed),
        vec![p::MilestoneEventKind::PeriodEnded, p::MilestoneEventKind::Missed]
    );
    for e in events.iter().filter(|e| e.milestone == missed.name) {
        assert_eq!(
            e.owner_teams,
            vec![emea.name.clone(), sales.name.clone()],
            "a rep's period-end events name the teams she was in"
        );
    }
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let events = events_after(&app, 0).await;
    assert_eq!(kinds_for(&events, &missed).len(), 2, "not repeated by later checks");
    assert_eq!(
        kinds_for(&events, &made),
        vec![p::MilestoneEventKind::TargetReached, p::MilestoneEventKind::PeriodEnded]
    );
    let status = progress_of(&mut prog, &missed).await.status;
    assert_eq!(status, p::ProgressStatus::Missed as i32);
    app.stop().await;
}

/// Leaderboards rank by attainment or value; ties share a rank and keep a
/// stable order; pages do not overlap.
#[tokio::test]
async fn leaderboards_rank_with_ties_and_pages() {
    let app = TestApp::spawn().await;
    let mut goal = app.admin("acme").await;
    let mut prog = app.progress("acme", &[Role::Service]).await;
    let t = team(&mut goal, "Sales", "").await;
    let arr = revenue_metric(&mut goal, "ARR").await;
    let mut reps = Vec::new();
    for (name, target, value) in [("A", 100, 50), ("B", 200, 100), ("C", 100, 80), ("D", 1_000, 0)] {
        let r = member(&mut goal, name, g::MemberRole::Rep).await;
        membership(&mut goal, &r, &t, date(2026, 1, 1), None)
            .await
            .expect("membership");
        let m = active(&mut goal, &r.name, &arr, "FY2026", target).await;
        progress_of(&mut prog, &m).await;
        if value > 0 {
            record(&mut prog, activity(&r, &arr, value, 6, 1, &format!("deal-{name}"))).await;
            value_becomes(&mut prog, &m, value).await;
        }
        reps.push(r);
    }
    let mut reader = app.progress("acme", &[Role::Admin]).await;
    let board = |rank_by: p::RankBy, page_size, page_token: String| p::GetLeaderboardRequest {
        team: t.name.clone(),
        metric: arr.name.clone(),
        period: Some(p::get_leaderboard_request::Period::FiscalPeriod("FY2026".into())),
        rank_by: rank_by as i32,
        page_size,
        page_token,
    };
    let by_attainment = reader
        .get_leaderboard(board(p::RankBy::Attainment, 10, String::new()))
        .await
        .expect("board")
        .into_inner();
    let ranked: Vec<(i32, String)> = by_attainment
        .entries
        .iter()
        .map(|e| (e.rank, e.display_name.clone()))
        .collect();
    assert_eq!(
        ranked,
        vec![
            (1, "C".into()),
            (2, reps_name(&reps, 0, &by_attainment)),
            (2, reps_name(&reps, 1, &by_attainment)),
            (4, "D".into())
        ]
    );
    assert_eq!(by_attainment.total_size, 4);
    let by_value = reader
        .get_leaderboard(board(p::RankBy::Value, 10, String::new()))
        .await
        .expect("board")
        .into_inner();
    assert_eq!(
        by_value
            .entries
            .iter()
            .map(|e| e.display_name.as_str())
            .collect::<Vec<_>>(),
        vec!["B", "C", "A", "D"]
    );

    let first = reader
        .get_leaderboard(board(p::RankBy::Attainment, 2, String::new()))
        .await
        .expect("page")
        .into_inner();
    let second = reader
        .get_leaderboard(board(p::RankBy::Attainment, 2, first.next_page_token.clone()))
        .await
        .expect("page")
        .into_inner();
    let paged: Vec<String> = first
        .entries
        .iter()
        .chain(&second.entries)
        .map(|e| e.member.clone())
        .collect();
    assert_eq!(
        paged,
        by_attainment
            .entries
            .iter()
            .map(|e| e.member.clone())
            .collect::<Vec<_>>()
    );
    assert!(second.next_page_token.is_empty());
    app.stop().await;
}

/// A team's board holds the members of its subtree on the board's day:
/// sub-teams' members too, not those who left before that day or belong to
/// another team. A board without a team holds every member; another
/// tenant's team is not found; a renamed member shows the new name.
#[tokio::test]
async fn leaderboards_hold_the_subtree_on_the_day() {
    let app = TestApp::spawn().await;
    let mut goal = app.admin("acme").await;
    let mut prog = app.progress("acme", &[Role::Service]).await;
    let sales = team(&mut goal, "Sales", "").await;
    let east = team(&mut goal, "East", &sales.name).await;
    let support = team(&mut goal, "Support", "").await;
    let arr = revenue_metric(&mut goal, "ARR").await;
    let mut reps = BTreeMap::new();
    for (name, t, end) in [
        ("Lead", &sales, None),
        ("Easterner", &east, None),
        ("Helper", &support, None),
        ("Leaver", &east, date(2026, 3, 31)),
    ] {
        let r = member(&mut goal, name, g::MemberRole::Rep).await;
        membership(&mut goal, &r, t, date(2026, 1, 1), end)
            .await
            .expect("membership");
        reps.insert(name, r);
    }
    // Goal's feed is applied in order: once this milestone is tracked, the
    // teams and memberships before it are too.
    let m = active(&mut goal, &reps["Helper"].name, &arr, "FY2026", 100).await;
    progress_of(&mut prog, &m).await;
    let mut reader = app.progress("acme", &[Role::Admin]).await;
    let board = |team: &str| p::GetLeaderboardRequest {
        team: team.into(),
        metric: arr.name.clone(),
        period: Some(p::get_leaderboard_request::Period::FiscalPeriod("FY2026".into())),
        rank_by: p::RankBy::Value as i32,
        page_size: 10,
        page_token: String::new(),
    };
    let names = |b: p::GetLeaderboardResponse| {
        let mut names: Vec<String> = b.entries.into_iter().map(|e| e.display_name).collect();
        names.sort();
        names
    };
    let sales_board = reader.get_leaderboard(board(&sales.name)).await.expect("board");
    assert_eq!(names(sales_board.into_inner()), vec!["Easterner", "Lead"]);
    let east_board = reader.get_leaderboard(board(&east.name)).await.expect("board");
    assert_eq!(names(east_board.into_inner()), vec!["Easterner"]);
    let everyone = reader.get_leaderboard(board("")).await.expect("board");
    assert_eq!(
        names(everyone.into_inner()),
        vec!["Easterner", "Helper", "Lead", "Leaver"]
    );

    let mut other_goal = app.admin("globex").await;
    let theirs = team(&mut other_goal, "Theirs", "").await;
    let err = reader
        .get_leaderboard(board(&theirs.name))
        .await
        .expect_err("another tenant's team");
    assert_eq!(err.code(), Code::NotFound, "{err:?}");

    let mut lead = reps["Lead"].clone();
    lead.display_name = "Lead Renamed".into();
    goal.update_member(g::UpdateMemberRequest {
        member: Some(lead),
        update_mask: Some(prost_types::FieldMask {
            paths: vec!["display_name".into()],
        }),
        request_id: String::new(),
    })
    .await
    .expect("rename");
    eventually("the new name on the board", || {
        let mut reader = reader.clone();
        let request = board(&sales.name);
        async move {
            let b = reader.get_leaderboard(request).await.expect("board").into_inner();
            b.entries.iter().any(|e| e.display_name == "Lead Renamed").then_some(())
        }
    })
    .await;
    app.stop().await;
}

/// A and B tie at 50 %: their order is by member name, whichever that is.
fn reps_name(reps: &[g::Member], i: usize, board: &p::GetLeaderboardResponse) -> String {
    let mut tied: Vec<&g::Member> = reps
        .iter()
        .filter(|r| r.display_name == "A" || r.display_name == "B")
        .collect();
    tied.sort_by(|a, b| a.name.cmp(&b.name));
    let _ = board;
    tied[i].display_name.clone()
}

/// Bad activities are refused with the faulty fields and write nothing; a
/// batch is all or nothing.
#[tokio::test]
async fn bad_activities_are_refused() {
    let app = TestApp::spawn().await;
    let mut goal = app.admin("acme").await;
    let mut prog = app.progress("acme", &[Role::Service]).await;
    let ada = member(&mut goal, "Ada", g::MemberRole::Rep).await;
    let arr = revenue_metric(&mut goal, "ARR").await;
    let mine = active(&mut goal, &ada.name, &arr, "FY2026", 1_000).await;
    progress_of(&mut prog, &mine).await;
    record(&mut prog, activity(&ada, &arr, 1, 1, 1, "warm-up")).await;

    let negative = prog.record_activity(activity(&ada, &arr, -5, 1, 1, "neg")).await;
    assert_eq!(
        violated_fields(&expect_code(negative, Code::InvalidArgument)),
        vec!["value"]
    );
    let mut future = activity(&ada, &arr, 5, 1, 1, "future");
    future.occurred_at = Some(prost_types::Timestamp {
        seconds: chrono::Utc::now().timestamp() + 3_600,
        nanos: 0,
    });
    let future = prog.record_activity(future).await;
    assert_eq!(
        violated_fields(&expect_code(future, Code::InvalidArgument)),
        vec!["occurred_at"]
    );
    let mut nobody = activity(&ada, &arr, 5, 1, 1, "nobody");
    nobody.member = "members/0000-nobody".into();
    expect_code(prog.record_activity(nobody).await, Code::NotFound);
    let mut missing = activity(&ada, &arr, 0, 1, 1, "");
    missing.source = "Sales Force!".into();
    let missing = prog.record_activity(missing).await;
    assert_eq!(
        violated_fields(&expect_code(missing, Code::InvalidArgument)),
        vec!["value", "source", "request_id"]
    );
    let batch = p::RecordActivitiesRequest {
        requests: vec![
            activity(&ada, &arr, 5, 1, 2, "ok-1"),
            activity(&ada, &arr, 0, 1, 2, "bad-2"),
        ],
    };
    let batch = prog.record_activities(batch).await;
    assert_eq!(
        violated_fields(&expect_code(batch, Code::InvalidArgument)),
        vec!["requests[1].value"]
    );
    let mut dup = activity(&ada, &arr, 5, 1, 3, "x-1");
    dup.external_reference = "OPP-1".into();
    let mut dup2 = dup.clone();
    dup2.request_id = "x-2".into();
    let both = prog
        .record_activities(p::RecordActivitiesRequest {
            requests: vec![dup, dup2],
        })
        .await;
    assert_eq!(
        reason(&expect_code(both, Code::AlreadyExists)),
        "EXTERNAL_REFERENCE_EXISTS"
    );
    let too_many = p::RecordActivitiesRequest {
        requests: (0..1_001)
            .map(|i| activity(&ada, &arr, 1, 1, 4, &format!("many-{i}")))
            .collect(),
    };
    assert_eq!(
        reason(&expect_code(
            prog.record_activities(too_many).await,
            Code::ResourceExhausted
        )),
        "BATCH_TOO_LARGE"
    );
    assert_eq!(
        progress_of(&mut prog, &mine).await.value,
        1,
        "nothing refused was written"
    );
    let listed = prog
        .list_activities(p::ListActivitiesRequest::default())
        .await
        .expect("list")
        .into_inner();
    assert_eq!(listed.activities.len(), 1);
    let mut rep = app.progress("acme", &[Role::Rep]).await;
    expect_code(
        rep.record_activity(activity(&ada, &arr, 5, 1, 1, "rep")).await,
        Code::PermissionDenied,
    );
    app.stop().await;
}

/// With goal down, progress keeps ingesting and answering from its copy.
#[tokio::test]
async fn progress_keeps_working_while_goal_is_down() {
    let goal_app = TestApp::spawn_with(
        milestones_suite::fresh_database_url().await,
        milestones_suite::fresh_database_url().await,
        &["goal"],
        None,
    )
    .await;
    let progress_app = TestApp::spawn_with(
        milestones_suite::fresh_database_url().await,
        milestones_suite::fresh_database_url().await,
        &["progress"],
        Some(goal_app.endpoint()),
    )
    .await;
    let mut goal = goal_app.admin("acme").await;
    let mut prog = progress_app.progress("acme", &[Role::Service]).await;
    let ada = member(&mut goal, "Ada", g::MemberRole::Rep).await;
    let arr = revenue_metric(&mut goal, "ARR").await;
    let mine = active(&mut goal, &ada.name, &arr, "FY2026", 1_000).await;
    progress_of(&mut prog, &mine).await;
    goal_app.stop().await;

    record(&mut prog, activity(&ada, &arr, 700, 8, 8, "while-down")).await;
    let got = value_becomes(&mut prog, &mine, 700).await;
    assert_eq!(got.attainment_basis_points, 7_000);
    progress_app.stop().await;
}

/// Time series accumulate per day and week; performance history sums past
/// periods; BatchGetProgress answers in order; an unknown name is NOT_FOUND.
#[tokio::test]
async fn series_history_and_batch_reads() {
    let app = TestApp::spawn().await;
    let mut goal = app.admin("acme").await;
    let mut prog = app.progress("acme", &[Role::Service]).await;
    let t = team(&mut goal, "Sales", "").await;
    let ada = member(&mut goal, "Ada", g::MemberRole::Rep).await;
    membership(&mut goal, &ada, &t, date(2025, 1, 1), None)
        .await
        .expect("membership");
    let arr = revenue_metric(&mut goal, "ARR").await;
    let q1 = active(&mut goal, &ada.name, &arr, "FY2026-Q1", 1_000).await;
    let team_q1 = active(&mut goal, &t.name, &arr, "FY2026-Q1", 5_000).await;
    progress_of(&mut prog, &team_q1).await;
    record(&mut prog, activity(&ada, &arr, 100, 1, 1, "d1")).await;
    record(&mut prog, activity(&ada, &arr, 50, 1, 3, "d3")).await;
    record(&mut prog, activity(&ada, &arr, 25, 1, 9, "d9")).await;
    record(&mut prog, activity(&ada, &arr, 7, 5, 9, "q2")).await;
    value_becomes(&mut prog, &q1, 175).await;

    let daily = prog
        .get_time_series(p::GetTimeSeriesRequest {
            milestone: q1.name.clone(),
            granularity: p::TimeSeriesGranularity::Day as i32,
        })
        .await
        .expect("series")
        .into_inner();
    assert_eq!(daily.points.len(), 90, "every day of a finished quarter");
    let values: Vec<i64> = daily.points.iter().take(10).map(|p| p.value).collect();
    assert_eq!(values, vec![100, 100, 150, 150, 150, 150, 150, 150, 175, 175]);
    assert_eq!(
        daily.points.last().map(|p| (p.value, p.expected_value)),
        Some((175, 1_000))
    );
    let weekly = prog
        .get_time_series(p::GetTimeSeriesRequest {
            milestone: q1.name.clone(),
            granularity: p::TimeSeriesGranularity::Week as i32,
        })
        .await
        .expect("series")
        .into_inner();
    assert_eq!(weekly.points.len(), 13);
    assert_eq!(weekly.points[0].value, 150);
    assert_eq!(weekly.points[1].value, 175);

    let history = prog
        .get_performance_history(p::GetPerformanceHistoryRequest {
            owner: ada.name.clone(),
            metric: arr.name.clone(),
            period_length: p::PeriodLength::Quarter as i32,
            period_count: 3,
            before_date: date(2026, 7, 15),
        })
        .await
        .expect("history")
        .into_inner();
    let summary: Vec<(String, i64)> = history
        .periods
        .iter()
        .map(|p| (p.fiscal_period.clone(), p.attained_value))
        .collect();
    assert_eq!(
        summary,
        vec![
            ("FY2026-Q2".into(), 7),
            ("FY2026-Q1".into(), 175),
            ("FY2025-Q4".into(), 0)
        ]
    );
    assert_eq!(history.periods[1].target, Some(1_000));
    assert_eq!(history.periods[1].milestone, q1.name);
    let team_history = prog
        .get_performance_history(p::GetPerformanceHistoryRequest {
            owner: t.name.clone(),
            metric: arr.name.clone(),
            period_length: p::PeriodLength::Quarter as i32,
            period_count: 1,
            before_date: date(2026, 4, 2),
        })
        .await
        .expect("team history")
        .into_inner();
    assert_eq!(team_history.periods[0].attained_value, 175);

    let batch = prog
        .batch_get_progress(p::BatchGetProgressRequest {
            names: vec![format!("{}/progress", team_q1.name), format!("{}/progress", q1.name)],
        })
        .await
        .expect("batch")
        .into_inner();
    assert_eq!(
        batch.progress.iter().map(|p| p.value).collect::<Vec<_>>(),
        vec![175, 175]
    );
    let missing = prog
        .batch_get_progress(p::BatchGetProgressRequest {
            names: vec!["milestones/0000-missing/progress".into()],
        })
        .await;
    expect_code(missing, Code::NotFound);
    let malformed = prog
        .batch_get_progress(p::BatchGetProgressRequest {
            names: vec!["milestones/x".into()],
        })
        .await;
    assert_eq!(
        violated_fields(&expect_code(malformed, Code::InvalidArgument)),
        vec!["names[0]"]
    );

    // A cancelled member milestone keeps the days it counted, while the
    // member's later credits go on counting for the team.
    goal.cancel_milestone(g::CancelMilestoneRequest {
        name: q1.name.clone(),
        reason: "reorganised".into(),
        ..Default::default()
    })
    .await
    .expect("cancel");
    // Goal's feed is ordered: once a later milestone is tracked, the
    // cancellation has been applied.
    let later = active(&mut goal, &t.name, &arr, "FY2026-Q2", 1_000).await;
    progress_of(&mut prog, &later).await;
    record(&mut prog, activity(&ada, &arr, 1_000, 1, 20, "d20")).await;
    value_becomes(&mut prog, &team_q1, 1_175).await;
    let last_value = |series: p::GetTimeSeriesResponse| series.points.last().map(|p| p.value);
    for (m, expected) in [(&q1, 175), (&team_q1, 1_175)] {
        let series = prog
            .get_time_series(p::GetTimeSeriesRequest {
                milestone: m.name.clone(),
                granularity: p::TimeSeriesGranularity::Day as i32,
            })
            .await
            .expect("series")
            .into_inner();
        assert_eq!(last_value(series), Some(expected), "{}", m.name);
    }
    app.stop().await;
}

/// WatchProgress streams a team's milestones as activities arrive.
#[tokio::test]
async fn watch_progress_streams_updates() {
    let app = TestApp::spawn().await;
    let mut goal = app.admin("acme").await;
    let mut prog = app.progress("acme", &[Role::Service]).await;
    let t = team(&mut goal, "Sales", "").await;
    let ada = member(&mut goal, "Ada", g::MemberRole::Rep).await;
    membership(&mut goal, &ada, &t, date(2026, 1, 1), None)
        .await
        .expect("membership");
    let arr = revenue_metric(&mut goal, "ARR").await;
    let team_goal = active(&mut goal, &t.name, &arr, "FY2026", 1_000).await;
    let ada_goal = active(&mut goal, &ada.name, &arr, "FY2026", 500).await;
    progress_of(&mut prog, &team_goal).await;
    progress_of(&mut prog, &ada_goal).await;
    record(&mut prog, activity(&ada, &arr, 100, 6, 5, "before")).await;
    value_becomes(&mut prog, &ada_goal, 100).await;

    let mut watcher = app.progress("acme", &[Role::Admin]).await;
    let mut stream = watcher
        .watch_progress(p::WatchProgressRequest {
            selector: Some(p::watch_progress_request::Selector::Team(t.name.clone())),
        })
        .await
        .expect("watch")
        .into_inner();
    async fn next_kind(stream: &mut tonic::Streaming<p::WatchProgressResponse>) -> p::watch_progress_response::Kind {
        tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .expect("a message within 10 s")
            .expect("stream")
            .expect("open")
            .kind
            .expect("a kind")
    }
    // The initial set: the team's milestone and its member's, then a
    // heartbeat.
    let mut initial = std::collections::BTreeMap::new();
    while let p::watch_progress_response::Kind::Progress(p) = next_kind(&mut stream).await {
        initial.insert(p.milestone.clone(), p.value);
    }
    assert_eq!(
        initial,
        [(team_goal.name.clone(), 100), (ada_goal.name.clone(), 100)].into(),
        "every active milestone of the team and of its members, as they stand"
    );

    // Then each change, for the team's and the member's milestones alike;
    // a burst within a second is sent as its latest state.
    record(&mut prog, activity(&ada, &arr, 321, 6, 6, "live")).await;
    for i in 0..5 {
        record(&mut prog, activity(&ada, &arr, 1, 6, 7, &format!("burst-{i}"))).await;
    }
    let mut latest = std::collections::BTreeMap::new();
    let mut snapshots = 0;
    while latest.get(&team_goal.name) != Some(&426) || latest.get(&ada_goal.name) != Some(&426) {
        if let p::watch_progress_response::Kind::Progress(p) = next_kind(&mut stream).await {
            snapshots += 1;
            latest.insert(p.milestone.clone(), p.value);
        }
    }
    assert!(
        snapshots <= 6,
        "at most one snapshot per milestone per second: {snapshots} for 6 changes to 2 milestones"
    );

    // At most ten streams per caller.
    let mut open = Vec::new();
    for _ in 0..9 {
        open.push(
            watcher
                .watch_progress(p::WatchProgressRequest {
                    selector: Some(p::watch_progress_request::Selector::Member(ada.name.clone())),
                })
                .await
                .expect("within the limit"),
        );
    }
    let refused = watcher
        .watch_progress(p::WatchProgressRequest {
            selector: Some(p::watch_progress_request::Selector::Member(ada.name.clone())),
        })
        .await;
    assert_eq!(
        reason(&expect_code(refused, Code::ResourceExhausted)),
        "TOO_MANY_STREAMS"
    );
    drop(open);
    drop(stream);
    eventually("a closed stream's slot to be freed", || {
        let mut w = watcher.clone();
        let member = ada.name.clone();
        async move {
            w.watch_progress(p::WatchProgressRequest {
                selector: Some(p::watch_progress_request::Selector::Member(member)),
            })
            .await
            .ok()
        }
    })
    .await;
    app.stop().await;
}

/// A consumer that drops mid-stream and resumes from its cursor gets every
/// milestone event exactly once.
#[tokio::test]
async fn milestone_events_resume_without_loss_or_duplicates() {
    let app = TestApp::spawn().await;
    let mut goal = app.admin("acme").await;
    let mut prog = app.progress("acme", &[Role::Service]).await;
    let arr = revenue_metric(&mut goal, "ARR").await;
    let mut milestones = Vec::new();
    let mut reps = Vec::new();
    for i in 0..10 {
        let r = member(&mut goal, &format!("Rep {i}"), g::MemberRole::Rep).await;
        milestones.push(active(&mut goal, &r.name, &arr, "FY2026", 100).await);
        reps.push(r);
    }
    progress_of(&mut prog, &milestones[9]).await;
    let writer = {
        let mut prog = prog.clone();
        let (reps, arr) = (reps.clone(), arr.clone());
        tokio::spawn(async move {
            for round in 0..5 {
                for r in &reps {
                    // Each rep crosses 100 in the third round: one event each.
                    record(
                        &mut prog,
                        activity(r, &arr, 40, 3, 1 + round, &format!("{}-{round}", r.name)),
                    )
                    .await;
                }
            }
        })
    };
    let mut seen = Vec::new();
    let mut cursor = 0;
    let mut consumer = app.progress("acme", &[Role::Admin]).await;
    while seen.len() < 10 {
        let mut feed = consumer
            .watch_milestone_events(p::WatchMilestoneEventsRequest { after_sequence: cursor })
            .await
            .expect("watch")
            .into_inner();
        // Take at most two events, then drop the stream mid-way.
        let mut taken = 0;
        while taken < 2 && seen.len() < 10 {
            let msg = tokio::time::timeout(Duration::from_secs(10), feed.message())
                .await
                .expect("timely");
            if let Some(p::watch_milestone_events_response::Kind::Event(e)) = msg.expect("feed").expect("open").kind {
                cursor = e.sequence;
                seen.push(e.milestone);
                taken += 1;
            }
        }
    }
    writer.await.expect("writer");
    let mut unique = seen.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), 10, "every milestone's event once: {seen:?}");
    assert_eq!(seen.len(), 10);
    assert_eq!(events_after(&app, cursor).await.len(), 0, "nothing left behind");
    app.stop().await;
}

/// Goal judges a target against the owner's attained history from
/// progress, on create and on demand; without progress the milestone is
/// still created and the assessment says the history is unavailable.
#[tokio::test]
async fn targets_are_assessed_against_history() {
    let app = TestApp::spawn().await;
    let mut goal = app.admin("acme").await;
    let mut prog = app.progress("acme", &[Role::Service]).await;
    let ada = member(&mut goal, "Ada", g::MemberRole::Rep).await;
    let arr = revenue_metric(&mut goal, "ARR").await;
    let probe = active(&mut goal, &ada.name, &arr, "FY2026-Q1", 1).await;
    progress_of(&mut prog, &probe).await;
    for (month, value) in [(2, 800), (5, 1_200), (8, 1_000)] {
        record(&mut prog, activity(&ada, &arr, value, month, 10, &format!("h-{month}"))).await;
    }
    let realism_of =
        |m: &g::Milestone| g::Realism::try_from(m.assessment.as_ref().expect("assessed").realism).expect("enum");
    let q4 = |target| milestone_in(&ada.name, &arr.name, "FY2026-Q4", target);
    let fair = create_milestone(&mut goal, q4(1_000), false).await.expect("fair");
    assert_eq!(realism_of(&fair), g::Realism::Achievable);
    let a = fair.assessment.clone().expect("assessed");
    assert_eq!(
        (a.periods_considered, a.mean_attained, a.best_attained),
        (3, 1_000, 1_200)
    );
    assert_eq!(
        a.history.iter().map(|p| p.fiscal_period.as_str()).collect::<Vec<_>>(),
        vec!["FY2026-Q3", "FY2026-Q2", "FY2026-Q1", "FY2025-Q4"]
    );
    assert_eq!(
        realism_of(&create_milestone(&mut goal, q4(500), false).await.expect("low")),
        g::Realism::Sandbagged
    );
    assert_eq!(
        realism_of(&create_milestone(&mut goal, q4(1_400), false).await.expect("high")),
        g::Realism::Ambitious
    );
    let wild = create_milestone(&mut goal, q4(10_000), false).await.expect("wild");
    assert_eq!(realism_of(&wild), g::Realism::Unrealistic);
    assert!(wild.assessment.expect("assessed").explanation.contains("1000.00 %"));

    // Lowering the target re-assesses; AssessMilestone gives a fresh one.
    let lowered = goal
        .update_milestone(g::UpdateMilestoneRequest {
            milestone: Some(g::Milestone {
                name: fair.name.clone(),
                target: 950,
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["target".into()],
            }),
            ..Default::default()
        })
        .await
        .expect("update")
        .into_inner();
    assert_eq!(lowered.assessment.as_ref().map(|a| a.target), Some(950));
    let fresh = goal
        .assess_milestone(g::AssessMilestoneRequest {
            name: fair.name.clone(),
        })
        .await
        .expect("assess")
        .into_inner();
    assert_eq!(g::Realism::try_from(fresh.realism), Ok(g::Realism::Achievable));
    app.stop().await;

    // Goal alone: progress is unreachable, the milestone is created anyway.
    let alone = TestApp::spawn_with(
        milestones_suite::fresh_database_url().await,
        milestones_suite::fresh_database_url().await,
        &["goal"],
        None,
    )
    .await;
    let mut goal = alone.admin("acme").await;
    let bob = member(&mut goal, "Bob", g::MemberRole::Rep).await;
    let arr = revenue_metric(&mut goal, "ARR").await;
    let m = create_milestone(&mut goal, milestone_in(&bob.name, &arr.name, "FY2026-Q4", 10), true)
        .await
        .expect("created");
    assert_eq!(realism_of(&m), g::Realism::Unavailable);
    alone.stop().await;
}

/// Concurrent writers on one team's milestone lose no update, and every
/// write sent three times (a retry storm) counts once.
#[tokio::test]
async fn concurrent_and_retried_writes_count_exactly_once() {
    let app = TestApp::spawn().await;
    let mut goal = app.admin("acme").await;
    let mut prog = app.progress("acme", &[Role::Service]).await;
    let t = team(&mut goal, "Sales", "").await;
    let arr = revenue_metric(&mut goal, "ARR").await;
    let reps = reps_in(&mut goal, &t, 4).await;
    let team_goal = active(&mut goal, &t.name, &arr, "FY2026", 1_000_000).await;
    progress_of(&mut prog, &team_goal).await;
    record(&mut prog, activity(&reps[3], &arr, 1, 1, 1, "warm-up")).await;
    let mut tasks = Vec::new();
    for (w, rep) in reps.iter().enumerate() {
        for copy in 0..3 {
            let mut c = prog.clone();
            let (rep, arr) = (rep.clone(), arr.clone());
            tasks.push(tokio::spawn(async move {
                for i in 0..10 {
                    let req = activity(&rep, &arr, 10, 2, 1 + i, &format!("w{w}-{i}"));
                    // Concurrent twins may see REQUEST_IN_FLIGHT; a retry
                    // then returns the stored result.
                    loop {
                        match c.record_activity(req.clone()).await {
                            Ok(_) => break,
                            Err(s) if s.code() == Code::Aborted => continue,
                            Err(s) => panic!("copy {copy}: {s:?}"),
                        }
                    }
                }
            }));
        }
    }
    for t in tasks {
        t.await.expect("writer");
    }
    let got = value_becomes(&mut prog, &team_goal, 1 + 4 * 10 * 10).await;
    assert_eq!(got.activity_count, 1 + 40);

    // Concurrent calls are recorded together; one bad call among them gets
    // its own error and costs the others nothing.
    let calls = (0..24).map(|i| {
        let mut c = prog.clone();
        let mut req = activity(&reps[i % 4], &arr, 1, 4, 1, &format!("burst-{i}"));
        if i % 6 == 5 {
            req.member = "members/nobody".into();
        }
        async move { c.record_activity(req).await }
    });
    let outcomes = futures::future::join_all(calls).await;
    for (i, outcome) in outcomes.into_iter().enumerate() {
        match outcome {
            Ok(a) => assert!(i % 6 != 5, "burst-{i} recorded {a:?}"),
            Err(s) => assert!(i % 6 == 5 && s.code() == Code::NotFound, "burst-{i}: {s:?}"),
        }
    }
    let got = value_becomes(&mut prog, &team_goal, 1 + 4 * 10 * 10 + 20).await;
    assert_eq!(got.activity_count, 1 + 40 + 20);
    let batch = prog
        .record_activities(p::RecordActivitiesRequest {
            requests: vec![
                activity(&reps[0], &arr, 1, 3, 1, "same"),
                activity(&reps[0], &arr, 1, 3, 1, "same"),
            ],
        })
        .await;
    assert_eq!(
        violated_fields(&expect_code(batch, Code::InvalidArgument)),
        vec!["requests[1].request_id"]
    );

    // A batch that repeats an earlier call and adds a new one: the repeat
    // answers with the stored activity, and only the new one counts.
    let earlier = record(&mut prog, activity(&reps[1], &arr, 1, 5, 1, "mixed-old")).await;
    let mixed = prog
        .record_activities(p::RecordActivitiesRequest {
            requests: vec![
                activity(&reps[1], &arr, 1, 5, 1, "mixed-old"),
                activity(&reps[2], &arr, 7, 5, 1, "mixed-new"),
            ],
        })
        .await
        .expect("mixed batch")
        .into_inner()
        .activities;
    assert_eq!(mixed[0], earlier);
    assert_ne!(mixed[1].name, earlier.name);
    let got = value_becomes(&mut prog, &team_goal, 1 + 4 * 10 * 10 + 20 + 1 + 7).await;
    assert_eq!(got.activity_count, 1 + 40 + 20 + 2);
    app.stop().await;
}

/// A large batch (written in steps on PostgreSQL: its activities by `COPY`,
/// its split credits, then the running totals) counts every entry once for
/// the rep and up the tree, shared deals and external references included;
/// sent again, it answers with the same activities and counts nothing more.
#[tokio::test]
async fn a_large_batch_counts_once_and_replays_whole() {
    let app = TestApp::spawn().await;
    let mut goal = app.admin("acme").await;
    let mut prog = app.progress("acme", &[Role::Service]).await;
    let sales = team(&mut goal, "Sales", "").await;
    let emea = team(&mut goal, "EMEA", &sales.name).await;
    let arr = revenue_metric(&mut goal, "ARR").await;
    let reps = reps_in(&mut goal, &emea, 3).await;
    let top = active(&mut goal, &sales.name, &arr, "FY2026", 1_000_000).await;
    let own = active(&mut goal, &reps[0].name, &arr, "FY2026", 1_000_000).await;
    progress_of(&mut prog, &top).await;
    progress_of(&mut prog, &own).await;
    let requests: Vec<p::RecordActivityRequest> = (0..300)
        .map(|i| {
            let mut a = activity(
                &reps[i % 3],
                &arr,
                1 + i as i64,
                1 + (i % 10) as u32,
                1,
                &format!("big-{i}"),
            );
            if i % 10 == 0 {
                a.credit_splits = [i % 3, (i + 1) % 3]
                    .map(|r| p::CreditSplit {
                        member: reps[r].name.clone(),
                        share_basis_points: 5_000,
                    })
                    .to_vec();
            }
            if i % 7 == 0 {
                a.external_reference = format!("deal-{i}");
            }
            a
        })
        .collect();
    let total: i64 = (0..300).map(|i| 1 + i as i64).sum();
    let batch = p::RecordActivitiesRequest { requests };
    let first = prog
        .record_activities(batch.clone())
        .await
        .expect("large batch")
        .into_inner()
        .activities;
    assert_eq!(first.len(), 300);
    assert_eq!(first[7].external_reference, "deal-7");
    assert_eq!(first[10].credited_amounts.len(), 2);
    // Rep 0's share of every activity that credits rep 0.
    let rep0_credits: Vec<i64> = first
        .iter()
        .flat_map(|a| a.credited_amounts.iter())
        .filter(|c| c.member == reps[0].name)
        .map(|c| c.amount)
        .collect();
    let rep0: i64 = rep0_credits.iter().sum();
    let got = value_becomes(&mut prog, &top, total).await;
    assert_eq!(got.activity_count, 300);
    let got = value_becomes(&mut prog, &own, rep0).await;
    assert_eq!(got.activity_count, rep0_credits.len() as i64);
    // Stored as recorded: the split and the reference read back.
    let stored = prog
        .get_activity(p::GetActivityRequest {
            name: first[70].name.clone(),
        })
        .await
        .expect("stored activity")
        .into_inner();
    assert_eq!(stored, first[70]);
    let again = prog
        .record_activities(batch)
        .await
        .expect("replayed batch")
        .into_inner()
        .activities;
    assert_eq!(again, first);
    let got = progress_of(&mut prog, &top).await;
    assert_eq!((got.value, got.activity_count), (total, 300));
    app.stop().await;
}

/// Concurrent batches of one caller are recorded together (several
/// batches per transaction); each still answers with its own activities in
/// its own order, and a bad batch among them fails alone, naming its own
/// entry. A batch sent twice at once counts once.
#[tokio::test]
async fn concurrent_batches_count_once_and_fail_alone() {
    let app = TestApp::spawn().await;
    let mut goal = app.admin("acme").await;
    let mut prog = app.progress("acme", &[Role::Service]).await;
    let t = team(&mut goal, "Sales", "").await;
    let arr = revenue_metric(&mut goal, "ARR").await;
    let reps = reps_in(&mut goal, &t, 3).await;
    let team_goal = active(&mut goal, &t.name, &arr, "FY2026", 1_000_000).await;
    progress_of(&mut prog, &team_goal).await;
    let batch = |round: usize, b: usize| -> Vec<p::RecordActivityRequest> {
        (0..50)
            .map(|i| {
                activity(
                    &reps[(b + i) % 3],
                    &arr,
                    1 + i as i64,
                    3,
                    1,
                    &format!("r{round}-b{b}-{i}"),
                )
            })
            .collect()
    };
    let sender = prog.clone();
    let send_all = |batches: Vec<Vec<p::RecordActivityRequest>>| {
        let calls = batches.into_iter().map(|requests| {
            let mut c = sender.clone();
            let req = p::RecordActivitiesRequest { requests };
            async move {
                loop {
                    match c.record_activities(req.clone()).await {
                        // A twin that committed first: the retry replays it.
                        Err(s) if s.code() == Code::Aborted => continue,
                        outcome => return outcome.map(|r| r.into_inner().activities),
                    }
                }
            }
        });
        futures::future::join_all(calls)
    };
    let answers_its_own = |b: usize, activities: &[p::Activity]| {
        assert_eq!(activities.len(), 50, "batch {b}");
        for (i, a) in activities.iter().enumerate() {
            assert_eq!(
                (a.member.as_str(), a.value),
                (reps[(b + i) % 3].name.as_str(), 1 + i as i64),
                "batch {b} entry {i}"
            );
        }
    };
    let per_batch: i64 = (1..=50).sum();

    // Six good batches at once.
    let outcomes = send_all((0..6).map(|b| batch(1, b)).collect()).await;
    for (b, outcome) in outcomes.into_iter().enumerate() {
        answers_its_own(b, &outcome.unwrap_or_else(|s| panic!("batch {b}: {s:?}")));
    }
    let got = value_becomes(&mut prog, &team_goal, 6 * per_batch).await;
    assert_eq!(got.activity_count, 6 * 50);

    // Six more, one naming an unknown rep and one repeating another.
    let mut batches: Vec<Vec<p::RecordActivityRequest>> = (0..6).map(|b| batch(2, b)).collect();
    batches[4][17].member = "members/nobody".into();
    batches[5] = batches[2].clone();
    let mut recorded = Vec::new();
    for (b, outcome) in send_all(batches).await.into_iter().enumerate() {
        if b == 4 {
            let status = expect_code(outcome, Code::NotFound);
            let info = status.get_details_error_info().expect("ErrorInfo");
            assert_eq!(info.metadata.get("index").map(String::as_str), Some("17"), "{status:?}");
            assert!(status.message().starts_with("requests[17]: "), "{status:?}");
            continue;
        }
        let activities = outcome.unwrap_or_else(|s| panic!("batch {b}: {s:?}"));
        answers_its_own(if b == 5 { 2 } else { b }, &activities);
        recorded.push(activities);
    }
    assert_eq!(recorded[4], recorded[2], "the repeat answers with the same activities");
    let got = value_becomes(&mut prog, &team_goal, 10 * per_batch).await;
    assert_eq!(got.activity_count, 10 * 50);
    app.stop().await;
}

/// Records on one of several replicas: retries until the replica knows the
/// member (NOT_FOUND), and when two processes share one SQLite file
/// (ABORTED asks for a retry).
async fn record_on(c: &ProgressClient, req: p::RecordActivityRequest) {
    eventually("the activity to be accepted", || {
        let mut c = c.clone();
        let req = req.clone();
        async move {
            match c.record_activity(req).await {
                Ok(a) => Some(a.into_inner()),
                Err(s) if matches!(s.code(), Code::NotFound | Code::Aborted) => None,
                Err(s) => panic!("record failed: {s:?}"),
            }
        }
    })
    .await;
}

/// A second progress service on `app`'s databases, fed by its goal.
async fn progress_replica(app: &TestApp) -> TestApp {
    let mut settings = milestones_suite::test_settings(
        app.database_url.clone(),
        app.progress_database_url.clone(),
        String::new(),
    );
    settings.progress.goal_endpoint = app.endpoint();
    TestApp::launch(settings, &["progress"], None).await
}

/// Two progress replicas on one database: an org change from goal is
/// applied by whichever replica's feed consumer gets it first, and both
/// then credit the new member (each keeps an org copy between batches and
/// must notice changes the other applied).
#[tokio::test]
async fn replicas_see_org_changes_applied_by_each_other() {
    let app = TestApp::spawn().await;
    let replica = progress_replica(&app).await;
    let mut goal = app.admin("acme").await;
    let first = app.progress("acme", &[Role::Service]).await;
    let mut second = replica.progress("acme", &[Role::Service]).await;
    let arr = revenue_metric(&mut goal, "ARR").await;
    let ada = member(&mut goal, "Ada", g::MemberRole::Rep).await;
    // Both replicas keep an org copy that knows Ada.
    record_on(&first, activity(&ada, &arr, 1, 3, 1, "a-1")).await;
    record_on(&second, activity(&ada, &arr, 1, 3, 1, "a-2")).await;

    for round in 0..3 {
        let rep = member(&mut goal, &format!("Rep {round}"), g::MemberRole::Rep).await;
        let goal_of_rep = active(&mut goal, &rep.name, &arr, "FY2026", 1_000).await;
        for (i, c) in [&first, &second].into_iter().enumerate() {
            record_on(c, activity(&rep, &arr, 10, 3, 2, &format!("r{round}-{i}"))).await;
        }
        let got = value_becomes(&mut second, &goal_of_rep, 20).await;
        assert_eq!(
            got.activity_count, 2,
            "round {round}: both replicas credited the new rep"
        );
    }
    // A new milestone for a rep both replicas already know: their kept org
    // copies lack it, and only the moved feed cursor says so (no unknown
    // member to stumble on). Once progress has it, every credit counts.
    let ada_goal = active(&mut goal, &ada.name, &arr, "FY2026", 1_000).await;
    value_becomes(&mut second, &ada_goal, 2).await;
    for (i, c) in [&first, &second].into_iter().enumerate() {
        record_on(c, activity(&ada, &arr, 10, 4, 1, &format!("late-{i}"))).await;
    }
    let got = value_becomes(&mut second, &ada_goal, 22).await;
    assert_eq!(got.activity_count, 4);
    replica.stop().await;
    app.stop().await;
}

/// A replica whose last view of a milestone is behind (another replica
/// recorded since) still announces the threshold its activity reaches,
/// once. On PostgreSQL a small batch that the replica expects to stay below
/// every threshold not announced is written in one statement without a
/// transaction, which can announce nothing: the statement itself refuses
/// when the batch reaches one after all, and the batch is written again in
/// a transaction, with its event.
#[tokio::test]
async fn a_replica_behind_on_a_milestone_still_announces_its_threshold() {
    let app = TestApp::spawn().await;
    let replica = progress_replica(&app).await;
    let mut goal = app.admin("acme").await;
    let mut first = app.progress("acme", &[Role::Service]).await;
    let mut second = replica.progress("acme", &[Role::Service]).await;
    let ada = member(&mut goal, "Ada", g::MemberRole::Rep).await;
    let arr = revenue_metric(&mut goal, "ARR").await;
    let mine = active(&mut goal, &ada.name, &arr, "FY2026", 1_000).await;
    progress_of(&mut first, &mine).await;
    progress_of(&mut second, &mine).await;
    // Each replica records once (and keeps what it saw: 100, then 700).
    record_on(&second, activity(&ada, &arr, 100, 2, 2, "b-1")).await;
    record_on(&first, activity(&ada, &arr, 600, 2, 3, "a-1")).await;
    // The second replica last saw 100: 100 + 400 stays below 1,000, but
    // the milestone is at 700, and 700 + 400 reaches it.
    record_on(&second, activity(&ada, &arr, 400, 2, 4, "b-2")).await;
    let got = value_becomes(&mut first, &mine, 1_100).await;
    assert_eq!(got.activity_count, 3);
    let events = events_after(&app, 0).await;
    assert_eq!(
        kinds_for(&events, &mine),
        vec![p::MilestoneEventKind::TargetReached],
        "announced once, by the replica that reached it"
    );
    // Now both are past every threshold: more activities announce nothing.
    record_on(&first, activity(&ada, &arr, 50, 2, 5, "a-2")).await;
    record_on(&second, activity(&ada, &arr, 50, 2, 6, "b-3")).await;
    value_becomes(&mut first, &mine, 1_200).await;
    assert_eq!(kinds_for(&events_after(&app, 0).await, &mine).len(), 1);
    replica.stop().await;
    app.stop().await;
}

/// Concurrent calls on two replicas, merged into batches that race on the
/// same milestones: every activity counts once, and each threshold (four
/// here, on the rep's and the team's milestones) is announced exactly once,
/// whichever path each batch took (one statement, refused and written
/// again, or a transaction).
#[tokio::test]
async fn concurrent_replicas_announce_each_threshold_once() {
    let app = TestApp::spawn().await;
    let replica = progress_replica(&app).await;
    let mut goal = app.admin("acme").await;
    let first = app.progress("acme", &[Role::Service]).await;
    let second = replica.progress("acme", &[Role::Service]).await;
    let sales = team(&mut goal, "Sales", "").await;
    let ada = member(&mut goal, "Ada", g::MemberRole::Rep).await;
    membership(&mut goal, &ada, &sales, date(2026, 1, 1), None)
        .await
        .expect("membership");
    let arr = revenue_metric(&mut goal, "ARR").await;
    let mut mine = milestone_in(&ada.name, &arr.name, "FY2026", 2_000);
    mine.stretch_target = Some(3_000);
    mine.checkpoints = vec![g::Checkpoint {
        display_name: "half".into(),
        target: 1_000,
        due_date: None,
    }];
    let mine = create_milestone(&mut goal, mine, true).await.expect("ada's");
    let team_goal = active(&mut goal, &sales.name, &arr, "FY2026", 2_500).await;
    let mut reader = first.clone();
    progress_of(&mut reader, &team_goal).await;
    record_on(&first, activity(&ada, &arr, 10, 2, 1, "warm-1")).await;
    record_on(&second, activity(&ada, &arr, 10, 2, 1, "warm-2")).await;

    // 8 callers per replica, 20 activities of 10 each: 3,220 in all.
    let mut callers = Vec::new();
    for (r, c) in [&first, &second].into_iter().enumerate() {
        for k in 0..8 {
            let (c, ada, arr) = (c.clone(), ada.clone(), arr.clone());
            callers.push(tokio::spawn(async move {
                for i in 0..20 {
                    record_on(&c, activity(&ada, &arr, 10, 2, 2, &format!("c{r}-{k}-{i}"))).await;
                }
            }));
        }
    }
    for c in callers {
        c.await.expect("caller");
    }
    let got = value_becomes(&mut reader, &mine, 3_220).await;
    assert_eq!(got.activity_count, 322);
    value_becomes(&mut reader, &team_goal, 3_220).await;
    let events = events_after(&app, 0).await;
    assert_eq!(
        kinds_for(&events, &mine),
        vec![
            p::MilestoneEventKind::CheckpointReached,
            p::MilestoneEventKind::TargetReached,
            p::MilestoneEventKind::StretchReached
        ],
        "each of the rep's thresholds once, in order"
    );
    assert_eq!(
        kinds_for(&events, &team_goal),
        vec![p::MilestoneEventKind::TargetReached],
        "the team's once"
    );
    // Each announced by the activity that reached it (every step is 10),
    // not late by a later batch.
    for e in events
        .iter()
        .filter(|e| e.milestone == mine.name || e.milestone == team_goal.name)
    {
        assert!(
            e.value >= e.threshold && e.value < e.threshold + 10 && !e.activity.is_empty(),
            "{:?} at {} announced at {} by {:?}",
            e.kind(),
            e.threshold,
            e.value,
            e.activity
        );
    }
    replica.stop().await;
    app.stop().await;
}

/// An activity recorded before activities kept their own request ids (its
/// key was a row of `idempotency_keys`) still answers its retries after the
/// upgrade, and its id is still refused for another activity.
#[tokio::test]
async fn request_ids_stored_before_the_upgrade_still_replay() {
    use prost::Message as _;
    use sea_orm::{ConnectionTrait, Database, Statement, Value};
    use sea_orm_migration::MigratorTrait as _;

    let progress_url = milestones_suite::fresh_database_url().await;
    let db = Database::connect(progress_url.as_str())
        .await
        .expect("progress database");
    // The first three migrations: the schema before `LeanActivities`.
    milestones_progress::schema::Migrator::up(&db, Some(3))
        .await
        .expect("the earlier schema");
    let id = "01a22000-0000-7000-8000-00000000a1d1";
    let (member, metric) = (
        "01a22000-0000-7000-8000-0000000000ad",
        "01a22000-0000-7000-8000-0000000000a7",
    );
    let request = p::RecordActivityRequest {
        member: format!("members/{member}"),
        metric: format!("metrics/{metric}"),
        value: 500,
        occurred_at: at(2, 2),
        source: "crm".into(),
        external_reference: String::new(),
        credit_splits: vec![],
        request_id: "r-legacy".into(),
    };
    let stored_request = p::RecordActivityRequest {
        request_id: String::new(),
        ..request.clone()
    }
    .encode_to_vec();
    let stored_response = p::Activity {
        name: format!("activities/{id}"),
        value: 500,
        ..Default::default()
    }
    .encode_to_vec();
    let exec = |sql: &str, values: Vec<Value>| {
        db.execute(Statement::from_sql_and_values(db.get_database_backend(), sql, values))
    };
    exec(
        "INSERT INTO activities (id, tenant_id, member_id, metric_id, value, occurred_at, occurred_date, source, \
         external_reference, credit_splits, state, void_reason, void_time, create_time, recorded_by) \
         VALUES ($1, 'acme', $2, $3, 500, 1, '2026-02-02', 'crm', NULL, '[]', 'active', '', NULL, 1, 'tester')",
        vec![id.into(), member.into(), metric.into()],
    )
    .await
    .expect("a recorded activity");
    exec(
        "INSERT INTO activity_credits (activity_id, member_id, tenant_id, metric_id, amount, occurred_date, active) \
         VALUES ($1, $2, 'acme', $3, 500, '2026-02-02', $4)",
        vec![id.into(), member.into(), metric.into(), true.into()],
    )
    .await
    .expect("its credit");
    exec(
        "INSERT INTO idempotency_keys (tenant_id, caller, method, request_id, request, response, create_time) \
         VALUES ('acme', 'tester', 'RecordActivity', 'r-legacy', $1, $2, 1)",
        vec![stored_request.into(), stored_response.into()],
    )
    .await
    .expect("its key");
    drop(db);

    // The service migrates the rest as it starts.
    let app = TestApp::spawn_with(
        milestones_suite::fresh_database_url().await,
        progress_url,
        &["goal", "progress"],
        None,
    )
    .await;
    let mut prog = app.progress("acme", &[Role::Service]).await;
    let replay = prog
        .record_activity(request.clone())
        .await
        .expect("the retry replays")
        .into_inner();
    assert_eq!(replay.name, format!("activities/{id}"));
    assert_eq!(
        replay
            .credited_amounts
            .iter()
            .map(|c| (c.member.clone(), c.amount))
            .collect::<Vec<_>>(),
        vec![(format!("members/{member}"), 500)],
        "its credit is read from its activity_credits row"
    );
    let reused = prog
        .record_activity(p::RecordActivityRequest { value: 501, ..request })
        .await;
    assert_eq!(
        reason(&expect_code(reused, Code::FailedPrecondition)),
        "REQUEST_ID_REUSED"
    );
    app.stop().await;
}
