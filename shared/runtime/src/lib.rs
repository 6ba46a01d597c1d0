//! What every Sales Milestones service needs at run time.
//!
//! # Layout
//! - [`config`]: the settings tree, layered defaults → file → `MILESTONES__*`.
//! - [`telemetry`]: logs, spans per RPC and feed event, trace context, OTLP.
//! - [`auth`]: bearer-JWT verification and the caller it yields.
//! - [`jwks`]: the identity provider's public keys, kept fresh.
//! - [`identity`]: how a service calls the others (TLS, its own token).
//! - [`limits`]: the per-tenant write rate limit.
//! - [`tls`]: server and client TLS from the settings.
//! - [`error`]: [`ApiError`], the one error type at the service boundary, and
//!   its single mapping to `tonic::Status` with `google.rpc` details.
//! - [`db`]: connecting, the SQLite write lock, transactions.
//! - [`feed`]: the transactional outbox and its gapless reads.
//! - [`idempotency`]: `request_id` replay and reuse detection.
//! - [`paging`]: AIP-158 page sizes and opaque page tokens.
//! - [`reach`]: how far into the org a manager or rep caller reaches.
//! - [`wire`]: conversions between wire and domain dates and instants.
//! - [`server`]: the gRPC server with health, reflection and graceful shutdown.

pub mod auth;
pub mod config;
pub mod db;
pub mod error;
pub mod feed;
pub mod idempotency;
pub mod identity;
pub mod jwks;
pub mod limits;
pub mod paging;
pub mod reach;
pub mod server;
pub mod telemetry;
pub mod tls;
pub mod wire;

pub use error::ApiError;
