//! Bearer-JWT authentication: who is calling, for which tenant, in which
//! roles. The tenant comes from the verified token only, never from a request
//! field.
//!
//! Development mode verifies HS256 tokens signed with a shared secret, which
//! `milestones token` mints. The verifier pins the algorithm and requires
//! `exp`, `nbf`, `iss`, `aud` and `sub`.

use std::collections::HashSet;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{decode, encode, Algorithm, DecodingKey, EncodingKey, Header, Validation};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use tonic::{Request, Status};

use crate::ApiError;

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

/// The claims of a suite token.
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

/// Token settings shared by the verifier and the minting command.
#[derive(Clone)]
pub struct AuthConfig {
    pub hs256_secret: SecretString,
    pub issuer: String,
    pub audience: String,
    pub leeway_secs: u64,
}

/// Verifies bearer tokens and turns them into a [`Caller`].
#[derive(Clone)]
pub struct Authenticator {
    key: DecodingKey,
    validation: Validation,
}

impl Authenticator {
    pub fn new(config: &AuthConfig) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_issuer(&[config.issuer.as_str()]);
        validation.set_audience(&[config.audience.as_str()]);
        validation.validate_nbf = true;
        validation.leeway = config.leeway_secs;
        validation.set_required_spec_claims(&["exp", "nbf", "aud", "iss", "sub"]);
        Self {
            key: DecodingKey::from_secret(config.hs256_secret.expose_secret().as_bytes()),
            validation,
        }
    }

    /// Verifies `token` and returns its caller, or why it was refused.
    pub fn verify(&self, token: &str) -> Result<Caller, String> {
        let data = decode::<Claims>(token, &self.key, &self.validation).map_err(|e| format!("token rejected: {e}"))?;
        let claims = data.claims;
        if claims.tenant.is_empty() || claims.tenant.len() > 64 {
            return Err("token has no usable tenant claim".to_string());
        }
        if claims.sub.is_empty() {
            return Err("token has an empty subject".to_string());
        }
        let mut roles = HashSet::new();
        for r in &claims.roles {
            match Role::parse(r) {
                Some(role) => {
                    roles.insert(role);
                }
                None => return Err(format!("token has an unknown role {r:?}")),
            }
        }
        if claims.tenant == ALL_TENANTS && (roles.len() != 1 || !roles.contains(&Role::Service)) {
            return Err("the all-tenants claim `*` is only for tokens whose one role is `service`".to_string());
        }
        Ok(Caller {
            tenant_id: claims.tenant,
            subject: claims.sub,
            roles,
        })
    }

    /// Authenticates a request: the interceptor placed in front of every
    /// service, so that no request without a valid token reaches a handler.
    #[allow(clippy::result_large_err)]
    pub fn authenticate(&self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let header = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let caller = match header.as_deref().and_then(|h| h.strip_prefix("Bearer ")) {
            None => Err("missing `authorization: Bearer <jwt>` metadata".to_string()),
            Some(token) => self.verify(token.trim()),
        };
        match caller {
            Ok(caller) => {
                request.extensions_mut().insert(caller);
                Ok(request)
            }
            Err(detail) => Err(ApiError::Unauthenticated { detail }.into_status("auth.milestones.dev")),
        }
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
        let caller = Authenticator::new(&c).verify(&token).expect("verifies");
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
        assert!(auth.verify(&other).is_err());
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
}
