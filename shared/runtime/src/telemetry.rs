//! Tracing setup: pretty logs for people, JSON for pipelines.

use tracing_subscriber::{fmt, EnvFilter};

use crate::config::LogSettings;

/// Installs the global subscriber. Safe to call more than once (tests): later
/// calls keep the first subscriber.
pub fn init(settings: &LogSettings) {
    let filter = EnvFilter::try_new(&settings.filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let result = if settings.format == "json" {
        fmt().json().with_env_filter(filter).with_current_span(true).try_init()
    } else {
        fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init()
    };
    // An error means a subscriber is already installed, which is fine.
    let _ = result;
}
