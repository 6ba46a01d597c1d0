//! The local copy of goal's org, metrics and milestones, fed by goal's
//! change feed.
//!
//! The consumer applies each event and moves its cursor in one transaction,
//! so a replayed event (delivery is at-least-once) changes nothing twice.
//! It reconnects with backoff when goal is unreachable; everything else in
//! this service keeps working from the copy in the meantime.

use std::time::Duration;

use milestones_api::goal as goal_pb;
use milestones_api::goal::change_event::Resource;
use milestones_api::goal::goal_service_client::GoalServiceClient;
use milestones_domain::calendar::format_date;
use milestones_domain::names::Collection;
use milestones_runtime::db::WriteTxn;
use milestones_runtime::identity::ServiceIdentity;
use milestones_runtime::telemetry::feed_span;
use milestones_runtime::wire::date_from_wire;
use milestones_runtime::ApiError;
use sea_orm::{ConnectionTrait, Statement, Value};
use tokio::sync::watch;
use tracing::Instrument;

use crate::ops::{Progress, Reconcile};

/// The cursor row of goal's feed in `feed_cursors`.
pub(crate) const GOAL_FEED: &str = "goal.changes";

/// Runs the consumer until `stop` flips.
pub async fn run(progress: Progress, endpoint: String, identity: ServiceIdentity, mut stop: watch::Receiver<bool>) {
    let mut backoff = Duration::from_millis(100);
    loop {
        if *stop.borrow() {
            return;
        }
        let result = tokio::select! {
            r = consume(&progress, &endpoint, &identity) => r,
            _ = async { let _ = stop.wait_for(|s| *s).await; } => return,
        };
        match result {
            Ok(()) => backoff = Duration::from_millis(100),
            Err(e) => {
                tracing::warn!(
                    error = format!("{e:#}"),
                    retry_in_ms = backoff.as_millis() as u64,
                    "goal feed interrupted"
                );
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = async { let _ = stop.wait_for(|s| *s).await; } => return,
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// One connection's worth of consuming: from the stored cursor until the
/// stream ends or fails.
async fn consume(progress: &Progress, endpoint: &str, identity: &ServiceIdentity) -> anyhow::Result<()> {
    let channel = identity
        .endpoint(endpoint)?
        .connect_timeout(Duration::from_secs(3))
        .connect()
        .await?;
    let mut client = GoalServiceClient::with_interceptor(channel, identity.interceptor("progress-service", None)?);
    let cursor = load_cursor(progress.db.conn()).await?;
    let mut stream = client
        .watch_changes(goal_pb::WatchChangesRequest { after_sequence: cursor })
        .await?
        .into_inner();
    while let Some(msg) = stream.message().await? {
        if let Some(goal_pb::watch_changes_response::Kind::Event(event)) = msg.kind {
            let span = feed_span(
                "goal.changes",
                "progress",
                event.sequence,
                &event.trace_parent,
                event.event_time.as_ref(),
            );
            progress.apply_goal_change(event).instrument(span).await?;
        }
    }
    Ok(())
}

/// How far the consumer got.
pub async fn load_cursor(conn: &impl ConnectionTrait) -> Result<i64, ApiError> {
    read_cursor(conn, "").await
}

/// How to hold the cursor row until the transaction ends (PostgreSQL; on
/// SQLite the one writer at a time already serialises them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CursorLock {
    /// An applier: one at a time (across replicas too), and no ingestion
    /// batch in flight while it changes the org.
    Apply,
    /// An ingestion batch: many at once, but not while a change is being
    /// applied, so a batch never counts with an org copy that a concurrent
    /// change (and its recompute) is about to make stale.
    Ingest,
}

/// The cursor, with its row locked as `lock` says.
pub async fn lock_cursor(conn: &impl ConnectionTrait, lock: CursorLock) -> Result<i64, ApiError> {
    if conn.get_database_backend() != sea_orm::DatabaseBackend::Postgres {
        return load_cursor(conn).await;
    }
    // An applier needs the row to exist to lock it. (Before the first
    // change there is no org to ingest against, so a batch that finds no
    // row has nothing to race with.)
    if lock == CursorLock::Apply {
        conn.execute(Statement::from_sql_and_values(
            conn.get_database_backend(),
            "INSERT INTO feed_cursors (feed, position) VALUES ($1, 0) ON CONFLICT (feed) DO NOTHING",
            [Value::from(GOAL_FEED)],
        ))
        .await?;
    }
    read_cursor(
        conn,
        match lock {
            CursorLock::Apply => " FOR UPDATE",
            CursorLock::Ingest => " FOR SHARE",
        },
    )
    .await
}

async fn read_cursor(conn: &impl ConnectionTrait, lock: &str) -> Result<i64, ApiError> {
    let row = conn
        .query_one(Statement::from_sql_and_values(
            conn.get_database_backend(),
            format!("SELECT position FROM feed_cursors WHERE feed = $1{lock}"),
            [Value::from(GOAL_FEED)],
        ))
        .await?;
    Ok(match row {
        Some(r) => r.try_get("", "position")?,
        None => 0,
    })
}

async fn store_cursor(conn: &impl ConnectionTrait, position: i64) -> Result<(), ApiError> {
    conn.execute(Statement::from_sql_and_values(
        conn.get_database_backend(),
        "INSERT INTO feed_cursors (feed, position) VALUES ($1, $2) \
         ON CONFLICT (feed) DO UPDATE SET position = excluded.position",
        [Value::from(GOAL_FEED), Value::from(position)],
    ))
    .await?;
    Ok(())
}

async fn exec(conn: &impl ConnectionTrait, sql: &str, values: Vec<Value>) -> Result<(), ApiError> {
    conn.execute(Statement::from_sql_and_values(conn.get_database_backend(), sql, values))
        .await?;
    Ok(())
}

fn id_of(collection: Collection, name: &str) -> Result<String, ApiError> {
    collection
        .parse(name)
        .map_err(|e| ApiError::Internal(anyhow::anyhow!("goal sent a bad name {name:?}: {e}")))
}

fn date_text(d: Option<&milestones_api::Date>) -> Option<String> {
    date_from_wire(d).ok().flatten().map(format_date)
}

impl Progress {
    /// Applies one goal change and stores the cursor, in one transaction.
    /// Events at or below the stored cursor are skipped (a replay).
    pub async fn apply_goal_change(&self, event: goal_pb::ChangeEvent) -> Result<(), ApiError> {
        let txn = self.db.begin_write().await?;
        if event.sequence <= lock_cursor(&*txn, CursorLock::Apply).await? {
            return Ok(());
        }
        let mut reconcile = Reconcile::default();
        apply(&txn, &event, &mut reconcile).await?;
        let (events, changed) = self.reconcile(&txn, &event.tenant_id, reconcile).await?;
        store_cursor(&*txn, event.sequence).await?;
        self.commit_with_events(txn, events, changed).await
    }
}

/// Writes one change into the projection and notes which milestones need
/// their progress recomputed.
async fn apply(txn: &WriteTxn, event: &goal_pb::ChangeEvent, reconcile: &mut Reconcile) -> Result<(), ApiError> {
    let tenant = event.tenant_id.as_str();
    let deleted = event.change_type == goal_pb::ChangeType::Deleted as i32;
    let Some(resource) = &event.resource else {
        return Ok(());
    };
    let conn = &**txn;
    match resource {
        Resource::TenantSettings(s) => {
            exec(
                conn,
                "INSERT INTO projection_settings (tenant_id, time_zone, fiscal_year_start_month) VALUES ($1, $2, $3) \
                 ON CONFLICT (tenant_id) DO UPDATE SET time_zone = excluded.time_zone, \
                 fiscal_year_start_month = excluded.fiscal_year_start_month",
                vec![
                    tenant.into(),
                    s.time_zone.clone().into(),
                    s.fiscal_year_start_month.into(),
                ],
            )
            .await?;
        }
        Resource::Team(t) => {
            let id = id_of(Collection::Teams, &t.name)?;
            if deleted {
                exec(conn, "DELETE FROM projection_teams WHERE id = $1", vec![id.into()]).await?;
            } else {
                let parent = if t.parent.is_empty() {
                    None
                } else {
                    Some(id_of(Collection::Teams, &t.parent)?)
                };
                let old_parent: Option<Option<String>> = crate::store::row(
                    conn,
                    "SELECT parent_id FROM projection_teams WHERE id = $1",
                    vec![id.clone().into()],
                )
                .await?
                .map(|r| r.try_get("", "parent_id"))
                .transpose()?;
                let moved = matches!(&old_parent, Some(p) if *p != parent);
                exec(
                    conn,
                    "INSERT INTO projection_teams (id, tenant_id, parent_id) VALUES ($1, $2, $3) \
                     ON CONFLICT (id) DO UPDATE SET parent_id = excluded.parent_id",
                    vec![id.into(), tenant.into(), parent.into()],
                )
                .await?;
                // A move changes which members roll up into which teams.
                if moved {
                    reconcile.all_team_milestones = true;
                }
            }
        }
        Resource::Member(m) => {
            let id = id_of(Collection::Members, &m.name)?;
            if deleted {
                exec(conn, "DELETE FROM projection_members WHERE id = $1", vec![id.into()]).await?;
            } else {
                exec(
                    conn,
                    "INSERT INTO projection_members (id, tenant_id, display_name, subject) VALUES ($1, $2, $3, $4) \
                     ON CONFLICT (id) DO UPDATE SET display_name = excluded.display_name, subject = excluded.subject",
                    vec![
                        id.into(),
                        tenant.into(),
                        m.display_name.clone().into(),
                        (!m.subject.is_empty()).then(|| m.subject.clone()).into(),
                    ],
                )
                .await?;
            }
        }
        Resource::Membership(ms) => {
            let id = id_of(Collection::Memberships, &ms.name)?;
            if deleted {
                exec(
                    conn,
                    "DELETE FROM projection_memberships WHERE id = $1",
                    vec![id.into()],
                )
                .await?;
            } else {
                let member = id_of(Collection::Members, &ms.member)?;
                let team = id_of(Collection::Teams, &ms.team)?;
                let start = date_text(ms.start_date.as_ref()).unwrap_or_default();
                let end = date_text(ms.end_date.as_ref());
                exec(
                    conn,
                    "INSERT INTO projection_memberships (id, tenant_id, member_id, team_id, start_date, end_date) \
                     VALUES ($1, $2, $3, $4, $5, $6) \
                     ON CONFLICT (id) DO UPDATE SET start_date = excluded.start_date, end_date = excluded.end_date",
                    vec![
                        id.into(),
                        tenant.into(),
                        member.into(),
                        team.into(),
                        start.into(),
                        end.into(),
                    ],
                )
                .await?;
            }
            // Only the milestones of the membership's team and its
            // ancestors can change.
            let team = id_of(Collection::Teams, &ms.team)?;
            reconcile
                .teams
                .extend(crate::store::team_chain(conn, tenant, &team).await?);
        }
        Resource::Metric(m) => {
            let id = id_of(Collection::Metrics, &m.name)?;
            if deleted {
                exec(conn, "DELETE FROM projection_metrics WHERE id = $1", vec![id.into()]).await?;
            } else {
                let aggregation = if m.aggregation == goal_pb::MetricAggregation::Count as i32 {
                    "count"
                } else {
                    "sum"
                };
                exec(
                    conn,
                    "INSERT INTO projection_metrics (id, tenant_id, aggregation, allow_negative_values) \
                     VALUES ($1, $2, $3, $4) \
                     ON CONFLICT (id) DO UPDATE SET allow_negative_values = excluded.allow_negative_values",
                    vec![
                        id.into(),
                        tenant.into(),
                        aggregation.into(),
                        m.allow_negative_values.into(),
                    ],
                )
                .await?;
            }
        }
        Resource::Milestone(m) => {
            let id = id_of(Collection::Milestones, &m.name)?;
            let state = goal_pb::MilestoneState::try_from(m.state).unwrap_or(goal_pb::MilestoneState::Unspecified);
            if deleted || state == goal_pb::MilestoneState::Draft {
                // Drafts are not tracked.
                exec(
                    conn,
                    "DELETE FROM milestone_daily WHERE milestone_id = $1",
                    vec![id.clone().into()],
                )
                .await?;
                exec(conn, "DELETE FROM milestone_progress WHERE id = $1", vec![id.into()]).await?;
                return Ok(());
            }
            let (owner_kind, owner_id) = if let Ok(t) = Collection::Teams.parse(&m.owner) {
                ("team", t)
            } else {
                ("member", id_of(Collection::Members, &m.owner)?)
            };
            let metric = id_of(Collection::Metrics, &m.metric)?;
            let state_text = match state {
                goal_pb::MilestoneState::Active => "active",
                goal_pb::MilestoneState::Achieved => "achieved",
                goal_pb::MilestoneState::Missed => "missed",
                _ => "cancelled",
            };
            let checkpoints: Vec<milestones_domain::terms::Checkpoint> = m
                .checkpoints
                .iter()
                .map(|c| milestones_domain::terms::Checkpoint {
                    display_name: c.display_name.clone(),
                    target: c.target,
                    due_date: date_from_wire(c.due_date.as_ref()).ok().flatten(),
                })
                .collect();
            let checkpoints = serde_json::to_string(&checkpoints).unwrap_or_else(|_| "[]".into());
            let start = date_text(m.start_date.as_ref()).unwrap_or_default();
            let end = date_text(m.end_date.as_ref()).unwrap_or_default();
            // Recompute only when what counts changed: new, re-activated, or
            // new terms (a rename changes nothing).
            let previous = crate::store::milestones_where(conn, "id = $1", vec![id.clone().into()])
                .await?
                .into_iter()
                .next();
            let terms_changed = previous.as_ref().is_none_or(|p| {
                p.start_date != start
                    || p.end_date != end
                    || p.target != m.target
                    || p.stretch_target != m.stretch_target
                    || p.state != state_text
                    || serde_json::to_string(&p.checkpoints).ok().as_deref() != Some(checkpoints.as_str())
            });
            exec(
                conn,
                "INSERT INTO milestone_progress (id, tenant_id, owner_kind, owner_id, metric_id, start_date, end_date, \
                 target, stretch_target, checkpoints, state, value, activity_count, fired, value_time) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, 0, 0, '{}', NULL) \
                 ON CONFLICT (id) DO UPDATE SET start_date = excluded.start_date, end_date = excluded.end_date, \
                 target = excluded.target, stretch_target = excluded.stretch_target, \
                 checkpoints = excluded.checkpoints, state = excluded.state",
                vec![
                    id.clone().into(),
                    tenant.into(),
                    owner_kind.into(),
                    owner_id.into(),
                    metric.into(),
                    start.into(),
                    end.into(),
                    m.target.into(),
                    m.stretch_target.into(),
                    checkpoints.into(),
                    state_text.into(),
                ],
            )
            .await?;
            if state == goal_pb::MilestoneState::Active && terms_changed {
                reconcile.milestones.insert(id);
            } else if previous.is_some_and(|p| p.state == "active" && p.owner_kind == "member")
                && state_text != "active"
            {
                crate::store::freeze_member_days(conn, &id).await?;
            }
        }
        Resource::MilestoneRevision(_) | Resource::MilestoneReview(_) => {}
    }
    Ok(())
}
