//! The settings tree. Layers, later wins: built-in defaults, an optional
//! YAML file (`--config`), then `MILESTONES__SECTION__KEY` environment
//! variables (e.g. `MILESTONES__GOAL__DATABASE_URL`). Everything is validated
//! before anything binds, and every problem is reported at once.

use std::path::{Path, PathBuf};

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use crate::auth::AuthConfig;

/// The development signing secret. Refused in production mode.
pub const DEVELOPMENT_SECRET: &str = "milestones-development-secret-do-not-use-in-production";

/// All settings of a `milestones` process.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// Where the gRPC server listens (`host:port`).
    pub listen_addr: String,
    /// Where embedded SQLite databases live when no database URL is set.
    pub data_dir: PathBuf,
    /// Log output.
    pub log: LogSettings,
    /// Trace and metric export.
    pub telemetry: TelemetrySettings,
    /// Token verification.
    pub auth: AuthSettings,
    /// Server limits and timings.
    pub grpc: GrpcSettings,
    /// The goal service's store and peers.
    pub goal: GoalSettings,
    /// The progress service's store and peers.
    pub progress: ProgressSettings,
    /// The recognition service's store, peers and limits.
    pub recognition: RecognitionSettings,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            listen_addr: "127.0.0.1:50051".to_string(),
            data_dir: PathBuf::from("data"),
            log: LogSettings::default(),
            telemetry: TelemetrySettings::default(),
            auth: AuthSettings::default(),
            grpc: GrpcSettings::default(),
            goal: GoalSettings::default(),
            progress: ProgressSettings::default(),
            recognition: RecognitionSettings::default(),
        }
    }
}

/// Log output settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogSettings {
    /// `pretty` for people, `json` for log pipelines.
    pub format: String,
    /// An `EnvFilter` directive, e.g. `info,milestones_goal=debug`.
    pub filter: String,
}

impl Default for LogSettings {
    fn default() -> Self {
        Self {
            format: "pretty".to_string(),
            filter: "info".to_string(),
        }
    }
}

/// Trace and metric export over OTLP.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetrySettings {
    /// The OTLP/gRPC collector, e.g. `http://otel-collector:4317`; empty
    /// turns export off.
    pub otlp_endpoint: String,
    /// The `service.name` resource attribute of what is exported.
    pub service_name: String,
    /// How often metrics are exported, in seconds.
    pub metrics_interval_secs: u64,
}

impl Default for TelemetrySettings {
    fn default() -> Self {
        Self {
            otlp_endpoint: String::new(),
            service_name: "milestones".to_string(),
            metrics_interval_secs: 60,
        }
    }
}

/// Token verification settings.
#[derive(Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthSettings {
    /// `development` accepts the built-in HS256 secret; `production` refuses
    /// it.
    pub mode: String,
    /// The HS256 signing secret (at least 32 bytes).
    pub hs256_secret: SecretString,
    /// The expected `iss` claim.
    pub issuer: String,
    /// The expected `aud` claim.
    pub audience: String,
    /// Clock skew tolerated on `exp` and `nbf`, in seconds.
    pub leeway_secs: u64,
}

impl std::fmt::Debug for AuthSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthSettings")
            .field("mode", &self.mode)
            .field("hs256_secret", &"[redacted]")
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("leeway_secs", &self.leeway_secs)
            .finish()
    }
}

impl Default for AuthSettings {
    fn default() -> Self {
        Self {
            mode: "development".to_string(),
            hs256_secret: SecretString::from(DEVELOPMENT_SECRET.to_string()),
            issuer: "milestones".to_string(),
            audience: "milestones".to_string(),
            leeway_secs: 30,
        }
    }
}

impl AuthSettings {
    pub fn to_config(&self) -> AuthConfig {
        AuthConfig {
            hs256_secret: self.hs256_secret.clone(),
            issuer: self.issuer.clone(),
            audience: self.audience.clone(),
            leeway_secs: self.leeway_secs,
        }
    }
}

/// Server limits and timings.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GrpcSettings {
    /// Longest a unary call may run before DEADLINE_EXCEEDED, in ms (the
    /// client's shorter `grpc-timeout` wins).
    pub request_timeout_ms: u64,
    /// Largest request or response message, in bytes.
    pub max_message_bytes: usize,
    /// How long shutdown waits for in-flight calls before giving up, in s.
    pub shutdown_grace_secs: u64,
    /// How long health reports NOT_SERVING before the listener closes, in
    /// ms, so load balancers stop sending traffic first.
    pub shutdown_drain_ms: u64,
    /// HTTP/2 keepalive ping interval, in s.
    pub keepalive_interval_secs: u64,
    /// How long to wait for a keepalive ack, in s.
    pub keepalive_timeout_secs: u64,
    /// How often an idle feed sends a heartbeat, in ms.
    pub feed_heartbeat_ms: u64,
    /// How often a feed re-reads its log when not woken (writes by other
    /// replicas), in ms.
    pub feed_poll_ms: u64,
}

impl Default for GrpcSettings {
    fn default() -> Self {
        Self {
            request_timeout_ms: 30_000,
            max_message_bytes: 4 * 1024 * 1024,
            shutdown_grace_secs: 20,
            shutdown_drain_ms: 2_000,
            keepalive_interval_secs: 30,
            keepalive_timeout_secs: 10,
            feed_heartbeat_ms: 5_000,
            feed_poll_ms: 500,
        }
    }
}

/// A service's database.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseSettings {
    /// `postgres://...` or `sqlite://...`; empty means an SQLite file in
    /// `data_dir`.
    pub database_url: String,
    /// Connection pool size.
    pub max_connections: u32,
}

impl Default for DatabaseSettings {
    fn default() -> Self {
        Self {
            database_url: String::new(),
            max_connections: 8,
        }
    }
}

impl DatabaseSettings {
    /// What is wrong with these settings, with keys under `key`.
    fn problems(&self, key: &str) -> Vec<String> {
        let mut p = Vec::new();
        let url = &self.database_url;
        let known = ["postgres://", "postgresql://", "sqlite:"];
        if !url.is_empty() && !known.iter().any(|k| url.starts_with(k)) {
            p.push(format!("{key}.database_url: must start with postgres:// or sqlite:"));
        }
        if self.max_connections == 0 {
            p.push(format!("{key}.max_connections: must be greater than zero"));
        }
        p
    }

    /// The URL to connect to for `service`, defaulting to an SQLite file.
    pub fn url_for(&self, service: &str, data_dir: &Path) -> String {
        if self.database_url.is_empty() {
            format!("sqlite://{}/{service}.db?mode=rwc", data_dir.display())
        } else {
            self.database_url.clone()
        }
    }
}

/// The goal service's settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GoalSettings {
    /// `postgres://...` or `sqlite://...`; empty means an SQLite file in
    /// `data_dir`.
    pub database_url: String,
    /// Connection pool size.
    pub max_connections: u32,
    /// Where the progress service is, for realism assessments (e.g.
    /// `http://progress:50051`); empty means this process's own listener.
    pub progress_endpoint: String,
    /// How long an assessment waits for the progress service, in ms.
    pub assessment_timeout_ms: u64,
}

impl Default for GoalSettings {
    fn default() -> Self {
        Self {
            database_url: String::new(),
            max_connections: 8,
            progress_endpoint: String::new(),
            assessment_timeout_ms: 2_000,
        }
    }
}

impl GoalSettings {
    pub fn database(&self) -> DatabaseSettings {
        DatabaseSettings {
            database_url: self.database_url.clone(),
            max_connections: self.max_connections,
        }
    }
}

/// The progress service's settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProgressSettings {
    /// `postgres://...` or `sqlite://...`; empty means an SQLite file in
    /// `data_dir`.
    pub database_url: String,
    /// Connection pool size.
    pub max_connections: u32,
    /// Where the goal service is, for its change feed (e.g.
    /// `http://goal:50051`); empty means this process's own listener, as in
    /// `milestones server`.
    pub goal_endpoint: String,
    /// How often milestones whose period ended are checked for MISSED and
    /// PERIOD_ENDED events, in seconds.
    pub period_end_check_secs: u64,
}

impl Default for ProgressSettings {
    fn default() -> Self {
        Self {
            database_url: String::new(),
            max_connections: 8,
            goal_endpoint: String::new(),
            period_end_check_secs: 60,
        }
    }
}

impl ProgressSettings {
    pub fn database(&self) -> DatabaseSettings {
        DatabaseSettings {
            database_url: self.database_url.clone(),
            max_connections: self.max_connections,
        }
    }
}

/// The recognition service's settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RecognitionSettings {
    /// `postgres://...` or `sqlite://...`; empty means an SQLite file in
    /// `data_dir`.
    pub database_url: String,
    /// Connection pool size.
    pub max_connections: u32,
    /// Where the progress service is, for its milestone event feed and
    /// leaderboards (e.g. `http://progress:50051`); empty means this
    /// process's own listener.
    pub progress_endpoint: String,
    /// Where the goal service is, for its change feed (org tree, members,
    /// milestones); empty means this process's own listener.
    pub goal_endpoint: String,
    /// How many kudos one member may give per day (in the tenant's time
    /// zone), so kudos stay meaningful and cannot be farmed.
    pub kudos_daily_limit: u32,
}

impl Default for RecognitionSettings {
    fn default() -> Self {
        Self {
            database_url: String::new(),
            max_connections: 8,
            progress_endpoint: String::new(),
            goal_endpoint: String::new(),
            kudos_daily_limit: 10,
        }
    }
}

impl RecognitionSettings {
    pub fn database(&self) -> DatabaseSettings {
        DatabaseSettings {
            database_url: self.database_url.clone(),
            max_connections: self.max_connections,
        }
    }
}

/// Loads settings from the defaults, the optional `file` and the
/// environment, then validates them. The error lists every problem.
pub fn load(file: Option<&Path>) -> Result<Settings, String> {
    let mut builder = config::Config::builder();
    if let Some(path) = file {
        if !path.exists() {
            return Err(format!("config file {} does not exist", path.display()));
        }
        builder = builder.add_source(config::File::from(path).required(true));
    }
    builder = builder.add_source(
        config::Environment::with_prefix("MILESTONES")
            .prefix_separator("__")
            .separator("__")
            .try_parsing(true),
    );
    let settings: Settings = builder
        .build()
        .and_then(|c| c.try_deserialize())
        .map_err(|e| format!("invalid configuration: {e}"))?;
    let problems = settings.problems();
    if problems.is_empty() {
        Ok(settings)
    } else {
        Err(format!("invalid configuration:\n  - {}", problems.join("\n  - ")))
    }
}

impl Settings {
    /// Everything wrong with these settings, each naming its key.
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if self.listen_addr.parse::<std::net::SocketAddr>().is_err() {
            p.push(format!(
                "listen_addr: {:?} is not a socket address such as 0.0.0.0:50051",
                self.listen_addr
            ));
        }
        if !matches!(self.log.format.as_str(), "pretty" | "json") {
            p.push(format!("log.format: {:?} must be pretty or json", self.log.format));
        }
        if tracing_subscriber::EnvFilter::try_new(&self.log.filter).is_err() {
            p.push(format!("log.filter: {:?} is not a valid filter", self.log.filter));
        }
        let otlp = &self.telemetry.otlp_endpoint;
        if !(otlp.is_empty() || otlp.starts_with("http://") || otlp.starts_with("https://")) {
            p.push(format!(
                "telemetry.otlp_endpoint: {otlp:?} must be an http:// or https:// URL such as http://otel-collector:4317"
            ));
        }
        if self.telemetry.metrics_interval_secs == 0 {
            p.push("telemetry.metrics_interval_secs: must be greater than zero".to_string());
        }
        match self.auth.mode.as_str() {
            "development" => {}
            "production" => {
                if self.auth.hs256_secret.expose_secret() == DEVELOPMENT_SECRET {
                    p.push("auth.hs256_secret: the development secret is refused in production mode; set MILESTONES__AUTH__HS256_SECRET".to_string());
                }
            }
            other => p.push(format!("auth.mode: {other:?} must be development or production")),
        }
        if self.auth.hs256_secret.expose_secret().len() < 32 {
            p.push("auth.hs256_secret: must be at least 32 bytes".to_string());
        }
        if self.grpc.max_message_bytes < 1024 {
            p.push("grpc.max_message_bytes: must be at least 1024".to_string());
        }
        if self.grpc.feed_heartbeat_ms == 0 || self.grpc.feed_poll_ms == 0 {
            p.push("grpc.feed_heartbeat_ms and grpc.feed_poll_ms: must be greater than zero".to_string());
        }
        p.extend(self.goal.database().problems("goal"));
        p.extend(self.progress.database().problems("progress"));
        if self.progress.period_end_check_secs == 0 {
            p.push("progress.period_end_check_secs: must be greater than zero".to_string());
        }
        p.extend(self.recognition.database().problems("recognition"));
        if !(1..=1000).contains(&self.recognition.kudos_daily_limit) {
            p.push("recognition.kudos_daily_limit: must be from 1 to 1000".to_string());
        }
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The defaults are valid as they are.
    #[test]
    fn defaults_are_valid() {
        assert!(Settings::default().problems().is_empty());
    }

    /// A bad file names each bad key.
    #[test]
    fn bad_values_name_their_keys() {
        let dir = std::env::temp_dir().join(format!("milestones-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("bad.yaml");
        std::fs::write(
            &path,
            "listen_addr: nowhere\nlog:\n  format: xml\nauth:\n  mode: production\n",
        )
        .expect("write");
        let err = load(Some(&path)).expect_err("invalid");
        assert!(err.contains("listen_addr"), "{err}");
        assert!(err.contains("log.format"), "{err}");
        assert!(err.contains("auth.hs256_secret"), "{err}");
        std::fs::write(&path, "goal:\n  databse_url: x\n").expect("write");
        let err = load(Some(&path)).expect_err("unknown key");
        assert!(err.contains("databse_url"), "{err}");
    }
}
