//! sea-orm entities of the goal service's tables. Every table carries
//! `tenant_id`, and every query filters on it. Instants are microseconds since
//! the Unix epoch; civil dates are `YYYY-MM-DD` text; `version` backs etags.

pub mod member;
pub mod membership;
pub mod metric;
pub mod milestone;
pub mod review;
pub mod revision;
pub mod team;
pub mod tenant_settings;
