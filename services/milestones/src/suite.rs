//! Runs the selected services of the suite in one process, on one listener,
//! with health, reflection and a bounded graceful shutdown.

use std::future::Future;
use std::time::Duration;

use milestones_goal::GoalService;
use milestones_runtime::auth::Authenticator;
use milestones_runtime::config::Settings;
use milestones_runtime::server::{base_routes, serve, Health};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic_health::ServingStatus;

/// The services `milestones server` can run.
pub const SERVICES: &[&str] = &["goal"];

/// Runs `services` on `listener` until `shutdown` resolves.
pub async fn run(
    settings: Settings,
    services: &[String],
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    for s in services {
        if !SERVICES.contains(&s.as_str()) {
            anyhow::bail!("unknown service {s:?}; the services are: {}", SERVICES.join(", "));
        }
    }
    let (stop_tx, stop_rx) = watch::channel(false);
    let names: Vec<&str> = services
        .iter()
        .filter(|s| *s == "goal")
        .map(|_| milestones_goal::SERVICE_NAME)
        .collect();
    let (mut routes, health) = base_routes(&names)?;
    let auth = Authenticator::new(&settings.auth.to_config());
    if services.iter().any(|s| s == "goal") {
        let goal = GoalService::build(&settings, stop_rx.clone()).await?;
        let db = goal.db().clone();
        routes = goal.add_to(routes, auth.clone(), settings.grpc.max_message_bytes);
        health.set(milestones_goal::SERVICE_NAME, ServingStatus::Serving).await;
        tokio::spawn(watch_readiness(
            health.clone(),
            milestones_goal::SERVICE_NAME,
            db,
            stop_rx.clone(),
        ));
    }
    tracing::info!(addr = %listener.local_addr()?, services = ?services, "serving");
    serve(routes, listener, &settings.grpc, health, stop_tx, shutdown).await
}

/// Keeps a service's health in step with its database: NOT_SERVING while
/// the database does not answer, SERVING again once it does. Stops at
/// shutdown, which sets NOT_SERVING itself.
async fn watch_readiness(
    health: Health,
    service: &'static str,
    db: milestones_runtime::db::Db,
    mut stop: watch::Receiver<bool>,
) {
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
