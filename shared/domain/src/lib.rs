//! Domain types of Sales Milestones, shared by every service.
//!
//! # Layout
//! - [`names`]: resource names (`teams/{team}`) and server-assigned ids.
//! - [`violation`]: field violations, collected rather than returned one by one.
//! - [`calendar`]: civil date ranges, the fiscal calendar and its period names.
//! - [`attainment`]: exact integer arithmetic on metric values.
//! - [`terms`]: the measurable, time-bound terms of a milestone and their rules.
//! - [`realism`]: how realistic a target is against past attainment.
//! - [`tenant`]: tenant settings (time zone, fiscal year, review cadence).
//!
//! Nothing here does I/O or knows about gRPC: handlers parse wire messages
//! into these types, and these types are tested on their own.

pub mod attainment;
pub mod calendar;
pub mod names;
pub mod realism;
pub mod tenant;
pub mod terms;
pub mod violation;

pub use violation::{FieldViolation, Violations};
