//! Queries on the recognition service's tables, mostly the org copy that
//! visibility and the manager chain read. Functions take any connection
//! (the pool or a transaction) and return `ApiError` for failures.

use std::collections::BTreeSet;

use chrono::{NaiveDate, Utc};
use milestones_domain::calendar::format_date;
use milestones_runtime::auth::{Caller, Role};
use milestones_runtime::ApiError;
use sea_orm::{ConnectionTrait, DatabaseBackend, QueryResult, Statement, Value};

use crate::domain::{Audience, Viewer};

/// Runs a statement and returns how many rows it changed.
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

/// `$from, $from+1, ...` for an IN list of `n` values.
pub fn in_list(from: usize, n: usize) -> String {
    (0..n).map(|i| format!("${}", from + i)).collect::<Vec<_>>().join(", ")
}

/// ` FOR UPDATE` on PostgreSQL (row locks), nothing on SQLite, whose single
/// writer already serialises write transactions.
pub fn for_update(conn: &impl ConnectionTrait) -> &'static str {
    if conn.get_database_backend() == DatabaseBackend::Postgres {
        " FOR UPDATE"
    } else {
        ""
    }
}

/// How far the consumer of `feed` got (0 if it never ran).
pub async fn load_cursor(conn: &impl ConnectionTrait, feed: &str) -> Result<i64, ApiError> {
    Ok(
        match row(
            conn,
            "SELECT position FROM feed_cursors WHERE feed = $1",
            vec![feed.into()],
        )
        .await?
        {
            Some(r) => r.try_get("", "position")?,
            None => 0,
        },
    )
}

/// The cursor of `feed`, locked until the transaction ends so that two
/// replicas applying the same feed take turns and the second sees the
/// first's position.
pub async fn lock_cursor(conn: &impl ConnectionTrait, feed: &str) -> Result<i64, ApiError> {
    exec(
        conn,
        "INSERT INTO feed_cursors (feed, position) VALUES ($1, 0) ON CONFLICT (feed) DO NOTHING",
        vec![feed.into()],
    )
    .await?;
    let sql = format!("SELECT position FROM feed_cursors WHERE feed = $1{}", for_update(conn));
    Ok(match row(conn, &sql, vec![feed.into()]).await? {
        Some(r) => r.try_get("", "position")?,
        None => 0,
    })
}

/// Moves the cursor of `feed`.
pub async fn store_cursor(conn: &impl ConnectionTrait, feed: &str, position: i64) -> Result<(), ApiError> {
    exec(
        conn,
        "UPDATE feed_cursors SET position = $1 WHERE feed = $2",
        vec![position.into(), feed.into()],
    )
    .await?;
    Ok(())
}

/// The tenant's "today" in its time zone (UTC until goal says otherwise).
pub async fn tenant_today(conn: &impl ConnectionTrait, tenant: &str) -> Result<NaiveDate, ApiError> {
    let zone = row(
        conn,
        "SELECT time_zone FROM org_settings WHERE tenant_id = $1",
        vec![tenant.into()],
    )
    .await?
    .map(|r| r.try_get::<String>("", "time_zone"))
    .transpose()?;
    let tz = zone
        .and_then(|z| milestones_domain::tenant::parse_time_zone(&z).ok())
        .unwrap_or(chrono_tz::Tz::UTC);
    Ok(Utc::now().with_timezone(&tz).date_naive())
}

/// A member of the org copy.
#[derive(Debug, Clone)]
pub struct MemberRow {
    pub id: String,
    pub role: String,
    pub display_name: String,
}

/// The member with `id`, if goal has told us about them.
pub async fn member(conn: &impl ConnectionTrait, tenant: &str, id: &str) -> Result<Option<MemberRow>, ApiError> {
    row(
        conn,
        "SELECT id, role, display_name FROM org_members WHERE id = $1 AND tenant_id = $2",
        vec![id.into(), tenant.into()],
    )
    .await?
    .map(|r| {
        Ok(MemberRow {
            id: r.try_get("", "id")?,
            role: r.try_get("", "role")?,
            display_name: r.try_get("", "display_name")?,
        })
    })
    .transpose()
}

/// The member whose token subject is `subject`.
pub async fn member_by_subject(
    conn: &impl ConnectionTrait,
    tenant: &str,
    subject: &str,
) -> Result<Option<MemberRow>, ApiError> {
    row(
        conn,
        "SELECT id, role, display_name FROM org_members WHERE tenant_id = $1 AND subject = $2",
        vec![tenant.into(), subject.into()],
    )
    .await?
    .map(|r| {
        Ok(MemberRow {
            id: r.try_get("", "id")?,
            role: r.try_get("", "role")?,
            display_name: r.try_get("", "display_name")?,
        })
    })
    .transpose()
}

/// Whether the milestone exists in the tenant.
pub async fn milestone_exists(conn: &impl ConnectionTrait, tenant: &str, id: &str) -> Result<bool, ApiError> {
    Ok(row(
        conn,
        "SELECT id FROM org_milestones WHERE id = $1 AND tenant_id = $2",
        vec![id.into(), tenant.into()],
    )
    .await?
    .is_some())
}

/// The teams `member` belongs to on `day`.
pub async fn member_teams_on(
    conn: &impl ConnectionTrait,
    tenant: &str,
    member: &str,
    day: NaiveDate,
) -> Result<BTreeSet<String>, ApiError> {
    let day = format_date(day);
    rows(
        conn,
        "SELECT team_id FROM org_memberships WHERE tenant_id = $1 AND member_id = $2 \
         AND start_date <= $3 AND (end_date IS NULL OR end_date >= $3)",
        vec![tenant.into(), member.into(), day.into()],
    )
    .await?
    .iter()
    .map(|r| r.try_get("", "team_id").map_err(ApiError::from))
    .collect()
}

/// The team edges of a tenant: (team, parent).
async fn edges(conn: &impl ConnectionTrait, tenant: &str) -> Result<Vec<(String, Option<String>)>, ApiError> {
    rows(
        conn,
        "SELECT id, parent_id FROM org_teams WHERE tenant_id = $1",
        vec![tenant.into()],
    )
    .await?
    .iter()
    .map(|r| Ok((r.try_get("", "id")?, r.try_get("", "parent_id")?)))
    .collect()
}

/// `teams` and all their ancestors.
fn with_ancestors(edges: &[(String, Option<String>)], teams: &BTreeSet<String>) -> BTreeSet<String> {
    let mut out = teams.clone();
    for t in teams {
        let mut cursor = t.clone();
        // Bounded: a corrupted copy must not loop forever.
        for _ in 0..64 {
            match edges.iter().find(|(id, _)| *id == cursor).and_then(|(_, p)| p.clone()) {
                Some(p) if out.insert(p.clone()) => cursor = p,
                _ => break,
            }
        }
    }
    out
}

/// `root` and every team below it.
fn subtree_of(edges: &[(String, Option<String>)], root: &str) -> BTreeSet<String> {
    let mut out: BTreeSet<String> = [root.to_string()].into_iter().collect();
    let mut frontier = vec![root.to_string()];
    while let Some(current) = frontier.pop() {
        for (id, parent) in edges {
            if parent.as_deref() == Some(current.as_str()) && out.insert(id.clone()) {
                frontier.push(id.clone());
            }
        }
    }
    out
}

/// `teams` and their ancestors, from the org copy.
pub async fn ancestors(
    conn: &impl ConnectionTrait,
    tenant: &str,
    teams: &BTreeSet<String>,
) -> Result<BTreeSet<String>, ApiError> {
    Ok(with_ancestors(&edges(conn, tenant).await?, teams))
}

/// The subtree of `root`, from the org copy.
pub async fn subtree(conn: &impl ConnectionTrait, tenant: &str, root: &str) -> Result<BTreeSet<String>, ApiError> {
    Ok(subtree_of(&edges(conn, tenant).await?, root))
}

/// Who the caller is, for visibility: admins and services see all; other
/// callers through the member their token's subject links to.
pub async fn viewer(conn: &impl ConnectionTrait, caller: &Caller) -> Result<Viewer, ApiError> {
    let sees_all = caller.has_any(&[Role::Admin, Role::Service]);
    let mut v = Viewer {
        sees_all,
        ..Viewer::default()
    };
    if let Some(m) = member_by_subject(conn, &caller.tenant_id, &caller.subject).await? {
        let today = tenant_today(conn, &caller.tenant_id).await?;
        v.teams = member_teams_on(conn, &caller.tenant_id, &m.id, today).await?;
        v.is_manager = m.role == "manager";
        v.member = Some(m.id);
    }
    Ok(v)
}

/// The audience of an item about a member (their teams now, and the
/// chain above them).
pub async fn member_audience(conn: &impl ConnectionTrait, tenant: &str, member: &str) -> Result<Audience, ApiError> {
    let today = tenant_today(conn, tenant).await?;
    let teams = member_teams_on(conn, tenant, member, today).await?;
    let chain_teams = ancestors(conn, tenant, &teams).await?;
    Ok(Audience {
        member: Some(member.to_string()),
        team_teams: teams,
        chain_teams,
        giver: None,
    })
}

/// The audience of an item about a team (its subtree, and the chain of the
/// team and its ancestors).
pub async fn team_audience(conn: &impl ConnectionTrait, tenant: &str, team: &str) -> Result<Audience, ApiError> {
    let all = edges(conn, tenant).await?;
    let own: BTreeSet<String> = [team.to_string()].into_iter().collect();
    Ok(Audience {
        member: None,
        team_teams: subtree_of(&all, team),
        chain_teams: with_ancestors(&all, &own),
        giver: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ancestors and subtrees walk the tree both ways and stop on cycles.
    #[test]
    fn walks_the_team_tree() {
        let edges = vec![
            ("sales".to_string(), None),
            ("emea".to_string(), Some("sales".to_string())),
            ("dach".to_string(), Some("emea".to_string())),
            ("apac".to_string(), Some("sales".to_string())),
            ("loop".to_string(), Some("loop".to_string())),
        ];
        let dach: BTreeSet<String> = ["dach".to_string()].into_iter().collect();
        let up = with_ancestors(&edges, &dach);
        assert_eq!(up.len(), 3);
        assert!(up.contains("sales"));
        let down = subtree_of(&edges, "emea");
        assert_eq!(down, ["emea".to_string(), "dach".to_string()].into_iter().collect());
        let looped: BTreeSet<String> = ["loop".to_string()].into_iter().collect();
        assert_eq!(with_ancestors(&edges, &looped).len(), 1);
    }
}
