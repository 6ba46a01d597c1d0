//! Recording activities, in bulk.
//!
//! A call (one activity or a batch of up to 1,000) is one transaction (or
//! one statement, below) in three steps, so that its cost is a few
//! statements whatever its size:
//!
//! 1. **Load** what the batch needs: the tenant's org copy (kept between
//!    batches while goal's feed cursor has not moved: metrics, members, team
//!    tree, memberships, active milestones), replays of its request ids (on
//!    SQLite; PostgreSQL assumes there are none and finds out on write), and
//!    external references already taken (except in a single statement,
//!    which finds out on write too).
//! 2. **Plan** in memory, in request order: credits, the milestones each
//!    credit counts toward on its date, and the rows to write.
//! 3. **Write** ([`crate::writes`]): the new rows, then the running totals;
//!    milestone values are updated relatively (`value = value + delta ...
//!    RETURNING`), so concurrent calls never lose an update, and crossings
//!    are detected from the values the database returns.
//!
//! On PostgreSQL most small batches (concurrent unary calls) need no
//! transaction block: nothing is read before the write, and the write is
//! one statement, which commits on its own, without the round trips of
//! `BEGIN` and `COMMIT` (measured at 16 clients: 29-41 % of pgbench's
//! one-row inserts before, 45-48 % after). Such a statement cannot
//! announce a threshold (its event belongs in the same transaction), so it
//! refuses to reach one, and the batch is written again in a transaction;
//! one the process expects to reach a threshold goes there first.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use chrono::{DateTime, NaiveDate, Utc};
use milestones_api::progress as pb;
use milestones_domain::calendar::format_date;
use milestones_domain::names::Collection;
use milestones_runtime::auth::Caller;
use milestones_runtime::idempotency::{self, Key};
use milestones_runtime::wire::{micros_to_timestamp, now_micros};
use milestones_runtime::ApiError;
use prost::Message;
use sea_orm::{ConnectionTrait, DatabaseBackend, Value};

use crate::ops::{activity_from_row, load_activity, NewActivity, Progress, ACTIVITY_FIELDS};
use crate::rules;
use crate::store::{self, exec, rows, MilestoneRow};
use crate::writes::{self, ActivityRow, FastMap, WriteError, Writes};

/// The civil date of an instant in a time zone.
fn civil_date(micros: i64, tz: chrono_tz::Tz) -> NaiveDate {
    DateTime::<Utc>::from_timestamp_micros(micros)
        .map(|t| t.with_timezone(&tz).date_naive())
        .unwrap_or(NaiveDate::MIN)
}

/// A membership, as needed to find a member's team on a date.
#[derive(Debug)]
struct Stint {
    team: String,
    start: String,
    end: Option<String>,
}

impl Stint {
    /// Whether the membership holds on `day`.
    fn covers(&self, day: &str) -> bool {
        self.start.as_str() <= day && self.end.as_deref().is_none_or(|end| end >= day)
    }
}

impl Progress {
    /// Records activities, all or nothing, and returns them in order. Each
    /// entry's `request_id` makes it idempotent on its own.
    pub async fn record(
        &self,
        caller: &Caller,
        entries: Vec<NewActivity>,
        batch: bool,
    ) -> Result<Vec<pb::Activity>, ApiError> {
        // On PostgreSQL a batch first assumes that none of its request ids
        // ran before, which saves looking them up: the write skips a stored
        // key and reports it, and the batch runs again, looking them up.
        // It also plans with the tenant's kept org copy without reading
        // goal's feed position first; the write reads it, and if the copy
        // is stale the batch runs again with the org as it is now.
        let postgres = self.db.conn().get_database_backend() == DatabaseBackend::Postgres;
        let mut attempt = Attempt {
            look_up_replays: !postgres,
            trust_kept_org: postgres,
            single_statement: postgres,
        };
        let mut attempts = 0;
        loop {
            attempts += 1;
            match self.record_attempt(caller, &entries, batch, attempt).await {
                Ok(recorded) => return Ok(recorded),
                Err(WriteError::OrgMoved) if attempts < 3 => attempt.trust_kept_org = false,
                Err(WriteError::ThresholdAhead) if attempts < 3 => attempt.single_statement = false,
                // A key stored meanwhile: its call's result is there now.
                Err(WriteError::RequestIdTaken) if attempts < 3 => attempt.look_up_replays = true,
                // A retried call answers with its first outcome even if it
                // would fail now (its member since removed, say); and a
                // member or metric may be missing only from a stale copy.
                Err(_) if !attempt.look_up_replays || attempt.trust_kept_org => {
                    attempt = Attempt {
                        look_up_replays: true,
                        trust_kept_org: false,
                        single_statement: false,
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    async fn record_attempt(
        &self,
        caller: &Caller,
        entries: &[NewActivity],
        batch: bool,
        attempt: Attempt,
    ) -> Result<Vec<pb::Activity>, WriteError> {
        let tenant = caller.tenant_id.as_str();
        let field = |i: usize, f: &str| {
            if batch {
                format!("requests[{i}].{f}")
            } else {
                f.to_string()
            }
        };
        let at = |i: usize, e: ApiError| entry_error(batch, i, e);
        let started = std::time::Instant::now();
        let kept = attempt.trust_kept_org.then(|| self.org_cache.latest(tenant)).flatten();
        let unchecked_org = kept.is_some();
        // One statement that commits on its own, when the batch needs
        // nothing read first: the org is the kept copy (which the statement
        // checks), request ids and external references are not looked up
        // (one already stored fails the statement), and the batch is small
        // enough for one statement. A batch that reaches a threshold is
        // written in a transaction, with its events.
        let single = attempt.single_statement
            && unchecked_org
            && !attempt.look_up_replays
            && entries.len() < writes::SEPARATE_INSERTS_FROM;
        let txn = if single {
            self.db.begin_single_write().await?
        } else {
            self.db.begin_write().await?
        };
        tracing::debug!(
            waited_ms = started.elapsed().as_millis() as u64,
            single,
            "ingest: transaction open"
        );
        let conn = &*txn;
        let now = now_micros();

        // === 1. load ===
        let org = match kept {
            Some(org) => org,
            None => self.org_cache.get(conn, tenant).await?,
        };
        let settings = &org.settings;
        let metrics = &org.metrics;
        let known = &org.members;
        let replays = load_replays(conn, caller, entries, attempt.look_up_replays, batch).await?;
        let mut external: BTreeSet<(String, String)> = BTreeSet::new();
        for e in entries.iter().filter(|_| !single) {
            if let Some(r) = &e.external_reference {
                external.insert((e.source.clone(), r.clone()));
            }
        }
        let taken = load_taken_references(conn, tenant, &external).await?;

        let loaded = std::time::Instant::now();
        tracing::debug!(
            entries = entries.len(),
            candidates = org.milestones.len(),
            "ingest: loaded"
        );
        // === 2. plan ===
        let mut out: Vec<Option<pb::Activity>> = Vec::with_capacity(entries.len());
        let mut w = Writes::default();
        let mut seen_references: BTreeSet<(String, String)> = BTreeSet::new();
        let mut recorded = 0;
        // Each event continues the trace of the call that recorded its
        // activity (calls are merged into one transaction).
        let mut traces: HashMap<String, &str> = HashMap::new();
        let mut days = Days::default();
        for (i, e) in entries.iter().enumerate() {
            if let Some(stored) = replays.get(&i) {
                out.push(Some(stored.clone()));
                continue;
            }
            let (aggregation, allow_negative) = metrics
                .get(e.metric_id.as_str())
                .cloned()
                .ok_or_else(|| at(i, ApiError::not_found(Collection::Metrics.name(&e.metric_id))))?;
            for m in std::iter::once(&e.member_id).chain(e.splits.iter().map(|(m, _)| m)) {
                if !known.contains_key(m) {
                    return Err(at(i, ApiError::not_found(Collection::Members.name(m))).into());
                }
            }
            if e.value < 0 && !allow_negative {
                return Err(ApiError::invalid(
                    field(i, "value"),
                    format!(
                        "{} does not allow negative values (got {}); void the original activity instead",
                        Collection::Metrics.name(&e.metric_id),
                        e.value
                    ),
                )
                .into());
            }
            if let Some(r) = &e.external_reference {
                let key = (e.source.clone(), r.clone());
                if taken.contains(&key) || !seen_references.insert(key) {
                    let taken = ApiError::AlreadyExists {
                        reason: "EXTERNAL_REFERENCE_EXISTS",
                        message: format!(
                            "an activity from {} with external_reference {r:?} is already recorded; void it first to replace it",
                            e.source
                        ),
                    };
                    return Err(at(i, taken).into());
                }
            }
            let credited: Vec<(&str, u32)> = if e.splits.is_empty() {
                vec![(e.member_id.as_str(), 10_000)]
            } else {
                e.splits.iter().map(|(m, bp)| (m.as_str(), *bp)).collect()
            };
            let amounts: Vec<i64> = if aggregation == "count" {
                // A counted activity counts once for each credited member.
                vec![e.value.signum(); credited.len()]
            } else {
                let shares: Vec<u32> = credited.iter().map(|(_, s)| *s).collect();
                rules::split(e.value, &shares).map_err(|msg| ApiError::invalid(field(i, "credit_splits"), msg))?
            };
            let day = days.of(e.occurred_at, settings.time_zone);
            let id = uuid::Uuid::now_v7().to_string();
            w.activities.push(ActivityRow {
                id: id.clone(),
                member_id: &e.member_id,
                metric_id: &e.metric_id,
                value: e.value,
                occurred_at: e.occurred_at,
                occurred_date: day.clone(),
                source: &e.source,
                external_reference: e.external_reference.as_deref(),
                credit_splits: if e.splits.is_empty() {
                    "[]".into()
                } else {
                    serde_json::to_string(&e.splits).unwrap_or_else(|_| "[]".into())
                },
                recorded_by: &caller.subject,
                request_id: &e.request_id,
                request_hash: &e.request_hash,
                // One member gets it all: the activity is its own credit.
                credited_amount: match amounts.as_slice() {
                    [amount] if e.splits.is_empty() => Some(*amount),
                    _ => None,
                },
            });
            let mut touched_by_this = BTreeSet::new();
            let activity: Arc<str> = id.as_str().into();
            for ((member, _), amount) in credited.iter().zip(&amounts) {
                if !e.splits.is_empty() {
                    w.credits.push(vec![
                        id.clone().into(),
                        (*member).into(),
                        tenant.into(),
                        e.metric_id.clone().into(),
                        (*amount).into(),
                        (*day).into(),
                        true.into(),
                    ]);
                }
                w.add_credit(
                    &org.counting(member, &e.metric_id, &day),
                    (member, &e.metric_id, &day),
                    *amount,
                    1,
                    &activity,
                    &mut touched_by_this,
                );
            }
            let response = pb::Activity {
                name: format!("activities/{id}"),
                member: Collection::Members.name(&e.member_id),
                metric: Collection::Metrics.name(&e.metric_id),
                value: e.value,
                occurred_at: Some(micros_to_timestamp(e.occurred_at)),
                source: e.source.clone(),
                external_reference: e.external_reference.clone().unwrap_or_default(),
                credit_splits: e
                    .splits
                    .iter()
                    .map(|(m, bp)| pb::CreditSplit {
                        member: Collection::Members.name(m),
                        share_basis_points: *bp as i32,
                    })
                    .collect(),
                credited_amounts: {
                    let mut c: Vec<pb::CreditedAmount> = credited
                        .iter()
                        .zip(&amounts)
                        .map(|((m, _), a)| pb::CreditedAmount {
                            member: Collection::Members.name(m),
                            amount: *a,
                        })
                        .collect();
                    c.sort_by(|a, b| a.member.cmp(&b.member));
                    c
                },
                state: pb::ActivityState::Active as i32,
                void_reason: String::new(),
                void_time: None,
                create_time: Some(micros_to_timestamp(now)),
                recorded_by: caller.subject.clone(),
            };
            if !e.trace_parent.is_empty() {
                traces.insert(response.name.clone(), e.trace_parent.as_str());
            }
            recorded += 1;
            out.push(Some(response));
        }

        tracing::debug!(elapsed_ms = loaded.elapsed().as_millis() as u64, "ingest: planned");
        let planned = std::time::Instant::now();
        // === 3. write ===
        if single && org.reaches_threshold(&w) {
            return Err(WriteError::ThresholdAhead);
        }
        let mode = writes::WriteMode {
            unchecked_org,
            single_statement: single,
        };
        let (mut events, changed) = writes::write(conn, tenant, &org, w, now, mode).await?;
        for event in &mut events {
            if let Some(trace) = traces.get(&event.activity) {
                event.trace_parent = trace.to_string();
            }
        }
        tracing::debug!(elapsed_ms = planned.elapsed().as_millis() as u64, "ingest: written");
        let written = std::time::Instant::now();
        self.commit_with_events(txn, events, changed).await?;
        tracing::debug!(elapsed_us = written.elapsed().as_micros() as u64, "ingest: committed");
        milestones_runtime::telemetry::record_ingested(recorded, batch);
        Ok(out.into_iter().flatten().collect())
    }
}

/// How an attempt at recording a batch reads what it needs.
#[derive(Clone, Copy, Debug)]
struct Attempt {
    /// Look up which request ids are already stored, rather than finding
    /// out from the write.
    look_up_replays: bool,
    /// Plan with the tenant's kept org copy, whatever goal feed position
    /// it was read at, and let the write check the position.
    trust_kept_org: bool,
    /// Write a small batch that needs no lookups in one statement outside
    /// a transaction block ([`writes::WriteMode::single_statement`]).
    single_statement: bool,
}

/// The tenant's civil date of each instant, as stored, formatted once per
/// date: a batch's activities mostly fall on a few days.
#[derive(Default)]
struct Days(HashMap<chrono::NaiveDate, Arc<str>>);

impl Days {
    fn of(&mut self, at: i64, zone: chrono_tz::Tz) -> Arc<str> {
        self.0
            .entry(civil_date(at, zone))
            .or_insert_with_key(|d| format_date(*d).into())
            .clone()
    }
}

/// Which active milestones a credit counts toward: the credited member's
/// own, and those of every team the member belonged to on the credit's
/// date, up the tree. Recording and voiding both use it, so a void takes
/// back exactly what recording added (a change of scope in between is
/// reconciled by recomputing the milestones it affects).
///
/// It is the tenant's whole org copy, kept between batches: it only
/// changes when the projection applies a change from goal's feed, which
/// moves the feed cursor in the same transaction, so a batch that reads the
/// same cursor reads the same org. Every replica checks the cursor, whoever
/// applied the change.
#[derive(Debug)]
pub struct TenantOrg {
    /// The goal feed position this copy was read at.
    pub(crate) cursor: i64,
    pub(crate) settings: milestones_domain::tenant::TenantSettings,
    /// Metric id → (aggregation, negative values allowed).
    metrics: FastMap<String, (String, bool)>,
    /// Member id → display name.
    members: BTreeMap<String, String>,
    stints: FastMap<String, Vec<Stint>>,
    /// Every ACTIVE milestone (its value and thresholds are re-read under
    /// lock when a batch applies to it).
    pub(crate) milestones: BTreeMap<String, MilestoneRow>,
    /// Each member's active milestones, as `counting` needs them.
    member_milestones: FastMap<String, Vec<Scope>>,
    /// Each team's active milestones.
    team_milestones: FastMap<String, Vec<Scope>>,
    /// Each team and its ancestors, nearest first.
    chains: FastMap<String, Vec<String>>,
    /// What this process last saw of each milestone it wrote to, for
    /// single-statement writes.
    seen: std::sync::Mutex<FastMap<String, Seen>>,
}

/// A milestone as a write last returned it.
#[derive(Debug, Clone, Copy)]
struct Seen {
    value: i64,
    /// The lowest of its thresholds not announced then (None: all were).
    /// Announced thresholds are only ever added to, so a threshold
    /// announced now was announced then or is this one or above: it is
    /// never above the lowest one not announced now. A write that stays
    /// below it announces nothing, whatever other writers did meanwhile.
    announce_from: Option<i64>,
}

/// A milestone a credit counts toward.
pub struct Counting<'a> {
    pub milestone: &'a str,
    /// Its owner's team chain, nearest first (for the events).
    pub owner_teams: &'a [String],
    /// A team's milestone, which keeps its own daily totals; a member's
    /// reads the member's (`member_daily`) while it is active.
    pub team_owned: bool,
}

/// What a credit needs to know of a milestone to tell whether it counts:
/// a copy, so that finding them allocates nothing per credit.
#[derive(Debug)]
struct Scope {
    id: String,
    metric_id: String,
    start_date: String,
    end_date: String,
}

/// Tenants whose org copy a process keeps. Beyond that the copy used least
/// recently is dropped, and read again when its tenant next records: a
/// copy is roughly a kilobyte per rep, so this bounds memory for a process
/// that serves many tenants.
const KEPT_TENANTS: usize = 256;

/// The tenants' org copies, shared by the batches of this process.
#[derive(Clone, Debug)]
pub struct OrgCache(Arc<std::sync::Mutex<lru::LruCache<String, Arc<TenantOrg>>>>);

impl Default for OrgCache {
    fn default() -> Self {
        let capacity = std::num::NonZeroUsize::MIN.saturating_add(KEPT_TENANTS - 1);
        Self(Arc::new(std::sync::Mutex::new(lru::LruCache::new(capacity))))
    }
}

impl OrgCache {
    /// The org of `tenant` as of the goal feed position `conn` sees: the
    /// kept copy when it is that recent, else read again and kept. Holds the
    /// cursor row shared until the batch ends, so no change is applied (and
    /// no milestone recomputed without this batch's credits) meanwhile.
    async fn get(&self, conn: &impl ConnectionTrait, tenant: &str) -> Result<Arc<TenantOrg>, ApiError> {
        let cursor = crate::projection::lock_cursor(conn, crate::projection::CursorLock::Ingest).await?;
        if let Some(org) = self.kept(tenant, cursor) {
            return Ok(org);
        }
        let org = Arc::new(TenantOrg::load(conn, tenant, cursor).await?);
        self.keep(tenant, &org);
        Ok(org)
    }

    /// The org of `tenant` as of the goal feed position `conn` sees now,
    /// for a read: the cursor is not locked, so a change may be applied
    /// meanwhile, as it may right after any read.
    pub(crate) async fn get_for_read(
        &self,
        conn: &impl ConnectionTrait,
        tenant: &str,
    ) -> Result<Arc<TenantOrg>, ApiError> {
        let cursor = crate::projection::load_cursor(conn).await?;
        if let Some(org) = self.kept(tenant, cursor) {
            return Ok(org);
        }
        let org = Arc::new(TenantOrg::load(conn, tenant, cursor).await?);
        // Read without a lock, the copy may hold part of a change applied
        // meanwhile; a change moves the cursor in its transaction, so the
        // copy is kept only if the cursor has not moved.
        if crate::projection::load_cursor(conn).await? == cursor {
            self.keep(tenant, &org);
        }
        Ok(org)
    }

    /// The kept copy of `tenant`'s org, whatever goal feed position it
    /// was read at.
    fn latest(&self, tenant: &str) -> Option<Arc<TenantOrg>> {
        let mut kept = self.0.lock().unwrap_or_else(|e| e.into_inner());
        kept.get(tenant).cloned()
    }

    fn kept(&self, tenant: &str, cursor: i64) -> Option<Arc<TenantOrg>> {
        self.latest(tenant).filter(|o| o.cursor == cursor)
    }

    fn keep(&self, tenant: &str, org: &Arc<TenantOrg>) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .put(tenant.to_string(), org.clone());
    }
}

impl TenantOrg {
    async fn load(conn: &impl ConnectionTrait, tenant: &str, cursor: i64) -> Result<Self, ApiError> {
        let settings = store::tenant_settings(conn, tenant).await?;
        let mut metrics = FastMap::default();
        for r in rows(
            conn,
            "SELECT id, aggregation, allow_negative_values FROM projection_metrics WHERE tenant_id = $1",
            vec![tenant.into()],
        )
        .await?
        {
            metrics.insert(
                r.try_get("", "id")?,
                (r.try_get("", "aggregation")?, r.try_get("", "allow_negative_values")?),
            );
        }
        let mut members = BTreeMap::new();
        for r in rows(
            conn,
            "SELECT id, display_name FROM projection_members WHERE tenant_id = $1",
            vec![tenant.into()],
        )
        .await?
        {
            members.insert(r.try_get("", "id")?, r.try_get("", "display_name")?);
        }
        let parents = load_team_parents(conn, tenant).await?;
        let mut stints: FastMap<String, Vec<Stint>> = FastMap::default();
        for r in rows(
            conn,
            "SELECT member_id, team_id, start_date, end_date FROM projection_memberships WHERE tenant_id = $1",
            vec![tenant.into()],
        )
        .await?
        {
            stints.entry(r.try_get("", "member_id")?).or_default().push(Stint {
                team: r.try_get("", "team_id")?,
                start: r.try_get("", "start_date")?,
                end: r.try_get("", "end_date")?,
            });
        }
        let milestones: BTreeMap<String, MilestoneRow> =
            store::milestones_where(conn, "tenant_id = $1 AND state = 'active'", vec![tenant.into()])
                .await?
                .into_iter()
                .map(|m| (m.id.clone(), m))
                .collect();
        let mut member_milestones: FastMap<String, Vec<Scope>> = FastMap::default();
        let mut team_milestones: FastMap<String, Vec<Scope>> = FastMap::default();
        for m in milestones.values() {
            let owners = if m.owner_kind == "team" {
                &mut team_milestones
            } else {
                &mut member_milestones
            };
            owners.entry(m.owner_id.clone()).or_default().push(Scope {
                id: m.id.clone(),
                metric_id: m.metric_id.clone(),
                start_date: m.start_date.clone(),
                end_date: m.end_date.clone(),
            });
        }
        let chains = parents
            .keys()
            .chain(stints.values().flatten().map(|s| &s.team))
            .map(|team| (team.clone(), chain(&parents, team)))
            .collect();
        Ok(Self {
            cursor,
            settings,
            metrics,
            members,
            stints,
            milestones,
            member_milestones,
            team_milestones,
            chains,
            seen: Default::default(),
        })
    }

    /// What this process last saw of milestone `id`: as written last, or
    /// as loaded.
    fn seen(&self, id: &str) -> Option<Seen> {
        if let Some(seen) = self.seen.lock().unwrap_or_else(|e| e.into_inner()).get(id) {
            return Some(*seen);
        }
        let m = self.milestones.get(id)?;
        Some(Seen {
            value: m.value,
            announce_from: rules::lowest_unannounced(m, &m.fired),
        })
    }

    /// The lowest threshold of milestone `id` that a single-statement write
    /// must not reach (None: it may reach any).
    pub(crate) fn announce_from(&self, id: &str) -> Option<i64> {
        self.seen(id).and_then(|s| s.announce_from)
    }

    /// Keeps what a write returned of milestone `id`: its value, and the
    /// lowest of its thresholds not announced in the database.
    pub(crate) fn saw(&self, id: &str, value: i64, announce_from: Option<i64>) {
        let seen = Seen { value, announce_from };
        let mut kept = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        // Every batch sees the same few milestones again: no new key each.
        match kept.get_mut(id) {
            Some(s) => *s = seen,
            None => {
                kept.insert(id.to_string(), seen);
            }
        }
    }

    /// Whether the batch would take a milestone, as last seen, to a
    /// threshold to announce: such a batch is written in a transaction
    /// rather than refused by a single statement.
    fn reaches_threshold(&self, w: &Writes<'_>) -> bool {
        w.deltas.iter().any(|(id, d)| {
            self.seen(id)
                .is_some_and(|s| s.announce_from.is_some_and(|t| s.value.saturating_add(d.peak()) >= t))
        })
    }

    /// Whether the tenant has this team.
    pub(crate) fn has_team(&self, team: &str) -> bool {
        self.chains.contains_key(team)
    }

    /// The members (id, display name) in `team`'s subtree on `day` (every
    /// member when `team` is None), in id order.
    pub(crate) fn members_on(&self, team: Option<&str>, day: &str) -> Vec<(String, String)> {
        let in_subtree = |member: &str, team: &str| {
            self.stints.get(member).into_iter().flatten().any(|s| {
                s.covers(day)
                    && self
                        .chains
                        .get(&s.team)
                        .is_some_and(|chain| chain.iter().any(|t| t == team))
            })
        };
        self.members
            .iter()
            .filter(|(id, _)| team.is_none_or(|team| in_subtree(id, team)))
            .map(|(id, name)| (id.clone(), name.clone()))
            .collect()
    }

    /// The milestones a credit to `member` for `metric` on `day` counts
    /// toward, each with its owner's team chain (for the events).
    fn counting<'a>(&'a self, member: &str, metric: &str, day: &str) -> Vec<Counting<'a>> {
        let chain: &[String] = self
            .stints
            .get(member)
            .and_then(|ss| ss.iter().find(|s| s.covers(day)))
            .and_then(|s| self.chains.get(&s.team))
            .map_or(&[], Vec::as_slice);
        let counts = |m: &&Scope| m.metric_id == metric && m.start_date.as_str() <= day && day <= m.end_date.as_str();
        let mut out = Vec::new();
        for m in self.member_milestones.get(member).into_iter().flatten().filter(counts) {
            out.push(Counting {
                milestone: m.id.as_str(),
                owner_teams: chain,
                team_owned: false,
            });
        }
        for (i, team) in chain.iter().enumerate() {
            for m in self.team_milestones.get(team).into_iter().flatten().filter(counts) {
                out.push(Counting {
                    milestone: m.id.as_str(),
                    owner_teams: &chain[i..],
                    team_owned: true,
                });
            }
        }
        out
    }
}

impl Progress {
    /// Voids an activity: its credits stop counting and every active
    /// milestone they count toward goes down by exactly their amounts.
    /// Thresholds already announced stay announced.
    pub async fn void(
        &self,
        caller: &Caller,
        name: &str,
        reason: &str,
        request_id: &str,
        request: &[u8],
    ) -> Result<pb::Activity, ApiError> {
        let id = name
            .strip_prefix("activities/")
            .filter(|id| milestones_domain::names::is_valid_id(id))
            .ok_or_else(|| ApiError::invalid("name", format!("must be activities/{{id}}, got {name:?}")))?;
        let tenant = caller.tenant_id.as_str();
        let txn = self.db.begin_write().await?;
        let key = Key {
            tenant_id: tenant,
            caller: &caller.subject,
            method: "VoidActivity",
            request_id,
        };
        if !request_id.is_empty() {
            if let Some(stored) = idempotency::lookup(&*txn, &key, request).await? {
                return pb::Activity::decode(stored.as_slice())
                    .map_err(|e| ApiError::Internal(anyhow::anyhow!("stored activity does not decode: {e}")));
            }
        }
        let conn = &*txn;
        let current = load_activity(conn, tenant, id).await?;
        if current.state == pb::ActivityState::Voided as i32 {
            return Err(ApiError::precondition(
                "ACTIVITY_ALREADY_VOIDED",
                name,
                format!("{name} was already voided"),
            ));
        }
        let now = now_micros();
        exec(
            conn,
            "UPDATE activities SET state = 'voided', void_reason = $1, void_time = $2 WHERE id = $3",
            vec![reason.into(), now.into(), id.into()],
        )
        .await?;
        let mut credits: Vec<(String, String, i64, String)> = Vec::new();
        for c in rows(
            conn,
            "SELECT member_id, metric_id, amount, occurred_date FROM credits WHERE activity_id = $1",
            vec![id.into()],
        )
        .await?
        {
            credits.push((
                c.try_get("", "member_id")?,
                c.try_get("", "metric_id")?,
                c.try_get("", "amount")?,
                c.try_get("", "occurred_date")?,
            ));
        }
        exec(
            conn,
            "UPDATE activity_credits SET active = $1 WHERE activity_id = $2",
            vec![false.into(), id.into()],
        )
        .await?;
        let org = self.org_cache.get(conn, tenant).await?;
        let mut w = Writes::default();
        let mut touched = BTreeSet::new();
        let activity: Arc<str> = id.into();
        for (member, metric, amount, day) in &credits {
            w.add_credit(
                &org.counting(member, metric, day),
                (member, metric, &Arc::from(day.as_str())),
                -amount,
                -1,
                &activity,
                &mut touched,
            );
        }
        // Voiding a negative activity raises the value, which can reach a
        // threshold: the events say so like any other.
        let (events, changed) = writes::write(conn, tenant, &org, w, now, writes::WriteMode::IN_TRANSACTION).await?;
        let out = load_activity(conn, tenant, id).await?;
        if !request_id.is_empty() {
            idempotency::record(&*txn, &key, request, &out.encode_to_vec(), now).await?;
        }
        self.commit_with_events(txn, events, changed).await?;
        Ok(out)
    }
}

/// The team and its ancestors, nearest first; bounded against cycles.
fn chain(parents: &HashMap<String, Option<String>>, team: &str) -> Vec<String> {
    let mut out = vec![team.to_string()];
    let mut cursor = team.to_string();
    while let Some(Some(parent)) = parents.get(&cursor) {
        if out.contains(parent) || out.len() > 64 {
            break;
        }
        out.push(parent.clone());
        cursor = parent.clone();
    }
    out
}

/// The activities that entries already recorded, by entry index; an id
/// reused with another payload is refused.
async fn load_replays(
    conn: &impl ConnectionTrait,
    caller: &Caller,
    entries: &[NewActivity],
    look_up: bool,
    batch: bool,
) -> Result<HashMap<usize, pb::Activity>, ApiError> {
    let mut stored: HashMap<String, (Vec<u8>, pb::Activity)> = HashMap::new();
    if !look_up {
        return check_unique_ids(entries, stored, batch);
    }
    let ids: Vec<&str> = entries.iter().map(|e| e.request_id.as_str()).collect();
    // One key lookup per id, whatever the planner knows of the table (a
    // plain `IN` may scan all of the caller's activities when statistics
    // are stale).
    let sql = if conn.get_database_backend() == DatabaseBackend::Postgres {
        format!(
            "SELECT a.* FROM jsonb_array_elements_text($3::jsonb) AS r(id) \
             CROSS JOIN LATERAL (SELECT {ACTIVITY_FIELDS}, request_id, request_hash FROM activities \
             WHERE tenant_id = $1 AND recorded_by = $2 AND request_id = r.id OFFSET 0) a"
        )
    } else {
        format!(
            "SELECT {ACTIVITY_FIELDS}, request_id, request_hash FROM activities WHERE tenant_id = $1 \
             AND recorded_by = $2 AND request_id IN (SELECT value FROM json_each($3))"
        )
    };
    let values: Vec<Value> = vec![
        caller.tenant_id.clone().into(),
        caller.subject.clone().into(),
        serde_json::to_string(&ids).unwrap_or_default().into(),
    ];
    for r in rows(conn, &sql, values).await? {
        stored.insert(
            r.try_get("", "request_id")?,
            (r.try_get("", "request_hash")?, activity_from_row(conn, &r).await?),
        );
    }
    check_unique_ids(entries, stored, batch)
}

/// The entries found in `stored` (request id → (request hash, activity)),
/// by index; refuses an id reused with another payload, or sent twice in
/// the batch (a `batch` call's errors name the entry).
fn check_unique_ids(
    entries: &[NewActivity],
    stored: HashMap<String, (Vec<u8>, pb::Activity)>,
    batch: bool,
) -> Result<HashMap<usize, pb::Activity>, ApiError> {
    let mut out = HashMap::new();
    let mut in_batch: BTreeSet<&str> = BTreeSet::new();
    for (i, e) in entries.iter().enumerate() {
        if let Some((hash, activity)) = stored.get(&e.request_id) {
            if *hash != e.request_hash {
                return Err(entry_error(batch, i, reused(&e.request_id)));
            }
            out.insert(i, activity.clone());
        } else if !in_batch.insert(&e.request_id) {
            // The same id twice in one batch: the same payload is one
            // activity sent twice, which a batch cannot express; refuse.
            return Err(ApiError::invalid(
                format!("requests[{i}].request_id"),
                format!(
                    "{:?} appears twice in this batch; every entry needs its own request_id",
                    e.request_id
                ),
            ));
        }
    }
    Ok(out)
}

/// `e`, naming entry `i` when the call is a batch (a unary call's one
/// entry needs no name).
fn entry_error(batch: bool, i: usize, e: ApiError) -> ApiError {
    if batch {
        ApiError::in_entry(i, e)
    } else {
        e
    }
}

fn reused(request_id: &str) -> ApiError {
    ApiError::precondition(
        "REQUEST_ID_REUSED",
        format!("request_id:{request_id}"),
        format!(
            "request_id {request_id:?} was already used for a different RecordActivity request; use a new request_id for a new activity"
        ),
    )
}

async fn load_team_parents(
    conn: &impl ConnectionTrait,
    tenant: &str,
) -> Result<HashMap<String, Option<String>>, ApiError> {
    rows(
        conn,
        "SELECT id, parent_id FROM projection_teams WHERE tenant_id = $1",
        vec![tenant.into()],
    )
    .await?
    .iter()
    .map(|r| Ok((r.try_get("", "id")?, r.try_get("", "parent_id")?)))
    .collect::<Result<_, sea_orm::DbErr>>()
    .map_err(ApiError::from)
}

async fn load_taken_references(
    conn: &impl ConnectionTrait,
    tenant: &str,
    references: &BTreeSet<(String, String)>,
) -> Result<BTreeSet<(String, String)>, ApiError> {
    let mut out = BTreeSet::new();
    if references.is_empty() {
        return Ok(out);
    }
    // `IS NOT NULL` matches the index's predicate (only references are
    // indexed), so both databases see they may use it.
    let sql = if conn.get_database_backend() == DatabaseBackend::Postgres {
        "SELECT a.source, a.external_reference FROM jsonb_array_elements($2::jsonb) AS r \
         CROSS JOIN LATERAL (SELECT source, external_reference FROM activities \
         WHERE tenant_id = $1 AND source = r->>0 AND external_reference = r->>1 \
         AND external_reference IS NOT NULL OFFSET 0) a"
    } else {
        "SELECT source, external_reference FROM activities WHERE tenant_id = $1 \
         AND external_reference IS NOT NULL AND (source, external_reference) IN (SELECT value->>0, value->>1 FROM json_each($2))"
    };
    let wanted: Vec<&(String, String)> = references.iter().collect();
    let values: Vec<Value> = vec![tenant.into(), serde_json::to_string(&wanted).unwrap_or_default().into()];
    for r in rows(conn, sql, values).await? {
        let pair: (String, Option<String>) = (r.try_get("", "source")?, r.try_get("", "external_reference")?);
        if let (source, Some(reference)) = pair {
            if references.contains(&(source.clone(), reference.clone())) {
                out.insert((source, reference));
            }
        }
    }
    Ok(out)
}
