//! Writing what a batch of activities (or a void) changes: its new rows and
//! the running totals they move.
//!
//! On PostgreSQL a small batch's whole write is one statement (a large
//! one's activities go first, by `COPY`) whose text does not depend on the
//! batch size: each column of a row set travels as one
//! array parameter, in binary. Each round trip to the database costs both
//! processes a wake-up and a system call or two, which at small batches
//! (concurrent unary calls) costs more than the rows themselves; and a
//! fixed text is parsed and planned once per connection, not once per
//! batch size. (The rows were JSON before: parsing it was a seventh of
//! PostgreSQL's time in an import.) SQLite runs in process, so it keeps
//! plain multi-row statements.
//!
//! Milestone values are updated relatively (`value = value + delta`), in
//! id order, so concurrent batches never lose an update and never deadlock
//! on each other; the thresholds reached are decided from the
//! values the update returns, and only milestones that reached one are
//! written again.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use milestones_api::progress as pb;
use milestones_runtime::db::TxnConn;
use milestones_runtime::ApiError;
use sea_orm::{ConnectionTrait, DatabaseBackend, Statement, Value};

use crate::ingest::{Counting, TenantOrg};
use crate::ops::{event_of, ProgressChanged};
use crate::rules;
use crate::store::{exec, rows, Fired};

/// Most bind parameters in one statement, well below SQLite's (32766) and
/// PostgreSQL's (65535) limits: larger statements gain nothing.
const MAX_PARAMS: usize = 8_000;

/// A column's SQL type, to send it as an array on PostgreSQL. An array
/// parameter cannot hold NULLs here (sea-query binds `Vec<T>`), so a
/// nullable column travels with a second array saying which rows have a
/// value.
#[derive(Clone, Copy)]
enum Ty {
    Text,
    NullableText,
    BigInt,
    NullableBigInt,
    Bool,
    Bytes,
}

impl Ty {
    fn nullable(self) -> bool {
        matches!(self, Ty::NullableText | Ty::NullableBigInt)
    }

    /// The SQL type of its array's elements, and the array's sea-query type.
    fn array_of(self) -> (&'static str, sea_orm::sea_query::ArrayType) {
        use sea_orm::sea_query::ArrayType;
        match self {
            Ty::Text | Ty::NullableText => ("text", ArrayType::String),
            Ty::BigInt | Ty::NullableBigInt => ("bigint", ArrayType::BigInt),
            Ty::Bool => ("boolean", ArrayType::Bool),
            Ty::Bytes => ("bytea", ArrayType::Bytes),
        }
    }
}

const ACTIVITY_COLUMNS: &[(&str, Ty)] = &[
    ("id", Ty::Text),
    ("tenant_id", Ty::Text),
    ("member_id", Ty::Text),
    ("metric_id", Ty::Text),
    ("value", Ty::BigInt),
    ("occurred_at", Ty::BigInt),
    ("occurred_date", Ty::Text),
    ("source", Ty::Text),
    ("external_reference", Ty::NullableText),
    ("credit_splits", Ty::Text),
    ("state", Ty::Text),
    ("void_reason", Ty::Text),
    ("void_time", Ty::NullableBigInt),
    ("create_time", Ty::BigInt),
    ("recorded_by", Ty::Text),
    ("request_id", Ty::Text),
    ("request_hash", Ty::Bytes),
    ("credited_amount", Ty::NullableBigInt),
];

const CREDIT_COLUMNS: &[(&str, Ty)] = &[
    ("activity_id", Ty::Text),
    ("member_id", Ty::Text),
    ("tenant_id", Ty::Text),
    ("metric_id", Ty::Text),
    ("amount", Ty::BigInt),
    ("occurred_date", Ty::Text),
    ("active", Ty::Bool),
];

const MEMBER_DAILY_COLUMNS: &[(&str, Ty)] = &[
    ("tenant_id", Ty::Text),
    ("member_id", Ty::Text),
    ("metric_id", Ty::Text),
    ("day", Ty::Text),
    ("amount", Ty::BigInt),
    ("activity_count", Ty::BigInt),
];
const MEMBER_DAILY_CONFLICT: &str = "ON CONFLICT (tenant_id, member_id, metric_id, day) DO UPDATE SET \
     amount = member_daily.amount + excluded.amount, \
     activity_count = member_daily.activity_count + excluded.activity_count";

const MILESTONE_DAILY_COLUMNS: &[(&str, Ty)] = &[("milestone_id", Ty::Text), ("day", Ty::Text), ("amount", Ty::BigInt)];
const MILESTONE_DAILY_CONFLICT: &str =
    "ON CONFLICT (milestone_id, day) DO UPDATE SET amount = milestone_daily.amount + excluded.amount";

/// A new activity's row, borrowing what its call sent: built as plain
/// fields rather than as a row of sea-query values, each string of which
/// is two allocations (a tenth of the server's CPU in an import went to
/// allocating and freeing).
pub struct ActivityRow<'a> {
    pub id: String,
    pub member_id: &'a str,
    pub metric_id: &'a str,
    pub value: i64,
    pub occurred_at: i64,
    pub occurred_date: Arc<str>,
    pub source: &'a str,
    pub external_reference: Option<&'a str>,
    /// The credit splits as sent, as JSON.
    pub credit_splits: String,
    pub recorded_by: &'a str,
    pub request_id: &'a str,
    pub request_hash: &'a [u8],
    /// The one member's amount when the activity is not split.
    pub credited_amount: Option<i64>,
}

impl ActivityRow<'_> {
    /// Its cells, in the order of `ACTIVITY_COLUMNS`, recorded now.
    fn cells<'c>(&'c self, tenant: &'c str, now: i64) -> [Cell<'c>; 18] {
        use Cell::{BigInt, Null, Text};
        [
            Text(&self.id),
            Text(tenant),
            Text(self.member_id),
            Text(self.metric_id),
            BigInt(self.value),
            BigInt(self.occurred_at),
            Text(&self.occurred_date),
            Text(self.source),
            self.external_reference.map_or(Null, Text),
            Text(&self.credit_splits),
            Text("active"),
            Text(""),
            Null,
            BigInt(now),
            Text(self.recorded_by),
            Text(self.request_id),
            Cell::Bytes(self.request_hash),
            self.credited_amount.map_or(Null, BigInt),
        ]
    }
}

/// One cell of a row, borrowed.
#[derive(Clone, Copy)]
enum Cell<'c> {
    Text(&'c str),
    BigInt(i64),
    Bytes(&'c [u8]),
    Null,
}

/// A cell as a sea-query value of its column's type (`ty`, for NULL).
fn value_of(cell: Cell<'_>, ty: Ty) -> Value {
    match (cell, ty) {
        (Cell::Text(s), _) => s.into(),
        (Cell::BigInt(n), _) => n.into(),
        (Cell::Bytes(b), _) => b.to_vec().into(),
        (Cell::Null, Ty::NullableBigInt) => Value::BigInt(None),
        (Cell::Null, _) => Value::String(None),
    }
}

/// The activities as rows of sea-query values (for SQLite, and for the
/// arrays of a small batch's statement on PostgreSQL).
fn activity_values(rows: &[ActivityRow<'_>], tenant: &str, now: i64) -> Vec<Vec<Value>> {
    rows.iter()
        .map(|r| {
            r.cells(tenant, now)
                .into_iter()
                .zip(ACTIVITY_COLUMNS)
                .map(|(cell, (_, ty))| value_of(cell, *ty))
                .collect()
        })
        .collect()
}

/// One milestone's share of a batch.
#[derive(Default)]
pub struct Delta<'a> {
    pub amount: i64,
    pub activities: i64,
    /// (activity id, running delta after it): to attribute crossings to the
    /// activity that caused them.
    pub steps: Vec<(Arc<str>, i64)>,
    pub owner_teams: &'a [String],
}

impl Delta<'_> {
    /// The highest the batch takes the milestone above where it started
    /// (thresholds are announced when reached, even if a later step of the
    /// batch goes back below).
    pub fn peak(&self) -> i64 {
        self.steps.iter().map(|(_, c)| *c).max().unwrap_or(0)
    }
}

/// The planner's maps, keyed by ids the server made: hashed with foldhash
/// rather than SipHash, which guards against keys an attacker picks and
/// was a twentieth of an import's server CPU.
pub type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// Everything one transaction of ingestion writes. Rows are in the column
/// order of their table's `*_COLUMNS`.
///
/// Milestone totals are gathered in hash maps keyed by owned ids but looked
/// up by borrowed ones, so a credit allocates only for a milestone or day
/// the batch has not met yet (planning a 1,000-activity batch spent about a
/// third of its time allocating and freeing); they are sorted when written.
#[derive(Default)]
pub struct Writes<'a> {
    pub activities: Vec<ActivityRow<'a>>,
    /// Split activities' credits (an activity that credits one member is
    /// its own credit).
    pub credits: Vec<Vec<Value>>,
    /// (member, metric, day) → (amount, activities).
    pub member_daily: BTreeMap<(&'a str, &'a str, Arc<str>), (i64, i64)>,
    /// Team milestone → day → amount.
    pub milestone_daily: FastMap<String, BTreeMap<String, i64>>,
    /// Milestone id → its share.
    pub deltas: FastMap<String, Delta<'a>>,
}

impl<'a> Writes<'a> {
    /// Adds one credit of `activity` (a negative amount and count take one
    /// back) to the member's daily total and to each milestone it counts
    /// toward (`counting`, from [`TenantOrg::counting`]). `touched` holds
    /// the milestones this activity already counted in: an activity counts
    /// once per milestone, however many of its members are in the team.
    pub fn add_credit(
        &mut self,
        counting: &[Counting<'a>],
        (member, metric, day): (&'a str, &'a str, &Arc<str>),
        amount: i64,
        count: i64,
        activity: &Arc<str>,
        touched: &mut BTreeSet<&'a str>,
    ) {
        let d = self.member_daily.entry((member, metric, day.clone())).or_default();
        d.0 += amount;
        d.1 += count;
        for c in counting {
            let (milestone, owner_teams) = (c.milestone, c.owner_teams);
            // An active member milestone's days are the member's days.
            if c.team_owned {
                let days = match self.milestone_daily.get_mut(milestone) {
                    Some(days) => days,
                    None => self.milestone_daily.entry(milestone.to_string()).or_default(),
                };
                match days.get_mut(&**day) {
                    Some(total) => *total += amount,
                    None => {
                        days.insert(day.to_string(), amount);
                    }
                }
            }
            let delta = match self.deltas.get_mut(milestone) {
                Some(delta) => delta,
                None => self.deltas.entry(milestone.to_string()).or_default(),
            };
            // The owner's teams as of the latest credit (a member may have
            // moved between the batch's dates).
            delta.owner_teams = owner_teams;
            delta.amount = delta.amount.saturating_add(amount);
            delta.steps.push((activity.clone(), delta.amount));
            if touched.insert(milestone) {
                delta.activities += count;
            }
        }
    }
}

/// Why a write failed.
#[derive(Debug)]
pub enum WriteError {
    /// `activities_external_reference`: a concurrent call recorded the same
    /// (source, external reference) first.
    ExternalReferenceTaken,
    /// `activities_request`: a request id of the batch is already stored, by
    /// a call that committed first (a retry, or a concurrent duplicate).
    RequestIdTaken,
    /// The batch was planned with a kept org copy, and goal's feed has
    /// moved since it was read: plan again with the org as it is now.
    OrgMoved,
    /// A single-statement write would take a milestone to a threshold not
    /// announced yet, whose event must be written in the same transaction:
    /// write the batch again in a transaction.
    ThresholdAhead,
    Other(ApiError),
}

impl From<ApiError> for WriteError {
    fn from(e: ApiError) -> Self {
        WriteError::Other(e)
    }
}

/// What the caller is told when a write fails for good.
impl From<WriteError> for ApiError {
    fn from(e: WriteError) -> Self {
        match e {
            WriteError::ExternalReferenceTaken => ApiError::AlreadyExists {
                reason: "EXTERNAL_REFERENCE_EXISTS",
                message: "an activity with one of these external references was just recorded; \
                          void it first to replace it"
                    .to_string(),
            },
            WriteError::RequestIdTaken => ApiError::Aborted {
                reason: "REQUEST_IN_FLIGHT",
                message: "a concurrent call with one of these request ids committed first; retry to get its result"
                    .to_string(),
            },
            WriteError::OrgMoved => ApiError::Aborted {
                reason: "ORG_CHANGED",
                message: "the org changed while this call was recorded; retry it".to_string(),
            },
            WriteError::ThresholdAhead => ApiError::Aborted {
                reason: "THRESHOLD_REACHED",
                message: "a milestone reached a threshold while this call was recorded; retry it".to_string(),
            },
            WriteError::Other(e) => e,
        }
    }
}

/// SQLSTATEs of `progress_refuse` (migration `RefusalFunction`): goal's
/// feed moved since the batch was planned, and a single-statement write
/// reaching a threshold.
const REFUSED_ORG_MOVED: &str = "MSORG";
const REFUSED_THRESHOLD: &str = "MSTHR";

/// A unique violation names its constraint, so callers can say which
/// input collided; a refusal of the write statement says why.
impl From<sea_orm::DbErr> for WriteError {
    fn from(err: sea_orm::DbErr) -> Self {
        use sea_orm::RuntimeErr::SqlxError;
        if let sea_orm::DbErr::Query(SqlxError(e)) | sea_orm::DbErr::Exec(SqlxError(e)) = &err {
            match e.as_database_error().and_then(|d| d.code()).as_deref() {
                Some(REFUSED_ORG_MOVED) => return WriteError::OrgMoved,
                Some(REFUSED_THRESHOLD) => return WriteError::ThresholdAhead,
                _ => {}
            }
        }
        if let Some(sea_orm::SqlErr::UniqueConstraintViolation(text)) = err.sql_err() {
            // PostgreSQL names the index, SQLite its columns.
            if text.contains("activities_request") || text.contains("activities.request_id") {
                return WriteError::RequestIdTaken;
            }
            if text.contains("activities_external_reference") {
                return WriteError::ExternalReferenceTaken;
            }
        }
        WriteError::Other(ApiError::from(err))
    }
}

/// How [`write`] runs.
#[derive(Clone, Copy, Debug)]
pub struct WriteMode {
    /// `org` is a kept copy whose goal feed position was not read in this
    /// transaction (PostgreSQL): the write statement reads the position,
    /// and fails with [`WriteError::OrgMoved`] (the transaction to be
    /// rolled back) if the copy is no longer current.
    pub unchecked_org: bool,
    /// The write is one statement that commits on its own
    /// ([`milestones_runtime::db::Db::begin_single_write`], PostgreSQL,
    /// a batch below [`SEPARATE_INSERTS_FROM`]): it can announce nothing,
    /// so it fails with [`WriteError::ThresholdAhead`] if a milestone
    /// would reach a threshold not announced yet.
    pub single_statement: bool,
}

impl WriteMode {
    /// In a transaction, with an org read in it.
    pub const IN_TRANSACTION: WriteMode = WriteMode {
        unchecked_org: false,
        single_statement: false,
    };
}

/// Writes `w` and returns the events of the thresholds it reached and the
/// milestones it changed.
pub async fn write(
    conn: &TxnConn,
    tenant: &str,
    org: &TenantOrg,
    w: Writes<'_>,
    now: i64,
    mode: WriteMode,
) -> Result<(Vec<pb::MilestoneEvent>, Vec<ProgressChanged>), WriteError> {
    let mut deltas: Vec<(String, Delta<'_>)> = w
        .deltas
        .into_iter()
        .filter(|(id, _)| org.milestones.contains_key(id))
        .collect();
    // Rows are locked in key order, so concurrent batches never deadlock.
    deltas.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    let member_daily: Vec<Vec<Value>> = w
        .member_daily
        .into_iter()
        .map(|((member, metric, day), (amount, n))| {
            vec![
                tenant.into(),
                member.into(),
                metric.into(),
                (*day).into(),
                amount.into(),
                n.into(),
            ]
        })
        .collect();
    let mut milestone_daily: Vec<(String, BTreeMap<String, i64>)> = w.milestone_daily.into_iter().collect();
    milestone_daily.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    let milestone_daily: Vec<Vec<Value>> = milestone_daily
        .into_iter()
        .flat_map(|(m, days)| {
            days.into_iter()
                .map(move |(day, amount)| vec![m.clone().into(), day.into(), amount.into()])
        })
        .collect();
    let updated = if conn.get_database_backend() == DatabaseBackend::Postgres {
        write_postgres(
            conn,
            (tenant, &w.activities),
            [w.credits, member_daily, milestone_daily],
            (&deltas, org, mode),
            now,
        )
        .await?
    } else {
        let activities = activity_values(&w.activities, tenant, now);
        insert_rows(conn, "activities", ACTIVITY_COLUMNS, activities, "").await?;
        insert_rows(conn, "activity_credits", CREDIT_COLUMNS, w.credits, "").await?;
        insert_rows(
            conn,
            "member_daily",
            MEMBER_DAILY_COLUMNS,
            member_daily,
            MEMBER_DAILY_CONFLICT,
        )
        .await?;
        insert_rows(
            conn,
            "milestone_daily",
            MILESTONE_DAILY_COLUMNS,
            milestone_daily,
            MILESTONE_DAILY_CONFLICT,
        )
        .await?;
        add_deltas_sqlite(conn, &deltas, now).await?
    };
    let (events, changed, announced) = settle(org, &deltas, updated, now);
    if !announced.is_empty() {
        if mode.single_statement {
            // The statement refuses to reach a threshold not announced
            // (`announce_from` is never above the first one settle
            // finds): this cannot happen. Were it to, the batch is
            // committed without its events and the caller's retry answers
            // with the stored activities; the cache still holds the
            // threshold unannounced, so the milestone's next batch goes
            // through a transaction, which announces it (late).
            tracing::error!(
                milestones = announced.len(),
                "a single-statement write reached a threshold"
            );
            return Err(ApiError::Internal(anyhow::anyhow!(
                "a single-statement write reached a threshold it did not refuse"
            ))
            .into());
        }
        record_announced(conn, announced).await?;
    }
    Ok((events, changed))
}

/// The value and announced thresholds of a milestone after the update.
type Updated = HashMap<String, (i64, String)>;

/// Batches at least this big insert their rows before touching the running
/// totals (activities by `COPY`, split credits in a statement of their
/// own): the totals' rows are what concurrent batches queue on, and their
/// locks are then held only for the totals and the commit. Smaller batches
/// save the round trips instead.
///
/// Such batches also take turns at the totals: each takes
/// [`TOTALS_TURN`] (an advisory lock, held until commit) first, so a batch
/// waits for its turn holding no row lock while the others plan and
/// insert. Queueing on the rows instead, every waiter holds the rows it
/// already updated, and the queue turns into a convoy (measured: 3 bulk
/// writers 37-38k activities/s without turns, 38.7-39.4k with). PostgreSQL
/// sees the advisory lock, so a cycle through it is a deadlock it detects
/// and breaks, and replicas take turns too.
pub(crate) const SEPARATE_INSERTS_FROM: usize = 64;

/// The advisory lock key of the turn at the running totals ("prog" 2; the
/// event feed uses "prog" 1).
const TOTALS_TURN: i64 = 0x7072_6f67_0002;

/// The whole write: the inserts, the daily totals, and the milestone values,
/// in one statement for a small batch, returning the new values. It locks
/// goal's feed cursor shared until commit, so no org change is applied
/// meanwhile, and refuses as `mode` asks.
async fn write_postgres(
    conn: &TxnConn,
    (tenant, activities): (&str, &[ActivityRow<'_>]),
    [credits, member_daily, milestone_daily]: [Vec<Vec<Value>>; 3],
    (deltas, org, mode): (&[(String, Delta<'_>)], &TenantOrg, WriteMode),
    now: i64,
) -> Result<Updated, WriteError> {
    // The statements' texts do not depend on the batch, so each connection
    // parses and plans them once.
    static ALL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    static COPY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    static CREDITS: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    static TOTALS: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let inserts = |first: usize| {
        format!(
            "a AS ({}), c AS ({})",
            // No `ON CONFLICT DO NOTHING`: PostgreSQL would insert each
            // row speculatively (an extra index probe and WAL record per
            // row: measured 19-20 against 23-25 µs of PostgreSQL's CPU per
            // bulk activity). A request id already stored (a retry, or a
            // concurrent call with the same id that committed first)
            // fails the statement on `activities_request` instead, and the
            // whole write is void.
            array_insert("activities", ACTIVITY_COLUMNS, first, ""),
            array_insert(
                "activity_credits",
                CREDIT_COLUMNS,
                first + array_params(ACTIVITY_COLUMNS),
                ""
            ),
        )
    };
    let inserts_params = array_params(ACTIVITY_COLUMNS) + array_params(CREDIT_COLUMNS);
    // `d` reads its rows through `unnest(ARRAY(...))` of a JSON array,
    // which the planner expects to be short (10 rows): so it finds the
    // milestones through their key, one by one in the order of `d`, not by
    // reading the whole table, which a batch of a few activities cannot
    // afford. Every row set arrives sorted by key, so concurrent batches
    // lock their common rows in the same order and queue instead of
    // deadlocking, without a separate `FOR UPDATE` pass (which doubled the
    // work per milestone row: measured 4.3k -> 5.0-5.6k calls/s at 16
    // clients without it).
    //
    // The statement first locks goal's feed cursor shared (a row with a
    // NULL id), then updates the milestones. An org change being applied
    // holds the cursor exclusively while it recomputes milestones: taking
    // the cursor before any milestone row (an `Append` runs its branches in
    // order) queues the batch behind the change instead of deadlocking with
    // it. Given the position the batch was planned at, it refuses
    // (`progress_refuse`, undoing the whole statement) if the cursor has
    // moved since; given a milestone's `lim`, the lowest threshold it may
    // not reach, it refuses if the batch's peak reaches it.
    let totals = |first: usize| {
        let deltas = first + array_params(MEMBER_DAILY_COLUMNS) + array_params(MILESTONE_DAILY_COLUMNS);
        format!(
            "md AS ({}), sd AS ({}), \
             d AS (SELECT r->>0 AS id, (r->>1)::bigint AS delta, (r->>2)::bigint AS n, \
                   (r->>3)::bigint AS peak, (r->>4)::bigint AS lim \
                   FROM unnest(ARRAY(SELECT jsonb_array_elements(${deltas}::jsonb))) r), \
             u AS (UPDATE milestone_progress m SET value = m.value + d.delta, \
                   activity_count = m.activity_count + d.n, value_time = ${} \
                   FROM d WHERE m.id = d.id \
                   RETURNING m.id, m.value, m.fired, m.value - d.delta + d.peak >= d.lim AS reaches), \
             goal_feed AS (SELECT position FROM feed_cursors WHERE feed = ${} FOR SHARE) \
             SELECT NULL::text AS id, \
                    CASE WHEN ${planned}::bigint IS NULL OR position = ${planned}::bigint THEN position \
                    ELSE progress_refuse('{REFUSED_ORG_MOVED}', 'goal''s feed moved since the batch was planned') \
                    END AS value, NULL::text AS fired FROM goal_feed \
             UNION ALL SELECT id, \
                    CASE WHEN reaches THEN progress_refuse('{REFUSED_THRESHOLD}', 'a milestone reaches a threshold') \
                    ELSE value END, fired FROM u",
            array_insert("member_daily", MEMBER_DAILY_COLUMNS, first, MEMBER_DAILY_CONFLICT),
            array_insert(
                "milestone_daily",
                MILESTONE_DAILY_COLUMNS,
                first + array_params(MEMBER_DAILY_COLUMNS),
                MILESTONE_DAILY_CONFLICT
            ),
            deltas + 1,
            deltas + 2,
            planned = deltas + 3,
        )
    };
    let separate_inserts = activities.len() >= SEPARATE_INSERTS_FROM;
    let deltas: Vec<Vec<Value>> = deltas
        .iter()
        .map(|(id, d)| {
            let lim = if mode.single_statement {
                org.announce_from(id)
            } else {
                None
            };
            vec![
                id.clone().into(),
                d.amount.into(),
                d.activities.into(),
                d.peak().into(),
                Value::BigInt(lim),
            ]
        })
        .collect();
    let mut total_rows = column_arrays(member_daily, MEMBER_DAILY_COLUMNS);
    total_rows.extend(column_arrays(milestone_daily, MILESTONE_DAILY_COLUMNS));
    total_rows.extend([
        json_rows(&deltas).into(),
        now.into(),
        crate::projection::GOAL_FEED.into(),
        Value::BigInt(mode.unchecked_org.then_some(org.cursor)),
    ]);
    // Straight to the connection, so that a unique violation keeps its
    // constraint's name (`WriteError` from `DbErr`).
    let query = |sql: &str, values: Vec<Value>| {
        conn.query_all(Statement::from_sql_and_values(DatabaseBackend::Postgres, sql, values))
    };
    // The inserts are data-modifying `WITH` clauses: PostgreSQL runs them
    // to completion whether or not the statement reads them.
    let found = if separate_inserts {
        // `COPY` inserts a page of rows at a time (one WAL record per page,
        // not per row) and reads no arrays.
        let copy = COPY.get_or_init(|| {
            let names: Vec<&str> = ACTIVITY_COLUMNS.iter().map(|(n, _)| *n).collect();
            format!("COPY activities ({}) FROM STDIN (FORMAT binary)", names.join(", "))
        });
        let rows = activities.iter().map(|r| r.cells(tenant, now));
        conn.copy_in(copy, &copy_rows(rows, ACTIVITY_COLUMNS.len())).await?;
        if !credits.is_empty() {
            let sql = CREDITS.get_or_init(|| array_insert("activity_credits", CREDIT_COLUMNS, 1, ""));
            query(sql, column_arrays(credits, CREDIT_COLUMNS)).await?;
        }
        exec(conn, "SELECT pg_advisory_xact_lock($1)", vec![TOTALS_TURN.into()]).await?;
        let sql = TOTALS.get_or_init(|| format!("WITH {}", totals(1)));
        query(sql, total_rows).await?
    } else {
        let sql = ALL.get_or_init(|| format!("WITH {}, {}", inserts(1), totals(1 + inserts_params)));
        let mut values = column_arrays(activity_values(activities, tenant, now), ACTIVITY_COLUMNS);
        values.extend(column_arrays(credits, CREDIT_COLUMNS));
        values.extend(total_rows);
        query(sql, values).await?
    };
    let mut out = HashMap::new();
    for r in found {
        // The cursor's row has no id.
        if let Some(id) = r.try_get::<Option<String>>("", "id")? {
            out.insert(id, (r.try_get("", "value")?, r.try_get("", "fired")?));
        }
    }
    Ok(out)
}

/// Parameters a row set of `columns` takes in [`array_insert`]: one array
/// per column, and one more per nullable column.
fn array_params(columns: &[(&str, Ty)]) -> usize {
    columns.len() + columns.iter().filter(|(_, ty)| ty.nullable()).count()
}

/// `INSERT INTO table (...) SELECT ... FROM unnest(...)` of the rows'
/// columns, as [`column_arrays`] passes them from parameter `$first` on.
fn array_insert(table: &str, columns: &[(&str, Ty)], first: usize, suffix: &str) -> String {
    let mut param = first;
    let (mut arrays, mut aliases, mut values) = (Vec::new(), Vec::new(), Vec::new());
    for (i, (_, ty)) in columns.iter().enumerate() {
        let (sql_type, _) = ty.array_of();
        arrays.push(format!("${param}::{sql_type}[]"));
        aliases.push(format!("c{i}"));
        param += 1;
        if ty.nullable() {
            arrays.push(format!("${param}::boolean[]"));
            aliases.push(format!("p{i}"));
            values.push(format!("CASE WHEN r.p{i} THEN r.c{i} END"));
            param += 1;
        } else {
            values.push(format!("r.c{i}"));
        }
    }
    let names: Vec<&str> = columns.iter().map(|(n, _)| *n).collect();
    format!(
        "INSERT INTO {table} ({}) SELECT {} FROM unnest({}) AS r({}) {suffix}",
        names.join(", "),
        values.join(", "),
        arrays.join(", "),
        aliases.join(", ")
    )
}

/// The rows' columns as array parameters for [`array_insert`]; a nullable
/// column is followed by whether each row has a value (a row without one
/// holds a placeholder).
fn column_arrays(rows: Vec<Vec<Value>>, columns: &[(&str, Ty)]) -> Vec<Value> {
    use sea_orm::sea_query::ArrayType;
    let mut cells: Vec<Vec<Value>> = columns.iter().map(|_| Vec::with_capacity(rows.len())).collect();
    let mut present: Vec<Vec<Value>> = columns.iter().map(|_| Vec::new()).collect();
    for row in rows {
        for (i, cell) in row.into_iter().enumerate() {
            match columns[i].1 {
                Ty::NullableText => {
                    let text = match cell {
                        Value::String(Some(s)) => Some(s),
                        _ => None,
                    };
                    present[i].push(text.is_some().into());
                    cells[i].push(Value::String(Some(text.unwrap_or_default())));
                }
                Ty::NullableBigInt => {
                    let n = match cell {
                        Value::BigInt(n) => n,
                        _ => None,
                    };
                    present[i].push(n.is_some().into());
                    cells[i].push(n.unwrap_or_default().into());
                }
                _ => cells[i].push(cell),
            }
        }
    }
    let mut out = Vec::with_capacity(array_params(columns));
    for ((cells, present), (_, ty)) in cells.into_iter().zip(present).zip(columns) {
        out.push(Value::Array(ty.array_of().1, Some(Box::new(cells))));
        if ty.nullable() {
            out.push(Value::Array(ArrayType::Bool, Some(Box::new(present))));
        }
    }
    out
}

/// Rows in `COPY`'s binary format: a header, then per row its field count
/// and each field's length (-1 for NULL) and bytes, then a trailer. Text
/// travels as its UTF-8 bytes, a bigint as 8 bytes big-endian.
fn copy_rows<'c, R: IntoIterator<Item = Cell<'c>>>(rows: impl ExactSizeIterator<Item = R>, columns: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(19 + rows.len() * (2 + columns * 24) + 2);
    out.extend_from_slice(b"PGCOPY\n\xff\r\n\0");
    out.extend_from_slice(&0i32.to_be_bytes()); // flags
    out.extend_from_slice(&0i32.to_be_bytes()); // header extension length
    let field = |out: &mut Vec<u8>, bytes: &[u8]| {
        out.extend_from_slice(&(bytes.len() as i32).to_be_bytes());
        out.extend_from_slice(bytes);
    };
    for row in rows {
        out.extend_from_slice(&(columns as i16).to_be_bytes());
        for cell in row {
            match cell {
                Cell::Text(s) => field(&mut out, s.as_bytes()),
                Cell::BigInt(n) => field(&mut out, &n.to_be_bytes()),
                Cell::Bytes(b) => field(&mut out, b),
                Cell::Null => out.extend_from_slice(&(-1i32).to_be_bytes()),
            }
        }
    }
    out.extend_from_slice(&(-1i16).to_be_bytes());
    out
}

/// Rows as a JSON array of arrays (the milestone deltas and announced
/// thresholds: ids, numbers and JSON text). Written straight into
/// one buffer: no JSON value per cell.
fn json_rows(rows: &[Vec<Value>]) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(rows.iter().map(|r| r.len() * 24).sum::<usize>() + 2);
    out.push('[');
    for (i, row) in rows.iter().enumerate() {
        out.push_str(if i == 0 { "[" } else { ",[" });
        for (j, v) in row.iter().enumerate() {
            if j > 0 {
                out.push(',');
            }
            match v {
                Value::String(Some(s)) => push_json_str(&mut out, s),
                Value::BigInt(Some(n)) => {
                    let _ = write!(out, "{n}");
                }
                Value::Int(Some(n)) => {
                    let _ = write!(out, "{n}");
                }
                Value::Bool(Some(b)) => out.push_str(if *b { "true" } else { "false" }),
                _ => out.push_str("null"),
            }
        }
        out.push(']');
    }
    out.push(']');
    out
}

/// A JSON string literal; ids, dates and names need no escaping, so the
/// common case is one copy.
fn push_json_str(out: &mut String, s: &str) {
    if s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.push('"');
        out.push_str(s);
        out.push('"');
    } else {
        out.push_str(&serde_json::Value::from(s).to_string());
    }
}

/// Inserts `rows` in as few statements as the parameter limit allows;
/// `suffix` follows each statement (e.g. an ON CONFLICT clause). SQLite
/// takes plain `?` parameters, in order: it looks `$N` up in a list, which
/// costs time quadratic in their number.
async fn insert_rows(
    conn: &impl ConnectionTrait,
    table: &str,
    columns: &[(&str, Ty)],
    rows: Vec<Vec<Value>>,
    suffix: &str,
) -> Result<(), WriteError> {
    let names: Vec<&str> = columns.iter().map(|(n, _)| *n).collect();
    let tuple = format!("({})", vec!["?"; columns.len()].join(", "));
    let per_statement = (MAX_PARAMS / columns.len()).max(1);
    let mut rows = rows.into_iter().peekable();
    while rows.peek().is_some() {
        let chunk: Vec<Vec<Value>> = rows.by_ref().take(per_statement).collect();
        let sql = format!(
            "INSERT INTO {table} ({}) VALUES {} {suffix}",
            names.join(", "),
            vec![tuple.as_str(); chunk.len()].join(", ")
        );
        let values: Vec<Value> = chunk.into_iter().flatten().collect();
        conn.execute(Statement::from_sql_and_values(conn.get_database_backend(), sql, values))
            .await?;
    }
    Ok(())
}

/// Adds each milestone's delta on SQLite (whose writers take turns, so no
/// lock order is needed) and returns the new values.
async fn add_deltas_sqlite(
    conn: &impl ConnectionTrait,
    deltas: &[(String, Delta<'_>)],
    now: i64,
) -> Result<Updated, ApiError> {
    let mut out = HashMap::new();
    for chunk in deltas.chunks(MAX_PARAMS / 3) {
        let mut values: Vec<Value> = Vec::with_capacity(chunk.len() * 3 + 1);
        for (id, d) in chunk {
            values.extend([Value::from(id.clone()), d.amount.into(), d.activities.into()]);
        }
        values.push(now.into());
        let sql = format!(
            "WITH d(id, delta, n) AS (VALUES {}) \
             UPDATE milestone_progress SET value = milestone_progress.value + d.delta, \
             activity_count = milestone_progress.activity_count + d.n, value_time = ? \
             FROM d WHERE milestone_progress.id = d.id \
             RETURNING milestone_progress.id, milestone_progress.value, milestone_progress.fired",
            vec!["(?, CAST(? AS BIGINT), CAST(? AS BIGINT))"; chunk.len()].join(", ")
        );
        for r in rows(conn, &sql, values).await? {
            out.insert(r.try_get("", "id")?, (r.try_get("", "value")?, r.try_get("", "fired")?));
        }
    }
    Ok(out)
}

/// Decides the thresholds each updated milestone reached, step by step in
/// request order (each attributed to the activity whose step reached it);
/// returns their events, the milestones changed, and the milestones whose
/// announced thresholds are to be written. Tells `org` what it saw.
fn settle(
    org: &TenantOrg,
    deltas: &[(String, Delta<'_>)],
    updated: Updated,
    now: i64,
) -> (Vec<pb::MilestoneEvent>, Vec<ProgressChanged>, Vec<Vec<Value>>) {
    let mut events = Vec::new();
    let mut changed = Vec::new();
    let mut announced: Vec<Vec<Value>> = Vec::new();
    for (id, delta) in deltas {
        let (Some(kept), Some((after, fired))) = (org.milestones.get(id), updated.get(id)) else {
            // Gone since planning (deleted by the projection): nothing left
            // to count toward.
            continue;
        };
        let before = after - delta.amount;
        let fired = serde_json::from_str::<Fired>(fired).unwrap_or_default();
        changed.push(ProgressChanged {
            tenant_id: kept.tenant_id.clone(),
            milestone_id: id.clone(),
            owner_kind: kept.owner_kind.clone(),
            owner_id: kept.owner_id.clone(),
        });
        // Thresholds are only ever announced once reached, so unless the
        // highest value of the batch reaches one not yet announced there is
        // nothing to decide (most batches): skip copying the milestone. The
        // single statement refuses by the same rule.
        let announce_from = rules::lowest_unannounced(kept, &fired);
        // What the database held: thresholds announced below are not
        // committed yet, and a rollback must not leave them in the cache.
        org.saw(id, *after, announce_from);
        if announce_from.is_none_or(|t| before + delta.peak() < t) {
            continue;
        }
        let m = &mut kept.clone();
        m.fired = fired;
        let was = m.fired.clone();
        for (activity, cumulative) in &delta.steps {
            m.value = before + cumulative;
            for crossing in rules::crossings(m, now) {
                events.push(event_of(
                    m,
                    &crossing,
                    delta.owner_teams,
                    Some(activity.as_ref()),
                    &org.settings.calendar,
                    now,
                ));
            }
        }
        if m.fired != was {
            announced.push(vec![
                id.clone().into(),
                serde_json::to_string(&m.fired).unwrap_or_else(|_| "{}".into()).into(),
            ]);
        }
    }
    (events, changed, announced)
}

/// Writes the announced thresholds of milestones (id, fired as JSON).
async fn record_announced(conn: &impl ConnectionTrait, announced: Vec<Vec<Value>>) -> Result<(), ApiError> {
    if conn.get_database_backend() == DatabaseBackend::Postgres {
        exec(
            conn,
            "UPDATE milestone_progress m SET fired = r->>1 FROM jsonb_array_elements($1::jsonb) r \
             WHERE m.id = r->>0",
            vec![json_rows(&announced).into()],
        )
        .await?;
    } else {
        for chunk in announced.chunks(MAX_PARAMS / 2) {
            let sql = format!(
                "WITH d(id, fired) AS (VALUES {}) UPDATE milestone_progress SET fired = d.fired \
                 FROM d WHERE milestone_progress.id = d.id",
                vec!["(?, ?)"; chunk.len()].join(", ")
            );
            exec(conn, &sql, chunk.iter().flatten().cloned().collect()).await?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use sea_orm::Value;

    use super::{
        activity_values, array_insert, array_params, column_arrays, copy_rows, json_rows, ActivityRow, Cell, Ty,
        ACTIVITY_COLUMNS,
    };

    /// `COPY`'s binary format: the signature, flags and header extension,
    /// then per row the field count and each field's length and bytes
    /// (-1 and none for NULL), then -1.
    #[test]
    fn rows_become_copy_binary() {
        let rows = [[Cell::Text("ab"), Cell::Null, Cell::BigInt(-2), Cell::Bytes(&[7])]];
        let mut expected = b"PGCOPY\n\xff\r\n\0".to_vec();
        expected.extend([0, 0, 0, 0, 0, 0, 0, 0]);
        expected.extend([0, 4]);
        expected.extend([0, 0, 0, 2, b'a', b'b']);
        expected.extend([0xff, 0xff, 0xff, 0xff]);
        expected.extend([0, 0, 0, 8, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xfe]);
        expected.extend([0, 0, 0, 1, 7]);
        expected.extend([0xff, 0xff]);
        assert_eq!(copy_rows(rows.into_iter(), 4), expected);
    }

    /// An activity's cells are in the order of its columns, NULL where it
    /// has no value; as sea-query values, a NULL keeps its column's type.
    #[test]
    fn an_activity_row_fills_its_columns() {
        let row = ActivityRow {
            id: "a1".into(),
            member_id: "m1",
            metric_id: "k1",
            value: 5,
            occurred_at: 10,
            occurred_date: "2026-01-01".into(),
            source: "crm",
            external_reference: None,
            credit_splits: "[]".into(),
            recorded_by: "svc",
            request_id: "r1",
            request_hash: &[1, 2],
            credited_amount: None,
        };
        let values = &activity_values(std::slice::from_ref(&row), "t1", 99)[0];
        let column = |name: &str| {
            let i = ACTIVITY_COLUMNS.iter().position(|(n, _)| *n == name).expect("column");
            values[i].clone()
        };
        assert_eq!(values.len(), ACTIVITY_COLUMNS.len());
        assert_eq!(column("tenant_id"), Value::from("t1"));
        assert_eq!(column("member_id"), Value::from("m1"));
        assert_eq!(column("occurred_date"), Value::from("2026-01-01"));
        assert_eq!(column("external_reference"), Value::String(None));
        assert_eq!(column("state"), Value::from("active"));
        assert_eq!(column("void_time"), Value::BigInt(None));
        assert_eq!(column("create_time"), Value::from(99i64));
        assert_eq!(column("recorded_by"), Value::from("svc"));
        assert_eq!(column("request_hash"), Value::from(vec![1u8, 2]));
        assert_eq!(column("credited_amount"), Value::BigInt(None));
    }

    /// The hand-written JSON reads back as what serde_json makes of the
    /// same cells, escapes included.
    #[test]
    fn rows_become_the_json_postgres_reads() {
        let rows = vec![
            vec![
                Value::from("plain"),
                Value::from("quote \" backslash \\ tab \t é"),
                Value::from(-42i64),
                Value::from(true),
                Value::String(None),
            ],
            vec![Value::from(""), Value::from(i64::MIN)],
        ];
        let parsed: serde_json::Value = serde_json::from_str(&json_rows(&rows)).expect("valid JSON");
        assert_eq!(
            parsed,
            serde_json::json!([
                ["plain", "quote \" backslash \\ tab \t é", -42, true, null],
                ["", i64::MIN]
            ])
        );
        assert_eq!(json_rows(&[]), "[]");
    }

    /// A nullable column travels as its values and whether each row has
    /// one; the statement puts NULL back where it has none.
    #[test]
    fn nullable_columns_travel_with_their_presence() {
        use sea_orm::sea_query::ArrayType;
        let columns = &[
            ("id", Ty::Text),
            ("reference", Ty::NullableText),
            ("amount", Ty::NullableBigInt),
        ];
        let rows = vec![
            vec![Value::from("a"), Value::String(None), Value::from(7i64)],
            vec![Value::from("b"), Value::from("crm-1"), Value::BigInt(None)],
        ];
        let arrays = column_arrays(rows, columns);
        assert_eq!(arrays.len(), array_params(columns));
        let array = |ty, cells: Vec<Value>| Value::Array(ty, Some(Box::new(cells)));
        assert_eq!(
            arrays,
            vec![
                array(ArrayType::String, vec!["a".into(), "b".into()]),
                array(ArrayType::String, vec!["".into(), "crm-1".into()]),
                array(ArrayType::Bool, vec![false.into(), true.into()]),
                array(ArrayType::BigInt, vec![7i64.into(), 0i64.into()]),
                array(ArrayType::Bool, vec![true.into(), false.into()]),
            ]
        );
        assert_eq!(
            array_insert("t", columns, 3, "ON CONFLICT DO NOTHING"),
            "INSERT INTO t (id, reference, amount) SELECT r.c0, CASE WHEN r.p1 THEN r.c1 END, \
             CASE WHEN r.p2 THEN r.c2 END FROM unnest($3::text[], $4::text[], $5::boolean[], $6::bigint[], \
             $7::boolean[]) AS r(c0, c1, p1, c2, p2) ON CONFLICT DO NOTHING"
        );
    }
}
