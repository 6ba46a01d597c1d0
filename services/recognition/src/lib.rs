//! The recognition service: rules and badges that turn progress's milestone
//! events into recognitions, the points ledger, the rewards catalog and
//! redemptions, peer kudos and manager feedback.
//!
//! # Layout
//! - [`grpc`]: the tonic service.
//! - [`ops`]: the use cases — [`ops::catalog`] (badges, rules, rewards),
//!   [`ops::awards`] (applying milestone events, recognitions),
//!   [`ops::points`] (ledger, adjustments, redemptions), [`ops::people`]
//!   (kudos, feedback).
//! - [`feeds`]: the consumers of goal's change feed (the org copy) and of
//!   progress's milestone event feed.
//! - [`domain`]: triggers, scopes, streaks, rankings and visibility as plain
//!   functions.
//! - [`store`] and [`schema`]: queries and the schema.

pub mod domain;
pub mod feeds;
pub mod grpc;
pub mod ops;
pub mod schema;
pub mod store;

use milestones_api::recognition::recognition_service_server::RecognitionServiceServer;
use milestones_runtime::auth::Authenticator;
use milestones_runtime::config::Settings;
use milestones_runtime::db::Db;
use milestones_runtime::feed::{FeedNotifier, FeedTiming};
use milestones_runtime::identity::ServiceIdentity;
use tokio::sync::watch;
use tonic::service::Routes;

pub use grpc::{RecognitionApi, ERROR_DOMAIN};

/// The fully-qualified gRPC name, as reported by health checks.
pub const SERVICE_NAME: &str = "milestones.recognition.v1.RecognitionService";

/// A connected, migrated recognition service.
pub struct RecognitionService {
    pub api: RecognitionApi,
}

impl RecognitionService {
    /// Connects, migrates, and starts the two feed consumers: goal's change
    /// feed (from `goal_endpoint`) and progress's milestone events (from
    /// `progress_endpoint`). Both stop when `stop` flips.
    pub async fn build(
        settings: &Settings,
        goal_endpoint: String,
        progress_endpoint: String,
        stop: watch::Receiver<bool>,
    ) -> anyhow::Result<Self> {
        let url = settings
            .recognition
            .database()
            .url_for("recognition", &settings.data_dir);
        let db = Db::connect(&url, settings.recognition.max_connections).await?;
        migrate(&db).await?;
        let reco = ops::Recognition {
            db,
            events: FeedNotifier::default(),
            kudos_daily_limit: settings.recognition.kudos_daily_limit,
            identity: ServiceIdentity::from_settings(settings)?,
        };
        let goal = reco.clone();
        tokio::spawn(feeds::supervise(feeds::GOAL_FEED, stop.clone(), move || {
            let goal = goal.clone();
            let endpoint = goal_endpoint.clone();
            async move { feeds::consume_goal(&goal, &endpoint).await }
        }));
        let progress = reco.clone();
        tokio::spawn(feeds::supervise(feeds::PROGRESS_FEED, stop.clone(), move || {
            let progress = progress.clone();
            let endpoint = progress_endpoint.clone();
            async move { feeds::consume_progress(&progress, &endpoint).await }
        }));
        Ok(Self {
            api: RecognitionApi {
                reco,
                timing: FeedTiming::from_settings(&settings.grpc),
                stop_feeds: stop,
            },
        })
    }

    /// Mounts the service, behind the authenticator, on `routes`.
    pub fn add_to(self, routes: Routes, auth: Authenticator, max_message_bytes: usize) -> Routes {
        let server = RecognitionServiceServer::new(self.api)
            .max_decoding_message_size(max_message_bytes)
            .max_encoding_message_size(max_message_bytes);
        routes.add_service(tonic::service::interceptor::InterceptedService::new(
            server,
            move |req| auth.authenticate(req),
        ))
    }

    pub fn db(&self) -> &Db {
        &self.api.reco.db
    }
}

/// Applies the recognition service's pending migrations.
pub async fn migrate(db: &Db) -> anyhow::Result<()> {
    milestones_runtime::db::migrate::<schema::Migrator>(db, "recognition").await
}
