//! The catalog admins manage: badges, rules (with the versions that say
//! which terms were in force when) and rewards.

use milestones_api::recognition as pb;
use milestones_domain::names::Collection;
use milestones_domain::Violations;
use milestones_runtime::auth::Caller;
use milestones_runtime::paging::Page;
use milestones_runtime::wire::{micros_to_timestamp, now_micros};
use milestones_runtime::ApiError;
use sea_orm::{ConnectionTrait, QueryResult, Value};

use super::{check_etag, etag, mask_paths, new_id, parse_optional, Ctx, Kind, Recognition};
use crate::store::{exec, row, rows};

/// Most points one rule may award.
pub const MAX_RULE_POINTS: i64 = 1_000_000;

/// Separates the parts of a composite page key.
const SEP: char = '\u{1f}';

fn key_parts(key: &str, n: usize) -> Result<Vec<String>, ApiError> {
    let parts: Vec<String> = key.split(SEP).map(str::to_string).collect();
    if parts.len() == n {
        Ok(parts)
    } else {
        Err(ApiError::invalid(
            "page_token",
            "is not a page token issued for this query",
        ))
    }
}

fn bad_token() -> ApiError {
    ApiError::invalid("page_token", "is not a page token issued for this query")
}

// === Badges ===

const BADGE_COLUMNS: &str = "id, display_name, description, image_uri, tier, create_time, update_time, version";
const BADGE_PATHS: &[&str] = &["display_name", "description", "image_uri", "tier"];

fn badge_of(r: &QueryResult) -> Result<pb::Badge, ApiError> {
    let id: String = r.try_get("", "id")?;
    Ok(pb::Badge {
        name: Kind::Badges.name(&id),
        display_name: r.try_get("", "display_name")?,
        description: r.try_get("", "description")?,
        image_uri: r.try_get("", "image_uri")?,
        tier: r.try_get("", "tier")?,
        create_time: Some(micros_to_timestamp(r.try_get("", "create_time")?)),
        update_time: Some(micros_to_timestamp(r.try_get("", "update_time")?)),
        etag: etag(r.try_get("", "version")?),
    })
}

/// Whether `uri` is an absolute https URL without spaces.
fn is_https_url(uri: &str) -> bool {
    uri.strip_prefix("https://")
        .is_some_and(|rest| !rest.is_empty() && !rest.starts_with('/') && !rest.chars().any(char::is_whitespace))
}

fn validate_badge(v: &mut Violations, b: &pb::Badge, paths: &[&str]) {
    if paths.contains(&"display_name") {
        v.check_text("badge.display_name", &b.display_name, 1, 100);
    }
    if paths.contains(&"description") {
        v.check_text("badge.description", &b.description, 0, 1000);
    }
    if paths.contains(&"image_uri") && !b.image_uri.is_empty() {
        if b.image_uri.len() > 2048 {
            v.add("badge.image_uri", "must be at most 2048 characters");
        } else if !is_https_url(&b.image_uri) {
            v.add(
                "badge.image_uri",
                "must be an https URL, e.g. https://example.com/badge.png",
            );
        }
    }
    if paths.contains(&"tier") {
        match pb::BadgeTier::try_from(b.tier) {
            Ok(pb::BadgeTier::Unspecified) => v.add("badge.tier", "is required"),
            Ok(_) => {}
            Err(_) => v.add("badge.tier", format!("{} is not a BadgeTier", b.tier)),
        }
    }
}

async fn load_badge(conn: &impl ConnectionTrait, tenant: &str, id: &str) -> Result<pb::Badge, ApiError> {
    let sql = format!("SELECT {BADGE_COLUMNS} FROM badges WHERE id = $1 AND tenant_id = $2");
    let r = row(conn, &sql, vec![id.into(), tenant.into()])
        .await?
        .ok_or_else(|| ApiError::not_found(Kind::Badges.name(id)))?;
    badge_of(&r)
}

// === Rules ===

const RULE_COLUMNS: &str = "id, display_name, description, enabled, trigger_kind, streak_length, top_n, scope_team, \
     scope_metric, badge_id, points, visibility, create_time, update_time, version";
const RULE_PATHS: &[&str] = &[
    "display_name",
    "description",
    "enabled",
    "streak_length",
    "top_n",
    "scope_team",
    "scope_metric",
    "badge",
    "points",
    "visibility",
];

fn rule_of(r: &QueryResult) -> Result<pb::Rule, ApiError> {
    let id: String = r.try_get("", "id")?;
    let opt = |col: &str, c: Collection| -> Result<String, ApiError> {
        Ok(r.try_get::<Option<String>>("", col)?
            .map(|id| c.name(&id))
            .unwrap_or_default())
    };
    Ok(pb::Rule {
        name: Kind::Rules.name(&id),
        display_name: r.try_get("", "display_name")?,
        description: r.try_get("", "description")?,
        enabled: r.try_get("", "enabled")?,
        trigger: r.try_get("", "trigger_kind")?,
        streak_length: r.try_get("", "streak_length")?,
        top_n: r.try_get("", "top_n")?,
        scope_team: opt("scope_team", Collection::Teams)?,
        scope_metric: opt("scope_metric", Collection::Metrics)?,
        badge: r
            .try_get::<Option<String>>("", "badge_id")?
            .map(|b| Kind::Badges.name(&b))
            .unwrap_or_default(),
        points: r.try_get("", "points")?,
        visibility: r.try_get("", "visibility")?,
        create_time: Some(micros_to_timestamp(r.try_get("", "create_time")?)),
        update_time: Some(micros_to_timestamp(r.try_get("", "update_time")?)),
        etag: etag(r.try_get("", "version")?),
    })
}

async fn load_rule(conn: &impl ConnectionTrait, tenant: &str, id: &str) -> Result<pb::Rule, ApiError> {
    let sql = format!("SELECT {RULE_COLUMNS} FROM rules WHERE id = $1 AND tenant_id = $2");
    let r = row(conn, &sql, vec![id.into(), tenant.into()])
        .await?
        .ok_or_else(|| ApiError::not_found(Kind::Rules.name(id)))?;
    rule_of(&r)
}

/// A rule's references, parsed.
struct RuleRefs {
    scope_team: Option<String>,
    scope_metric: Option<String>,
    badge: Option<String>,
}

/// Checks a complete rule (after an update's merge) and parses its
/// references. Every faulty field is reported at once.
fn validate_rule(r: &pb::Rule) -> Result<RuleRefs, ApiError> {
    let mut v = Violations::new();
    v.check_text("rule.display_name", &r.display_name, 1, 100);
    v.check_text("rule.description", &r.description, 0, 1000);
    let trigger = match pb::RuleTrigger::try_from(r.trigger) {
        Ok(pb::RuleTrigger::Unspecified) => {
            v.add("rule.trigger", "is required");
            None
        }
        Ok(t) => Some(t),
        Err(_) => {
            v.add("rule.trigger", format!("{} is not a RuleTrigger", r.trigger));
            None
        }
    };
    match trigger {
        Some(pb::RuleTrigger::AchievedNPeriodsInARow) if !(2..=12).contains(&r.streak_length) => v.add(
            "rule.streak_length",
            "must be from 2 to 12 for ACHIEVED_N_PERIODS_IN_A_ROW",
        ),
        Some(t) if t != pb::RuleTrigger::AchievedNPeriodsInARow && r.streak_length != 0 => v.add(
            "rule.streak_length",
            "must be 0 unless the trigger is ACHIEVED_N_PERIODS_IN_A_ROW",
        ),
        _ => {}
    }
    match trigger {
        Some(pb::RuleTrigger::TopNAtPeriodClose) if !(1..=100).contains(&r.top_n) => {
            v.add("rule.top_n", "must be from 1 to 100 for TOP_N_AT_PERIOD_CLOSE")
        }
        Some(t) if t != pb::RuleTrigger::TopNAtPeriodClose && r.top_n != 0 => {
            v.add("rule.top_n", "must be 0 unless the trigger is TOP_N_AT_PERIOD_CLOSE")
        }
        _ => {}
    }
    if !(0..=MAX_RULE_POINTS).contains(&r.points) {
        v.add("rule.points", "must be from 0 to 1000000");
    }
    if r.badge.is_empty() && r.points == 0 {
        v.add(
            "rule.badge",
            "set a badge, points (rule.points), or both: the rule must award something",
        );
    }
    match pb::Visibility::try_from(r.visibility) {
        Ok(pb::Visibility::Unspecified) => v.add("rule.visibility", "is required"),
        Ok(_) => {}
        Err(_) => v.add("rule.visibility", format!("{} is not a Visibility", r.visibility)),
    }
    let mut parse = |c: Collection, field: &str, name: &str| match parse_optional(c, field, name) {
        Ok(id) => id,
        Err(ApiError::InvalidArgument(e)) => {
            v.extend(e);
            None
        }
        Err(_) => None,
    };
    let scope_team = parse(Collection::Teams, "rule.scope_team", &r.scope_team);
    let scope_metric = parse(Collection::Metrics, "rule.scope_metric", &r.scope_metric);
    let badge = match Kind::Badges.parse("rule.badge", &r.badge) {
        _ if r.badge.is_empty() => None,
        Ok(id) => Some(id),
        Err(ApiError::InvalidArgument(e)) => {
            v.extend(e);
            None
        }
        Err(_) => None,
    };
    v.into_result(RuleRefs {
        scope_team,
        scope_metric,
        badge,
    })
    .map_err(ApiError::from)
}

/// NOT_FOUND unless every reference exists in the tenant.
async fn check_refs(conn: &impl ConnectionTrait, tenant: &str, refs: &RuleRefs) -> Result<(), ApiError> {
    let checks = [
        (
            "org_teams",
            refs.scope_team.as_ref().map(|id| (id, Collection::Teams.name(id))),
        ),
        (
            "org_metrics",
            refs.scope_metric.as_ref().map(|id| (id, Collection::Metrics.name(id))),
        ),
        ("badges", refs.badge.as_ref().map(|id| (id, Kind::Badges.name(id)))),
    ];
    for (table, check) in checks {
        if let Some((id, name)) = check {
            let sql = format!("SELECT id FROM {table} WHERE id = $1 AND tenant_id = $2");
            if row(conn, &sql, vec![id.clone().into(), tenant.into()]).await?.is_none() {
                return Err(ApiError::not_found(name));
            }
        }
    }
    Ok(())
}

/// Records the terms a rule has from `valid_from` on.
async fn write_rule_version(
    conn: &impl ConnectionTrait,
    tenant: &str,
    id: &str,
    version: i64,
    valid_from: i64,
    r: &pb::Rule,
    refs: &RuleRefs,
) -> Result<(), ApiError> {
    exec(
        conn,
        "INSERT INTO rule_versions (rule_id, version, tenant_id, valid_from, enabled, trigger_kind, streak_length, \
         top_n, scope_team, scope_metric, badge_id, points, visibility) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
        vec![
            id.into(),
            version.into(),
            tenant.into(),
            valid_from.into(),
            r.enabled.into(),
            r.trigger.into(),
            r.streak_length.into(),
            r.top_n.into(),
            refs.scope_team.clone().into(),
            refs.scope_metric.clone().into(),
            refs.badge.clone().into(),
            r.points.into(),
            r.visibility.into(),
        ],
    )
    .await?;
    Ok(())
}

// === Rewards ===

const REWARD_COLUMNS: &str =
    "id, display_name, description, cost_points, available, stock, create_time, update_time, version";
const REWARD_PATHS: &[&str] = &["display_name", "description", "cost_points", "available", "stock"];

pub(crate) fn reward_of(r: &QueryResult) -> Result<pb::Reward, ApiError> {
    let id: String = r.try_get("", "id")?;
    Ok(pb::Reward {
        name: Kind::Rewards.name(&id),
        display_name: r.try_get("", "display_name")?,
        description: r.try_get("", "description")?,
        cost_points: r.try_get("", "cost_points")?,
        available: r.try_get("", "available")?,
        stock: r.try_get("", "stock")?,
        create_time: Some(micros_to_timestamp(r.try_get("", "create_time")?)),
        update_time: Some(micros_to_timestamp(r.try_get("", "update_time")?)),
        etag: etag(r.try_get("", "version")?),
    })
}

pub(crate) async fn load_reward(conn: &impl ConnectionTrait, tenant: &str, id: &str) -> Result<pb::Reward, ApiError> {
    let sql = format!("SELECT {REWARD_COLUMNS} FROM rewards WHERE id = $1 AND tenant_id = $2");
    let r = row(conn, &sql, vec![id.into(), tenant.into()])
        .await?
        .ok_or_else(|| ApiError::not_found(Kind::Rewards.name(id)))?;
    reward_of(&r)
}

fn validate_reward(v: &mut Violations, r: &pb::Reward, paths: &[&str]) {
    if paths.contains(&"display_name") {
        v.check_text("reward.display_name", &r.display_name, 1, 100);
    }
    if paths.contains(&"description") {
        v.check_text("reward.description", &r.description, 0, 2000);
    }
    if paths.contains(&"cost_points") && r.cost_points <= 0 {
        v.add("reward.cost_points", "must be greater than 0");
    }
    if paths.contains(&"stock") && r.stock.is_some_and(|s| s < 0) {
        v.add("reward.stock", "must not be negative (leave it unset for unlimited)");
    }
}

impl Recognition {
    // === Badges ===

    pub async fn create_badge(&self, ctx: &Ctx, badge: pb::Badge) -> Result<pb::Badge, ApiError> {
        let mut v = Violations::new();
        validate_badge(&mut v, &badge, BADGE_PATHS);
        v.into_result(())?;
        let (txn, replay) = self.begin::<pb::Badge>(ctx).await?;
        if let Some(r) = replay {
            return Ok(r);
        }
        let id = new_id();
        let now = now_micros();
        exec(
            &*txn,
            "INSERT INTO badges (id, tenant_id, display_name, description, image_uri, tier, create_time, update_time, \
             version) VALUES ($1, $2, $3, $4, $5, $6, $7, $7, 1)",
            vec![
                id.clone().into(),
                ctx.tenant().into(),
                badge.display_name.into(),
                badge.description.into(),
                badge.image_uri.into(),
                badge.tier.into(),
                now.into(),
            ],
        )
        .await?;
        let out = load_badge(&*txn, ctx.tenant(), &id).await?;
        self.finish(txn, ctx, Vec::new(), out).await
    }

    pub async fn get_badge(&self, caller: &Caller, name: &str) -> Result<pb::Badge, ApiError> {
        let id = Kind::Badges.parse("name", name)?;
        load_badge(self.db.conn(), &caller.tenant_id, &id).await
    }

    pub async fn list_badges(
        &self,
        caller: &Caller,
        req: pb::ListBadgesRequest,
    ) -> Result<pb::ListBadgesResponse, ApiError> {
        let page = Page::parse(req.page_size, &req.page_token, "badges")?;
        let mut values: Vec<Value> = vec![caller.tenant_id.clone().into()];
        let mut clause = String::new();
        if let Some(after) = &page.after {
            let p = key_parts(after, 3)?;
            let tier: i32 = p[0].parse().map_err(|_| bad_token())?;
            clause =
                " AND (tier > $2 OR (tier = $2 AND (display_name > $3 OR (display_name = $3 AND id > $4))))".into();
            values.extend([tier.into(), p[1].clone().into(), p[2].clone().into()]);
        }
        let sql = format!(
            "SELECT {BADGE_COLUMNS} FROM badges WHERE tenant_id = $1{clause} ORDER BY tier, display_name, id LIMIT {}",
            page.fetch_limit()
        );
        let found = rows(self.db.conn(), &sql, values)
            .await?
            .iter()
            .map(badge_of)
            .collect::<Result<Vec<_>, _>>()?;
        let (badges, next_page_token) = page.finish(found, |b| {
            format!(
                "{}{SEP}{}{SEP}{}",
                b.tier,
                b.display_name,
                b.name.trim_start_matches("badges/")
            )
        });
        Ok(pb::ListBadgesResponse {
            badges,
            next_page_token,
        })
    }

    pub async fn update_badge(
        &self,
        ctx: &Ctx,
        badge: pb::Badge,
        mask: Option<prost_types::FieldMask>,
    ) -> Result<pb::Badge, ApiError> {
        let id = Kind::Badges.parse("badge.name", &badge.name)?;
        let paths = mask_paths(mask.as_ref(), BADGE_PATHS)?;
        let mut v = Violations::new();
        validate_badge(&mut v, &badge, &paths);
        v.into_result(())?;
        let (txn, replay) = self.begin::<pb::Badge>(ctx).await?;
        if let Some(r) = replay {
            return Ok(r);
        }
        let mut current = load_badge(&*txn, ctx.tenant(), &id).await?;
        let version = current.etag.trim_matches('"').parse::<i64>().unwrap_or(0);
        check_etag(&badge.etag, version, &badge.name)?;
        for p in &paths {
            match *p {
                "display_name" => current.display_name = badge.display_name.clone(),
                "description" => current.description = badge.description.clone(),
                "image_uri" => current.image_uri = badge.image_uri.clone(),
                _ => current.tier = badge.tier,
            }
        }
        let changed = exec(
            &*txn,
            "UPDATE badges SET display_name = $1, description = $2, image_uri = $3, tier = $4, update_time = $5, \
             version = version + 1 WHERE id = $6 AND tenant_id = $7 AND version = $8",
            vec![
                current.display_name.into(),
                current.description.into(),
                current.image_uri.into(),
                current.tier.into(),
                now_micros().into(),
                id.clone().into(),
                ctx.tenant().into(),
                version.into(),
            ],
        )
        .await?;
        if changed == 0 {
            return Err(ApiError::etag_mismatch(&badge.name));
        }
        let out = load_badge(&*txn, ctx.tenant(), &id).await?;
        self.finish(txn, ctx, Vec::new(), out).await
    }

    pub async fn delete_badge(
        &self,
        ctx: &Ctx,
        name: &str,
        sent_etag: &str,
    ) -> Result<pb::DeleteBadgeResponse, ApiError> {
        let id = Kind::Badges.parse("name", name)?;
        let (txn, replay) = self.begin::<pb::DeleteBadgeResponse>(ctx).await?;
        if let Some(r) = replay {
            return Ok(r);
        }
        let badge = load_badge(&*txn, ctx.tenant(), &id).await?;
        check_etag(sent_etag, badge.etag.trim_matches('"').parse().unwrap_or(0), name)?;
        let used = row(
            &*txn,
            "SELECT 1 AS used FROM rules WHERE badge_id = $1 UNION ALL SELECT 1 AS used FROM recognitions WHERE badge_id = $1 \
             LIMIT 1",
            vec![id.clone().into()],
        )
        .await?
        .is_some();
        if used {
            return Err(ApiError::precondition(
                "BADGE_IN_USE",
                name,
                format!("{name} is named by a rule or carried by a recognition; change those rules to another badge, or keep it"),
            ));
        }
        exec(&*txn, "DELETE FROM badges WHERE id = $1", vec![id.into()]).await?;
        self.finish(txn, ctx, Vec::new(), pb::DeleteBadgeResponse { badge: Some(badge) })
            .await
    }

    // === Rules ===

    pub async fn create_rule(&self, ctx: &Ctx, rule: pb::Rule) -> Result<pb::Rule, ApiError> {
        let refs = validate_rule(&rule)?;
        let (txn, replay) = self.begin::<pb::Rule>(ctx).await?;
        if let Some(r) = replay {
            return Ok(r);
        }
        check_refs(&*txn, ctx.tenant(), &refs).await?;
        let id = new_id();
        let now = now_micros();
        exec(
            &*txn,
            "INSERT INTO rules (id, tenant_id, display_name, description, enabled, trigger_kind, streak_length, top_n, \
             scope_team, scope_metric, badge_id, points, visibility, create_time, update_time, version) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $14, 1)",
            vec![
                id.clone().into(),
                ctx.tenant().into(),
                rule.display_name.clone().into(),
                rule.description.clone().into(),
                rule.enabled.into(),
                rule.trigger.into(),
                rule.streak_length.into(),
                rule.top_n.into(),
                refs.scope_team.clone().into(),
                refs.scope_metric.clone().into(),
                refs.badge.clone().into(),
                rule.points.into(),
                rule.visibility.into(),
                now.into(),
            ],
        )
        .await?;
        write_rule_version(&*txn, ctx.tenant(), &id, 1, now, &rule, &refs).await?;
        let out = load_rule(&*txn, ctx.tenant(), &id).await?;
        self.finish(txn, ctx, Vec::new(), out).await
    }

    pub async fn get_rule(&self, caller: &Caller, name: &str) -> Result<pb::Rule, ApiError> {
        let id = Kind::Rules.parse("name", name)?;
        load_rule(self.db.conn(), &caller.tenant_id, &id).await
    }

    pub async fn list_rules(
        &self,
        caller: &Caller,
        req: pb::ListRulesRequest,
    ) -> Result<pb::ListRulesResponse, ApiError> {
        let trigger = pb::RuleTrigger::try_from(req.trigger)
            .map_err(|_| ApiError::invalid("trigger", format!("{} is not a RuleTrigger", req.trigger)))?;
        let page = Page::parse(
            req.page_size,
            &req.page_token,
            &format!("rules|{}|{}", req.trigger, req.enabled_only),
        )?;
        let mut values: Vec<Value> = vec![caller.tenant_id.clone().into()];
        let mut clause = String::new();
        if trigger != pb::RuleTrigger::Unspecified {
            values.push(req.trigger.into());
            clause.push_str(&format!(" AND trigger_kind = ${}", values.len()));
        }
        if req.enabled_only {
            values.push(true.into());
            clause.push_str(&format!(" AND enabled = ${}", values.len()));
        }
        if let Some(after) = &page.after {
            let p = key_parts(after, 2)?;
            let t: i64 = p[0].parse().map_err(|_| bad_token())?;
            values.push(t.into());
            let n = values.len();
            values.push(p[1].clone().into());
            clause.push_str(&format!(
                " AND (create_time > ${n} OR (create_time = ${n} AND id > ${}))",
                n + 1
            ));
        }
        let sql = format!(
            "SELECT {RULE_COLUMNS} FROM rules WHERE tenant_id = $1{clause} ORDER BY create_time, id LIMIT {}",
            page.fetch_limit()
        );
        let found = rows(self.db.conn(), &sql, values)
            .await?
            .iter()
            .map(rule_of)
            .collect::<Result<Vec<_>, _>>()?;
        let (rules, next_page_token) = page.finish(found, |r| {
            let t = r
                .create_time
                .as_ref()
                .map(|t| t.seconds * 1_000_000 + i64::from(t.nanos) / 1_000);
            format!("{}{SEP}{}", t.unwrap_or(0), r.name.trim_start_matches("rules/"))
        });
        Ok(pb::ListRulesResponse { rules, next_page_token })
    }

    pub async fn update_rule(
        &self,
        ctx: &Ctx,
        rule: pb::Rule,
        mask: Option<prost_types::FieldMask>,
    ) -> Result<pb::Rule, ApiError> {
        let id = Kind::Rules.parse("rule.name", &rule.name)?;
        if mask.as_ref().is_some_and(|m| m.paths.iter().any(|p| p == "trigger")) {
            return Err(ApiError::invalid(
                "update_mask",
                "\"trigger\" cannot change after create; create a new rule and disable this one",
            ));
        }
        let paths = mask_paths(mask.as_ref(), RULE_PATHS)?;
        let (txn, replay) = self.begin::<pb::Rule>(ctx).await?;
        if let Some(r) = replay {
            return Ok(r);
        }
        let mut merged = load_rule(&*txn, ctx.tenant(), &id).await?;
        let version: i64 = merged.etag.trim_matches('"').parse().unwrap_or(0);
        check_etag(&rule.etag, version, &rule.name)?;
        for p in &paths {
            match *p {
                "display_name" => merged.display_name = rule.display_name.clone(),
                "description" => merged.description = rule.description.clone(),
                "enabled" => merged.enabled = rule.enabled,
                "streak_length" => merged.streak_length = rule.streak_length,
                "top_n" => merged.top_n = rule.top_n,
                "scope_team" => merged.scope_team = rule.scope_team.clone(),
                "scope_metric" => merged.scope_metric = rule.scope_metric.clone(),
                "badge" => merged.badge = rule.badge.clone(),
                "points" => merged.points = rule.points,
                _ => merged.visibility = rule.visibility,
            }
        }
        let refs = validate_rule(&merged)?;
        check_refs(&*txn, ctx.tenant(), &refs).await?;
        let now = now_micros();
        let changed = exec(
            &*txn,
            "UPDATE rules SET display_name = $1, description = $2, enabled = $3, streak_length = $4, top_n = $5, \
             scope_team = $6, scope_metric = $7, badge_id = $8, points = $9, visibility = $10, update_time = $11, \
             version = version + 1 WHERE id = $12 AND tenant_id = $13 AND version = $14",
            vec![
                merged.display_name.clone().into(),
                merged.description.clone().into(),
                merged.enabled.into(),
                merged.streak_length.into(),
                merged.top_n.into(),
                refs.scope_team.clone().into(),
                refs.scope_metric.clone().into(),
                refs.badge.clone().into(),
                merged.points.into(),
                merged.visibility.into(),
                now.into(),
                id.clone().into(),
                ctx.tenant().into(),
                version.into(),
            ],
        )
        .await?;
        if changed == 0 {
            return Err(ApiError::etag_mismatch(&rule.name));
        }
        write_rule_version(&*txn, ctx.tenant(), &id, version + 1, now, &merged, &refs).await?;
        let out = load_rule(&*txn, ctx.tenant(), &id).await?;
        self.finish(txn, ctx, Vec::new(), out).await
    }

    pub async fn delete_rule(
        &self,
        ctx: &Ctx,
        name: &str,
        sent_etag: &str,
    ) -> Result<pb::DeleteRuleResponse, ApiError> {
        let id = Kind::Rules.parse("name", name)?;
        let (txn, replay) = self.begin::<pb::DeleteRuleResponse>(ctx).await?;
        if let Some(r) = replay {
            return Ok(r);
        }
        let rule = load_rule(&*txn, ctx.tenant(), &id).await?;
        check_etag(sent_etag, rule.etag.trim_matches('"').parse().unwrap_or(0), name)?;
        let awarded = row(
            &*txn,
            "SELECT id FROM recognitions WHERE rule_id = $1 LIMIT 1",
            vec![id.clone().into()],
        )
        .await?
        .is_some();
        if awarded {
            return Err(ApiError::precondition(
                "RULE_IN_USE",
                name,
                format!("{name} has awarded recognitions; disable it instead so they keep their rule"),
            ));
        }
        exec(
            &*txn,
            "DELETE FROM rule_versions WHERE rule_id = $1",
            vec![id.clone().into()],
        )
        .await?;
        exec(&*txn, "DELETE FROM rules WHERE id = $1", vec![id.into()]).await?;
        self.finish(txn, ctx, Vec::new(), pb::DeleteRuleResponse { rule: Some(rule) })
            .await
    }

    // === Rewards ===

    pub async fn create_reward(&self, ctx: &Ctx, reward: pb::Reward) -> Result<pb::Reward, ApiError> {
        let mut v = Violations::new();
        validate_reward(&mut v, &reward, REWARD_PATHS);
        v.into_result(())?;
        let (txn, replay) = self.begin::<pb::Reward>(ctx).await?;
        if let Some(r) = replay {
            return Ok(r);
        }
        let id = new_id();
        exec(
            &*txn,
            "INSERT INTO rewards (id, tenant_id, display_name, description, cost_points, available, stock, \
             create_time, update_time, version) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8, 1)",
            vec![
                id.clone().into(),
                ctx.tenant().into(),
                reward.display_name.into(),
                reward.description.into(),
                reward.cost_points.into(),
                reward.available.into(),
                reward.stock.into(),
                now_micros().into(),
            ],
        )
        .await?;
        let out = load_reward(&*txn, ctx.tenant(), &id).await?;
        self.finish(txn, ctx, Vec::new(), out).await
    }

    pub async fn get_reward(&self, caller: &Caller, name: &str) -> Result<pb::Reward, ApiError> {
        let id = Kind::Rewards.parse("name", name)?;
        load_reward(self.db.conn(), &caller.tenant_id, &id).await
    }

    pub async fn list_rewards(
        &self,
        caller: &Caller,
        req: pb::ListRewardsRequest,
    ) -> Result<pb::ListRewardsResponse, ApiError> {
        let page = Page::parse(
            req.page_size,
            &req.page_token,
            &format!("rewards|{}", req.available_only),
        )?;
        let mut values: Vec<Value> = vec![caller.tenant_id.clone().into()];
        let mut clause = String::new();
        if req.available_only {
            values.push(true.into());
            clause.push_str(" AND available = $2 AND (stock IS NULL OR stock > 0)");
        }
        if let Some(after) = &page.after {
            let p = key_parts(after, 3)?;
            let cost: i64 = p[0].parse().map_err(|_| bad_token())?;
            let n = values.len() + 1;
            values.extend([cost.into(), p[1].clone().into(), p[2].clone().into()]);
            clause.push_str(&format!(
                " AND (cost_points > ${n} OR (cost_points = ${n} AND (display_name > ${a} OR (display_name = ${a} AND id > ${b}))))",
                a = n + 1,
                b = n + 2
            ));
        }
        let sql = format!(
            "SELECT {REWARD_COLUMNS} FROM rewards WHERE tenant_id = $1{clause} ORDER BY cost_points, display_name, id LIMIT {}",
            page.fetch_limit()
        );
        let found = rows(self.db.conn(), &sql, values)
            .await?
            .iter()
            .map(reward_of)
            .collect::<Result<Vec<_>, _>>()?;
        let (rewards, next_page_token) = page.finish(found, |r| {
            format!(
                "{}{SEP}{}{SEP}{}",
                r.cost_points,
                r.display_name,
                r.name.trim_start_matches("rewards/")
            )
        });
        Ok(pb::ListRewardsResponse {
            rewards,
            next_page_token,
        })
    }

    pub async fn update_reward(
        &self,
        ctx: &Ctx,
        reward: pb::Reward,
        mask: Option<prost_types::FieldMask>,
    ) -> Result<pb::Reward, ApiError> {
        let id = Kind::Rewards.parse("reward.name", &reward.name)?;
        let paths = mask_paths(mask.as_ref(), REWARD_PATHS)?;
        let mut v = Violations::new();
        validate_reward(&mut v, &reward, &paths);
        v.into_result(())?;
        let (txn, replay) = self.begin::<pb::Reward>(ctx).await?;
        if let Some(r) = replay {
            return Ok(r);
        }
        let mut current = load_reward(&*txn, ctx.tenant(), &id).await?;
        let version: i64 = current.etag.trim_matches('"').parse().unwrap_or(0);
        check_etag(&reward.etag, version, &reward.name)?;
        for p in &paths {
            match *p {
                "display_name" => current.display_name = reward.display_name.clone(),
                "description" => current.description = reward.description.clone(),
                "cost_points" => current.cost_points = reward.cost_points,
                "available" => current.available = reward.available,
                _ => current.stock = reward.stock,
            }
        }
        let changed = exec(
            &*txn,
            "UPDATE rewards SET display_name = $1, description = $2, cost_points = $3, available = $4, stock = $5, \
             update_time = $6, version = version + 1 WHERE id = $7 AND tenant_id = $8 AND version = $9",
            vec![
                current.display_name.into(),
                current.description.into(),
                current.cost_points.into(),
                current.available.into(),
                current.stock.into(),
                now_micros().into(),
                id.clone().into(),
                ctx.tenant().into(),
                version.into(),
            ],
        )
        .await?;
        if changed == 0 {
            return Err(ApiError::etag_mismatch(&reward.name));
        }
        let out = load_reward(&*txn, ctx.tenant(), &id).await?;
        self.finish(txn, ctx, Vec::new(), out).await
    }

    pub async fn delete_reward(
        &self,
        ctx: &Ctx,
        name: &str,
        sent_etag: &str,
    ) -> Result<pb::DeleteRewardResponse, ApiError> {
        let id = Kind::Rewards.parse("name", name)?;
        let (txn, replay) = self.begin::<pb::DeleteRewardResponse>(ctx).await?;
        if let Some(r) = replay {
            return Ok(r);
        }
        let reward = load_reward(&*txn, ctx.tenant(), &id).await?;
        check_etag(sent_etag, reward.etag.trim_matches('"').parse().unwrap_or(0), name)?;
        exec(&*txn, "DELETE FROM rewards WHERE id = $1", vec![id.into()]).await?;
        self.finish(txn, ctx, Vec::new(), pb::DeleteRewardResponse { reward: Some(reward) })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(trigger: pb::RuleTrigger) -> pb::Rule {
        pb::Rule {
            display_name: "Half-way".into(),
            trigger: trigger as i32,
            points: 10,
            visibility: pb::Visibility::Public as i32,
            ..Default::default()
        }
    }

    fn fields(e: ApiError) -> Vec<String> {
        match e {
            ApiError::InvalidArgument(v) => v.0.into_iter().map(|f| f.field).collect(),
            other => panic!("expected INVALID_ARGUMENT, got {other:?}"),
        }
    }

    /// A good rule passes; each bad field is named, all at once.
    #[test]
    fn rules_are_validated_field_by_field() {
        assert!(validate_rule(&rule(pb::RuleTrigger::MilestoneAchieved)).is_ok());
        let mut bad = rule(pb::RuleTrigger::AchievedNPeriodsInARow);
        bad.streak_length = 1;
        bad.top_n = 3;
        bad.points = 0;
        bad.visibility = 0;
        bad.scope_team = "members/x".into();
        let f = fields(validate_rule(&bad).err().expect("invalid"));
        for expected in [
            "rule.streak_length",
            "rule.top_n",
            "rule.badge",
            "rule.visibility",
            "rule.scope_team",
        ] {
            assert!(f.contains(&expected.to_string()), "{expected} missing from {f:?}");
        }
        let mut top = rule(pb::RuleTrigger::TopNAtPeriodClose);
        assert_eq!(fields(validate_rule(&top).err().expect("no top_n")), vec!["rule.top_n"]);
        top.top_n = 3;
        top.points = MAX_RULE_POINTS + 1;
        assert_eq!(fields(validate_rule(&top).err().expect("points")), vec!["rule.points"]);
        let none = pb::Rule::default();
        let f = fields(validate_rule(&none).err().expect("empty"));
        assert!(f.contains(&"rule.trigger".to_string()) && f.contains(&"rule.display_name".to_string()));
    }

    /// Image URIs must be https.
    #[test]
    fn badge_images_are_https() {
        assert!(is_https_url("https://cdn.example.com/b.png"));
        assert!(!is_https_url("http://cdn.example.com/b.png"));
        assert!(!is_https_url("https:///b.png"));
        assert!(!is_https_url("https://a b"));
        let mut v = Violations::new();
        validate_badge(&mut v, &pb::Badge::default(), BADGE_PATHS);
        let f: Vec<_> = v.0.iter().map(|x| x.field.as_str()).collect();
        assert_eq!(f, vec!["badge.display_name", "badge.tier"]);
    }
}
