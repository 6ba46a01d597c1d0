//! Queries on the progress service's tables. Functions take any connection
//! (the pool or a transaction) and return `ApiError` for failures.

use milestones_domain::calendar::parse_date;
use milestones_domain::terms::Checkpoint;
use milestones_runtime::ApiError;
use sea_orm::{ConnectionTrait, QueryResult, Statement, Value};
use serde::{Deserialize, Serialize};

/// Runs a statement.
pub async fn exec(conn: &impl ConnectionTrait, sql: &str, values: Vec<Value>) -> Result<u64, ApiError> {
    Ok(conn
        .execute(Statement::from_sql_and_values(conn.get_database_backend(), sql, values))
        .await?
        .rows_affected())
}

/// Runs a query.
pub async fn rows(conn: &impl ConnectionTrait, sql: &str, values: Vec<Value>) -> Result<Vec<QueryResult>, ApiError> {
    Ok(conn
        .query_all(Statement::from_sql_and_values(conn.get_database_backend(), sql, values))
        .await?)
}

/// Runs a query expected to return at most one row.
pub async fn row(conn: &impl ConnectionTrait, sql: &str, values: Vec<Value>) -> Result<Option<QueryResult>, ApiError> {
    Ok(conn
        .query_one(Statement::from_sql_and_values(conn.get_database_backend(), sql, values))
        .await?)
}

/// Which thresholds of a milestone have been announced, and when each was
/// first reached. Never cleared: a threshold (a kind and a value) is
/// announced once per milestone, whatever the value does afterwards.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fired {
    #[serde(default)]
    pub reached: Vec<Reached>,
    #[serde(default)]
    pub period_ended: bool,
}

/// One announced threshold.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reached {
    /// The `MilestoneEventKind` announced.
    pub kind: i32,
    pub threshold: i64,
    /// First-reach instant, µs.
    pub at: i64,
}

impl Fired {
    /// When the threshold of `kind` at `threshold` was first reached.
    pub fn first_reach(&self, kind: milestones_api::progress::MilestoneEventKind, threshold: i64) -> Option<i64> {
        self.reached
            .iter()
            .find(|r| r.kind == kind as i32 && r.threshold == threshold)
            .map(|r| r.at)
    }
}

/// A tracked milestone and its running progress.
#[derive(Debug, Clone)]
pub struct MilestoneRow {
    pub id: String,
    pub tenant_id: String,
    pub owner_kind: String,
    pub owner_id: String,
    pub metric_id: String,
    pub start_date: String,
    pub end_date: String,
    pub target: i64,
    pub stretch_target: Option<i64>,
    pub checkpoints: Vec<Checkpoint>,
    pub state: String,
    pub value: i64,
    pub activity_count: i64,
    pub fired: Fired,
    pub value_time: Option<i64>,
}

pub const MILESTONE_COLUMNS: &str = "id, tenant_id, owner_kind, owner_id, metric_id, start_date, end_date, target, \
     stretch_target, checkpoints, state, value, activity_count, fired, value_time";

impl MilestoneRow {
    pub fn from_row(r: &QueryResult) -> Result<Self, ApiError> {
        let checkpoints: String = r.try_get("", "checkpoints")?;
        let fired: String = r.try_get("", "fired")?;
        Ok(Self {
            id: r.try_get("", "id")?,
            tenant_id: r.try_get("", "tenant_id")?,
            owner_kind: r.try_get("", "owner_kind")?,
            owner_id: r.try_get("", "owner_id")?,
            metric_id: r.try_get("", "metric_id")?,
            start_date: r.try_get("", "start_date")?,
            end_date: r.try_get("", "end_date")?,
            target: r.try_get("", "target")?,
            stretch_target: r.try_get("", "stretch_target")?,
            checkpoints: serde_json::from_str(&checkpoints).unwrap_or_default(),
            state: r.try_get("", "state")?,
            value: r.try_get("", "value")?,
            activity_count: r.try_get("", "activity_count")?,
            fired: serde_json::from_str(&fired).unwrap_or_default(),
            value_time: r.try_get("", "value_time")?,
        })
    }

    pub fn period(&self) -> Option<milestones_domain::calendar::DateRange> {
        milestones_domain::calendar::DateRange::new(parse_date(&self.start_date)?, parse_date(&self.end_date)?)
    }

    /// Writes the running values back.
    pub async fn save_progress(&self, conn: &impl ConnectionTrait) -> Result<(), ApiError> {
        exec(
            conn,
            "UPDATE milestone_progress SET value = $1, activity_count = $2, fired = $3, value_time = $4 WHERE id = $5",
            vec![
                self.value.into(),
                self.activity_count.into(),
                serde_json::to_string(&self.fired)
                    .unwrap_or_else(|_| "{}".into())
                    .into(),
                self.value_time.into(),
                self.id.clone().into(),
            ],
        )
        .await?;
        Ok(())
    }
}

/// Loads tracked milestones matching a WHERE clause.
pub async fn milestones_where(
    conn: &impl ConnectionTrait,
    clause: &str,
    values: Vec<Value>,
) -> Result<Vec<MilestoneRow>, ApiError> {
    let sql = format!("SELECT {MILESTONE_COLUMNS} FROM milestone_progress WHERE {clause}");
    rows(conn, &sql, values)
        .await?
        .iter()
        .map(MilestoneRow::from_row)
        .collect()
}

/// The tenant's time zone and fiscal year start month, with defaults.
pub async fn tenant_settings(
    conn: &impl ConnectionTrait,
    tenant: &str,
) -> Result<milestones_domain::tenant::TenantSettings, ApiError> {
    let r = row(
        conn,
        "SELECT time_zone, fiscal_year_start_month FROM projection_settings WHERE tenant_id = $1",
        vec![tenant.into()],
    )
    .await?;
    let mut s = milestones_domain::tenant::TenantSettings::default();
    if let Some(r) = r {
        let tz: String = r.try_get("", "time_zone")?;
        let month: i32 = r.try_get("", "fiscal_year_start_month")?;
        if let Ok(tz) = milestones_domain::tenant::parse_time_zone(&tz) {
            s.time_zone = tz;
        }
        if let Some(c) = milestones_domain::calendar::FiscalCalendar::new(month as u32) {
            s.calendar = c;
        }
    }
    Ok(s)
}

/// The teams from `team` up to the root of its tree, `team` first.
pub async fn team_chain(conn: &impl ConnectionTrait, tenant: &str, team: &str) -> Result<Vec<String>, ApiError> {
    let mut chain = vec![team.to_string()];
    let mut cursor = team.to_string();
    // Bounded walk: a corrupted projection must not loop forever.
    for _ in 0..64 {
        let parent = row(
            conn,
            "SELECT parent_id FROM projection_teams WHERE id = $1 AND tenant_id = $2",
            vec![cursor.clone().into(), tenant.into()],
        )
        .await?
        .and_then(|r| r.try_get::<Option<String>>("", "parent_id").ok().flatten());
        match parent {
            Some(p) if !chain.contains(&p) => {
                chain.push(p.clone());
                cursor = p;
            }
            _ => break,
        }
    }
    Ok(chain)
}

/// The teams a milestone's owner belonged to on `day` (`YYYY-MM-DD`),
/// nearest first, as milestone events name them: a team and its ancestors,
/// or a member's team on that day and its ancestors (none when the member
/// was in no team then).
pub async fn owner_teams_on(conn: &impl ConnectionTrait, m: &MilestoneRow, day: &str) -> Result<Vec<String>, ApiError> {
    if m.owner_kind == "team" {
        return team_chain(conn, &m.tenant_id, &m.owner_id).await;
    }
    let team = row(
        conn,
        "SELECT team_id FROM projection_memberships WHERE tenant_id = $1 AND member_id = $2 \
         AND start_date <= $3 AND (end_date IS NULL OR end_date >= $3) ORDER BY start_date DESC LIMIT 1",
        vec![m.tenant_id.clone().into(), m.owner_id.clone().into(), day.into()],
    )
    .await?;
    match team {
        Some(r) => team_chain(conn, &m.tenant_id, &r.try_get::<String>("", "team_id")?).await,
        None => Ok(Vec::new()),
    }
}

/// `root` and every team below it.
pub async fn subtree(conn: &impl ConnectionTrait, tenant: &str, root: &str) -> Result<Vec<String>, ApiError> {
    let all = rows(
        conn,
        "SELECT id, parent_id FROM projection_teams WHERE tenant_id = $1",
        vec![tenant.into()],
    )
    .await?;
    let edges: Vec<(String, Option<String>)> = all
        .iter()
        .filter_map(|r| Some((r.try_get("", "id").ok()?, r.try_get("", "parent_id").ok()?)))
        .collect();
    let mut out = vec![root.to_string()];
    let mut i = 0;
    while i < out.len() {
        let current = out[i].clone();
        for (id, parent) in &edges {
            if parent.as_deref() == Some(current.as_str()) && !out.contains(id) {
                out.push(id.clone());
            }
        }
        i += 1;
    }
    Ok(out)
}

/// Copies a member milestone's days from its member's (`member_daily`) into
/// its own (`milestone_daily`) as it stops being active: while active it
/// counts exactly the member's credits in its period, so it keeps no days
/// of its own (one row less per activity); once not, it stops counting
/// while the member's days go on.
pub async fn freeze_member_days(conn: &impl ConnectionTrait, milestone: &str) -> Result<(), ApiError> {
    exec(
        conn,
        "DELETE FROM milestone_daily WHERE milestone_id = $1",
        vec![milestone.into()],
    )
    .await?;
    exec(
        conn,
        "INSERT INTO milestone_daily (milestone_id, day, amount) \
         SELECT m.id, d.day, d.amount FROM milestone_progress m JOIN member_daily d \
         ON d.tenant_id = m.tenant_id AND d.member_id = m.owner_id AND d.metric_id = m.metric_id \
         AND d.day >= m.start_date AND d.day <= m.end_date WHERE m.id = $1 AND m.owner_kind = 'member'",
        vec![milestone.into()],
    )
    .await?;
    Ok(())
}
