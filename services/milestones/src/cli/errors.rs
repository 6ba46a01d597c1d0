//! Errors that say what to fix, and the exit codes scripts can act on.
//!
//! | exit | meaning |
//! | --- | --- |
//! | 0 | done |
//! | 1 | an unexpected failure (a bug, an internal error) |
//! | 2 | the command line could not be parsed (see `--help`) |
//! | 64 | the configuration is invalid |
//! | 65 | the request was refused as asked: bad input (field by field), something not found, already existing or in the wrong state |
//! | 69 | the server could not be reached or is unavailable |
//! | 75 | a limit was hit (e.g. the daily kudos limit); try again later |
//! | 77 | the token was refused or lacks the role |

use serde_json::{json, Value};
use tonic::{Code, Status};
use tonic_types::StatusExt;

/// Bad input or a refused request.
pub const EXIT_DATA: u8 = 65;
/// The server cannot be reached.
pub const EXIT_UNAVAILABLE: u8 = 69;
/// A limit was hit; later may work.
pub const EXIT_TEMPFAIL: u8 = 75;
/// The token was refused or lacks a role.
pub const EXIT_NOPERM: u8 = 77;

/// A failure explained for people (`text`) and scripts (`detail`), with
/// the exit code it ends the process with.
#[derive(Debug)]
pub struct Failure {
    pub exit: u8,
    pub text: String,
    pub detail: Value,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

impl std::error::Error for Failure {}

/// A refusal decided on this side (an unknown name, a malformed flag),
/// worded like the server's: what is wrong and how to fix it.
pub fn refuse(field: &str, text: impl Into<String>) -> anyhow::Error {
    let text = text.into();
    anyhow::Error::new(Failure {
        exit: EXIT_DATA,
        detail: json!({
            "code": "INVALID_ARGUMENT",
            "message": text,
            "field_violations": [{"field": field, "description": text}],
        }),
        text: format!("{field}: {text}"),
    })
}

/// The server could not be reached.
pub fn unreachable(text: impl Into<String>) -> anyhow::Error {
    let text = text.into();
    anyhow::Error::new(Failure {
        exit: EXIT_UNAVAILABLE,
        detail: json!({"code": "UNAVAILABLE", "message": text}),
        text,
    })
}

/// The canonical name of a gRPC code, as in google.rpc.Code.
fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// Turns a status into an error that says what to fix, field by field.
pub fn explain(status: Status) -> anyhow::Error {
    explain_with(status, None)
}

/// As [`explain`], with a hint that knows the command better than the
/// generic one for the status code.
pub fn explain_with(status: Status, hint: Option<&str>) -> anyhow::Error {
    // A call that failed in the connection, not at the server (a TLS
    // handshake the server refused after all, a reset), says only
    // "transport error" or "operation was canceled"; its cause is in the
    // source chain, which a status the server sent never has.
    if let Some(source) = std::error::Error::source(&status) {
        return unreachable(format!(
            "the connection failed: {}\n  is `milestones server` reachable at --endpoint? With mutual TLS, pass \
             --client-cert and --client-key signed by a CA the server trusts",
            cause_chain(source)
        ));
    }
    let code = status.code();
    let exit = match code {
        Code::InvalidArgument
        | Code::NotFound
        | Code::AlreadyExists
        | Code::FailedPrecondition
        | Code::Aborted
        | Code::OutOfRange => EXIT_DATA,
        Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled => EXIT_UNAVAILABLE,
        Code::ResourceExhausted => EXIT_TEMPFAIL,
        Code::Unauthenticated | Code::PermissionDenied => EXIT_NOPERM,
        _ => 1,
    };
    let reason = status.get_details_error_info().map(|i| i.reason).unwrap_or_default();
    let violations: Vec<(String, String)> = status
        .get_details_bad_request()
        .map(|br| {
            br.field_violations
                .into_iter()
                .map(|v| (v.field, v.description))
                .collect()
        })
        .unwrap_or_default();
    let text = if violations.is_empty() {
        let label = if reason.is_empty() || reason == code_name(code) {
            format!("{code:?}")
        } else {
            format!("{code:?} ({reason})")
        };
        let generic = match code {
            Code::Unauthenticated => {
                "\n  get a token with `milestones token --tenant demo --subject you --role admin` and export it as MILESTONES_TOKEN"
            }
            Code::PermissionDenied => {
                "\n  the token's roles or subject do not allow this; mint another with `milestones token --role ...`"
            }
            Code::Unavailable => "\n  is `milestones server` running and reachable at --endpoint?",
            _ => "",
        };
        let hint = hint.map_or(generic.to_string(), |h| format!("\n  {h}"));
        format!("{label}: {}{hint}", status.message())
    } else {
        let mut text = format!("{code:?}: fix these fields:");
        for (field, description) in &violations {
            text.push_str(&format!("\n  {field}: {description}"));
        }
        text
    };
    anyhow::Error::new(Failure {
        exit,
        detail: json!({
            "code": code_name(code),
            "message": status.message(),
            "reason": reason,
            "field_violations": violations
                .iter()
                .map(|(f, d)| json!({"field": f, "description": d}))
                .collect::<Vec<_>>(),
        }),
        text,
    })
}

/// An error and its sources, each said once (a source's text often
/// repeats its own source's).
pub fn cause_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut next = error.source();
    while let Some(e) = next {
        let said = e.to_string();
        if !text.contains(&said) {
            text = format!("{text}: {said}");
        }
        next = e.source();
    }
    text
}

/// The exit code and the JSON form of any error.
pub fn classify(error: &anyhow::Error) -> (u8, Value) {
    match error.downcast_ref::<Failure>() {
        Some(f) => (f.exit, f.detail.clone()),
        None => (1, json!({"code": "UNKNOWN", "message": format!("{error:#}")})),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic_types::{ErrorDetails, StatusExt};

    /// Field violations come out one per line with the field first, and
    /// bad input exits with 65.
    #[test]
    fn bad_request_lists_every_field() {
        let mut details = ErrorDetails::new();
        details.add_bad_request_violation("milestone.target", "must be greater than zero (got 0)");
        details.add_bad_request_violation("milestone.fiscal_period", "\"FY2027-Q5\" is not a fiscal period");
        let status = Status::with_error_details(Code::InvalidArgument, "bad milestone", details);
        let e = explain(status);
        assert_eq!(
            e.to_string(),
            "InvalidArgument: fix these fields:\n  milestone.target: must be greater than zero (got 0)\n  milestone.fiscal_period: \"FY2027-Q5\" is not a fiscal period"
        );
        let (exit, detail) = classify(&e);
        assert_eq!(exit, EXIT_DATA);
        assert_eq!(detail["field_violations"][1]["field"], "milestone.fiscal_period");
    }

    /// Refused tokens exit with 77 and say how to get one.
    #[test]
    fn unauthenticated_says_how_to_get_a_token() {
        let e = explain(Status::unauthenticated("token rejected: ExpiredSignature"));
        assert!(e.to_string().contains("milestones token"), "{e}");
        assert_eq!(classify(&e).0, EXIT_NOPERM);
    }
}
