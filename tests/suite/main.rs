//! End-to-end tests of the suite over real gRPC, on SQLite by default and on
//! PostgreSQL with `MILESTONES_TEST_DB=postgres`.

mod authz;
mod feed;
mod fixtures;
mod limits;
mod milestones;
mod org;
mod progress;
mod recognition;
mod rules;
mod security;
mod server;
mod test_ca;
mod tls;
mod tokens;
mod validation;
mod write_txn;
