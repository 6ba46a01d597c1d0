//! Which milestones, members and teams a manager or rep caller may read
//! (docs/authorization.md), from progress's own copy of the org.

use chrono::Utc;
use milestones_domain::calendar::format_date;
use milestones_domain::names::Collection;
use milestones_runtime::auth::Caller;
use milestones_runtime::reach::{OrgTables, Owner, Reach};
use milestones_runtime::ApiError;

use crate::ops::Progress;
use crate::store;

const ORG_TABLES: OrgTables = OrgTables {
    teams: "projection_teams",
    members: "projection_members",
    memberships: "projection_memberships",
};

impl Progress {
    /// How far into the org `caller` reaches; no query for tenant-wide
    /// callers.
    pub async fn reach(&self, caller: &Caller) -> Result<Reach, ApiError> {
        if let Some(r) = Reach::tenant_wide(caller) {
            return Ok(r);
        }
        let conn = self.db.conn();
        let settings = store::tenant_settings(conn, &caller.tenant_id).await?;
        let today = format_date(settings.today(Utc::now()));
        Reach::load(conn, caller, ORG_TABLES, &today).await
    }

    /// PERMISSION_DENIED unless `caller` reads what `owner` (`members/{id}`
    /// or `teams/{id}`) owns. A malformed name passes: the use case names
    /// the field.
    /// NOT_FOUND when no such member or team is in the caller's tenant.
    pub async fn guard_owner(&self, caller: &Caller, owner: &str) -> Result<(), ApiError> {
        let Some(o) = Owner::parse(owner) else {
            return Ok(());
        };
        let (table, id) = match o {
            Owner::Member(id) => ("projection_members", id),
            Owner::Team(id) => ("projection_teams", id),
        };
        let known = store::row(
            self.db.conn(),
            &format!("SELECT id FROM {table} WHERE id = $1 AND tenant_id = $2"),
            vec![id.into(), caller.tenant_id.clone().into()],
        )
        .await?;
        if known.is_none() {
            return Err(ApiError::not_found(owner));
        }
        self.reach(caller).await?.require_read(o, owner)
    }

    /// NOT_FOUND unless the milestone `milestones/{id}` is in the caller's
    /// tenant, then as [`Progress::guard_milestone`].
    pub async fn guard_known_milestone(&self, caller: &Caller, name: &str) -> Result<(), ApiError> {
        if let Ok(id) = Collection::Milestones.parse(name) {
            let known = store::milestones_where(
                self.db.conn(),
                "id = $1 AND tenant_id = $2",
                vec![id.into(), caller.tenant_id.clone().into()],
            )
            .await?;
            if known.is_empty() {
                return Err(ApiError::not_found(name));
            }
        }
        self.guard_milestone(caller, name).await
    }

    /// PERMISSION_DENIED unless `caller` reads the owner of the milestone
    /// `milestones/{id}` (or `milestones/{id}/progress`). Unknown names pass:
    /// the use case answers NOT_FOUND.
    pub async fn guard_milestone(&self, caller: &Caller, name: &str) -> Result<(), ApiError> {
        let reach = self.reach(caller).await?;
        if reach.reads_all() {
            return Ok(());
        }
        let Ok(id) = Collection::Milestones.parse(name.strip_suffix("/progress").unwrap_or(name)) else {
            return Ok(());
        };
        let rows = store::milestones_where(
            self.db.conn(),
            "id = $1 AND tenant_id = $2",
            vec![id.into(), caller.tenant_id.clone().into()],
        )
        .await?;
        match rows.first() {
            Some(m) => reach.require_read(Owner::of(&m.owner_kind, &m.owner_id), name),
            None => Ok(()),
        }
    }
}
