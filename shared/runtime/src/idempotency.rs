//! `request_id` idempotency (AIP-155): a retried write returns the first
//! result; the same id with another request is refused.
//!
//! Each service has an `idempotency_keys` table keyed by (tenant, caller,
//! method, request_id) holding the request's bytes and the response's bytes.
//! Both the lookup and the record happen inside the write's own transaction,
//! so a key exists exactly when its effect does.

use sea_orm::{ConnectionTrait, Statement, Value};

use crate::error::is_unique_violation;
use crate::ApiError;

/// Longest accepted `request_id`.
pub const MAX_REQUEST_ID_LEN: usize = 128;

/// Identifies one idempotent write.
#[derive(Debug, Clone)]
pub struct Key<'a> {
    pub tenant_id: &'a str,
    pub caller: &'a str,
    pub method: &'a str,
    pub request_id: &'a str,
}

/// Checks the `request_id` field's shape.
pub fn validate_request_id(request_id: &str) -> Result<(), ApiError> {
    if request_id.len() > MAX_REQUEST_ID_LEN {
        return Err(ApiError::invalid(
            "request_id",
            format!("must be at most {MAX_REQUEST_ID_LEN} characters"),
        ));
    }
    Ok(())
}

/// Looks the key up: `Ok(Some(response))` if this exact request already
/// ran, `Ok(None)` if the key is new, FAILED_PRECONDITION (REQUEST_ID_REUSED)
/// if it ran with a different request.
pub async fn lookup(conn: &impl ConnectionTrait, key: &Key<'_>, request: &[u8]) -> Result<Option<Vec<u8>>, ApiError> {
    let stmt = Statement::from_sql_and_values(
        conn.get_database_backend(),
        "SELECT request, response FROM idempotency_keys \
         WHERE tenant_id = $1 AND caller = $2 AND method = $3 AND request_id = $4",
        [
            Value::from(key.tenant_id),
            Value::from(key.caller),
            Value::from(key.method),
            Value::from(key.request_id),
        ],
    );
    let Some(row) = conn.query_one(stmt).await? else {
        return Ok(None);
    };
    let stored_request: Vec<u8> = row.try_get("", "request")?;
    if stored_request != request {
        return Err(ApiError::precondition(
            "REQUEST_ID_REUSED",
            format!("request_id:{}", key.request_id),
            format!(
                "request_id {:?} was already used for a different {} request; use a new request_id for a new request",
                key.request_id, key.method
            ),
        ));
    }
    Ok(Some(row.try_get("", "response")?))
}

/// Records the key with its response. A concurrent twin that committed first
/// makes this ABORTED (REQUEST_IN_FLIGHT), and the caller's retry then gets
/// the stored response.
pub async fn record(
    conn: &impl ConnectionTrait,
    key: &Key<'_>,
    request: &[u8],
    response: &[u8],
    now_micros: i64,
) -> Result<(), ApiError> {
    let stmt = Statement::from_sql_and_values(
        conn.get_database_backend(),
        "INSERT INTO idempotency_keys (tenant_id, caller, method, request_id, request, response, create_time) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
        [
            Value::from(key.tenant_id),
            Value::from(key.caller),
            Value::from(key.method),
            Value::from(key.request_id),
            Value::from(request.to_vec()),
            Value::from(response.to_vec()),
            Value::from(now_micros),
        ],
    );
    match conn.execute(stmt).await {
        Ok(_) => Ok(()),
        Err(e) if is_unique_violation(&e) => Err(ApiError::Aborted {
            reason: "REQUEST_IN_FLIGHT",
            message: format!(
                "request_id {:?} is being processed by a concurrent call; retry to get its result",
                key.request_id
            ),
        }),
        Err(e) => Err(e.into()),
    }
}
