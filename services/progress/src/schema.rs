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

/// The progress service's migrations.
pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![Box::new(Init), Box::new(DropContributions), Box::new(MemberSubjects)]
    }

    fn migration_table_name() -> DynIden {
        Alias::new("progress_migrations").into_iden()
    }
}
