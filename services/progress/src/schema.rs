//! The progress service's schema and its one migration.
//!
//! Written as SQL because the two backends differ only in two types (the log
//! sequence and binary columns), which `run_schema` substitutes.
//!
//! - `projection_*`: the local copy of goal's org, metrics and milestones,
//!   fed by goal's change feed; `feed_cursors` holds how far it got.
//! - `activities` and `activity_credits`: what was recorded, and who got how
//!   much of it.
//! - `milestone_progress`: one row per tracked milestone with its running
//!   value and which thresholds have been announced. Which milestones a
//!   credit counts toward is derived (member, team chain on its date,
//!   metric, period), not stored: a void subtracts what recording added by
//!   deriving the same set.
//! - `member_daily` and `milestone_daily`: per-day totals that keep
//!   leaderboards, time series and history independent of the number of
//!   activities.
//! - `milestone_events`: the outbox of the milestone event feed.
//!
//! On PostgreSQL every text column compares as bytes (`COLLATE "C"`, see
//! [`ByteCollation`]); a later migration that adds one must say so too.

use std::collections::BTreeMap;

use sea_orm::{ConnectionTrait, DatabaseBackend};
use sea_orm_migration::prelude::*;

const SCHEMA: &str = r#"
CREATE TABLE feed_cursors (
    feed TEXT PRIMARY KEY,
    position BIGINT NOT NULL
);
CREATE TABLE projection_settings (
    tenant_id TEXT PRIMARY KEY,
    time_zone TEXT NOT NULL,
    fiscal_year_start_month INTEGER NOT NULL
);
CREATE TABLE projection_teams (
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL,
    parent_id TEXT NULL
);
CREATE INDEX projection_teams_tenant ON projection_teams (tenant_id);
CREATE TABLE projection_members (
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL,
    display_name TEXT NOT NULL
);
CREATE TABLE projection_memberships (
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL,
    member_id TEXT NOT NULL,
    team_id TEXT NOT NULL,
    start_date TEXT NOT NULL,
    end_date TEXT NULL
);
CREATE INDEX projection_memberships_member ON projection_memberships (tenant_id, member_id);
CREATE INDEX projection_memberships_team ON projection_memberships (tenant_id, team_id);
CREATE TABLE projection_metrics (
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL,
    aggregation TEXT NOT NULL,
    allow_negative_values BOOLEAN NOT NULL
);
CREATE TABLE milestone_progress (
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL,
    owner_kind TEXT NOT NULL,
    owner_id TEXT NOT NULL,
    metric_id TEXT NOT NULL,
    start_date TEXT NOT NULL,
    end_date TEXT NOT NULL,
    target BIGINT NOT NULL,
    stretch_target BIGINT NULL,
    checkpoints TEXT NOT NULL,
    state TEXT NOT NULL,
    value BIGINT NOT NULL,
    activity_count BIGINT NOT NULL,
    fired TEXT NOT NULL,
    value_time BIGINT NULL
);
CREATE INDEX milestone_progress_owner ON milestone_progress (tenant_id, owner_kind, owner_id, metric_id);
CREATE TABLE activities (
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL,
    member_id TEXT NOT NULL,
    metric_id TEXT NOT NULL,
    value BIGINT NOT NULL,
    occurred_at BIGINT NOT NULL,
    occurred_date TEXT NOT NULL,
    source TEXT NOT NULL,
    external_reference TEXT NULL,
    credit_splits TEXT NOT NULL,
    state TEXT NOT NULL,
    void_reason TEXT NOT NULL,
    void_time BIGINT NULL,
    create_time BIGINT NOT NULL,
    recorded_by TEXT NOT NULL
);
CREATE UNIQUE INDEX activities_external_reference ON activities (tenant_id, source, external_reference);
CREATE INDEX activities_tenant_time ON activities (tenant_id, occurred_at);
CREATE TABLE activity_credits (
    activity_id TEXT NOT NULL,
    member_id TEXT NOT NULL,
    tenant_id TEXT NOT NULL,
    metric_id TEXT NOT NULL,
    amount BIGINT NOT NULL,
    occurred_date TEXT NOT NULL,
    active BOOLEAN NOT NULL,
    PRIMARY KEY (activity_id, member_id)
);
CREATE INDEX activity_credits_member ON activity_credits (tenant_id, member_id, metric_id, occurred_date);
CREATE TABLE milestone_contributions (
    milestone_id TEXT NOT NULL,
    activity_id TEXT NOT NULL,
    member_id TEXT NOT NULL,
    amount BIGINT NOT NULL,
    occurred_date TEXT NOT NULL,
    PRIMARY KEY (milestone_id, activity_id, member_id)
);
CREATE INDEX milestone_contributions_activity ON milestone_contributions (activity_id);
CREATE TABLE member_daily (
    tenant_id TEXT NOT NULL,
    member_id TEXT NOT NULL,
    metric_id TEXT NOT NULL,
    day TEXT NOT NULL,
    amount BIGINT NOT NULL,
    activity_count BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, member_id, metric_id, day)
);
CREATE TABLE milestone_daily (
    milestone_id TEXT NOT NULL,
    day TEXT NOT NULL,
    amount BIGINT NOT NULL,
    PRIMARY KEY (milestone_id, day)
);
CREATE TABLE milestone_events (
    seq {SEQ},
    tenant_id TEXT NOT NULL,
    payload {BLOB} NOT NULL,
    create_time BIGINT NOT NULL
);
CREATE INDEX milestone_events_tenant_seq ON milestone_events (tenant_id, seq);
CREATE TABLE idempotency_keys (
    tenant_id TEXT NOT NULL,
    caller TEXT NOT NULL,
    method TEXT NOT NULL,
    request_id TEXT NOT NULL,
    request {BLOB} NOT NULL,
    response {BLOB} NOT NULL,
    create_time BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, caller, method, request_id)
)
"#;

/// The first schema.
pub struct Init;

impl MigrationName for Init {
    fn name(&self) -> &str {
        "m20261128_000001_progress_init"
    }
}

#[async_trait::async_trait]
#[allow(elided_lifetimes_in_paths)]
impl MigrationTrait for Init {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        milestones_runtime::db::run_schema(db, SCHEMA).await?;
        if db.get_database_backend() == DatabaseBackend::Postgres {
            // Running totals are rewritten by every activity: leave room in
            // each page for HOT updates and vacuum them early, or reads slow
            // down as dead row versions pile up.
            for table in ["milestone_progress", "member_daily", "milestone_daily"] {
                db.execute_unprepared(&format!(
                    "ALTER TABLE {table} SET (fillfactor = 50, autovacuum_vacuum_scale_factor = 0.0, \
                     autovacuum_vacuum_threshold = 2000, autovacuum_vacuum_cost_delay = 0)"
                ))
                .await?;
            }
        }
        Ok(())
    }
}

/// Drops the per-(milestone, activity) contribution rows: five rows per
/// activity for a fact that can be derived, and most of ingestion's writes.
pub struct DropContributions;

impl MigrationName for DropContributions {
    fn name(&self) -> &str {
        "m20261128_000002_drop_contributions"
    }
}

#[async_trait::async_trait]
#[allow(elided_lifetimes_in_paths)]
impl MigrationTrait for DropContributions {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared("DROP TABLE IF EXISTS milestone_contributions")
            .await?;
        Ok(())
    }
}

/// Keeps each member's token subject, so reads can be scoped to what a
/// manager or rep caller reaches (docs/authorization.md). Members copied
/// before it get theirs with their next change in goal.
pub struct MemberSubjects;

impl MigrationName for MemberSubjects {
    fn name(&self) -> &str {
        "m20261129_000001_member_subjects"
    }
}

#[async_trait::async_trait]
#[allow(elided_lifetimes_in_paths)]
impl MigrationTrait for MemberSubjects {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let conn = manager.get_connection();
        conn.execute_unprepared("ALTER TABLE projection_members ADD COLUMN subject TEXT NULL")
            .await?;
        conn.execute_unprepared("CREATE INDEX projection_members_subject ON projection_members (tenant_id, subject)")
            .await?;
        Ok(())
    }
}

/// Makes an activity its own idempotency record and, when one member gets
/// all of it, its own credit: per activity, one row to write instead of
/// three (the activity, its credit, its idempotency key), which was most
/// of ingestion's cost.
///
/// - `request_id` (unique per tenant and recording caller) and
///   `request_hash` (SHA-256 of the request without its id) tell a retry
///   from a reused id; a retry answers with the stored activity.
/// - `credited_amount` is the one member's amount when the activity is not
///   split; split activities keep their `activity_credits` rows.
/// - The view `credits` reads both as one: every (activity, member) credit.
///
/// `RecordActivity` keys already stored move onto their activities.
pub struct LeanActivities;

impl MigrationName for LeanActivities {
    fn name(&self) -> &str {
        "m20261129_000002_lean_activities"
    }
}

const LEAN_ACTIVITIES: &str = r#"
ALTER TABLE activities ADD COLUMN request_id TEXT NULL;
ALTER TABLE activities ADD COLUMN request_hash {BLOB} NULL;
ALTER TABLE activities ADD COLUMN credited_amount BIGINT NULL;
CREATE UNIQUE INDEX activities_request ON activities (tenant_id, recorded_by, request_id);
CREATE INDEX activities_credited_member ON activities (tenant_id, member_id, metric_id, occurred_date)
    WHERE credited_amount IS NOT NULL;
"#;

/// Every (activity, member) credit, whichever table holds it.
const CREDITS_VIEW: &str = r#"
CREATE VIEW credits AS
    SELECT id AS activity_id, member_id, tenant_id, metric_id, credited_amount AS amount, occurred_date,
           state = 'active' AS active
    FROM activities WHERE credited_amount IS NOT NULL
    UNION ALL
    SELECT activity_id, member_id, tenant_id, metric_id, amount, occurred_date, active FROM activity_credits
"#;

#[async_trait::async_trait]
#[allow(elided_lifetimes_in_paths)]
impl MigrationTrait for LeanActivities {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        use prost::Message as _;
        use sea_orm::{Statement, Value};
        let db = manager.get_connection();
        milestones_runtime::db::run_schema(db, LEAN_ACTIVITIES).await?;
        db.execute_unprepared(CREDITS_VIEW).await?;
        let backend = db.get_database_backend();
        // Move the stored keys in chunks: each names its activity in the
        // response it kept.
        loop {
            let keys = db
                .query_all(Statement::from_string(
                    backend,
                    "SELECT tenant_id, caller, request_id, request, response FROM idempotency_keys \
                     WHERE method = 'RecordActivity' LIMIT 1000",
                ))
                .await?;
            if keys.is_empty() {
                return Ok(());
            }
            for k in keys {
                let (tenant, caller, request_id): (String, String, String) = (
                    k.try_get("", "tenant_id")?,
                    k.try_get("", "caller")?,
                    k.try_get("", "request_id")?,
                );
                let request: Vec<u8> = k.try_get("", "request")?;
                let response: Vec<u8> = k.try_get("", "response")?;
                let activity = milestones_api::progress::Activity::decode(response.as_slice())
                    .map_err(|e| DbErr::Migration(format!("a stored RecordActivity response does not decode: {e}")))?;
                let id = activity.name.trim_start_matches("activities/").to_string();
                db.execute(Statement::from_sql_and_values(
                    backend,
                    "UPDATE activities SET request_id = $1, request_hash = $2 WHERE id = $3 AND tenant_id = $4",
                    [
                        Value::from(request_id.clone()),
                        crate::ops::request_hash(&request).into(),
                        id.into(),
                        tenant.clone().into(),
                    ],
                ))
                .await?;
                db.execute(Statement::from_sql_and_values(
                    backend,
                    "DELETE FROM idempotency_keys WHERE tenant_id = $1 AND caller = $2 \
                     AND method = 'RecordActivity' AND request_id = $3",
                    [tenant.into(), caller.into(), request_id.into()],
                ))
                .await?;
            }
        }
    }
}

/// PostgreSQL only: every text column compares as bytes (`COLLATE "C"`).
///
/// Keys here are ids, dates and codes, and a database created with a
/// locale such as `C.UTF-8` compares them through the C library's collation
/// (a copy and a `strcoll` per comparison): perf put a fifth of PostgreSQL's
/// time in an import there. Byte order is also SQLite's and Rust's, so
/// orderings and pages do not change.
pub struct ByteCollation;

impl MigrationName for ByteCollation {
    fn name(&self) -> &str {
        "m20261129_000003_byte_collation"
    }
}

#[async_trait::async_trait]
#[allow(elided_lifetimes_in_paths)]
impl MigrationTrait for ByteCollation {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        if db.get_database_backend() != DatabaseBackend::Postgres {
            return Ok(());
        }
        let columns = db
            .query_all(sea_orm::Statement::from_string(
                DatabaseBackend::Postgres,
                "SELECT c.table_name, c.column_name FROM information_schema.columns c \
                 JOIN information_schema.tables t ON t.table_schema = c.table_schema AND t.table_name = c.table_name \
                 WHERE c.table_schema = current_schema() AND t.table_type = 'BASE TABLE' AND c.data_type = 'text' \
                 AND c.collation_name IS NULL ORDER BY c.table_name, c.ordinal_position",
            ))
            .await?;
        let mut by_table: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for c in columns {
            by_table
                .entry(c.try_get("", "table_name")?)
                .or_default()
                .push(c.try_get("", "column_name")?);
        }
        // A column's type cannot change under a view that reads it.
        db.execute_unprepared("DROP VIEW credits").await?;
        // One statement per table: each rewrites the table once.
        for (table, columns) in by_table {
            let alters: Vec<String> = columns
                .iter()
                .map(|c| format!("ALTER COLUMN \"{c}\" TYPE TEXT COLLATE \"C\""))
                .collect();
            db.execute_unprepared(&format!("ALTER TABLE \"{table}\" {}", alters.join(", ")))
                .await?;
        }
        db.execute_unprepared(CREDITS_VIEW).await?;
        Ok(())
    }
}

/// Cheaper index entries for activities and daily totals, measured by
/// inserting 100,000 activities on PostgreSQL (2026-11-29): the indexes
/// cost 22 of the 25 µs per row, most of it comparing keys.
///
/// - A key that leads with its most selective column decides most
///   comparisons on the first one: every row of a tenant has the same
///   `tenant_id`, so a key that starts with it compares two columns at
///   least, and reading a column after a text column costs a walk over the
///   ones before it. `tenant_id` moves last (member ids and request ids
///   are per tenant anyway): 4.4 → 3.0 µs for the member index, 4.2 → 2.5 µs
///   for request ids.
/// - Most activities have no external reference, and a NULL never
///   collides: only the others are indexed (2.6 µs → 0).
///
/// Queries keep naming `tenant_id`; it is still in every key.
pub struct SelectiveKeys;

impl MigrationName for SelectiveKeys {
    fn name(&self) -> &str {
        "m20261129_000004_selective_keys"
    }
}

const SELECTIVE_KEYS: &str = r#"
DROP INDEX activities_external_reference;
CREATE UNIQUE INDEX activities_external_reference ON activities (external_reference, source, tenant_id)
    WHERE external_reference IS NOT NULL;
DROP INDEX activities_request;
CREATE UNIQUE INDEX activities_request ON activities (request_id, recorded_by, tenant_id);
DROP INDEX activities_credited_member;
CREATE INDEX activities_credited_member ON activities (member_id, metric_id, occurred_date, tenant_id)
    WHERE credited_amount IS NOT NULL;
DROP INDEX activity_credits_member;
CREATE INDEX activity_credits_member ON activity_credits (member_id, metric_id, occurred_date, tenant_id);
"#;

#[async_trait::async_trait]
#[allow(elided_lifetimes_in_paths)]
impl MigrationTrait for SelectiveKeys {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        milestones_runtime::db::run_schema(db, SELECTIVE_KEYS).await?;
        // SQLite cannot change a primary key in place, and compares its
        // keys with memcmp: the member's daily totals keep theirs there.
        if db.get_database_backend() == DatabaseBackend::Postgres {
            db.execute_unprepared(
                "ALTER TABLE member_daily DROP CONSTRAINT member_daily_pkey, \
                 ADD PRIMARY KEY (member_id, metric_id, day, tenant_id)",
            )
            .await?;
        }
        Ok(())
    }
}

/// PostgreSQL only: `progress_refuse(code, reason)`, which fails the
/// statement that calls it with SQLSTATE `code`.
///
/// A small ingestion batch is written in one statement outside a
/// transaction block, which commits on its own; a condition that only the
/// database can check under lock (goal's feed has moved since the batch was
/// planned, a milestone reaches a threshold that must be announced in the
/// same transaction) must then undo the whole statement, and a failing
/// statement does. SQL has no way to raise an error: PL/pgSQL has.
pub struct RefusalFunction;

impl MigrationName for RefusalFunction {
    fn name(&self) -> &str {
        "m20261130_000001_refusal_function"
    }
}

#[async_trait::async_trait]
#[allow(elided_lifetimes_in_paths)]
impl MigrationTrait for RefusalFunction {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        if db.get_database_backend() != DatabaseBackend::Postgres {
            return Ok(());
        }
        db.execute_unprepared(
            "CREATE FUNCTION progress_refuse(code text, reason text) RETURNS bigint LANGUAGE plpgsql AS $$ \
             BEGIN RAISE EXCEPTION USING ERRCODE = code, MESSAGE = reason; END $$",
        )
        .await?;
        Ok(())
    }
}

/// The progress service's migrations.
pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(Init),
            Box::new(DropContributions),
            Box::new(MemberSubjects),
            Box::new(LeanActivities),
            Box::new(ByteCollation),
            Box::new(SelectiveKeys),
            Box::new(RefusalFunction),
        ]
    }

    fn migration_table_name() -> DynIden {
        Alias::new("progress_migrations").into_iden()
    }
}

#[cfg(test)]
mod tests {
    use prost::Message as _;
    use sea_orm::{ConnectionTrait, Database, Statement, Value};
    use sea_orm_migration::MigratorTrait as _;

    use super::Migrator;

    /// An activity recorded before `LeanActivities` keeps answering its
    /// retries: its stored key moves onto the activity row.
    #[tokio::test]
    async fn stored_request_ids_move_onto_their_activities() {
        let db = Database::connect("sqlite::memory:").await.expect("sqlite");
        Migrator::up(&db, Some(3))
            .await
            .expect("migrations before LeanActivities");
        let exec = |sql: &str, values: Vec<Value>| {
            db.execute(Statement::from_sql_and_values(db.get_database_backend(), sql, values))
        };
        exec(
            "INSERT INTO activities (id, tenant_id, member_id, metric_id, value, occurred_at, occurred_date, source, \
             external_reference, credit_splits, state, void_reason, void_time, create_time, recorded_by) \
             VALUES ('a1', 't1', 'ada', 'arr', 500, 1, '2026-11-01', 'crm', NULL, '[]', 'active', '', NULL, 1, 'importer')",
            vec![],
        )
        .await
        .expect("activity");
        let request = b"the request without its id".to_vec();
        let response = milestones_api::progress::Activity {
            name: "activities/a1".into(),
            ..Default::default()
        }
        .encode_to_vec();
        for (method, request_id) in [("RecordActivity", "r-1"), ("VoidActivity", "v-1")] {
            exec(
                "INSERT INTO idempotency_keys (tenant_id, caller, method, request_id, request, response, create_time) \
                 VALUES ('t1', 'importer', $1, $2, $3, $4, 1)",
                vec![
                    method.into(),
                    request_id.into(),
                    request.clone().into(),
                    response.clone().into(),
                ],
            )
            .await
            .expect("key");
        }

        Migrator::up(&db, None).await.expect("LeanActivities");

        let moved = db
            .query_one(Statement::from_string(
                db.get_database_backend(),
                "SELECT request_id, request_hash, credited_amount FROM activities WHERE id = 'a1'",
            ))
            .await
            .expect("read")
            .expect("the activity");
        assert_eq!(moved.try_get::<String>("", "request_id").expect("request_id"), "r-1");
        assert_eq!(
            moved.try_get::<Vec<u8>>("", "request_hash").expect("request_hash"),
            crate::ops::request_hash(&request)
        );
        // Its credit stays in activity_credits (none here), not on the row.
        assert_eq!(
            moved
                .try_get::<Option<i64>>("", "credited_amount")
                .expect("credited_amount"),
            None
        );
        let left: Vec<String> = db
            .query_all(Statement::from_string(
                db.get_database_backend(),
                "SELECT method FROM idempotency_keys",
            ))
            .await
            .expect("keys")
            .iter()
            .map(|r| r.try_get("", "method").expect("method"))
            .collect();
        assert_eq!(left, ["VoidActivity"], "only RecordActivity keys move");
    }
}
