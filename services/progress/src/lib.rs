//! The progress service: sales activities, the progress of every milestone
//! against them, and the milestone event feed.
//!
//! # Layout
//! - [`grpc`]: the tonic service.
//! - [`ingest`]: recording and voiding with incremental rollups.
//! - [`group_commit`]: concurrent unary calls recorded in one transaction.
//! - [`ops`]: shared pieces, reconciling, snapshots.
//! - [`reads`]: activities, leaderboards, time series, history.
//! - [`projection`]: the copy of goal's data, fed by goal's change feed.
//! - [`period_end`]: MISSED and PERIOD_ENDED events when periods close.
//! - [`rules`]: crossings, splits and pace on stored rows.
//! - [`store`] and [`schema`]: queries and the schema.

pub mod access;
pub mod group_commit;
pub mod grpc;
pub mod ingest;
pub mod live;
pub mod ops;
pub mod period_end;
pub mod projection;
pub mod reads;
pub mod rules;
pub mod schema;
pub mod store;
pub mod writes;

use milestones_api::progress::progress_service_server::ProgressServiceServer;
use milestones_runtime::auth::Authenticator;
use milestones_runtime::config::Settings;
use milestones_runtime::db::Db;
use milestones_runtime::feed::{FeedNotifier, FeedTiming};
use milestones_runtime::identity::ServiceIdentity;
use tokio::sync::{broadcast, watch};
use tonic::service::Routes;

pub use grpc::{ProgressApi, ERROR_DOMAIN};

/// The fully-qualified gRPC name, as reported by health checks.
pub const SERVICE_NAME: &str = "milestones.progress.v1.ProgressService";

/// A connected, migrated progress service.
pub struct ProgressService {
    pub api: ProgressApi,
}

impl ProgressService {
    /// Connects, migrates, and starts the background work: the goal feed
    /// consumer (from `goal_endpoint`) and the period-end check. Both stop
    /// when `stop` flips.
    pub async fn build(
        settings: &Settings,
        goal_endpoint: String,
        stop: watch::Receiver<bool>,
    ) -> anyhow::Result<Self> {
        let url = settings.progress.database().url_for("progress", &settings.data_dir);
        let db = Db::connect(&url, settings.progress.max_connections).await?;
        migrate(&db).await?;
        let progress = ops::Progress {
            db,
            events: FeedNotifier::default(),
            changes: broadcast::channel(1024).0,
            org_cache: ingest::OrgCache::default(),
        };
        tokio::spawn(projection::run(
            progress.clone(),
            goal_endpoint,
            ServiceIdentity::from_settings(settings)?,
            stop.clone(),
        ));
        tokio::spawn(period_end::run(
            progress.clone(),
            std::time::Duration::from_secs(settings.progress.period_end_check_secs),
            stop.clone(),
        ));
        Ok(Self {
            api: ProgressApi {
                group_commit: group_commit::GroupCommit::unary(progress.clone()),
                bulk_commit: group_commit::GroupCommit::bulk(progress.clone()),
                progress,
                timing: FeedTiming::from_settings(&settings.grpc),
                stop_feeds: stop,
                watchers: live::WatchCounts::default(),
            },
        })
    }

    /// Mounts the service, behind the authenticator, on `routes`.
    pub fn add_to(self, routes: Routes, auth: Authenticator, max_message_bytes: usize) -> Routes {
        let server = ProgressServiceServer::new(self.api)
            .max_decoding_message_size(max_message_bytes)
            .max_encoding_message_size(max_message_bytes);
        routes.add_service(tonic::service::interceptor::InterceptedService::new(
            server,
            move |req| auth.authenticate(req),
        ))
    }

    pub fn db(&self) -> &Db {
        &self.api.progress.db
    }
}

/// Applies the progress service's pending migrations.
pub async fn migrate(db: &Db) -> anyhow::Result<()> {
    milestones_runtime::db::migrate::<schema::Migrator>(db, "progress").await
}
