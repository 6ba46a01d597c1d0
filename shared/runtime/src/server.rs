//! The gRPC server every service runs in: health, reflection, TLS, limits
//! and a graceful, bounded shutdown.
//!
//! Limits: every call has a server-side deadline (`grpc.request_timeout_ms`;
//! the client's shorter `grpc-timeout` wins) and every service's messages
//! are capped at `grpc.max_message_bytes` both ways (each service's
//! `add_to` sets it); the write rate per tenant is the authenticator's.
//!
//! With TLS on, `grpc.health_listen_addr` adds a plaintext listener that
//! serves only `grpc.health.v1`, for probes that cannot do (m)TLS.
//!
//! On shutdown: every health status flips to NOT_SERVING, feeds are told to
//! end, the server waits `shutdown_drain_ms` so load balancers notice, then
//! stops accepting and lets in-flight calls finish, for at most
//! `shutdown_grace_secs`.

use std::future::Future;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::service::Routes;
use tonic::transport::server::TcpIncoming;
use tonic::transport::Server;
use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;

use crate::auth::Authenticator;
use crate::config::Settings;

/// The health reporter and the names of the services it reports on.
#[derive(Clone)]
pub struct Health {
    pub reporter: HealthReporter,
    services: Vec<String>,
    /// Health alone, for the plaintext health listener.
    health_routes: Routes,
}

impl Health {
    /// Marks `service` (a fully-qualified gRPC service name) as `status`:
    /// its readiness. The whole server's status (`""`, for liveness) stays
    /// SERVING until shutdown, so a database outage takes replicas out of
    /// rotation without getting them restarted.
    pub async fn set(&self, service: &str, status: ServingStatus) {
        self.reporter.set_service_status(service, status).await;
    }

    pub async fn set_all(&self, status: ServingStatus) {
        for s in &self.services {
            self.reporter.set_service_status(s, status).await;
        }
        self.reporter.set_service_status("", status).await;
    }
}

/// Builds the shared parts of a server: health for `services`, reflection,
/// and the routes they live in. Services add their own routes after.
pub fn base_routes(services: &[&str]) -> anyhow::Result<(Routes, Health)> {
    let (reporter, health_service) = tonic_health::server::health_reporter();
    let health_routes = Routes::new(health_service.clone());
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(milestones_api::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .context("cannot build the reflection service")?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(milestones_api::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .context("cannot build the reflection service")?;
    let routes = Routes::new(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha);
    Ok((
        routes,
        Health {
            reporter,
            services: services.iter().map(|s| s.to_string()).collect(),
            health_routes,
        },
    ))
}

/// Serves `routes` on `listener` until `shutdown` resolves, then drains as
/// described in the module comment. `auth` is the authenticator the
/// services' interceptors use (its layer wraps the routes). `stop_feeds` is
/// flipped to true at the start of shutdown so that streaming calls end.
pub async fn serve(
    routes: Routes,
    listener: TcpListener,
    settings: &Settings,
    auth: &Authenticator,
    health: Health,
    stop_feeds: watch::Sender<bool>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let grpc = &settings.grpc;
    let drain = Duration::from_millis(grpc.shutdown_drain_ms);
    let grace = Duration::from_secs(grpc.shutdown_grace_secs);
    let (closing_tx, closing_rx) = watch::channel(false);
    let health_for_shutdown = health.clone();
    let mut stopping = stop_feeds.subscribe();
    tokio::spawn(async move {
        shutdown.await;
        tracing::info!("shutdown requested: reporting NOT_SERVING");
        health_for_shutdown.set_all(ServingStatus::NotServing).await;
        let _ = stop_feeds.send(true);
        tokio::time::sleep(drain).await;
        let _ = closing_tx.send(true);
    });
    let closed = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|closed| *closed).await;
    };
    let mut builder = Server::builder();
    if let Some(tls) = crate::tls::server_config(&settings.tls)? {
        builder = builder.tls_config(tls).context("the TLS configuration is unusable")?;
        tracing::info!(
            mutual = !settings.tls.client_ca_file.as_os_str().is_empty(),
            "serving TLS"
        );
    }
    if !grpc.health_listen_addr.is_empty() {
        let addr = &grpc.health_listen_addr;
        let plain = TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on grpc.health_listen_addr {addr}"))?;
        tracing::info!(addr = %addr, "serving plaintext health checks");
        let routes = health.health_routes.clone();
        let rx = closing_rx.clone();
        tokio::spawn(async move {
            let served = Server::builder()
                .add_routes(routes)
                .serve_with_incoming_shutdown(TcpIncoming::from(plain).with_nodelay(Some(true)), closed(rx))
                .await;
            if let Err(e) = served {
                tracing::warn!(error = %e, "the health listener failed");
            }
        });
    }
    let server = builder
        .timeout(Duration::from_millis(grpc.request_timeout_ms))
        .http2_keepalive_interval(Some(Duration::from_secs(grpc.keepalive_interval_secs)))
        .http2_keepalive_timeout(Some(Duration::from_secs(grpc.keepalive_timeout_secs)))
        // HTTP/2's default window is 64 KiB per stream: a 1,000-activity
        // batch (about 150 KB in, 250 KB out) would stall on window updates
        // several times per call. The adaptive window grows with the
        // measured bandwidth-delay product.
        .http2_adaptive_window(Some(true))
        .layer(crate::telemetry::RpcTelemetryLayer)
        .layer(auth.layer())
        .add_routes(routes)
        // Without TCP_NODELAY a small frame waits for the peer's delayed
        // ACK (~40 ms on Linux), and so would every unary call.
        .serve_with_incoming_shutdown(TcpIncoming::from(listener).with_nodelay(Some(true)), closed(closing_rx));
    // Bound the whole drain: serve_with_shutdown waits for connections
    // without limit.
    let mut server = Box::pin(server);
    tokio::select! {
        result = &mut server => result.context("the gRPC server failed")?,
        _ = async {
            // Only starts counting once shutdown began.
            let _ = stopping.wait_for(|stop| *stop).await;
            tokio::time::sleep(drain + grace).await;
        } => {
            tracing::warn!(grace_secs = grace.as_secs(), "in-flight calls did not finish within the grace period; exiting");
        }
    }
    Ok(())
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = terminate => {}
    }
}
