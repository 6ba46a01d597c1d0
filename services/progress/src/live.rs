//! `WatchProgress`, live updates: a state stream of progress snapshots, as the proto
//! describes it. First every matching ACTIVE milestone, then a heartbeat
//! that closes the initial set, then a fresh snapshot whenever one changes,
//! at most one per milestone per second (the latest state is always sent),
//! and heartbeats while idle.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use milestones_api::progress as pb;
use milestones_runtime::wire::{micros_to_timestamp, now_micros};
use milestones_runtime::ApiError;
use tokio::sync::{broadcast, mpsc, watch};
use tokio::time::Instant;
use tonic::Status;

use crate::ops::{Progress, ProgressChanged};
use crate::store;

/// Open watch streams one caller may hold.
pub const MAX_STREAMS_PER_CALLER: usize = 10;

/// Least time between two snapshots of one milestone on one stream.
const MIN_INTERVAL: Duration = Duration::from_secs(1);

/// Counts open streams per (tenant, subject).
#[derive(Clone, Debug, Default)]
pub struct WatchCounts(Arc<Mutex<HashMap<(String, String), usize>>>);

/// Releases its stream's slot when dropped (when the stream ends).
#[derive(Debug)]
pub struct Slot {
    counts: WatchCounts,
    key: (String, String),
}

impl WatchCounts {
    /// Takes a slot for `key`, or RESOURCE_EXHAUSTED when it holds the most.
    pub fn take(&self, key: (String, String)) -> Result<Slot, ApiError> {
        let mut counts = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let n = counts.entry(key.clone()).or_default();
        if *n >= MAX_STREAMS_PER_CALLER {
            return Err(ApiError::ResourceExhausted {
                reason: "TOO_MANY_STREAMS",
                message: format!(
                    "at most {MAX_STREAMS_PER_CALLER} WatchProgress streams per caller; close one (a team selector covers many milestones)"
                ),
            });
        }
        *n += 1;
        Ok(Slot {
            counts: self.clone(),
            key,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut counts = self.counts.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = counts.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                counts.remove(&self.key);
            }
        }
    }
}

/// What a stream watches, resolved when it starts: the milestones owned by
/// these members and teams, or one milestone.
#[derive(Debug, Default)]
pub struct Scope {
    milestone: Option<String>,
    members: BTreeSet<String>,
    teams: BTreeSet<String>,
}

impl Scope {
    /// One milestone (`kind` "milestone"), a member's, or a team subtree's
    /// with its current members'.
    pub async fn resolve(progress: &Progress, tenant: &str, kind: &str, id: &str) -> Result<Scope, ApiError> {
        let mut scope = Scope::default();
        match kind {
            "milestone" => scope.milestone = Some(id.to_string()),
            "member" => {
                scope.members.insert(id.to_string());
            }
            _ => {
                let conn = progress.db.conn();
                let teams = store::subtree(conn, tenant, id).await?;
                let settings = store::tenant_settings(conn, tenant).await?;
                let today = milestones_domain::calendar::format_date(settings.today(Utc::now()));
                for team in &teams {
                    for r in store::rows(
                        conn,
                        "SELECT member_id FROM projection_memberships WHERE tenant_id = $1 AND team_id = $2 \
                         AND start_date <= $3 AND (end_date IS NULL OR end_date >= $3)",
                        vec![tenant.into(), team.clone().into(), today.clone().into()],
                    )
                    .await?
                    {
                        scope.members.insert(r.try_get("", "member_id")?);
                    }
                }
                scope.teams = teams.into_iter().collect();
            }
        }
        Ok(scope)
    }

    fn covers(&self, c: &ProgressChanged) -> bool {
        match &self.milestone {
            Some(m) => &c.milestone_id == m,
            None if c.owner_kind == "team" => self.teams.contains(&c.owner_id),
            None => self.members.contains(&c.owner_id),
        }
    }

    /// The ACTIVE milestones in scope now.
    async fn active(&self, progress: &Progress, tenant: &str) -> Result<Vec<String>, ApiError> {
        let conn = progress.db.conn();
        let mut ids = Vec::new();
        if let Some(m) = &self.milestone {
            let rows = store::milestones_where(
                conn,
                "id = $1 AND tenant_id = $2 AND state = 'active'",
                vec![m.clone().into(), tenant.into()],
            )
            .await?;
            ids.extend(rows.into_iter().map(|r| r.id));
            return Ok(ids);
        }
        for (kind, owners) in [("member", &self.members), ("team", &self.teams)] {
            for owner in owners {
                let rows = store::milestones_where(
                    conn,
                    "tenant_id = $1 AND owner_kind = $2 AND owner_id = $3 AND state = 'active'",
                    vec![tenant.into(), kind.into(), owner.clone().into()],
                )
                .await?;
                ids.extend(rows.into_iter().map(|r| r.id));
            }
        }
        Ok(ids)
    }
}

fn heartbeat() -> pb::WatchProgressResponse {
    pb::WatchProgressResponse {
        kind: Some(pb::watch_progress_response::Kind::Heartbeat(pb::FeedHeartbeat {
            head_sequence: 0,
            heartbeat_time: Some(micros_to_timestamp(now_micros())),
        })),
    }
}

/// Runs one stream until the client goes away or the server stops.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    progress: Progress,
    tenant: String,
    scope: Scope,
    mut changes: broadcast::Receiver<ProgressChanged>,
    tx: mpsc::Sender<Result<pb::WatchProgressResponse, Status>>,
    idle: Duration,
    mut stop: watch::Receiver<bool>,
    status: fn(ApiError) -> Status,
    _slot: Slot,
) {
    let send_snapshot = |id: String| {
        let progress = progress.clone();
        let tenant = tenant.clone();
        let tx = tx.clone();
        async move {
            let msg = progress
                .snapshot(progress.db.conn(), &tenant, &id, Utc::now())
                .await
                .map(|p| pb::WatchProgressResponse {
                    kind: Some(pb::watch_progress_response::Kind::Progress(p)),
                })
                .map_err(status);
            tx.send(msg).await.is_ok()
        }
    };
    // The initial set, then the heartbeat that closes it.
    let initial = match scope.active(&progress, &tenant).await {
        Ok(ids) => ids,
        Err(e) => {
            let _ = tx.send(Err(status(e))).await;
            return;
        }
    };
    let mut last_sent: HashMap<String, Instant> = HashMap::new();
    for id in initial {
        last_sent.insert(id.clone(), Instant::now());
        if !send_snapshot(id).await {
            return;
        }
    }
    if tx.send(Ok(heartbeat())).await.is_err() {
        return;
    }
    // Changes within a second of the last snapshot wait here until due.
    let mut deferred: BTreeMap<String, Instant> = BTreeMap::new();
    let mut idle_since = Instant::now();
    loop {
        let next_due = deferred.values().min().copied();
        let change = tokio::select! {
            c = changes.recv() => c,
            _ = async {
                match next_due {
                    Some(due) => tokio::time::sleep_until(due).await,
                    None => std::future::pending::<()>().await,
                }
            } => {
                let now = Instant::now();
                let due: Vec<String> = deferred.iter().filter(|(_, d)| **d <= now).map(|(id, _)| id.clone()).collect();
                for id in due {
                    deferred.remove(&id);
                    last_sent.insert(id.clone(), now);
                    idle_since = now;
                    if !send_snapshot(id).await {
                        return;
                    }
                }
                continue;
            }
            _ = tokio::time::sleep_until(idle_since + idle) => {
                idle_since = Instant::now();
                if tx.send(Ok(heartbeat())).await.is_err() {
                    return;
                }
                continue;
            }
            _ = async { let _ = stop.wait_for(|s| *s).await; } => {
                let _ = tx.send(Err(status(ApiError::Unavailable {
                    message: "the server is shutting down; reconnect".into(),
                }))).await;
                return;
            }
        };
        let ids: Vec<String> = match change {
            Ok(c) if c.tenant_id == tenant && scope.covers(&c) => vec![c.milestone_id],
            Ok(_) => continue,
            // Missed changes: resend everything in scope.
            Err(broadcast::error::RecvError::Lagged(_)) => match scope.active(&progress, &tenant).await {
                Ok(ids) => ids,
                Err(_) => continue,
            },
            Err(broadcast::error::RecvError::Closed) => return,
        };
        let now = Instant::now();
        for id in ids {
            match last_sent.get(&id) {
                Some(at) if now.duration_since(*at) < MIN_INTERVAL => {
                    deferred.entry(id).or_insert(*at + MIN_INTERVAL);
                }
                _ => {
                    deferred.remove(&id);
                    last_sent.insert(id.clone(), now);
                    idle_since = now;
                    if !send_snapshot(id).await {
                        return;
                    }
                }
            }
        }
    }
}
