//! The `GoalService` gRPC surface: authenticate the caller, check the role,
//! hand the request to a use case, and map its error. Nothing else.

use std::pin::Pin;

use futures::{Stream, StreamExt};
use milestones_api::goal as pb;
use milestones_api::goal::goal_service_server::GoalService;
use milestones_runtime::auth::{Caller, Role};
use milestones_runtime::feed::{FeedItem, FeedTiming};
use milestones_runtime::reach::Owner;
use milestones_runtime::wire::micros_to_timestamp;
use milestones_runtime::ApiError;
use prost::Message;
use tokio::sync::watch;
use tonic::{Request, Response, Status};

use crate::convert::state;
use crate::ops::{Ctx, Goal, CHANGE_LOG};

/// `ErrorInfo.domain` of every error this service returns.
pub const ERROR_DOMAIN: &str = "goal.milestones.dev";

const ADMIN: &[Role] = &[Role::Admin];
const PLANNERS: &[Role] = &[Role::Admin, Role::Manager];
const READERS: &[Role] = &[Role::Admin, Role::Manager, Role::Rep, Role::Service];
const FEED_READERS: &[Role] = &[Role::Admin, Role::Service];

/// The gRPC handler.
#[derive(Clone)]
pub struct GoalApi {
    pub goal: Goal,
    pub timing: FeedTiming,
    pub stop_feeds: watch::Receiver<bool>,
}

fn status(e: ApiError) -> Status {
    e.into_status(ERROR_DOMAIN)
}

/// The caller, if they hold one of `roles`.
fn caller<T>(req: &Request<T>, roles: &[Role], action: &str) -> Result<Caller, Status> {
    Caller::authorize(req, roles, action, "WatchChanges").map_err(status)
}

/// A write's context: the caller (with one of `roles`) and the idempotency
/// key. `clear` blanks the request's own `request_id` so that the stored
/// fingerprint covers only the payload.
fn write_ctx<T: Message + Clone>(
    req: &Request<T>,
    roles: &[Role],
    method: &'static str,
    request_id: &str,
    clear: impl FnOnce(&mut T),
) -> Result<Ctx, Status> {
    let caller = caller(req, roles, method)?;
    let mut body = req.get_ref().clone();
    clear(&mut body);
    Ok(Ctx {
        caller,
        method,
        request_id: request_id.to_string(),
        request: body.encode_to_vec(),
    })
}

type Reply<T> = Result<Response<T>, Status>;

impl GoalApi {
    /// PERMISSION_DENIED unless the caller reaches the milestone `name`'s
    /// owner (to read, or with `manage` to change).
    async fn guard(&self, caller: &Caller, name: &str, manage: bool) -> Result<(), Status> {
        self.goal.guard_milestone(caller, name, manage).await.map_err(status)
    }
}

fn reply<T>(r: Result<T, ApiError>) -> Reply<T> {
    r.map(Response::new).map_err(status)
}

#[tonic::async_trait]
impl GoalService for GoalApi {
    async fn get_tenant_settings(&self, req: Request<pb::GetTenantSettingsRequest>) -> Reply<pb::TenantSettings> {
        let caller = caller(&req, READERS, "GetTenantSettings")?;
        reply(self.goal.get_settings(&caller).await)
    }

    async fn update_tenant_settings(&self, req: Request<pb::UpdateTenantSettingsRequest>) -> Reply<pb::TenantSettings> {
        let ctx = write_ctx(&req, ADMIN, "UpdateTenantSettings", &req.get_ref().request_id, |r| {
            r.request_id.clear()
        })?;
        let r = req.into_inner();
        let settings = r
            .tenant_settings
            .ok_or_else(|| status(ApiError::invalid("tenant_settings", "is required")))?;
        reply(self.goal.update_settings(&ctx, settings, r.update_mask).await)
    }

    async fn create_team(&self, req: Request<pb::CreateTeamRequest>) -> Reply<pb::Team> {
        let ctx = write_ctx(&req, ADMIN, "CreateTeam", &req.get_ref().request_id, |r| {
            r.request_id.clear()
        })?;
        let team = req
            .into_inner()
            .team
            .ok_or_else(|| status(ApiError::invalid("team", "is required")))?;
        reply(self.goal.create_team(&ctx, team).await)
    }

    async fn get_team(&self, req: Request<pb::GetTeamRequest>) -> Reply<pb::Team> {
        let caller = caller(&req, READERS, "GetTeam")?;
        reply(self.goal.get_team(&caller, &req.get_ref().name).await)
    }

    async fn list_teams(&self, req: Request<pb::ListTeamsRequest>) -> Reply<pb::ListTeamsResponse> {
        let caller = caller(&req, READERS, "ListTeams")?;
        reply(self.goal.list_teams(&caller, req.into_inner()).await)
    }

    async fn update_team(&self, req: Request<pb::UpdateTeamRequest>) -> Reply<pb::Team> {
        let ctx = write_ctx(&req, ADMIN, "UpdateTeam", &req.get_ref().request_id, |r| {
            r.request_id.clear()
        })?;
        let r = req.into_inner();
        let team = r.team.ok_or_else(|| status(ApiError::invalid("team", "is required")))?;
        reply(self.goal.update_team(&ctx, team, r.update_mask).await)
    }

    async fn delete_team(&self, req: Request<pb::DeleteTeamRequest>) -> Reply<pb::DeleteTeamResponse> {
        let ctx = write_ctx(&req, ADMIN, "DeleteTeam", &req.get_ref().request_id, |r| {
            r.request_id.clear()
        })?;
        let r = req.into_inner();
        reply(self.goal.delete_team(&ctx, &r.name, &r.etag).await)
    }

    async fn create_member(&self, req: Request<pb::CreateMemberRequest>) -> Reply<pb::Member> {
        let ctx = write_ctx(&req, ADMIN, "CreateMember", &req.get_ref().request_id, |r| {
            r.request_id.clear()
        })?;
        let member = req
            .into_inner()
            .member
            .ok_or_else(|| status(ApiError::invalid("member", "is required")))?;
        reply(self.goal.create_member(&ctx, member).await)
    }

    async fn get_member(&self, req: Request<pb::GetMemberRequest>) -> Reply<pb::Member> {
        let caller = caller(&req, READERS, "GetMember")?;
        reply(self.goal.get_member(&caller, &req.get_ref().name).await)
    }

    async fn list_members(&self, req: Request<pb::ListMembersRequest>) -> Reply<pb::ListMembersResponse> {
        let caller = caller(&req, READERS, "ListMembers")?;
        reply(self.goal.list_members(&caller, req.into_inner()).await)
    }

    async fn update_member(&self, req: Request<pb::UpdateMemberRequest>) -> Reply<pb::Member> {
        let ctx = write_ctx(&req, ADMIN, "UpdateMember", &req.get_ref().request_id, |r| {
            r.request_id.clear()
        })?;
        let r = req.into_inner();
        let member = r
            .member
            .ok_or_else(|| status(ApiError::invalid("member", "is required")))?;
        reply(self.goal.update_member(&ctx, member, r.update_mask).await)
    }

    async fn delete_member(&self, req: Request<pb::DeleteMemberRequest>) -> Reply<pb::DeleteMemberResponse> {
        let ctx = write_ctx(&req, ADMIN, "DeleteMember", &req.get_ref().request_id, |r| {
            r.request_id.clear()
        })?;
        let r = req.into_inner();
        reply(self.goal.delete_member(&ctx, &r.name, &r.etag).await)
    }

    async fn create_membership(&self, req: Request<pb::CreateMembershipRequest>) -> Reply<pb::Membership> {
        let ctx = write_ctx(&req, ADMIN, "CreateMembership", &req.get_ref().request_id, |r| {
            r.request_id.clear()
        })?;
        let m = req
            .into_inner()
            .membership
            .ok_or_else(|| status(ApiError::invalid("membership", "is required")))?;
        reply(self.goal.create_membership(&ctx, m).await)
    }

    async fn get_membership(&self, req: Request<pb::GetMembershipRequest>) -> Reply<pb::Membership> {
        let caller = caller(&req, READERS, "GetMembership")?;
        reply(self.goal.get_membership(&caller, &req.get_ref().name).await)
    }

    async fn list_memberships(&self, req: Request<pb::ListMembershipsRequest>) -> Reply<pb::ListMembershipsResponse> {
        let caller = caller(&req, READERS, "ListMemberships")?;
        reply(self.goal.list_memberships(&caller, req.into_inner()).await)
    }

    async fn update_membership(&self, req: Request<pb::UpdateMembershipRequest>) -> Reply<pb::Membership> {
        let ctx = write_ctx(&req, ADMIN, "UpdateMembership", &req.get_ref().request_id, |r| {
            r.request_id.clear()
        })?;
        let r = req.into_inner();
        let m = r
            .membership
            .ok_or_else(|| status(ApiError::invalid("membership", "is required")))?;
        reply(self.goal.update_membership(&ctx, m, r.update_mask).await)
    }

    async fn delete_membership(
        &self,
        req: Request<pb::DeleteMembershipRequest>,
    ) -> Reply<pb::DeleteMembershipResponse> {
        let ctx = write_ctx(&req, ADMIN, "DeleteMembership", &req.get_ref().request_id, |r| {
            r.request_id.clear()
        })?;
        let r = req.into_inner();
        reply(self.goal.delete_membership(&ctx, &r.name, &r.etag).await)
    }

    async fn create_metric(&self, req: Request<pb::CreateMetricRequest>) -> Reply<pb::Metric> {
        let ctx = write_ctx(&req, ADMIN, "CreateMetric", &req.get_ref().request_id, |r| {
            r.request_id.clear()
        })?;
        let m = req
            .into_inner()
            .metric
            .ok_or_else(|| status(ApiError::invalid("metric", "is required")))?;
        reply(self.goal.create_metric(&ctx, m).await)
    }

    async fn get_metric(&self, req: Request<pb::GetMetricRequest>) -> Reply<pb::Metric> {
        let caller = caller(&req, READERS, "GetMetric")?;
        reply(self.goal.get_metric(&caller, &req.get_ref().name).await)
    }

    async fn list_metrics(&self, req: Request<pb::ListMetricsRequest>) -> Reply<pb::ListMetricsResponse> {
        let caller = caller(&req, READERS, "ListMetrics")?;
        reply(self.goal.list_metrics(&caller, req.into_inner()).await)
    }

    async fn update_metric(&self, req: Request<pb::UpdateMetricRequest>) -> Reply<pb::Metric> {
        let ctx = write_ctx(&req, ADMIN, "UpdateMetric", &req.get_ref().request_id, |r| {
            r.request_id.clear()
        })?;
        let r = req.into_inner();
        let m = r
            .metric
            .ok_or_else(|| status(ApiError::invalid("metric", "is required")))?;
        reply(self.goal.update_metric(&ctx, m, r.update_mask).await)
    }

    async fn delete_metric(&self, req: Request<pb::DeleteMetricRequest>) -> Reply<pb::DeleteMetricResponse> {
        let ctx = write_ctx(&req, ADMIN, "DeleteMetric", &req.get_ref().request_id, |r| {
            r.request_id.clear()
        })?;
        let r = req.into_inner();
        reply(self.goal.delete_metric(&ctx, &r.name, &r.etag).await)
    }

    async fn create_milestone(&self, req: Request<pb::CreateMilestoneRequest>) -> Reply<pb::Milestone> {
        let ctx = write_ctx(&req, PLANNERS, "CreateMilestone", &req.get_ref().request_id, |r| {
            r.request_id.clear()
        })?;
        let r = req.into_inner();
        let m = r
            .milestone
            .ok_or_else(|| status(ApiError::invalid("milestone", "is required")))?;
        self.goal
            .guard_owner(&ctx.caller, &m.owner, true)
            .await
            .map_err(status)?;
        reply(self.goal.create_milestone(&ctx, m, r.activate).await)
    }

    async fn get_milestone(&self, req: Request<pb::GetMilestoneRequest>) -> Reply<pb::Milestone> {
        let caller = caller(&req, READERS, "GetMilestone")?;
        self.guard(&caller, &req.get_ref().name, false).await?;
        reply(self.goal.get_milestone(&caller, &req.get_ref().name).await)
    }

    async fn list_milestones(&self, req: Request<pb::ListMilestonesRequest>) -> Reply<pb::ListMilestonesResponse> {
        let caller = caller(&req, READERS, "ListMilestones")?;
        let reach = self.goal.reach(&caller).await.map_err(status)?;
        let mut page = self
            .goal
            .list_milestones(&caller, req.into_inner())
            .await
            .map_err(status)?;
        page.milestones
            .retain(|m| Owner::parse(&m.owner).is_some_and(|o| reach.reads(o)));
        Ok(Response::new(page))
    }

    async fn update_milestone(&self, req: Request<pb::UpdateMilestoneRequest>) -> Reply<pb::Milestone> {
        let ctx = write_ctx(&req, PLANNERS, "UpdateMilestone", &req.get_ref().request_id, |r| {
            r.request_id.clear()
        })?;
        let r = req.into_inner();
        let m = r
            .milestone
            .ok_or_else(|| status(ApiError::invalid("milestone", "is required")))?;
        self.guard(&ctx.caller, &m.name, true).await?;
        reply(
            self.goal
                .update_milestone(&ctx, m, r.update_mask, r.revision_reason)
                .await,
        )
    }

    async fn delete_milestone(&self, req: Request<pb::DeleteMilestoneRequest>) -> Reply<pb::DeleteMilestoneResponse> {
        let ctx = write_ctx(&req, PLANNERS, "DeleteMilestone", &req.get_ref().request_id, |r| {
            r.request_id.clear()
        })?;
        let r = req.into_inner();
        self.guard(&ctx.caller, &r.name, true).await?;
        reply(self.goal.delete_milestone(&ctx, &r.name, &r.etag).await)
    }

    async fn activate_milestone(&self, req: Request<pb::ActivateMilestoneRequest>) -> Reply<pb::Milestone> {
        let ctx = write_ctx(&req, PLANNERS, "ActivateMilestone", &req.get_ref().request_id, |r| {
            r.request_id.clear()
        })?;
        let r = req.into_inner();
        self.guard(&ctx.caller, &r.name, true).await?;
        reply(
            self.goal
                .transition(&ctx, &r.name, &r.etag, state::ACTIVE, None, None)
                .await,
        )
    }

    async fn close_milestone(&self, req: Request<pb::CloseMilestoneRequest>) -> Reply<pb::Milestone> {
        let ctx = write_ctx(&req, PLANNERS, "CloseMilestone", &req.get_ref().request_id, |r| {
            r.request_id.clear()
        })?;
        let r = req.into_inner();
        self.guard(&ctx.caller, &r.name, true).await?;
        let to = match pb::MilestoneState::try_from(r.outcome) {
            Ok(pb::MilestoneState::Achieved) => state::ACHIEVED,
            Ok(pb::MilestoneState::Missed) => state::MISSED,
            _ => {
                return Err(status(ApiError::invalid(
                    "outcome",
                    "must be MILESTONE_STATE_ACHIEVED or MILESTONE_STATE_MISSED",
                )))
            }
        };
        reply(
            self.goal
                .transition(&ctx, &r.name, &r.etag, to, Some(r.final_value), None)
                .await,
        )
    }

    async fn cancel_milestone(&self, req: Request<pb::CancelMilestoneRequest>) -> Reply<pb::Milestone> {
        let ctx = write_ctx(&req, PLANNERS, "CancelMilestone", &req.get_ref().request_id, |r| {
            r.request_id.clear()
        })?;
        let r = req.into_inner();
        self.guard(&ctx.caller, &r.name, true).await?;
        let mut v = milestones_domain::Violations::new();
        v.check_text("reason", &r.reason, 1, 1000);
        v.into_result(()).map_err(|v| status(v.into()))?;
        reply(
            self.goal
                .transition(&ctx, &r.name, &r.etag, state::CANCELLED, None, Some(r.reason))
                .await,
        )
    }

    async fn list_milestone_revisions(
        &self,
        req: Request<pb::ListMilestoneRevisionsRequest>,
    ) -> Reply<pb::ListMilestoneRevisionsResponse> {
        let caller = caller(&req, READERS, "ListMilestoneRevisions")?;
        self.guard(&caller, &req.get_ref().parent, false).await?;
        reply(self.goal.list_revisions(&caller, req.into_inner()).await)
    }

    async fn review_milestone(&self, req: Request<pb::ReviewMilestoneRequest>) -> Reply<pb::MilestoneReview> {
        let ctx = write_ctx(&req, PLANNERS, "ReviewMilestone", &req.get_ref().request_id, |r| {
            r.request_id.clear()
        })?;
        self.guard(&ctx.caller, &req.get_ref().name, true).await?;
        reply(self.goal.review_milestone(&ctx, req.into_inner()).await)
    }

    async fn list_milestone_reviews(
        &self,
        req: Request<pb::ListMilestoneReviewsRequest>,
    ) -> Reply<pb::ListMilestoneReviewsResponse> {
        let caller = caller(&req, READERS, "ListMilestoneReviews")?;
        self.guard(&caller, &req.get_ref().parent, false).await?;
        reply(self.goal.list_reviews(&caller, req.into_inner()).await)
    }

    async fn list_due_reviews(&self, req: Request<pb::ListDueReviewsRequest>) -> Reply<pb::ListDueReviewsResponse> {
        let caller = caller(&req, READERS, "ListDueReviews")?;
        let reach = self.goal.reach(&caller).await.map_err(status)?;
        let mut page = self
            .goal
            .list_due_reviews(&caller, req.into_inner())
            .await
            .map_err(status)?;
        page.milestones
            .retain(|m| Owner::parse(&m.owner).is_some_and(|o| reach.reads(o)));
        Ok(Response::new(page))
    }

    async fn assess_milestone(&self, req: Request<pb::AssessMilestoneRequest>) -> Reply<pb::MilestoneAssessment> {
        let caller = caller(&req, READERS, "AssessMilestone")?;
        self.guard(&caller, &req.get_ref().name, false).await?;
        reply(self.goal.assess_milestone(&caller, &req.get_ref().name).await)
    }

    async fn get_alignment(&self, req: Request<pb::GetAlignmentRequest>) -> Reply<pb::Alignment> {
        let caller = caller(&req, READERS, "GetAlignment")?;
        self.guard(&caller, &req.get_ref().name, false).await?;
        reply(self.goal.get_alignment(&caller, &req.get_ref().name).await)
    }

    type WatchChangesStream = Pin<Box<dyn Stream<Item = Result<pb::WatchChangesResponse, Status>> + Send>>;

    async fn watch_changes(&self, req: Request<pb::WatchChangesRequest>) -> Reply<Self::WatchChangesStream> {
        let caller = caller(&req, FEED_READERS, "WatchChanges")?;
        let items = CHANGE_LOG
            .watch(
                self.goal.db.clone(),
                caller.feed_scope(),
                req.get_ref().after_sequence,
                self.goal.notifier.clone(),
                self.timing,
                self.stop_feeds.clone(),
            )
            .await
            .map_err(status)?;
        let stream = items.map(|item| {
            let kind = match item.map_err(status)? {
                FeedItem::Event(e) => {
                    let mut event: pb::ChangeEvent = e.decode().map_err(status)?;
                    event.sequence = e.sequence;
                    event.event_time = Some(micros_to_timestamp(e.create_time));
                    pb::watch_changes_response::Kind::Event(event)
                }
                FeedItem::Heartbeat { head_sequence } => {
                    pb::watch_changes_response::Kind::Heartbeat(pb::FeedHeartbeat {
                        head_sequence,
                        heartbeat_time: Some(micros_to_timestamp(milestones_runtime::wire::now_micros())),
                    })
                }
            };
            Ok(pb::WatchChangesResponse { kind: Some(kind) })
        });
        Ok(Response::new(Box::pin(stream)))
    }
}
