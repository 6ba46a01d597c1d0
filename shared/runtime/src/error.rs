//! [`ApiError`]: the error every handler returns, and its one mapping to a
//! gRPC status with exactly one `google.rpc.ErrorInfo` and, for bad input, a
//! `google.rpc.BadRequest`. Internal causes are logged here, once, and never
//! sent to the caller.

use std::collections::HashMap;

use milestones_domain::Violations;
use sea_orm::DbErr;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// Why a call failed, in terms a caller can act on.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Fields of the request are wrong; each violation names one.
    #[error("the request has invalid fields: {0}")]
    InvalidArgument(Violations),
    /// The named resource does not exist for this caller (it may exist in
    /// another tenant, which the caller must not learn).
    #[error("{resource} was not found")]
    NotFound { resource: String },
    /// Something with the same identity exists already.
    #[error("{message}")]
    AlreadyExists { reason: &'static str, message: String },
    /// The resource's state forbids the call.
    #[error("{message}")]
    FailedPrecondition {
        reason: &'static str,
        subject: String,
        message: String,
    },
    /// A concurrent change won (stale etag, request in flight, conflict).
    #[error("{message}")]
    Aborted { reason: &'static str, message: String },
    /// A cursor or token outside what the server holds.
    #[error("{message}")]
    OutOfRange { reason: &'static str, message: String },
    /// A limit was hit (batch size, rate); the message says which.
    #[error("{message}")]
    ResourceExhausted { reason: &'static str, message: String },
    /// The caller is known but may not do this.
    #[error("{message}")]
    PermissionDenied { message: String },
    /// No valid credentials. The detail goes to the log, not the caller.
    #[error("authentication failed: {detail}")]
    Unauthenticated { detail: String },
    /// A dependency (the database) is unreachable; retry with backoff.
    #[error("{message}")]
    Unavailable { message: String },
    /// A bug or an unexpected failure.
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
    /// `error`, caused by entry `index` of a batch call: the status says
    /// which, in its message and in `ErrorInfo.metadata["index"]`.
    #[error("requests[{index}]: {error}")]
    InEntry { index: usize, error: Box<ApiError> },
}

impl ApiError {
    pub fn invalid(field: impl Into<String>, description: impl Into<String>) -> Self {
        let mut v = Violations::new();
        v.add(field, description);
        ApiError::InvalidArgument(v)
    }

    pub fn not_found(resource: impl Into<String>) -> Self {
        ApiError::NotFound {
            resource: resource.into(),
        }
    }

    pub fn precondition(reason: &'static str, subject: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError::FailedPrecondition {
            reason,
            subject: subject.into(),
            message: message.into(),
        }
    }

    pub fn etag_mismatch(resource: &str) -> Self {
        ApiError::Aborted {
            reason: "ETAG_MISMATCH",
            message: format!("{resource} was changed by someone else: read it again and retry with its new etag"),
        }
    }

    /// `error`, caused by entry `index` of a batch call.
    pub fn in_entry(index: usize, error: ApiError) -> Self {
        ApiError::InEntry {
            index,
            error: Box::new(error),
        }
    }

    pub fn permission_denied(message: impl Into<String>) -> Self {
        ApiError::PermissionDenied {
            message: message.into(),
        }
    }

    /// The machine-readable reason sent in `ErrorInfo.reason`.
    pub fn reason(&self) -> &'static str {
        match self {
            ApiError::InvalidArgument(_) => "INVALID_FIELDS",
            ApiError::NotFound { .. } => "NOT_FOUND",
            ApiError::AlreadyExists { reason, .. }
            | ApiError::FailedPrecondition { reason, .. }
            | ApiError::Aborted { reason, .. }
            | ApiError::ResourceExhausted { reason, .. }
            | ApiError::OutOfRange { reason, .. } => reason,
            ApiError::PermissionDenied { .. } => "PERMISSION_DENIED",
            ApiError::Unauthenticated { .. } => "UNAUTHENTICATED",
            ApiError::Unavailable { .. } => "UNAVAILABLE",
            ApiError::Internal(_) => "INTERNAL",
            ApiError::InEntry { error, .. } => error.reason(),
        }
    }

    /// The status sent to the caller. `domain` names the service in
    /// `ErrorInfo.domain`, e.g. `goal.milestones.dev`.
    pub fn into_status(self, domain: &str) -> Status {
        let (mut index, mut this) = (None, self);
        while let ApiError::InEntry { index: i, error } = this {
            index = Some(i);
            this = *error;
        }
        this.status_of_entry(domain, index)
    }

    fn status_of_entry(self, domain: &str, index: Option<usize>) -> Status {
        let reason = self.reason();
        let mut metadata = HashMap::new();
        let mut details = ErrorDetails::new();
        let (code, message) = match &self {
            ApiError::InvalidArgument(v) => {
                for fv in &v.0 {
                    details.add_bad_request_violation(fv.field.clone(), fv.description.clone());
                }
                (Code::InvalidArgument, self.to_string())
            }
            ApiError::NotFound { resource } => {
                metadata.insert("resource".to_string(), resource.clone());
                (Code::NotFound, self.to_string())
            }
            ApiError::AlreadyExists { message, .. } => (Code::AlreadyExists, message.clone()),
            ApiError::FailedPrecondition {
                subject,
                message,
                reason,
            } => {
                details.add_precondition_failure_violation(*reason, subject.clone(), message.clone());
                (Code::FailedPrecondition, message.clone())
            }
            ApiError::Aborted { message, .. } => (Code::Aborted, message.clone()),
            ApiError::OutOfRange { message, .. } => (Code::OutOfRange, message.clone()),
            ApiError::ResourceExhausted { message, .. } => (Code::ResourceExhausted, message.clone()),
            ApiError::PermissionDenied { message } => (Code::PermissionDenied, message.clone()),
            ApiError::Unauthenticated { detail } => {
                tracing::info!(%detail, "request refused: unauthenticated");
                (
                    Code::Unauthenticated,
                    "a valid bearer token is required: send `authorization: Bearer <jwt>`".to_string(),
                )
            }
            ApiError::Unavailable { message } => {
                tracing::warn!(%message, "request failed: dependency unavailable");
                (Code::Unavailable, message.clone())
            }
            ApiError::Internal(cause) => {
                tracing::error!(error = format!("{cause:#}"), "request failed: internal error");
                (Code::Internal, "internal error; it has been logged".to_string())
            }
            // Unwrapped by `into_status`, so never here.
            ApiError::InEntry { .. } => (Code::Internal, "internal error; it has been logged".to_string()),
        };
        let message = match index {
            Some(i) => {
                metadata.insert("index".to_string(), i.to_string());
                format!("requests[{i}]: {message}")
            }
            None => message,
        };
        details.set_error_info(reason, domain, metadata);
        Status::with_error_details(code, message, details)
    }
}

impl From<Violations> for ApiError {
    fn from(v: Violations) -> Self {
        ApiError::InvalidArgument(v)
    }
}

impl From<DbErr> for ApiError {
    fn from(err: DbErr) -> Self {
        match &err {
            DbErr::ConnectionAcquire(_) | DbErr::Conn(_) => ApiError::Unavailable {
                message: "the database is unreachable; retry with backoff".to_string(),
            },
            _ if is_connection_failure(&err) => ApiError::Unavailable {
                message: "the database is unreachable; retry with backoff".to_string(),
            },
            // A constraint that a concurrent transaction won: nothing was
            // written, and a retry sees the winner's state.
            _ if err.sql_err().is_some() || is_serialization_failure(&err) => ApiError::Aborted {
                reason: "CONCURRENT_MODIFICATION",
                message: "a concurrent change conflicted with this one; retry".to_string(),
            },
            _ => ApiError::Internal(anyhow::Error::new(err).context("database error")),
        }
    }
}

fn is_connection_failure(err: &DbErr) -> bool {
    let text = err.to_string();
    text.contains("PoolTimedOut") || text.contains("Connection refused") || text.contains("connection closed")
}

fn is_serialization_failure(err: &DbErr) -> bool {
    let text = err.to_string();
    // PostgreSQL 40001/40P01; SQLite "database is locked" under contention.
    text.contains("40001") || text.contains("40P01") || text.contains("database is locked")
}

/// Whether `err` is a unique-constraint violation (a duplicate key).
pub fn is_unique_violation(err: &DbErr) -> bool {
    matches!(err.sql_err(), Some(sea_orm::SqlErr::UniqueConstraintViolation(_)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic_types::StatusExt;

    /// Bad input becomes INVALID_ARGUMENT with one violation per field and
    /// exactly one ErrorInfo.
    #[test]
    fn invalid_argument_carries_field_violations() {
        let mut v = Violations::new();
        v.add("milestone.target", "must be greater than zero");
        v.add("milestone.end_date", "must not be before start_date");
        let status = ApiError::InvalidArgument(v).into_status("goal.milestones.dev");
        assert_eq!(status.code(), Code::InvalidArgument);
        let details = status.get_error_details();
        let br = details.bad_request().expect("bad request detail");
        assert_eq!(br.field_violations.len(), 2);
        assert_eq!(br.field_violations[0].field, "milestone.target");
        let info = details.error_info().expect("error info");
        assert_eq!(info.reason, "INVALID_FIELDS");
        assert_eq!(info.domain, "goal.milestones.dev");
    }

    /// An entry's error in a batch keeps its own code, reason and metadata,
    /// and names the entry in its message and in `metadata["index"]`.
    #[test]
    fn an_entry_error_names_its_entry() {
        let status =
            ApiError::in_entry(17, ApiError::not_found("members/nobody")).into_status("progress.milestones.dev");
        assert_eq!(status.code(), Code::NotFound);
        assert_eq!(status.message(), "requests[17]: members/nobody was not found");
        let info = status.get_error_details().error_info().cloned().expect("error info");
        assert_eq!(info.reason, "NOT_FOUND");
        assert_eq!(info.metadata.get("index").map(String::as_str), Some("17"));
        assert_eq!(
            info.metadata.get("resource").map(String::as_str),
            Some("members/nobody")
        );
    }

    /// Internal errors never leak their cause to the caller.
    #[test]
    fn internal_errors_hide_their_cause() {
        let status =
            ApiError::Internal(anyhow::anyhow!("SELECT * FROM secrets failed")).into_status("goal.milestones.dev");
        assert_eq!(status.code(), Code::Internal);
        assert!(!status.message().contains("SELECT"));
    }
}
