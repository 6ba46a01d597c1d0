//! The public keys production tokens are verified against: a JWKS (RFC
//! 7517) read from a file or fetched from a URL.
//!
//! The set is read at start, again every `auth.jwks_refresh_secs`, and again
//! when a token names a `kid` the set does not have (a key rotation), at most
//! once per [`KID_MISS_REFRESH_INTERVAL`], so tokens with made-up key ids
//! cannot make the server hammer the identity provider. A failed refresh
//! keeps the keys it had. Only keys for the pinned algorithm are kept (RSA
//! for RS256, P-256 for ES256; none marked `use: enc` or with another `alg`);
//! the `jku`, `jwk` and `x5u` headers of tokens are never followed.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Duration;

use anyhow::Context;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use tokio::time::Instant;

/// The least time between two refreshes caused by unknown key ids.
pub const KID_MISS_REFRESH_INTERVAL: Duration = Duration::from_secs(10);

/// The largest JWKS document read.
const MAX_JWKS_BYTES: usize = 1024 * 1024;

/// How long a JWKS fetch may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// Where the JWKS comes from.
#[derive(Clone)]
pub enum JwksSource {
    File(PathBuf),
    Url { url: String, client: Box<HttpClient> },
}

impl std::fmt::Debug for JwksSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JwksSource::File(p) => write!(f, "file {}", p.display()),
            JwksSource::Url { url, .. } => write!(f, "url {}", crate::db::redact(url)),
        }
    }
}

/// The usable keys of one JWKS.
#[derive(Default)]
struct KeySet {
    by_kid: HashMap<String, DecodingKey>,
    /// Keys without a `kid`: used only for tokens without one.
    anonymous: Vec<DecodingKey>,
}

/// A JWKS kept fresh. Cheap to share behind an `Arc`.
pub struct JwksCache {
    source: JwksSource,
    algorithm: Algorithm,
    keys: RwLock<Arc<KeySet>>,
    /// When a kid-miss refresh last ran.
    last_miss_refresh: Mutex<Option<Instant>>,
    /// One refresh at a time.
    refreshing: tokio::sync::Mutex<()>,
    /// Bumped each time a key set is installed: tokens verified with an
    /// earlier set are verified again (a key may have been withdrawn).
    generation: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for JwksCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwksCache")
            .field("source", &self.source)
            .field("algorithm", &self.algorithm)
            .finish_non_exhaustive()
    }
}

impl JwksCache {
    /// A cache of `source`'s keys for `algorithm` (RS256 or ES256), empty
    /// until [`JwksCache::refresh`] runs.
    pub fn new(source: JwksSource, algorithm: Algorithm) -> Arc<Self> {
        Arc::new(Self {
            source,
            algorithm,
            keys: RwLock::new(Arc::new(KeySet::default())),
            last_miss_refresh: Mutex::new(None),
            refreshing: tokio::sync::Mutex::new(()),
            generation: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// Reads a JWKS file now, failing if it has no usable key.
    pub fn load_file(path: PathBuf, algorithm: Algorithm) -> anyhow::Result<Arc<Self>> {
        let cache = Self::new(JwksSource::File(path.clone()), algorithm);
        let text = std::fs::read(&path).with_context(|| format!("cannot read auth.jwks_file {}", path.display()))?;
        let set = parse(&text, algorithm).with_context(|| format!("auth.jwks_file {}", path.display()))?;
        cache.install(set);
        Ok(cache)
    }

    /// The key to verify a token whose header names `kid`.
    pub fn key_for(&self, kid: Option<&str>) -> Result<DecodingKey, String> {
        let keys = self.current();
        match kid {
            Some(kid) => keys
                .by_kid
                .get(kid)
                .cloned()
                .ok_or_else(|| format!("no {:?} key with kid {kid:?} in the JWKS", self.algorithm)),
            None => match (keys.anonymous.as_slice(), keys.by_kid.len()) {
                ([only], _) => Ok(only.clone()),
                ([], 1) => Ok(keys.by_kid.values().next().cloned().expect("one key")),
                _ => Err("the token names no kid and the JWKS has more than one key".to_string()),
            },
        }
    }

    /// Whether the set has a key with this `kid`.
    pub fn has_kid(&self, kid: &str) -> bool {
        self.current().by_kid.contains_key(kid)
    }

    fn current(&self) -> Arc<KeySet> {
        self.keys.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn install(&self, set: KeySet) {
        *self.keys.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(set);
        self.generation.fetch_add(1, std::sync::atomic::Ordering::Release);
    }

    /// Which key set is installed: changes with every refresh.
    pub fn generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Reads the JWKS again; on failure keeps the keys it had.
    pub async fn refresh(&self) -> anyhow::Result<()> {
        let _one = self.refreshing.lock().await;
        self.refresh_locked().await
    }

    async fn refresh_locked(&self) -> anyhow::Result<()> {
        let bytes = match &self.source {
            JwksSource::File(path) => tokio::fs::read(path)
                .await
                .with_context(|| format!("cannot read {}", path.display()))?,
            JwksSource::Url { url, client } => client.get(url).await?,
        };
        let set = parse(&bytes, self.algorithm)?;
        tracing::debug!(source = ?self.source, keys = set.by_kid.len() + set.anonymous.len(), "JWKS loaded");
        self.install(set);
        Ok(())
    }

    /// Makes sure a key named `kid` is known if the source has it: reads the
    /// set again unless it has the key, or a miss refreshed it less than
    /// [`KID_MISS_REFRESH_INTERVAL`] ago.
    pub async fn refresh_for_kid(&self, kid: &str) {
        if self.has_kid(kid) {
            return;
        }
        let _one = self.refreshing.lock().await;
        if self.has_kid(kid) {
            return;
        }
        {
            let mut last = self.last_miss_refresh.lock().unwrap_or_else(|e| e.into_inner());
            if last.is_some_and(|t| t.elapsed() < KID_MISS_REFRESH_INTERVAL) {
                return;
            }
            *last = Some(Instant::now());
        }
        tracing::info!(source = ?self.source, kid, "token names an unknown kid: reading the JWKS again");
        if let Err(e) = self.refresh_locked().await {
            tracing::warn!(source = ?self.source, error = format!("{e:#}"), "JWKS refresh failed; keeping the keys it had");
        }
    }

    /// Refreshes `cache` every `every` until the cache is dropped.
    pub fn spawn_refresher(cache: &Arc<Self>, every: Duration) {
        let weak: Weak<Self> = Arc::downgrade(cache);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval_at(Instant::now() + every, every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(cache) = weak.upgrade() else { return };
                if let Err(e) = cache.refresh().await {
                    tracing::warn!(source = ?cache.source, error = format!("{e:#}"), "JWKS refresh failed; keeping the keys it had");
                }
            }
        });
    }
}

/// The keys of a JWKS document usable with `algorithm`.
fn parse(bytes: &[u8], algorithm: Algorithm) -> anyhow::Result<KeySet> {
    let doc: serde_json::Value = serde_json::from_slice(bytes).context("the JWKS is not JSON")?;
    let entries = doc
        .get("keys")
        .and_then(|k| k.as_array())
        .context("the JWKS has no `keys` array")?;
    let mut set = KeySet::default();
    for entry in entries {
        // Keys of kinds this library does not know are skipped, not fatal:
        // identity providers publish encryption keys in the same set.
        let Ok(jwk) = serde_json::from_value::<Jwk>(entry.clone()) else {
            continue;
        };
        if !usable(&jwk, algorithm) {
            continue;
        }
        let Ok(key) = DecodingKey::from_jwk(&jwk) else {
            continue;
        };
        match jwk.common.key_id {
            Some(kid) => {
                set.by_kid.insert(kid, key);
            }
            None => set.anonymous.push(key),
        }
    }
    if set.by_kid.is_empty() && set.anonymous.is_empty() {
        anyhow::bail!("the JWKS has no {algorithm:?} signing key");
    }
    Ok(set)
}

fn usable(jwk: &Jwk, algorithm: Algorithm) -> bool {
    if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
        return false;
    }
    let (family_ok, wanted) = match (algorithm, &jwk.algorithm) {
        (Algorithm::RS256, AlgorithmParameters::RSA(_)) => (true, KeyAlgorithm::RS256),
        (Algorithm::ES256, AlgorithmParameters::EllipticCurve(p)) => {
            (p.curve == EllipticCurve::P256, KeyAlgorithm::ES256)
        }
        _ => return false,
    };
    family_ok && jwk.common.key_algorithm.is_none_or(|a| a == wanted)
}

/// A small HTTPS (and, for development, HTTP) client for JWKS documents.
#[derive(Clone)]
pub struct HttpClient {
    client: hyper_util::client::legacy::Client<
        hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
        http_body_util::Empty<hyper::body::Bytes>,
    >,
}

impl HttpClient {
    /// A client trusting the Mozilla root CAs and, if given, the PEM
    /// certificates in `extra_ca_file` (a private identity provider's CA).
    pub fn new(extra_ca_file: Option<&std::path::Path>) -> anyhow::Result<Self> {
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        if let Some(path) = extra_ca_file {
            for cert in crate::tls::read_certs(path, "auth.jwks_ca_file")? {
                roots
                    .add(cert)
                    .context("auth.jwks_ca_file: not a usable CA certificate")?;
            }
        }
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .context("TLS protocol versions")?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(config)
            .https_or_http()
            .enable_http1()
            .build();
        let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build(connector);
        Ok(Self { client })
    }

    /// GETs `url`, expecting 200 and at most 1 MiB.
    pub async fn get(&self, url: &str) -> anyhow::Result<Vec<u8>> {
        use http_body_util::BodyExt;
        let shown = crate::db::redact(url);
        let request = http::Request::get(url)
            .header(http::header::ACCEPT, "application/json")
            .body(http_body_util::Empty::new())
            .with_context(|| format!("{shown} is not a URL"))?;
        let fetch = async {
            let response = self
                .client
                .request(request)
                .await
                .with_context(|| format!("cannot reach {shown}"))?;
            let status = response.status();
            if !status.is_success() {
                anyhow::bail!("{shown} answered HTTP {status}");
            }
            let body = http_body_util::Limited::new(response.into_body(), MAX_JWKS_BYTES)
                .collect()
                .await
                .map_err(|e| anyhow::anyhow!("cannot read the JWKS from {shown}: {e}"))?;
            Ok(body.to_bytes().to_vec())
        };
        tokio::time::timeout(FETCH_TIMEOUT, fetch)
            .await
            .map_err(|_| anyhow::anyhow!("{shown} did not answer within {FETCH_TIMEOUT:?}"))?
    }
}
