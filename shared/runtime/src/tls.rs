//! TLS for the server and for the calls between the services (rustls with
//! the ring provider, through tonic).
//!
//! With `tls.cert_file` and `tls.key_file` the server serves TLS only; with
//! `tls.client_ca_file` too, it also demands a client certificate signed by
//! that CA (mutual TLS) and refuses the handshake otherwise. Outbound calls
//! (feeds, history, leaderboards) then use https, trust `tls.ca_file`, and
//! present the same certificate as their client identity.

use std::path::Path;

use anyhow::Context;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

use crate::config::TlsSettings;

/// How long a TLS handshake may take before the connection is dropped.
const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

fn read(path: &Path, key: &str) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("{key}: cannot read {}", path.display()))
}

/// The certificates in `pem`, read from `path`: at least one.
fn certs_in(pem: &[u8], path: &Path, key: &str) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("{key}: {} is not PEM", path.display()))?;
    if certs.is_empty() {
        anyhow::bail!("{key}: {} holds no certificate", path.display());
    }
    Ok(certs)
}

/// The PEM certificates in `path`, at least one.
pub fn read_certs(path: &Path, key: &str) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    certs_in(&read(path, key)?, path, key)
}

/// The PEM file at `path`, checked to hold at least one certificate, for
/// tonic's `Certificate::from_pem`.
pub fn read_pem_certs(path: &Path, key: &str) -> anyhow::Result<Vec<u8>> {
    let pem = read(path, key)?;
    certs_in(&pem, path, key)?;
    Ok(pem)
}

/// A certificate (chain) and its private key, both PEM, checked.
/// `cert_key` and `key_key` name the two settings (or flags) in errors.
pub fn read_identity(cert: &Path, cert_key: &str, key: &Path, key_key: &str) -> anyhow::Result<Identity> {
    let cert_pem = read_pem_certs(cert, cert_key)?;
    let key_pem = read(key, key_key)?;
    rustls_pki_types::PrivateKeyDer::from_pem_slice(&key_pem)
        .with_context(|| format!("{key_key}: {} holds no PEM private key", key.display()))?;
    Ok(Identity::from_pem(cert_pem, key_pem))
}

/// This process's certificate and key.
fn identity(tls: &TlsSettings) -> anyhow::Result<Identity> {
    read_identity(&tls.cert_file, "tls.cert_file", &tls.key_file, "tls.key_file")
}

/// The server's TLS configuration, or `None` when TLS is off.
pub fn server_config(tls: &TlsSettings) -> anyhow::Result<Option<ServerTlsConfig>> {
    if !tls.enabled() {
        return Ok(None);
    }
    let mut config = ServerTlsConfig::new()
        .identity(identity(tls)?)
        .timeout(HANDSHAKE_TIMEOUT);
    if !tls.client_ca_file.as_os_str().is_empty() {
        config = config.client_ca_root(Certificate::from_pem(read_pem_certs(
            &tls.client_ca_file,
            "tls.client_ca_file",
        )?));
    }
    Ok(Some(config))
}

/// The TLS configuration of outbound calls, or `None` when TLS is off.
pub fn client_config(tls: &TlsSettings) -> anyhow::Result<Option<ClientTlsConfig>> {
    if !tls.enabled() {
        return Ok(None);
    }
    let mut config = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read_pem_certs(&tls.ca_file, "tls.ca_file")?))
        .identity(identity(tls)?)
        .timeout(HANDSHAKE_TIMEOUT);
    if !tls.server_name.is_empty() {
        config = config.domain_name(tls.server_name.clone());
    }
    Ok(Some(config))
}
