//! The recognition service's schema and its one migration.
//!
//! Written as SQL because the two backends differ only in two types (the log
//! sequence and binary columns), which `run_schema` substitutes.
//!
//! - `org_*`: the local copy of goal's org (teams, members with their role
//!   and token subject, memberships), metrics and milestones, fed by goal's
//!   change feed. Visibility, the manager chain and kudos' day need it.
//! - `feed_cursors`: how far each consumed feed got, written in the same
//!   transaction as that feed's effects.
//! - `badges`, `rules` and `rule_versions`: the catalog; a rule's versions
//!   say which terms were in force at any instant, so a lagging consumer
//!   applies the terms of the event's time, not of the time it catches up.
//! - `recognitions`: the awards, UNIQUE on (rule, milestone, event kind,
//!   threshold) and on (rule, first_key) for first-in-team, so a replay or a
//!   second replica fails to insert instead of awarding twice.
//! - `achievements`: every target reached, for streaks and first-in-team.
//! - `points_balances` and `points_entries`: the ledger and its running sum,
//!   the row that a debit updates conditionally so it never goes below 0.
//! - `rewards`, `redemptions`, `kudos`, `feedback`.
//! - `recognition_events`: the outbox of the recognition feed.

use sea_orm_migration::prelude::*;

const SCHEMA: &str = r#"
CREATE TABLE feed_cursors (
    feed TEXT PRIMARY KEY,
    position BIGINT NOT NULL
);
CREATE TABLE org_settings (
    tenant_id TEXT PRIMARY KEY,
    time_zone TEXT NOT NULL
);
CREATE TABLE org_teams (
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL,
    parent_id TEXT NULL
);
CREATE INDEX org_teams_tenant ON org_teams (tenant_id);
CREATE TABLE org_members (
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL,
    display_name TEXT NOT NULL,
    role TEXT NOT NULL,
    subject TEXT NULL
);
CREATE INDEX org_members_subject ON org_members (tenant_id, subject);
CREATE TABLE org_memberships (
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL,
    member_id TEXT NOT NULL,
    team_id TEXT NOT NULL,
    start_date TEXT NOT NULL,
    end_date TEXT NULL
);
CREATE INDEX org_memberships_member ON org_memberships (tenant_id, member_id);
CREATE INDEX org_memberships_team ON org_memberships (tenant_id, team_id);
CREATE TABLE org_metrics (
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL,
    display_name TEXT NOT NULL
);
CREATE TABLE org_milestones (
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL,
    display_name TEXT NOT NULL,
    owner TEXT NOT NULL
);
CREATE TABLE badges (
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL,
    display_name TEXT NOT NULL,
    description TEXT NOT NULL,
    image_uri TEXT NOT NULL,
    tier INTEGER NOT NULL,
    create_time BIGINT NOT NULL,
    update_time BIGINT NOT NULL,
    version BIGINT NOT NULL
);
CREATE INDEX badges_tenant ON badges (tenant_id, tier, display_name);
CREATE TABLE rules (
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL,
    display_name TEXT NOT NULL,
    description TEXT NOT NULL,
    enabled BOOLEAN NOT NULL,
    trigger_kind INTEGER NOT NULL,
    streak_length INTEGER NOT NULL,
    top_n INTEGER NOT NULL,
    scope_team TEXT NULL,
    scope_metric TEXT NULL,
    badge_id TEXT NULL,
    points BIGINT NOT NULL,
    visibility INTEGER NOT NULL,
    create_time BIGINT NOT NULL,
    update_time BIGINT NOT NULL,
    version BIGINT NOT NULL
);
CREATE INDEX rules_tenant ON rules (tenant_id, id);
CREATE INDEX rules_badge ON rules (badge_id);
CREATE TABLE rule_versions (
    rule_id TEXT NOT NULL,
    version BIGINT NOT NULL,
    tenant_id TEXT NOT NULL,
    valid_from BIGINT NOT NULL,
    enabled BOOLEAN NOT NULL,
    trigger_kind INTEGER NOT NULL,
    streak_length INTEGER NOT NULL,
    top_n INTEGER NOT NULL,
    scope_team TEXT NULL,
    scope_metric TEXT NULL,
    badge_id TEXT NULL,
    points BIGINT NOT NULL,
    visibility INTEGER NOT NULL,
    PRIMARY KEY (rule_id, version)
);
CREATE INDEX rule_versions_tenant ON rule_versions (tenant_id, valid_from);
CREATE TABLE recognitions (
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL,
    rule_id TEXT NOT NULL,
    trigger_kind INTEGER NOT NULL,
    milestone_id TEXT NOT NULL,
    metric_id TEXT NOT NULL,
    event_kind INTEGER NOT NULL,
    threshold BIGINT NOT NULL,
    event_seq BIGINT NOT NULL,
    recipient_kind TEXT NOT NULL,
    recipient_id TEXT NOT NULL,
    badge_id TEXT NULL,
    points BIGINT NOT NULL,
    reason TEXT NOT NULL,
    recipient_teams TEXT NOT NULL,
    visibility INTEGER NOT NULL,
    first_key TEXT NULL,
    create_time BIGINT NOT NULL
);
CREATE UNIQUE INDEX recognitions_once ON recognitions (rule_id, milestone_id, event_kind, threshold);
CREATE UNIQUE INDEX recognitions_first ON recognitions (rule_id, first_key);
CREATE INDEX recognitions_tenant_time ON recognitions (tenant_id, create_time, id);
CREATE INDEX recognitions_recipient ON recognitions (tenant_id, recipient_id, create_time);
CREATE INDEX recognitions_badge ON recognitions (badge_id);
CREATE TABLE achievements (
    milestone_id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL,
    owner TEXT NOT NULL,
    metric_id TEXT NOT NULL,
    start_date TEXT NOT NULL,
    end_date TEXT NOT NULL,
    owner_teams TEXT NOT NULL,
    event_seq BIGINT NOT NULL
);
CREATE INDEX achievements_cohort ON achievements (tenant_id, metric_id, start_date, end_date);
CREATE INDEX achievements_owner ON achievements (tenant_id, owner, metric_id, end_date);
CREATE TABLE points_balances (
    tenant_id TEXT NOT NULL,
    member_id TEXT NOT NULL,
    balance BIGINT NOT NULL,
    update_time BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, member_id),
    CHECK (balance >= 0)
);
CREATE TABLE points_entries (
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL,
    member_id TEXT NOT NULL,
    amount BIGINT NOT NULL,
    cause_kind TEXT NOT NULL,
    cause_id TEXT NOT NULL,
    reason TEXT NOT NULL,
    adjusted_by TEXT NOT NULL,
    balance_after BIGINT NOT NULL,
    create_time BIGINT NOT NULL
);
CREATE INDEX points_entries_member ON points_entries (tenant_id, member_id, create_time, id);
CREATE TABLE rewards (
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL,
    display_name TEXT NOT NULL,
    description TEXT NOT NULL,
    cost_points BIGINT NOT NULL,
    available BOOLEAN NOT NULL,
    stock BIGINT NULL,
    create_time BIGINT NOT NULL,
    update_time BIGINT NOT NULL,
    version BIGINT NOT NULL,
    CHECK (stock IS NULL OR stock >= 0)
);
CREATE INDEX rewards_tenant ON rewards (tenant_id, cost_points, display_name);
CREATE TABLE redemptions (
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL,
    member_id TEXT NOT NULL,
    reward_id TEXT NOT NULL,
    reward_display_name TEXT NOT NULL,
    cost_points BIGINT NOT NULL,
    points_entry_id TEXT NOT NULL,
    redeemed_by TEXT NOT NULL,
    create_time BIGINT NOT NULL
);
CREATE INDEX redemptions_tenant_time ON redemptions (tenant_id, create_time, id);
CREATE TABLE kudos (
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL,
    giver_id TEXT NOT NULL,
    recipient_id TEXT NOT NULL,
    milestone_id TEXT NULL,
    message TEXT NOT NULL,
    visibility INTEGER NOT NULL,
    giver_day TEXT NOT NULL,
    create_time BIGINT NOT NULL
);
CREATE INDEX kudos_giver_day ON kudos (tenant_id, giver_id, giver_day);
CREATE INDEX kudos_tenant_time ON kudos (tenant_id, create_time, id);
CREATE TABLE feedback (
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL,
    member_id TEXT NOT NULL,
    author_id TEXT NOT NULL,
    milestone_id TEXT NULL,
    body TEXT NOT NULL,
    kind INTEGER NOT NULL,
    create_time BIGINT NOT NULL
);
CREATE INDEX feedback_tenant_time ON feedback (tenant_id, create_time, id);
CREATE TABLE recognition_events (
    seq {SEQ},
    tenant_id TEXT NOT NULL,
    payload {BLOB} NOT NULL,
    create_time BIGINT NOT NULL
);
CREATE INDEX recognition_events_tenant_seq ON recognition_events (tenant_id, seq);
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
        "m20261128_000001_recognition_init"
    }
}

#[async_trait::async_trait]
#[allow(elided_lifetimes_in_paths)]
impl MigrationTrait for Init {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        milestones_runtime::db::run_schema(manager.get_connection(), SCHEMA).await
    }
}

/// The recognition service's migrations.
pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![Box::new(Init)]
    }

    fn migration_table_name() -> DynIden {
        Alias::new("recognition_migrations").into_iden()
    }
}
