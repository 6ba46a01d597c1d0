//! The `RecognitionService` gRPC surface: authenticate, authorise, hand the
//! request to a use case, map its error. Nothing else.

use std::collections::HashMap;
use std::pin::Pin;

use futures::{Stream, StreamExt};
use milestones_api::recognition as pb;
use milestones_api::recognition::recognition_service_server::RecognitionService;
use milestones_runtime::auth::{Caller, Role};
use milestones_runtime::feed::{FeedItem, FeedTiming};
use milestones_runtime::wire::{micros_to_timestamp, now_micros};
use milestones_runtime::ApiError;
use prost::Message;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use tonic_types::StatusExt;

use crate::domain::Viewer;
use crate::ops::awards::may_see_recognition;
use crate::ops::people::may_see_kudos;
use crate::ops::{Ctx, Recognition, Rejection, EVENT_LOG};
use crate::store;

/// `ErrorInfo.domain` of every error this service returns.
pub const ERROR_DOMAIN: &str = "recognition.milestones.dev";

const ADMIN: &[Role] = &[Role::Admin];
const READERS: &[Role] = &[Role::Admin, Role::Manager, Role::Rep, Role::Service];
const PEOPLE: &[Role] = &[Role::Admin, Role::Manager, Role::Rep];

/// The gRPC handler.
#[derive(Clone)]
pub struct RecognitionApi {
    pub reco: Recognition,
    pub timing: FeedTiming,
    pub stop_feeds: watch::Receiver<bool>,
}

fn status(e: ApiError) -> Status {
    e.into_status(ERROR_DOMAIN)
}

/// The status of a rejection: the error's, plus its metadata and retry
/// delay.
fn rejected(r: Rejection) -> Status {
    let base = status(r.error);
    if r.metadata.is_empty() && r.retry_after.is_none() {
        return base;
    }
    let mut details = base.get_error_details();
    if let Some(info) = details.error_info().cloned() {
        let mut metadata = info.metadata;
        metadata.extend(r.metadata.into_iter().map(|(k, v)| (k.to_string(), v)));
        details.set_error_info(info.reason, info.domain, metadata);
    }
    if let Some(wait) = r.retry_after {
        details.set_retry_info(Some(wait));
    }
    Status::with_error_details(base.code(), base.message(), details)
}

fn caller<T>(req: &Request<T>, roles: &[Role], action: &str) -> Result<Caller, Status> {
    Caller::authorize(req, roles, action, "WatchRecognitions").map_err(status)
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

fn reply<T>(r: Result<T, ApiError>) -> Reply<T> {
    r.map(Response::new).map_err(status)
}

fn required<T>(value: Option<T>, field: &str) -> Result<T, Status> {
    value.ok_or_else(|| status(ApiError::invalid(field, "is required")))
}

#[tonic::async_trait]
impl RecognitionService for RecognitionApi {
    async fn create_badge(&self, req: Request<pb::CreateBadgeRequest>) -> Reply<pb::Badge> {
        let ctx = write_ctx(&req, ADMIN, "CreateBadge", &req.get_ref().request_id, |r| {
            r.request_id.clear()
        })?;
        let badge = required(req.into_inner().badge, "badge")?;
        reply(self.reco.create_badge(&ctx, badge).await)
    }

    async fn get_badge(&self, req: Request<pb::GetBadgeRequest>) -> Reply<pb::Badge> {
        let caller = caller(&req, READERS, "GetBadge")?;
        reply(self.reco.get_badge(&caller, &req.get_ref().name).await)
    }

    async fn list_badges(&self, req: Request<pb::ListBadgesRequest>) -> Reply<pb::ListBadgesResponse> {
        let caller = caller(&req, READERS, "ListBadges")?;
        reply(self.reco.list_badges(&caller, req.into_inner()).await)
    }

    async fn update_badge(&self, req: Request<pb::UpdateBadgeRequest>) -> Reply<pb::Badge> {
        let ctx = write_ctx(&req, ADMIN, "UpdateBadge", &req.get_ref().request_id, |r| {
            r.request_id.clear()
        })?;
        let r = req.into_inner();
        let badge = required(r.badge, "badge")?;
        reply(self.reco.update_badge(&ctx, badge, r.update_mask).await)
    }

    async fn delete_badge(&self, req: Request<pb::DeleteBadgeRequest>) -> Reply<pb::DeleteBadgeResponse> {
        let ctx = write_ctx(&req, ADMIN, "DeleteBadge", &req.get_ref().request_id, |r| {
            r.request_id.clear()
        })?;
        let r = req.get_ref();
        reply(self.reco.delete_badge(&ctx, &r.name, &r.etag).await)
    }

    async fn create_rule(&self, req: Request<pb::CreateRuleRequest>) -> Reply<pb::Rule> {
        let ctx = write_ctx(&req, ADMIN, "CreateRule", &req.get_ref().request_id, |r| {
            r.request_id.clear()
        })?;
        let rule = required(req.into_inner().rule, "rule")?;
        reply(self.reco.create_rule(&ctx, rule).await)
    }

    async fn get_rule(&self, req: Request<pb::GetRuleRequest>) -> Reply<pb::Rule> {
        let caller = caller(&req, READERS, "GetRule")?;
        reply(self.reco.get_rule(&caller, &req.get_ref().name).await)
    }

    async fn list_rules(&self, req: Request<pb::ListRulesRequest>) -> Reply<pb::ListRulesResponse> {
        let caller = caller(&req, READERS, "ListRules")?;
        reply(self.reco.list_rules(&caller, req.into_inner()).await)
    }

    async fn update_rule(&self, req: Request<pb::UpdateRuleRequest>) -> Reply<pb::Rule> {
        let ctx = write_ctx(&req, ADMIN, "UpdateRule", &req.get_ref().request_id, |r| {
            r.request_id.clear()
        })?;
        let r = req.into_inner();
        let rule = required(r.rule, "rule")?;
        reply(self.reco.update_rule(&ctx, rule, r.update_mask).await)
    }

    async fn delete_rule(&self, req: Request<pb::DeleteRuleRequest>) -> Reply<pb::DeleteRuleResponse> {
        let ctx = write_ctx(&req, ADMIN, "DeleteRule", &req.get_ref().request_id, |r| {
            r.request_id.clear()
        })?;
        let r = req.get_ref();
        reply(self.reco.delete_rule(&ctx, &r.name, &r.etag).await)
    }

    async fn get_recognition(&self, req: Request<pb::GetRecognitionRequest>) -> Reply<pb::Recognition> {
        let caller = caller(&req, READERS, "GetRecognition")?;
        reply(self.reco.get_recognition(&caller, &req.get_ref().name).await)
    }

    async fn list_recognitions(
        &self,
        req: Request<pb::ListRecognitionsRequest>,
    ) -> Reply<pb::ListRecognitionsResponse> {
        let caller = caller(&req, READERS, "ListRecognitions")?;
        reply(self.reco.list_recognitions(&caller, req.into_inner()).await)
    }

    async fn get_points_balance(&self, req: Request<pb::GetPointsBalanceRequest>) -> Reply<pb::PointsBalance> {
        let caller = caller(&req, READERS, "GetPointsBalance")?;
        reply(self.reco.get_points_balance(&caller, &req.get_ref().name).await)
    }

    async fn list_points_entries(
        &self,
        req: Request<pb::ListPointsEntriesRequest>,
    ) -> Reply<pb::ListPointsEntriesResponse> {
        let caller = caller(&req, READERS, "ListPointsEntries")?;
        reply(self.reco.list_points_entries(&caller, req.into_inner()).await)
    }

    async fn adjust_points(&self, req: Request<pb::AdjustPointsRequest>) -> Reply<pb::PointsEntry> {
        let ctx = write_ctx(&req, ADMIN, "AdjustPoints", &req.get_ref().request_id, |r| {
            r.request_id.clear()
        })?;
        self.reco
            .adjust_points(&ctx, req.into_inner())
            .await
            .map(Response::new)
            .map_err(rejected)
    }

    async fn create_reward(&self, req: Request<pb::CreateRewardRequest>) -> Reply<pb::Reward> {
        let ctx = write_ctx(&req, ADMIN, "CreateReward", &req.get_ref().request_id, |r| {
            r.request_id.clear()
        })?;
        let reward = required(req.into_inner().reward, "reward")?;
        reply(self.reco.create_reward(&ctx, reward).await)
    }

    async fn get_reward(&self, req: Request<pb::GetRewardRequest>) -> Reply<pb::Reward> {
        let caller = caller(&req, READERS, "GetReward")?;
        reply(self.reco.get_reward(&caller, &req.get_ref().name).await)
    }

    async fn list_rewards(&self, req: Request<pb::ListRewardsRequest>) -> Reply<pb::ListRewardsResponse> {
        let caller = caller(&req, READERS, "ListRewards")?;
        reply(self.reco.list_rewards(&caller, req.into_inner()).await)
    }

    async fn update_reward(&self, req: Request<pb::UpdateRewardRequest>) -> Reply<pb::Reward> {
        let ctx = write_ctx(&req, ADMIN, "UpdateReward", &req.get_ref().request_id, |r| {
            r.request_id.clear()
        })?;
        let r = req.into_inner();
        let reward = required(r.reward, "reward")?;
        reply(self.reco.update_reward(&ctx, reward, r.update_mask).await)
    }

    async fn delete_reward(&self, req: Request<pb::DeleteRewardRequest>) -> Reply<pb::DeleteRewardResponse> {
        let ctx = write_ctx(&req, ADMIN, "DeleteReward", &req.get_ref().request_id, |r| {
            r.request_id.clear()
        })?;
        let r = req.get_ref();
        reply(self.reco.delete_reward(&ctx, &r.name, &r.etag).await)
    }

    async fn redeem_reward(&self, req: Request<pb::RedeemRewardRequest>) -> Reply<pb::Redemption> {
        let ctx = write_ctx(&req, PEOPLE, "RedeemReward", &req.get_ref().request_id, |r| {
            r.request_id.clear()
        })?;
        self.reco
            .redeem_reward(&ctx, req.into_inner())
            .await
            .map(Response::new)
            .map_err(rejected)
    }

    async fn get_redemption(&self, req: Request<pb::GetRedemptionRequest>) -> Reply<pb::Redemption> {
        let caller = caller(&req, READERS, "GetRedemption")?;
        reply(self.reco.get_redemption(&caller, &req.get_ref().name).await)
    }

    async fn list_redemptions(&self, req: Request<pb::ListRedemptionsRequest>) -> Reply<pb::ListRedemptionsResponse> {
        let caller = caller(&req, READERS, "ListRedemptions")?;
        reply(self.reco.list_redemptions(&caller, req.into_inner()).await)
    }

    async fn give_kudos(&self, req: Request<pb::GiveKudosRequest>) -> Reply<pb::Kudos> {
        let ctx = write_ctx(&req, PEOPLE, "GiveKudos", &req.get_ref().request_id, |r| {
            r.request_id.clear()
        })?;
        self.reco
            .give_kudos(&ctx, req.into_inner())
            .await
            .map(Response::new)
            .map_err(rejected)
    }

    async fn get_kudos(&self, req: Request<pb::GetKudosRequest>) -> Reply<pb::Kudos> {
        let caller = caller(&req, READERS, "GetKudos")?;
        reply(self.reco.get_kudos(&caller, &req.get_ref().name).await)
    }

    async fn list_kudos(&self, req: Request<pb::ListKudosRequest>) -> Reply<pb::ListKudosResponse> {
        let caller = caller(&req, READERS, "ListKudos")?;
        reply(self.reco.list_kudos(&caller, req.into_inner()).await)
    }

    async fn create_feedback(&self, req: Request<pb::CreateFeedbackRequest>) -> Reply<pb::Feedback> {
        let ctx = write_ctx(&req, PEOPLE, "CreateFeedback", &req.get_ref().request_id, |r| {
            r.request_id.clear()
        })?;
        let feedback = required(req.into_inner().feedback, "feedback")?;
        reply(self.reco.create_feedback(&ctx, feedback).await)
    }

    async fn get_feedback(&self, req: Request<pb::GetFeedbackRequest>) -> Reply<pb::Feedback> {
        let caller = caller(&req, PEOPLE, "GetFeedback")?;
        reply(self.reco.get_feedback(&caller, &req.get_ref().name).await)
    }

    async fn list_feedback(&self, req: Request<pb::ListFeedbackRequest>) -> Reply<pb::ListFeedbackResponse> {
        let caller = caller(&req, PEOPLE, "ListFeedback")?;
        reply(self.reco.list_feedback(&caller, req.into_inner()).await)
    }

    type WatchRecognitionsStream = Pin<Box<dyn Stream<Item = Result<pb::WatchRecognitionsResponse, Status>> + Send>>;

    async fn watch_recognitions(
        &self,
        req: Request<pb::WatchRecognitionsRequest>,
    ) -> Reply<Self::WatchRecognitionsStream> {
        let caller = caller(&req, READERS, "WatchRecognitions")?;
        let scope = caller.feed_scope();
        let db = self.reco.db.clone();
        let viewer = match &scope {
            // Every tenant: a suite service, which sees everything.
            None => Viewer {
                sees_all: true,
                ..Viewer::default()
            },
            Some(_) => store::viewer(db.conn(), &caller).await.map_err(status)?,
        };
        let mut items = Box::pin(
            EVENT_LOG
                .watch(
                    db.clone(),
                    scope.clone(),
                    req.get_ref().after_sequence,
                    self.reco.events.clone(),
                    self.timing,
                    self.stop_feeds.clone(),
                )
                .await
                .map_err(status)?,
        );
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(async move {
            let tenant = caller.tenant_id.clone();
            let mut cache = HashMap::new();
            while let Some(item) = items.next().await {
                let kind = match item {
                    Err(e) => {
                        let _ = tx.send(Err(status(e))).await;
                        return;
                    }
                    Ok(FeedItem::Heartbeat { head_sequence }) => {
                        pb::watch_recognitions_response::Kind::Heartbeat(pb::FeedHeartbeat {
                            head_sequence,
                            heartbeat_time: Some(micros_to_timestamp(now_micros())),
                        })
                    }
                    Ok(FeedItem::Event(stored)) => {
                        let mut event: pb::RecognitionEvent = match stored.decode() {
                            Ok(e) => e,
                            Err(e) => {
                                let _ = tx.send(Err(status(e))).await;
                                return;
                            }
                        };
                        event.sequence = stored.sequence;
                        if cache.len() > 1_000 {
                            cache.clear();
                        }
                        let visible = match &event.subject {
                            _ if viewer.sees_all => Ok(true),
                            Some(pb::recognition_event::Subject::Recognition(r)) => {
                                may_see_recognition(db.conn(), &tenant, &viewer, r, &mut cache).await
                            }
                            Some(pb::recognition_event::Subject::Kudos(k)) => {
                                may_see_kudos(db.conn(), &tenant, &viewer, k, &mut cache).await
                            }
                            None => Ok(false),
                        };
                        match visible {
                            Ok(true) => {}
                            Ok(false) => continue,
                            Err(e) => {
                                let _ = tx.send(Err(status(e))).await;
                                return;
                            }
                        }
                        if scope.is_some() {
                            event.tenant_id.clear();
                        }
                        pb::watch_recognitions_response::Kind::Event(event)
                    }
                };
                if tx
                    .send(Ok(pb::WatchRecognitionsResponse { kind: Some(kind) }))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}
