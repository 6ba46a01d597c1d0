//! The `ProgressService` gRPC surface: authenticate, authorise, parse, call
//! a use case, map its error.

use std::pin::Pin;

use chrono::Utc;
use futures::{Stream, StreamExt};
use milestones_api::progress as pb;
use milestones_api::progress::progress_service_server::ProgressService;
use milestones_domain::names::Collection;
use milestones_domain::Violations;
use milestones_runtime::auth::{Caller, Role};
use milestones_runtime::feed::{FeedItem, FeedTiming};
use milestones_runtime::reach::{Owner, Reach};
use milestones_runtime::wire::{micros_to_timestamp, now_micros};
use milestones_runtime::ApiError;
use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::group_commit::GroupCommit;
use crate::live;
use crate::ops::{parse_activity, parse_progress_name, Progress, EVENT_LOG, MAX_BATCH};

/// `ErrorInfo.domain` of every error this service returns.
pub const ERROR_DOMAIN: &str = "progress.milestones.dev";

const WRITERS: &[Role] = &[Role::Admin, Role::Service];
const READERS: &[Role] = &[Role::Admin, Role::Manager, Role::Rep, Role::Service];
const FEED_READERS: &[Role] = &[Role::Admin, Role::Service];
/// Most names in one BatchGetProgress.
const MAX_BATCH_GET: usize = 100;

/// The gRPC handler.
#[derive(Clone)]
pub struct ProgressApi {
    pub progress: Progress,
    /// Merges concurrent unary RecordActivity calls into one transaction.
    pub group_commit: GroupCommit,
    /// `RecordActivities` batches, merged into transactions.
    pub bulk_commit: GroupCommit,
    pub timing: FeedTiming,
    pub stop_feeds: tokio::sync::watch::Receiver<bool>,
    /// Open WatchProgress streams per caller.
    pub watchers: live::WatchCounts,
}

fn status(e: ApiError) -> Status {
    e.into_status(ERROR_DOMAIN)
}

fn caller<T>(req: &Request<T>, roles: &[Role], action: &str) -> Result<Caller, Status> {
    Caller::authorize(req, roles, action, "WatchMilestoneEvents").map_err(status)
}

type Reply<T> = Result<Response<T>, Status>;

/// Whether every member `activity` credits is within `reach`.
fn credits_within(reach: &Reach, activity: &pb::Activity) -> bool {
    reach.reads_all()
        || activity
            .credited_amounts
            .iter()
            .map(|c| c.member.as_str())
            .chain(std::iter::once(activity.member.as_str()))
            .all(|m| Owner::parse(m).is_some_and(|o| reach.reads(o)))
}

fn reply<T>(r: Result<T, ApiError>) -> Reply<T> {
    r.map(Response::new).map_err(status)
}

#[tonic::async_trait]
impl ProgressService for ProgressApi {
    async fn record_activity(&self, req: Request<pb::RecordActivityRequest>) -> Reply<pb::Activity> {
        let caller = caller(&req, WRITERS, "RecordActivity")?;
        let mut entry = parse_activity("", req.get_ref(), now_micros()).map_err(|v| status(v.into()))?;
        // Recorded in the group commit's task: keep this call's trace for
        // the events it causes.
        entry.trace_parent = milestones_runtime::telemetry::current_traceparent();
        let recorded = self.group_commit.record(caller, vec![entry]).await;
        reply(recorded.and_then(|mut one| {
            one.pop()
                .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("record returned nothing")))
        }))
    }

    async fn record_activities(
        &self,
        req: Request<pb::RecordActivitiesRequest>,
    ) -> Reply<pb::RecordActivitiesResponse> {
        let caller = caller(&req, WRITERS, "RecordActivities")?;
        let requests = &req.get_ref().requests;
        if requests.is_empty() {
            return Err(status(ApiError::invalid("requests", "must hold at least one activity")));
        }
        if requests.len() > MAX_BATCH {
            return Err(status(ApiError::ResourceExhausted {
                reason: "BATCH_TOO_LARGE",
                message: format!(
                    "at most {MAX_BATCH} activities per call (got {}); split the batch",
                    requests.len()
                ),
            }));
        }
        let now = now_micros();
        let mut v = Violations::new();
        let mut entries = Vec::with_capacity(requests.len());
        for (i, r) in requests.iter().enumerate() {
            match parse_activity(&format!("requests[{i}]"), r, now) {
                Ok(e) => entries.push(e),
                Err(errs) => v.extend(errs),
            }
        }
        v.into_result(()).map_err(|v| status(v.into()))?;
        reply(
            self.bulk_commit
                .record(caller, entries)
                .await
                .map(|activities| pb::RecordActivitiesResponse { activities }),
        )
    }

    async fn void_activity(&self, req: Request<pb::VoidActivityRequest>) -> Reply<pb::Activity> {
        let caller = caller(&req, WRITERS, "VoidActivity")?;
        let r = req.get_ref();
        let mut v = Violations::new();
        v.check_text("reason", &r.reason, 1, 1000);
        if r.request_id.is_empty() {
            v.add(
                "request_id",
                "is required: retries with the same request_id are applied once",
            );
        }
        v.into_result(()).map_err(|v| status(v.into()))?;
        let mut clean = r.clone();
        clean.request_id.clear();
        reply(
            self.progress
                .void(&caller, &r.name, &r.reason, &r.request_id, &clean.encode_to_vec())
                .await,
        )
    }

    async fn get_activity(&self, req: Request<pb::GetActivityRequest>) -> Reply<pb::Activity> {
        let caller = caller(&req, READERS, "GetActivity")?;
        let reach = self.progress.reach(&caller).await.map_err(status)?;
        let activity = self
            .progress
            .get_activity(&caller, &req.get_ref().name)
            .await
            .map_err(status)?;
        if !credits_within(&reach, &activity) {
            return Err(status(ApiError::permission_denied(format!(
                "{} credits members outside your reach",
                activity.name
            ))));
        }
        Ok(Response::new(activity))
    }

    async fn list_activities(&self, req: Request<pb::ListActivitiesRequest>) -> Reply<pb::ListActivitiesResponse> {
        let caller = caller(&req, READERS, "ListActivities")?;
        let reach = self.progress.reach(&caller).await.map_err(status)?;
        let mut page = self
            .progress
            .list_activities(&caller, req.into_inner())
            .await
            .map_err(status)?;
        page.activities.retain(|a| credits_within(&reach, a));
        Ok(Response::new(page))
    }

    async fn get_progress(&self, req: Request<pb::GetProgressRequest>) -> Reply<pb::Progress> {
        let caller = caller(&req, READERS, "GetProgress")?;
        self.progress
            .guard_milestone(&caller, &req.get_ref().name)
            .await
            .map_err(status)?;
        reply(self.progress.get_progress(&caller, &req.get_ref().name).await)
    }

    async fn batch_get_progress(
        &self,
        req: Request<pb::BatchGetProgressRequest>,
    ) -> Reply<pb::BatchGetProgressResponse> {
        let caller = caller(&req, READERS, "BatchGetProgress")?;
        let names = &req.get_ref().names;
        if names.len() > MAX_BATCH_GET {
            return Err(status(ApiError::invalid(
                "names",
                format!("at most {MAX_BATCH_GET} names (got {})", names.len()),
            )));
        }
        let mut v = Violations::new();
        let ids: Vec<String> = names
            .iter()
            .enumerate()
            .filter_map(|(i, n)| {
                parse_progress_name(n, &format!("names[{i}]"))
                    .map_err(|e| v.extend(violations(e)))
                    .ok()
            })
            .collect();
        v.into_result(()).map_err(|v| status(v.into()))?;
        for name in names {
            self.progress.guard_milestone(&caller, name).await.map_err(status)?;
        }
        let now = Utc::now();
        let mut progress = Vec::with_capacity(ids.len());
        for id in ids {
            progress.push(
                self.progress
                    .snapshot(self.progress.db.conn(), &caller.tenant_id, &id, now)
                    .await
                    .map_err(status)?,
            );
        }
        Ok(Response::new(pb::BatchGetProgressResponse { progress }))
    }

    async fn get_leaderboard(&self, req: Request<pb::GetLeaderboardRequest>) -> Reply<pb::GetLeaderboardResponse> {
        let caller = caller(&req, READERS, "GetLeaderboard")?;
        let team = &req.get_ref().team;
        if team.is_empty() {
            if !self.progress.reach(&caller).await.map_err(status)?.reads_all() {
                return Err(status(ApiError::permission_denied(
                    "name a team: the whole tenant's leaderboard is for admins and integrations",
                )));
            }
        } else {
            self.progress.guard_owner(&caller, team).await.map_err(status)?;
        }
        reply(self.progress.leaderboard(&caller, req.into_inner()).await)
    }

    async fn get_time_series(&self, req: Request<pb::GetTimeSeriesRequest>) -> Reply<pb::GetTimeSeriesResponse> {
        let caller = caller(&req, READERS, "GetTimeSeries")?;
        self.progress
            .guard_milestone(&caller, &req.get_ref().milestone)
            .await
            .map_err(status)?;
        reply(self.progress.time_series(&caller, req.into_inner()).await)
    }

    async fn get_performance_history(
        &self,
        req: Request<pb::GetPerformanceHistoryRequest>,
    ) -> Reply<pb::GetPerformanceHistoryResponse> {
        let caller = caller(&req, READERS, "GetPerformanceHistory")?;
        self.progress
            .guard_owner(&caller, &req.get_ref().owner)
            .await
            .map_err(status)?;
        reply(self.progress.performance_history(&caller, req.into_inner()).await)
    }

    type WatchProgressStream = Pin<Box<dyn Stream<Item = Result<pb::WatchProgressResponse, Status>> + Send>>;

    async fn watch_progress(&self, req: Request<pb::WatchProgressRequest>) -> Reply<Self::WatchProgressStream> {
        let caller = caller(&req, READERS, "WatchProgress")?;
        match &req.get_ref().selector {
            Some(pb::watch_progress_request::Selector::Milestone(m)) => {
                self.progress.guard_known_milestone(&caller, m).await.map_err(status)?
            }
            Some(pb::watch_progress_request::Selector::Member(o) | pb::watch_progress_request::Selector::Team(o)) => {
                self.progress.guard_owner(&caller, o).await.map_err(status)?
            }
            None => {}
        }
        let selector = req
            .into_inner()
            .selector
            .ok_or_else(|| status(ApiError::invalid("selector", "give a milestone, a member or a team")))?;
        let (kind, id) = match &selector {
            pb::watch_progress_request::Selector::Milestone(m) => (
                "milestone",
                Collection::Milestones
                    .parse(m)
                    .map_err(|e| status(ApiError::invalid("milestone", e)))?,
            ),
            pb::watch_progress_request::Selector::Member(m) => (
                "member",
                Collection::Members
                    .parse(m)
                    .map_err(|e| status(ApiError::invalid("member", e)))?,
            ),
            pb::watch_progress_request::Selector::Team(t) => (
                "team",
                Collection::Teams
                    .parse(t)
                    .map_err(|e| status(ApiError::invalid("team", e)))?,
            ),
        };
        let slot = self
            .watchers
            .take((caller.tenant_id.clone(), caller.subject.clone()))
            .map_err(status)?;
        let scope = live::Scope::resolve(&self.progress, &caller.tenant_id, kind, &id)
            .await
            .map_err(status)?;
        // Subscribe before the initial snapshots are read, so no change
        // between them is missed.
        let changes = self.progress.changes.subscribe();
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(live::run(
            self.progress.clone(),
            caller.tenant_id.clone(),
            scope,
            changes,
            tx,
            self.timing.heartbeat,
            self.stop_feeds.clone(),
            status,
            slot,
        ));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    type WatchMilestoneEventsStream =
        Pin<Box<dyn Stream<Item = Result<pb::WatchMilestoneEventsResponse, Status>> + Send>>;

    async fn watch_milestone_events(
        &self,
        req: Request<pb::WatchMilestoneEventsRequest>,
    ) -> Reply<Self::WatchMilestoneEventsStream> {
        let caller = caller(&req, FEED_READERS, "WatchMilestoneEvents")?;
        let items = EVENT_LOG
            .watch(
                self.progress.db.clone(),
                caller.feed_scope(),
                req.get_ref().after_sequence,
                self.progress.events.clone(),
                self.timing,
                self.stop_feeds.clone(),
            )
            .await
            .map_err(status)?;
        let stream = items.map(|item| {
            let kind = match item.map_err(status)? {
                FeedItem::Event(e) => {
                    let mut event: pb::MilestoneEvent = e.decode().map_err(status)?;
                    event.sequence = e.sequence;
                    pb::watch_milestone_events_response::Kind::Event(event)
                }
                FeedItem::Heartbeat { head_sequence } => {
                    pb::watch_milestone_events_response::Kind::Heartbeat(pb::FeedHeartbeat {
                        head_sequence,
                        heartbeat_time: Some(micros_to_timestamp(now_micros())),
                    })
                }
            };
            Ok(pb::WatchMilestoneEventsResponse { kind: Some(kind) })
        });
        Ok(Response::new(Box::pin(stream)))
    }
}

/// The violations of an INVALID_ARGUMENT error (empty for other errors).
fn violations(e: ApiError) -> Violations {
    match e {
        ApiError::InvalidArgument(v) => v,
        _ => Violations::new(),
    }
}
