//! Milestones: lifecycle, terms and their revisions, reviews, alignment.

use std::collections::HashSet;

use milestones_api::goal as pb;
use milestones_api::goal::change_event::Resource;
use milestones_domain::attainment::basis_points;
use milestones_domain::calendar::{format_date, DateRange, FiscalCalendar, FiscalPeriod};
use milestones_domain::names::{Collection, Owner};
use milestones_domain::terms::{Checkpoint, Terms};
use milestones_domain::Violations;
use milestones_runtime::auth::Caller;
use milestones_runtime::paging::Page;
use milestones_runtime::wire::{date_from_wire, now_micros};
use milestones_runtime::ApiError;
use prost::Message;
use sea_orm::sea_query::Condition;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, EntityTrait, IntoActiveModel, ModelTrait, QueryFilter, QueryOrder,
    QuerySelect,
};

use super::org::{
    all_teams, load, load_member, load_metric, load_team, members_of_teams_on, parse_name, subtree, RowLocks,
};
use super::{check_etag, mask_paths, new_id, Changes, Ctx, Goal};
use crate::convert::{self, state};
use crate::entity::{milestone, review, revision, team};

const UPDATABLE: [&str; 8] = [
    "display_name",
    "description",
    "target",
    "stretch_target",
    "start_date",
    "end_date",
    "checkpoints",
    "parent",
];

/// FAILED_PRECONDITION when linking to a closed parent. Only a new link is
/// checked: children of a parent that closes later keep their link.
fn ensure_open_parent(parent: &milestone::Model) -> Result<(), ApiError> {
    if is_closed(&parent.state) {
        let name = Collection::Milestones.name(&parent.id);
        return Err(ApiError::precondition(
            "PARENT_CLOSED",
            name.clone(),
            format!("{name} is {}; choose an open parent", parent.state),
        ));
    }
    Ok(())
}

fn is_closed(state: &str) -> bool {
    matches!(state, state::ACHIEVED | state::MISSED | state::CANCELLED)
}

/// Parses wire checkpoints, noting violations under `prefix`.
fn parse_checkpoints(prefix: &str, cps: &[pb::Checkpoint], v: &mut Violations) -> Vec<Checkpoint> {
    cps.iter()
        .enumerate()
        .map(|(i, c)| Checkpoint {
            display_name: c.display_name.clone(),
            target: c.target,
            due_date: date_from_wire(c.due_date.as_ref()).unwrap_or_else(|e| {
                v.add(format!("{prefix}.checkpoints[{i}].due_date"), e);
                None
            }),
        })
        .collect()
}

/// Parses a period from dates or a fiscal period name.
fn parse_period(
    prefix: &str,
    start: Option<&milestones_api::Date>,
    end: Option<&milestones_api::Date>,
    fiscal_period: &str,
    calendar: &FiscalCalendar,
    v: &mut Violations,
) -> Option<DateRange> {
    // Both dates are parsed before returning, so every violation is reported.
    let start = date_from_wire(start).map_err(|e| v.add(format!("{prefix}.start_date"), e));
    let end = date_from_wire(end).map_err(|e| v.add(format!("{prefix}.end_date"), e));
    let (Ok(start), Ok(end)) = (start, end) else {
        return None;
    };
    if !fiscal_period.is_empty() && (start.is_some() || end.is_some()) {
        v.add(
            format!("{prefix}.fiscal_period"),
            "give either fiscal_period or start_date and end_date, not both",
        );
        return None;
    }
    match (start, end) {
        (None, None) if !fiscal_period.is_empty() => match FiscalPeriod::parse(fiscal_period) {
            Ok(p) => Some(calendar.range(&p)),
            Err(e) => {
                v.add(format!("{prefix}.fiscal_period"), e);
                None
            }
        },
        (Some(s), Some(e)) => DateRange::new(s, e).or_else(|| {
            v.add(
                format!("{prefix}.end_date"),
                format!("must not be before start_date {s} (got {e})"),
            );
            None
        }),
        (s, e) => {
            if s.is_none() {
                v.add(
                    format!("{prefix}.start_date"),
                    "is required (or give fiscal_period instead)",
                );
            }
            if e.is_none() {
                v.add(
                    format!("{prefix}.end_date"),
                    "is required (or give fiscal_period instead)",
                );
            }
            None
        }
    }
}

/// Validates `terms` and prefixes violations.
fn validate_terms(prefix: &str, terms: &Terms, v: &mut Violations) {
    v.extend_prefixed(prefix, terms.validate());
}

/// The terms of wire `MilestoneTerms` (for reviews).
fn parse_wire_terms(prefix: &str, t: &pb::MilestoneTerms, v: &mut Violations) -> Option<Terms> {
    let period = parse_period(
        prefix,
        t.start_date.as_ref(),
        t.end_date.as_ref(),
        "",
        &FiscalCalendar::default(),
        v,
    );
    let checkpoints = parse_checkpoints(prefix, &t.checkpoints, v);
    let terms = Terms {
        target: t.target,
        stretch_target: t.stretch_target,
        period: period?,
        checkpoints,
    };
    validate_terms(prefix, &terms, v);
    Some(terms)
}

/// The terms after an update: the masked fields of `m` over `before`.
/// `dates` are the request's parsed start and end dates.
fn merge_terms(
    before: &Terms,
    m: &pb::Milestone,
    paths: &[&str],
    dates: (Option<chrono::NaiveDate>, Option<chrono::NaiveDate>),
    checkpoints: Vec<Checkpoint>,
    v: &mut Violations,
) -> Terms {
    let mut after = before.clone();
    if paths.contains(&"target") {
        after.target = m.target;
    }
    if paths.contains(&"stretch_target") {
        after.stretch_target = m.stretch_target;
    }
    if paths.contains(&"checkpoints") {
        after.checkpoints = checkpoints;
    }
    let start = if paths.contains(&"start_date") {
        dates.0
    } else {
        Some(before.period.start())
    };
    let end = if paths.contains(&"end_date") {
        dates.1
    } else {
        Some(before.period.end())
    };
    match (start, end) {
        (Some(s), Some(e)) => match DateRange::new(s, e) {
            Some(r) => after.period = r,
            None => v.add(
                "milestone.end_date",
                format!("must not be before start_date {s} (got {e})"),
            ),
        },
        (s, e) => {
            if s.is_none() {
                v.add("milestone.start_date", "is required");
            }
            if e.is_none() {
                v.add("milestone.end_date", "is required");
            }
        }
    }
    after
}

fn apply_terms(row: &mut milestone::Model, terms: &Terms) {
    row.target = terms.target;
    row.stretch_target = terms.stretch_target;
    row.start_date = format_date(terms.period.start());
    row.end_date = format_date(terms.period.end());
    row.checkpoints = convert::checkpoints_to_json(&terms.checkpoints);
}

impl Goal {
    pub async fn load_milestone(
        &self,
        conn: &(impl ConnectionTrait + RowLocks),
        tenant: &str,
        id: &str,
    ) -> Result<milestone::Model, ApiError> {
        load::<milestone::Entity, _>(conn, Collection::Milestones, id, tenant, |r| &r.tenant_id).await
    }

    /// Checks a parent: same metric, period inside the parent's, and no
    /// cycle (a milestone cannot contribute to itself). Returns the parent.
    async fn check_parent(
        &self,
        conn: &(impl ConnectionTrait + RowLocks),
        tenant: &str,
        parent_id: &str,
        metric_id: &str,
        period: &DateRange,
        self_id: Option<&str>,
    ) -> Result<milestone::Model, ApiError> {
        let parent = self.load_milestone(conn, tenant, parent_id).await?;
        let parent_name = Collection::Milestones.name(parent_id);
        let mut v = Violations::new();
        if parent.metric_id != metric_id {
            v.add(
                "milestone.parent",
                format!(
                    "{parent_name} measures {} but this milestone measures {}; a parent must measure the same metric",
                    Collection::Metrics.name(&parent.metric_id),
                    Collection::Metrics.name(metric_id)
                ),
            );
        }
        if let Some(parent_terms) = convert::terms_of(&parent) {
            if !parent_terms.period.contains(period) {
                v.add(
                    "milestone.parent",
                    format!(
                        "the period {} to {} is not inside {parent_name}'s period {} to {}",
                        period.start(),
                        period.end(),
                        parent_terms.period.start(),
                        parent_terms.period.end()
                    ),
                );
            }
        }
        v.into_result(())?;
        if let Some(me) = self_id {
            // Walk up from the parent; meeting ourselves means a cycle.
            let mut cursor = Some(parent.clone());
            let mut seen = HashSet::new();
            while let Some(m) = cursor {
                if m.id == me {
                    return Err(ApiError::invalid(
                        "milestone.parent",
                        format!("{parent_name} contributes to this milestone already; that would make a cycle"),
                    ));
                }
                if !seen.insert(m.id.clone()) {
                    break;
                }
                cursor = match &m.parent_id {
                    Some(p) => Some(self.load_milestone(conn, tenant, p).await?),
                    None => None,
                };
            }
        }
        Ok(parent)
    }

    /// Violations for a new `period` that would leave children (not
    /// cancelled) outside it, reported on `prefix.start_date`/`end_date`.
    async fn children_outside(
        &self,
        conn: &impl ConnectionTrait,
        tenant: &str,
        id: &str,
        period: &DateRange,
        prefix: &str,
    ) -> Result<Violations, ApiError> {
        let children = milestone::Entity::find()
            .filter(milestone::Column::TenantId.eq(tenant))
            .filter(milestone::Column::ParentId.eq(id))
            .filter(milestone::Column::State.ne(state::CANCELLED))
            .all(conn)
            .await?;
        let mut v = Violations::new();
        for child in children {
            let Some(terms) = convert::terms_of(&child) else {
                continue;
            };
            if !period.contains(&terms.period) {
                let field = if terms.period.start() < period.start() {
                    "start_date"
                } else {
                    "end_date"
                };
                v.add(
                    format!("{prefix}.{field}"),
                    format!(
                        "{} runs from {} to {}, outside the new period; change it first",
                        Collection::Milestones.name(&child.id),
                        terms.period.start(),
                        terms.period.end()
                    ),
                );
                break;
            }
        }
        Ok(v)
    }

    pub async fn create_milestone(
        &self,
        ctx: &Ctx,
        m: pb::Milestone,
        activate: bool,
    ) -> Result<pb::Milestone, ApiError> {
        let settings = self.settings(self.db.conn(), ctx.tenant()).await?;
        let mut v = Violations::new();
        v.check_text("milestone.display_name", &m.display_name, 1, 200);
        v.check_text("milestone.description", &m.description, 0, 2000);
        let owner = Owner::parse(&m.owner).map_err(|e| v.add("milestone.owner", e)).ok();
        let metric_id = Collection::Metrics
            .parse(&m.metric)
            .map_err(|e| v.add("milestone.metric", e))
            .ok();
        let parent_id = if m.parent.is_empty() {
            None
        } else {
            Collection::Milestones
                .parse(&m.parent)
                .map_err(|e| v.add("milestone.parent", e))
                .ok()
        };
        let period = parse_period(
            "milestone",
            m.start_date.as_ref(),
            m.end_date.as_ref(),
            &m.fiscal_period,
            &settings.calendar,
            &mut v,
        );
        let checkpoints = parse_checkpoints("milestone", &m.checkpoints, &mut v);
        let terms = period.map(|period| Terms {
            target: m.target,
            stretch_target: m.stretch_target,
            period,
            checkpoints,
        });
        match &terms {
            Some(t) => validate_terms("milestone", t, &mut v),
            None if m.target <= 0 => v.add(
                "milestone.target",
                format!("must be greater than zero (got {})", m.target),
            ),
            None => {}
        }
        let (Some(owner), Some(metric_id), Some(terms)) = (owner, metric_id, terms) else {
            return Err(v.into());
        };
        v.into_result(())?;
        // Outside the transaction: a slow progress service must not hold
        // locks.
        let assessment = self
            .assessor
            .assess(
                ctx.tenant(),
                &owner.name(),
                &Collection::Metrics.name(&metric_id),
                &terms.period,
                terms.target,
            )
            .await;

        let (txn, replay) = self.begin::<pb::Milestone>(ctx).await?;
        if let Some(r) = replay {
            return Ok(r);
        }
        let tenant = ctx.tenant();
        match &owner {
            Owner::Team(id) => {
                load_team(&*txn, tenant, id).await?;
            }
            Owner::Member(id) => {
                load_member(&*txn, tenant, id).await?;
            }
        }
        load_metric(&*txn, tenant, &metric_id).await?;
        if let Some(p) = &parent_id {
            let parent = self
                .check_parent(&*txn, tenant, p, &metric_id, &terms.period, None)
                .await?;
            ensure_open_parent(&parent)?;
        }
        let now = now_micros();
        let today = settings.today(chrono::Utc::now());
        let (owner_kind, owner_id) = match owner {
            Owner::Team(id) => ("team", id),
            Owner::Member(id) => ("member", id),
        };
        let mut row = milestone::Model {
            id: new_id(),
            tenant_id: tenant.to_string(),
            display_name: m.display_name,
            description: m.description,
            owner_kind: owner_kind.to_string(),
            owner_id,
            metric_id,
            start_date: String::new(),
            end_date: String::new(),
            target: 0,
            stretch_target: None,
            checkpoints: String::new(),
            parent_id,
            state: if activate { state::ACTIVE } else { state::DRAFT }.to_string(),
            next_review_date: activate.then(|| format_date(settings.next_review(today))),
            revision_count: 0,
            final_value: None,
            version: 1,
            create_time: now,
            update_time: now,
            activate_time: activate.then_some(now),
            close_time: None,
            cancel_reason: None,
            assessment: Some(assessment.encode_to_vec()),
        };
        apply_terms(&mut row, &terms);
        milestone::Entity::insert(row.clone().into_active_model())
            .exec_without_returning(&*txn)
            .await?;
        let out = convert::milestone(&row, &settings.calendar);
        let mut changes = Changes::new();
        changes.push(pb::ChangeType::Created, Resource::Milestone(out.clone()));
        self.finish(txn, ctx, changes, out).await
    }

    pub async fn get_milestone(&self, caller: &Caller, name: &str) -> Result<pb::Milestone, ApiError> {
        let id = parse_name(Collection::Milestones, "name", name)?;
        let row = self.load_milestone(self.db.conn(), &caller.tenant_id, &id).await?;
        let settings = self.settings(self.db.conn(), &caller.tenant_id).await?;
        Ok(convert::milestone(&row, &settings.calendar))
    }

    pub async fn list_milestones(
        &self,
        caller: &Caller,
        req: pb::ListMilestonesRequest,
    ) -> Result<pb::ListMilestonesResponse, ApiError> {
        let conn = self.db.conn();
        let tenant = &caller.tenant_id;
        let settings = self.settings(conn, tenant).await?;
        let active_on = date_from_wire(req.active_on.as_ref()).map_err(|e| ApiError::invalid("active_on", e))?;
        let page = Page::parse(
            req.page_size,
            &req.page_token,
            &format!(
                "milestones|{}|{}|{}|{:?}|{}|{}|{}",
                req.owner, req.team_subtree, req.fiscal_period, active_on, req.state, req.metric, req.parent
            ),
        )?;
        let mut q = milestone::Entity::find().filter(milestone::Column::TenantId.eq(tenant));
        if !req.owner.is_empty() {
            let (kind, id) = match Owner::parse(&req.owner).map_err(|e| ApiError::invalid("owner", e))? {
                Owner::Team(id) => ("team", id),
                Owner::Member(id) => ("member", id),
            };
            q = q
                .filter(milestone::Column::OwnerKind.eq(kind))
                .filter(milestone::Column::OwnerId.eq(id));
        }
        if !req.team_subtree.is_empty() {
            let root = parse_name(Collection::Teams, "team_subtree", &req.team_subtree)?;
            load_team(conn, tenant, &root).await?;
            let teams = subtree(&all_teams(conn, tenant).await?, &root);
            let members = members_of_teams_on(conn, tenant, &teams, settings.today(chrono::Utc::now())).await?;
            q = q.filter(
                Condition::any()
                    .add(
                        Condition::all()
                            .add(milestone::Column::OwnerKind.eq("team"))
                            .add(milestone::Column::OwnerId.is_in(teams)),
                    )
                    .add(
                        Condition::all()
                            .add(milestone::Column::OwnerKind.eq("member"))
                            .add(milestone::Column::OwnerId.is_in(members)),
                    ),
            );
        }
        if !req.fiscal_period.is_empty() {
            let p = FiscalPeriod::parse(&req.fiscal_period).map_err(|e| ApiError::invalid("fiscal_period", e))?;
            let range = settings.calendar.range(&p);
            q = q
                .filter(milestone::Column::StartDate.lte(format_date(range.end())))
                .filter(milestone::Column::EndDate.gte(format_date(range.start())));
        }
        if let Some(day) = active_on {
            q = q
                .filter(milestone::Column::StartDate.lte(format_date(day)))
                .filter(milestone::Column::EndDate.gte(format_date(day)));
        }
        let wanted_state = pb::MilestoneState::try_from(req.state)
            .map_err(|_| ApiError::invalid("state", format!("{} is not a MilestoneState", req.state)))?;
        if let Some(s) = convert::state_to_str(wanted_state) {
            q = q.filter(milestone::Column::State.eq(s));
        }
        if !req.metric.is_empty() {
            q = q.filter(milestone::Column::MetricId.eq(parse_name(Collection::Metrics, "metric", &req.metric)?));
        }
        if !req.parent.is_empty() {
            q = q.filter(milestone::Column::ParentId.eq(parse_name(Collection::Milestones, "parent", &req.parent)?));
        }
        if let Some(after) = &page.after {
            q = q.filter(milestone::Column::Id.gt(after.clone()));
        }
        let rows = q
            .order_by_asc(milestone::Column::Id)
            .limit(page.fetch_limit())
            .all(conn)
            .await?;
        let (rows, next_page_token) = page.finish(rows, |r| r.id.clone());
        Ok(pb::ListMilestonesResponse {
            milestones: rows.iter().map(|r| convert::milestone(r, &settings.calendar)).collect(),
            next_page_token,
        })
    }

    /// Stores a revision of `before`'s terms becoming `after`.
    async fn record_revision(
        conn: &impl ConnectionTrait,
        row: &mut milestone::Model,
        before: &Terms,
        after: &Terms,
        reason: &str,
        ctx: &Ctx,
        changes: &mut Changes,
    ) -> Result<i32, ApiError> {
        let author = ctx.caller.subject.as_str();
        row.revision_count += 1;
        let rev = revision::Model {
            milestone_id: row.id.clone(),
            revision_number: row.revision_count,
            tenant_id: row.tenant_id.clone(),
            reason: reason.to_string(),
            author: author.to_string(),
            previous_terms: convert::terms_to_json(before),
            new_terms: convert::terms_to_json(after),
            changed_fields: after.changed_fields(before).join(","),
            create_time: now_micros(),
        };
        revision::Entity::insert(rev.clone().into_active_model())
            .exec_without_returning(conn)
            .await?;
        changes.push(
            pb::ChangeType::Created,
            Resource::MilestoneRevision(convert::revision(&rev)),
        );
        Ok(rev.revision_number)
    }

    pub async fn update_milestone(
        &self,
        ctx: &Ctx,
        m: pb::Milestone,
        mask: Option<prost_types::FieldMask>,
        revision_reason: String,
    ) -> Result<pb::Milestone, ApiError> {
        let id = parse_name(Collection::Milestones, "milestone.name", &m.name)?;
        let paths = mask_paths(mask.as_ref(), &UPDATABLE)?;
        let mut v = Violations::new();
        if paths.contains(&"display_name") {
            v.check_text("milestone.display_name", &m.display_name, 1, 200);
        }
        if paths.contains(&"description") {
            v.check_text("milestone.description", &m.description, 0, 2000);
        }
        v.check_text("revision_reason", &revision_reason, 0, 1000);
        let new_parent = if paths.contains(&"parent") && !m.parent.is_empty() {
            Collection::Milestones
                .parse(&m.parent)
                .map_err(|e| v.add("milestone.parent", e))
                .ok()
        } else {
            None
        };
        let new_checkpoints = parse_checkpoints("milestone", &m.checkpoints, &mut v);
        let start = date_from_wire(m.start_date.as_ref())
            .map_err(|e| v.add("milestone.start_date", e))
            .ok()
            .flatten();
        let end = date_from_wire(m.end_date.as_ref())
            .map_err(|e| v.add("milestone.end_date", e))
            .ok()
            .flatten();
        v.into_result(())?;
        // Assess the terms this update would produce, outside the
        // transaction; the result is kept only if the terms inside it come
        // out the same.
        let prospective = match self.load_milestone(self.db.conn(), ctx.tenant(), &id).await {
            Ok(current) => convert::terms_of(&current).and_then(|before| {
                let mut scratch = Violations::new();
                let after = merge_terms(&before, &m, &paths, (start, end), new_checkpoints.clone(), &mut scratch);
                (scratch.is_empty() && after != before).then(|| {
                    let owner = convert::milestone(&current, &FiscalCalendar::default()).owner;
                    (after, owner, Collection::Metrics.name(&current.metric_id))
                })
            }),
            Err(_) => None,
        };
        let assessed = match prospective {
            Some((terms, owner, metric)) => {
                let a = self
                    .assessor
                    .assess(ctx.tenant(), &owner, &metric, &terms.period, terms.target)
                    .await;
                Some((terms, a))
            }
            None => None,
        };

        let (txn, replay) = self.begin::<pb::Milestone>(ctx).await?;
        if let Some(r) = replay {
            return Ok(r);
        }
        let tenant = ctx.tenant();
        let settings = self.settings(&*txn, tenant).await?;
        let current = self.load_milestone(&*txn, tenant, &id).await?;
        check_etag(&m.etag, current.version, &m.name)?;
        if is_closed(&current.state) {
            return Err(ApiError::precondition(
                "MILESTONE_CLOSED",
                m.name.clone(),
                format!("{} is {} and can no longer change", m.name, current.state),
            ));
        }
        let before = convert::terms_of(&current)
            .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("stored terms of {} do not parse", m.name)))?;
        let mut v = Violations::new();
        let stored = convert::milestone(&current, &settings.calendar);
        if !m.owner.is_empty() && m.owner != stored.owner {
            v.add(
                "milestone.owner",
                "is immutable: cancel this milestone and create one for the new owner",
            );
        }
        if !m.metric.is_empty() && m.metric != stored.metric {
            v.add(
                "milestone.metric",
                "is immutable: cancel this milestone and create one on the new metric",
            );
        }
        let after = merge_terms(&before, &m, &paths, (start, end), new_checkpoints.clone(), &mut v);
        validate_terms("milestone", &after, &mut v);
        if after.period != before.period {
            v.extend(
                self.children_outside(&*txn, tenant, &id, &after.period, "milestone")
                    .await?,
            );
        }
        let changed = after.changed_fields(&before);
        let needs_revision = current.state == state::ACTIVE && !changed.is_empty();
        if needs_revision && revision_reason.trim().is_empty() {
            v.add(
                "revision_reason",
                format!(
                    "is required to change the {} of an active milestone",
                    changed.join(", ")
                ),
            );
        }
        v.into_result(())?;
        let mut row = current.clone();
        if paths.contains(&"display_name") {
            row.display_name = m.display_name;
        }
        if paths.contains(&"description") {
            row.description = m.description;
        }
        if paths.contains(&"parent") {
            row.parent_id = new_parent;
        }
        if let Some(p) = row.parent_id.clone() {
            let relinked = current.parent_id.as_deref() != Some(p.as_str());
            if relinked || !changed.is_empty() {
                let parent = self
                    .check_parent(&*txn, tenant, &p, &row.metric_id, &after.period, Some(&row.id))
                    .await?;
                if relinked {
                    ensure_open_parent(&parent)?;
                }
            }
        }
        let mut changes = Changes::new();
        if needs_revision {
            Self::record_revision(
                &*txn,
                &mut row,
                &before,
                &after,
                revision_reason.trim(),
                ctx,
                &mut changes,
            )
            .await?;
        }
        if let Some((terms, assessment)) = &assessed {
            if *terms == after {
                row.assessment = Some(assessment.encode_to_vec());
            }
        }
        apply_terms(&mut row, &after);
        row.version += 1;
        row.update_time = now_micros();
        row.clone().into_active_model().reset_all().update(&*txn).await?;
        let out = convert::milestone(&row, &settings.calendar);
        changes.push(pb::ChangeType::Updated, Resource::Milestone(out.clone()));
        self.finish(txn, ctx, changes, out).await
    }

    pub async fn delete_milestone(
        &self,
        ctx: &Ctx,
        name: &str,
        etag: &str,
    ) -> Result<pb::DeleteMilestoneResponse, ApiError> {
        let id = parse_name(Collection::Milestones, "name", name)?;
        let (txn, replay) = self.begin::<pb::DeleteMilestoneResponse>(ctx).await?;
        if let Some(r) = replay {
            return Ok(r);
        }
        let settings = self.settings(&*txn, ctx.tenant()).await?;
        let current = self.load_milestone(&*txn, ctx.tenant(), &id).await?;
        check_etag(etag, current.version, name)?;
        if current.state != state::DRAFT {
            return Err(ApiError::precondition(
                "MILESTONE_NOT_DRAFT",
                name,
                format!(
                    "{name} is {}; only drafts can be deleted (cancel it instead)",
                    current.state
                ),
            ));
        }
        let children = milestone::Entity::find()
            .filter(milestone::Column::TenantId.eq(ctx.tenant()))
            .filter(milestone::Column::ParentId.eq(&id))
            .all(&*txn)
            .await?;
        if let Some(child) = children.first() {
            return Err(ApiError::precondition(
                "MILESTONE_HAS_CHILDREN",
                name,
                format!(
                    "{} contributes to {name}; detach or delete it first",
                    Collection::Milestones.name(&child.id)
                ),
            ));
        }
        current.clone().delete(&*txn).await?;
        let out = convert::milestone(&current, &settings.calendar);
        let mut changes = Changes::new();
        changes.push(pb::ChangeType::Deleted, Resource::Milestone(out.clone()));
        self.finish(txn, ctx, changes, pb::DeleteMilestoneResponse { milestone: Some(out) })
            .await
    }

    /// Moves a milestone from one of `from` states to `to`.
    pub async fn transition(
        &self,
        ctx: &Ctx,
        name: &str,
        etag: &str,
        to: &'static str,
        final_value: Option<i64>,
        reason: Option<String>,
    ) -> Result<pb::Milestone, ApiError> {
        let id = parse_name(Collection::Milestones, "name", name)?;
        let (txn, replay) = self.begin::<pb::Milestone>(ctx).await?;
        if let Some(r) = replay {
            return Ok(r);
        }
        let settings = self.settings(&*txn, ctx.tenant()).await?;
        let current = self.load_milestone(&*txn, ctx.tenant(), &id).await?;
        check_etag(etag, current.version, name)?;
        let allowed = match to {
            state::ACTIVE => current.state == state::DRAFT,
            state::ACHIEVED | state::MISSED => current.state == state::ACTIVE,
            state::CANCELLED => matches!(current.state.as_str(), state::DRAFT | state::ACTIVE),
            _ => false,
        };
        if !allowed {
            return Err(ApiError::precondition(
                "INVALID_STATE_TRANSITION",
                name,
                format!("{name} is {} and cannot become {to}", current.state),
            ));
        }
        if let Some(value) = final_value {
            let reached = value >= current.target;
            if (to == state::ACHIEVED && !reached) || (to == state::MISSED && reached) {
                return Err(ApiError::invalid(
                    "final_value",
                    format!(
                        "{value} {} the target {}, so the outcome cannot be {to}",
                        if reached { "reaches" } else { "is below" },
                        current.target
                    ),
                ));
            }
        }
        let now = now_micros();
        let mut row = current;
        row.state = to.to_string();
        if to == state::ACTIVE {
            row.activate_time = Some(now);
            row.next_review_date = Some(format_date(settings.next_review(settings.today(chrono::Utc::now()))));
        } else {
            row.close_time = Some(now);
            row.next_review_date = None;
            row.final_value = final_value;
            row.cancel_reason = reason;
        }
        row.version += 1;
        row.update_time = now;
        row.clone().into_active_model().reset_all().update(&*txn).await?;
        let out = convert::milestone(&row, &settings.calendar);
        let mut changes = Changes::new();
        changes.push(pb::ChangeType::Updated, Resource::Milestone(out.clone()));
        self.finish(txn, ctx, changes, out).await
    }

    pub async fn list_revisions(
        &self,
        caller: &Caller,
        req: pb::ListMilestoneRevisionsRequest,
    ) -> Result<pb::ListMilestoneRevisionsResponse, ApiError> {
        let id = parse_name(Collection::Milestones, "parent", &req.parent)?;
        let page = Page::parse(req.page_size, &req.page_token, &format!("revisions|{id}"))?;
        self.load_milestone(self.db.conn(), &caller.tenant_id, &id).await?;
        let mut q = revision::Entity::find()
            .filter(revision::Column::TenantId.eq(&caller.tenant_id))
            .filter(revision::Column::MilestoneId.eq(&id));
        if let Some(after) = &page.after {
            let n: i32 = after
                .parse()
                .map_err(|_| ApiError::invalid("page_token", "is not valid for this query"))?;
            q = q.filter(revision::Column::RevisionNumber.gt(n));
        }
        let rows = q
            .order_by_asc(revision::Column::RevisionNumber)
            .limit(page.fetch_limit())
            .all(self.db.conn())
            .await?;
        let (rows, next_page_token) = page.finish(rows, |r| r.revision_number.to_string());
        Ok(pb::ListMilestoneRevisionsResponse {
            milestone_revisions: rows.iter().map(convert::revision).collect(),
            next_page_token,
        })
    }

    pub async fn review_milestone(
        &self,
        ctx: &Ctx,
        req: pb::ReviewMilestoneRequest,
    ) -> Result<pb::MilestoneReview, ApiError> {
        let id = parse_name(Collection::Milestones, "name", &req.name)?;
        let outcome = pb::ReviewOutcome::try_from(req.outcome).unwrap_or(pb::ReviewOutcome::Unspecified);
        let mut v = Violations::new();
        v.check_text("notes", &req.notes, 0, 4000);
        let next_review = date_from_wire(req.next_review_date.as_ref())
            .map_err(|e| v.add("next_review_date", e))
            .ok()
            .flatten();
        let adjusted = match (outcome, &req.adjusted_terms) {
            (pb::ReviewOutcome::Unspecified, _) => {
                v.add("outcome", "must be REVIEW_OUTCOME_KEEP or REVIEW_OUTCOME_ADJUST");
                None
            }
            (pb::ReviewOutcome::Keep, Some(_)) => {
                v.add("adjusted_terms", "must be empty when the outcome is KEEP");
                None
            }
            (pb::ReviewOutcome::Keep, None) => None,
            (pb::ReviewOutcome::Adjust, None) => {
                v.add("adjusted_terms", "is required when the outcome is ADJUST");
                None
            }
            (pb::ReviewOutcome::Adjust, Some(t)) => {
                if req.notes.trim().is_empty() {
                    v.add(
                        "notes",
                        "is required when the outcome is ADJUST: it is the revision's reason",
                    );
                }
                parse_wire_terms("adjusted_terms", t, &mut v)
            }
        };
        v.into_result(())?;

        let (txn, replay) = self.begin::<pb::MilestoneReview>(ctx).await?;
        if let Some(r) = replay {
            return Ok(r);
        }
        let tenant = ctx.tenant();
        let settings = self.settings(&*txn, tenant).await?;
        let current = self.load_milestone(&*txn, tenant, &id).await?;
        if current.state != state::ACTIVE {
            return Err(ApiError::precondition(
                "MILESTONE_NOT_ACTIVE",
                req.name.clone(),
                format!("{} is {}; only active milestones are reviewed", req.name, current.state),
            ));
        }
        let today = settings.today(chrono::Utc::now());
        let next_review = next_review.unwrap_or_else(|| settings.next_review(today));
        if next_review <= today {
            return Err(ApiError::invalid(
                "next_review_date",
                format!("must be after today, {today}"),
            ));
        }
        let mut row = current.clone();
        let mut changes = Changes::new();
        let mut revision_number = None;
        if let Some(after) = adjusted {
            let before = convert::terms_of(&current)
                .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("stored terms of {} do not parse", req.name)))?;
            if let Some(p) = row.parent_id.clone() {
                self.check_parent(&*txn, tenant, &p, &row.metric_id, &after.period, Some(&row.id))
                    .await?;
            }
            if after == before {
                return Err(ApiError::invalid(
                    "adjusted_terms",
                    "equal the current terms; use REVIEW_OUTCOME_KEEP to keep them",
                ));
            }
            if after.period != before.period {
                self.children_outside(&*txn, tenant, &id, &after.period, "adjusted_terms")
                    .await?
                    .into_result(())?;
            }
            {
                revision_number = Some(
                    Self::record_revision(&*txn, &mut row, &before, &after, req.notes.trim(), ctx, &mut changes)
                        .await?,
                );
                apply_terms(&mut row, &after);
            }
        }
        let now = now_micros();
        let rev = review::Model {
            id: new_id(),
            tenant_id: tenant.to_string(),
            milestone_id: id.clone(),
            outcome: if outcome == pb::ReviewOutcome::Adjust {
                "adjust"
            } else {
                "keep"
            }
            .to_string(),
            notes: req.notes,
            reviewer: ctx.caller.subject.clone(),
            review_date: format_date(today),
            next_review_date: format_date(next_review),
            revision_number,
            create_time: now,
        };
        review::Entity::insert(rev.clone().into_active_model())
            .exec_without_returning(&*txn)
            .await?;
        row.next_review_date = Some(format_date(next_review));
        row.version += 1;
        row.update_time = now;
        row.clone().into_active_model().reset_all().update(&*txn).await?;
        let out = convert::review(&rev);
        changes.push(pb::ChangeType::Created, Resource::MilestoneReview(out.clone()));
        changes.push(
            pb::ChangeType::Updated,
            Resource::Milestone(convert::milestone(&row, &settings.calendar)),
        );
        self.finish(txn, ctx, changes, out).await
    }

    pub async fn list_reviews(
        &self,
        caller: &Caller,
        req: pb::ListMilestoneReviewsRequest,
    ) -> Result<pb::ListMilestoneReviewsResponse, ApiError> {
        let id = parse_name(Collection::Milestones, "parent", &req.parent)?;
        let page = Page::parse(req.page_size, &req.page_token, &format!("reviews|{id}"))?;
        self.load_milestone(self.db.conn(), &caller.tenant_id, &id).await?;
        let mut q = review::Entity::find()
            .filter(review::Column::TenantId.eq(&caller.tenant_id))
            .filter(review::Column::MilestoneId.eq(&id));
        if let Some(after) = &page.after {
            q = q.filter(review::Column::Id.gt(after.clone()));
        }
        let rows = q
            .order_by_asc(review::Column::Id)
            .limit(page.fetch_limit())
            .all(self.db.conn())
            .await?;
        let (rows, next_page_token) = page.finish(rows, |r| r.id.clone());
        Ok(pb::ListMilestoneReviewsResponse {
            milestone_reviews: rows.iter().map(convert::review).collect(),
            next_page_token,
        })
    }

    pub async fn list_due_reviews(
        &self,
        caller: &Caller,
        req: pb::ListDueReviewsRequest,
    ) -> Result<pb::ListDueReviewsResponse, ApiError> {
        let conn = self.db.conn();
        let settings = self.settings(conn, &caller.tenant_id).await?;
        let as_of = date_from_wire(req.as_of_date.as_ref())
            .map_err(|e| ApiError::invalid("as_of_date", e))?
            .unwrap_or_else(|| settings.today(chrono::Utc::now()));
        // Bound to the request's own field, so a token issued just before the
        // tenant's midnight stays valid after it.
        let page = Page::parse(req.page_size, &req.page_token, &format!("due|{:?}", req.as_of_date))?;
        let mut q = milestone::Entity::find()
            .filter(milestone::Column::TenantId.eq(&caller.tenant_id))
            .filter(milestone::Column::State.eq(state::ACTIVE))
            .filter(milestone::Column::NextReviewDate.lte(format_date(as_of)));
        if let Some(after) = &page.after {
            let (date, id) = after
                .split_once('|')
                .ok_or_else(|| ApiError::invalid("page_token", "is not valid for this query"))?;
            q = q.filter(
                Condition::any().add(milestone::Column::NextReviewDate.gt(date)).add(
                    Condition::all()
                        .add(milestone::Column::NextReviewDate.eq(date))
                        .add(milestone::Column::Id.gt(id)),
                ),
            );
        }
        let rows = q
            .order_by_asc(milestone::Column::NextReviewDate)
            .order_by_asc(milestone::Column::Id)
            .limit(page.fetch_limit())
            .all(conn)
            .await?;
        let (rows, next_page_token) = page.finish(rows, |r| {
            format!("{}|{}", r.next_review_date.clone().unwrap_or_default(), r.id)
        });
        Ok(pb::ListDueReviewsResponse {
            milestones: rows.iter().map(|r| convert::milestone(r, &settings.calendar)).collect(),
            next_page_token,
        })
    }

    /// A fresh realism assessment of a milestone's current terms.
    pub async fn assess_milestone(&self, caller: &Caller, name: &str) -> Result<pb::MilestoneAssessment, ApiError> {
        let id = parse_name(Collection::Milestones, "name", name)?;
        let row = self.load_milestone(self.db.conn(), &caller.tenant_id, &id).await?;
        let terms = convert::terms_of(&row)
            .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("stored terms of {name} do not parse")))?;
        let owner = convert::milestone(&row, &FiscalCalendar::default()).owner;
        Ok(self
            .assessor
            .assess(
                &caller.tenant_id,
                &owner,
                &Collection::Metrics.name(&row.metric_id),
                &terms.period,
                terms.target,
            )
            .await)
    }

    pub async fn get_alignment(&self, caller: &Caller, name: &str) -> Result<pb::Alignment, ApiError> {
        let id = parse_name(Collection::Milestones, "name", name)?;
        let conn = self.db.conn();
        let tenant = &caller.tenant_id;
        let settings = self.settings(conn, tenant).await?;
        let parent = self.load_milestone(conn, tenant, &id).await?;
        let children = milestone::Entity::find()
            .filter(milestone::Column::TenantId.eq(tenant))
            .filter(milestone::Column::ParentId.eq(&id))
            .filter(milestone::Column::State.ne(state::CANCELLED))
            .order_by_asc(milestone::Column::Id)
            .all(conn)
            .await?;
        // Summed in i128: many large targets must not overflow, and the
        // wire fields saturate instead.
        let exact: i128 = children.iter().map(|c| i128::from(c.target)).sum();
        let sum = i64::try_from(exact).unwrap_or(i64::MAX);
        let mut uncovered_members = Vec::new();
        let mut uncovered_teams = Vec::new();
        if parent.owner_kind == "team" {
            let owners: HashSet<(&str, &str)> = children
                .iter()
                .map(|c| (c.owner_kind.as_str(), c.owner_id.as_str()))
                .collect();
            let today = settings.today(chrono::Utc::now());
            let day = convert::terms_of(&parent).map_or(today, |t| t.period.start().max(today).min(t.period.end()));
            let team_only: HashSet<String> = std::iter::once(parent.owner_id.clone()).collect();
            let mut members: Vec<String> = members_of_teams_on(conn, tenant, &team_only, day)
                .await?
                .into_iter()
                .filter(|m| !owners.contains(&("member", m.as_str())))
                .collect();
            members.sort();
            uncovered_members = members.iter().map(|m| Collection::Members.name(m)).collect();
            let sub_teams = team::Entity::find()
                .filter(team::Column::TenantId.eq(tenant))
                .filter(team::Column::ParentId.eq(&parent.owner_id))
                .order_by_asc(team::Column::Id)
                .all(conn)
                .await?;
            uncovered_teams = sub_teams
                .iter()
                .filter(|t| !owners.contains(&("team", t.id.as_str())))
                .map(|t| Collection::Teams.name(&t.id))
                .collect();
        }
        Ok(pb::Alignment {
            children_target_sum: sum,
            coverage_basis_points: basis_points(sum, parent.target),
            uncovered_target: i64::try_from(i128::from(parent.target) - exact).unwrap_or(i64::MIN),
            milestone: Some(convert::milestone(&parent, &settings.calendar)),
            children: children
                .iter()
                .map(|c| convert::milestone(c, &settings.calendar))
                .collect(),
            uncovered_members,
            uncovered_teams,
        })
    }
}
