//! The two feeds this service consumes: goal's change feed (the org copy
//! that visibility and the manager chain read) and progress's milestone
//! event feed (which the rules turn into awards).
//!
//! Each consumer applies an event and moves its cursor in one transaction,
//! after locking the cursor row: a replayed event (delivery is
//! at-least-once) or one that a second replica already applied is skipped.
//! Both reconnect with backoff when their peer is unreachable.

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use milestones_api::goal as goal_pb;
use milestones_api::goal::change_event::Resource;
use milestones_api::goal::goal_service_client::GoalServiceClient;
use milestones_api::progress as progress_pb;
use milestones_api::progress::progress_service_client::ProgressServiceClient;
use milestones_api::recognition as pb;
use milestones_domain::calendar::format_date;
use milestones_domain::names::{Collection, Owner};
use milestones_runtime::identity::{ServiceBearer, ServiceIdentity};
use milestones_runtime::telemetry::feed_span;
use milestones_runtime::wire::{date_from_wire, date_to_wire, now_micros};
use milestones_runtime::ApiError;
use prost::Message;
use sea_orm::ConnectionTrait;
use tokio::sync::watch;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::Code;
use tracing::Instrument;

use crate::domain::competition_ranks;
use crate::ops::awards::{candidate_rules, complete_owner_teams, EventFacts, Standings};
use crate::ops::{Recognition, EVENT_LOG};
use crate::store::{exec, load_cursor, lock_cursor, store_cursor};

/// The cursor row of goal's change feed.
pub const GOAL_FEED: &str = "goal.changes";
/// The cursor row of progress's milestone event feed.
pub const PROGRESS_FEED: &str = "progress.milestone_events";
/// Who this service is in the tokens it mints.
const SUBJECT: &str = "recognition-service";

/// Runs `consume` until `stop` flips, again after each failure with
/// exponential backoff (100 ms to 5 s).
pub async fn supervise<F, Fut>(feed: &'static str, mut stop: watch::Receiver<bool>, mut consume: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let mut backoff = Duration::from_millis(100);
    loop {
        if *stop.borrow() {
            return;
        }
        let result = tokio::select! {
            r = consume() => r,
            _ = async { let _ = stop.wait_for(|s| *s).await; } => return,
        };
        match result {
            Ok(()) => backoff = Duration::from_millis(100),
            Err(e) => {
                tracing::warn!(
                    feed,
                    error = format!("{e:#}"),
                    retry_in_ms = backoff.as_millis() as u64,
                    "feed interrupted"
                );
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = async { let _ = stop.wait_for(|s| *s).await; } => return,
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// Adds this service's credentials (and the trace context) to every call.
pub type Bearer = ServiceBearer;

/// Credentials for calls acting in `tenant`, or in every tenant (feeds).
fn bearer(identity: &ServiceIdentity, tenant: Option<&str>) -> anyhow::Result<Bearer> {
    identity.interceptor(SUBJECT, tenant)
}

async fn connect(identity: &ServiceIdentity, endpoint: &str) -> anyhow::Result<Channel> {
    Ok(identity
        .endpoint(endpoint)?
        .connect_timeout(Duration::from_secs(3))
        .connect()
        .await?)
}

// === Goal's change feed ===

/// One connection's worth of consuming goal's feed.
pub async fn consume_goal(reco: &Recognition, endpoint: &str) -> anyhow::Result<()> {
    let channel = connect(&reco.identity, endpoint).await?;
    let mut client = GoalServiceClient::with_interceptor(channel, bearer(&reco.identity, None)?);
    let cursor = load_cursor(reco.db.conn(), GOAL_FEED).await?;
    let mut stream = client
        .watch_changes(goal_pb::WatchChangesRequest { after_sequence: cursor })
        .await?
        .into_inner();
    while let Some(msg) = stream.message().await? {
        if let Some(goal_pb::watch_changes_response::Kind::Event(event)) = msg.kind {
            let span = feed_span(
                "goal.changes",
                "recognition",
                event.sequence,
                &event.trace_parent,
                event.event_time.as_ref(),
            );
            reco.apply_goal_change(&event).instrument(span).await?;
        }
    }
    Ok(())
}

fn id_of(collection: Collection, name: &str) -> Result<String, ApiError> {
    collection
        .parse(name)
        .map_err(|e| ApiError::Internal(anyhow::anyhow!("goal sent a bad name {name:?}: {e}")))
}

fn date_text(d: Option<&milestones_api::Date>) -> Option<String> {
    date_from_wire(d).ok().flatten().map(format_date)
}

async fn upsert_org(conn: &impl ConnectionTrait, event: &goal_pb::ChangeEvent) -> Result<(), ApiError> {
    let tenant = event.tenant_id.as_str();
    let deleted = event.change_type == goal_pb::ChangeType::Deleted as i32;
    let Some(resource) = &event.resource else {
        return Ok(());
    };
    let delete = |table: &'static str, id: String| async move {
        exec(conn, &format!("DELETE FROM {table} WHERE id = $1"), vec![id.into()]).await
    };
    match resource {
        Resource::TenantSettings(s) => {
            exec(
                conn,
                "INSERT INTO org_settings (tenant_id, time_zone) VALUES ($1, $2) \
                 ON CONFLICT (tenant_id) DO UPDATE SET time_zone = excluded.time_zone",
                vec![tenant.into(), s.time_zone.clone().into()],
            )
            .await?;
        }
        Resource::Team(t) => {
            let id = id_of(Collection::Teams, &t.name)?;
            if deleted {
                delete("org_teams", id).await?;
            } else {
                let parent = if t.parent.is_empty() {
                    None
                } else {
                    Some(id_of(Collection::Teams, &t.parent)?)
                };
                exec(
                    conn,
                    "INSERT INTO org_teams (id, tenant_id, parent_id) VALUES ($1, $2, $3) \
                     ON CONFLICT (id) DO UPDATE SET parent_id = excluded.parent_id",
                    vec![id.into(), tenant.into(), parent.into()],
                )
                .await?;
            }
        }
        Resource::Member(m) => {
            let id = id_of(Collection::Members, &m.name)?;
            if deleted {
                delete("org_members", id).await?;
            } else {
                let role = match goal_pb::MemberRole::try_from(m.role) {
                    Ok(goal_pb::MemberRole::Manager) => "manager",
                    Ok(goal_pb::MemberRole::Admin) => "admin",
                    _ => "rep",
                };
                let subject = (!m.subject.is_empty()).then(|| m.subject.clone());
                exec(
                    conn,
                    "INSERT INTO org_members (id, tenant_id, display_name, role, subject) VALUES ($1, $2, $3, $4, $5) \
                     ON CONFLICT (id) DO UPDATE SET display_name = excluded.display_name, role = excluded.role, \
                     subject = excluded.subject",
                    vec![
                        id.into(),
                        tenant.into(),
                        m.display_name.clone().into(),
                        role.into(),
                        subject.into(),
                    ],
                )
                .await?;
            }
        }
        Resource::Membership(ms) => {
            let id = id_of(Collection::Memberships, &ms.name)?;
            if deleted {
                delete("org_memberships", id).await?;
            } else {
                exec(
                    conn,
                    "INSERT INTO org_memberships (id, tenant_id, member_id, team_id, start_date, end_date) \
                     VALUES ($1, $2, $3, $4, $5, $6) \
                     ON CONFLICT (id) DO UPDATE SET start_date = excluded.start_date, end_date = excluded.end_date",
                    vec![
                        id.into(),
                        tenant.into(),
                        id_of(Collection::Members, &ms.member)?.into(),
                        id_of(Collection::Teams, &ms.team)?.into(),
                        date_text(ms.start_date.as_ref()).unwrap_or_default().into(),
                        date_text(ms.end_date.as_ref()).into(),
                    ],
                )
                .await?;
            }
        }
        Resource::Metric(m) => {
            let id = id_of(Collection::Metrics, &m.name)?;
            if deleted {
                delete("org_metrics", id).await?;
            } else {
                exec(
                    conn,
                    "INSERT INTO org_metrics (id, tenant_id, display_name) VALUES ($1, $2, $3) \
                     ON CONFLICT (id) DO UPDATE SET display_name = excluded.display_name",
                    vec![id.into(), tenant.into(), m.display_name.clone().into()],
                )
                .await?;
            }
        }
        Resource::Milestone(m) => {
            let id = id_of(Collection::Milestones, &m.name)?;
            if deleted {
                delete("org_milestones", id).await?;
            } else {
                exec(
                    conn,
                    "INSERT INTO org_milestones (id, tenant_id, display_name, owner) VALUES ($1, $2, $3, $4) \
                     ON CONFLICT (id) DO UPDATE SET display_name = excluded.display_name",
                    vec![
                        id.into(),
                        tenant.into(),
                        m.display_name.clone().into(),
                        m.owner.clone().into(),
                    ],
                )
                .await?;
            }
        }
        Resource::MilestoneRevision(_) | Resource::MilestoneReview(_) => {}
    }
    Ok(())
}

impl Recognition {
    /// Applies one goal change and moves the cursor, in one transaction.
    pub async fn apply_goal_change(&self, event: &goal_pb::ChangeEvent) -> Result<(), ApiError> {
        let txn = self.db.begin_write().await?;
        if event.sequence <= lock_cursor(&*txn, GOAL_FEED).await? {
            return Ok(());
        }
        upsert_org(&*txn, event).await?;
        store_cursor(&*txn, GOAL_FEED, event.sequence).await?;
        txn.commit().await?;
        Ok(())
    }
}

// === Progress's milestone event feed ===

type ProgressClient = ProgressServiceClient<InterceptedService<Channel, Bearer>>;

/// Which leaderboard: tenant, scope team, metric, start and end date.
type BoardKey = (String, Option<String>, String, String, String);

/// The rankings at period close, per (scope team, metric, start, end),
/// fetched from progress's leaderboard and kept while the connection lasts.
#[derive(Default)]
pub struct StandingsCache {
    boards: HashMap<BoardKey, HashMap<String, u32>>,
}

/// One connection's worth of consuming progress's milestone events.
pub async fn consume_progress(reco: &Recognition, endpoint: &str) -> anyhow::Result<()> {
    let channel = connect(&reco.identity, endpoint).await?;
    let mut feed = ProgressServiceClient::with_interceptor(channel.clone(), bearer(&reco.identity, None)?);
    let cursor = load_cursor(reco.db.conn(), PROGRESS_FEED).await?;
    let mut stream = feed
        .watch_milestone_events(progress_pb::WatchMilestoneEventsRequest { after_sequence: cursor })
        .await?
        .into_inner();
    let mut cache = StandingsCache::default();
    while let Some(msg) = stream.message().await? {
        if let Some(progress_pb::watch_milestone_events_response::Kind::Event(event)) = msg.kind {
            let span = feed_span(
                "progress.milestone_events",
                "recognition",
                event.sequence,
                &event.trace_parent,
                event.event_time.as_ref(),
            );
            reco.apply_progress_event(&event, &channel, &mut cache)
                .instrument(span)
                .await?;
        }
    }
    Ok(())
}

impl Recognition {
    /// Applies one milestone event and moves the cursor, in one
    /// transaction; returns whether it was new.
    pub async fn apply_progress_event(
        &self,
        event: &progress_pb::MilestoneEvent,
        channel: &Channel,
        cache: &mut StandingsCache,
    ) -> anyhow::Result<bool> {
        let mut facts = EventFacts::parse(event);
        match facts.as_mut() {
            Some(f) => complete_owner_teams(self.db.conn(), f).await?,
            None => tracing::warn!(
                sequence = event.sequence,
                "milestone event without usable fields skipped"
            ),
        }
        // Rankings come over the network: fetch them before the
        // transaction, so it stays short.
        let standings = match &facts {
            Some(f) => self.standings(f, channel, cache).await?,
            None => Standings::new(),
        };
        let txn = self.db.begin_write().await?;
        if event.sequence <= lock_cursor(&*txn, PROGRESS_FEED).await? {
            return Ok(false);
        }
        let published = match facts.as_mut() {
            Some(f) => self.apply_milestone_event(&*txn, f, &standings).await?,
            None => Vec::new(),
        };
        let now = now_micros();
        let any = !published.is_empty();
        for e in published {
            EVENT_LOG.append(&*txn, &e.tenant_id, e.encode_to_vec(), now).await?;
        }
        store_cursor(&*txn, PROGRESS_FEED, event.sequence).await?;
        txn.commit().await?;
        if any {
            self.events.notify();
        }
        Ok(true)
    }

    /// For a PERIOD_ENDED event of a member's milestone, the final ranking
    /// each TOP_N rule in force needs.
    async fn standings(
        &self,
        facts: &EventFacts,
        channel: &Channel,
        cache: &mut StandingsCache,
    ) -> anyhow::Result<Standings> {
        let mut out = Standings::new();
        if facts.kind != progress_pb::MilestoneEventKind::PeriodEnded || !matches!(facts.owner, Owner::Member(_)) {
            return Ok(out);
        }
        let rules: Vec<_> = candidate_rules(self.db.conn(), facts)
            .await?
            .into_iter()
            .filter(|r| r.trigger == pb::RuleTrigger::TopNAtPeriodClose)
            .collect();
        if rules.is_empty() {
            return Ok(out);
        }
        let mut client: ProgressClient =
            ProgressServiceClient::with_interceptor(channel.clone(), bearer(&self.identity, Some(&facts.tenant))?);
        for rule in rules {
            let key = (
                facts.tenant.clone(),
                rule.scope_team.clone(),
                facts.metric.clone(),
                facts.start.clone(),
                facts.end.clone(),
            );
            if !cache.boards.contains_key(&key) {
                if cache.boards.len() > 256 {
                    cache.boards.clear();
                }
                let board = leaderboard(&mut client, &key.1, facts).await?;
                cache.boards.insert(key.clone(), board);
            }
            out.insert(
                rule.rule_id.clone(),
                cache.boards.get(&key).cloned().unwrap_or_default(),
            );
        }
        Ok(out)
    }
}

/// Ranks of the members with a milestone on the period, by attainment, from
/// progress's leaderboard of the scope. A scope progress does not know
/// ranks nobody.
async fn leaderboard(
    client: &mut ProgressClient,
    team: &Option<String>,
    facts: &EventFacts,
) -> anyhow::Result<HashMap<String, u32>> {
    let range = match (
        milestones_domain::calendar::parse_date(&facts.start),
        milestones_domain::calendar::parse_date(&facts.end),
    ) {
        (Some(s), Some(e)) => progress_pb::DateRange {
            start_date: Some(date_to_wire(s)),
            end_date: Some(date_to_wire(e)),
        },
        _ => return Ok(HashMap::new()),
    };
    let mut scores = Vec::new();
    let mut token = String::new();
    loop {
        let page = client
            .get_leaderboard(progress_pb::GetLeaderboardRequest {
                team: team.as_deref().map(|t| Collection::Teams.name(t)).unwrap_or_default(),
                metric: Collection::Metrics.name(&facts.metric),
                period: Some(progress_pb::get_leaderboard_request::Period::DateRange(range)),
                rank_by: progress_pb::RankBy::Attainment as i32,
                page_size: 500,
                page_token: token,
            })
            .await;
        let page = match page {
            Ok(p) => p.into_inner(),
            Err(s) if matches!(s.code(), Code::NotFound | Code::InvalidArgument) => return Ok(HashMap::new()),
            Err(s) => return Err(s.into()),
        };
        for e in page.entries {
            if let (false, Some(bp), Ok(member)) = (
                e.milestone.is_empty(),
                e.attainment_basis_points,
                Collection::Members.parse(&e.member),
            ) {
                scores.push((member, bp));
            }
        }
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    Ok(competition_ranks(&scores).into_iter().collect())
}
