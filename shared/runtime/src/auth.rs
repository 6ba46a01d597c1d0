//! Bearer-JWT authentication: who is calling, for which tenant, in which
//! roles. The tenant comes from the verified token only, never from a request
//! field.
//!
//! Development mode verifies HS256 tokens signed with a shared secret, which
//! `milestones token` mints. Production mode verifies RS256 or ES256 tokens
//! against the identity provider's JWKS ([`crate::jwks`]). Either way one
//! algorithm is pinned by `auth.algorithm`, and `exp`, `iss`, `aud` and `sub`
//! are required (`nbf` too for HS256; an RS256/ES256 token's `nbf` is checked
//! when present), with `auth.leeway_secs` of clock skew. The tenant and roles
//! come from the claims `auth.tenant_claim` and `auth.roles_claim`.
//!
//! Every refusal is UNAUTHENTICATED with one generic message; the precise
//! reason is logged (never the token). After verification the
//! [`Authenticator`] applies the per-tenant write limit ([`crate::limits`]).
//!
//! The suite's own services call each other with an all-tenants token
//! (tenant `*`, role `service`). When such a call acts in one tenant (an
//! assessment reading a member's history, a leaderboard for an award), it
//! names the tenant in the [`ACT_FOR_TENANT`] metadata, which is honoured for
//! such tokens only.

use std::collections::HashSet;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::future::BoxFuture;
use jsonwebtoken::{decode, decode_header, encode, Algorithm, DecodingKey, EncodingKey, Header, Validation};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tonic::metadata::MetadataMap;
use tonic::{Request, Status};

use crate::config::{LimitsSettings, Settings};
use crate::jwks::{HttpClient, JwksCache, JwksSource};
use crate::limits::{is_write, WriteLimiter};
use crate::ApiError;

/// The metadata key in which an all-tenants service token names the tenant
/// a call acts in.
pub const ACT_FOR_TENANT: &str = "x-milestones-tenant";

/// The `ErrorInfo.domain` of authentication failures.
const AUTH_DOMAIN: &str = "auth.milestones.dev";

/// What a caller may do. Roles come from the token's `roles` claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Administers the tenant: org tree, metrics, settings.
    Admin,
    /// Sets and reviews milestones.
    Manager,
    /// Sells; reads what concerns them.
    Rep,
    /// A system (CRM connector, another service of the suite).
    Service,
}

impl Role {
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "admin" => Some(Role::Admin),
            "manager" => Some(Role::Manager),
            "rep" => Some(Role::Rep),
            "service" => Some(Role::Service),
            _ => None,
        }
    }
}

/// The tenant claim of the suite's own services, which act for every tenant
/// (e.g. progress consuming goal's change feed). Only honoured together with
/// the `service` role.
pub const ALL_TENANTS: &str = "*";

/// The authenticated caller of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub tenant_id: String,
    pub subject: String,
    pub roles: HashSet<Role>,
}

impl Caller {
    pub fn has_any(&self, roles: &[Role]) -> bool {
        roles.iter().any(|r| self.roles.contains(r))
    }

    /// PERMISSION_DENIED unless the caller has one of `roles`.
    pub fn require_any(&self, roles: &[Role], action: &str) -> Result<(), ApiError> {
        if self.has_any(roles) {
            Ok(())
        } else {
            let names: Vec<String> = roles.iter().map(|r| format!("{r:?}").to_lowercase()).collect();
            Err(ApiError::permission_denied(format!(
                "{action} needs one of the roles: {}",
                names.join(", ")
            )))
        }
    }

    /// The tenant a feed read is scoped to: the caller's, or every tenant
    /// (`None`) for a suite service whose token says `*`.
    pub fn feed_scope(&self) -> Option<String> {
        if self.tenant_id == ALL_TENANTS && self.roles.contains(&Role::Service) {
            None
        } else {
            Some(self.tenant_id.clone())
        }
    }

    /// The caller of a request, if they hold one of `roles` for `action`.
    /// An all-tenants token acts in no tenant: it is accepted only when
    /// `action` is a cross-tenant feed (`feed_action`).
    pub fn authorize<T>(
        request: &Request<T>,
        roles: &[Role],
        action: &str,
        feed_action: &str,
    ) -> Result<Caller, ApiError> {
        let caller = Caller::of(request)?;
        caller.require_any(roles, action)?;
        if caller.tenant_id == ALL_TENANTS && action != feed_action {
            return Err(ApiError::permission_denied(format!(
                "{action} acts in one tenant; an all-tenants token may only watch feeds"
            )));
        }
        Ok(caller)
    }

    /// The caller of a request that went through the [`Authenticator`].
    pub fn of<T>(request: &Request<T>) -> Result<Caller, ApiError> {
        request
            .extensions()
            .get::<Caller>()
            .cloned()
            .ok_or_else(|| ApiError::Unauthenticated {
                detail: "no verified caller on the request".to_string(),
            })
    }
}

/// The claims of a token minted by [`mint_token`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub tenant: String,
    #[serde(default)]
    pub roles: Vec<String>,
    pub iss: String,
    pub aud: String,
    pub exp: u64,
    pub nbf: u64,
    pub iat: u64,
}

/// Token settings shared by the HS256 verifier and the minting command.
#[derive(Clone)]
pub struct AuthConfig {
    pub hs256_secret: SecretString,
    pub issuer: String,
    pub audience: String,
    pub leeway_secs: u64,
}

impl std::fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthConfig")
            .field("hs256_secret", &"[redacted]")
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("leeway_secs", &self.leeway_secs)
            .finish()
    }
}

/// The keys tokens are verified with.
enum Keys {
    /// One shared HS256 secret (development).
    Secret(DecodingKey),
    /// The identity provider's public keys.
    Jwks(Arc<JwksCache>),
}

struct Verifier {
    algorithm: Algorithm,
    keys: Keys,
    validation: Validation,
    tenant_claim: String,
    roles_claim: String,
    verified: VerifiedTokens,
}

/// Tokens kept after they were verified. A client sends the same token
/// with every call until it expires, and checking its signature and claims
/// again cost about a tenth of the server's time per unary call (perf,
/// 2026-11-29). An entry is used only while the token is unexpired, for at
/// most [`VERIFIED_FOR_SECS`], and with the key set it was verified with: a
/// JWKS refresh verifies every token again.
struct VerifiedTokens(std::sync::Mutex<lru::LruCache<String, Verified>>);

/// At most this many tokens are kept (a few hundred bytes each); beyond
/// that the least recently used is verified again when it comes back.
const VERIFIED_TOKENS: usize = 4_096;

/// How long a verified token is trusted without being checked again.
const VERIFIED_FOR_SECS: u64 = 60;

struct Verified {
    caller: Caller,
    /// Unix seconds: the earlier of the token's `exp` and the end of its
    /// [`VERIFIED_FOR_SECS`].
    until: u64,
    /// The JWKS generation it was verified with (0 for a shared secret).
    generation: u64,
}

impl VerifiedTokens {
    fn new() -> Self {
        let capacity = std::num::NonZeroUsize::MIN.saturating_add(VERIFIED_TOKENS - 1);
        Self(std::sync::Mutex::new(lru::LruCache::new(capacity)))
    }

    fn get(&self, token: &str, now: u64, generation: u64) -> Option<Caller> {
        let mut kept = self.0.lock().unwrap_or_else(|e| e.into_inner());
        match kept.get(token) {
            Some(v) if now < v.until && v.generation == generation => Some(v.caller.clone()),
            Some(_) => {
                kept.pop(token);
                None
            }
            None => None,
        }
    }

    fn put(&self, token: &str, caller: &Caller, exp: u64, now: u64, generation: u64) {
        let until = exp.min(now + VERIFIED_FOR_SECS);
        if until > now {
            self.0.lock().unwrap_or_else(|e| e.into_inner()).put(
                token.to_string(),
                Verified {
                    caller: caller.clone(),
                    until,
                    generation,
                },
            );
        }
    }
}

/// The RPC a request is for, put on every request by [`AuthLayer`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RpcMethod {
    /// The fully-qualified service, e.g. `milestones.goal.v1.GoalService`.
    pub service: String,
    /// The bare method, e.g. `CreateTeam`.
    pub method: String,
}

impl RpcMethod {
    /// The `ErrorInfo.domain` of the service, e.g. `goal.milestones.dev`.
    pub fn domain(&self) -> String {
        match self.service.split('.').nth(1) {
            Some(name) if self.service.starts_with("milestones.") => format!("{name}.milestones.dev"),
            _ => "milestones.dev".to_string(),
        }
    }
}

/// Verifies bearer tokens and turns them into a [`Caller`]; limits each
/// tenant's writes when configured.
#[derive(Clone)]
pub struct Authenticator {
    verifier: Arc<Verifier>,
    limiter: Option<Arc<WriteLimiter>>,
}

impl Authenticator {
    /// A development verifier of HS256 tokens signed with the configured
    /// secret, with the default claim names and no write limit.
    pub fn new(config: &AuthConfig) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_issuer(&[config.issuer.as_str()]);
        validation.set_audience(&[config.audience.as_str()]);
        validation.validate_nbf = true;
        validation.leeway = config.leeway_secs;
        validation.set_required_spec_claims(&["exp", "nbf", "aud", "iss", "sub"]);
        Self {
            verifier: Arc::new(Verifier {
                algorithm: Algorithm::HS256,
                keys: Keys::Secret(DecodingKey::from_secret(config.hs256_secret.expose_secret().as_bytes())),
                validation,
                tenant_claim: "tenant".to_string(),
                roles_claim: "roles".to_string(),
                verified: VerifiedTokens::new(),
            }),
            limiter: None,
        }
    }

    /// The verifier `settings` describe: the pinned algorithm, its keys
    /// (for a JWKS URL, fetched now and then refreshed in the background;
    /// the server starts even if the first fetch fails, refusing tokens
    /// until one succeeds), claim names, and the write limit.
    pub async fn from_settings(settings: &Settings) -> anyhow::Result<Self> {
        let auth = &settings.auth;
        let algorithm = match auth.algorithm.as_str() {
            "HS256" => Algorithm::HS256,
            "RS256" => Algorithm::RS256,
            "ES256" => Algorithm::ES256,
            other => anyhow::bail!("auth.algorithm: {other:?} must be HS256, RS256 or ES256"),
        };
        if algorithm == Algorithm::HS256 && auth.is_production() {
            anyhow::bail!("auth.algorithm: HS256 is for development only; production mode needs RS256 or ES256");
        }
        let mut validation = Validation::new(algorithm);
        validation.set_issuer(&[auth.issuer.as_str()]);
        validation.set_audience(&[auth.audience.as_str()]);
        validation.validate_nbf = true;
        validation.leeway = auth.leeway_secs;
        let keys = if algorithm == Algorithm::HS256 {
            validation.set_required_spec_claims(&["exp", "nbf", "aud", "iss", "sub"]);
            Keys::Secret(DecodingKey::from_secret(auth.hs256_secret.expose_secret().as_bytes()))
        } else {
            // Identity providers often leave `nbf` out of access tokens.
            validation.set_required_spec_claims(&["exp", "aud", "iss", "sub"]);
            let cache = if !auth.jwks_file.as_os_str().is_empty() {
                JwksCache::load_file(auth.jwks_file.clone(), algorithm)?
            } else if !auth.jwks_url.is_empty() {
                let extra_ca = (!auth.jwks_ca_file.as_os_str().is_empty()).then_some(auth.jwks_ca_file.as_path());
                let client = HttpClient::new(extra_ca)?;
                let cache = JwksCache::new(
                    JwksSource::Url {
                        url: auth.jwks_url.clone(),
                        client: Box::new(client),
                    },
                    algorithm,
                );
                if let Err(e) = cache.refresh().await {
                    tracing::warn!(
                        error = format!("{e:#}"),
                        "cannot read the JWKS at start: tokens are refused until it can be read"
                    );
                }
                cache
            } else {
                anyhow::bail!("auth.jwks_file or auth.jwks_url: {algorithm:?} needs a JWKS");
            };
            JwksCache::spawn_refresher(&cache, Duration::from_secs(auth.jwks_refresh_secs.max(10)));
            Keys::Jwks(cache)
        };
        Ok(Self {
            verifier: Arc::new(Verifier {
                algorithm,
                keys,
                validation,
                tenant_claim: auth.tenant_claim.clone(),
                roles_claim: auth.roles_claim.clone(),
                verified: VerifiedTokens::new(),
            }),
            limiter: None,
        }
        .with_write_limit(&settings.limits))
    }

    /// The same verifier, limiting each tenant's writes as `limits` say.
    pub fn with_write_limit(mut self, limits: &LimitsSettings) -> Self {
        self.limiter = WriteLimiter::from_settings(limits).map(Arc::new);
        self
    }

    /// The tower layer that must wrap the routes this authenticator guards:
    /// it names the RPC of each request, and reads the JWKS again when a
    /// token names a key it does not know yet.
    pub fn layer(&self) -> AuthLayer {
        AuthLayer {
            jwks: match &self.verifier.keys {
                Keys::Jwks(cache) => Some(cache.clone()),
                Keys::Secret(_) => None,
            },
        }
    }

    /// Verifies `token` and returns its caller, or why it was refused (for
    /// the log: it never contains the token).
    pub fn verify(&self, token: &str) -> Result<Caller, String> {
        let v = &*self.verifier;
        let generation = match &v.keys {
            Keys::Secret(_) => 0,
            Keys::Jwks(cache) => cache.generation(),
        };
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        if let Some(caller) = v.verified.get(token, now, generation) {
            return Ok(caller);
        }
        let (caller, exp) = self.verify_now(token)?;
        v.verified.put(token, &caller, exp, now, generation);
        Ok(caller)
    }

    /// Verifies `token` in full; returns its caller and `exp`.
    fn verify_now(&self, token: &str) -> Result<(Caller, u64), String> {
        let v = &*self.verifier;
        let header = decode_header(token).map_err(|e| format!("malformed token header: {e}"))?;
        if header.alg != v.algorithm {
            return Err(format!(
                "token signed with {:?}, but only {:?} is accepted",
                header.alg, v.algorithm
            ));
        }
        let key = match &v.keys {
            Keys::Secret(key) => key.clone(),
            Keys::Jwks(cache) => cache.key_for(header.kid.as_deref())?,
        };
        let data = decode::<Value>(token, &key, &v.validation).map_err(|e| format!("token rejected: {e}"))?;
        let claims = data.claims;
        let subject = match claims.get("sub") {
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            _ => return Err("token has no usable `sub` claim".to_string()),
        };
        let tenant = match claim(&claims, &v.tenant_claim) {
            Some(Value::String(t)) if !t.is_empty() && t.len() <= 64 => t.clone(),
            _ => return Err(format!("token has no usable tenant claim {:?}", v.tenant_claim)),
        };
        let names: Vec<&str> = match claim(&claims, &v.roles_claim) {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::String(s)) => s.split_whitespace().collect(),
            Some(Value::Array(items)) => items.iter().filter_map(Value::as_str).collect(),
            Some(_) => return Err(format!("the roles claim {:?} is not a list of strings", v.roles_claim)),
        };
        // Roles of other systems in the same claim are not ours: ignored.
        let roles: HashSet<Role> = names.into_iter().filter_map(Role::parse).collect();
        if tenant == ALL_TENANTS && (roles.len() != 1 || !roles.contains(&Role::Service)) {
            return Err("the all-tenants claim `*` is only for tokens whose one role is `service`".to_string());
        }
        // Required and checked by `decode`; a token without a usable one is
        // simply not kept.
        let exp = claims.get("exp").and_then(Value::as_u64).unwrap_or(0);
        Ok((
            Caller {
                tenant_id: tenant,
                subject,
                roles,
            },
            exp,
        ))
    }

    /// Authenticates a request: the interceptor placed in front of every
    /// service, so that no request without a valid token reaches a handler.
    /// Then takes one write from the caller's tenant's bucket, for writes.
    #[allow(clippy::result_large_err)]
    pub fn authenticate(&self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let method = request.extensions().get::<RpcMethod>().cloned();
        let header = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let token = header.as_deref().and_then(|h| {
            h.strip_prefix("Bearer ")
                .or_else(|| h.strip_prefix("bearer "))
                .map(str::trim)
        });
        let caller = match token {
            None => Err("missing `authorization: Bearer <jwt>` metadata".to_string()),
            Some(token) => self
                .verify(token)
                .and_then(|caller| act_for_tenant(caller, request.metadata())),
        };
        let caller = match caller {
            Ok(caller) => caller,
            Err(detail) => {
                let rpc = method.as_ref().map_or("", |m| m.method.as_str());
                let detail = format!("{rpc}: {detail}");
                return Err(ApiError::Unauthenticated { detail }.into_status(AUTH_DOMAIN));
            }
        };
        if let Some(limiter) = &self.limiter {
            // A request that did not come through the layer is counted as a
            // write: unknown means limited.
            if method.as_ref().is_none_or(|m| is_write(&m.method)) {
                if let Err(wait) = limiter.check(&caller.tenant_id) {
                    tracing::info!(
                        tenant = %caller.tenant_id,
                        rpc = method.as_ref().map_or("", |m| m.method.as_str()),
                        retry_after_ms = wait.as_millis() as u64,
                        "write refused: tenant over its rate limit"
                    );
                    let domain = method.map_or_else(|| "milestones.dev".to_string(), |m| m.domain());
                    return Err(limiter.status(&domain, wait));
                }
            }
        }
        request.extensions_mut().insert(caller);
        Ok(request)
    }
}

/// A claim by name, or by JSON pointer when `name` starts with `/`.
fn claim<'a>(claims: &'a Value, name: &str) -> Option<&'a Value> {
    if name.starts_with('/') {
        claims.pointer(name)
    } else {
        claims.get(name)
    }
}

/// An all-tenants service caller acting in the tenant named by the
/// [`ACT_FOR_TENANT`] metadata; any other caller as it is (the metadata is
/// ignored).
fn act_for_tenant(mut caller: Caller, metadata: &MetadataMap) -> Result<Caller, String> {
    if caller.tenant_id != ALL_TENANTS {
        return Ok(caller);
    }
    match metadata.get(ACT_FOR_TENANT).map(|v| v.to_str()) {
        None => Ok(caller),
        Some(Ok(t)) if !t.is_empty() && t.len() <= 64 && t != ALL_TENANTS => {
            caller.tenant_id = t.to_string();
            Ok(caller)
        }
        Some(_) => Err(format!("{ACT_FOR_TENANT} does not name a tenant")),
    }
}

/// The tower layer of [`Authenticator::layer`].
#[derive(Clone, Default)]
pub struct AuthLayer {
    jwks: Option<Arc<JwksCache>>,
}

impl<S> tower::Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AuthService {
            inner,
            jwks: self.jwks.clone(),
        }
    }
}

/// The service [`AuthLayer`] wraps around the routes.
#[derive(Clone)]
pub struct AuthService<S> {
    inner: S,
    jwks: Option<Arc<JwksCache>>,
}

/// How long a request waits for the JWKS to be read again.
const KID_REFRESH_WAIT: Duration = Duration::from_secs(5);

impl<S, B> tower::Service<http::Request<B>> for AuthService<S>
where
    S: tower::Service<http::Request<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let path = req.uri().path().trim_start_matches('/');
        if path.starts_with("grpc.") {
            return Box::pin(inner.call(req));
        }
        if let Some((service, method)) = path.split_once('/') {
            let rpc = RpcMethod {
                service: service.to_string(),
                method: method.to_string(),
            };
            req.extensions_mut().insert(rpc);
        }
        let unknown_kid = self.jwks.as_ref().and_then(|cache| {
            let token = req
                .headers()
                .get(http::header::AUTHORIZATION)?
                .to_str()
                .ok()?
                .strip_prefix("Bearer ")?;
            let kid = decode_header(token.trim()).ok()?.kid?;
            (kid.len() <= 256 && !cache.has_kid(&kid)).then(|| (cache.clone(), kid))
        });
        Box::pin(async move {
            if let Some((cache, kid)) = unknown_kid {
                let _ = tokio::time::timeout(KID_REFRESH_WAIT, cache.refresh_for_kid(&kid)).await;
            }
            inner.call(req).await
        })
    }
}

/// Mints a development token (HS256) for `tenant`, `subject` and `roles`,
/// valid for `ttl`.
pub fn mint_token(
    config: &AuthConfig,
    tenant: &str,
    subject: &str,
    roles: &[Role],
    ttl: Duration,
) -> anyhow::Result<String> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let claims = Claims {
        sub: subject.to_string(),
        tenant: tenant.to_string(),
        roles: roles.iter().map(|r| format!("{r:?}").to_lowercase()).collect(),
        iss: config.issuer.clone(),
        aud: config.audience.clone(),
        exp: now + ttl.as_secs(),
        nbf: now.saturating_sub(1),
        iat: now,
    };
    let token = encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(config.hs256_secret.expose_secret().as_bytes()),
    )?;
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(secret: &str) -> AuthConfig {
        AuthConfig {
            hs256_secret: SecretString::from(secret.to_string()),
            issuer: "milestones".into(),
            audience: "milestones".into(),
            leeway_secs: 5,
        }
    }

    /// A minted token verifies and carries tenant, subject and roles.
    #[test]
    fn minted_token_verifies() {
        let c = config("s3cret-s3cret-s3cret-s3cret-s3cret");
        let token = mint_token(&c, "acme", "ada", &[Role::Admin], Duration::from_secs(60)).expect("mint");
        let auth = Authenticator::new(&c);
        let caller = auth.verify(&token).expect("verifies");
        assert_eq!(auth.verify(&token).expect("verifies again"), caller);
        assert_eq!(caller.tenant_id, "acme");
        assert_eq!(caller.subject, "ada");
        assert!(caller.roles.contains(&Role::Admin));
    }

    /// Tokens signed with another key, for another audience, or with
    /// `alg: none` are refused.
    #[test]
    fn forged_tokens_are_refused() {
        let c = config("s3cret-s3cret-s3cret-s3cret-s3cret");
        let auth = Authenticator::new(&c);
        let other = mint_token(
            &config("another-key-another-key-another"),
            "acme",
            "ada",
            &[Role::Admin],
            Duration::from_secs(60),
        )
        .expect("mint");
        // A refused token is not kept: refused again.
        for _ in 0..2 {
            assert!(auth.verify(&other).is_err());
        }
        let mut wrong_aud = c.clone();
        wrong_aud.audience = "someone-else".into();
        let t = mint_token(&wrong_aud, "acme", "ada", &[], Duration::from_secs(60)).expect("mint");
        assert!(auth.verify(&t).is_err());
        // alg: none with a valid-looking payload.
        let valid = mint_token(&c, "acme", "ada", &[Role::Admin], Duration::from_secs(60)).expect("mint");
        let payload = valid.split('.').nth(1).expect("payload");
        let none = format!("eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{payload}.");
        assert!(auth.verify(&none).is_err());
    }

    // === RS256 / ES256 against a JWKS ===

    use jsonwebtoken::jwk::{Jwk, JwkSet};
    use serde_json::json;

    const RS256_DER: &[u8] = include_bytes!("../../../tests/fixtures/jwt/rs256-private.der");
    const RS256_OTHER_DER: &[u8] = include_bytes!("../../../tests/fixtures/jwt/rs256-other-private.der");
    const ES256_DER: &[u8] = include_bytes!("../../../tests/fixtures/jwt/es256-private.p8.der");

    fn now() -> i64 {
        SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_secs() as i64
    }

    fn rs_key() -> EncodingKey {
        EncodingKey::from_rsa_der(RS256_DER)
    }

    fn es_key() -> EncodingKey {
        EncodingKey::from_ec_der(ES256_DER)
    }

    /// The public JWK of `key` under `kid`.
    fn jwk(key: &EncodingKey, alg: Algorithm, kid: &str) -> Jwk {
        let mut jwk = Jwk::from_encoding_key(key, alg).expect("jwk");
        jwk.common.key_id = Some(kid.to_string());
        jwk
    }

    fn sign(alg: Algorithm, key: &EncodingKey, kid: Option<&str>, claims: &Value) -> String {
        let mut header = Header::new(alg);
        header.kid = kid.map(str::to_string);
        encode(&header, claims, key).expect("sign")
    }

    /// Valid claims for tenant acme, subject ada, role admin.
    fn claims() -> Value {
        let now = now();
        json!({
            "iss": "https://idp.example.com", "aud": "milestones", "sub": "ada",
            "tenant": "acme", "roles": ["admin"],
            "iat": now, "nbf": now - 5, "exp": now + 600,
        })
    }

    fn with(mut claims: Value, key: &str, value: Value) -> Value {
        claims[key] = value;
        claims
    }

    /// A temp dir of its own for one test.
    fn temp_dir(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("milestones-auth-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        dir
    }

    /// Settings verifying `alg` tokens against a JWKS file holding `keys`.
    fn jwks_settings(name: &str, alg: &str, keys: Vec<Jwk>) -> Settings {
        let path = temp_dir(name).join("jwks.json");
        std::fs::write(&path, serde_json::to_vec(&JwkSet { keys }).expect("json")).expect("write jwks");
        let mut settings = Settings::default();
        settings.auth.algorithm = alg.to_string();
        settings.auth.jwks_file = path;
        settings.auth.issuer = "https://idp.example.com".to_string();
        settings.auth.leeway_secs = 30;
        settings
    }

    async fn rs256_auth(name: &str) -> Authenticator {
        let s = jwks_settings(
            name,
            "RS256",
            vec![
                jwk(&rs_key(), Algorithm::RS256, "rsa-1"),
                jwk(&es_key(), Algorithm::ES256, "ec-1"),
            ],
        );
        Authenticator::from_settings(&s).await.expect("authenticator")
    }

    /// RS256 and ES256 tokens verify against the JWKS file, each with its
    /// algorithm pinned, and yield tenant, subject and roles.
    #[tokio::test]
    async fn rs256_and_es256_tokens_verify_against_a_jwks_file() {
        let rs = rs256_auth("rs-ok").await;
        let caller = rs
            .verify(&sign(Algorithm::RS256, &rs_key(), Some("rsa-1"), &claims()))
            .expect("RS256 verifies");
        assert_eq!(caller.tenant_id, "acme");
        assert_eq!(caller.subject, "ada");
        assert_eq!(caller.roles, HashSet::from([Role::Admin]));

        let es_settings = jwks_settings(
            "es-ok",
            "ES256",
            vec![
                jwk(&es_key(), Algorithm::ES256, "ec-1"),
                jwk(&rs_key(), Algorithm::RS256, "rsa-1"),
            ],
        );
        let es = Authenticator::from_settings(&es_settings).await.expect("authenticator");
        let caller = es
            .verify(&sign(Algorithm::ES256, &es_key(), Some("ec-1"), &claims()))
            .expect("ES256 verifies");
        assert_eq!(caller.tenant_id, "acme");
        // The pinned algorithm decides: an RS256 token is refused by the
        // ES256 verifier even though its key is in the set.
        let err = es
            .verify(&sign(Algorithm::RS256, &rs_key(), Some("rsa-1"), &claims()))
            .expect_err("RS256 refused when ES256 is pinned");
        assert!(err.contains("only ES256"), "{err}");
        // No `nbf`: accepted (identity providers often leave it out).
        let mut no_nbf = claims();
        no_nbf.as_object_mut().expect("object").remove("nbf");
        rs.verify(&sign(Algorithm::RS256, &rs_key(), Some("rsa-1"), &no_nbf))
            .expect("no nbf is fine");
    }

    /// Each attack or mistake is refused, with a reason for the log.
    #[tokio::test]
    async fn bad_rs256_tokens_are_refused_with_their_reason() {
        let auth = rs256_auth("rs-bad").await;
        let now = now();
        let rs = |claims: Value| sign(Algorithm::RS256, &rs_key(), Some("rsa-1"), &claims);
        let good = rs(claims());
        let payload = good.split('.').nth(1).expect("payload").to_string();
        let cases: Vec<(&str, String, &str)> = vec![
            (
                "expired",
                rs(with(claims(), "exp", json!(now - 120))),
                "ExpiredSignature",
            ),
            (
                "nbf beyond the leeway",
                rs(with(claims(), "nbf", json!(now + 120))),
                "ImmatureSignature",
            ),
            (
                "wrong iss",
                rs(with(claims(), "iss", json!("https://evil.example"))),
                "InvalidIssuer",
            ),
            (
                "wrong aud",
                rs(with(claims(), "aud", json!("another-system"))),
                "InvalidAudience",
            ),
            (
                "unknown kid",
                sign(Algorithm::RS256, &rs_key(), Some("rsa-9"), &claims()),
                "no RS256 key with kid",
            ),
            (
                "signed by another key under a known kid",
                sign(
                    Algorithm::RS256,
                    &EncodingKey::from_rsa_der(RS256_OTHER_DER),
                    Some("rsa-1"),
                    &claims(),
                ),
                "InvalidSignature",
            ),
            (
                "alg none",
                format!("eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{payload}."),
                "malformed token header",
            ),
            (
                "HS256 when RS256 is pinned",
                sign(
                    Algorithm::HS256,
                    &EncodingKey::from_secret(b"whatever-secret-whatever-secret!"),
                    Some("rsa-1"),
                    &claims(),
                ),
                "only RS256",
            ),
            (
                // The key-confusion attack: HMAC keyed with the public key.
                "HS256 keyed with the RSA public key",
                sign(Algorithm::HS256, &EncodingKey::from_secret(RS256_DER), None, &claims()),
                "only RS256",
            ),
            (
                "tampered payload",
                {
                    let evil = base64::Engine::encode(
                        &base64::engine::general_purpose::URL_SAFE_NO_PAD,
                        serde_json::to_vec(&with(claims(), "tenant", json!("globex"))).expect("json"),
                    );
                    let parts: Vec<&str> = good.split('.').collect();
                    format!("{}.{evil}.{}", parts[0], parts[2])
                },
                "InvalidSignature",
            ),
            ("no tenant", rs(with(claims(), "tenant", Value::Null)), "tenant claim"),
            ("no sub", rs(with(claims(), "sub", json!(""))), "sub"),
            (
                "missing aud",
                {
                    let mut c = claims();
                    c.as_object_mut().expect("object").remove("aud");
                    rs(c)
                },
                "aud",
            ),
            ("garbage", "not.a.jwt".to_string(), "malformed"),
        ];
        for (what, token, reason) in cases {
            let err = auth.verify(&token).expect_err(what);
            assert!(err.contains(reason), "{what}: {err}");
            assert!(!err.contains(&token), "{what}: the token is never in the reason");
        }
        // nbf within the leeway is fine.
        auth.verify(&rs(with(claims(), "nbf", json!(now + 10))))
            .expect("within leeway");
    }

    /// The tenant and roles come from the configured claims, by name or by
    /// JSON pointer; roles may be a space-separated string; roles of other
    /// systems are ignored.
    #[tokio::test]
    async fn custom_claim_names() {
        let mut s = jwks_settings("claims", "RS256", vec![jwk(&rs_key(), Algorithm::RS256, "rsa-1")]);
        s.auth.tenant_claim = "https://milestones.example/org".to_string();
        s.auth.roles_claim = "/realm_access/roles".to_string();
        let auth = Authenticator::from_settings(&s).await.expect("authenticator");
        let mut c = claims();
        c["https://milestones.example/org"] = json!("initech");
        c["realm_access"] = json!({"roles": ["manager", "offline_access"]});
        c["tenant"] = json!("acme");
        c["roles"] = json!(["admin"]);
        let caller = auth
            .verify(&sign(Algorithm::RS256, &rs_key(), Some("rsa-1"), &c))
            .expect("verifies");
        assert_eq!(caller.tenant_id, "initech", "the configured claim, not `tenant`");
        assert_eq!(caller.roles, HashSet::from([Role::Manager]));

        s.auth.roles_claim = "scope".to_string();
        let auth = Authenticator::from_settings(&s).await.expect("authenticator");
        c["scope"] = json!("openid rep service");
        let caller = auth
            .verify(&sign(Algorithm::RS256, &rs_key(), Some("rsa-1"), &c))
            .expect("verifies");
        assert_eq!(caller.roles, HashSet::from([Role::Rep, Role::Service]));
        // The default claim is no longer read.
        c.as_object_mut()
            .expect("object")
            .remove("https://milestones.example/org");
        assert!(auth
            .verify(&sign(Algorithm::RS256, &rs_key(), Some("rsa-1"), &c))
            .is_err());
    }

    /// A rotated key (a kid not in the set) is found by reading the JWKS
    /// again, at most once per interval however many unknown kids arrive.
    #[tokio::test]
    async fn an_unknown_kid_reloads_the_jwks_once_per_interval() {
        let s = jwks_settings("rotate", "RS256", vec![jwk(&rs_key(), Algorithm::RS256, "rsa-1")]);
        let auth = Authenticator::from_settings(&s).await.expect("authenticator");
        let Keys::Jwks(cache) = &auth.verifier.keys else {
            panic!("a JWKS verifier")
        };
        let other = EncodingKey::from_rsa_der(RS256_OTHER_DER);
        let rotated = sign(Algorithm::RS256, &other, Some("rsa-2"), &claims());
        assert!(auth.verify(&rotated).is_err());
        let set = JwkSet {
            keys: vec![
                jwk(&rs_key(), Algorithm::RS256, "rsa-1"),
                jwk(&other, Algorithm::RS256, "rsa-2"),
            ],
        };
        std::fs::write(&s.auth.jwks_file, serde_json::to_vec(&set).expect("json")).expect("rotate");
        cache.refresh_for_kid("rsa-2").await;
        auth.verify(&rotated).expect("the rotated key is known now");
        // Verified once, then kept.
        let with_first_key = sign(Algorithm::RS256, &rs_key(), Some("rsa-1"), &claims());
        auth.verify(&with_first_key).expect("rsa-1 is still in the set");

        // Another rotation right after: not read again until the interval
        // has passed (or the periodic refresh runs).
        let set = JwkSet {
            keys: vec![jwk(&other, Algorithm::RS256, "rsa-3")],
        };
        std::fs::write(&s.auth.jwks_file, serde_json::to_vec(&set).expect("json")).expect("rotate");
        cache.refresh_for_kid("rsa-3").await;
        assert!(!cache.has_kid("rsa-3"), "rate-limited");
        cache.refresh().await.expect("periodic refresh");
        assert!(cache.has_kid("rsa-3"));
        assert!(!cache.has_kid("rsa-1"), "a key removed from the set is gone");
        let err = auth
            .verify(&with_first_key)
            .expect_err("a kept token is checked again against the new set");
        assert!(err.contains("rsa-1"), "{err}");
    }

    /// A kept token is trusted only while it is unexpired, for at most
    /// `VERIFIED_FOR_SECS`, and with the key set it was verified with.
    #[test]
    fn verified_tokens_are_kept_within_bounds() {
        let kept = VerifiedTokens::new();
        let caller = Caller {
            tenant_id: "acme".into(),
            subject: "ada".into(),
            roles: HashSet::from([Role::Rep]),
        };
        let now = 1_000_000;
        kept.put("t-long", &caller, now + 3_600, now, 7);
        assert_eq!(kept.get("t-long", now + 1, 7), Some(caller.clone()));
        assert_eq!(kept.get("t-long", now + 1, 8), None, "another key set");
        kept.put("t-long", &caller, now + 3_600, now, 7);
        assert_eq!(
            kept.get("t-long", now + VERIFIED_FOR_SECS, 7),
            None,
            "checked again after a minute"
        );
        kept.put("t-short", &caller, now + 5, now, 7);
        assert_eq!(kept.get("t-short", now + 4, 7), Some(caller.clone()));
        assert_eq!(kept.get("t-short", now + 5, 7), None, "expired");
        kept.put("t-expired", &caller, now, now, 7);
        assert_eq!(kept.get("t-expired", now, 7), None, "never kept");
        assert_eq!(kept.get("unknown", now, 7), None);
    }

    /// A JWKS without a key for the pinned algorithm is refused at start.
    #[tokio::test]
    async fn a_jwks_without_a_usable_key_is_refused() {
        let s = jwks_settings("unusable", "ES256", vec![jwk(&rs_key(), Algorithm::RS256, "rsa-1")]);
        let err = Authenticator::from_settings(&s).await.err().expect("refused");
        assert!(format!("{err:#}").contains("no ES256 signing key"), "{err:#}");
    }

    // === The interceptor ===

    fn request(token: Option<&str>, method: Option<&str>) -> Request<()> {
        let mut req = Request::new(());
        if let Some(t) = token {
            req.metadata_mut()
                .insert("authorization", format!("Bearer {t}").parse().expect("ascii"));
        }
        if let Some(m) = method {
            req.extensions_mut().insert(RpcMethod {
                service: "milestones.goal.v1.GoalService".to_string(),
                method: m.to_string(),
            });
        }
        req
    }

    /// A refusal tells the caller nothing specific: one generic message and
    /// reason, whatever went wrong.
    #[test]
    fn refusals_are_generic() {
        let c = config("s3cret-s3cret-s3cret-s3cret-s3cret");
        let auth = Authenticator::new(&c);
        let expired = {
            let now = now();
            let claims = json!({"sub": "ada", "tenant": "acme", "roles": ["admin"], "iss": "milestones",
                "aud": "milestones", "exp": now - 600, "nbf": now - 700, "iat": now - 700});
            sign(
                Algorithm::HS256,
                &EncodingKey::from_secret(b"s3cret-s3cret-s3cret-s3cret-s3cret"),
                None,
                &claims,
            )
        };
        let mut messages = HashSet::new();
        for token in [None, Some("garbage"), Some(expired.as_str())] {
            let status = auth
                .authenticate(request(token, Some("ListTeams")))
                .expect_err("refused");
            assert_eq!(status.code(), tonic::Code::Unauthenticated);
            if let Some(t) = token {
                assert!(!status.message().contains(t));
            }
            assert!(!status.message().contains("Expired"), "{}", status.message());
            messages.insert(status.message().to_string());
        }
        assert_eq!(messages.len(), 1, "{messages:?}");
    }

    /// Only an all-tenants service token may act in a tenant named by
    /// metadata; others keep their own tenant.
    #[test]
    fn acting_for_a_tenant_is_for_all_tenants_service_tokens() {
        let c = config("s3cret-s3cret-s3cret-s3cret-s3cret");
        let auth = Authenticator::new(&c);
        let service = mint_token(
            &c,
            ALL_TENANTS,
            "progress-service",
            &[Role::Service],
            Duration::from_secs(60),
        )
        .expect("mint");
        let mut req = request(Some(&service), Some("GetLeaderboard"));
        req.metadata_mut()
            .insert(ACT_FOR_TENANT, "acme".parse().expect("ascii"));
        let req = auth.authenticate(req).expect("authenticated");
        let caller = Caller::of(&req).expect("caller");
        assert_eq!(caller.tenant_id, "acme");
        assert_eq!(caller.roles, HashSet::from([Role::Service]));

        let admin = mint_token(&c, "globex", "eve", &[Role::Admin], Duration::from_secs(60)).expect("mint");
        let mut req = request(Some(&admin), Some("ListTeams"));
        req.metadata_mut()
            .insert(ACT_FOR_TENANT, "acme".parse().expect("ascii"));
        let req = auth.authenticate(req).expect("authenticated");
        assert_eq!(Caller::of(&req).expect("caller").tenant_id, "globex", "ignored");

        let mut req = request(Some(&service), Some("ListTeams"));
        req.metadata_mut().insert(ACT_FOR_TENANT, "*".parse().expect("ascii"));
        assert!(auth.authenticate(req).is_err());
    }

    /// Over the limit, a tenant's writes get RESOURCE_EXHAUSTED with
    /// RetryInfo; its reads and other tenants' writes go on.
    #[test]
    fn writes_are_rate_limited_per_tenant() {
        use tonic_types::StatusExt;
        let c = config("s3cret-s3cret-s3cret-s3cret-s3cret");
        let auth = Authenticator::new(&c).with_write_limit(&LimitsSettings {
            writes_per_second: 1,
            write_burst: 2,
        });
        let acme = mint_token(&c, "acme", "ada", &[Role::Admin], Duration::from_secs(60)).expect("mint");
        let globex = mint_token(&c, "globex", "eve", &[Role::Admin], Duration::from_secs(60)).expect("mint");
        for _ in 0..2 {
            auth.authenticate(request(Some(&acme), Some("CreateTeam")))
                .expect("within the burst");
        }
        let status = auth
            .authenticate(request(Some(&acme), Some("CreateTeam")))
            .expect_err("over the limit");
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        let details = status.get_error_details();
        let delay = details.retry_info().and_then(|r| r.retry_delay).expect("retry delay");
        assert!(delay > Duration::ZERO && delay <= Duration::from_secs(1), "{delay:?}");
        assert_eq!(details.error_info().expect("info").domain, "goal.milestones.dev");
        auth.authenticate(request(Some(&acme), Some("ListTeams")))
            .expect("reads go on");
        auth.authenticate(request(Some(&globex), Some("CreateTeam")))
            .expect("other tenant");
        // Not knowing the method means being counted as a write.
        assert!(auth.authenticate(request(Some(&acme), None)).is_err());
    }

    /// Serves `body` over HTTP on an ephemeral port, counting requests.
    async fn jwks_server(
        body: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    ) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = hits.clone();
        tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                let mut buf = [0u8; 4096];
                let _ = sock.read(&mut buf).await;
                counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let body = body.lock().expect("body").clone();
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                );
                let _ = sock.write_all(head.as_bytes()).await;
                let _ = sock.write_all(&body).await;
            }
        });
        (format!("http://{addr}/.well-known/jwks.json"), hits)
    }

    /// A JWKS URL is fetched at start and again for a rotated key.
    #[tokio::test]
    async fn a_jwks_url_is_fetched_and_refetched_for_a_new_kid() {
        let set = |keys: Vec<Jwk>| serde_json::to_vec(&JwkSet { keys }).expect("json");
        let body = std::sync::Arc::new(std::sync::Mutex::new(set(vec![jwk(
            &rs_key(),
            Algorithm::RS256,
            "rsa-1",
        )])));
        let (url, hits) = jwks_server(body.clone()).await;
        let mut s = Settings::default();
        s.auth.algorithm = "RS256".into();
        s.auth.jwks_url = url;
        s.auth.issuer = "https://idp.example.com".into();
        let auth = Authenticator::from_settings(&s).await.expect("authenticator");
        assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 1);
        auth.verify(&sign(Algorithm::RS256, &rs_key(), Some("rsa-1"), &claims()))
            .expect("verifies with the fetched key");

        let other = EncodingKey::from_rsa_der(RS256_OTHER_DER);
        *body.lock().expect("body") = set(vec![
            jwk(&rs_key(), Algorithm::RS256, "rsa-1"),
            jwk(&other, Algorithm::RS256, "rsa-2"),
        ]);
        let Keys::Jwks(cache) = &auth.verifier.keys else {
            panic!("a JWKS verifier")
        };
        cache.refresh_for_kid("rsa-2").await;
        assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 2);
        auth.verify(&sign(Algorithm::RS256, &other, Some("rsa-2"), &claims()))
            .expect("the rotated key was fetched");
    }
}
