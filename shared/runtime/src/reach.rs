//! How far into a tenant's org a caller reaches: the rows behind the
//! authorisation matrix (docs/authorization.md).
//!
//! - `admin` reaches the whole tenant, to read and to manage.
//! - `service` (an integration) reads the whole tenant, manages nothing.
//! - `manager` manages, and reads, the members and teams at or below the
//!   teams they belong to today; they also read the teams above them (whose
//!   leaderboards they are part of).
//! - `rep` reads themselves and the teams they belong to today and those
//!   teams' ancestors (their leaderboards and team milestones).
//!
//! A caller is a member through the member whose `subject` equals the
//! token's `sub`; a manager or rep token without such a member reaches
//! nothing. Each service computes a reach from its own copy of the org.

use std::collections::{BTreeSet, HashMap};

use sea_orm::{ConnectionTrait, Statement, Value};

use crate::auth::{Caller, Role};
use crate::ApiError;

/// The tables a service keeps its copy of the org in. Each has `id` and
/// `tenant_id`; teams have `parent_id`, members `subject`, memberships
/// `member_id`, `team_id`, `start_date` and `end_date` (YYYY-MM-DD, end
/// inclusive, NULL for open).
#[derive(Debug, Clone, Copy)]
pub struct OrgTables {
    pub teams: &'static str,
    pub members: &'static str,
    pub memberships: &'static str,
}

/// What a caller may read and manage.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reach {
    reads_all: bool,
    manages_all: bool,
    /// The caller's own member id.
    pub member: Option<String>,
    read_teams: BTreeSet<String>,
    read_members: BTreeSet<String>,
    managed_teams: BTreeSet<String>,
    managed_members: BTreeSet<String>,
}

/// Whose a resource is: a member's or a team's (by id).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner<'a> {
    Member(&'a str),
    Team(&'a str),
}

impl<'a> Owner<'a> {
    /// Parses `members/{id}` or `teams/{id}`.
    pub fn parse(name: &'a str) -> Option<Owner<'a>> {
        if let Some(id) = name.strip_prefix("members/") {
            Some(Owner::Member(id))
        } else {
            name.strip_prefix("teams/").map(Owner::Team)
        }
    }

    /// From the stored kind (`member` / `team`) and id.
    pub fn of(kind: &str, id: &'a str) -> Owner<'a> {
        if kind == "team" {
            Owner::Team(id)
        } else {
            Owner::Member(id)
        }
    }
}

/// The org as far as reach needs it.
#[derive(Debug, Default)]
pub struct Org {
    /// Team id → parent id.
    pub parents: HashMap<String, Option<String>>,
    /// Team id → members with a membership today.
    pub members_of: HashMap<String, BTreeSet<String>>,
    /// Member id → teams they belong to today.
    pub teams_of: HashMap<String, BTreeSet<String>>,
}

impl Org {
    /// `team` and its ancestors.
    fn chain(&self, team: &str) -> Vec<String> {
        let mut out = vec![team.to_string()];
        let mut cursor = team.to_string();
        // Bounded: a corrupted copy must not loop forever.
        for _ in 0..64 {
            match self.parents.get(&cursor).cloned().flatten() {
                Some(p) if !out.contains(&p) => {
                    out.push(p.clone());
                    cursor = p;
                }
                _ => break,
            }
        }
        out
    }

    /// `team` and every team below it.
    fn subtree(&self, team: &str) -> BTreeSet<String> {
        let mut out: BTreeSet<String> = [team.to_string()].into();
        let mut grew = true;
        while grew {
            grew = false;
            for (t, p) in &self.parents {
                if let Some(p) = p {
                    if out.contains(p) && !out.contains(t) {
                        out.insert(t.clone());
                        grew = true;
                    }
                }
            }
        }
        out
    }
}

impl Reach {
    /// The reach of every tenant-wide caller (admins and integrations).
    pub fn tenant_wide(caller: &Caller) -> Option<Reach> {
        let manages_all = caller.roles.contains(&Role::Admin);
        (manages_all || caller.roles.contains(&Role::Service)).then(|| Reach {
            reads_all: true,
            manages_all,
            ..Reach::default()
        })
    }

    /// The reach of `caller`, whose member (if any) is `member`, in `org`.
    pub fn compute(caller: &Caller, member: Option<String>, org: &Org) -> Reach {
        if let Some(r) = Reach::tenant_wide(caller) {
            return Reach { member, ..r };
        }
        let mut reach = Reach {
            member: member.clone(),
            ..Reach::default()
        };
        let Some(me) = member else {
            return reach;
        };
        let mine = org.teams_of.get(&me).cloned().unwrap_or_default();
        if caller.has_any(&[Role::Rep, Role::Manager]) {
            reach.read_members.insert(me.clone());
            for t in &mine {
                reach.read_teams.extend(org.chain(t));
            }
        }
        if caller.roles.contains(&Role::Manager) {
            for t in &mine {
                reach.managed_teams.extend(org.subtree(t));
            }
            for t in &reach.managed_teams {
                if let Some(ms) = org.members_of.get(t) {
                    reach.managed_members.extend(ms.iter().cloned());
                }
            }
            reach.read_teams.extend(reach.managed_teams.iter().cloned());
            reach.read_members.extend(reach.managed_members.iter().cloned());
        }
        reach
    }

    /// Loads the org from `tables` and computes `caller`'s reach on `today`
    /// (YYYY-MM-DD). Tenant-wide callers cost no query.
    pub async fn load(
        conn: &impl ConnectionTrait,
        caller: &Caller,
        tables: OrgTables,
        today: &str,
    ) -> Result<Reach, ApiError> {
        if let Some(r) = Reach::tenant_wide(caller) {
            return Ok(r);
        }
        let backend = conn.get_database_backend();
        let tenant = caller.tenant_id.clone();
        let member = conn
            .query_one(Statement::from_sql_and_values(
                backend,
                format!(
                    "SELECT id FROM {} WHERE tenant_id = $1 AND subject = $2",
                    tables.members
                ),
                [Value::from(tenant.clone()), Value::from(caller.subject.clone())],
            ))
            .await?
            .map(|r| r.try_get::<String>("", "id"))
            .transpose()?;
        if member.is_none() {
            return Ok(Reach::default());
        }
        let mut org = Org::default();
        for r in conn
            .query_all(Statement::from_sql_and_values(
                backend,
                format!("SELECT id, parent_id FROM {} WHERE tenant_id = $1", tables.teams),
                [Value::from(tenant.clone())],
            ))
            .await?
        {
            org.parents.insert(r.try_get("", "id")?, r.try_get("", "parent_id")?);
        }
        for r in conn
            .query_all(Statement::from_sql_and_values(
                backend,
                format!(
                    "SELECT member_id, team_id FROM {} WHERE tenant_id = $1 AND start_date <= $2 \
                     AND (end_date IS NULL OR end_date >= $2)",
                    tables.memberships
                ),
                [Value::from(tenant), Value::from(today.to_string())],
            ))
            .await?
        {
            let (m, t): (String, String) = (r.try_get("", "member_id")?, r.try_get("", "team_id")?);
            org.members_of.entry(t.clone()).or_default().insert(m.clone());
            org.teams_of.entry(m).or_default().insert(t);
        }
        Ok(Reach::compute(caller, member, &org))
    }

    /// Whether the caller reads the whole tenant.
    pub fn reads_all(&self) -> bool {
        self.reads_all
    }

    /// Whether the caller manages the whole tenant.
    pub fn manages_all(&self) -> bool {
        self.manages_all
    }

    /// Whether the caller may read what `owner` owns.
    pub fn reads(&self, owner: Owner<'_>) -> bool {
        self.reads_all
            || match owner {
                Owner::Member(m) => self.read_members.contains(m),
                Owner::Team(t) => self.read_teams.contains(t),
            }
    }

    /// Whether the caller may set and change what `owner` owns.
    pub fn manages(&self, owner: Owner<'_>) -> bool {
        self.manages_all
            || match owner {
                Owner::Member(m) => self.managed_members.contains(m),
                Owner::Team(t) => self.managed_teams.contains(t),
            }
    }

    /// PERMISSION_DENIED unless the caller reads `owner`'s `what`.
    pub fn require_read(&self, owner: Owner<'_>, what: &str) -> Result<(), ApiError> {
        if self.reads(owner) {
            Ok(())
        } else {
            Err(ApiError::permission_denied(format!(
                "{what} is outside your reach: reps see their own and their teams', managers their team subtree"
            )))
        }
    }

    /// PERMISSION_DENIED unless the caller manages `owner`.
    pub fn require_manage(&self, owner: Owner<'_>, what: &str) -> Result<(), ApiError> {
        if self.manages(owner) {
            Ok(())
        } else {
            Err(ApiError::permission_denied(format!(
                "{what} is outside your reach: managers set milestones for their team subtree only"
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    fn caller(roles: &[Role]) -> Caller {
        Caller {
            tenant_id: "acme".into(),
            subject: "x".into(),
            roles: roles.iter().copied().collect::<HashSet<_>>(),
        }
    }

    /// sales > emea > nordics; sales > amer. Mia manages EMEA; Ada is a rep
    /// in Nordics; Bob a rep in AMER.
    fn org() -> Org {
        let mut org = Org::default();
        for (t, p) in [
            ("sales", None),
            ("emea", Some("sales")),
            ("nordics", Some("emea")),
            ("amer", Some("sales")),
        ] {
            org.parents.insert(t.into(), p.map(String::from));
        }
        for (m, t) in [("mia", "emea"), ("ada", "nordics"), ("bob", "amer")] {
            org.members_of.entry(t.into()).or_default().insert(m.into());
            org.teams_of.entry(m.into()).or_default().insert(t.into());
        }
        org
    }

    #[test]
    fn managers_reach_their_subtree_and_read_above() {
        let r = Reach::compute(&caller(&[Role::Manager]), Some("mia".into()), &org());
        assert!(r.manages(Owner::Member("ada")));
        assert!(r.manages(Owner::Team("nordics")));
        assert!(r.manages(Owner::Team("emea")));
        assert!(!r.manages(Owner::Team("sales")), "not the team above");
        assert!(r.reads(Owner::Team("sales")), "but its leaderboard");
        assert!(!r.reads(Owner::Member("bob")));
        assert!(!r.reads(Owner::Team("amer")));
    }

    #[test]
    fn reps_read_themselves_and_their_chain_and_manage_nothing() {
        let r = Reach::compute(&caller(&[Role::Rep]), Some("ada".into()), &org());
        assert!(r.reads(Owner::Member("ada")));
        assert!(!r.reads(Owner::Member("mia")));
        for t in ["nordics", "emea", "sales"] {
            assert!(r.reads(Owner::Team(t)), "{t}");
        }
        assert!(!r.reads(Owner::Team("amer")));
        assert!(!r.manages(Owner::Member("ada")));
    }

    #[test]
    fn tenant_wide_callers_and_strangers() {
        let admin = Reach::compute(&caller(&[Role::Admin]), None, &org());
        assert!(admin.manages(Owner::Team("sales")) && admin.reads(Owner::Member("bob")));
        let service = Reach::compute(&caller(&[Role::Service]), None, &org());
        assert!(service.reads(Owner::Member("bob")) && !service.manages(Owner::Member("bob")));
        let stranger = Reach::compute(&caller(&[Role::Manager]), None, &org());
        assert!(!stranger.reads(Owner::Team("sales")));
    }
}
