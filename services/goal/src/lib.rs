//! The goal service: the org tree, metrics, and the milestones set on them,
//! with revisions, reviews, alignment and a change feed.
//!
//! # Layout
//! - [`grpc`]: the tonic service: authenticate, authorise, call a use case.
//! - [`ops`]: use cases, one transaction each, writing the outbox.
//! - [`convert`]: stored rows to wire resources.
//! - [`entity`] and [`migration`]: the sea-orm schema.
//!
//! [`GoalService::build`] connects and migrates; [`GoalService::add_to`]
//! mounts the service on a server's routes.

pub mod assess;
pub mod convert;
pub mod entity;
pub mod grpc;
pub mod migration;
pub mod ops;

use milestones_api::goal::goal_service_server::GoalServiceServer;
use milestones_runtime::auth::Authenticator;
use milestones_runtime::config::Settings;
use milestones_runtime::db::Db;
use milestones_runtime::feed::{FeedNotifier, FeedTiming};
use milestones_runtime::identity::ServiceIdentity;
use tokio::sync::watch;
use tonic::service::Routes;

pub use grpc::{GoalApi, ERROR_DOMAIN};

/// The fully-qualified gRPC name, as reported by health checks.
pub const SERVICE_NAME: &str = "milestones.goal.v1.GoalService";

/// A connected, migrated goal service, ready to be mounted.
pub struct GoalService {
    pub api: GoalApi,
}

impl GoalService {
    /// Connects to the configured database, applies pending migrations, and
    /// prepares the handler. `stop_feeds` ends open feeds on shutdown.
    /// Realism assessments ask the progress service at `progress_endpoint`.
    pub async fn build(
        settings: &Settings,
        progress_endpoint: String,
        stop_feeds: watch::Receiver<bool>,
    ) -> anyhow::Result<Self> {
        let url = settings.goal.database().url_for("goal", &settings.data_dir);
        let db = Db::connect(&url, settings.goal.max_connections).await?;
        migrate(&db).await?;
        Ok(Self {
            api: GoalApi {
                goal: ops::Goal {
                    db,
                    notifier: FeedNotifier::default(),
                    assessor: assess::Assessor::new(
                        &progress_endpoint,
                        ServiceIdentity::from_settings(settings)?,
                        std::time::Duration::from_millis(settings.goal.assessment_timeout_ms),
                    ),
                },
                timing: FeedTiming::from_settings(&settings.grpc),
                stop_feeds,
            },
        })
    }

    /// Mounts the service, behind the authenticator, on `routes`.
    pub fn add_to(self, routes: Routes, auth: Authenticator, max_message_bytes: usize) -> Routes {
        let server = GoalServiceServer::new(self.api)
            .max_decoding_message_size(max_message_bytes)
            .max_encoding_message_size(max_message_bytes);
        routes.add_service(tonic::service::interceptor::InterceptedService::new(
            server,
            move |req| auth.authenticate(req),
        ))
    }

    pub fn db(&self) -> &Db {
        &self.api.goal.db
    }
}

/// Applies the goal service's pending migrations.
pub async fn migrate(db: &Db) -> anyhow::Result<()> {
    milestones_runtime::db::migrate::<migration::Migrator>(db, "goal").await
}
