//! The goal service's use cases. Each write is one transaction that changes
//! state, appends its change event to the outbox and records its
//! `request_id`, so that all three happen or none does.

use milestones_api::goal as pb;
use milestones_domain::calendar::FiscalCalendar;
use milestones_domain::tenant::{parse_time_zone, TenantSettings};
use milestones_runtime::auth::Caller;
use milestones_runtime::db::{Db, WriteTxn};
use milestones_runtime::feed::{FeedNotifier, FeedTable};
use milestones_runtime::idempotency::{self, Key};
use milestones_runtime::reach::{OrgTables, Owner, Reach};
use milestones_runtime::wire::now_micros;
use milestones_runtime::ApiError;
use prost::Message;
use sea_orm::{ConnectionTrait, EntityTrait};

use crate::convert;
use crate::entity::tenant_settings;

/// Where the goal service keeps the org, for [`Reach`].
const ORG_TABLES: OrgTables = OrgTables {
    teams: "teams",
    members: "members",
    memberships: "memberships",
};

pub mod milestones;
pub mod org;

/// The goal service's change log.
pub const CHANGE_LOG: FeedTable = FeedTable {
    table: "change_events",
    lock_key: 0x676f_616c_0001, // "goal" 1
};

/// The state the use cases share.
#[derive(Clone, Debug)]
pub struct Goal {
    pub db: Db,
    pub notifier: FeedNotifier,
    pub assessor: crate::assess::Assessor,
}

/// Who is writing, and the idempotency key of the write.
#[derive(Debug, Clone)]
pub struct Ctx {
    pub caller: Caller,
    pub method: &'static str,
    /// Empty when the caller sent none (no idempotency).
    pub request_id: String,
    /// The request as sent, with its `request_id` cleared: two requests are
    /// "the same" when these bytes are equal.
    pub request: Vec<u8>,
}

impl Ctx {
    pub fn tenant(&self) -> &str {
        &self.caller.tenant_id
    }

    fn key(&self) -> Option<Key<'_>> {
        (!self.request_id.is_empty()).then(|| Key {
            tenant_id: &self.caller.tenant_id,
            caller: &self.caller.subject,
            method: self.method,
            request_id: &self.request_id,
        })
    }
}

/// Events a write appends, committed with it.
#[derive(Default)]
pub struct Changes(Vec<pb::ChangeEvent>);

impl Changes {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn push(&mut self, change_type: pb::ChangeType, resource: pb::change_event::Resource) {
        let resource_name = match &resource {
            pb::change_event::Resource::Team(r) => r.name.clone(),
            pb::change_event::Resource::Member(r) => r.name.clone(),
            pb::change_event::Resource::Membership(r) => r.name.clone(),
            pb::change_event::Resource::Metric(r) => r.name.clone(),
            pb::change_event::Resource::Milestone(r) => r.name.clone(),
            pb::change_event::Resource::TenantSettings(r) => r.name.clone(),
            pb::change_event::Resource::MilestoneRevision(r) => r.name.clone(),
            pb::change_event::Resource::MilestoneReview(r) => r.name.clone(),
        };
        self.0.push(pb::ChangeEvent {
            change_type: change_type as i32,
            resource_name,
            resource: Some(resource),
            trace_parent: milestones_runtime::telemetry::current_traceparent(),
            ..Default::default()
        });
    }
}

impl Goal {
    /// Starts a write: opens the transaction and, when this exact request
    /// already ran, returns its stored response instead.
    pub async fn begin<R: Message + Default>(&self, ctx: &Ctx) -> Result<(WriteTxn, Option<R>), ApiError> {
        idempotency::validate_request_id(&ctx.request_id)?;
        let txn = self.db.begin_write().await?;
        if let Some(key) = ctx.key() {
            if let Some(stored) = idempotency::lookup(&*txn, &key, &ctx.request).await? {
                let response = R::decode(stored.as_slice())
                    .map_err(|e| ApiError::Internal(anyhow::anyhow!("stored response does not decode: {e}")))?;
                return Ok((txn, Some(response)));
            }
        }
        Ok((txn, None))
    }

    /// Finishes a write: appends its events, records the request id with the
    /// response, commits, and wakes the feeds.
    pub async fn finish<R: Message>(
        &self,
        txn: WriteTxn,
        ctx: &Ctx,
        changes: Changes,
        response: R,
    ) -> Result<R, ApiError> {
        let now = now_micros();
        for mut event in changes.0 {
            event.tenant_id = ctx.tenant().to_string();
            CHANGE_LOG
                .append(&*txn, ctx.tenant(), event.encode_to_vec(), now)
                .await?;
        }
        if let Some(key) = ctx.key() {
            idempotency::record(&*txn, &key, &ctx.request, &response.encode_to_vec(), now).await?;
        }
        txn.commit().await?;
        self.notifier.notify();
        Ok(response)
    }

    /// The tenant's settings row, if it was ever written.
    pub async fn settings_row(
        &self,
        conn: &impl ConnectionTrait,
        tenant: &str,
    ) -> Result<Option<tenant_settings::Model>, ApiError> {
        Ok(tenant_settings::Entity::find_by_id(tenant.to_string())
            .one(conn)
            .await?)
    }

    /// The tenant's settings as domain values (the defaults if never set).
    pub async fn settings(&self, conn: &impl ConnectionTrait, tenant: &str) -> Result<TenantSettings, ApiError> {
        Ok(match self.settings_row(conn, tenant).await? {
            None => TenantSettings::default(),
            Some(r) => TenantSettings {
                time_zone: parse_time_zone(&r.time_zone).unwrap_or(chrono_tz_utc()),
                calendar: FiscalCalendar::new(r.fiscal_year_start_month as u32).unwrap_or_default(),
                review_cadence_months: r.review_cadence_months as u32,
            },
        })
    }

    /// How far into the org `caller` reaches (docs/authorization.md).
    pub async fn reach(&self, caller: &Caller) -> Result<Reach, ApiError> {
        if let Some(r) = Reach::tenant_wide(caller) {
            return Ok(r);
        }
        let settings = self.settings(self.db.conn(), &caller.tenant_id).await?;
        let today = milestones_domain::calendar::format_date(settings.today(chrono::Utc::now()));
        Reach::load(self.db.conn(), caller, ORG_TABLES, &today).await
    }

    /// PERMISSION_DENIED unless `caller` may read (or, with `manage`, set
    /// and change) what `owner` (`members/{id}` or `teams/{id}`) owns. A
    /// malformed owner passes: the use case names the field.
    pub async fn guard_owner(&self, caller: &Caller, owner: &str, manage: bool) -> Result<(), ApiError> {
        let reach = self.reach(caller).await?;
        match Owner::parse(owner) {
            Some(o) if manage => reach.require_manage(o, owner),
            Some(o) => reach.require_read(o, owner),
            None => Ok(()),
        }
    }

    /// As [`Goal::guard_owner`], for the owner of the milestone `name`. An
    /// unknown milestone passes: the use case answers NOT_FOUND.
    pub async fn guard_milestone(&self, caller: &Caller, name: &str, manage: bool) -> Result<(), ApiError> {
        let reach = self.reach(caller).await?;
        if if manage { reach.manages_all() } else { reach.reads_all() } {
            return Ok(());
        }
        let Ok(id) = milestones_domain::names::Collection::Milestones.parse(name) else {
            return Ok(());
        };
        let Some(row) = crate::entity::milestone::Entity::find_by_id(id)
            .one(self.db.conn())
            .await?
        else {
            return Ok(());
        };
        if row.tenant_id != caller.tenant_id {
            return Ok(());
        }
        let owner = Owner::of(&row.owner_kind, &row.owner_id);
        if manage {
            reach.require_manage(owner, name)
        } else {
            reach.require_read(owner, name)
        }
    }

    /// Reads the wire form of the tenant's settings.
    pub async fn get_settings(&self, caller: &Caller) -> Result<pb::TenantSettings, ApiError> {
        let row = self.settings_row(self.db.conn(), &caller.tenant_id).await?;
        Ok(convert::tenant_settings(row.as_ref()))
    }
}

fn chrono_tz_utc() -> chrono_tz::Tz {
    chrono_tz::Tz::UTC
}

/// ABORTED unless `sent` is empty or equals the current etag.
pub fn check_etag(sent: &str, version: i64, resource: &str) -> Result<(), ApiError> {
    if sent.is_empty() || sent == convert::etag(version) {
        Ok(())
    } else {
        Err(ApiError::etag_mismatch(resource))
    }
}

/// The fields an update touches: the mask's paths, or `all` when the mask is
/// empty or `*`. Unknown paths are INVALID_ARGUMENT.
pub fn mask_paths(mask: Option<&prost_types::FieldMask>, all: &[&'static str]) -> Result<Vec<&'static str>, ApiError> {
    let paths: Vec<&str> = mask
        .map(|m| m.paths.iter().map(String::as_str).collect())
        .unwrap_or_default();
    if paths.is_empty() || paths == ["*"] {
        return Ok(all.to_vec());
    }
    let mut out = Vec::new();
    for p in paths {
        match all.iter().find(|a| **a == p) {
            Some(a) => out.push(*a),
            None => {
                return Err(ApiError::invalid(
                    "update_mask",
                    format!("{p:?} cannot be updated; updatable fields are: {}", all.join(", ")),
                ))
            }
        }
    }
    Ok(out)
}

/// A new server-assigned id: a UUIDv7, so ids sort in creation order.
pub fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}
