//! The change feed: replay then tail, resumable, tenant-scoped, and without
//! skipped sequences under concurrent writers.

use std::collections::BTreeSet;
use std::time::Duration;

use milestones_api::goal as pb;
use milestones_suite::{GoalClient, TestApp};
use tonic::Code;

use crate::fixtures::*;

type Feed = tonic::Streaming<pb::WatchChangesResponse>;

async fn watch(c: &mut GoalClient, after: i64) -> Feed {
    c.watch_changes(pb::WatchChangesRequest { after_sequence: after })
        .await
        .expect("watch")
        .into_inner()
}

/// The next event on the feed, skipping heartbeats; panics after 10 s.
async fn next_event(feed: &mut Feed) -> pb::ChangeEvent {
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match feed.message().await.expect("feed message").expect("feed open").kind {
                Some(pb::watch_changes_response::Kind::Event(e)) => return e,
                _ => continue,
            }
        }
    })
    .await
    .expect("an event within 10 s")
}

/// Events up to the first heartbeat (the replay), in order.
async fn replay(feed: &mut Feed) -> Vec<pb::ChangeEvent> {
    let mut out = Vec::new();
    loop {
        match feed.message().await.expect("feed").expect("open").kind {
            Some(pb::watch_changes_response::Kind::Event(e)) => out.push(e),
            Some(pb::watch_changes_response::Kind::Heartbeat(h)) => {
                assert_eq!(h.head_sequence, out.last().map_or(0, |e| e.sequence));
                return out;
            }
            None => {}
        }
    }
}

/// The feed replays every change in order, then tails new ones; a consumer
/// resuming from its cursor gets exactly the rest.
#[tokio::test]
async fn replays_then_tails_then_resumes() {
    let app = TestApp::spawn().await;
    let mut c = app.admin("acme").await;
    let t = team(&mut c, "Sales", "").await;
    let arr = revenue_metric(&mut c, "ARR").await;
    let m = create_milestone(&mut c, milestone_in(&t.name, &arr.name, "FY2027-Q1", 10), false)
        .await
        .expect("m");

    let mut feed = watch(&mut c, 0).await;
    let events = replay(&mut feed).await;
    assert_eq!(events.len(), 3);
    assert!(events.windows(2).all(|w| w[0].sequence < w[1].sequence));
    assert_eq!(events[0].resource_name, t.name);
    assert_eq!(events[0].change_type, pb::ChangeType::Created as i32);
    assert!(matches!(
        events[1].resource,
        Some(pb::change_event::Resource::Metric(_))
    ));
    assert_eq!(events[2].tenant_id, "acme");
    let cursor = events[2].sequence;

    // Tail: a new change arrives on the open stream.
    c.activate_milestone(pb::ActivateMilestoneRequest {
        name: m.name.clone(),
        ..Default::default()
    })
    .await
    .expect("activate");
    let tailed = next_event(&mut feed).await;
    assert_eq!(tailed.resource_name, m.name);
    assert_eq!(tailed.change_type, pb::ChangeType::Updated as i32);
    match tailed.resource {
        Some(pb::change_event::Resource::Milestone(ref x)) => {
            assert_eq!(x.state, pb::MilestoneState::Active as i32)
        }
        other => panic!("expected a milestone, got {other:?}"),
    }
    drop(feed);

    // Resume from the stored cursor: only what came after it.
    let mut resumed = watch(&mut c, cursor).await;
    let rest = replay(&mut resumed).await;
    assert_eq!(
        rest.iter().map(|e| e.sequence).collect::<Vec<_>>(),
        vec![tailed.sequence]
    );

    // Another tenant sees none of it; a cursor ahead of the head is refused.
    let mut other = app.admin("globex").await;
    let mut theirs = watch(&mut other, 0).await;
    assert!(replay(&mut theirs).await.is_empty());
    let ahead = other
        .watch_changes(pb::WatchChangesRequest { after_sequence: 1_000 })
        .await;
    assert_eq!(reason(&expect_code(ahead, Code::OutOfRange)), "CURSOR_AHEAD");
    app.stop().await;
}

/// Under many concurrent writers, a consumer tailing the feed receives every
/// committed event exactly once, in increasing order: no sequence is skipped
/// because a later one committed first.
#[tokio::test]
async fn no_event_is_skipped_under_concurrent_writers() {
    let app = TestApp::spawn().await;
    let mut c = app.admin("acme").await;
    let mut feed = watch(&mut c, 0).await;
    assert!(replay(&mut feed).await.is_empty());

    const WRITERS: usize = 8;
    const PER_WRITER: usize = 25;
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let mut c = app.admin("acme").await;
        tasks.push(tokio::spawn(async move {
            for i in 0..PER_WRITER {
                team(&mut c, &format!("team {w}-{i}"), "").await;
            }
        }));
    }
    let consumer = tokio::spawn(async move {
        let mut seen = Vec::new();
        while seen.len() < WRITERS * PER_WRITER {
            seen.push(next_event(&mut feed).await.sequence);
        }
        seen
    });
    for t in tasks {
        t.await.expect("writer");
    }
    let seen = consumer.await.expect("consumer");
    assert!(seen.windows(2).all(|w| w[0] < w[1]), "strictly increasing");

    // What the tail delivered equals what a full replay now shows.
    let mut again = watch(&mut c, 0).await;
    let all: BTreeSet<i64> = replay(&mut again).await.into_iter().map(|e| e.sequence).collect();
    assert_eq!(all.len(), WRITERS * PER_WRITER);
    assert_eq!(seen.into_iter().collect::<BTreeSet<_>>(), all);
    app.stop().await;
}

/// Feeds survive a restart: events are stored, and a consumer resumes with
/// its cursor against the restarted server.
#[tokio::test]
async fn feed_survives_restart() {
    let app = TestApp::spawn().await;
    let url = app.database_url.clone();
    let mut c = app.admin("acme").await;
    team(&mut c, "Before", "").await;
    let mut feed = watch(&mut c, 0).await;
    let cursor = replay(&mut feed).await.last().map(|e| e.sequence).expect("one event");
    drop(feed);
    app.stop().await;

    let app = TestApp::spawn_on(url).await;
    let mut c = app.admin("acme").await;
    let after = team(&mut c, "After", "").await;
    let mut feed = watch(&mut c, cursor).await;
    let rest = replay(&mut feed).await;
    assert_eq!(
        rest.iter().map(|e| e.resource_name.clone()).collect::<Vec<_>>(),
        vec![after.name]
    );
    app.stop().await;
}

/// A suite service's token (role `service`, tenant `*`) reads every tenant's
/// events, each labelled with its tenant; `*` without the service role is
/// refused.
#[tokio::test]
async fn service_tokens_read_every_tenant() {
    use milestones_runtime::auth::{Role, ALL_TENANTS};
    let app = TestApp::spawn().await;
    let mut acme = app.admin("acme").await;
    let mut globex = app.admin("globex").await;
    team(&mut acme, "Acme", "").await;
    team(&mut globex, "Globex", "").await;
    let mut service = app.goal(ALL_TENANTS, &[Role::Service]).await;
    let tenants: Vec<String> = replay(&mut watch(&mut service, 0).await)
        .await
        .into_iter()
        .map(|e| e.tenant_id)
        .collect();
    assert_eq!(tenants, vec!["acme", "globex"]);
    let mut star_admin = app.goal(ALL_TENANTS, &[Role::Admin]).await;
    let refused = star_admin
        .watch_changes(pb::WatchChangesRequest { after_sequence: 0 })
        .await;
    expect_code(refused, Code::Unauthenticated);
    app.stop().await;
}
