//! Tenant settings, teams, members, memberships and metrics.

use std::collections::{HashMap, HashSet};

use chrono::NaiveDate;
use milestones_api::goal as pb;
use milestones_api::goal::change_event::Resource;
use milestones_domain::calendar::{format_date, parse_date, DateRange};
use milestones_domain::names::Collection;
use milestones_domain::tenant::parse_time_zone;
use milestones_domain::Violations;
use milestones_runtime::auth::Caller;
use milestones_runtime::paging::Page;
use milestones_runtime::wire::{date_from_wire, now_micros};
use milestones_runtime::ApiError;
use sea_orm::sea_query::Condition;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, EntityTrait, IntoActiveModel, ModelTrait, PaginatorTrait,
    PrimaryKeyTrait, QueryFilter, QueryOrder, QuerySelect,
};

use super::{check_etag, mask_paths, new_id, Changes, Ctx, Goal};
use crate::convert;
use crate::entity::{member, membership, metric, milestone, team, tenant_settings};

/// Whether loads on a connection lock the rows they read. Inside a write
/// transaction they do (`SELECT ... FOR UPDATE` on PostgreSQL; SQLite has a
/// single writer anyway), so that a check made on a row (its etag, "not in
/// use", "no overlap", "no cycle") still holds when the transaction commits.
pub trait RowLocks {
    const LOCK: bool;
}

impl RowLocks for sea_orm::DatabaseConnection {
    const LOCK: bool = false;
}

impl RowLocks for milestones_runtime::db::TxnConn {
    const LOCK: bool = true;
}

/// Loads a row by id within the tenant; NOT_FOUND otherwise (also for
/// another tenant's row, which must look exactly like a missing one).
pub async fn load<E, C>(
    conn: &C,
    collection: Collection,
    id: &str,
    tenant: &str,
    tenant_of: fn(&E::Model) -> &str,
) -> Result<E::Model, ApiError>
where
    E: EntityTrait,
    C: ConnectionTrait + RowLocks,
    <E::PrimaryKey as PrimaryKeyTrait>::ValueType: From<String>,
{
    let mut query = E::find_by_id(id.to_string());
    if C::LOCK {
        query = query.lock_exclusive();
    }
    match query.one(conn).await? {
        Some(row) if tenant_of(&row) == tenant => Ok(row),
        _ => Err(ApiError::not_found(collection.name(id))),
    }
}

/// Parses the resource name in `field`, or INVALID_ARGUMENT.
pub fn parse_name(collection: Collection, field: &str, name: &str) -> Result<String, ApiError> {
    collection.parse(name).map_err(|e| ApiError::invalid(field, e))
}

pub async fn load_team(
    conn: &(impl ConnectionTrait + RowLocks),
    tenant: &str,
    id: &str,
) -> Result<team::Model, ApiError> {
    load::<team::Entity, _>(conn, Collection::Teams, id, tenant, |r| &r.tenant_id).await
}

pub async fn load_member(
    conn: &(impl ConnectionTrait + RowLocks),
    tenant: &str,
    id: &str,
) -> Result<member::Model, ApiError> {
    load::<member::Entity, _>(conn, Collection::Members, id, tenant, |r| &r.tenant_id).await
}

pub async fn load_metric(
    conn: &(impl ConnectionTrait + RowLocks),
    tenant: &str,
    id: &str,
) -> Result<metric::Model, ApiError> {
    load::<metric::Entity, _>(conn, Collection::Metrics, id, tenant, |r| &r.tenant_id).await
}

/// Every team of the tenant by id: org trees are small enough to walk in
/// memory (thousands of teams at most).
pub async fn all_teams(conn: &impl ConnectionTrait, tenant: &str) -> Result<HashMap<String, team::Model>, ApiError> {
    let rows = team::Entity::find()
        .filter(team::Column::TenantId.eq(tenant))
        .all(conn)
        .await?;
    Ok(rows.into_iter().map(|t| (t.id.clone(), t)).collect())
}

/// The ids of `root` and all its descendants.
pub fn subtree(teams: &HashMap<String, team::Model>, root: &str) -> HashSet<String> {
    let mut children: HashMap<&str, Vec<&str>> = HashMap::new();
    for t in teams.values() {
        if let Some(p) = &t.parent_id {
            children.entry(p.as_str()).or_default().push(t.id.as_str());
        }
    }
    let mut out = HashSet::new();
    let mut stack = vec![root];
    while let Some(id) = stack.pop() {
        if out.insert(id.to_string()) {
            stack.extend(children.get(id).into_iter().flatten().copied());
        }
    }
    out
}

/// The ids of members with a membership, on `day`, in one of `teams`.
pub async fn members_of_teams_on(
    conn: &impl ConnectionTrait,
    tenant: &str,
    teams: &HashSet<String>,
    day: NaiveDate,
) -> Result<HashSet<String>, ApiError> {
    let day = format_date(day);
    let rows = membership::Entity::find()
        .filter(membership::Column::TenantId.eq(tenant))
        .filter(membership::Column::TeamId.is_in(teams.iter().cloned()))
        .filter(membership::Column::StartDate.lte(day.clone()))
        .filter(
            Condition::any()
                .add(membership::Column::EndDate.is_null())
                .add(membership::Column::EndDate.gte(day)),
        )
        .all(conn)
        .await?;
    Ok(rows.into_iter().map(|m| m.member_id).collect())
}

fn text(v: &mut Violations, field: &str, value: &str, max: usize) {
    v.check_text(field, value, 1, max);
}

impl Goal {
    // === tenant settings ===

    pub async fn update_settings(
        &self,
        ctx: &Ctx,
        settings: pb::TenantSettings,
        mask: Option<prost_types::FieldMask>,
    ) -> Result<pb::TenantSettings, ApiError> {
        let paths = mask_paths(
            mask.as_ref(),
            &["time_zone", "fiscal_year_start_month", "review_cadence_months"],
        )?;
        let mut v = Violations::new();
        if paths.contains(&"time_zone") {
            if let Err(e) = parse_time_zone(&settings.time_zone) {
                v.add("tenant_settings.time_zone", e);
            }
        }
        if paths.contains(&"fiscal_year_start_month") && !(1..=12).contains(&settings.fiscal_year_start_month) {
            v.add(
                "tenant_settings.fiscal_year_start_month",
                "must be a month number from 1 to 12",
            );
        }
        if paths.contains(&"review_cadence_months") && !(1..=12).contains(&settings.review_cadence_months) {
            v.add("tenant_settings.review_cadence_months", "must be from 1 to 12 months");
        }
        v.into_result(())?;
        let (txn, replay) = self.begin::<pb::TenantSettings>(ctx).await?;
        if let Some(r) = replay {
            return Ok(r);
        }
        let current = self.settings_row(&*txn, ctx.tenant()).await?;
        let version = current.as_ref().map_or(0, |r| r.version);
        check_etag(&settings.etag, version, "settings")?;
        let base = convert::tenant_settings(current.as_ref());
        let pick = |path: &str| paths.contains(&path);
        let row = tenant_settings::Model {
            tenant_id: ctx.tenant().to_string(),
            time_zone: if pick("time_zone") {
                settings.time_zone.clone()
            } else {
                base.time_zone
            },
            fiscal_year_start_month: if pick("fiscal_year_start_month") {
                settings.fiscal_year_start_month
            } else {
                base.fiscal_year_start_month
            },
            review_cadence_months: if pick("review_cadence_months") {
                settings.review_cadence_months
            } else {
                base.review_cadence_months
            },
            version: version + 1,
            update_time: now_micros(),
        };
        let mut active = row.clone().into_active_model();
        if current.is_some() {
            active = active.reset_all();
            active.update(&*txn).await?;
        } else {
            tenant_settings::Entity::insert(active.reset_all())
                .exec_without_returning(&*txn)
                .await?;
        }
        let out = convert::tenant_settings(Some(&row));
        let mut changes = Changes::new();
        changes.push(pb::ChangeType::Updated, Resource::TenantSettings(out.clone()));
        self.finish(txn, ctx, changes, out).await
    }

    // === teams ===

    pub async fn create_team(&self, ctx: &Ctx, team: pb::Team) -> Result<pb::Team, ApiError> {
        let mut v = Violations::new();
        text(&mut v, "team.display_name", &team.display_name, 200);
        let parent_id = if team.parent.is_empty() {
            None
        } else {
            match Collection::Teams.parse(&team.parent) {
                Ok(id) => Some(id),
                Err(e) => {
                    v.add("team.parent", e);
                    None
                }
            }
        };
        v.into_result(())?;
        let (txn, replay) = self.begin::<pb::Team>(ctx).await?;
        if let Some(r) = replay {
            return Ok(r);
        }
        if let Some(p) = &parent_id {
            load_team(&*txn, ctx.tenant(), p).await?;
        }
        let now = now_micros();
        let row = team::Model {
            id: new_id(),
            tenant_id: ctx.tenant().to_string(),
            display_name: team.display_name,
            parent_id,
            version: 1,
            create_time: now,
            update_time: now,
        };
        team::Entity::insert(row.clone().into_active_model())
            .exec_without_returning(&*txn)
            .await?;
        let out = convert::team(&row);
        let mut changes = Changes::new();
        changes.push(pb::ChangeType::Created, Resource::Team(out.clone()));
        self.finish(txn, ctx, changes, out).await
    }

    pub async fn get_team(&self, caller: &Caller, name: &str) -> Result<pb::Team, ApiError> {
        let id = parse_name(Collection::Teams, "name", name)?;
        Ok(convert::team(&load_team(self.db.conn(), &caller.tenant_id, &id).await?))
    }

    pub async fn list_teams(
        &self,
        caller: &Caller,
        req: pb::ListTeamsRequest,
    ) -> Result<pb::ListTeamsResponse, ApiError> {
        let page = Page::parse(req.page_size, &req.page_token, &format!("teams|{}", req.parent))?;
        let mut q = team::Entity::find().filter(team::Column::TenantId.eq(&caller.tenant_id));
        match req.parent.as_str() {
            "" => {}
            "-" => q = q.filter(team::Column::ParentId.is_null()),
            p => q = q.filter(team::Column::ParentId.eq(parse_name(Collection::Teams, "parent", p)?)),
        }
        if let Some(after) = &page.after {
            q = q.filter(team::Column::Id.gt(after.clone()));
        }
        let rows = q
            .order_by_asc(team::Column::Id)
            .limit(page.fetch_limit())
            .all(self.db.conn())
            .await?;
        let (rows, next_page_token) = page.finish(rows, |r| r.id.clone());
        Ok(pb::ListTeamsResponse {
            teams: rows.iter().map(convert::team).collect(),
            next_page_token,
        })
    }

    pub async fn update_team(
        &self,
        ctx: &Ctx,
        team: pb::Team,
        mask: Option<prost_types::FieldMask>,
    ) -> Result<pb::Team, ApiError> {
        let id = parse_name(Collection::Teams, "team.name", &team.name)?;
        let paths = mask_paths(mask.as_ref(), &["display_name", "parent"])?;
        let mut v = Violations::new();
        if paths.contains(&"display_name") {
            text(&mut v, "team.display_name", &team.display_name, 200);
        }
        let mut new_parent = None;
        if paths.contains(&"parent") && !team.parent.is_empty() {
            match Collection::Teams.parse(&team.parent) {
                Ok(p) => new_parent = Some(p),
                Err(e) => v.add("team.parent", e),
            }
        }
        v.into_result(())?;
        let (txn, replay) = self.begin::<pb::Team>(ctx).await?;
        if let Some(r) = replay {
            return Ok(r);
        }
        let current = load_team(&*txn, ctx.tenant(), &id).await?;
        check_etag(&team.etag, current.version, &team.name)?;
        let mut row = current.clone();
        if paths.contains(&"display_name") {
            row.display_name = team.display_name;
        }
        if paths.contains(&"parent") {
            if let Some(p) = &new_parent {
                load_team(&*txn, ctx.tenant(), p).await?;
                let teams = all_teams(&*txn, ctx.tenant()).await?;
                if subtree(&teams, &id).contains(p) {
                    return Err(ApiError::invalid(
                        "team.parent",
                        format!(
                            "{} is {} itself or one of its sub-teams; a team cannot be moved under itself",
                            team.parent, team.name
                        ),
                    ));
                }
            }
            row.parent_id = new_parent;
        }
        row.version += 1;
        row.update_time = now_micros();
        row.clone().into_active_model().reset_all().update(&*txn).await?;
        let out = convert::team(&row);
        let mut changes = Changes::new();
        changes.push(pb::ChangeType::Updated, Resource::Team(out.clone()));
        self.finish(txn, ctx, changes, out).await
    }

    pub async fn delete_team(&self, ctx: &Ctx, name: &str, etag: &str) -> Result<pb::DeleteTeamResponse, ApiError> {
        let id = parse_name(Collection::Teams, "name", name)?;
        let (txn, replay) = self.begin::<pb::DeleteTeamResponse>(ctx).await?;
        if let Some(r) = replay {
            return Ok(r);
        }
        let current = load_team(&*txn, ctx.tenant(), &id).await?;
        check_etag(etag, current.version, name)?;
        let sub_teams = team::Entity::find()
            .filter(team::Column::TenantId.eq(ctx.tenant()))
            .filter(team::Column::ParentId.eq(&id))
            .count(&*txn)
            .await?;
        let memberships = membership::Entity::find()
            .filter(membership::Column::TenantId.eq(ctx.tenant()))
            .filter(membership::Column::TeamId.eq(&id))
            .count(&*txn)
            .await?;
        let milestones = milestone::Entity::find()
            .filter(milestone::Column::TenantId.eq(ctx.tenant()))
            .filter(milestone::Column::OwnerKind.eq("team"))
            .filter(milestone::Column::OwnerId.eq(&id))
            .count(&*txn)
            .await?;
        if sub_teams + memberships + milestones > 0 {
            return Err(ApiError::precondition(
                "TEAM_IN_USE",
                name,
                format!("{name} still has {sub_teams} sub-teams, {memberships} memberships and {milestones} milestones; move or delete them first"),
            ));
        }
        current.clone().delete(&*txn).await?;
        let out = convert::team(&current);
        let mut changes = Changes::new();
        changes.push(pb::ChangeType::Deleted, Resource::Team(out.clone()));
        self.finish(txn, ctx, changes, pb::DeleteTeamResponse { team: Some(out) })
            .await
    }

    // === members ===

    fn validate_member(member: &pb::Member, paths: &[&str]) -> Result<(), ApiError> {
        let mut v = Violations::new();
        if paths.contains(&"display_name") {
            text(&mut v, "member.display_name", &member.display_name, 200);
        }
        if paths.contains(&"email") {
            let email = member.email.as_str();
            let looks_like_email = email.split_once('@').is_some_and(|(user, domain)| {
                !user.is_empty() && domain.contains('.') && !email.contains(char::is_whitespace)
            });
            if email.len() > 320 {
                v.add("member.email", "must be at most 320 characters");
            } else if !looks_like_email {
                v.add("member.email", format!("{email:?} is not an e-mail address"));
            }
        }
        if paths.contains(&"role") {
            let role = pb::MemberRole::try_from(member.role).unwrap_or(pb::MemberRole::Unspecified);
            if convert::role_to_str(role).is_none() {
                v.add(
                    "member.role",
                    "must be MEMBER_ROLE_REP, MEMBER_ROLE_MANAGER or MEMBER_ROLE_ADMIN",
                );
            }
        }
        if paths.contains(&"subject") && member.subject.len() > 256 {
            v.add("member.subject", "must be at most 256 characters");
        }
        v.into_result(())?;
        Ok(())
    }

    async fn ensure_member_unique(
        &self,
        conn: &impl ConnectionTrait,
        tenant: &str,
        email: &str,
        subject: Option<&str>,
        except: Option<&str>,
    ) -> Result<(), ApiError> {
        let mut cond = Condition::any().add(member::Column::Email.eq(email));
        if let Some(s) = subject {
            cond = cond.add(member::Column::Subject.eq(s));
        }
        let clash = member::Entity::find()
            .filter(member::Column::TenantId.eq(tenant))
            .filter(cond)
            .all(conn)
            .await?
            .into_iter()
            .find(|m| Some(m.id.as_str()) != except);
        match clash {
            None => Ok(()),
            Some(m) => Err(ApiError::AlreadyExists {
                reason: "MEMBER_EXISTS",
                message: format!(
                    "{} already has this e-mail address or subject; update that member instead",
                    Collection::Members.name(&m.id)
                ),
            }),
        }
    }

    pub async fn create_member(&self, ctx: &Ctx, member: pb::Member) -> Result<pb::Member, ApiError> {
        Self::validate_member(&member, &["display_name", "email", "role", "subject"])?;
        let (txn, replay) = self.begin::<pb::Member>(ctx).await?;
        if let Some(r) = replay {
            return Ok(r);
        }
        let subject = (!member.subject.is_empty()).then(|| member.subject.clone());
        self.ensure_member_unique(
            &*txn,
            ctx.tenant(),
            &member.email.trim().to_lowercase(),
            subject.as_deref(),
            None,
        )
        .await?;
        let now = now_micros();
        let role = pb::MemberRole::try_from(member.role).unwrap_or(pb::MemberRole::Unspecified);
        let row = member::Model {
            id: new_id(),
            tenant_id: ctx.tenant().to_string(),
            display_name: member.display_name,
            email: member.email.trim().to_lowercase(),
            role: convert::role_to_str(role).unwrap_or("rep").to_string(),
            subject,
            version: 1,
            create_time: now,
            update_time: now,
        };
        member::Entity::insert(row.clone().into_active_model())
            .exec_without_returning(&*txn)
            .await?;
        let out = convert::member(&row);
        let mut changes = Changes::new();
        changes.push(pb::ChangeType::Created, Resource::Member(out.clone()));
        self.finish(txn, ctx, changes, out).await
    }

    pub async fn get_member(&self, caller: &Caller, name: &str) -> Result<pb::Member, ApiError> {
        let id = parse_name(Collection::Members, "name", name)?;
        Ok(convert::member(
            &load_member(self.db.conn(), &caller.tenant_id, &id).await?,
        ))
    }

    pub async fn list_members(
        &self,
        caller: &Caller,
        req: pb::ListMembersRequest,
    ) -> Result<pb::ListMembersResponse, ApiError> {
        let as_of = date_from_wire(req.as_of_date.as_ref()).map_err(|e| ApiError::invalid("as_of_date", e))?;
        let page = Page::parse(
            req.page_size,
            &req.page_token,
            &format!("members|{}|{:?}|{}", req.team, as_of, req.role),
        )?;
        let tenant = &caller.tenant_id;
        let mut q = member::Entity::find().filter(member::Column::TenantId.eq(tenant));
        if !req.team.is_empty() {
            let team_id = parse_name(Collection::Teams, "team", &req.team)?;
            load_team(self.db.conn(), tenant, &team_id).await?;
            let teams = all_teams(self.db.conn(), tenant).await?;
            let day = match as_of {
                Some(d) => d,
                None => self.settings(self.db.conn(), tenant).await?.today(chrono::Utc::now()),
            };
            let ids = members_of_teams_on(self.db.conn(), tenant, &subtree(&teams, &team_id), day).await?;
            q = q.filter(member::Column::Id.is_in(ids));
        }
        let role = pb::MemberRole::try_from(req.role)
            .map_err(|_| ApiError::invalid("role", format!("{} is not a MemberRole", req.role)))?;
        if let Some(r) = convert::role_to_str(role) {
            q = q.filter(member::Column::Role.eq(r));
        }
        if let Some(after) = &page.after {
            q = q.filter(member::Column::Id.gt(after.clone()));
        }
        let rows = q
            .order_by_asc(member::Column::Id)
            .limit(page.fetch_limit())
            .all(self.db.conn())
            .await?;
        let (rows, next_page_token) = page.finish(rows, |r| r.id.clone());
        Ok(pb::ListMembersResponse {
            members: rows.iter().map(convert::member).collect(),
            next_page_token,
        })
    }

    pub async fn update_member(
        &self,
        ctx: &Ctx,
        member: pb::Member,
        mask: Option<prost_types::FieldMask>,
    ) -> Result<pb::Member, ApiError> {
        let id = parse_name(Collection::Members, "member.name", &member.name)?;
        let paths = mask_paths(mask.as_ref(), &["display_name", "email", "role", "subject"])?;
        Self::validate_member(&member, &paths)?;
        let (txn, replay) = self.begin::<pb::Member>(ctx).await?;
        if let Some(r) = replay {
            return Ok(r);
        }
        let current = load_member(&*txn, ctx.tenant(), &id).await?;
        check_etag(&member.etag, current.version, &member.name)?;
        let mut row = current.clone();
        if paths.contains(&"display_name") {
            row.display_name = member.display_name;
        }
        if paths.contains(&"email") {
            row.email = member.email.trim().to_lowercase();
        }
        if paths.contains(&"role") {
            let role = pb::MemberRole::try_from(member.role).unwrap_or(pb::MemberRole::Unspecified);
            row.role = convert::role_to_str(role).unwrap_or("rep").to_string();
        }
        if paths.contains(&"subject") {
            row.subject = (!member.subject.is_empty()).then_some(member.subject);
        }
        self.ensure_member_unique(&*txn, ctx.tenant(), &row.email, row.subject.as_deref(), Some(&id))
            .await?;
        row.version += 1;
        row.update_time = now_micros();
        row.clone().into_active_model().reset_all().update(&*txn).await?;
        let out = convert::member(&row);
        let mut changes = Changes::new();
        changes.push(pb::ChangeType::Updated, Resource::Member(out.clone()));
        self.finish(txn, ctx, changes, out).await
    }

    pub async fn delete_member(&self, ctx: &Ctx, name: &str, etag: &str) -> Result<pb::DeleteMemberResponse, ApiError> {
        let id = parse_name(Collection::Members, "name", name)?;
        let (txn, replay) = self.begin::<pb::DeleteMemberResponse>(ctx).await?;
        if let Some(r) = replay {
            return Ok(r);
        }
        let current = load_member(&*txn, ctx.tenant(), &id).await?;
        check_etag(etag, current.version, name)?;
        let memberships = membership::Entity::find()
            .filter(membership::Column::TenantId.eq(ctx.tenant()))
            .filter(membership::Column::MemberId.eq(&id))
            .count(&*txn)
            .await?;
        let milestones = milestone::Entity::find()
            .filter(milestone::Column::TenantId.eq(ctx.tenant()))
            .filter(milestone::Column::OwnerKind.eq("member"))
            .filter(milestone::Column::OwnerId.eq(&id))
            .count(&*txn)
            .await?;
        if memberships + milestones > 0 {
            return Err(ApiError::precondition(
                "MEMBER_IN_USE",
                name,
                format!("{name} still has {memberships} memberships and {milestones} milestones; end the memberships and cancel the milestones instead"),
            ));
        }
        current.clone().delete(&*txn).await?;
        let out = convert::member(&current);
        let mut changes = Changes::new();
        changes.push(pb::ChangeType::Deleted, Resource::Member(out.clone()));
        self.finish(txn, ctx, changes, pb::DeleteMemberResponse { member: Some(out) })
            .await
    }

    // === memberships ===

    fn membership_range(m: &pb::Membership, v: &mut Violations) -> Option<(NaiveDate, Option<NaiveDate>)> {
        let start = match date_from_wire(m.start_date.as_ref()) {
            Ok(Some(d)) => Some(d),
            Ok(None) => {
                v.add("membership.start_date", "is required");
                None
            }
            Err(e) => {
                v.add("membership.start_date", e);
                None
            }
        };
        let end = match date_from_wire(m.end_date.as_ref()) {
            Ok(d) => d,
            Err(e) => {
                v.add("membership.end_date", e);
                None
            }
        };
        if let (Some(s), Some(e)) = (start, end) {
            if e < s {
                v.add(
                    "membership.end_date",
                    format!("must not be before start_date {s} (got {e})"),
                );
            }
        }
        start.map(|s| (s, end))
    }

    async fn ensure_no_overlap(
        &self,
        conn: &impl ConnectionTrait,
        tenant: &str,
        member_id: &str,
        range: (NaiveDate, Option<NaiveDate>),
        except: Option<&str>,
    ) -> Result<(), ApiError> {
        let as_range = |s: NaiveDate, e: Option<NaiveDate>| DateRange::new(s, e.unwrap_or(NaiveDate::MAX));
        let Some(wanted) = as_range(range.0, range.1) else {
            return Ok(());
        };
        let others = membership::Entity::find()
            .filter(membership::Column::TenantId.eq(tenant))
            .filter(membership::Column::MemberId.eq(member_id))
            .all(conn)
            .await?;
        for o in others.iter().filter(|o| Some(o.id.as_str()) != except) {
            let Some(start) = parse_date(&o.start_date) else {
                continue;
            };
            let end = o.end_date.as_deref().and_then(parse_date);
            if as_range(start, end).is_some_and(|r| r.overlaps(&wanted)) {
                return Err(ApiError::precondition(
                    "MEMBERSHIP_OVERLAP",
                    Collection::Memberships.name(&o.id),
                    format!(
                        "{} already puts this member in {} from {} to {}; a member is in one team at a time, so end that membership first",
                        Collection::Memberships.name(&o.id),
                        Collection::Teams.name(&o.team_id),
                        o.start_date,
                        o.end_date.as_deref().unwrap_or("open end")
                    ),
                ));
            }
        }
        Ok(())
    }

    pub async fn create_membership(&self, ctx: &Ctx, m: pb::Membership) -> Result<pb::Membership, ApiError> {
        let mut v = Violations::new();
        let member_id = Collection::Members
            .parse(&m.member)
            .map_err(|e| v.add("membership.member", e))
            .ok();
        let team_id = Collection::Teams
            .parse(&m.team)
            .map_err(|e| v.add("membership.team", e))
            .ok();
        let range = Self::membership_range(&m, &mut v);
        let (Some(member_id), Some(team_id), Some(range)) = (member_id, team_id, range) else {
            return Err(v.into());
        };
        v.into_result(())?;
        let (txn, replay) = self.begin::<pb::Membership>(ctx).await?;
        if let Some(r) = replay {
            return Ok(r);
        }
        load_member(&*txn, ctx.tenant(), &member_id).await?;
        load_team(&*txn, ctx.tenant(), &team_id).await?;
        self.ensure_no_overlap(&*txn, ctx.tenant(), &member_id, range, None)
            .await?;
        let now = now_micros();
        let row = membership::Model {
            id: new_id(),
            tenant_id: ctx.tenant().to_string(),
            member_id,
            team_id,
            start_date: format_date(range.0),
            end_date: range.1.map(format_date),
            version: 1,
            create_time: now,
            update_time: now,
        };
        membership::Entity::insert(row.clone().into_active_model())
            .exec_without_returning(&*txn)
            .await?;
        let out = convert::membership(&row);
        let mut changes = Changes::new();
        changes.push(pb::ChangeType::Created, Resource::Membership(out.clone()));
        self.finish(txn, ctx, changes, out).await
    }

    pub async fn get_membership(&self, caller: &Caller, name: &str) -> Result<pb::Membership, ApiError> {
        let id = parse_name(Collection::Memberships, "name", name)?;
        let row = load::<membership::Entity, _>(self.db.conn(), Collection::Memberships, &id, &caller.tenant_id, |r| {
            &r.tenant_id
        })
        .await?;
        Ok(convert::membership(&row))
    }

    pub async fn list_memberships(
        &self,
        caller: &Caller,
        req: pb::ListMembershipsRequest,
    ) -> Result<pb::ListMembershipsResponse, ApiError> {
        let active_on = date_from_wire(req.active_on.as_ref()).map_err(|e| ApiError::invalid("active_on", e))?;
        let page = Page::parse(
            req.page_size,
            &req.page_token,
            &format!("memberships|{}|{}|{:?}", req.member, req.team, active_on),
        )?;
        let mut q = membership::Entity::find().filter(membership::Column::TenantId.eq(&caller.tenant_id));
        if !req.member.is_empty() {
            q = q.filter(membership::Column::MemberId.eq(parse_name(Collection::Members, "member", &req.member)?));
        }
        if !req.team.is_empty() {
            q = q.filter(membership::Column::TeamId.eq(parse_name(Collection::Teams, "team", &req.team)?));
        }
        if let Some(day) = active_on {
            let day = format_date(day);
            q = q.filter(membership::Column::StartDate.lte(day.clone())).filter(
                Condition::any()
                    .add(membership::Column::EndDate.is_null())
                    .add(membership::Column::EndDate.gte(day)),
            );
        }
        if let Some(after) = &page.after {
            q = q.filter(membership::Column::Id.gt(after.clone()));
        }
        let rows = q
            .order_by_asc(membership::Column::Id)
            .limit(page.fetch_limit())
            .all(self.db.conn())
            .await?;
        let (rows, next_page_token) = page.finish(rows, |r| r.id.clone());
        Ok(pb::ListMembershipsResponse {
            memberships: rows.iter().map(convert::membership).collect(),
            next_page_token,
        })
    }

    pub async fn update_membership(
        &self,
        ctx: &Ctx,
        m: pb::Membership,
        mask: Option<prost_types::FieldMask>,
    ) -> Result<pb::Membership, ApiError> {
        let id = parse_name(Collection::Memberships, "membership.name", &m.name)?;
        let paths = mask_paths(mask.as_ref(), &["start_date", "end_date"])?;
        let (txn, replay) = self.begin::<pb::Membership>(ctx).await?;
        if let Some(r) = replay {
            return Ok(r);
        }
        let current =
            load::<membership::Entity, _>(&*txn, Collection::Memberships, &id, ctx.tenant(), |r| &r.tenant_id).await?;
        check_etag(&m.etag, current.version, &m.name)?;
        // Merge the masked fields into the current dates, then validate the
        // result as a whole.
        let mut merged = convert::membership(&current);
        if paths.contains(&"start_date") {
            merged.start_date = m.start_date;
        }
        if paths.contains(&"end_date") {
            merged.end_date = m.end_date;
        }
        let mut v = Violations::new();
        let range = Self::membership_range(&merged, &mut v);
        let Some(range) = range else {
            return Err(v.into());
        };
        v.into_result(())?;
        self.ensure_no_overlap(&*txn, ctx.tenant(), &current.member_id, range, Some(&id))
            .await?;
        let mut row = current;
        row.start_date = format_date(range.0);
        row.end_date = range.1.map(format_date);
        row.version += 1;
        row.update_time = now_micros();
        row.clone().into_active_model().reset_all().update(&*txn).await?;
        let out = convert::membership(&row);
        let mut changes = Changes::new();
        changes.push(pb::ChangeType::Updated, Resource::Membership(out.clone()));
        self.finish(txn, ctx, changes, out).await
    }

    pub async fn delete_membership(
        &self,
        ctx: &Ctx,
        name: &str,
        etag: &str,
    ) -> Result<pb::DeleteMembershipResponse, ApiError> {
        let id = parse_name(Collection::Memberships, "name", name)?;
        let (txn, replay) = self.begin::<pb::DeleteMembershipResponse>(ctx).await?;
        if let Some(r) = replay {
            return Ok(r);
        }
        let current =
            load::<membership::Entity, _>(&*txn, Collection::Memberships, &id, ctx.tenant(), |r| &r.tenant_id).await?;
        check_etag(etag, current.version, name)?;
        current.clone().delete(&*txn).await?;
        let out = convert::membership(&current);
        let mut changes = Changes::new();
        changes.push(pb::ChangeType::Deleted, Resource::Membership(out.clone()));
        self.finish(
            txn,
            ctx,
            changes,
            pb::DeleteMembershipResponse { membership: Some(out) },
        )
        .await
    }

    // === metrics ===

    pub async fn create_metric(&self, ctx: &Ctx, m: pb::Metric) -> Result<pb::Metric, ApiError> {
        let mut v = Violations::new();
        text(&mut v, "metric.display_name", &m.display_name, 200);
        v.check_text("metric.description", &m.description, 0, 2000);
        let unit = pb::MetricUnit::try_from(m.unit).unwrap_or(pb::MetricUnit::Unspecified);
        let aggregation = pb::MetricAggregation::try_from(m.aggregation).unwrap_or(pb::MetricAggregation::Unspecified);
        if convert::unit_to_str(unit).is_none() {
            v.add(
                "metric.unit",
                "must be METRIC_UNIT_COUNT, METRIC_UNIT_CURRENCY or METRIC_UNIT_SECONDS",
            );
        }
        if convert::aggregation_to_str(aggregation).is_none() {
            v.add(
                "metric.aggregation",
                "must be METRIC_AGGREGATION_SUM or METRIC_AGGREGATION_COUNT",
            );
        }
        let is_code = m.currency_code.len() == 3 && m.currency_code.bytes().all(|b| b.is_ascii_uppercase());
        match unit {
            pb::MetricUnit::Currency if !is_code => v.add(
                "metric.currency_code",
                "must be an ISO-4217 code such as USD or EUR for a currency metric",
            ),
            pb::MetricUnit::Currency => {}
            _ if !m.currency_code.is_empty() => v.add(
                "metric.currency_code",
                "must be empty unless the unit is METRIC_UNIT_CURRENCY",
            ),
            _ => {}
        }
        v.into_result(())?;
        let (txn, replay) = self.begin::<pb::Metric>(ctx).await?;
        if let Some(r) = replay {
            return Ok(r);
        }
        let now = now_micros();
        let row = metric::Model {
            id: new_id(),
            tenant_id: ctx.tenant().to_string(),
            display_name: m.display_name,
            description: m.description,
            unit: convert::unit_to_str(unit).unwrap_or_default().to_string(),
            currency_code: m.currency_code,
            aggregation: convert::aggregation_to_str(aggregation).unwrap_or_default().to_string(),
            allow_negative_values: m.allow_negative_values,
            version: 1,
            create_time: now,
            update_time: now,
        };
        metric::Entity::insert(row.clone().into_active_model())
            .exec_without_returning(&*txn)
            .await?;
        let out = convert::metric(&row);
        let mut changes = Changes::new();
        changes.push(pb::ChangeType::Created, Resource::Metric(out.clone()));
        self.finish(txn, ctx, changes, out).await
    }

    pub async fn get_metric(&self, caller: &Caller, name: &str) -> Result<pb::Metric, ApiError> {
        let id = parse_name(Collection::Metrics, "name", name)?;
        Ok(convert::metric(
            &load_metric(self.db.conn(), &caller.tenant_id, &id).await?,
        ))
    }

    pub async fn list_metrics(
        &self,
        caller: &Caller,
        req: pb::ListMetricsRequest,
    ) -> Result<pb::ListMetricsResponse, ApiError> {
        let page = Page::parse(req.page_size, &req.page_token, "metrics")?;
        let mut q = metric::Entity::find().filter(metric::Column::TenantId.eq(&caller.tenant_id));
        if let Some(after) = &page.after {
            q = q.filter(metric::Column::Id.gt(after.clone()));
        }
        let rows = q
            .order_by_asc(metric::Column::Id)
            .limit(page.fetch_limit())
            .all(self.db.conn())
            .await?;
        let (rows, next_page_token) = page.finish(rows, |r| r.id.clone());
        Ok(pb::ListMetricsResponse {
            metrics: rows.iter().map(convert::metric).collect(),
            next_page_token,
        })
    }

    pub async fn update_metric(
        &self,
        ctx: &Ctx,
        m: pb::Metric,
        mask: Option<prost_types::FieldMask>,
    ) -> Result<pb::Metric, ApiError> {
        let id = parse_name(Collection::Metrics, "metric.name", &m.name)?;
        if let Some(mask) = &mask {
            for immutable in ["unit", "currency_code", "aggregation"] {
                if mask.paths.iter().any(|p| p == immutable) {
                    return Err(ApiError::invalid(
                        format!("update_mask.{immutable}"),
                        "is immutable: create a new metric instead",
                    ));
                }
            }
        }
        let paths = mask_paths(mask.as_ref(), &["display_name", "description", "allow_negative_values"])?;
        let mut v = Violations::new();
        if paths.contains(&"display_name") {
            text(&mut v, "metric.display_name", &m.display_name, 200);
        }
        v.check_text("metric.description", &m.description, 0, 2000);
        v.into_result(())?;
        let (txn, replay) = self.begin::<pb::Metric>(ctx).await?;
        if let Some(r) = replay {
            return Ok(r);
        }
        let current = load_metric(&*txn, ctx.tenant(), &id).await?;
        check_etag(&m.etag, current.version, &m.name)?;
        // Immutable fields may be sent back unchanged (a full resource), but
        // never changed.
        let stored = convert::metric(&current);
        let mut v = Violations::new();
        if m.unit != 0 && m.unit != stored.unit {
            v.add("metric.unit", "is immutable: create a new metric instead");
        }
        if !m.currency_code.is_empty() && m.currency_code != stored.currency_code {
            v.add("metric.currency_code", "is immutable: create a new metric instead");
        }
        if m.aggregation != 0 && m.aggregation != stored.aggregation {
            v.add("metric.aggregation", "is immutable: create a new metric instead");
        }
        v.into_result(())?;
        let mut row = current;
        if paths.contains(&"display_name") {
            row.display_name = m.display_name;
        }
        if paths.contains(&"description") {
            row.description = m.description;
        }
        if paths.contains(&"allow_negative_values") {
            row.allow_negative_values = m.allow_negative_values;
        }
        row.version += 1;
        row.update_time = now_micros();
        row.clone().into_active_model().reset_all().update(&*txn).await?;
        let out = convert::metric(&row);
        let mut changes = Changes::new();
        changes.push(pb::ChangeType::Updated, Resource::Metric(out.clone()));
        self.finish(txn, ctx, changes, out).await
    }

    pub async fn delete_metric(&self, ctx: &Ctx, name: &str, etag: &str) -> Result<pb::DeleteMetricResponse, ApiError> {
        let id = parse_name(Collection::Metrics, "name", name)?;
        let (txn, replay) = self.begin::<pb::DeleteMetricResponse>(ctx).await?;
        if let Some(r) = replay {
            return Ok(r);
        }
        let current = load_metric(&*txn, ctx.tenant(), &id).await?;
        check_etag(etag, current.version, name)?;
        let used = milestone::Entity::find()
            .filter(milestone::Column::TenantId.eq(ctx.tenant()))
            .filter(milestone::Column::MetricId.eq(&id))
            .count(&*txn)
            .await?;
        if used > 0 {
            return Err(ApiError::precondition(
                "METRIC_IN_USE",
                name,
                format!("{used} milestones measure {name}; it can only be deleted when none does"),
            ));
        }
        current.clone().delete(&*txn).await?;
        let out = convert::metric(&current);
        let mut changes = Changes::new();
        changes.push(pb::ChangeType::Deleted, Resource::Metric(out.clone()));
        self.finish(txn, ctx, changes, pb::DeleteMetricResponse { metric: Some(out) })
            .await
    }
}
