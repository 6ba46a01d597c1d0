//! Runs the selected services of the suite in one process, on one listener,
//! with health, reflection and a bounded graceful shutdown.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use milestones_goal::GoalService;
use milestones_progress::ProgressService;
use milestones_recognition::RecognitionService;
use milestones_runtime::auth::Authenticator;
use milestones_runtime::config::Settings;
use milestones_runtime::db::Db;
use milestones_runtime::server::{base_routes, serve, Health};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic_health::ServingStatus;

/// The services `milestones server` can run.
pub const SERVICES: &[&str] = &["goal", "progress", "recognition"];

/// The gRPC name a service reports health under.
fn grpc_name(service: &str) -> &'static str {
    match service {
        "progress" => milestones_progress::SERVICE_NAME,
        "recognition" => milestones_recognition::SERVICE_NAME,
        _ => milestones_goal::SERVICE_NAME,
    }
}

/// Runs `services` on `listener` until `shutdown` resolves.
pub async fn run(
    mut settings: Settings,
    services: &[String],
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    for s in services {
        if !SERVICES.contains(&s.as_str()) {
            anyhow::bail!("unknown service {s:?}; the services are: {}", SERVICES.join(", "));
        }
    }
    let unreadable = settings.read_secret_files();
    if !unreadable.is_empty() {
        anyhow::bail!("{}", unreadable.join("; "));
    }
    let (stop_tx, stop_rx) = watch::channel(false);
    let names: Vec<&str> = services.iter().map(|s| grpc_name(s)).collect();
    let (mut routes, health) = base_routes(&names)?;
    let auth = Authenticator::from_settings(&settings).await?;
    let local = self_endpoint(listener.local_addr()?, settings.tls.enabled());
    let mut databases: Vec<(&'static str, Db)> = Vec::new();
    if services.iter().any(|s| s == "goal") {
        let progress_endpoint = if settings.goal.progress_endpoint.is_empty() {
            local.clone()
        } else {
            settings.goal.progress_endpoint.clone()
        };
        let goal = GoalService::build(&settings, progress_endpoint, stop_rx.clone()).await?;
        databases.push((milestones_goal::SERVICE_NAME, goal.db().clone()));
        routes = goal.add_to(routes, auth.clone(), settings.grpc.max_message_bytes);
    }
    if services.iter().any(|s| s == "progress") {
        let goal_endpoint = if settings.progress.goal_endpoint.is_empty() {
            local.clone()
        } else {
            settings.progress.goal_endpoint.clone()
        };
        let progress = ProgressService::build(&settings, goal_endpoint, stop_rx.clone()).await?;
        databases.push((milestones_progress::SERVICE_NAME, progress.db().clone()));
        routes = progress.add_to(routes, auth.clone(), settings.grpc.max_message_bytes);
    }
    if services.iter().any(|s| s == "recognition") {
        let local_or = |endpoint: &str| {
            if endpoint.is_empty() {
                local.clone()
            } else {
                endpoint.to_string()
            }
        };
        let recognition = RecognitionService::build(
            &settings,
            local_or(&settings.recognition.goal_endpoint),
            local_or(&settings.recognition.progress_endpoint),
            stop_rx.clone(),
        )
        .await?;
        databases.push((milestones_recognition::SERVICE_NAME, recognition.db().clone()));
        routes = recognition.add_to(routes, auth.clone(), settings.grpc.max_message_bytes);
    }
    for (name, db) in databases {
        health.set(name, ServingStatus::Serving).await;
        tokio::spawn(watch_readiness(health.clone(), name, db, stop_rx.clone()));
    }
    tracing::info!(addr = %local, services = ?services, "serving");
    serve(routes, listener, &settings, &auth, health, stop_tx, shutdown).await
}

/// Where this process's services reach each other by default: its own
/// listener (on loopback when it listens on every address), over https when
/// TLS is on.
fn self_endpoint(addr: SocketAddr, tls: bool) -> String {
    let ip = match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    let scheme = if tls { "https" } else { "http" };
    format!("{scheme}://{}", SocketAddr::new(ip, addr.port()))
}

/// Keeps a service's health in step with its database: NOT_SERVING while
/// the database does not answer, SERVING again once it does. Stops at
/// shutdown, which sets NOT_SERVING itself.
async fn watch_readiness(health: Health, service: &'static str, db: Db, mut stop: watch::Receiver<bool>) {
    let mut serving = true;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let ok = db.ping().await;
        if *stop.borrow() {
            return;
        }
        if ok != serving {
            serving = ok;
            let status = if ok {
                ServingStatus::Serving
            } else {
                ServingStatus::NotServing
            };
            tracing::warn!(service, ?status, "database reachability changed");
            health.set(service, status).await;
        }
    }
}
