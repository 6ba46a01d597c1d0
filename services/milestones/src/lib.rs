//! The `milestones` binary's library: composing the services into one
//! server, and the command-line client.
//!
//! # Layout
//! - [`suite`]: runs the selected services on one listener.
//! - [`cli`]: the command-line interface (server, migrate, token, client
//!   commands).

pub mod bench;
pub mod cli;
pub mod suite;
