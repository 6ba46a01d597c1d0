//! The points ledger, manual adjustments and redemptions.
//!
//! Every entry changes `points_balances` in the same transaction. A debit is
//! one conditional UPDATE (`... WHERE balance + amount >= 0`): on PostgreSQL
//! it takes the row lock and re-checks the condition after any concurrent
//! debit commits, on SQLite the single writer serialises it, so concurrent
//! debits can never take a balance below zero.

use std::collections::HashMap;

use milestones_api::recognition as pb;
use milestones_domain::names::Collection;
use milestones_domain::Violations;
use milestones_runtime::auth::{Caller, Role};
use milestones_runtime::paging::Page;
use milestones_runtime::wire::{micros_to_timestamp, now_micros};
use milestones_runtime::ApiError;
use sea_orm::{ConnectionTrait, QueryResult, Value};

use super::catalog::reward_of;
use super::{new_id, newest_key, parse_name, parse_newest_key, time_window, Ctx, Kind, Recognition, Rejection};
use crate::domain::{Audience, Viewer};
use crate::store::{self, exec, for_update, row, rows};

/// Largest manual adjustment, either way.
pub const MAX_ADJUSTMENT: i64 = 1_000_000;

/// Rows scanned per query while filling a page the caller may only partly
/// see.
const SCAN_BATCH: u64 = 200;

/// What caused a ledger entry.
#[derive(Debug, Clone)]
pub enum Cause {
    Recognition(String),
    Redemption(String),
    Adjustment { reason: String, by: String },
}

fn entry_name(member: &str, id: &str) -> String {
    format!("{}/pointsEntries/{id}", Collection::Members.name(member))
}

fn entry_of(r: &QueryResult) -> Result<pb::PointsEntry, ApiError> {
    let member: String = r.try_get("", "member_id")?;
    let id: String = r.try_get("", "id")?;
    let kind: String = r.try_get("", "cause_kind")?;
    let cause_id: String = r.try_get("", "cause_id")?;
    let cause = match kind.as_str() {
        "recognition" => pb::points_entry::Cause::Recognition(Kind::Recognitions.name(&cause_id)),
        "redemption" => pb::points_entry::Cause::Redemption(Kind::Redemptions.name(&cause_id)),
        _ => pb::points_entry::Cause::Adjustment(pb::PointsAdjustment {
            reason: r.try_get("", "reason")?,
            adjusted_by: r.try_get("", "adjusted_by")?,
        }),
    };
    Ok(pb::PointsEntry {
        name: entry_name(&member, &id),
        member: Collection::Members.name(&member),
        amount: r.try_get("", "amount")?,
        cause: Some(cause),
        balance_after: r.try_get("", "balance_after")?,
        create_time: Some(micros_to_timestamp(r.try_get("", "create_time")?)),
    })
}

/// The member's balance (0 without entries).
pub async fn balance(conn: &impl ConnectionTrait, tenant: &str, member: &str) -> Result<(i64, Option<i64>), ApiError> {
    Ok(
        match row(
            conn,
            "SELECT balance, update_time FROM points_balances WHERE tenant_id = $1 AND member_id = $2",
            vec![tenant.into(), member.into()],
        )
        .await?
        {
            Some(r) => (r.try_get("", "balance")?, Some(r.try_get("", "update_time")?)),
            None => (0, None),
        },
    )
}

/// Writes a ledger entry of `amount` and moves the balance, inside the
/// caller's transaction. A debit that would go below zero writes nothing
/// and fails with INSUFFICIENT_POINTS (metadata `balance`).
pub async fn post_entry(
    conn: &impl ConnectionTrait,
    tenant: &str,
    member: &str,
    amount: i64,
    cause: Cause,
    now: i64,
) -> Result<pb::PointsEntry, Rejection> {
    let after = if amount >= 0 {
        row(
            conn,
            "INSERT INTO points_balances (tenant_id, member_id, balance, update_time) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (tenant_id, member_id) DO UPDATE SET balance = points_balances.balance + excluded.balance, \
             update_time = excluded.update_time RETURNING balance",
            vec![tenant.into(), member.into(), amount.into(), now.into()],
        )
        .await?
    } else {
        row(
            conn,
            "UPDATE points_balances SET balance = balance + $3, update_time = $4 \
             WHERE tenant_id = $1 AND member_id = $2 AND balance + $3 >= 0 RETURNING balance",
            vec![tenant.into(), member.into(), amount.into(), now.into()],
        )
        .await?
    };
    let Some(after) = after else {
        let (current, _) = balance(conn, tenant, member).await?;
        return Err(Rejection::with(
            ApiError::precondition(
                "INSUFFICIENT_POINTS",
                Collection::Members.name(member),
                format!(
                    "the balance of {} is {current} points, less than the {} needed",
                    Collection::Members.name(member),
                    -amount
                ),
            ),
            vec![("balance", current.to_string())],
        ));
    };
    let balance_after: i64 = after.try_get("", "balance")?;
    let id = new_id();
    let (kind, cause_id, reason, by) = match cause {
        Cause::Recognition(id) => ("recognition", id, String::new(), String::new()),
        Cause::Redemption(id) => ("redemption", id, String::new(), String::new()),
        Cause::Adjustment { reason, by } => ("adjustment", String::new(), reason, by),
    };
    exec(
        conn,
        "INSERT INTO points_entries (id, tenant_id, member_id, amount, cause_kind, cause_id, reason, adjusted_by, \
         balance_after, create_time) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        vec![
            id.clone().into(),
            tenant.into(),
            member.into(),
            amount.into(),
            kind.into(),
            cause_id.into(),
            reason.into(),
            by.into(),
            balance_after.into(),
            now.into(),
        ],
    )
    .await?;
    let r = row(
        conn,
        "SELECT id, member_id, amount, cause_kind, cause_id, reason, adjusted_by, balance_after, create_time \
         FROM points_entries WHERE id = $1",
        vec![id.into()],
    )
    .await?
    .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("points entry vanished")))?;
    Ok(entry_of(&r)?)
}

const REDEMPTION_COLUMNS: &str =
    "id, member_id, reward_id, reward_display_name, cost_points, points_entry_id, redeemed_by, create_time";

fn redemption_of(r: &QueryResult) -> Result<pb::Redemption, ApiError> {
    let member: String = r.try_get("", "member_id")?;
    let id: String = r.try_get("", "id")?;
    Ok(pb::Redemption {
        name: Kind::Redemptions.name(&id),
        member: Collection::Members.name(&member),
        reward: Kind::Rewards.name(&r.try_get::<String>("", "reward_id")?),
        reward_display_name: r.try_get("", "reward_display_name")?,
        cost_points: r.try_get("", "cost_points")?,
        points_entry: entry_name(&member, &r.try_get::<String>("", "points_entry_id")?),
        redeemed_by: r.try_get("", "redeemed_by")?,
        create_time: Some(micros_to_timestamp(r.try_get("", "create_time")?)),
    })
}

/// Appends the keyset condition and order of a newest-first scan.
pub(crate) fn newest_first(sql: &mut String, values: &mut Vec<Value>, after: &Option<(i64, String)>, limit: u64) {
    if let Some((t, id)) = after {
        values.push((*t).into());
        let n = values.len();
        values.push(id.clone().into());
        sql.push_str(&format!(
            " AND (create_time < ${n} OR (create_time = ${n} AND id < ${}))",
            n + 1
        ));
    }
    sql.push_str(&format!(" ORDER BY create_time DESC, id DESC LIMIT {limit}"));
}

impl Recognition {
    /// NOT_FOUND unless goal has told us about the member.
    pub(crate) async fn require_member(
        &self,
        conn: &impl ConnectionTrait,
        tenant: &str,
        id: &str,
    ) -> Result<(), ApiError> {
        match store::member(conn, tenant, id).await? {
            Some(_) => Ok(()),
            None => Err(ApiError::not_found(Collection::Members.name(id))),
        }
    }

    /// PERMISSION_DENIED unless the caller is the member, in their manager
    /// chain, or an admin.
    async fn require_ledger_access(&self, caller: &Caller, member: &str) -> Result<(), ApiError> {
        let conn = self.db.conn();
        let viewer = store::viewer(conn, caller).await?;
        // Integrations read the whole tenant (docs/authorization.md).
        if caller.has_any(&[Role::Admin, Role::Service]) || viewer.member.as_deref() == Some(member) {
            return Ok(());
        }
        let audience = store::member_audience(conn, &caller.tenant_id, member).await?;
        if viewer.in_manager_chain(&audience) {
            return Ok(());
        }
        Err(ApiError::permission_denied(
            "only the member, their manager chain, admins and integrations may read a member's points",
        ))
    }

    pub async fn get_points_balance(&self, caller: &Caller, name: &str) -> Result<pb::PointsBalance, ApiError> {
        let member_name = name.strip_suffix("/pointsBalance").ok_or_else(|| {
            ApiError::invalid(
                "name",
                format!("must be members/{{member}}/pointsBalance, got {name:?}"),
            )
        })?;
        let member = parse_name(Collection::Members, "name", member_name)?;
        self.require_member(self.db.conn(), &caller.tenant_id, &member).await?;
        self.require_ledger_access(caller, &member).await?;
        let (balance, update_time) = balance(self.db.conn(), &caller.tenant_id, &member).await?;
        Ok(pb::PointsBalance {
            name: name.to_string(),
            member: member_name.to_string(),
            balance,
            update_time: update_time.map(micros_to_timestamp),
        })
    }

    pub async fn list_points_entries(
        &self,
        caller: &Caller,
        req: pb::ListPointsEntriesRequest,
    ) -> Result<pb::ListPointsEntriesResponse, ApiError> {
        let member = parse_name(Collection::Members, "parent", &req.parent)?;
        let (start, end) = time_window(req.start_time.as_ref(), req.end_time.as_ref())?;
        let page = Page::parse(
            req.page_size,
            &req.page_token,
            &format!("entries|{}|{start:?}|{end:?}", req.parent),
        )?;
        self.require_member(self.db.conn(), &caller.tenant_id, &member).await?;
        self.require_ledger_access(caller, &member).await?;
        let mut sql = "SELECT id, member_id, amount, cause_kind, cause_id, reason, adjusted_by, balance_after, \
                       create_time FROM points_entries WHERE tenant_id = $1 AND member_id = $2"
            .to_string();
        let mut values: Vec<Value> = vec![caller.tenant_id.clone().into(), member.into()];
        if let Some(s) = start {
            values.push(s.into());
            sql.push_str(&format!(" AND create_time >= ${}", values.len()));
        }
        if let Some(e) = end {
            values.push(e.into());
            sql.push_str(&format!(" AND create_time < ${}", values.len()));
        }
        let after = page.after.as_deref().map(parse_newest_key).transpose()?;
        newest_first(&mut sql, &mut values, &after, page.fetch_limit());
        let found = rows(self.db.conn(), &sql, values).await?;
        let mut keyed = Vec::with_capacity(found.len());
        for r in &found {
            keyed.push((
                newest_key(r.try_get("", "create_time")?, &r.try_get::<String>("", "id")?),
                entry_of(r)?,
            ));
        }
        let (keyed, next_page_token) = page.finish(keyed, |(k, _)| k.clone());
        Ok(pb::ListPointsEntriesResponse {
            points_entries: keyed.into_iter().map(|(_, e)| e).collect(),
            next_page_token,
        })
    }

    pub async fn adjust_points(&self, ctx: &Ctx, req: pb::AdjustPointsRequest) -> Result<pb::PointsEntry, Rejection> {
        let mut v = Violations::new();
        let member = Collection::Members
            .parse(&req.member)
            .map_err(|e| v.add("member", e))
            .ok();
        if req.amount == 0 || req.amount.abs() > MAX_ADJUSTMENT {
            v.add("amount", "must be non-zero and within ±1000000");
        }
        v.check_text("reason", &req.reason, 1, 1000);
        if req.request_id.is_empty() {
            v.add("request_id", "is required: a retried adjustment must never apply twice");
        }
        let member = v.into_result(member)?.unwrap_or_default();
        let (txn, replay) = self.begin::<pb::PointsEntry>(ctx).await?;
        if let Some(r) = replay {
            return Ok(r);
        }
        self.require_member(&*txn, ctx.tenant(), &member).await?;
        let entry = post_entry(
            &*txn,
            ctx.tenant(),
            &member,
            req.amount,
            Cause::Adjustment {
                reason: req.reason.clone(),
                by: ctx.caller.subject.clone(),
            },
            now_micros(),
        )
        .await?;
        Ok(self.finish(txn, ctx, Vec::new(), entry).await?)
    }

    pub async fn redeem_reward(&self, ctx: &Ctx, req: pb::RedeemRewardRequest) -> Result<pb::Redemption, Rejection> {
        let mut v = Violations::new();
        let reward = Kind::Rewards
            .parse("reward", &req.reward)
            .map_err(|e| {
                if let ApiError::InvalidArgument(x) = e {
                    v.extend(x)
                }
            })
            .ok();
        let member = Collection::Members
            .parse(&req.member)
            .map_err(|e| v.add("member", e))
            .ok();
        if req.request_id.is_empty() {
            v.add(
                "request_id",
                "is required: a retried redemption must never charge twice",
            );
        }
        let (reward, member) = match v.into_result((reward, member))? {
            (Some(r), Some(m)) => (r, m),
            _ => return Err(ApiError::Internal(anyhow::anyhow!("validated names missing")).into()),
        };
        let (txn, replay) = self.begin::<pb::Redemption>(ctx).await?;
        if let Some(r) = replay {
            return Ok(r);
        }
        let conn = &*txn;
        let tenant = ctx.tenant();
        if !ctx.caller.has_any(&[Role::Admin]) {
            let own = store::member_by_subject(conn, tenant, &ctx.caller.subject).await?;
            if own.map(|m| m.id).as_deref() != Some(member.as_str()) {
                return Err(ApiError::permission_denied(
                    "members redeem their own points; admins may redeem for anyone",
                )
                .into());
            }
        }
        // Lock the reward first, then the balance: every redemption takes
        // them in this order, so concurrent ones queue instead of deadlocking.
        let sql = format!(
            "SELECT id, display_name, description, cost_points, available, stock, create_time, update_time, version \
             FROM rewards WHERE id = $1 AND tenant_id = $2{}",
            for_update(conn)
        );
        let current = row(conn, &sql, vec![reward.clone().into(), tenant.into()])
            .await?
            .ok_or_else(|| ApiError::not_found(req.reward.clone()))?;
        let current = reward_of(&current)?;
        self.require_member(conn, tenant, &member).await?;
        if !current.available {
            return Err(ApiError::precondition(
                "REWARD_UNAVAILABLE",
                &req.reward,
                format!("{} is not available for redemption now", req.reward),
            )
            .into());
        }
        if req.expected_cost_points.is_some_and(|c| c != current.cost_points) {
            return Err(Rejection::with(
                ApiError::precondition(
                    "REWARD_PRICE_CHANGED",
                    &req.reward,
                    format!(
                        "{} now costs {} points; confirm the new price and retry",
                        req.reward, current.cost_points
                    ),
                ),
                vec![("cost_points", current.cost_points.to_string())],
            ));
        }
        let now = now_micros();
        if current.stock.is_some() {
            let taken = exec(
                conn,
                "UPDATE rewards SET stock = stock - 1, update_time = $1, version = version + 1 \
                 WHERE id = $2 AND stock > 0",
                vec![now.into(), reward.clone().into()],
            )
            .await?;
            if taken == 0 {
                return Err(ApiError::precondition(
                    "REWARD_OUT_OF_STOCK",
                    &req.reward,
                    format!("{} is out of stock", req.reward),
                )
                .into());
            }
        }
        let id = new_id();
        let entry = post_entry(
            conn,
            tenant,
            &member,
            -current.cost_points,
            Cause::Redemption(id.clone()),
            now,
        )
        .await
        .map_err(|mut r| {
            r.metadata.push(("cost_points", current.cost_points.to_string()));
            r
        })?;
        let entry_id = entry.name.rsplit('/').next().unwrap_or_default().to_string();
        exec(
            conn,
            "INSERT INTO redemptions (id, tenant_id, member_id, reward_id, reward_display_name, cost_points, \
             points_entry_id, redeemed_by, create_time) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            vec![
                id.clone().into(),
                tenant.into(),
                member.into(),
                reward.into(),
                current.display_name.clone().into(),
                current.cost_points.into(),
                entry_id.into(),
                ctx.caller.subject.clone().into(),
                now.into(),
            ],
        )
        .await?;
        let sql = format!("SELECT {REDEMPTION_COLUMNS} FROM redemptions WHERE id = $1");
        let out = row(conn, &sql, vec![id.into()])
            .await?
            .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("redemption vanished")))?;
        let out = redemption_of(&out)?;
        Ok(self.finish(txn, ctx, Vec::new(), out).await?)
    }

    pub async fn get_redemption(&self, caller: &Caller, name: &str) -> Result<pb::Redemption, ApiError> {
        let id = Kind::Redemptions.parse("name", name)?;
        let conn = self.db.conn();
        let sql = format!("SELECT {REDEMPTION_COLUMNS} FROM redemptions WHERE id = $1 AND tenant_id = $2");
        let r = row(conn, &sql, vec![id.into(), caller.tenant_id.clone().into()])
            .await?
            .ok_or_else(|| ApiError::not_found(name))?;
        let viewer = store::viewer(conn, caller).await?;
        let member: String = r.try_get("", "member_id")?;
        let mut cache = HashMap::new();
        if !self
            .sees_member_item(&viewer, &caller.tenant_id, &member, &mut cache)
            .await?
        {
            return Err(ApiError::not_found(name));
        }
        redemption_of(&r)
    }

    /// Whether the viewer is an admin, the member, or in their chain.
    pub(crate) async fn sees_member_item(
        &self,
        viewer: &Viewer,
        tenant: &str,
        member: &str,
        cache: &mut HashMap<String, Audience>,
    ) -> Result<bool, ApiError> {
        if viewer.sees_all || viewer.member.as_deref() == Some(member) {
            return Ok(true);
        }
        if !viewer.is_manager {
            return Ok(false);
        }
        if !cache.contains_key(member) {
            let a = store::member_audience(self.db.conn(), tenant, member).await?;
            cache.insert(member.to_string(), a);
        }
        Ok(cache.get(member).is_some_and(|a| viewer.in_manager_chain(a)))
    }

    pub async fn list_redemptions(
        &self,
        caller: &Caller,
        req: pb::ListRedemptionsRequest,
    ) -> Result<pb::ListRedemptionsResponse, ApiError> {
        let page = Page::parse(
            req.page_size,
            &req.page_token,
            &format!("redemptions|{}|{}", req.member, req.reward),
        )?;
        let mut base = format!("SELECT {REDEMPTION_COLUMNS} FROM redemptions WHERE tenant_id = $1");
        let mut values: Vec<Value> = vec![caller.tenant_id.clone().into()];
        if !req.member.is_empty() {
            values.push(parse_name(Collection::Members, "member", &req.member)?.into());
            base.push_str(&format!(" AND member_id = ${}", values.len()));
        }
        if !req.reward.is_empty() {
            values.push(Kind::Rewards.parse("reward", &req.reward)?.into());
            base.push_str(&format!(" AND reward_id = ${}", values.len()));
        }
        let conn = self.db.conn();
        let viewer = store::viewer(conn, caller).await?;
        let mut cache = HashMap::new();
        let mut after = page.after.as_deref().map(parse_newest_key).transpose()?;
        let mut out = Vec::new();
        'scan: loop {
            let mut sql = base.clone();
            let mut vals = values.clone();
            newest_first(&mut sql, &mut vals, &after, SCAN_BATCH);
            let batch = rows(conn, &sql, vals).await?;
            let exhausted = (batch.len() as u64) < SCAN_BATCH;
            for r in &batch {
                let key = (r.try_get::<i64>("", "create_time")?, r.try_get::<String>("", "id")?);
                let member: String = r.try_get("", "member_id")?;
                after = Some(key.clone());
                if self
                    .sees_member_item(&viewer, &caller.tenant_id, &member, &mut cache)
                    .await?
                {
                    out.push((newest_key(key.0, &key.1), redemption_of(r)?));
                    if out.len() as u64 >= page.fetch_limit() {
                        break 'scan;
                    }
                }
            }
            if exhausted {
                break;
            }
        }
        let (out, next_page_token) = page.finish(out, |(k, _)| k.clone());
        Ok(pb::ListRedemptionsResponse {
            redemptions: out.into_iter().map(|(_, r)| r).collect(),
            next_page_token,
        })
    }
}
