//! The recognition service over real gRPC: badge, rule and reward CRUD with
//! validation, awards from milestone events exactly once, the points ledger
//! and redemptions under concurrency, kudos, feedback, visibility, and the
//! delivery drills (consumer and producer restarts, two replicas).

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use chrono::{Days, NaiveDate, Utc};
use milestones_api::goal as g;
use milestones_api::progress as p;
use milestones_api::recognition as r;
use milestones_runtime::auth::Role;
use milestones_suite::{
    eventually, fresh_database_url, test_settings, GoalClient, ProgressClient, RecognitionClient, TestApp,
};
use sea_orm::{ConnectionTrait, Database, Statement};
use tonic::Code;
use tonic_types::StatusExt;

use crate::fixtures::*;

// === Helpers ===

fn today() -> NaiveDate {
    Utc::now().date_naive()
}

fn wire(d: NaiveDate) -> Option<milestones_api::Date> {
    use chrono::Datelike;
    date(d.year(), d.month() as i32, d.day() as i32)
}

/// A member whose token subject is their lower-case name.
async fn person(goal: &mut GoalClient, name: &str, role: g::MemberRole, team: Option<&g::Team>) -> g::Member {
    let m = goal
        .create_member(g::CreateMemberRequest {
            member: Some(g::Member {
                display_name: name.into(),
                email: format!("{}@example.com", name.to_lowercase()),
                role: role as i32,
                subject: name.to_lowercase(),
                ..Default::default()
            }),
            request_id: String::new(),
        })
        .await
        .expect("create member")
        .into_inner();
    if let Some(t) = team {
        membership(goal, &m, t, wire(today() - Days::new(60)), None)
            .await
            .expect("membership");
    }
    m
}

/// A milestone over `start..=end` with checkpoints and a stretch target.
async fn goal_for(
    goal: &mut GoalClient,
    owner: &str,
    metric: &g::Metric,
    (start, end): (NaiveDate, NaiveDate),
    target: i64,
    checkpoints: &[i64],
    stretch: Option<i64>,
) -> g::Milestone {
    let m = g::Milestone {
        display_name: format!("Goal {target} on {}", metric.display_name),
        owner: owner.into(),
        metric: metric.name.clone(),
        start_date: wire(start),
        end_date: wire(end),
        target,
        stretch_target: stretch,
        checkpoints: checkpoints
            .iter()
            .enumerate()
            .map(|(i, t)| g::Checkpoint {
                display_name: format!("c{i}"),
                target: *t,
                due_date: None,
            })
            .collect(),
        ..Default::default()
    };
    create_milestone(goal, m, true).await.expect("milestone")
}

/// The current period: started a few days ago, ends in a few weeks.
fn current() -> (NaiveDate, NaiveDate) {
    (today() - Days::new(5), today() + Days::new(20))
}

fn ts(t: chrono::DateTime<Utc>) -> Option<prost_types::Timestamp> {
    Some(prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: 0,
    })
}

fn deal(
    member: &g::Member,
    metric: &g::Metric,
    value: i64,
    at: chrono::DateTime<Utc>,
    id: &str,
) -> p::RecordActivityRequest {
    p::RecordActivityRequest {
        member: member.name.clone(),
        metric: metric.name.clone(),
        value,
        occurred_at: ts(at),
        source: "crm".into(),
        external_reference: String::new(),
        credit_splits: vec![],
        request_id: id.into(),
    }
}

/// Records once progress knows the member and metric.
async fn record(prog: &ProgressClient, req: p::RecordActivityRequest) -> p::Activity {
    eventually("the activity to be accepted", || {
        let mut c = prog.clone();
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

/// Waits until progress tracks the milestone.
async fn tracked(prog: &ProgressClient, m: &g::Milestone) {
    let name = format!("{}/progress", m.name);
    eventually("the milestone to be tracked", || {
        let mut c = prog.clone();
        let name = name.clone();
        async move { c.get_progress(p::GetProgressRequest { name }).await.ok().map(|_| ()) }
    })
    .await
}

/// Waits until recognition's copy of the org knows the member.
async fn known(reco: &RecognitionClient, m: &g::Member) {
    let name = format!("{}/pointsBalance", m.name);
    eventually("recognition to know the member", || {
        let mut c = reco.clone();
        let name = name.clone();
        async move {
            c.get_points_balance(r::GetPointsBalanceRequest { name })
                .await
                .ok()
                .map(|_| ())
        }
    })
    .await
}

async fn badge(reco: &mut RecognitionClient, name: &str, tier: r::BadgeTier) -> r::Badge {
    reco.create_badge(r::CreateBadgeRequest {
        badge: Some(r::Badge {
            display_name: name.into(),
            tier: tier as i32,
            image_uri: "https://cdn.example.com/badge.png".into(),
            ..Default::default()
        }),
        request_id: String::new(),
    })
    .await
    .expect("badge")
    .into_inner()
}

fn rule(name: &str, trigger: r::RuleTrigger, points: i64, visibility: r::Visibility) -> r::Rule {
    r::Rule {
        display_name: name.into(),
        enabled: true,
        trigger: trigger as i32,
        points,
        visibility: visibility as i32,
        ..Default::default()
    }
}

async fn create_rule(reco: &mut RecognitionClient, rule: r::Rule) -> r::Rule {
    let req = r::CreateRuleRequest {
        rule: Some(rule),
        request_id: String::new(),
    };
    // Scopes name teams and metrics that recognition learns from goal's
    // feed a moment after they are created. ABORTED (nothing written) asks
    // for a retry, as when two replicas share one SQLite file.
    eventually("the rule to be created", || {
        let mut c = reco.clone();
        let req = req.clone();
        async move {
            match c.create_rule(req).await {
                Ok(r) => Some(r.into_inner()),
                Err(s) if matches!(s.code(), Code::NotFound | Code::Aborted) => None,
                Err(s) => panic!("create rule failed: {s:?}"),
            }
        }
    })
    .await
}

/// Every recognition the client may see (all pages), with filters.
async fn all_recognitions(reco: &RecognitionClient, filter: r::ListRecognitionsRequest) -> Vec<r::Recognition> {
    let mut c = reco.clone();
    let mut out = Vec::new();
    let mut token = String::new();
    loop {
        let page = c
            .list_recognitions(r::ListRecognitionsRequest {
                page_size: 500,
                page_token: token,
                ..filter.clone()
            })
            .await
            .expect("list recognitions")
            .into_inner();
        out.extend(page.recognitions);
        if page.next_page_token.is_empty() {
            return out;
        }
        token = page.next_page_token;
    }
}

/// Waits until exactly `n` recognitions are visible to the client.
async fn recognitions_become(reco: &RecognitionClient, n: usize) -> Vec<r::Recognition> {
    eventually(&format!("{n} recognitions"), || async {
        let all = all_recognitions(reco, Default::default()).await;
        (all.len() == n).then_some(all)
    })
    .await
}

async fn balance(reco: &RecognitionClient, m: &g::Member) -> i64 {
    reco.clone()
        .get_points_balance(r::GetPointsBalanceRequest {
            name: format!("{}/pointsBalance", m.name),
        })
        .await
        .expect("balance")
        .into_inner()
        .balance
}

fn member_of(rec: &r::Recognition) -> String {
    match &rec.recipient {
        Some(r::recognition::Recipient::Member(m)) => m.clone(),
        Some(r::recognition::Recipient::Team(t)) => t.clone(),
        None => String::new(),
    }
}

// === Catalog ===

/// Badges: field violations all at once, admins only, etags, ordered lists,
/// and no deleting a badge a rule names.
#[tokio::test]
async fn badges_are_validated_versioned_and_protected_while_in_use() {
    let app = TestApp::spawn_all().await;
    let mut admin = app.recognition("acme", &[Role::Admin]).await;
    let mut rep = app.recognition("acme", &[Role::Rep]).await;

    let bad = admin
        .create_badge(r::CreateBadgeRequest {
            badge: Some(r::Badge {
                display_name: String::new(),
                image_uri: "http://insecure.example.com/x.png".into(),
                ..Default::default()
            }),
            request_id: String::new(),
        })
        .await;
    let s = expect_code(bad, Code::InvalidArgument);
    assert_eq!(
        violated_fields(&s),
        vec!["badge.display_name", "badge.image_uri", "badge.tier"]
    );
    let denied = rep
        .create_badge(r::CreateBadgeRequest {
            badge: Some(r::Badge {
                display_name: "x".into(),
                tier: 1,
                ..Default::default()
            }),
            request_id: String::new(),
        })
        .await;
    expect_code(denied, Code::PermissionDenied);

    let gold = badge(&mut admin, "Closer", r::BadgeTier::Gold).await;
    let bronze = badge(&mut admin, "Starter", r::BadgeTier::Bronze).await;
    let listed = rep
        .list_badges(r::ListBadgesRequest {
            page_size: 1,
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner();
    assert_eq!(listed.badges, vec![bronze.clone()], "by tier first");
    let next = rep
        .list_badges(r::ListBadgesRequest {
            page_size: 1,
            page_token: listed.next_page_token,
        })
        .await
        .expect("page 2")
        .into_inner();
    assert_eq!(next.badges, vec![gold.clone()]);
    assert_eq!(
        rep.get_badge(r::GetBadgeRequest {
            name: gold.name.clone()
        })
        .await
        .expect("get")
        .into_inner(),
        gold
    );
    // Other tenants do not see it.
    let other = app.recognition("globex", &[Role::Admin]).await;
    expect_code(
        other
            .clone()
            .get_badge(r::GetBadgeRequest {
                name: gold.name.clone(),
            })
            .await,
        Code::NotFound,
    );

    let renamed = admin
        .update_badge(r::UpdateBadgeRequest {
            badge: Some(r::Badge {
                name: gold.name.clone(),
                display_name: "Quarter closer".into(),
                etag: gold.etag.clone(),
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["display_name".into()],
            }),
            request_id: String::new(),
        })
        .await
        .expect("rename")
        .into_inner();
    assert_eq!(
        (renamed.display_name.as_str(), renamed.tier),
        ("Quarter closer", gold.tier)
    );
    assert_ne!(renamed.etag, gold.etag);
    let stale = admin
        .update_badge(r::UpdateBadgeRequest {
            badge: Some(r::Badge {
                name: gold.name.clone(),
                display_name: "Lost update".into(),
                etag: gold.etag.clone(),
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["display_name".into()],
            }),
            request_id: String::new(),
        })
        .await;
    assert_eq!(reason(&expect_code(stale, Code::Aborted)), "ETAG_MISMATCH");

    let used_by = create_rule(
        &mut admin,
        r::Rule {
            badge: gold.name.clone(),
            ..rule("Closer", r::RuleTrigger::MilestoneAchieved, 0, r::Visibility::Public)
        },
    )
    .await;
    let in_use = admin
        .delete_badge(r::DeleteBadgeRequest {
            name: gold.name.clone(),
            ..Default::default()
        })
        .await;
    assert_eq!(reason(&expect_code(in_use, Code::FailedPrecondition)), "BADGE_IN_USE");
    admin
        .delete_rule(r::DeleteRuleRequest {
            name: used_by.name.clone(),
            etag: used_by.etag.clone(),
            request_id: String::new(),
        })
        .await
        .expect("a rule that never awarded can go");
    admin
        .delete_badge(r::DeleteBadgeRequest {
            name: gold.name.clone(),
            ..Default::default()
        })
        .await
        .expect("no longer in use");
    expect_code(
        admin.get_badge(r::GetBadgeRequest { name: gold.name }).await,
        Code::NotFound,
    );
    app.stop().await;
}

/// Rules: every faulty field named, trigger-specific fields checked, unknown
/// references NOT_FOUND, the trigger immutable, lists filtered.
#[tokio::test]
async fn rules_are_validated_and_their_trigger_is_immutable() {
    let app = TestApp::spawn_all().await;
    let mut admin = app.recognition("acme", &[Role::Admin]).await;
    let bad = admin
        .create_rule(r::CreateRuleRequest {
            rule: Some(r::Rule {
                display_name: "Streak".into(),
                trigger: r::RuleTrigger::AchievedNPeriodsInARow as i32,
                streak_length: 1,
                top_n: 3,
                points: 2_000_000,
                ..Default::default()
            }),
            request_id: String::new(),
        })
        .await;
    let fields = violated_fields(&expect_code(bad, Code::InvalidArgument));
    for f in ["rule.streak_length", "rule.top_n", "rule.points", "rule.visibility"] {
        assert!(fields.contains(&f.to_string()), "{f} in {fields:?}");
    }
    let nothing = admin
        .create_rule(r::CreateRuleRequest {
            rule: Some(rule(
                "Nothing",
                r::RuleTrigger::MilestoneAchieved,
                0,
                r::Visibility::Public,
            )),
            request_id: String::new(),
        })
        .await;
    assert_eq!(
        violated_fields(&expect_code(nothing, Code::InvalidArgument)),
        vec!["rule.badge"]
    );
    let unknown = admin
        .create_rule(r::CreateRuleRequest {
            rule: Some(r::Rule {
                scope_team: "teams/unknown".into(),
                ..rule("Scoped", r::RuleTrigger::MilestoneAchieved, 5, r::Visibility::Public)
            }),
            request_id: String::new(),
        })
        .await;
    expect_code(unknown, Code::NotFound);

    let streak = create_rule(
        &mut admin,
        r::Rule {
            streak_length: 3,
            ..rule(
                "Hat-trick",
                r::RuleTrigger::AchievedNPeriodsInARow,
                30,
                r::Visibility::Team,
            )
        },
    )
    .await;
    let top = create_rule(
        &mut admin,
        r::Rule {
            top_n: 3,
            enabled: false,
            ..rule("Podium", r::RuleTrigger::TopNAtPeriodClose, 50, r::Visibility::Public)
        },
    )
    .await;
    let immutable = admin
        .update_rule(r::UpdateRuleRequest {
            rule: Some(r::Rule {
                name: streak.name.clone(),
                trigger: r::RuleTrigger::CheckpointReached as i32,
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["trigger".into()],
            }),
            request_id: String::new(),
        })
        .await;
    assert_eq!(
        violated_fields(&expect_code(immutable, Code::InvalidArgument)),
        vec!["update_mask"]
    );
    let disabled = admin
        .update_rule(r::UpdateRuleRequest {
            rule: Some(r::Rule {
                name: streak.name.clone(),
                enabled: false,
                etag: streak.etag.clone(),
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["enabled".into()],
            }),
            request_id: "disable-1".into(),
        })
        .await
        .expect("disable")
        .into_inner();
    assert!(!disabled.enabled);
    assert_eq!(disabled.streak_length, 3, "untouched fields stay");
    // A retry with the same request_id returns the first result.
    let again = admin
        .update_rule(r::UpdateRuleRequest {
            rule: Some(r::Rule {
                name: streak.name.clone(),
                enabled: false,
                etag: streak.etag.clone(),
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["enabled".into()],
            }),
            request_id: "disable-1".into(),
        })
        .await
        .expect("replay")
        .into_inner();
    assert_eq!(again, disabled);
    let listed = admin
        .list_rules(r::ListRulesRequest {
            trigger: r::RuleTrigger::TopNAtPeriodClose as i32,
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner();
    assert_eq!(listed.rules, vec![top]);
    let enabled = admin
        .list_rules(r::ListRulesRequest {
            enabled_only: true,
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner();
    assert!(enabled.rules.is_empty());
    app.stop().await;
}

// === Awards ===

/// Milestone events become recognitions once per (rule, milestone, kind,
/// threshold), with points in the ledger: a void and a recovery award
/// nothing twice; scopes, disabled rules and rules created later award
/// nothing; filters and the feed show the awards.
#[tokio::test]
async fn milestone_events_award_exactly_once_with_points() {
    let app = TestApp::spawn_all().await;
    let mut goal = app.admin("acme").await;
    let prog = app.progress("acme", &[Role::Service]).await;
    let mut admin = app.recognition("acme", &[Role::Admin]).await;
    let sales = team(&mut goal, "Sales", "").await;
    let emea = team(&mut goal, "EMEA", &sales.name).await;
    let apac = team(&mut goal, "APAC", &sales.name).await;
    let ada = person(&mut goal, "Ada", g::MemberRole::Rep, Some(&emea)).await;
    let arr = revenue_metric(&mut goal, "ARR").await;
    let calls = revenue_metric(&mut goal, "Calls").await;
    let mine = goal_for(&mut goal, &ada.name, &arr, current(), 1_000, &[250, 500], Some(1_500)).await;
    let team_goal = goal_for(&mut goal, &emea.name, &arr, current(), 2_000, &[], None).await;
    tracked(&prog, &mine).await;
    tracked(&prog, &team_goal).await;
    known(&admin, &ada).await;

    let gold = badge(&mut admin, "Closer", r::BadgeTier::Gold).await;
    let checkpoint = create_rule(
        &mut admin,
        rule(
            "Checkpoint",
            r::RuleTrigger::CheckpointReached,
            5,
            r::Visibility::Public,
        ),
    )
    .await;
    let achieved = create_rule(
        &mut admin,
        r::Rule {
            badge: gold.name.clone(),
            ..rule("Achieved", r::RuleTrigger::MilestoneAchieved, 100, r::Visibility::Team)
        },
    )
    .await;
    let stretch = create_rule(
        &mut admin,
        r::Rule {
            scope_team: sales.name.clone(),
            scope_metric: arr.name.clone(),
            ..rule("Stretch", r::RuleTrigger::StretchAchieved, 40, r::Visibility::Private)
        },
    )
    .await;
    // Out of scope, or disabled: never award.
    create_rule(
        &mut admin,
        r::Rule {
            scope_team: apac.name.clone(),
            ..rule("APAC only", r::RuleTrigger::MilestoneAchieved, 7, r::Visibility::Public)
        },
    )
    .await;
    create_rule(
        &mut admin,
        r::Rule {
            scope_metric: calls.name.clone(),
            ..rule(
                "Calls only",
                r::RuleTrigger::CheckpointReached,
                7,
                r::Visibility::Public,
            )
        },
    )
    .await;
    create_rule(
        &mut admin,
        r::Rule {
            enabled: false,
            ..rule("Off", r::RuleTrigger::CheckpointReached, 9, r::Visibility::Public)
        },
    )
    .await;

    let now = Utc::now() - chrono::Duration::minutes(1);
    let first = record(&prog, deal(&ada, &arr, 600, now, "d1")).await;
    let all = recognitions_become(&admin, 2).await;
    assert!(all.iter().all(|x| x.rule == checkpoint.name && x.points == 5));
    assert_eq!(balance(&admin, &ada).await, 10);

    // Void and climb back: the checkpoints are not awarded again.
    prog.clone()
        .void_activity(p::VoidActivityRequest {
            name: first.name.clone(),
            reason: "reversed".into(),
            request_id: "v1".into(),
        })
        .await
        .expect("void");
    record(&prog, deal(&ada, &arr, 600, now, "d2")).await;
    // Target, stretch, and the team's target, in one go.
    record(&prog, deal(&ada, &arr, 1_500, now, "d3")).await;
    let all = recognitions_become(&admin, 5).await;
    let mut by_rule: BTreeMap<String, Vec<&r::Recognition>> = BTreeMap::new();
    for x in &all {
        by_rule.entry(x.rule.clone()).or_default().push(x);
    }
    assert_eq!(by_rule[&checkpoint.name].len(), 2);
    let achieved_awards = &by_rule[&achieved.name];
    assert_eq!(achieved_awards.len(), 2, "ada's milestone and her team's");
    let team_award = achieved_awards
        .iter()
        .find(|x| matches!(x.recipient, Some(r::recognition::Recipient::Team(_))))
        .expect("team award");
    assert_eq!(
        (team_award.points, team_award.badge.as_str()),
        (0, gold.name.as_str()),
        "no points to teams"
    );
    let ada_award = achieved_awards
        .iter()
        .find(|x| member_of(x) == ada.name)
        .expect("ada's award");
    assert_eq!(ada_award.milestone, mine.name);
    assert_eq!(ada_award.recipient_teams, vec![emea.name.clone(), sales.name.clone()]);
    assert_eq!(ada_award.trigger, r::RuleTrigger::MilestoneAchieved as i32);
    assert!(ada_award.reason.contains("Achieved"), "{}", ada_award.reason);
    assert_eq!(by_rule[&stretch.name].len(), 1);
    assert_eq!(balance(&admin, &ada).await, 10 + 100 + 40);

    // The ledger adds up to the balance, and names each cause.
    let entries = admin
        .list_points_entries(r::ListPointsEntriesRequest {
            parent: ada.name.clone(),
            ..Default::default()
        })
        .await
        .expect("entries")
        .into_inner()
        .points_entries;
    assert_eq!(entries.iter().map(|e| e.amount).sum::<i64>(), 150);
    assert_eq!(entries[0].balance_after, 150, "newest first");
    assert!(entries
        .iter()
        .all(|e| matches!(&e.cause, Some(r::points_entry::Cause::Recognition(n)) if all.iter().any(|x| &x.name == n))));

    // Filters.
    let of_rule = all_recognitions(
        &admin,
        r::ListRecognitionsRequest {
            rule: stretch.name.clone(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(of_rule.len(), 1);
    let of_ada = all_recognitions(
        &admin,
        r::ListRecognitionsRequest {
            member: ada.name.clone(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(of_ada.len(), 4);
    let in_apac = all_recognitions(
        &admin,
        r::ListRecognitionsRequest {
            team: apac.name.clone(),
            ..Default::default()
        },
    )
    .await;
    assert!(in_apac.is_empty());
    let in_sales = all_recognitions(
        &admin,
        r::ListRecognitionsRequest {
            team: sales.name.clone(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(in_sales.len(), 5);
    let future = all_recognitions(
        &admin,
        r::ListRecognitionsRequest {
            start_time: ts(Utc::now() + chrono::Duration::hours(1)),
            ..Default::default()
        },
    )
    .await;
    assert!(future.is_empty());
    let bad_window = admin
        .list_recognitions(r::ListRecognitionsRequest {
            start_time: ts(Utc::now()),
            end_time: ts(Utc::now() - chrono::Duration::hours(1)),
            ..Default::default()
        })
        .await;
    assert_eq!(
        violated_fields(&expect_code(bad_window, Code::InvalidArgument)),
        vec!["end_time"]
    );
    // Paging newest first covers everything once.
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = admin
            .list_recognitions(r::ListRecognitionsRequest {
                page_size: 2,
                page_token: token,
                ..Default::default()
            })
            .await
            .expect("page")
            .into_inner();
        seen.extend(page.recognitions.into_iter().map(|x| x.name));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(seen, all.iter().map(|x| x.name.clone()).collect::<Vec<_>>());

    // The feed replays them, with sequences.
    let mut feed = admin
        .watch_recognitions(r::WatchRecognitionsRequest { after_sequence: 0 })
        .await
        .expect("watch")
        .into_inner();
    let mut fed = Vec::new();
    while fed.len() < 5 {
        if let Some(r::watch_recognitions_response::Kind::Event(e)) =
            feed.message().await.expect("feed").expect("open").kind
        {
            assert!(e.sequence > 0);
            assert!(e.tenant_id.is_empty(), "one tenant's caller gets no tenant ids");
            fed.push(e);
        }
    }
    // A rule made and a disabled one enabled now award nothing for the past.
    create_rule(
        &mut admin,
        rule("Late", r::RuleTrigger::CheckpointReached, 1, r::Visibility::Public),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(all_recognitions(&admin, Default::default()).await.len(), 5);
    expect_code(
        admin
            .delete_rule(r::DeleteRuleRequest {
                name: checkpoint.name.clone(),
                ..Default::default()
            })
            .await,
        Code::FailedPrecondition,
    );
    app.stop().await;
}

/// First-in-team goes to the first member in scope only; a streak needs the
/// immediately preceding period achieved too.
#[tokio::test]
async fn first_in_team_and_streaks() {
    let app = TestApp::spawn_all().await;
    let mut goal = app.admin("acme").await;
    let prog = app.progress("acme", &[Role::Service]).await;
    let mut admin = app.recognition("acme", &[Role::Admin]).await;
    let sales = team(&mut goal, "Sales", "").await;
    let ada = person(&mut goal, "Ada", g::MemberRole::Rep, Some(&sales)).await;
    let bob = person(&mut goal, "Bob", g::MemberRole::Rep, Some(&sales)).await;
    let arr = revenue_metric(&mut goal, "ARR").await;
    known(&admin, &bob).await;
    let first = create_rule(
        &mut admin,
        r::Rule {
            scope_team: sales.name.clone(),
            ..rule("First", r::RuleTrigger::FirstInTeamToAchieve, 25, r::Visibility::Public)
        },
    )
    .await;
    let streak = create_rule(
        &mut admin,
        r::Rule {
            streak_length: 2,
            ..rule(
                "Two in a row",
                r::RuleTrigger::AchievedNPeriodsInARow,
                60,
                r::Visibility::Public,
            )
        },
    )
    .await;
    // Thirty-day periods: the previous one ends the day before this starts.
    let this = current();
    let previous = (this.0 - Days::new(26), this.0 - Days::new(1));
    let ada_now = goal_for(&mut goal, &ada.name, &arr, this, 100, &[], None).await;
    let bob_now = goal_for(&mut goal, &bob.name, &arr, this, 100, &[], None).await;
    let bob_before = goal_for(&mut goal, &bob.name, &arr, previous, 100, &[], None).await;
    for m in [&ada_now, &bob_now, &bob_before] {
        tracked(&prog, m).await;
    }
    let now = Utc::now() - chrono::Duration::minutes(1);
    let before = (previous.0 + Days::new(2))
        .and_hms_opt(12, 0, 0)
        .expect("time")
        .and_utc();
    record(&prog, deal(&bob, &arr, 100, before, "b0")).await;
    record(&prog, deal(&ada, &arr, 100, now, "a1")).await;
    record(&prog, deal(&bob, &arr, 100, now, "b1")).await;
    let all = recognitions_become(&admin, 3).await;
    let firsts: Vec<_> = all.iter().filter(|x| x.rule == first.name).collect();
    assert_eq!(firsts.len(), 2, "bob was first in the previous period, ada in this one");
    assert!(firsts
        .iter()
        .any(|x| member_of(x) == ada.name && x.milestone == ada_now.name));
    assert!(firsts
        .iter()
        .any(|x| member_of(x) == bob.name && x.milestone == bob_before.name));
    let streaks: Vec<_> = all.iter().filter(|x| x.rule == streak.name).collect();
    assert_eq!(streaks.len(), 1);
    assert_eq!(
        (member_of(streaks[0]), streaks[0].milestone.clone()),
        (bob.name.clone(), bob_now.name.clone())
    );
    app.stop().await;
}

/// At period close the top N by attainment (ties share a rank) are
/// awarded, and only members with a milestone on that period rank.
#[tokio::test]
async fn top_n_at_period_close() {
    let app = TestApp::spawn_all().await;
    let mut goal = app.admin("acme").await;
    let prog = app.progress("acme", &[Role::Service]).await;
    let mut admin = app.recognition("acme", &[Role::Admin]).await;
    let sales = team(&mut goal, "Sales", "").await;
    let arr = revenue_metric(&mut goal, "ARR").await;
    let names = ["Ada", "Bob", "Cy", "Dan"];
    let mut people = Vec::new();
    for n in names {
        people.push(person(&mut goal, n, g::MemberRole::Rep, Some(&sales)).await);
    }
    known(&admin, &people[3]).await;
    let top = create_rule(
        &mut admin,
        r::Rule {
            top_n: 2,
            scope_team: sales.name.clone(),
            ..rule("Podium", r::RuleTrigger::TopNAtPeriodClose, 70, r::Visibility::Public)
        },
    )
    .await;
    // A period that ended yesterday: record first, then create the
    // milestones, so progress closes them with their final values.
    let period = (today() - Days::new(20), today() - Days::new(1));
    let at = (period.0 + Days::new(3)).and_hms_opt(12, 0, 0).expect("time").and_utc();
    for (i, (m, v)) in people.iter().zip([300, 200, 200, 100]).enumerate() {
        record(&prog, deal(m, &arr, v, at, &format!("t{i}"))).await;
    }
    for m in &people {
        goal_for(&mut goal, &m.name, &arr, period, 100, &[], None).await;
    }
    let all = eventually("top-3 awards", || async {
        let all = all_recognitions(
            &admin,
            r::ListRecognitionsRequest {
                rule: top.name.clone(),
                ..Default::default()
            },
        )
        .await;
        (all.len() == 3).then_some(all)
    })
    .await;
    let mut awarded: Vec<String> = all.iter().map(member_of).collect();
    awarded.sort();
    let mut expected: Vec<String> = people[..3].iter().map(|m| m.name.clone()).collect();
    expected.sort();
    assert_eq!(awarded, expected, "ranks 1, 2, 2 are in the top 2; rank 4 is not");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(balance(&admin, &people[3]).await, 0);
    app.stop().await;
}

// === Points and rewards ===

/// AdjustPoints and RedeemReward: validation, idempotency by request_id,
/// every refusal with its reason and nothing debited.
#[tokio::test]
async fn points_adjustments_and_redemptions() {
    let app = TestApp::spawn_all().await;
    let mut goal = app.admin("acme").await;
    let mut admin = app.recognition("acme", &[Role::Admin]).await;
    let sales = team(&mut goal, "Sales", "").await;
    let ada = person(&mut goal, "Ada", g::MemberRole::Rep, Some(&sales)).await;
    let bob = person(&mut goal, "Bob", g::MemberRole::Rep, Some(&sales)).await;
    known(&admin, &bob).await;
    let mut as_ada = app.recognition_as("acme", "ada", &[Role::Rep]).await;
    let mut as_bob = app.recognition_as("acme", "bob", &[Role::Rep]).await;

    let bad = admin
        .adjust_points(r::AdjustPointsRequest {
            member: ada.name.clone(),
            amount: 0,
            reason: String::new(),
            request_id: String::new(),
        })
        .await;
    assert_eq!(
        violated_fields(&expect_code(bad, Code::InvalidArgument)),
        vec!["amount", "reason", "request_id"]
    );
    let adjust = |amount: i64, id: &str| r::AdjustPointsRequest {
        member: ada.name.clone(),
        amount,
        reason: "welcome bonus".into(),
        request_id: id.into(),
    };
    let credit = admin
        .adjust_points(adjust(100, "adj-1"))
        .await
        .expect("credit")
        .into_inner();
    let retry = admin
        .adjust_points(adjust(100, "adj-1"))
        .await
        .expect("retry")
        .into_inner();
    assert_eq!(credit, retry, "a retry returns the first result");
    assert_eq!(
        reason(&expect_code(
            admin.adjust_points(adjust(50, "adj-1")).await,
            Code::FailedPrecondition
        )),
        "REQUEST_ID_REUSED"
    );
    let overdraw = expect_code(
        admin.adjust_points(adjust(-101, "adj-2")).await,
        Code::FailedPrecondition,
    );
    assert_eq!(reason(&overdraw), "INSUFFICIENT_POINTS");
    assert_eq!(
        overdraw
            .get_details_error_info()
            .expect("info")
            .metadata
            .get("balance")
            .map(String::as_str),
        Some("100")
    );
    expect_code(as_ada.adjust_points(adjust(5, "adj-3")).await, Code::PermissionDenied);
    assert_eq!(balance(&admin, &ada).await, 100);

    let bad_reward = admin
        .create_reward(r::CreateRewardRequest {
            reward: Some(r::Reward {
                cost_points: 0,
                stock: Some(-1),
                ..Default::default()
            }),
            request_id: String::new(),
        })
        .await;
    assert_eq!(
        violated_fields(&expect_code(bad_reward, Code::InvalidArgument)),
        vec!["reward.display_name", "reward.cost_points", "reward.stock"]
    );
    let mug = admin
        .create_reward(r::CreateRewardRequest {
            reward: Some(r::Reward {
                display_name: "Mug".into(),
                cost_points: 30,
                available: true,
                stock: Some(1),
                ..Default::default()
            }),
            request_id: String::new(),
        })
        .await
        .expect("mug")
        .into_inner();
    let redeem = |member: &g::Member, id: &str, expected: Option<i64>| r::RedeemRewardRequest {
        reward: mug.name.clone(),
        member: member.name.clone(),
        expected_cost_points: expected,
        request_id: id.into(),
    };
    expect_code(
        as_bob.redeem_reward(redeem(&ada, "r0", None)).await,
        Code::PermissionDenied,
    );
    let changed = expect_code(
        as_ada.redeem_reward(redeem(&ada, "r1", Some(25))).await,
        Code::FailedPrecondition,
    );
    assert_eq!(reason(&changed), "REWARD_PRICE_CHANGED");
    let bought = as_ada
        .redeem_reward(redeem(&ada, "r2", Some(30)))
        .await
        .expect("redeem")
        .into_inner();
    assert_eq!((bought.cost_points, bought.reward_display_name.as_str()), (30, "Mug"));
    let replay = as_ada
        .redeem_reward(redeem(&ada, "r2", Some(30)))
        .await
        .expect("replay")
        .into_inner();
    assert_eq!(replay, bought, "charged once");
    assert_eq!(balance(&admin, &ada).await, 70);
    let sold_out = expect_code(
        as_ada.redeem_reward(redeem(&ada, "r3", None)).await,
        Code::FailedPrecondition,
    );
    assert_eq!(reason(&sold_out), "REWARD_OUT_OF_STOCK");
    let poor = expect_code(
        as_bob.redeem_reward(redeem(&bob, "r4", None)).await,
        Code::FailedPrecondition,
    );
    assert_eq!(reason(&poor), "REWARD_OUT_OF_STOCK", "stock is checked before points");
    let mug_now = admin
        .get_reward(r::GetRewardRequest { name: mug.name.clone() })
        .await
        .expect("get")
        .into_inner();
    assert_eq!(mug_now.stock, Some(0));
    assert_ne!(mug_now.etag, mug.etag, "a redemption changes a stocked reward's etag");
    admin
        .update_reward(r::UpdateRewardRequest {
            reward: Some(r::Reward {
                name: mug.name.clone(),
                available: false,
                stock: None,
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["available".into(), "stock".into()],
            }),
            request_id: String::new(),
        })
        .await
        .expect("unlimited but unavailable");
    let unavailable = expect_code(
        as_ada.redeem_reward(redeem(&ada, "r5", None)).await,
        Code::FailedPrecondition,
    );
    assert_eq!(reason(&unavailable), "REWARD_UNAVAILABLE");
    assert_eq!(balance(&admin, &ada).await, 70, "nothing debited by refusals");

    // Redemptions: members see their own.
    let mine = as_ada
        .list_redemptions(r::ListRedemptionsRequest::default())
        .await
        .expect("list")
        .into_inner();
    assert_eq!(mine.redemptions, vec![bought.clone()]);
    let bobs = as_bob
        .list_redemptions(r::ListRedemptionsRequest::default())
        .await
        .expect("list")
        .into_inner();
    assert!(bobs.redemptions.is_empty());
    expect_code(
        as_bob
            .get_redemption(r::GetRedemptionRequest {
                name: bought.name.clone(),
            })
            .await,
        Code::NotFound,
    );
    expect_code(
        as_bob
            .get_points_balance(r::GetPointsBalanceRequest {
                name: format!("{}/pointsBalance", ada.name),
            })
            .await,
        Code::PermissionDenied,
    );
    let entries = as_ada
        .list_points_entries(r::ListPointsEntriesRequest {
            parent: ada.name.clone(),
            ..Default::default()
        })
        .await
        .expect("own ledger")
        .into_inner()
        .points_entries;
    assert_eq!(entries.iter().map(|e| e.amount).sum::<i64>(), 70);
    assert!(matches!(&entries[0].cause, Some(r::points_entry::Cause::Redemption(n)) if *n == bought.name));
    app.stop().await;
}

/// Drill: concurrent redemptions racing on one balance never take it below
/// zero, and the successful ones add up.
#[tokio::test]
async fn concurrent_redemptions_never_overdraw() {
    let app = TestApp::spawn_all().await;
    let mut goal = app.admin("acme").await;
    let mut admin = app.recognition("acme", &[Role::Admin]).await;
    let ada = person(&mut goal, "Ada", g::MemberRole::Rep, None).await;
    known(&admin, &ada).await;
    admin
        .adjust_points(r::AdjustPointsRequest {
            member: ada.name.clone(),
            amount: 1_000,
            reason: "seed".into(),
            request_id: "seed".into(),
        })
        .await
        .expect("seed");
    let reward = |name: &str, cost: i64, stock: Option<i64>| r::CreateRewardRequest {
        reward: Some(r::Reward {
            display_name: name.into(),
            cost_points: cost,
            available: true,
            stock,
            ..Default::default()
        }),
        request_id: String::new(),
    };
    let lunch = admin
        .create_reward(reward("Lunch", 70, None))
        .await
        .expect("lunch")
        .into_inner();
    let mut tasks = Vec::new();
    for i in 0..30 {
        let mut c = app.recognition_as("acme", "ada", &[Role::Rep]).await;
        let req = r::RedeemRewardRequest {
            reward: lunch.name.clone(),
            member: ada.name.clone(),
            expected_cost_points: None,
            request_id: format!("lunch-{i}"),
        };
        tasks.push(tokio::spawn(async move { c.redeem_reward(req).await }));
    }
    let mut ok = 0;
    for t in tasks {
        match t.await.expect("task") {
            Ok(_) => ok += 1,
            Err(s) => {
                assert!(
                    (s.code() == Code::FailedPrecondition && reason(&s) == "INSUFFICIENT_POINTS")
                        || s.code() == Code::Aborted,
                    "unexpected {s:?}"
                );
            }
        }
    }
    assert_eq!(ok, 14, "1000 / 70 lunches fit");
    assert_eq!(balance(&admin, &ada).await, 1_000 - 14 * 70);
    let ledger = admin
        .list_points_entries(r::ListPointsEntriesRequest {
            parent: ada.name.clone(),
            page_size: 500,
            ..Default::default()
        })
        .await
        .expect("ledger")
        .into_inner()
        .points_entries;
    assert_eq!(ledger.len(), 15);
    assert_eq!(ledger.iter().map(|e| e.amount).sum::<i64>(), 20);
    assert!(ledger.iter().all(|e| e.balance_after >= 0));
    // And a limited stock is never oversold.
    let hoodie = admin
        .create_reward(reward("Hoodie", 1, Some(3)))
        .await
        .expect("hoodie")
        .into_inner();
    let mut tasks = Vec::new();
    for i in 0..10 {
        let mut c = admin.clone();
        let req = r::RedeemRewardRequest {
            reward: hoodie.name.clone(),
            member: ada.name.clone(),
            expected_cost_points: None,
            request_id: format!("hoodie-{i}"),
        };
        tasks.push(tokio::spawn(async move { c.redeem_reward(req).await.is_ok() }));
    }
    let mut sold = 0;
    for t in tasks {
        sold += usize::from(t.await.expect("task"));
    }
    assert_eq!(sold, 3);
    assert_eq!(balance(&admin, &ada).await, 20 - 3);
    app.stop().await;
}

// === Kudos and feedback ===

/// Kudos: not to oneself, only from members, a daily limit with RetryInfo,
/// and visibility for the recipient, the giver, the team and the chain.
#[tokio::test]
async fn kudos_are_limited_and_honour_visibility() {
    let mut settings = test_settings(
        fresh_database_url().await,
        fresh_database_url().await,
        fresh_database_url().await,
    );
    settings.recognition.kudos_daily_limit = 3;
    let app = TestApp::launch(settings, &["goal", "progress", "recognition"], None).await;
    let mut goal = app.admin("acme").await;
    let admin = app.recognition("acme", &[Role::Admin]).await;
    let sales = team(&mut goal, "Sales", "").await;
    let emea = team(&mut goal, "EMEA", &sales.name).await;
    let apac = team(&mut goal, "APAC", &sales.name).await;
    let ada = person(&mut goal, "Ada", g::MemberRole::Rep, Some(&emea)).await;
    let bob = person(&mut goal, "Bob", g::MemberRole::Rep, Some(&apac)).await;
    let cy = person(&mut goal, "Cy", g::MemberRole::Rep, Some(&emea)).await;
    person(&mut goal, "Dan", g::MemberRole::Rep, Some(&apac)).await;
    let eve = person(&mut goal, "Eve", g::MemberRole::Manager, Some(&sales)).await;
    known(&admin, &eve).await;
    let mut as_bob = app.recognition_as("acme", "bob", &[Role::Rep]).await;
    let mut as_ada = app.recognition_as("acme", "ada", &[Role::Rep]).await;
    let mut as_cy = app.recognition_as("acme", "cy", &[Role::Rep]).await;
    let mut as_dan = app.recognition_as("acme", "dan", &[Role::Rep]).await;
    let mut as_eve = app.recognition_as("acme", "eve", &[Role::Manager]).await;
    let kudos = |to: &g::Member, visibility: r::Visibility, id: &str| r::GiveKudosRequest {
        recipient: to.name.clone(),
        milestone: String::new(),
        message: "Great demo!".into(),
        visibility: visibility as i32,
        request_id: id.into(),
    };
    let to_self = expect_code(
        as_bob.give_kudos(kudos(&bob, r::Visibility::Public, "")).await,
        Code::InvalidArgument,
    );
    assert_eq!(violated_fields(&to_self), vec!["recipient"]);
    let empty = expect_code(
        as_bob
            .give_kudos(r::GiveKudosRequest {
                message: String::new(),
                visibility: 0,
                ..kudos(&ada, r::Visibility::Public, "")
            })
            .await,
        Code::InvalidArgument,
    );
    assert_eq!(violated_fields(&empty), vec!["message", "visibility"]);
    let stranger = app.recognition_as("acme", "nobody", &[Role::Rep]).await;
    expect_code(
        stranger
            .clone()
            .give_kudos(kudos(&ada, r::Visibility::Public, ""))
            .await,
        Code::PermissionDenied,
    );
    let unknown = expect_code(
        as_bob
            .give_kudos(r::GiveKudosRequest {
                milestone: "milestones/nope".into(),
                ..kudos(&ada, r::Visibility::Public, "")
            })
            .await,
        Code::NotFound,
    );
    assert_eq!(reason(&unknown), "NOT_FOUND");

    let private = as_bob
        .give_kudos(kudos(&ada, r::Visibility::Private, "k1"))
        .await
        .expect("private")
        .into_inner();
    assert_eq!(
        (private.giver.as_str(), private.recipient.as_str()),
        (bob.name.as_str(), ada.name.as_str())
    );
    let team_only = as_bob
        .give_kudos(kudos(&ada, r::Visibility::Team, "k2"))
        .await
        .expect("team")
        .into_inner();
    let public = as_bob
        .give_kudos(kudos(&ada, r::Visibility::Public, "k3"))
        .await
        .expect("public")
        .into_inner();
    let limited = expect_code(
        as_bob.give_kudos(kudos(&cy, r::Visibility::Public, "k4")).await,
        Code::ResourceExhausted,
    );
    assert_eq!(reason(&limited), "KUDOS_DAILY_LIMIT");
    let retry = limited.get_details_retry_info().expect("retry info");
    assert!(retry.retry_delay.is_some_and(|d| d <= Duration::from_secs(86_400)));
    // A retry of an accepted call is not a new kudos.
    assert_eq!(
        as_bob
            .give_kudos(kudos(&ada, r::Visibility::Public, "k3"))
            .await
            .expect("replay")
            .into_inner(),
        public
    );

    let visible = |c: &mut RecognitionClient, k: &r::Kudos| {
        let mut c = c.clone();
        let name = k.name.clone();
        async move { c.get_kudos(r::GetKudosRequest { name }).await.is_ok() }
    };
    // Recipient, giver and the manager chain see all three.
    for c in [&mut as_ada, &mut as_bob, &mut as_eve] {
        for k in [&private, &team_only, &public] {
            assert!(visible(c, k).await);
        }
    }
    // Ada's teammate sees team and public; Bob's teammate only public.
    assert!(!visible(&mut as_cy, &private).await);
    assert!(visible(&mut as_cy, &team_only).await);
    assert!(!visible(&mut as_dan, &team_only).await);
    assert!(visible(&mut as_dan, &public).await);
    let dans = as_dan
        .list_kudos(r::ListKudosRequest::default())
        .await
        .expect("list")
        .into_inner()
        .kudos;
    assert_eq!(dans, vec![public.clone()]);
    let of_bob = admin
        .clone()
        .list_kudos(r::ListKudosRequest {
            giver: bob.name.clone(),
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner()
        .kudos;
    assert_eq!(of_bob.len(), 3);

    // The feed honours visibility too: Dan's stream carries only the
    // public kudos, and a heartbeat once idle.
    let mut feed = as_dan
        .watch_recognitions(r::WatchRecognitionsRequest { after_sequence: 0 })
        .await
        .expect("watch")
        .into_inner();
    let mut seen = Vec::new();
    loop {
        match feed.message().await.expect("feed").expect("open").kind {
            Some(r::watch_recognitions_response::Kind::Event(e)) => match e.subject {
                Some(r::recognition_event::Subject::Kudos(k)) => seen.push(k.name),
                other => panic!("unexpected {other:?}"),
            },
            Some(r::watch_recognitions_response::Kind::Heartbeat(h)) => {
                assert!(h.head_sequence > 0);
                break;
            }
            None => {}
        }
    }
    assert_eq!(seen, vec![public.name.clone()]);
    app.stop().await;
}

/// Feedback is written by the manager chain only and read by the member and
/// the chain only: not peers, not admins outside the chain.
#[tokio::test]
async fn feedback_is_private_to_the_member_and_manager_chain() {
    let app = TestApp::spawn_all().await;
    let mut goal = app.admin("acme").await;
    let admin = app.recognition("acme", &[Role::Admin]).await;
    let sales = team(&mut goal, "Sales", "").await;
    let emea = team(&mut goal, "EMEA", &sales.name).await;
    let apac = team(&mut goal, "APAC", &sales.name).await;
    let ada = person(&mut goal, "Ada", g::MemberRole::Rep, Some(&emea)).await;
    let cy = person(&mut goal, "Cy", g::MemberRole::Rep, Some(&emea)).await;
    person(&mut goal, "Eve", g::MemberRole::Manager, Some(&sales)).await;
    person(&mut goal, "Fay", g::MemberRole::Manager, Some(&apac)).await;
    let root = person(&mut goal, "Root", g::MemberRole::Admin, None).await;
    known(&admin, &root).await;
    known(&admin, &cy).await;
    let mut as_eve = app.recognition_as("acme", "eve", &[Role::Manager]).await;
    let mut as_fay = app.recognition_as("acme", "fay", &[Role::Manager]).await;
    let mut as_ada = app.recognition_as("acme", "ada", &[Role::Rep]).await;
    let mut as_cy = app.recognition_as("acme", "cy", &[Role::Rep]).await;
    let mut as_root = app.recognition_as("acme", "root", &[Role::Admin]).await;
    let note = |member: &g::Member, body: &str| r::CreateFeedbackRequest {
        feedback: Some(r::Feedback {
            member: member.name.clone(),
            body: body.into(),
            kind: r::FeedbackKind::Coaching as i32,
            ..Default::default()
        }),
        request_id: String::new(),
    };
    let bad = expect_code(
        as_eve
            .create_feedback(r::CreateFeedbackRequest {
                feedback: Some(r::Feedback {
                    member: ada.name.clone(),
                    ..Default::default()
                }),
                request_id: String::new(),
            })
            .await,
        Code::InvalidArgument,
    );
    assert_eq!(violated_fields(&bad), vec!["feedback.body", "feedback.kind"]);
    let written = as_eve
        .create_feedback(note(&ada, "Qualify earlier"))
        .await
        .expect("chain")
        .into_inner();
    assert_eq!(written.author, format!("members/{}", as_member_id(&goal, "eve").await));
    expect_code(as_fay.create_feedback(note(&ada, "x")).await, Code::PermissionDenied);
    expect_code(as_cy.create_feedback(note(&ada, "x")).await, Code::PermissionDenied);
    expect_code(as_root.create_feedback(note(&ada, "x")).await, Code::PermissionDenied);
    expect_code(as_eve.create_feedback(note(&root, "x")).await, Code::PermissionDenied);
    let get = |c: &mut RecognitionClient| {
        let mut c = c.clone();
        let name = written.name.clone();
        async move {
            c.get_feedback(r::GetFeedbackRequest { name })
                .await
                .map(|f| f.into_inner())
        }
    };
    assert_eq!(get(&mut as_ada).await.expect("own"), written);
    assert_eq!(get(&mut as_eve).await.expect("chain"), written);
    for c in [&mut as_fay, &mut as_cy, &mut as_root] {
        expect_code(get(c).await, Code::PermissionDenied);
    }
    let listed = as_cy
        .list_feedback(r::ListFeedbackRequest::default())
        .await
        .expect("list")
        .into_inner();
    assert!(listed.feedback.is_empty());
    let listed = as_eve
        .list_feedback(r::ListFeedbackRequest::default())
        .await
        .expect("list")
        .into_inner();
    assert_eq!(listed.feedback, vec![written]);
    app.stop().await;
}

/// The member id of the goal member whose subject is `subject`.
async fn as_member_id(goal: &GoalClient, subject: &str) -> String {
    let members = goal
        .clone()
        .list_members(g::ListMembersRequest {
            page_size: 500,
            ..Default::default()
        })
        .await
        .expect("members")
        .into_inner()
        .members;
    members
        .into_iter()
        .find(|m| m.subject == subject)
        .map(|m| m.name.trim_start_matches("members/").to_string())
        .expect("member")
}

/// `milestones server` runs all three services by default.
#[tokio::test]
async fn the_server_runs_recognition_beside_the_others() {
    assert_eq!(milestones::suite::SERVICES, &["goal", "progress", "recognition"]);
    let app = TestApp::spawn_all().await;
    let mut c = app.recognition("acme", &[Role::Rep]).await;
    c.list_rules(r::ListRulesRequest::default()).await.expect("served");
    expect_code(
        c.watch_recognitions(r::WatchRecognitionsRequest { after_sequence: 99 })
            .await,
        Code::OutOfRange,
    );
    app.stop().await;
}

// === Delivery drills ===

/// How a drill runs.
struct DrillPlan {
    activities: usize,
    /// Recognition replicas consuming at once (on one database).
    replicas: usize,
    /// Stop and restart recognition mid-stream, and restart progress once.
    restarts: bool,
}

const DRILL_MEMBERS: usize = 40;
const DRILL_METRICS: usize = 10;
const DRILL_MILESTONES: usize = DRILL_MEMBERS * DRILL_METRICS;
const CHECKPOINTS: [i64; 4] = [20, 40, 60, 80];
const TARGET: i64 = 100;

fn stretch_of(j: usize) -> i64 {
    160 + (j % 3) as i64 * 20
}

/// The value of activity `i`; activity `i` counts toward milestone
/// `i % DRILL_MILESTONES`.
fn drill_value(i: usize) -> i64 {
    3 + ((7 * i) % 9) as i64
}

/// Starts a recognition-only server reading goal and progress at `peer`.
async fn recognition_at(peer: &TestApp, database_url: &str) -> TestApp {
    let mut settings = test_settings(String::new(), String::new(), database_url.to_string());
    settings.recognition.goal_endpoint = peer.endpoint();
    settings.recognition.progress_endpoint = peer.endpoint();
    TestApp::launch(settings, &["recognition"], None).await
}

async fn scalar(url: &str, sql: &str) -> i64 {
    let conn = Database::connect(url).await.expect("connect to a test database");
    let row = conn
        .query_one(Statement::from_string(conn.get_database_backend(), sql.to_string()))
        .await
        .expect("query")
        .expect("a row");
    let v: i64 = row.try_get("", "v").expect("value");
    let _ = conn.close().await;
    v
}

/// Waits until recognition has applied every milestone event progress
/// published (its cursor is at progress's head).
async fn caught_up(reco_url: &str, progress_url: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(180);
    let head = scalar(
        progress_url,
        "SELECT CAST(COALESCE(MAX(seq), 0) AS BIGINT) AS v FROM milestone_events",
    )
    .await;
    loop {
        let at = scalar(
            reco_url,
            "SELECT CAST(COALESCE(MAX(position), 0) AS BIGINT) AS v FROM feed_cursors WHERE feed = 'progress.milestone_events'",
        )
        .await;
        if at == head {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "recognition stuck at {at} of {head}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs a drill: an org of 40 reps with 10 milestones each, 4 rules, a
/// stream of activities in bulk, restarts as planned, then every award
/// checked against a computation of its own.
async fn run_drill(plan: DrillPlan) {
    let goal_url = fresh_database_url().await;
    let progress_url = fresh_database_url().await;
    let reco_url = fresh_database_url().await;
    let mut core = TestApp::spawn_with(goal_url, progress_url.clone(), &["goal", "progress"], None).await;
    let mut replicas = Vec::new();
    for _ in 0..plan.replicas {
        // One after the other: the first migrates the shared database.
        replicas.push(recognition_at(&core, &reco_url).await);
    }
    let mut goal = core.admin("acme").await;
    let admin = replicas[0].recognition("acme", &[Role::Admin]).await;
    let a = team(&mut goal, "A", "").await;
    let b = team(&mut goal, "B", "").await;
    let mut members = Vec::new();
    for i in 0..DRILL_MEMBERS {
        let t = if i.is_multiple_of(2) { &a } else { &b };
        members.push(person(&mut goal, &format!("Rep{i}"), g::MemberRole::Rep, Some(t)).await);
    }
    let mut metrics = Vec::new();
    for k in 0..DRILL_METRICS {
        metrics.push(revenue_metric(&mut goal, &format!("M{k}")).await);
    }
    // Milestone j belongs to member j / METRICS on metric j % METRICS.
    let mut milestones: Vec<Option<g::Milestone>> = vec![None; DRILL_MILESTONES];
    let mut tasks = Vec::new();
    for lane in 0..4 {
        let mut goal = goal.clone();
        let members = members.clone();
        let metrics = metrics.clone();
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            for j in (lane..DRILL_MILESTONES).step_by(4) {
                let m = goal_for(
                    &mut goal,
                    &members[j / DRILL_METRICS].name,
                    &metrics[j % DRILL_METRICS],
                    current(),
                    TARGET,
                    &CHECKPOINTS,
                    Some(stretch_of(j)),
                )
                .await;
                out.push((j, m));
            }
            out
        }));
    }
    for t in tasks {
        for (j, m) in t.await.expect("milestones") {
            milestones[j] = Some(m);
        }
    }
    let milestones: Vec<g::Milestone> = milestones.into_iter().map(|m| m.expect("created")).collect();
    let prog = core.progress("acme", &[Role::Service]).await;
    tracked(&prog, &milestones[DRILL_MILESTONES - 1]).await;
    let mut admin_rules = admin.clone();
    let gold = badge(&mut admin_rules, "Closer", r::BadgeTier::Gold).await;
    let checkpoint = create_rule(
        &mut admin_rules,
        rule(
            "Checkpoint",
            r::RuleTrigger::CheckpointReached,
            1,
            r::Visibility::Public,
        ),
    )
    .await;
    let achieved = create_rule(
        &mut admin_rules,
        r::Rule {
            badge: gold.name.clone(),
            ..rule("Achieved", r::RuleTrigger::MilestoneAchieved, 10, r::Visibility::Team)
        },
    )
    .await;
    let stretch = create_rule(
        &mut admin_rules,
        r::Rule {
            scope_team: a.name.clone(),
            ..rule(
                "Stretch in A",
                r::RuleTrigger::StretchAchieved,
                5,
                r::Visibility::Private,
            )
        },
    )
    .await;
    create_rule(
        &mut admin_rules,
        r::Rule {
            enabled: false,
            scope_metric: metrics[0].name.clone(),
            ..rule("Off", r::RuleTrigger::CheckpointReached, 2, r::Visibility::Public)
        },
    )
    .await;

    // The independent computation: totals per milestone, from the same
    // activities the test sends.
    let mut totals = vec![0i64; DRILL_MILESTONES];
    for i in 0..plan.activities {
        totals[i % DRILL_MILESTONES] += drill_value(i);
    }
    let mut expected: HashMap<(String, String), usize> = HashMap::new();
    let mut expected_points: HashMap<String, i64> = HashMap::new();
    let mut events = 0;
    for (j, m) in milestones.iter().enumerate() {
        let member = &members[j / DRILL_METRICS];
        let reached = CHECKPOINTS.iter().filter(|c| totals[j] >= **c).count();
        events += reached + usize::from(totals[j] >= TARGET) + usize::from(totals[j] >= stretch_of(j));
        let mut points = 0;
        if reached > 0 {
            expected.insert((checkpoint.name.clone(), m.name.clone()), reached);
            points += reached as i64;
        }
        if totals[j] >= TARGET {
            expected.insert((achieved.name.clone(), m.name.clone()), 1);
            points += 10;
        }
        if totals[j] >= stretch_of(j) && (j / DRILL_METRICS).is_multiple_of(2) {
            expected.insert((stretch.name.clone(), m.name.clone()), 1);
            points += 5;
        }
        *expected_points.entry(member.name.clone()).or_default() += points;
    }
    let expected_total: usize = expected.values().sum();
    if plan.activities >= 10_000 {
        assert!(
            events >= 2_000,
            "the drill must cause at least 2000 milestone events ({events})"
        );
    }

    // Ingest in bulk, with the planned interruptions between batches.
    let at = Utc::now() - chrono::Duration::minutes(10);
    let batch = 500;
    let batches = plan.activities.div_ceil(batch);
    let mut stopped: Option<usize> = None;
    for n in 0..batches {
        if plan.restarts {
            match n {
                // Recognition goes down mid-stream, twice, and comes back.
                4 | 12 => {
                    let r = replicas.remove(0);
                    r.stop().await;
                    stopped = Some(n);
                }
                7 | 15 => {
                    replicas.insert(0, recognition_at(&core, &reco_url).await);
                    stopped = None;
                }
                // Progress (with goal) restarts where recognition looks.
                10 => {
                    let addr = core.addr;
                    let settings = core.settings.clone();
                    core.stop().await;
                    core = TestApp::launch(settings, &["goal", "progress"], Some(addr)).await;
                }
                _ => {}
            }
        }
        let requests: Vec<p::RecordActivityRequest> = (n * batch..((n + 1) * batch).min(plan.activities))
            .map(|i| {
                let j = i % DRILL_MILESTONES;
                deal(
                    &members[j / DRILL_METRICS],
                    &metrics[j % DRILL_METRICS],
                    drill_value(i),
                    at,
                    &format!("drill-{i}"),
                )
            })
            .collect();
        let mut c = core.progress("acme", &[Role::Service]).await;
        c.record_activities(p::RecordActivitiesRequest { requests })
            .await
            .expect("bulk record");
    }
    assert!(stopped.is_none(), "the plan ends with recognition running");
    caught_up(&reco_url, &core.progress_database_url).await;

    // Every expected award exactly once, nothing else.
    let admin = replicas[0].recognition("acme", &[Role::Admin]).await;
    let all = all_recognitions(&admin, Default::default()).await;
    let mut got: HashMap<(String, String), usize> = HashMap::new();
    let mut keys = std::collections::HashSet::new();
    for x in &all {
        *got.entry((x.rule.clone(), x.milestone.clone())).or_default() += 1;
        let key = (x.rule.clone(), x.milestone.clone(), x.milestone_event_sequence);
        assert!(keys.insert(key), "a duplicate award: {x:?}");
    }
    assert_eq!(all.len(), expected_total, "awards made");
    assert_eq!(got, expected, "awards per rule and milestone");
    for m in &members {
        assert_eq!(
            balance(&admin, m).await,
            expected_points[&m.name],
            "points of {}",
            m.name
        );
    }
    let ledger_rows = scalar(&reco_url, "SELECT CAST(COUNT(*) AS BIGINT) AS v FROM points_entries").await;
    assert_eq!(
        ledger_rows as usize,
        all.iter().filter(|x| x.points > 0).count(),
        "one entry per award with points"
    );
    for r in replicas {
        r.stop().await;
    }
    core.stop().await;
}

/// Drill 1: 10,000 activities causing over 2,000 milestone events while
/// recognition is stopped and restarted twice and progress restarted once:
/// every expected award exactly once, and the balances match.
#[tokio::test]
async fn drill_restarts_award_exactly_once() {
    run_drill(DrillPlan {
        activities: 10_000,
        replicas: 1,
        restarts: true,
    })
    .await;
}

/// Drill 2: two recognition replicas consuming at once on one database:
/// no duplicate awards (the cursor row lock and the UNIQUE keys).
#[tokio::test]
async fn drill_two_replicas_award_once() {
    run_drill(DrillPlan {
        activities: 10_000,
        replicas: 2,
        restarts: false,
    })
    .await;
}
