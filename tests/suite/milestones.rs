//! Milestones: lifecycle, listing, etags, revisions, reviews, alignment and
//! idempotent creation.

use milestones_api::goal as pb;
use milestones_suite::{GoalClient, TestApp};
use tonic::Code;

use crate::fixtures::*;

struct Org {
    emea: pb::Team,
    dach: pb::Team,
    nordics: pb::Team,
    ada: pb::Member,
    bob: pb::Member,
    cy: pb::Member,
    arr: pb::Metric,
}

/// EMEA with sub-teams DACH and Nordics; Ada and Bob directly in EMEA, Cy
/// in DACH; one revenue metric.
async fn org(c: &mut GoalClient) -> Org {
    let emea = team(c, "EMEA", "").await;
    let dach = team(c, "DACH", &emea.name).await;
    let nordics = team(c, "Nordics", &emea.name).await;
    let ada = member(c, "Ada", pb::MemberRole::Rep).await;
    let bob = member(c, "Bob", pb::MemberRole::Rep).await;
    let cy = member(c, "Cy", pb::MemberRole::Rep).await;
    for (m, t) in [(&ada, &emea), (&bob, &emea), (&cy, &dach)] {
        membership(c, m, t, date(2020, 1, 1), None).await.expect("membership");
    }
    let arr = revenue_metric(c, "New ARR").await;
    Org {
        emea,
        dach,
        nordics,
        ada,
        bob,
        cy,
        arr,
    }
}

fn mask(paths: &[&str]) -> Option<prost_types::FieldMask> {
    Some(prost_types::FieldMask {
        paths: paths.iter().map(|p| p.to_string()).collect(),
    })
}

/// DRAFT → ACTIVE → ACHIEVED, with invalid transitions refused and drafts
/// (only) deletable.
#[tokio::test]
async fn lifecycle_transitions() {
    let app = TestApp::spawn().await;
    let mut c = app.admin("acme").await;
    let o = org(&mut c).await;
    let m = create_milestone(
        &mut c,
        milestone_in(&o.ada.name, &o.arr.name, "FY2027-Q1", 500_000),
        false,
    )
    .await
    .expect("create");
    assert_eq!(m.state, pb::MilestoneState::Draft as i32);
    assert!(m.next_review_date.is_none());
    let closed_early = c
        .close_milestone(pb::CloseMilestoneRequest {
            name: m.name.clone(),
            outcome: pb::MilestoneState::Achieved as i32,
            ..Default::default()
        })
        .await;
    assert_eq!(
        reason(&expect_code(closed_early, Code::FailedPrecondition)),
        "INVALID_STATE_TRANSITION"
    );
    let active = c
        .activate_milestone(pb::ActivateMilestoneRequest {
            name: m.name.clone(),
            ..Default::default()
        })
        .await
        .expect("activate")
        .into_inner();
    assert_eq!(active.state, pb::MilestoneState::Active as i32);
    assert!(
        active.next_review_date.is_some(),
        "activation schedules the first review"
    );
    let not_draft = c
        .delete_milestone(pb::DeleteMilestoneRequest {
            name: m.name.clone(),
            ..Default::default()
        })
        .await;
    assert_eq!(
        reason(&expect_code(not_draft, Code::FailedPrecondition)),
        "MILESTONE_NOT_DRAFT"
    );
    let done = c
        .close_milestone(pb::CloseMilestoneRequest {
            name: m.name.clone(),
            outcome: pb::MilestoneState::Achieved as i32,
            final_value: 612_000,
            ..Default::default()
        })
        .await
        .expect("close")
        .into_inner();
    assert_eq!(
        (done.state, done.final_value),
        (pb::MilestoneState::Achieved as i32, Some(612_000))
    );
    // Closed milestones no longer change.
    let late = c
        .update_milestone(pb::UpdateMilestoneRequest {
            milestone: Some(pb::Milestone {
                name: m.name.clone(),
                display_name: "renamed".into(),
                ..Default::default()
            }),
            update_mask: mask(&["display_name"]),
            ..Default::default()
        })
        .await;
    assert_eq!(reason(&expect_code(late, Code::FailedPrecondition)), "MILESTONE_CLOSED");

    let draft = create_milestone(&mut c, milestone_in(&o.bob.name, &o.arr.name, "FY2027-Q1", 1), false)
        .await
        .expect("draft");
    c.delete_milestone(pb::DeleteMilestoneRequest {
        name: draft.name.clone(),
        ..Default::default()
    })
    .await
    .expect("delete draft");
    expect_code(
        c.get_milestone(pb::GetMilestoneRequest { name: draft.name }).await,
        Code::NotFound,
    );
    app.stop().await;
}

/// Filters by owner, team subtree, period and state, and pages through
/// results with tokens bound to their query.
#[tokio::test]
async fn list_filters_and_pagination() {
    let app = TestApp::spawn().await;
    let mut c = app.admin("acme").await;
    let o = org(&mut c).await;
    for period in ["FY2027-Q1", "FY2027-Q2", "FY2027-Q3"] {
        for owner in [&o.ada.name, &o.bob.name, &o.cy.name, &o.dach.name] {
            create_milestone(
                &mut c,
                milestone_in(owner, &o.arr.name, period, 100),
                period == "FY2027-Q1",
            )
            .await
            .expect("create");
        }
    }
    let other = team(&mut c, "AMER", "").await;
    create_milestone(&mut c, milestone_in(&other.name, &o.arr.name, "FY2027-Q1", 100), false)
        .await
        .expect("amer");

    let list = |r: pb::ListMilestonesRequest| {
        let mut c = c.clone();
        async move { c.list_milestones(r).await.expect("list").into_inner().milestones }
    };
    assert_eq!(
        list(pb::ListMilestonesRequest {
            owner: o.ada.name.clone(),
            ..Default::default()
        })
        .await
        .len(),
        3
    );
    let dach_subtree = list(pb::ListMilestonesRequest {
        team_subtree: o.dach.name.clone(),
        ..Default::default()
    })
    .await;
    assert_eq!(dach_subtree.len(), 6, "DACH's own and Cy's");
    let emea_q1 = list(pb::ListMilestonesRequest {
        team_subtree: o.emea.name.clone(),
        fiscal_period: "FY2027-Q1".into(),
        ..Default::default()
    })
    .await;
    assert_eq!(emea_q1.len(), 4, "AMER's is outside EMEA");
    let active = list(pb::ListMilestonesRequest {
        state: pb::MilestoneState::Active as i32,
        ..Default::default()
    })
    .await;
    assert_eq!(active.len(), 4);
    let on_day = list(pb::ListMilestonesRequest {
        active_on: date(2027, 5, 15),
        ..Default::default()
    })
    .await;
    assert!(on_day.iter().all(|m| m.fiscal_period == "FY2027-Q2"));
    assert_eq!(on_day.len(), 4);

    // Page through everything, 5 at a time: no duplicates, nothing missing.
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = c
            .list_milestones(pb::ListMilestonesRequest {
                page_size: 5,
                page_token: token.clone(),
                ..Default::default()
            })
            .await
            .expect("page")
            .into_inner();
        assert!(page.milestones.len() <= 5);
        seen.extend(page.milestones.into_iter().map(|m| m.name));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    let mut unique = seen.clone();
    unique.sort();
    unique.dedup();
    assert_eq!((seen.len(), unique.len()), (13, 13));

    // A token is refused for another query, and garbage is refused.
    let first = c
        .list_milestones(pb::ListMilestonesRequest {
            page_size: 2,
            ..Default::default()
        })
        .await
        .expect("page")
        .into_inner();
    let wrong_query = c
        .list_milestones(pb::ListMilestonesRequest {
            page_size: 2,
            page_token: first.next_page_token,
            owner: o.ada.name.clone(),
            ..Default::default()
        })
        .await;
    assert_eq!(
        violated_fields(&expect_code(wrong_query, Code::InvalidArgument)),
        vec!["page_token"]
    );
    let garbage = c
        .list_milestones(pb::ListMilestonesRequest {
            page_token: "%%%".into(),
            ..Default::default()
        })
        .await;
    assert_eq!(
        violated_fields(&expect_code(garbage, Code::InvalidArgument)),
        vec!["page_token"]
    );
    let negative = c
        .list_milestones(pb::ListMilestonesRequest {
            page_size: -1,
            ..Default::default()
        })
        .await;
    assert_eq!(
        violated_fields(&expect_code(negative, Code::InvalidArgument)),
        vec!["page_size"]
    );
    app.stop().await;
}

/// A stale etag is refused with ABORTED and leaves the milestone unchanged;
/// the current etag succeeds.
#[tokio::test]
async fn stale_etag_is_rejected() {
    let app = TestApp::spawn().await;
    let mut c = app.admin("acme").await;
    let o = org(&mut c).await;
    let m = create_milestone(&mut c, milestone_in(&o.ada.name, &o.arr.name, "FY2027-Q1", 100), false)
        .await
        .expect("create");
    let rename = |etag: &str, name: &str| pb::UpdateMilestoneRequest {
        milestone: Some(pb::Milestone {
            name: m.name.clone(),
            display_name: name.into(),
            etag: etag.into(),
            ..Default::default()
        }),
        update_mask: mask(&["display_name"]),
        ..Default::default()
    };
    let first = c
        .update_milestone(rename(&m.etag, "First"))
        .await
        .expect("first update")
        .into_inner();
    assert_ne!(first.etag, m.etag);
    let stale = c.update_milestone(rename(&m.etag, "Second")).await;
    assert_eq!(reason(&expect_code(stale, Code::Aborted)), "ETAG_MISMATCH");
    let now = c
        .get_milestone(pb::GetMilestoneRequest { name: m.name.clone() })
        .await
        .expect("get")
        .into_inner();
    assert_eq!(
        (now.display_name.as_str(), now.etag.as_str()),
        ("First", first.etag.as_str())
    );
    app.stop().await;
}

/// Changing an active milestone's terms needs a reason and records a
/// revision with the terms before and after; drafts change freely.
#[tokio::test]
async fn revisions_keep_the_history_of_terms() {
    let app = TestApp::spawn().await;
    let mut c = app.admin("acme").await;
    let o = org(&mut c).await;
    let draft = create_milestone(&mut c, milestone_in(&o.ada.name, &o.arr.name, "FY2027-Q1", 100), false)
        .await
        .expect("create");
    let set_target = |name: &str, target: i64, reason: &str| pb::UpdateMilestoneRequest {
        milestone: Some(pb::Milestone {
            name: name.into(),
            target,
            ..Default::default()
        }),
        update_mask: mask(&["target"]),
        revision_reason: reason.into(),
        request_id: String::new(),
    };
    let d = c
        .update_milestone(set_target(&draft.name, 150, ""))
        .await
        .expect("draft edit")
        .into_inner();
    assert_eq!((d.target, d.revision_count), (150, 0));

    let active = c
        .activate_milestone(pb::ActivateMilestoneRequest {
            name: draft.name.clone(),
            ..Default::default()
        })
        .await
        .expect("activate")
        .into_inner();
    let no_reason = c.update_milestone(set_target(&active.name, 200, "")).await;
    assert_eq!(
        violated_fields(&expect_code(no_reason, Code::InvalidArgument)),
        vec!["revision_reason"]
    );
    let r1 = c
        .update_milestone(set_target(&active.name, 200, "territory grew"))
        .await
        .expect("revise")
        .into_inner();
    assert_eq!((r1.target, r1.revision_count), (200, 1));
    let r2 = c
        .update_milestone(pb::UpdateMilestoneRequest {
            milestone: Some(pb::Milestone {
                name: active.name.clone(),
                end_date: date(2027, 4, 15),
                ..Default::default()
            }),
            update_mask: mask(&["end_date"]),
            revision_reason: "quarter extended".into(),
            request_id: String::new(),
        })
        .await
        .expect("extend")
        .into_inner();
    assert_eq!(r2.revision_count, 2);
    assert_eq!(r2.fiscal_period, "", "no longer exactly a fiscal quarter");
    // Renaming is not a change of terms.
    c.update_milestone(pb::UpdateMilestoneRequest {
        milestone: Some(pb::Milestone {
            name: active.name.clone(),
            display_name: "Q1+".into(),
            ..Default::default()
        }),
        update_mask: mask(&["display_name"]),
        ..Default::default()
    })
    .await
    .expect("rename");

    let revisions = c
        .list_milestone_revisions(pb::ListMilestoneRevisionsRequest {
            parent: active.name.clone(),
            ..Default::default()
        })
        .await
        .expect("revisions")
        .into_inner()
        .milestone_revisions;
    assert_eq!(revisions.len(), 2);
    assert_eq!(revisions[0].revision_number, 1);
    assert_eq!(revisions[0].reason, "territory grew");
    assert_eq!(revisions[0].changed_fields, vec!["target"]);
    assert_eq!(revisions[0].previous_terms.as_ref().map(|t| t.target), Some(150));
    assert_eq!(revisions[0].new_terms.as_ref().map(|t| t.target), Some(200));
    assert_eq!(revisions[1].changed_fields, vec!["end_date"]);
    assert_eq!(
        revisions[1].new_terms.as_ref().and_then(|t| t.end_date),
        date(2027, 4, 15)
    );
    assert_eq!(revisions[1].author, "tester");
    app.stop().await;
}

/// Reviews keep or adjust (adjusting records a revision), schedule the next
/// review, and ListDueReviews lists what is due by a date.
#[tokio::test]
async fn reviews_and_due_reviews() {
    let app = TestApp::spawn().await;
    let mut c = app.admin("acme").await;
    let o = org(&mut c).await;
    let m = create_milestone(&mut c, milestone_in(&o.ada.name, &o.arr.name, "FY2030", 1_000), true)
        .await
        .expect("create active");
    let other = create_milestone(&mut c, milestone_in(&o.bob.name, &o.arr.name, "FY2030", 1_000), true)
        .await
        .expect("create active");
    create_milestone(&mut c, milestone_in(&o.cy.name, &o.arr.name, "FY2030", 1_000), false)
        .await
        .expect("draft is never due");
    let first_due = m.next_review_date.expect("scheduled");

    let due = |y| pb::ListDueReviewsRequest {
        as_of_date: date(y, 12, 31),
        ..Default::default()
    };
    let nothing = c
        .list_due_reviews(pb::ListDueReviewsRequest {
            as_of_date: date(2020, 1, 1),
            ..Default::default()
        })
        .await;
    assert!(nothing.expect("due").into_inner().milestones.is_empty());
    let both = c
        .list_due_reviews(due(first_due.year + 1))
        .await
        .expect("due")
        .into_inner();
    assert_eq!(both.milestones.len(), 2);

    let keep = c
        .review_milestone(pb::ReviewMilestoneRequest {
            name: m.name.clone(),
            outcome: pb::ReviewOutcome::Keep as i32,
            notes: "on track".into(),
            next_review_date: date(2099, 1, 1),
            ..Default::default()
        })
        .await
        .expect("keep")
        .into_inner();
    assert_eq!(keep.next_review_date, date(2099, 1, 1));
    assert!(keep.revision.is_empty());
    let after = c
        .list_due_reviews(due(first_due.year + 1))
        .await
        .expect("due")
        .into_inner();
    assert_eq!(
        after.milestones.iter().map(|x| &x.name).collect::<Vec<_>>(),
        vec![&other.name]
    );

    // ADJUST needs terms and notes; with them it records a revision.
    let missing = c
        .review_milestone(pb::ReviewMilestoneRequest {
            name: m.name.clone(),
            outcome: pb::ReviewOutcome::Adjust as i32,
            ..Default::default()
        })
        .await;
    assert_eq!(
        violated_fields(&expect_code(missing, Code::InvalidArgument)),
        vec!["adjusted_terms"]
    );
    let adjust = c
        .review_milestone(pb::ReviewMilestoneRequest {
            name: m.name.clone(),
            outcome: pb::ReviewOutcome::Adjust as i32,
            notes: "market shrank".into(),
            adjusted_terms: Some(pb::MilestoneTerms {
                target: 800,
                stretch_target: Some(1_000),
                start_date: m.start_date,
                end_date: m.end_date,
                checkpoints: vec![],
            }),
            next_review_date: date(2099, 6, 1),
            request_id: String::new(),
        })
        .await
        .expect("adjust")
        .into_inner();
    assert_eq!(adjust.revision, format!("{}/revisions/1", m.name));
    let now = c
        .get_milestone(pb::GetMilestoneRequest { name: m.name.clone() })
        .await
        .expect("get")
        .into_inner();
    assert_eq!(
        (now.target, now.stretch_target, now.revision_count),
        (800, Some(1_000), 1)
    );
    assert_eq!(now.next_review_date, date(2099, 6, 1));
    let reviews = c
        .list_milestone_reviews(pb::ListMilestoneReviewsRequest {
            parent: m.name.clone(),
            ..Default::default()
        })
        .await
        .expect("reviews")
        .into_inner()
        .milestone_reviews;
    assert_eq!(reviews.len(), 2);

    // Drafts are not reviewed.
    let draft = create_milestone(&mut c, milestone_in(&o.bob.name, &o.arr.name, "FY2031", 5), false)
        .await
        .expect("d");
    let r = c
        .review_milestone(pb::ReviewMilestoneRequest {
            name: draft.name,
            outcome: pb::ReviewOutcome::Keep as i32,
            ..Default::default()
        })
        .await;
    assert_eq!(
        reason(&expect_code(r, Code::FailedPrecondition)),
        "MILESTONE_NOT_ACTIVE"
    );
    app.stop().await;
}

/// A team milestone's alignment sums its children's targets, ignores
/// cancelled children, and names members and sub-teams without one.
#[tokio::test]
async fn alignment_shows_coverage_and_gaps() {
    let app = TestApp::spawn().await;
    let mut c = app.admin("acme").await;
    let o = org(&mut c).await;
    let parent = create_milestone(
        &mut c,
        milestone_in(&o.emea.name, &o.arr.name, "FY2027", 1_000_000),
        true,
    )
    .await
    .expect("parent");
    let child = |owner: &str, target| {
        let mut m = milestone_in(owner, &o.arr.name, "FY2027-Q1", target);
        m.parent = parent.name.clone();
        m
    };
    create_milestone(&mut c, child(&o.ada.name, 300_000), true)
        .await
        .expect("ada");
    create_milestone(&mut c, child(&o.dach.name, 450_000), true)
        .await
        .expect("dach");
    let cancelled = create_milestone(&mut c, child(&o.bob.name, 999_999), true)
        .await
        .expect("bob");
    c.cancel_milestone(pb::CancelMilestoneRequest {
        name: cancelled.name,
        reason: "left".into(),
        ..Default::default()
    })
    .await
    .expect("cancel");

    let a = c
        .get_alignment(pb::GetAlignmentRequest {
            name: parent.name.clone(),
        })
        .await
        .expect("alignment")
        .into_inner();
    assert_eq!(a.children.len(), 2);
    assert_eq!(a.children_target_sum, 750_000);
    assert_eq!(a.coverage_basis_points, 7_500);
    assert_eq!(a.uncovered_target, 250_000);
    // The alignment day is today, clamped into FY2027 (2027-01-01..12-31).
    assert_eq!(a.uncovered_members, vec![o.bob.name.clone()]);
    assert_eq!(a.uncovered_teams, vec![o.nordics.name.clone()]);
    app.stop().await;
}

/// Creating with the same request_id twice creates once and returns the
/// first result; reusing it for another payload is refused.
#[tokio::test]
async fn request_ids_make_creates_idempotent() {
    let app = TestApp::spawn().await;
    let mut c = app.admin("acme").await;
    let o = org(&mut c).await;
    let req = |target| pb::CreateMilestoneRequest {
        milestone: Some(milestone_in(&o.ada.name, &o.arr.name, "FY2027-Q1", target)),
        activate: true,
        request_id: "6f1c2a8e-0b7d-4f55-9a57-3b4f2f7d9e10".into(),
    };
    let first = c.create_milestone(req(100)).await.expect("first").into_inner();
    let retry = c.create_milestone(req(100)).await.expect("retry").into_inner();
    assert_eq!(first, retry);
    let reused = c.create_milestone(req(999)).await;
    assert_eq!(
        reason(&expect_code(reused, Code::FailedPrecondition)),
        "REQUEST_ID_REUSED"
    );
    assert_eq!(all_milestones(&mut c).await.len(), 1);
    app.stop().await;
}
