//! The test harness: [`TestApp::spawn`] starts the suite in-process on an
//! ephemeral port against its own fresh database, SQLite by default or
//! PostgreSQL when `MILESTONES_TEST_DB=postgres`. PostgreSQL is reached at
//! `MILESTONES_TEST_POSTGRES_URL` (default
//! `postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable`); when it is
//! asked for and unreachable the tests fail, they do not skip.

use std::net::SocketAddr;
use std::time::Duration;

use milestones_api::goal::goal_service_client::GoalServiceClient;
use milestones_api::progress::progress_service_client::ProgressServiceClient;
use milestones_api::recognition::recognition_service_client::RecognitionServiceClient;
use milestones_runtime::auth::{mint_token, Role};
use milestones_runtime::config::Settings;
use sea_orm::{ConnectionTrait, Database};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::service::Interceptor;
use tonic::transport::Channel;
use tonic::{Request, Status};

/// Which database the tests run against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// The backend chosen by `MILESTONES_TEST_DB` (`sqlite` or `postgres`).
pub fn backend() -> Backend {
    match std::env::var("MILESTONES_TEST_DB").as_deref() {
        Ok("postgres") => Backend::Postgres,
        Ok("sqlite") | Err(_) => Backend::Sqlite,
        Ok(other) => panic!("MILESTONES_TEST_DB={other:?}: use sqlite or postgres"),
    }
}

fn postgres_admin_url() -> String {
    std::env::var("MILESTONES_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable".to_string())
}

/// Creates a fresh, uniquely named database and returns its URL.
pub async fn fresh_database_url() -> String {
    // The run id lets CI drop exactly the databases its own run created. At
    // most 12 characters keep the name within PostgreSQL's 63, so the
    // random tail of the UUID is never truncated away.
    let run = std::env::var("MILESTONES_TEST_RUN").unwrap_or_else(|_| "local".to_string());
    let run: String = run.chars().filter(|c| c.is_ascii_alphanumeric()).take(12).collect();
    let name = format!("milestones_test_{run}_{}", uuid::Uuid::now_v7().simple());
    match backend() {
        Backend::Sqlite => {
            let dir = std::env::temp_dir().join("milestones-tests");
            std::fs::create_dir_all(&dir).expect("temp dir for test databases");
            format!("sqlite://{}/{name}.db?mode=rwc", dir.display())
        }
        Backend::Postgres => {
            let admin = postgres_admin_url();
            let conn = Database::connect(admin.as_str()).await.unwrap_or_else(|e| {
                panic!("PostgreSQL is required for MILESTONES_TEST_DB=postgres but {admin} is unreachable: {e}")
            });
            conn.execute_unprepared(&format!("CREATE DATABASE \"{name}\""))
                .await
                .expect("create test database");
            let base = admin.split('?').next().unwrap_or(&admin);
            let server = base.rsplit_once('/').map_or(base, |(s, _)| s);
            format!("{server}/{name}?sslmode=disable")
        }
    }
}

/// The settings tests run with: the given databases, fast feeds and a
/// short shutdown.
pub fn test_settings(
    goal_database_url: String,
    progress_database_url: String,
    recognition_database_url: String,
) -> Settings {
    let mut settings = Settings::default();
    settings.goal.database_url = goal_database_url;
    settings.goal.max_connections = 8;
    settings.progress.database_url = progress_database_url;
    settings.progress.period_end_check_secs = 1;
    settings.recognition.database_url = recognition_database_url;
    settings.grpc.feed_heartbeat_ms = 300;
    settings.grpc.feed_poll_ms = 50;
    settings.grpc.shutdown_drain_ms = 50;
    settings.grpc.shutdown_grace_secs = 5;
    settings
}

/// A running suite.
pub struct TestApp {
    pub addr: SocketAddr,
    pub settings: Settings,
    pub database_url: String,
    pub progress_database_url: String,
    /// Empty unless the app runs recognition.
    pub recognition_database_url: String,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<anyhow::Result<()>>>,
}

/// Adds `authorization: Bearer ...` to every call.
#[derive(Clone)]
pub struct Bearer(Option<MetadataValue<Ascii>>);

impl Bearer {
    /// Sends `token` (a JWT, without the `Bearer ` prefix), or nothing.
    pub fn new(token: Option<&str>) -> Bearer {
        Bearer(token.map(|t| format!("Bearer {t}").parse().expect("ascii token")))
    }
}

impl Interceptor for Bearer {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

pub type GoalClient = GoalServiceClient<InterceptedService<Channel, Bearer>>;
pub type ProgressClient = ProgressServiceClient<InterceptedService<Channel, Bearer>>;
pub type RecognitionClient = RecognitionServiceClient<InterceptedService<Channel, Bearer>>;

/// Retries `f` until it returns `Some`, for at most 10 s: progress learns
/// about goal's changes through a feed, a moment later.
pub async fn eventually<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

impl TestApp {
    /// Starts goal and progress on fresh databases.
    pub async fn spawn() -> TestApp {
        let url = fresh_database_url().await;
        Self::spawn_on(url).await
    }

    /// Starts goal and progress with goal on an existing database (e.g.
    /// after a restart) and progress on a fresh one.
    pub async fn spawn_on(database_url: String) -> TestApp {
        let progress_url = fresh_database_url().await;
        Self::spawn_with(database_url, progress_url, &["goal", "progress"], None).await
    }

    /// Starts goal, progress and recognition (as `milestones server` does)
    /// on fresh databases.
    pub async fn spawn_all() -> TestApp {
        let settings = test_settings(
            fresh_database_url().await,
            fresh_database_url().await,
            fresh_database_url().await,
        );
        Self::launch(settings, &["goal", "progress", "recognition"], None).await
    }

    /// Starts `services` on the given databases; progress reads goal's
    /// feed from `goal_endpoint` (default: this server).
    pub async fn spawn_with(
        database_url: String,
        progress_database_url: String,
        services: &[&str],
        goal_endpoint: Option<String>,
    ) -> TestApp {
        let recognition = if services.contains(&"recognition") {
            fresh_database_url().await
        } else {
            String::new()
        };
        let mut settings = test_settings(database_url, progress_database_url, recognition);
        settings.progress.goal_endpoint = goal_endpoint.unwrap_or_default();
        Self::launch(settings, services, None).await
    }

    /// Starts `services` with `settings`, on `addr` (e.g. the address of a
    /// stopped app, to restart it where its peers look for it) or on an
    /// ephemeral port, and waits until the first of them is serving.
    pub async fn launch(settings: Settings, services: &[&str], addr: Option<SocketAddr>) -> TestApp {
        if std::env::var("TEST_LOG").is_ok() {
            milestones_runtime::telemetry::init(&settings.log);
        }
        let bind = addr.unwrap_or_else(|| "127.0.0.1:0".parse().expect("address"));
        let listener = tokio::net::TcpListener::bind(bind).await.expect("bind test port");
        let addr = listener.local_addr().expect("local addr");
        let (tx, rx) = oneshot::channel::<()>();
        let run_settings = settings.clone();
        // Build (connect, migrate) before returning, so clients can connect
        // at once: the listener is already bound.
        let health_of = match services.first().copied() {
            Some("progress") => "milestones.progress.v1.ProgressService",
            Some("recognition") => "milestones.recognition.v1.RecognitionService",
            _ => "milestones.goal.v1.GoalService",
        };
        let services: Vec<String> = services.iter().map(|s| s.to_string()).collect();
        let server = tokio::spawn(async move {
            milestones::suite::run(run_settings, &services, listener, async {
                let _ = rx.await;
            })
            .await
        });
        let app = TestApp {
            addr,
            database_url: settings.goal.database_url.clone(),
            progress_database_url: settings.progress.database_url.clone(),
            recognition_database_url: settings.recognition.database_url.clone(),
            settings,
            shutdown: Some(tx),
            server: Some(server),
        };
        app.wait_until_serving(health_of).await;
        app
    }

    async fn wait_until_serving(&self, service: &str) {
        use tonic_health::pb::health_client::HealthClient;
        use tonic_health::pb::HealthCheckRequest;
        for _ in 0..200 {
            if let Ok(ch) = Channel::from_shared(self.endpoint()).expect("endpoint").connect().await {
                let mut health = HealthClient::new(ch);
                let req = HealthCheckRequest {
                    service: service.into(),
                };
                if let Ok(r) = health.check(req).await {
                    if r.into_inner().status == 1 {
                        return;
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("the suite did not become healthy at {}", self.addr);
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub async fn channel(&self) -> Channel {
        Channel::from_shared(self.endpoint())
            .expect("endpoint")
            .connect()
            .await
            .expect("connect to the suite")
    }

    /// A token for `tenant`, `subject` and `roles`, signed with the suite's
    /// secret.
    pub fn token(&self, tenant: &str, subject: &str, roles: &[Role]) -> String {
        mint_token(
            &self.settings.auth.to_config(),
            tenant,
            subject,
            roles,
            Duration::from_secs(600),
        )
        .expect("mint token")
    }

    /// A goal client sending `token` (or none).
    pub async fn goal_with_token(&self, token: Option<String>) -> GoalClient {
        let value = token.map(|t| format!("Bearer {t}").parse().expect("ascii token"));
        GoalServiceClient::with_interceptor(self.channel().await, Bearer(value))
    }

    /// A goal client for `tenant` with `roles`.
    pub async fn goal(&self, tenant: &str, roles: &[Role]) -> GoalClient {
        let token = self.token(tenant, "tester", roles);
        self.goal_with_token(Some(token)).await
    }

    /// A progress client for `tenant` with `roles`.
    pub async fn progress(&self, tenant: &str, roles: &[Role]) -> ProgressClient {
        let token = self.token(tenant, "tester", roles);
        let value = format!("Bearer {token}").parse().expect("ascii token");
        ProgressServiceClient::with_interceptor(self.channel().await, Bearer(Some(value)))
    }

    /// A recognition client for `tenant` acting as `subject` with `roles`.
    pub async fn recognition_as(&self, tenant: &str, subject: &str, roles: &[Role]) -> RecognitionClient {
        let token = self.token(tenant, subject, roles);
        let value = format!("Bearer {token}").parse().expect("ascii token");
        RecognitionServiceClient::with_interceptor(self.channel().await, Bearer(Some(value)))
    }

    /// A recognition client for `tenant` with `roles`.
    pub async fn recognition(&self, tenant: &str, roles: &[Role]) -> RecognitionClient {
        self.recognition_as(tenant, "tester", roles).await
    }

    /// A tenant admin's goal client.
    pub async fn admin(&self, tenant: &str) -> GoalClient {
        self.goal(tenant, &[Role::Admin]).await
    }

    /// Asks the server to shut down (as SIGTERM does) without waiting.
    pub fn begin_shutdown(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }

    /// Stops the server gracefully and waits for it.
    pub async fn stop(mut self) {
        self.begin_shutdown();
        if let Some(server) = self.server.take() {
            server.await.expect("server task").expect("server exits cleanly");
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}
