//! How a service of the suite calls the others (progress reading goal's
//! change feed, goal asking progress for history, recognition reading both):
//! over TLS with this process's client certificate when `tls.cert_file` is
//! set, and with a bearer token of its own.
//!
//! The token is the one in `auth.service_token_file` (issued by the identity
//! provider with tenant `*` and role `service`, mounted by the platform, and
//! read again whenever the file changes); without that file, development
//! mode mints one with the HS256 secret. A call that acts in one tenant
//! names it in the [`ACT_FOR_TENANT`] metadata.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use anyhow::Context;
use tonic::metadata::{Ascii, MetadataMap, MetadataValue};
use tonic::service::Interceptor;
use tonic::transport::{ClientTlsConfig, Endpoint};
use tonic::{Request, Status};

use crate::auth::{mint_token, AuthConfig, Role, ACT_FOR_TENANT, ALL_TENANTS};
use crate::config::Settings;

/// How long a minted development service token is valid.
const MINTED_TTL: Duration = Duration::from_secs(3600);

/// This process's identity towards the other services. Cheap to clone.
#[derive(Clone)]
pub struct ServiceIdentity {
    inner: Arc<Inner>,
}

struct Inner {
    tls: Option<ClientTlsConfig>,
    token: TokenSource,
}

enum TokenSource {
    /// Development: minted per call with the HS256 secret.
    Mint(AuthConfig),
    /// The platform's token file, cached until it changes.
    File {
        path: PathBuf,
        cached: Mutex<Option<FileToken>>,
    },
}

struct FileToken {
    modified: Option<SystemTime>,
    len: u64,
    header: MetadataValue<Ascii>,
}

impl std::fmt::Debug for ServiceIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secret or the token.
        let token = match &self.inner.token {
            TokenSource::Mint(_) => "minted (development)".to_string(),
            TokenSource::File { path, .. } => format!("file {}", path.display()),
        };
        f.debug_struct("ServiceIdentity")
            .field("tls", &self.inner.tls.is_some())
            .field("token", &token)
            .finish()
    }
}

impl ServiceIdentity {
    /// The identity `settings` describe: TLS client configuration from the
    /// `tls` section, the token from `auth.service_token_file` or, in
    /// development mode only, minted.
    pub fn from_settings(settings: &Settings) -> anyhow::Result<Self> {
        let tls = crate::tls::client_config(&settings.tls)?;
        let token = if !settings.auth.service_token_file.as_os_str().is_empty() {
            TokenSource::File {
                path: settings.auth.service_token_file.clone(),
                cached: Mutex::new(None),
            }
        } else if settings.auth.is_production() || settings.auth.algorithm != "HS256" {
            anyhow::bail!(
                "auth.service_token_file: required in production mode and with RS256/ES256 (the services' own token)"
            );
        } else {
            TokenSource::Mint(settings.auth.to_config())
        };
        let identity = Self {
            inner: Arc::new(Inner { tls, token }),
        };
        // Fail at start, not at the first call, if the file is unusable.
        identity.authorization("startup-check")?;
        Ok(identity)
    }

    /// A development identity: plaintext, tokens minted with `auth`.
    pub fn development(auth: AuthConfig) -> Self {
        Self {
            inner: Arc::new(Inner {
                tls: None,
                token: TokenSource::Mint(auth),
            }),
        }
    }

    /// Whether outbound calls use TLS (and so https endpoints).
    pub fn tls_enabled(&self) -> bool {
        self.inner.tls.is_some()
    }

    /// An endpoint for `url`, with this identity's TLS configuration. An
    /// `http://` URL stays plaintext even then (configuration refuses such
    /// endpoints when TLS is on).
    pub fn endpoint(&self, url: &str) -> anyhow::Result<Endpoint> {
        let endpoint = Endpoint::from_shared(url.to_string()).with_context(|| format!("{url:?} is not a URL"))?;
        Ok(match &self.inner.tls {
            Some(tls) if url.starts_with("https://") => endpoint
                .tls_config(tls.clone())
                .context("cannot use the TLS configuration")?,
            _ => endpoint,
        })
    }

    /// The `authorization` value to send; `subject` names this service in
    /// minted tokens.
    fn authorization(&self, subject: &str) -> anyhow::Result<MetadataValue<Ascii>> {
        match &self.inner.token {
            TokenSource::Mint(auth) => {
                let token = mint_token(auth, ALL_TENANTS, subject, &[Role::Service], MINTED_TTL)?;
                Ok(format!("Bearer {token}").parse()?)
            }
            TokenSource::File { path, cached } => {
                let meta = std::fs::metadata(path)
                    .with_context(|| format!("auth.service_token_file: cannot read {}", path.display()))?;
                let (modified, len) = (meta.modified().ok(), meta.len());
                let mut cached = cached.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(c) = cached.as_ref() {
                    if c.modified == modified && c.len == len && modified.is_some() {
                        return Ok(c.header.clone());
                    }
                }
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("auth.service_token_file: cannot read {}", path.display()))?;
                let token = text.trim();
                if token.is_empty() {
                    anyhow::bail!("auth.service_token_file: {} is empty", path.display());
                }
                let header: MetadataValue<Ascii> = format!("Bearer {token}")
                    .parse()
                    .with_context(|| format!("auth.service_token_file: {} is not a token", path.display()))?;
                tracing::info!(path = %path.display(), "service token read");
                *cached = Some(FileToken {
                    modified,
                    len,
                    header: header.clone(),
                });
                Ok(header)
            }
        }
    }

    /// Adds this service's credentials to `metadata`, acting in `tenant`
    /// when given (all tenants otherwise, as feeds do).
    pub fn authorize(&self, metadata: &mut MetadataMap, subject: &str, tenant: Option<&str>) -> anyhow::Result<()> {
        metadata.insert("authorization", self.authorization(subject)?);
        if let Some(t) = tenant {
            metadata.insert(ACT_FOR_TENANT, t.parse().context("a tenant id that is not ASCII")?);
        }
        Ok(())
    }

    /// An interceptor adding this service's credentials (and the trace
    /// context) to every call; see [`ServiceIdentity::authorize`].
    pub fn interceptor(&self, subject: &str, tenant: Option<&str>) -> anyhow::Result<ServiceBearer> {
        // Checked now, so a broken token source fails at connect.
        self.authorization(subject)?;
        Ok(ServiceBearer {
            identity: self.clone(),
            subject: subject.to_string(),
            tenant: tenant
                .map(|t| t.parse().context("a tenant id that is not ASCII"))
                .transpose()?,
        })
    }
}

/// Adds a service's credentials to every call.
#[derive(Clone)]
pub struct ServiceBearer {
    identity: ServiceIdentity,
    subject: String,
    tenant: Option<MetadataValue<Ascii>>,
}

impl Interceptor for ServiceBearer {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        let header = self.identity.authorization(&self.subject).map_err(|e| {
            tracing::warn!(error = format!("{e:#}"), "no service token for an outbound call");
            Status::unauthenticated("this service has no usable token of its own")
        })?;
        req.metadata_mut().insert("authorization", header);
        if let Some(t) = &self.tenant {
            req.metadata_mut().insert(ACT_FOR_TENANT, t.clone());
        }
        crate::telemetry::inject(req.metadata_mut());
        Ok(req)
    }
}
