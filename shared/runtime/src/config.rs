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
    /// TLS for the server and for calls between the services.
    pub tls: TlsSettings,
    /// Per-tenant rate limits.
    pub limits: LimitsSettings,
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
            tls: TlsSettings::default(),
            limits: LimitsSettings::default(),
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
    /// `development` accepts HS256 tokens and the built-in secret;
    /// `production` needs RS256 or ES256 against a JWKS and a service token.
    pub mode: String,
    /// The one signature algorithm accepted: `HS256` (development only),
    /// `RS256` or `ES256`.
    pub algorithm: String,
    /// The HS256 signing secret (at least 32 bytes).
    pub hs256_secret: SecretString,
    /// A file holding the HS256 secret; when set, it replaces
    /// `hs256_secret`.
    pub hs256_secret_file: PathBuf,
    /// A JWKS file with the public keys tokens are verified against.
    pub jwks_file: PathBuf,
    /// A JWKS URL with the public keys tokens are verified against.
    pub jwks_url: String,
    /// How often the JWKS (file or URL) is read again, in seconds.
    pub jwks_refresh_secs: u64,
    /// PEM CA certificates trusted for `jwks_url` besides the public roots
    /// (an identity provider with a private CA).
    pub jwks_ca_file: PathBuf,
    /// The expected `iss` claim.
    pub issuer: String,
    /// The expected `aud` claim.
    pub audience: String,
    /// Clock skew tolerated on `exp` and `nbf`, in seconds.
    pub leeway_secs: u64,
    /// The claim naming the caller's tenant: a top-level claim name, or a
    /// JSON pointer such as `/org/tenant` for a nested one.
    pub tenant_claim: String,
    /// The claim listing the caller's roles (an array of strings, or one
    /// space-separated string): a name or a JSON pointer.
    pub roles_claim: String,
    /// A file holding the token this process sends when it calls the other
    /// services (tenant `*`, role `service`), mounted by the platform and
    /// read again when it changes. Without it, development mode mints one
    /// with the HS256 secret.
    pub service_token_file: PathBuf,
}

impl std::fmt::Debug for AuthSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthSettings")
            .field("mode", &self.mode)
            .field("algorithm", &self.algorithm)
            .field("hs256_secret", &"[redacted]")
            .field("hs256_secret_file", &self.hs256_secret_file)
            .field("jwks_file", &self.jwks_file)
            .field("jwks_url", &crate::db::redact(&self.jwks_url))
            .field("jwks_refresh_secs", &self.jwks_refresh_secs)
            .field("jwks_ca_file", &self.jwks_ca_file)
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("leeway_secs", &self.leeway_secs)
            .field("tenant_claim", &self.tenant_claim)
            .field("roles_claim", &self.roles_claim)
            .field("service_token_file", &self.service_token_file)
            .finish()
    }
}

impl Default for AuthSettings {
    fn default() -> Self {
        Self {
            mode: "development".to_string(),
            algorithm: "HS256".to_string(),
            hs256_secret: SecretString::from(DEVELOPMENT_SECRET.to_string()),
            hs256_secret_file: PathBuf::new(),
            jwks_file: PathBuf::new(),
            jwks_url: String::new(),
            jwks_refresh_secs: 300,
            jwks_ca_file: PathBuf::new(),
            issuer: "milestones".to_string(),
            audience: "milestones".to_string(),
            leeway_secs: 30,
            tenant_claim: "tenant".to_string(),
            roles_claim: "roles".to_string(),
            service_token_file: PathBuf::new(),
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

    /// Whether this is production mode.
    pub fn is_production(&self) -> bool {
        self.mode == "production"
    }

    fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        let production = match self.mode.as_str() {
            "development" => false,
            "production" => true,
            other => {
                p.push(format!("auth.mode: {other:?} must be development or production"));
                false
            }
        };
        let jwks = !self.jwks_file.as_os_str().is_empty() || !self.jwks_url.is_empty();
        match self.algorithm.as_str() {
            "HS256" if production => p.push(
                "auth.algorithm: HS256 (a shared secret, auth.hs256_secret) is for development only; production mode needs RS256 or ES256 with auth.jwks_file or auth.jwks_url".to_string(),
            ),
            "HS256" => {
                if self.hs256_secret.expose_secret().len() < 32 {
                    p.push("auth.hs256_secret: must be at least 32 bytes".to_string());
                }
            }
            "RS256" | "ES256" => {
                if !jwks {
                    p.push(format!(
                        "auth.jwks_file or auth.jwks_url: {} tokens are verified against a JWKS; set one of them",
                        self.algorithm
                    ));
                }
            }
            other => p.push(format!("auth.algorithm: {other:?} must be HS256, RS256 or ES256")),
        }
        if !self.jwks_file.as_os_str().is_empty() && !self.jwks_url.is_empty() {
            p.push("auth.jwks_file and auth.jwks_url: set one of them, not both".to_string());
        }
        if !self.jwks_file.as_os_str().is_empty() && !self.jwks_file.is_file() {
            p.push(format!(
                "auth.jwks_file: {} is not a readable file",
                self.jwks_file.display()
            ));
        }
        let url = &self.jwks_url;
        if !url.is_empty() {
            if production && !url.starts_with("https://") {
                p.push(format!(
                    "auth.jwks_url: {} must be an https:// URL in production mode",
                    crate::db::redact(url)
                ));
            } else if !(url.starts_with("https://") || url.starts_with("http://")) || url.parse::<http::Uri>().is_err()
            {
                p.push(format!(
                    "auth.jwks_url: {} is not an http(s) URL",
                    crate::db::redact(url)
                ));
            }
        }
        if !self.jwks_ca_file.as_os_str().is_empty() && !self.jwks_ca_file.is_file() {
            p.push(format!(
                "auth.jwks_ca_file: {} is not a readable file",
                self.jwks_ca_file.display()
            ));
        }
        if self.jwks_refresh_secs < 10 {
            p.push("auth.jwks_refresh_secs: must be at least 10".to_string());
        }
        if self.tenant_claim.is_empty() {
            p.push("auth.tenant_claim: must name a claim".to_string());
        }
        if self.roles_claim.is_empty() {
            p.push("auth.roles_claim: must name a claim".to_string());
        }
        if self.service_token_file.as_os_str().is_empty() {
            if production {
                p.push("auth.service_token_file: required in production mode: the services call each other with this token (tenant `*`, role `service`), issued by your identity provider".to_string());
            } else if matches!(self.algorithm.as_str(), "RS256" | "ES256") {
                p.push(format!(
                    "auth.service_token_file: required with auth.algorithm {}: the services cannot mint tokens the identity provider's keys verify",
                    self.algorithm
                ));
            }
        } else if !self.service_token_file.is_file() {
            p.push(format!(
                "auth.service_token_file: {} is not a readable file",
                self.service_token_file.display()
            ));
        }
        p
    }
}

/// TLS for the server and for the calls between the services. All paths
/// are PEM files; empty means off.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsSettings {
    /// The certificate (chain) this process presents, as a server and as a
    /// client of the other services.
    pub cert_file: PathBuf,
    /// The private key of `cert_file`.
    pub key_file: PathBuf,
    /// When set, clients must present a certificate signed by this CA
    /// (mutual TLS).
    pub client_ca_file: PathBuf,
    /// The CA that signed the other services' certificates: trusted for
    /// outbound calls.
    pub ca_file: PathBuf,
    /// The name outbound calls expect in the peer's certificate; empty means
    /// the host of the endpoint.
    pub server_name: String,
}

impl TlsSettings {
    /// Whether the server serves TLS and outbound calls use it.
    pub fn enabled(&self) -> bool {
        !self.cert_file.as_os_str().is_empty()
    }

    fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        let set = |f: &PathBuf| !f.as_os_str().is_empty();
        if set(&self.cert_file) != set(&self.key_file) {
            p.push("tls.cert_file and tls.key_file: set both or neither".to_string());
        }
        if set(&self.cert_file) && !set(&self.ca_file) {
            p.push(
                "tls.ca_file: required with tls.cert_file: the services call each other over TLS and trust this CA"
                    .to_string(),
            );
        }
        if !set(&self.cert_file) && (set(&self.client_ca_file) || set(&self.ca_file)) {
            p.push("tls.cert_file: required when tls.client_ca_file or tls.ca_file is set".to_string());
        }
        for (key, f) in [
            ("tls.cert_file", &self.cert_file),
            ("tls.key_file", &self.key_file),
            ("tls.client_ca_file", &self.client_ca_file),
            ("tls.ca_file", &self.ca_file),
        ] {
            if set(f) && !f.is_file() {
                p.push(format!("{key}: {} is not a readable file", f.display()));
            }
        }
        p
    }
}

/// Per-tenant rate limits, kept in memory by each process.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsSettings {
    /// Writes (every RPC but Get*, List*, BatchGet*, Watch* and Assess*)
    /// one tenant may make per second, per process; 0 turns the limit off.
    pub writes_per_second: u32,
    /// Writes one tenant may make at once above the steady rate.
    pub write_burst: u32,
}

impl Default for LimitsSettings {
    fn default() -> Self {
        Self {
            writes_per_second: 0,
            write_burst: 50,
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
    /// A second, plaintext listener serving only `grpc.health.v1` (for
    /// probes that cannot present a client certificate); empty means none.
    pub health_listen_addr: String,
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
            health_listen_addr: String::new(),
        }
    }
}

/// A service's database.
#[derive(Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseSettings {
    /// `postgres://...` or `sqlite://...`; empty means an SQLite file in
    /// `data_dir`.
    pub database_url: String,
    /// A file holding the database URL (with its password); when set, it
    /// replaces `database_url`.
    pub database_url_file: PathBuf,
    /// Connection pool size.
    pub max_connections: u32,
}

impl Default for DatabaseSettings {
    fn default() -> Self {
        Self {
            database_url: String::new(),
            database_url_file: PathBuf::new(),
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

/// Debug output of settings that hold a database URL: the password is
/// replaced by `***`.
macro_rules! debug_redacting_url {
    ($ty:ident { $($field:ident),* }) => {
        impl std::fmt::Debug for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_struct(stringify!($ty))
                    .field("database_url", &crate::db::redact(&self.database_url))
                    $(.field(stringify!($field), &self.$field))*
                    .finish()
            }
        }
    };
}

debug_redacting_url!(DatabaseSettings {
    database_url_file,
    max_connections
});
debug_redacting_url!(GoalSettings {
    database_url_file,
    max_connections,
    progress_endpoint,
    assessment_timeout_ms
});
debug_redacting_url!(ProgressSettings {
    database_url_file,
    max_connections,
    goal_endpoint,
    period_end_check_secs
});
debug_redacting_url!(RecognitionSettings {
    database_url_file,
    max_connections,
    progress_endpoint,
    goal_endpoint,
    kudos_daily_limit
});

/// The goal service's settings.
#[derive(Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GoalSettings {
    /// `postgres://...` or `sqlite://...`; empty means an SQLite file in
    /// `data_dir`.
    pub database_url: String,
    /// A file holding the database URL (with its password); when set, it
    /// replaces `database_url`.
    pub database_url_file: PathBuf,
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
            database_url_file: PathBuf::new(),
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
            database_url_file: self.database_url_file.clone(),
            max_connections: self.max_connections,
        }
    }
}

/// The progress service's settings.
#[derive(Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProgressSettings {
    /// `postgres://...` or `sqlite://...`; empty means an SQLite file in
    /// `data_dir`.
    pub database_url: String,
    /// A file holding the database URL (with its password); when set, it
    /// replaces `database_url`.
    pub database_url_file: PathBuf,
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
            database_url_file: PathBuf::new(),
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
            database_url_file: self.database_url_file.clone(),
            max_connections: self.max_connections,
        }
    }
}

/// The recognition service's settings.
#[derive(Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RecognitionSettings {
    /// `postgres://...` or `sqlite://...`; empty means an SQLite file in
    /// `data_dir`.
    pub database_url: String,
    /// A file holding the database URL (with its password); when set, it
    /// replaces `database_url`.
    pub database_url_file: PathBuf,
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
            database_url_file: PathBuf::new(),
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
            database_url_file: self.database_url_file.clone(),
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
    let mut settings: Settings = builder
        .build()
        .and_then(|c| c.try_deserialize())
        .map_err(|e| format!("invalid configuration: {e}"))?;
    let mut problems = settings.read_secret_files();
    problems.extend(settings.problems());
    if problems.is_empty() {
        Ok(settings)
    } else {
        Err(format!("invalid configuration:\n  - {}", problems.join("\n  - ")))
    }
}

/// Reads a secret from `path`, without the trailing newline editors and
/// `echo` add. The error names `key` and the path, never the content.
fn read_secret(key: &str, path: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{key}: cannot read {}: {e}", path.display()))?;
    let text = text.trim_end_matches(['\r', '\n']).to_string();
    if text.is_empty() {
        return Err(format!("{key}: {} is empty", path.display()));
    }
    Ok(text)
}

impl Settings {
    /// Replaces secrets given as files (`auth.hs256_secret_file`,
    /// `<service>.database_url_file`) by their content; returns what could
    /// not be read, each naming its key. [`load`] calls it; call it on
    /// settings built otherwise.
    pub fn read_secret_files(&mut self) -> Vec<String> {
        let mut p = Vec::new();
        if !self.auth.hs256_secret_file.as_os_str().is_empty() {
            match read_secret("auth.hs256_secret_file", &self.auth.hs256_secret_file) {
                Ok(secret) => self.auth.hs256_secret = SecretString::from(secret),
                Err(e) => p.push(e),
            }
        }
        for (key, file, url) in [
            (
                "goal.database_url_file",
                &self.goal.database_url_file,
                &mut self.goal.database_url,
            ),
            (
                "progress.database_url_file",
                &self.progress.database_url_file,
                &mut self.progress.database_url,
            ),
            (
                "recognition.database_url_file",
                &self.recognition.database_url_file,
                &mut self.recognition.database_url,
            ),
        ] {
            if !file.as_os_str().is_empty() {
                match read_secret(key, file) {
                    Ok(u) => *url = u,
                    Err(e) => p.push(e),
                }
            }
        }
        p
    }

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
        p.extend(self.auth.problems());
        p.extend(self.tls.problems());
        if self.limits.writes_per_second > 0 && self.limits.write_burst == 0 {
            p.push("limits.write_burst: must be at least 1 when limits.writes_per_second is set".to_string());
        }
        if self.grpc.max_message_bytes < 1024 {
            p.push("grpc.max_message_bytes: must be at least 1024".to_string());
        }
        if self.grpc.request_timeout_ms == 0 {
            p.push("grpc.request_timeout_ms: must be greater than zero".to_string());
        }
        if self.grpc.feed_heartbeat_ms == 0 || self.grpc.feed_poll_ms == 0 {
            p.push("grpc.feed_heartbeat_ms and grpc.feed_poll_ms: must be greater than zero".to_string());
        }
        let health = &self.grpc.health_listen_addr;
        if !health.is_empty() && health.parse::<std::net::SocketAddr>().is_err() {
            p.push(format!(
                "grpc.health_listen_addr: {health:?} is not a socket address such as 0.0.0.0:50052"
            ));
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
        if self.tls.enabled() {
            for (key, endpoint) in [
                ("goal.progress_endpoint", &self.goal.progress_endpoint),
                ("progress.goal_endpoint", &self.progress.goal_endpoint),
                ("recognition.goal_endpoint", &self.recognition.goal_endpoint),
                ("recognition.progress_endpoint", &self.recognition.progress_endpoint),
            ] {
                if !endpoint.is_empty() && !endpoint.starts_with("https://") {
                    p.push(format!(
                        "{key}: {endpoint:?} must be an https:// URL when tls.cert_file is set"
                    ));
                }
            }
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
        assert!(err.contains("auth.algorithm: HS256"), "{err}");
        std::fs::write(&path, "goal:\n  databse_url: x\n").expect("write");
        let err = load(Some(&path)).expect_err("unknown key");
        assert!(err.contains("databse_url"), "{err}");
    }

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("milestones-config-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        dir
    }

    /// Production mode refuses HS256 (and with it the built-in secret) and
    /// names every missing piece: a JWKS and the services' own token.
    #[test]
    fn production_needs_asymmetric_keys_and_a_service_token() {
        let mut s = Settings::default();
        s.auth.mode = "production".into();
        let p = s.problems().join("\n");
        assert!(p.contains("auth.algorithm: HS256"), "{p}");
        assert!(p.contains("auth.service_token_file: required"), "{p}");

        s.auth.algorithm = "RS256".into();
        let p = s.problems().join("\n");
        assert!(p.contains("auth.jwks_file or auth.jwks_url"), "{p}");

        let dir = temp_dir("prod");
        std::fs::write(dir.join("jwks.json"), "{}").expect("write");
        std::fs::write(dir.join("token"), "a.b.c").expect("write");
        s.auth.jwks_url = "http://idp.internal/jwks".into();
        s.auth.service_token_file = dir.join("token");
        let p = s.problems().join("\n");
        assert!(p.contains("auth.jwks_url") && p.contains("https://"), "{p}");
        s.auth.jwks_url = String::new();
        s.auth.jwks_file = dir.join("jwks.json");
        assert!(s.problems().is_empty(), "{:?}", s.problems());
        s.auth.algorithm = "none".into();
        assert!(s.problems().join("\n").contains("auth.algorithm: \"none\""));
    }

    /// Secrets come from files, without their trailing newline; a missing
    /// file names its key.
    #[test]
    fn secrets_come_from_files() {
        let dir = temp_dir("secrets");
        let secret = dir.join("hs256");
        std::fs::write(&secret, "from-a-file-from-a-file-from-a-file\n").expect("write");
        let db = dir.join("goal-db");
        std::fs::write(&db, "postgres://goal:pw@db/goal\n").expect("write");
        let path = dir.join("c.yaml");
        std::fs::write(
            &path,
            format!(
                "auth:\n  hs256_secret_file: {}\ngoal:\n  database_url_file: {}\nprogress:\n  database_url_file: {}\n",
                secret.display(),
                db.display(),
                dir.join("missing").display()
            ),
        )
        .expect("write");
        let err = load(Some(&path)).expect_err("missing file");
        assert!(err.contains("progress.database_url_file"), "{err}");
        assert!(!err.contains("pw@"), "{err}");
        let mut s = Settings::default();
        s.auth.hs256_secret_file = secret;
        s.goal.database_url_file = db;
        assert!(s.read_secret_files().is_empty());
        assert_eq!(
            s.auth.hs256_secret.expose_secret(),
            "from-a-file-from-a-file-from-a-file"
        );
        assert_eq!(s.goal.database_url, "postgres://goal:pw@db/goal");
    }

    /// Debug output of the settings shows no secret.
    #[test]
    fn debug_output_hides_secrets() {
        let mut s = Settings::default();
        s.auth.hs256_secret = SecretString::from("a-secret-that-must-not-show-up-anywhere".to_string());
        s.auth.jwks_url = "https://user:jwkspw@idp.example/jwks".into();
        s.goal.database_url = "postgres://goal:goalpw@db/goal".into();
        s.progress.database_url = "postgres://progress:progresspw@db/progress".into();
        s.recognition.database_url = "postgres://reco:recopw@db/reco".into();
        let shown = format!("{s:?}");
        for secret in ["a-secret-that", "jwkspw", "goalpw", "progresspw", "recopw"] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
        assert!(shown.contains("postgres://goal:***@db/goal"), "{shown}");
    }

    /// TLS keys come in pairs, with a CA for outbound calls, and endpoints
    /// must then be https.
    #[test]
    fn tls_settings_are_checked() {
        let dir = temp_dir("tls");
        let pem = dir.join("x.pem");
        std::fs::write(&pem, "x").expect("write");
        let mut s = Settings::default();
        s.tls.cert_file = pem.clone();
        let p = s.problems().join("\n");
        assert!(p.contains("tls.cert_file and tls.key_file"), "{p}");
        assert!(p.contains("tls.ca_file: required"), "{p}");
        s.tls.key_file = pem.clone();
        s.tls.ca_file = pem.clone();
        s.progress.goal_endpoint = "http://goal:50051".into();
        let p = s.problems().join("\n");
        assert!(p.contains("progress.goal_endpoint"), "{p}");
        s.progress.goal_endpoint = "https://goal:50051".into();
        assert!(s.problems().is_empty(), "{:?}", s.problems());
        s.tls.client_ca_file = dir.join("nope.pem");
        assert!(s.problems().join("\n").contains("tls.client_ca_file"));
    }
}
