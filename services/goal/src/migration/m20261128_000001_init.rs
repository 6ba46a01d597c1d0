//! The first schema: org tree, metrics, milestones, revisions, reviews, the
//! change log and idempotency keys.
//!
//! Written as SQL because the two backends differ only in two types (the log
//! sequence and binary columns), which `run_schema` substitutes.

use sea_orm_migration::prelude::*;

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261128_000001_init"
    }
}

const SCHEMA: &str = r#"
CREATE TABLE tenant_settings (
    tenant_id TEXT PRIMARY KEY,
    time_zone TEXT NOT NULL,
    fiscal_year_start_month INTEGER NOT NULL,
    review_cadence_months INTEGER NOT NULL,
    version BIGINT NOT NULL,
    update_time BIGINT NOT NULL
);
CREATE TABLE teams (
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL,
    display_name TEXT NOT NULL,
    parent_id TEXT NULL REFERENCES teams(id),
    version BIGINT NOT NULL,
    create_time BIGINT NOT NULL,
    update_time BIGINT NOT NULL
);
CREATE INDEX teams_tenant_parent ON teams (tenant_id, parent_id);
CREATE TABLE members (
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL,
    display_name TEXT NOT NULL,
    email TEXT NOT NULL,
    role TEXT NOT NULL,
    subject TEXT NULL,
    version BIGINT NOT NULL,
    create_time BIGINT NOT NULL,
    update_time BIGINT NOT NULL
);
CREATE UNIQUE INDEX members_tenant_email ON members (tenant_id, email);
CREATE UNIQUE INDEX members_tenant_subject ON members (tenant_id, subject);
CREATE TABLE memberships (
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL,
    member_id TEXT NOT NULL REFERENCES members(id),
    team_id TEXT NOT NULL REFERENCES teams(id),
    start_date TEXT NOT NULL,
    end_date TEXT NULL,
    version BIGINT NOT NULL,
    create_time BIGINT NOT NULL,
    update_time BIGINT NOT NULL
);
CREATE INDEX memberships_tenant_member ON memberships (tenant_id, member_id);
CREATE INDEX memberships_tenant_team ON memberships (tenant_id, team_id);
CREATE TABLE metrics (
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL,
    display_name TEXT NOT NULL,
    description TEXT NOT NULL,
    unit TEXT NOT NULL,
    currency_code TEXT NOT NULL,
    aggregation TEXT NOT NULL,
    allow_negative_values BOOLEAN NOT NULL,
    version BIGINT NOT NULL,
    create_time BIGINT NOT NULL,
    update_time BIGINT NOT NULL
);
CREATE INDEX metrics_tenant ON metrics (tenant_id);
CREATE TABLE milestones (
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL,
    display_name TEXT NOT NULL,
    description TEXT NOT NULL,
    owner_kind TEXT NOT NULL,
    owner_id TEXT NOT NULL,
    metric_id TEXT NOT NULL REFERENCES metrics(id),
    start_date TEXT NOT NULL,
    end_date TEXT NOT NULL,
    target BIGINT NOT NULL,
    stretch_target BIGINT NULL,
    checkpoints TEXT NOT NULL,
    parent_id TEXT NULL REFERENCES milestones(id),
    state TEXT NOT NULL,
    next_review_date TEXT NULL,
    revision_count INTEGER NOT NULL,
    final_value BIGINT NULL,
    version BIGINT NOT NULL,
    create_time BIGINT NOT NULL,
    update_time BIGINT NOT NULL,
    activate_time BIGINT NULL,
    close_time BIGINT NULL,
    cancel_reason TEXT NULL,
    assessment {BLOB} NULL
);
CREATE INDEX milestones_tenant_owner ON milestones (tenant_id, owner_kind, owner_id);
CREATE INDEX milestones_tenant_parent ON milestones (tenant_id, parent_id);
CREATE INDEX milestones_tenant_review ON milestones (tenant_id, state, next_review_date);
CREATE TABLE milestone_revisions (
    milestone_id TEXT NOT NULL REFERENCES milestones(id),
    revision_number INTEGER NOT NULL,
    tenant_id TEXT NOT NULL,
    reason TEXT NOT NULL,
    author TEXT NOT NULL,
    previous_terms TEXT NOT NULL,
    new_terms TEXT NOT NULL,
    changed_fields TEXT NOT NULL,
    create_time BIGINT NOT NULL,
    PRIMARY KEY (milestone_id, revision_number)
);
CREATE TABLE milestone_reviews (
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL,
    milestone_id TEXT NOT NULL REFERENCES milestones(id),
    outcome TEXT NOT NULL,
    notes TEXT NOT NULL,
    reviewer TEXT NOT NULL,
    review_date TEXT NOT NULL,
    next_review_date TEXT NOT NULL,
    revision_number INTEGER NULL,
    create_time BIGINT NOT NULL
);
CREATE INDEX milestone_reviews_milestone ON milestone_reviews (tenant_id, milestone_id);
CREATE TABLE change_events (
    seq {SEQ},
    tenant_id TEXT NOT NULL,
    payload {BLOB} NOT NULL,
    create_time BIGINT NOT NULL
);
CREATE INDEX change_events_tenant_seq ON change_events (tenant_id, seq);
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

#[async_trait::async_trait]
#[allow(elided_lifetimes_in_paths)]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        milestones_runtime::db::run_schema(db, SCHEMA).await?;
        Ok(())
    }
}
