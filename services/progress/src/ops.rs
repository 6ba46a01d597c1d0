//! The progress service's use cases: recording and voiding activities with
//! their incremental rollups, reconciling after goal changes, and the reads.
//!
//! Every write is one transaction: the activity, its credits, the running
//! value of every milestone it counts toward, the daily totals, the
//! milestone events it causes and its `request_id` commit together.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use milestones_api::progress as pb;
use milestones_domain::attainment::basis_points;
use milestones_domain::calendar::DateRange;
use milestones_domain::names::Collection;
use milestones_domain::Violations;
use milestones_runtime::auth::Caller;
use milestones_runtime::db::{Db, WriteTxn};
use milestones_runtime::feed::{FeedNotifier, FeedTable};
use milestones_runtime::idempotency;
use milestones_runtime::wire::{date_to_wire, micros_to_timestamp, now_micros};
use milestones_runtime::ApiError;
use prost::Message;
use sea_orm::{ConnectionTrait, Value};
use tokio::sync::broadcast;

use crate::rules::{self, Crossing};
use crate::store::{self, exec, row, rows, MilestoneRow};

/// The milestone event feed's log.
pub const EVENT_LOG: FeedTable = FeedTable {
    table: "milestone_events",
    lock_key: 0x7072_6f67_0001, // "prog" 1
};

/// Most entries in one RecordActivities call.
pub const MAX_BATCH: usize = 1_000;
/// Most members one activity may be split across.
pub const MAX_SPLITS: usize = 20;
/// How far in the future an activity may be dated (clock skew).
pub const FUTURE_TOLERANCE_MICROS: i64 = 5 * 60 * 1_000_000;

/// A milestone whose progress changed, for live watchers.
#[derive(Debug, Clone)]
pub struct ProgressChanged {
    pub tenant_id: String,
    pub milestone_id: String,
    pub owner_kind: String,
    pub owner_id: String,
}

/// The state the use cases share.
#[derive(Clone, Debug)]
pub struct Progress {
    pub db: Db,
    pub events: FeedNotifier,
    pub changes: broadcast::Sender<ProgressChanged>,
    /// The tenants' org copies ingestion keeps between batches.
    pub org_cache: crate::ingest::OrgCache,
}

/// Milestones to recompute after goal changes.
#[derive(Debug, Default)]
pub struct Reconcile {
    pub milestones: BTreeSet<String>,
    /// Teams whose active milestones must be recomputed.
    pub teams: BTreeSet<String>,
    pub all_team_milestones: bool,
}

/// One validated activity to record.
#[derive(Debug, Clone)]
pub struct NewActivity {
    pub member_id: String,
    pub metric_id: String,
    pub value: i64,
    pub occurred_at: i64,
    pub source: String,
    pub external_reference: Option<String>,
    /// (member id, share in basis points); empty means all to `member_id`.
    pub splits: Vec<(String, u32)>,
    pub request_id: String,
    /// The SHA-256 of the request as sent, `request_id` cleared: a retry
    /// has the same, an id reused for another activity does not.
    pub request_hash: Vec<u8>,
    /// The W3C trace context of the call, for the events it causes, when it
    /// is recorded in another task's transaction (the group commit); empty
    /// means the task recording it runs in the call's trace.
    pub trace_parent: String,
}

/// Parses and checks one RecordActivityRequest; violations are reported
/// under `prefix` (empty for a single request, `requests[3]` in a batch).
pub fn parse_activity(prefix: &str, req: &pb::RecordActivityRequest, now: i64) -> Result<NewActivity, Violations> {
    let field = |f: &str| {
        if prefix.is_empty() {
            f.to_string()
        } else {
            format!("{prefix}.{f}")
        }
    };
    let mut v = Violations::new();
    let member_id = Collection::Members
        .parse(&req.member)
        .map_err(|e| v.add(field("member"), e))
        .ok();
    let metric_id = Collection::Metrics
        .parse(&req.metric)
        .map_err(|e| v.add(field("metric"), e))
        .ok();
    if req.value == 0 {
        v.add(field("value"), "must not be zero");
    }
    let occurred_at = match &req.occurred_at {
        None => {
            v.add(field("occurred_at"), "is required");
            None
        }
        Some(t) => {
            let micros = i128::from(t.seconds) * 1_000_000 + i128::from(t.nanos) / 1_000;
            // 1900-01-01 .. now + tolerance.
            if t.nanos < 0 || t.nanos >= 1_000_000_000 || micros < -2_208_988_800_000_000 {
                v.add(field("occurred_at"), "is not a valid instant after 1900");
                None
            } else if micros > i128::from(now + FUTURE_TOLERANCE_MICROS) {
                v.add(
                    field("occurred_at"),
                    "is more than 5 minutes in the future; send the time it happened",
                );
                None
            } else {
                i64::try_from(micros).ok()
            }
        }
    };
    let source_ok = (1..=64).contains(&req.source.len())
        && req
            .source
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b));
    if !source_ok {
        v.add(
            field("source"),
            "must be 1..64 characters of a-z, 0-9, '.', '_' or '-' (e.g. salesforce)",
        );
    }
    if req.external_reference.len() > 256 {
        v.add(field("external_reference"), "must be at most 256 characters");
    }
    if req.request_id.is_empty() {
        v.add(
            field("request_id"),
            "is required: retries with the same request_id are applied once",
        );
    } else if req.request_id.len() > idempotency::MAX_REQUEST_ID_LEN {
        v.add(field("request_id"), "must be at most 128 characters");
    }
    let mut splits = Vec::new();
    if req.credit_splits.len() > MAX_SPLITS {
        v.add(field("credit_splits"), format!("at most {MAX_SPLITS} splits"));
    } else if !req.credit_splits.is_empty() {
        let mut seen = BTreeSet::new();
        let mut total: i64 = 0;
        for (i, s) in req.credit_splits.iter().enumerate() {
            let f = |x: &str| field(&format!("credit_splits[{i}].{x}"));
            match Collection::Members.parse(&s.member) {
                Ok(id) if !seen.insert(id.clone()) => v.add(f("member"), "appears twice; give each member one share"),
                Ok(id) => splits.push((id, s.share_basis_points.max(0) as u32)),
                Err(e) => v.add(f("member"), e),
            }
            if !(1..=10_000).contains(&s.share_basis_points) {
                v.add(f("share_basis_points"), "must be from 1 to 10000");
            }
            total += i64::from(s.share_basis_points);
        }
        if total != 10_000 {
            v.add(
                field("credit_splits"),
                format!("shares must sum to 10000 basis points (got {total})"),
            );
        }
    }
    let (Some(member_id), Some(metric_id), Some(occurred_at)) = (member_id, metric_id, occurred_at) else {
        return Err(v);
    };
    v.into_result(())?;
    let mut clean = req.clone();
    clean.request_id.clear();
    Ok(NewActivity {
        member_id,
        metric_id,
        value: req.value,
        occurred_at,
        source: req.source.clone(),
        external_reference: (!req.external_reference.is_empty()).then(|| req.external_reference.clone()),
        splits,
        request_id: req.request_id.clone(),
        request_hash: request_hash(&clean.encode_to_vec()),
        trace_parent: String::new(),
    })
}

/// The hash an activity keeps of the request that recorded it.
pub(crate) fn request_hash(request: &[u8]) -> Vec<u8> {
    use sha2::Digest as _;
    sha2::Sha256::digest(request).to_vec()
}

fn activity_name(id: &str) -> String {
    format!("activities/{id}")
}

/// The columns [`activity_from_row`] reads.
pub(crate) const ACTIVITY_FIELDS: &str = "id, member_id, metric_id, value, occurred_at, source, external_reference, \
     credit_splits, state, void_reason, void_time, create_time, recorded_by, credited_amount";

/// The wire form of a stored activity.
pub(crate) async fn load_activity(
    conn: &impl ConnectionTrait,
    tenant: &str,
    id: &str,
) -> Result<pb::Activity, ApiError> {
    let r = row(
        conn,
        &format!("SELECT {ACTIVITY_FIELDS} FROM activities WHERE id = $1 AND tenant_id = $2"),
        vec![id.into(), tenant.into()],
    )
    .await?
    .ok_or_else(|| ApiError::not_found(activity_name(id)))?;
    activity_from_row(conn, &r).await
}

/// The wire form of an activity row read with [`ACTIVITY_FIELDS`]; a split
/// activity's credits are read from its `activity_credits` rows.
pub(crate) async fn activity_from_row(
    conn: &impl ConnectionTrait,
    r: &sea_orm::QueryResult,
) -> Result<pb::Activity, ApiError> {
    let id: String = r.try_get("", "id")?;
    let member_id: String = r.try_get("", "member_id")?;
    let credited: Vec<(String, i64)> = match r.try_get::<Option<i64>>("", "credited_amount")? {
        Some(amount) => vec![(member_id.clone(), amount)],
        None => rows(
            conn,
            "SELECT member_id, amount FROM activity_credits WHERE activity_id = $1 ORDER BY member_id",
            vec![id.clone().into()],
        )
        .await?
        .iter()
        .map(|c| Ok((c.try_get("", "member_id")?, c.try_get("", "amount")?)))
        .collect::<Result<_, sea_orm::DbErr>>()?,
    };
    let splits: Vec<(String, u32)> =
        serde_json::from_str(&r.try_get::<String>("", "credit_splits")?).unwrap_or_default();
    let state: String = r.try_get("", "state")?;
    Ok(pb::Activity {
        name: activity_name(&id),
        member: Collection::Members.name(&member_id),
        metric: Collection::Metrics.name(&r.try_get::<String>("", "metric_id")?),
        value: r.try_get("", "value")?,
        occurred_at: Some(micros_to_timestamp(r.try_get("", "occurred_at")?)),
        source: r.try_get("", "source")?,
        external_reference: r
            .try_get::<Option<String>>("", "external_reference")?
            .unwrap_or_default(),
        credit_splits: splits
            .into_iter()
            .map(|(m, bp)| pb::CreditSplit {
                member: Collection::Members.name(&m),
                share_basis_points: bp as i32,
            })
            .collect(),
        credited_amounts: credited
            .into_iter()
            .map(|(m, amount)| pb::CreditedAmount {
                member: Collection::Members.name(&m),
                amount,
            })
            .collect(),
        state: if state == "voided" {
            pb::ActivityState::Voided
        } else {
            pb::ActivityState::Active
        } as i32,
        void_reason: r.try_get("", "void_reason")?,
        void_time: r.try_get::<Option<i64>>("", "void_time")?.map(micros_to_timestamp),
        create_time: Some(micros_to_timestamp(r.try_get("", "create_time")?)),
        recorded_by: r.try_get("", "recorded_by")?,
    })
}

/// Builds the wire event of a crossing.
pub fn event_of(
    m: &MilestoneRow,
    crossing: &Crossing,
    owner_teams: &[String],
    activity: Option<&str>,
    calendar: &milestones_domain::calendar::FiscalCalendar,
    now: i64,
) -> pb::MilestoneEvent {
    let owner = if m.owner_kind == "team" {
        Collection::Teams.name(&m.owner_id)
    } else {
        Collection::Members.name(&m.owner_id)
    };
    let period = m.period();
    pb::MilestoneEvent {
        sequence: 0,
        event_time: Some(micros_to_timestamp(now)),
        tenant_id: m.tenant_id.clone(),
        kind: crossing.kind as i32,
        milestone: Collection::Milestones.name(&m.id),
        owner,
        owner_teams: owner_teams.iter().map(|t| Collection::Teams.name(t)).collect(),
        metric: Collection::Metrics.name(&m.metric_id),
        checkpoint_index: crossing.checkpoint_index.map(|i| i as i32),
        threshold: crossing.threshold,
        value: m.value,
        target: m.target,
        attainment_basis_points: basis_points(m.value, m.target),
        activity: activity.map(activity_name).unwrap_or_default(),
        start_date: period.map(|p| date_to_wire(p.start())),
        end_date: period.map(|p| date_to_wire(p.end())),
        fiscal_period: period.and_then(|p| calendar.name_of(&p)).unwrap_or_default(),
        // Set when the event is written (commit_with_events).
        trace_parent: String::new(),
    }
}

/// Adds `delta` to a daily total row, creating it.
async fn add_milestone_daily(
    conn: &impl ConnectionTrait,
    milestone: &str,
    day: &str,
    delta: i64,
) -> Result<(), ApiError> {
    exec(
        conn,
        "INSERT INTO milestone_daily (milestone_id, day, amount) VALUES ($1, $2, $3) \
         ON CONFLICT (milestone_id, day) DO UPDATE SET amount = milestone_daily.amount + excluded.amount",
        vec![milestone.into(), day.into(), delta.into()],
    )
    .await?;
    Ok(())
}

impl Progress {
    /// Appends `events` to the feed, commits, then wakes feed and progress
    /// watchers.
    pub async fn commit_with_events(
        &self,
        txn: WriteTxn,
        mut events: Vec<pb::MilestoneEvent>,
        changed: Vec<ProgressChanged>,
    ) -> Result<(), ApiError> {
        // Events continue the trace of the call that caused them: the one
        // running now, unless the event names another (a group-committed
        // activity's own caller).
        if events.iter().any(|e| e.trace_parent.is_empty()) {
            let trace = milestones_runtime::telemetry::current_traceparent();
            for e in events.iter_mut().filter(|e| e.trace_parent.is_empty()) {
                e.trace_parent.clone_from(&trace);
            }
        }
        let now = now_micros();
        let has_events = !events.is_empty();
        EVENT_LOG
            .append_all(
                &*txn,
                events
                    .iter()
                    .map(|e| (e.tenant_id.clone(), e.encode_to_vec()))
                    .collect(),
                now,
            )
            .await?;
        txn.commit().await?;
        if has_events {
            self.events.notify();
        }
        for c in changed {
            // No receiver is fine: nobody is watching.
            let _ = self.changes.send(c);
        }
        Ok(())
    }

    /// Recomputes the milestones named in `r` from the credits, within the
    /// caller's transaction, and returns the events that crossing causes.
    pub async fn reconcile(
        &self,
        txn: &WriteTxn,
        tenant: &str,
        r: Reconcile,
    ) -> Result<(Vec<pb::MilestoneEvent>, Vec<ProgressChanged>), ApiError> {
        let conn = &**txn;
        let mut ids = r.milestones;
        if r.all_team_milestones {
            for m in store::milestones_where(
                conn,
                "tenant_id = $1 AND owner_kind = 'team' AND state = 'active'",
                vec![tenant.into()],
            )
            .await?
            {
                ids.insert(m.id);
            }
        }
        if !r.all_team_milestones && !r.teams.is_empty() {
            let teams: Vec<String> = r.teams.into_iter().collect();
            let clause = format!(
                "tenant_id = $1 AND owner_kind = 'team' AND state = 'active' AND owner_id IN ({})",
                (0..teams.len())
                    .map(|i| format!("${}", i + 2))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            let mut values: Vec<Value> = vec![tenant.into()];
            values.extend(teams.into_iter().map(Value::from));
            for m in store::milestones_where(conn, &clause, values).await? {
                ids.insert(m.id);
            }
        }
        let settings = store::tenant_settings(conn, tenant).await?;
        let mut events = Vec::new();
        let mut changed = Vec::new();
        for id in ids {
            let Some(mut m) =
                store::milestones_where(conn, "id = $1 AND tenant_id = $2", vec![id.into(), tenant.into()])
                    .await?
                    .into_iter()
                    .next()
            else {
                continue;
            };
            if m.state != "active" {
                continue;
            }
            events.extend(self.recompute(conn, &mut m, &settings).await?);
            changed.push(ProgressChanged {
                tenant_id: m.tenant_id.clone(),
                milestone_id: m.id.clone(),
                owner_kind: m.owner_kind.clone(),
                owner_id: m.owner_id.clone(),
            });
        }
        Ok((events, changed))
    }

    /// Recomputes one milestone's value and contributions from the credits
    /// in its scope (as of each credit's date).
    async fn recompute(
        &self,
        conn: &impl ConnectionTrait,
        m: &mut MilestoneRow,
        settings: &milestones_domain::tenant::TenantSettings,
    ) -> Result<Vec<pb::MilestoneEvent>, ApiError> {
        let calendar = &settings.calendar;
        let credits = if m.owner_kind == "member" {
            rows(
                conn,
                "SELECT activity_id, member_id, amount, occurred_date FROM credits \
                 WHERE tenant_id = $1 AND member_id = $2 AND metric_id = $3 AND active = $4 \
                 AND occurred_date >= $5 AND occurred_date <= $6",
                vec![
                    m.tenant_id.clone().into(),
                    m.owner_id.clone().into(),
                    m.metric_id.clone().into(),
                    true.into(),
                    m.start_date.clone().into(),
                    m.end_date.clone().into(),
                ],
            )
            .await?
        } else {
            let teams = store::subtree(conn, &m.tenant_id, &m.owner_id).await?;
            let placeholders: Vec<String> = (0..teams.len()).map(|i| format!("${}", i + 7)).collect();
            let sql = format!(
                "SELECT c.activity_id, c.member_id, c.amount, c.occurred_date FROM credits c \
                 JOIN projection_memberships ms ON ms.tenant_id = c.tenant_id AND ms.member_id = c.member_id \
                 AND ms.start_date <= c.occurred_date AND (ms.end_date IS NULL OR ms.end_date >= c.occurred_date) \
                 WHERE c.tenant_id = $1 AND c.metric_id = $2 AND c.active = $3 \
                 AND c.occurred_date >= $4 AND c.occurred_date <= $5 AND $6 = $6 AND ms.team_id IN ({})",
                placeholders.join(", ")
            );
            let mut values: Vec<Value> = vec![
                m.tenant_id.clone().into(),
                m.metric_id.clone().into(),
                true.into(),
                m.start_date.clone().into(),
                m.end_date.clone().into(),
                1i64.into(),
            ];
            values.extend(teams.into_iter().map(Value::from));
            rows(conn, &sql, values).await?
        };
        exec(
            conn,
            "DELETE FROM milestone_daily WHERE milestone_id = $1",
            vec![m.id.clone().into()],
        )
        .await?;
        let before = m.value;
        let mut total: i128 = 0;
        let mut activities = BTreeSet::new();
        let mut daily: BTreeMap<String, i64> = BTreeMap::new();
        for c in &credits {
            let activity: String = c.try_get("", "activity_id")?;
            let amount: i64 = c.try_get("", "amount")?;
            let day: String = c.try_get("", "occurred_date")?;
            total += i128::from(amount);
            activities.insert(activity);
            *daily.entry(day).or_default() += amount;
        }
        // An active member milestone's days are the member's (see
        // `store::freeze_member_days`).
        if m.owner_kind == "team" || m.state != "active" {
            for (day, amount) in daily {
                add_milestone_daily(conn, &m.id, &day, amount).await?;
            }
        }
        let now = now_micros();
        m.value = i64::try_from(total).unwrap_or(i64::MAX);
        m.activity_count = activities.len() as i64;
        if m.value != before {
            m.value_time = Some(now);
        }
        let crossings = rules::crossings(m, now);
        let owner_teams = if crossings.is_empty() {
            Vec::new()
        } else {
            // As of the period's last day or today, whichever comes first.
            let today = milestones_domain::calendar::format_date(settings.today(Utc::now()));
            store::owner_teams_on(conn, m, m.end_date.as_str().min(today.as_str())).await?
        };
        let events = crossings
            .iter()
            .map(|c| event_of(m, c, &owner_teams, None, calendar, now))
            .collect();
        m.save_progress(conn).await?;
        Ok(events)
    }

    /// The snapshot of one milestone's progress at `now`.
    pub async fn snapshot(
        &self,
        conn: &impl ConnectionTrait,
        tenant: &str,
        milestone_id: &str,
        now: DateTime<Utc>,
    ) -> Result<pb::Progress, ApiError> {
        let m = store::milestones_where(
            conn,
            "id = $1 AND tenant_id = $2",
            vec![milestone_id.into(), tenant.into()],
        )
        .await?
        .into_iter()
        .next()
        .ok_or_else(|| ApiError::not_found(format!("{}/progress", Collection::Milestones.name(milestone_id))))?;
        let settings = store::tenant_settings(conn, tenant).await?;
        Ok(progress_of(&m, &settings, now))
    }

    pub async fn get_progress(&self, caller: &Caller, name: &str) -> Result<pb::Progress, ApiError> {
        let id = parse_progress_name(name, "name")?;
        self.snapshot(self.db.conn(), &caller.tenant_id, &id, Utc::now()).await
    }
}

/// Parses `milestones/{id}/progress`.
pub fn parse_progress_name(name: &str, field: &str) -> Result<String, ApiError> {
    name.strip_suffix("/progress")
        .and_then(|m| Collection::Milestones.parse(m).ok())
        .ok_or_else(|| ApiError::invalid(field, format!("must be milestones/{{id}}/progress, got {name:?}")))
}

/// The wire progress of a milestone row at `now`.
pub fn progress_of(
    m: &MilestoneRow,
    settings: &milestones_domain::tenant::TenantSettings,
    now: DateTime<Utc>,
) -> pb::Progress {
    let today = settings.today(now);
    let period = m.period();
    let pace = rules::pace(m, period.as_ref(), today);
    let owner = if m.owner_kind == "team" {
        Collection::Teams.name(&m.owner_id)
    } else {
        Collection::Members.name(&m.owner_id)
    };
    let checkpoints: Vec<pb::CheckpointProgress> = m
        .checkpoints
        .iter()
        .enumerate()
        .map(|(i, c)| pb::CheckpointProgress {
            index: i as i32,
            display_name: c.display_name.clone(),
            target: c.target,
            due_date: c.due_date.map(date_to_wire),
            reached: m.value >= c.target,
            first_reach_time: m
                .fired
                .first_reach(pb::MilestoneEventKind::CheckpointReached, c.target)
                .map(micros_to_timestamp),
        })
        .collect();
    pb::Progress {
        name: format!("{}/progress", Collection::Milestones.name(&m.id)),
        milestone: Collection::Milestones.name(&m.id),
        owner,
        metric: Collection::Metrics.name(&m.metric_id),
        start_date: period.map(|p| date_to_wire(p.start())),
        end_date: period.map(|p| date_to_wire(p.end())),
        fiscal_period: period.and_then(|p| settings.calendar.name_of(&p)).unwrap_or_default(),
        value: m.value,
        target: m.target,
        stretch_target: m.stretch_target,
        attainment_basis_points: basis_points(m.value, m.target),
        checkpoints_reached: checkpoints.iter().filter(|c| c.reached).count() as i32,
        checkpoints,
        expected_value: pace.expected_value,
        projected_value: pace.projected_value,
        status: pace.status as i32,
        elapsed_days: pace.elapsed_days as i32,
        total_days: pace.total_days as i32,
        activity_count: m.activity_count,
        update_time: m.value_time.map(micros_to_timestamp),
        as_of: Some(micros_to_timestamp(now.timestamp_micros())),
    }
}

/// Used by reads that need a period from the wire.
pub fn period_from(
    fiscal_period: Option<&str>,
    range: Option<&pb::DateRange>,
    calendar: &milestones_domain::calendar::FiscalCalendar,
) -> Result<DateRange, ApiError> {
    use milestones_runtime::wire::date_from_wire;
    match (fiscal_period, range) {
        (Some(name), _) => milestones_domain::calendar::FiscalPeriod::parse(name)
            .map(|p| calendar.range(&p))
            .map_err(|e| ApiError::invalid("fiscal_period", e)),
        (None, Some(r)) => {
            let start =
                date_from_wire(r.start_date.as_ref()).map_err(|e| ApiError::invalid("date_range.start_date", e))?;
            let end = date_from_wire(r.end_date.as_ref()).map_err(|e| ApiError::invalid("date_range.end_date", e))?;
            match (start, end) {
                (Some(s), Some(e)) => DateRange::new(s, e)
                    .ok_or_else(|| ApiError::invalid("date_range.end_date", "must not be before start_date")),
                _ => Err(ApiError::invalid("date_range", "needs start_date and end_date")),
            }
        }
        (None, None) => Err(ApiError::invalid("period", "give fiscal_period or date_range")),
    }
}

impl Progress {
    pub async fn get_activity_by_id(&self, tenant: &str, id: &str) -> Result<pb::Activity, ApiError> {
        load_activity(self.db.conn(), tenant, id).await
    }

    pub async fn get_activity(&self, caller: &Caller, name: &str) -> Result<pb::Activity, ApiError> {
        let id = name
            .strip_prefix("activities/")
            .filter(|id| milestones_domain::names::is_valid_id(id))
            .ok_or_else(|| ApiError::invalid("name", format!("must be activities/{{id}}, got {name:?}")))?;
        self.get_activity_by_id(&caller.tenant_id, id).await
    }
}
