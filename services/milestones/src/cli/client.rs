//! Reaching the suite: the connection flags every client command shares,
//! the bearer token (given, or minted for development), the three clients,
//! and the tenant's calendar for "this quarter" defaults.

use std::future::Future;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use chrono::{NaiveDate, Utc};
use clap::Args;
use milestones_api::goal as g;
use milestones_api::goal::goal_service_client::GoalServiceClient;
use milestones_api::progress::progress_service_client::ProgressServiceClient;
use milestones_api::recognition::recognition_service_client::RecognitionServiceClient;
use milestones_domain::calendar::{DateRange, FiscalCalendar, FiscalPeriod};
use milestones_domain::tenant::{parse_time_zone, TenantSettings};
use milestones_runtime::auth::{mint_token, Role};
use milestones_runtime::config::Settings;
use milestones_runtime::tls::{read_identity, read_pem_certs};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::service::Interceptor;
use tonic::transport::{Certificate, Channel, ClientTlsConfig};
use tonic::{Code, Status};

use super::errors::{cause_chain, explain, refuse, unreachable};

/// How a client command reaches the suite and who it acts as.
#[derive(Args, Debug, Clone)]
pub struct ClientArgs {
    /// The server's address.
    #[arg(
        long,
        global = true,
        env = "MILESTONES_ENDPOINT",
        default_value = "http://127.0.0.1:50051"
    )]
    pub endpoint: String,
    /// The bearer token to call with (see `milestones token`). Without one,
    /// and with `auth.mode` development, a short-lived admin token for
    /// --tenant is minted with the configured secret.
    #[arg(long, global = true, env = "MILESTONES_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// The tenant to act in when no token is given (a token carries its
    /// own tenant).
    #[arg(long, global = true, env = "MILESTONES_TENANT", default_value = "demo")]
    pub tenant: String,
    /// The CA certificate (PEM) that signed the server's certificate:
    /// required for an https:// endpoint.
    #[arg(long, global = true, env = "MILESTONES_CA_CERT")]
    pub ca_cert: Option<PathBuf>,
    /// The certificate (PEM) to present when the server demands one
    /// (mutual TLS), with --client-key.
    #[arg(long, global = true, env = "MILESTONES_CLIENT_CERT", requires = "client_key")]
    pub client_cert: Option<PathBuf>,
    /// The private key (PEM) of --client-cert.
    #[arg(long, global = true, env = "MILESTONES_CLIENT_KEY", requires = "client_cert")]
    pub client_key: Option<PathBuf>,
    /// The name to expect in the server's certificate when it is not the
    /// endpoint's host (e.g. connecting through a port-forward).
    #[arg(long, global = true, env = "MILESTONES_TLS_SERVER_NAME")]
    pub tls_server_name: Option<String>,
}

impl ClientArgs {
    /// The TLS configuration for an https:// endpoint, `None` for http://.
    fn tls(&self) -> anyhow::Result<Option<ClientTlsConfig>> {
        if !self.endpoint.starts_with("https://") {
            if self.ca_cert.is_some() || self.client_cert.is_some() {
                return Err(refuse(
                    "--endpoint",
                    format!(
                        "{} is plaintext, but TLS files were given: use an https:// endpoint",
                        self.endpoint
                    ),
                ));
            }
            return Ok(None);
        }
        // The runtime's checks start with the flag they are about; the
        // refusal names it once.
        let refused = |flags: &[&str], e: anyhow::Error| {
            let text = format!("{e:#}");
            for flag in flags {
                if let Some(rest) = text.strip_prefix(&format!("{flag}: ")) {
                    return refuse(flag, rest);
                }
            }
            refuse(flags[0], text)
        };
        let Some(ca) = &self.ca_cert else {
            return Err(refuse(
                "--ca-cert",
                "is required for an https:// endpoint: pass the CA certificate that signed the server's (or set MILESTONES_CA_CERT)",
            ));
        };
        let ca = read_pem_certs(ca, "--ca-cert").map_err(|e| refused(&["--ca-cert"], e))?;
        let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca));
        if let (Some(cert), Some(key)) = (&self.client_cert, &self.client_key) {
            let identity = read_identity(cert, "--client-cert", key, "--client-key")
                .map_err(|e| refused(&["--client-cert", "--client-key"], e))?;
            tls = tls.identity(identity);
        }
        if let Some(name) = &self.tls_server_name {
            tls = tls.domain_name(name.clone());
        }
        Ok(Some(tls))
    }
}

/// Puts the bearer token on every call.
#[derive(Clone)]
pub struct Bearer(MetadataValue<Ascii>);

impl Bearer {
    pub fn new(token: &str) -> anyhow::Result<Self> {
        let value = format!("Bearer {}", token.trim()).parse().map_err(|_| {
            refuse(
                "--token",
                "contains characters that cannot be sent; paste the token again",
            )
        })?;
        Ok(Bearer(value))
    }
}

impl Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        req.metadata_mut().insert("authorization", self.0.clone());
        Ok(req)
    }
}

pub type Goal = GoalServiceClient<InterceptedService<Channel, Bearer>>;
pub type Progress = ProgressServiceClient<InterceptedService<Channel, Bearer>>;
pub type Recognition = RecognitionServiceClient<InterceptedService<Channel, Bearer>>;

/// The three services, called with one token.
#[derive(Clone)]
pub struct Conn {
    pub channel: Channel,
    pub goal: Goal,
    pub progress: Progress,
    pub recognition: Recognition,
}

impl Conn {
    /// The same channel with another token (e.g. a member's, for kudos).
    pub fn with_token(&self, token: &str) -> anyhow::Result<Conn> {
        Ok(Conn::over_channel(self.channel.clone(), Bearer::new(token)?))
    }

    /// The three clients over `channel`, calling with `bearer`.
    pub fn over_channel(channel: Channel, bearer: Bearer) -> Conn {
        Conn {
            goal: GoalServiceClient::with_interceptor(channel.clone(), bearer.clone()),
            progress: ProgressServiceClient::with_interceptor(channel.clone(), bearer.clone()),
            recognition: RecognitionServiceClient::with_interceptor(channel.clone(), bearer),
            channel,
        }
    }
}

/// Opens a channel to `endpoint` (over TLS with `tls`), failing fast with
/// what to check.
pub async fn channel(endpoint: &str, tls: Option<ClientTlsConfig>) -> anyhow::Result<Channel> {
    let mut channel = Channel::from_shared(endpoint.to_string()).map_err(|e| {
        refuse(
            "--endpoint",
            format!("{endpoint:?} is not a URL such as http://127.0.0.1:50051 ({e})"),
        )
    })?;
    if let Some(tls) = tls {
        channel = channel
            .tls_config(tls)
            .map_err(|e| refuse("--ca-cert", format!("cannot set up TLS: {e}")))?;
    }
    channel
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .map_err(|e| {
            // The transport error's own text is only "transport error"; the
            // cause (refused, certificate, handshake) is in its sources.
            let tls_hint = if endpoint.starts_with("https://") {
                " For https, --ca-cert must be the CA that signed its certificate (and with mutual TLS, \
                 --client-cert one signed by a CA it trusts)."
            } else {
                ""
            };
            unreachable(format!(
                "cannot reach {endpoint}: {}; is `milestones server` running? (set --endpoint or MILESTONES_ENDPOINT){tls_hint}",
                cause_chain(&e)
            ))
        })
}

/// Refuses to mint a token the suite would not accept: only HS256
/// (development) tokens are minted here, so with RS256 or ES256 (always in
/// production) tokens come from the identity provider. `field` is what the
/// refusal names.
pub fn refuse_unless_minted_tokens_verify(settings: &Settings, field: &str) -> anyhow::Result<()> {
    if settings.auth.algorithm == "HS256" && !settings.auth.is_production() {
        return Ok(());
    }
    Err(refuse(
        field,
        format!(
            "the suite verifies {} tokens from your identity provider (auth.mode {}), and only HS256 development \
             tokens can be minted here: get a token from the provider and pass it with --token or MILESTONES_TOKEN",
            settings.auth.algorithm, settings.auth.mode
        ),
    ))
}

/// Mints a development token for `tenant`.
pub fn dev_token(settings: &Settings, tenant: &str, subject: &str, roles: &[Role]) -> anyhow::Result<String> {
    refuse_unless_minted_tokens_verify(settings, "--token")?;
    mint_token(
        &settings.auth.to_config(),
        tenant,
        subject,
        roles,
        Duration::from_secs(12 * 3600),
    )
}

/// The token to call with: `--token`/MILESTONES_TOKEN, or in development
/// a minted admin token for `--tenant`.
pub fn token(args: &ClientArgs, settings: &Settings) -> anyhow::Result<String> {
    match &args.token {
        Some(t) if !t.trim().is_empty() => Ok(t.trim().to_string()),
        _ if settings.auth.mode == "development" => dev_token(settings, &args.tenant, "cli", &[Role::Admin]),
        _ => Err(refuse(
            "--token",
            "is required outside development mode: pass --token or set MILESTONES_TOKEN",
        )),
    }
}

/// Connects with the caller's token.
pub async fn connect(args: &ClientArgs, settings: &Settings) -> anyhow::Result<Conn> {
    let token = token(args, settings)?;
    let bearer = Bearer::new(&token)?;
    Ok(Conn::over_channel(channel(&args.endpoint, args.tls()?).await?, bearer))
}

/// The tenant a token acts in, read from its verified claims (so only a
/// token this configuration could have minted).
pub fn tenant_of(token: &str, settings: &Settings) -> anyhow::Result<String> {
    let auth = milestones_runtime::auth::Authenticator::new(&settings.auth.to_config());
    auth.verify(token)
        .map(|caller| caller.tenant_id)
        .map_err(|e| refuse("--token", format!("{e}; mint a new one with `milestones token`")))
}

/// Runs `call` until it stops answering NOT_FOUND, for up to 10 seconds.
///
/// Progress and recognition learn about what goal creates from its change
/// feed a moment later; callers use this only after checking with goal that
/// the resource exists, so a NOT_FOUND here is that lag.
pub async fn settle<T, F, Fut>(call: F) -> Result<T, Status>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Status>>,
{
    settle_on(&[Code::NotFound], call).await
}

/// As [`settle`], retrying on any of `codes`.
pub async fn settle_on<T, F, Fut>(codes: &[Code], mut call: F) -> Result<T, Status>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Status>>,
{
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match call().await {
            Err(s) if codes.contains(&s.code()) && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(150)).await;
            }
            other => return other,
        }
    }
}

/// The tenant's time zone and fiscal calendar.
pub struct Calendar {
    settings: TenantSettings,
}

impl Calendar {
    pub async fn load(goal: &mut Goal) -> anyhow::Result<Calendar> {
        let s = goal
            .get_tenant_settings(g::GetTenantSettingsRequest {})
            .await
            .map_err(explain)?
            .into_inner();
        let mut settings = TenantSettings::default();
        if let Ok(tz) = parse_time_zone(&s.time_zone) {
            settings.time_zone = tz;
        }
        if let Some(c) = u32::try_from(s.fiscal_year_start_month)
            .ok()
            .and_then(FiscalCalendar::new)
        {
            settings.calendar = c;
        }
        Ok(Calendar { settings })
    }

    pub fn today(&self) -> NaiveDate {
        self.settings.today(Utc::now())
    }

    /// The fiscal quarter containing today, e.g. `FY2026-Q4`.
    pub fn this_quarter(&self) -> String {
        self.settings.calendar.quarter_of(self.today()).name()
    }

    /// The dates of a fiscal period name.
    pub fn range(&self, period: &str, flag: &str) -> anyhow::Result<DateRange> {
        let p = FiscalPeriod::parse(period).map_err(|e| refuse(flag, e))?;
        Ok(self.settings.calendar.range(&p))
    }

    /// The share of `range` elapsed by today, in basis points (the linear
    /// pace), and the day numbers it is based on.
    pub fn pace(&self, start: NaiveDate, end: NaiveDate) -> (i64, i64, i64) {
        let total = (end - start).num_days() + 1;
        let elapsed = ((self.today() - start).num_days() + 1).clamp(0, total.max(0));
        let pace = if total > 0 { elapsed * 10_000 / total } else { 0 };
        (pace, elapsed, total)
    }
}
