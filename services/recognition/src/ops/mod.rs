//! The recognition service's use cases. Each write is one transaction that
//! changes state, appends what it publishes to the recognition feed's
//! outbox and records its `request_id`, so that all three happen or none
//! does.

use milestones_api::recognition as pb;
use milestones_domain::names::is_valid_id;
use milestones_runtime::auth::Caller;
use milestones_runtime::db::{Db, WriteTxn};
use milestones_runtime::feed::{FeedNotifier, FeedTable};
use milestones_runtime::idempotency::{self, Key};
use milestones_runtime::identity::ServiceIdentity;
use milestones_runtime::wire::now_micros;
use milestones_runtime::ApiError;
use prost::Message;

pub mod awards;
pub mod catalog;
pub mod people;
pub mod points;

/// The recognition feed's log.
pub const EVENT_LOG: FeedTable = FeedTable {
    table: "recognition_events",
    lock_key: 0x7265_636f_0001, // "reco" 1
};

/// The state the use cases share.
#[derive(Clone)]
pub struct Recognition {
    pub db: Db,
    pub events: FeedNotifier,
    /// Most kudos one member may give per day.
    pub kudos_daily_limit: u32,
    /// How this service calls its peers (TLS, its own token).
    pub identity: ServiceIdentity,
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

impl Recognition {
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

    /// Finishes a write: appends its feed events, records the request id
    /// with the response, commits, and wakes the feed.
    pub async fn finish<R: Message>(
        &self,
        txn: WriteTxn,
        ctx: &Ctx,
        events: Vec<pb::RecognitionEvent>,
        response: R,
    ) -> Result<R, ApiError> {
        let now = now_micros();
        let published = !events.is_empty();
        for event in events {
            EVENT_LOG
                .append(&*txn, ctx.tenant(), event.encode_to_vec(), now)
                .await?;
        }
        if let Some(key) = ctx.key() {
            idempotency::record(&*txn, &key, &ctx.request, &response.encode_to_vec(), now).await?;
        }
        txn.commit().await?;
        if published {
            self.events.notify();
        }
        Ok(response)
    }
}

/// The resource collections of this service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Badges,
    Rules,
    Recognitions,
    Rewards,
    Redemptions,
    Kudos,
    Feedback,
}

impl Kind {
    pub fn prefix(self) -> &'static str {
        match self {
            Kind::Badges => "badges",
            Kind::Rules => "rules",
            Kind::Recognitions => "recognitions",
            Kind::Rewards => "rewards",
            Kind::Redemptions => "redemptions",
            Kind::Kudos => "kudos",
            Kind::Feedback => "feedback",
        }
    }

    pub fn name(self, id: &str) -> String {
        format!("{}/{id}", self.prefix())
    }

    /// Parses `prefix/{id}`; INVALID_ARGUMENT on `field` otherwise.
    pub fn parse(self, field: &str, name: &str) -> Result<String, ApiError> {
        match name.split_once('/') {
            Some((p, id)) if p == self.prefix() && is_valid_id(id) => Ok(id.to_string()),
            _ if name.is_empty() => Err(ApiError::invalid(field, "must not be empty")),
            _ => Err(ApiError::invalid(
                field,
                format!(
                    "must be a resource name of the form {}/{{id}}, got {name:?}",
                    self.prefix()
                ),
            )),
        }
    }
}

/// Parses a name of a goal collection; INVALID_ARGUMENT on `field`.
pub fn parse_name(
    collection: milestones_domain::names::Collection,
    field: &str,
    name: &str,
) -> Result<String, ApiError> {
    collection.parse(name).map_err(|e| ApiError::invalid(field, e))
}

/// Like [`parse_name`], with empty meaning "none".
pub fn parse_optional(
    collection: milestones_domain::names::Collection,
    field: &str,
    name: &str,
) -> Result<Option<String>, ApiError> {
    if name.is_empty() {
        Ok(None)
    } else {
        parse_name(collection, field, name).map(Some)
    }
}

/// The etag of a row version.
pub fn etag(version: i64) -> String {
    format!("\"{version}\"")
}

/// ABORTED unless `sent` is empty or equals the current etag.
pub fn check_etag(sent: &str, version: i64, resource: &str) -> Result<(), ApiError> {
    if sent.is_empty() || sent == etag(version) {
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

/// The page-token key of a row listed newest first: its time and id.
pub fn newest_key(create_time: i64, id: &str) -> String {
    format!("{create_time}|{id}")
}

/// The (time, id) a newest-first page token continues after.
pub fn parse_newest_key(key: &str) -> Result<(i64, String), ApiError> {
    key.split_once('|')
        .and_then(|(t, id)| Some((t.parse().ok()?, id.to_string())))
        .ok_or_else(|| ApiError::invalid("page_token", "is not a page token issued for this query"))
}

/// Microseconds of an optional wire timestamp; INVALID_ARGUMENT on `field`
/// for one out of range.
pub fn micros_of(field: &str, t: Option<&prost_types::Timestamp>) -> Result<Option<i64>, ApiError> {
    match t {
        None => Ok(None),
        Some(t) if t.nanos < 0 || t.nanos >= 1_000_000_000 => Err(ApiError::invalid(field, "is not a valid timestamp")),
        Some(t) => t
            .seconds
            .checked_mul(1_000_000)
            .and_then(|s| s.checked_add(i64::from(t.nanos) / 1_000))
            .map(Some)
            .ok_or_else(|| ApiError::invalid(field, "is out of range")),
    }
}

/// Parses an optional `[start_time, end_time)` window.
pub fn time_window(
    start: Option<&prost_types::Timestamp>,
    end: Option<&prost_types::Timestamp>,
) -> Result<(Option<i64>, Option<i64>), ApiError> {
    let s = micros_of("start_time", start)?;
    let e = micros_of("end_time", end)?;
    if let (Some(s), Some(e)) = (s, e) {
        if e <= s {
            return Err(ApiError::invalid("end_time", "must be after start_time"));
        }
    }
    Ok((s, e))
}

/// An [`ApiError`] with what the contract adds to a few of them: values in
/// `ErrorInfo.metadata` (e.g. the `balance` of INSUFFICIENT_POINTS) and a
/// `RetryInfo` (KUDOS_DAILY_LIMIT). The shared error type carries neither.
#[derive(Debug)]
pub struct Rejection {
    pub error: ApiError,
    pub metadata: Vec<(&'static str, String)>,
    pub retry_after: Option<std::time::Duration>,
}

impl Rejection {
    pub fn with(error: ApiError, metadata: Vec<(&'static str, String)>) -> Self {
        Self {
            error,
            metadata,
            retry_after: None,
        }
    }
}

impl From<ApiError> for Rejection {
    fn from(error: ApiError) -> Self {
        Self::with(error, Vec::new())
    }
}

impl From<sea_orm::DbErr> for Rejection {
    fn from(error: sea_orm::DbErr) -> Self {
        ApiError::from(error).into()
    }
}

impl From<milestones_domain::Violations> for Rejection {
    fn from(v: milestones_domain::Violations) -> Self {
        ApiError::from(v).into()
    }
}
