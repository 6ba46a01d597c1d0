//! People's recognition: kudos between peers (published on the recognition
//! feed, with a daily limit per giver) and private manager feedback.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{Days, TimeZone, Utc};
use milestones_api::recognition as pb;
use milestones_domain::calendar::format_date;
use milestones_domain::names::Collection;
use milestones_domain::Violations;
use milestones_runtime::auth::Caller;
use milestones_runtime::paging::Page;
use milestones_runtime::wire::{micros_to_timestamp, now_micros};
use milestones_runtime::ApiError;
use sea_orm::{ConnectionTrait, QueryResult, Value};

use super::points::newest_first;
use super::{newest_key, parse_name, parse_newest_key, time_window, Ctx, Kind, Recognition, Rejection};
use crate::domain::{Audience, Viewer};
use crate::store::{self, exec, for_update, row, rows, MemberRow};

/// Rows scanned per query while filling a page the caller may only partly
/// see.
const SCAN_BATCH: u64 = 200;

const KUDOS_COLUMNS: &str = "id, giver_id, recipient_id, milestone_id, message, visibility, create_time";
const FEEDBACK_COLUMNS: &str = "id, member_id, author_id, milestone_id, body, kind, create_time";

fn kudos_of(r: &QueryResult) -> Result<pb::Kudos, ApiError> {
    Ok(pb::Kudos {
        name: Kind::Kudos.name(&r.try_get::<String>("", "id")?),
        giver: Collection::Members.name(&r.try_get::<String>("", "giver_id")?),
        recipient: Collection::Members.name(&r.try_get::<String>("", "recipient_id")?),
        milestone: r
            .try_get::<Option<String>>("", "milestone_id")?
            .map(|m| Collection::Milestones.name(&m))
            .unwrap_or_default(),
        message: r.try_get("", "message")?,
        visibility: r.try_get("", "visibility")?,
        create_time: Some(micros_to_timestamp(r.try_get("", "create_time")?)),
    })
}

fn feedback_of(r: &QueryResult) -> Result<pb::Feedback, ApiError> {
    Ok(pb::Feedback {
        name: Kind::Feedback.name(&r.try_get::<String>("", "id")?),
        member: Collection::Members.name(&r.try_get::<String>("", "member_id")?),
        author: Collection::Members.name(&r.try_get::<String>("", "author_id")?),
        milestone: r
            .try_get::<Option<String>>("", "milestone_id")?
            .map(|m| Collection::Milestones.name(&m))
            .unwrap_or_default(),
        body: r.try_get("", "body")?,
        kind: r.try_get("", "kind")?,
        create_time: Some(micros_to_timestamp(r.try_get("", "create_time")?)),
    })
}

/// Parses an optional name into `v`, reporting a bad one under `field`.
fn optional_id(v: &mut Violations, collection: Collection, field: &str, name: &str) -> Option<String> {
    if name.is_empty() {
        return None;
    }
    collection.parse(name).map_err(|e| v.add(field, e)).ok()
}

/// The audience of kudos: their recipient's, plus the giver.
async fn kudos_audience(
    conn: &impl ConnectionTrait,
    tenant: &str,
    k: &pb::Kudos,
    cache: &mut HashMap<String, Audience>,
) -> Result<Audience, ApiError> {
    let recipient = Collection::Members.parse(&k.recipient).unwrap_or_default();
    if !cache.contains_key(&recipient) {
        let a = store::member_audience(conn, tenant, &recipient).await?;
        cache.insert(recipient.clone(), a);
    }
    let mut a = cache.get(&recipient).cloned().unwrap_or_default();
    a.giver = Collection::Members.parse(&k.giver).ok();
    Ok(a)
}

/// Whether the viewer may see the kudos.
pub async fn may_see_kudos(
    conn: &impl ConnectionTrait,
    tenant: &str,
    viewer: &Viewer,
    k: &pb::Kudos,
    cache: &mut HashMap<String, Audience>,
) -> Result<bool, ApiError> {
    let visibility = pb::Visibility::try_from(k.visibility).unwrap_or(pb::Visibility::Private);
    if viewer.sees_all || visibility == pb::Visibility::Public {
        return Ok(true);
    }
    let audience = kudos_audience(conn, tenant, k, cache).await?;
    Ok(viewer.may_see(visibility, &audience))
}

impl Recognition {
    /// The member the caller's token belongs to; PERMISSION_DENIED without
    /// one.
    async fn caller_member(&self, caller: &Caller, action: &str) -> Result<MemberRow, ApiError> {
        store::member_by_subject(self.db.conn(), &caller.tenant_id, &caller.subject)
            .await?
            .ok_or_else(|| {
                ApiError::permission_denied(format!(
                    "{action} needs a token whose subject belongs to a member (set Member.subject in the goal service)"
                ))
            })
    }

    async fn require_exists(
        &self,
        conn: &impl ConnectionTrait,
        tenant: &str,
        member: &str,
        milestone: Option<&str>,
    ) -> Result<(), ApiError> {
        if store::member(conn, tenant, member).await?.is_none() {
            return Err(ApiError::not_found(Collection::Members.name(member)));
        }
        if let Some(m) = milestone {
            if !store::milestone_exists(conn, tenant, m).await? {
                return Err(ApiError::not_found(Collection::Milestones.name(m)));
            }
        }
        Ok(())
    }

    pub async fn give_kudos(&self, ctx: &Ctx, req: pb::GiveKudosRequest) -> Result<pb::Kudos, Rejection> {
        let giver = self.caller_member(&ctx.caller, "GiveKudos").await?;
        let mut v = Violations::new();
        let recipient = Collection::Members
            .parse(&req.recipient)
            .map_err(|e| v.add("recipient", e))
            .ok();
        if recipient.as_deref() == Some(giver.id.as_str()) {
            v.add("recipient", "must not be yourself: kudos recognise a peer");
        }
        let milestone = optional_id(&mut v, Collection::Milestones, "milestone", &req.milestone);
        v.check_text("message", &req.message, 1, 500);
        match pb::Visibility::try_from(req.visibility) {
            Ok(pb::Visibility::Unspecified) => v.add("visibility", "is required"),
            Ok(_) => {}
            Err(_) => v.add("visibility", format!("{} is not a Visibility", req.visibility)),
        }
        let recipient = v.into_result(recipient)?.unwrap_or_default();
        let (txn, replay) = self.begin::<pb::Kudos>(ctx).await?;
        if let Some(r) = replay {
            return Ok(r);
        }
        let conn = &*txn;
        let tenant = ctx.tenant();
        self.require_exists(conn, tenant, &recipient, milestone.as_deref())
            .await?;
        // Concurrent kudos of one giver take turns on the giver's row, so
        // the count below cannot be passed by two at once.
        let sql = format!("SELECT id FROM org_members WHERE id = $1{}", for_update(conn));
        row(conn, &sql, vec![giver.id.clone().into()]).await?;
        let today = store::tenant_today(conn, tenant).await?;
        let given: i64 = row(
            conn,
            "SELECT COUNT(*) AS n FROM kudos WHERE tenant_id = $1 AND giver_id = $2 AND giver_day = $3",
            vec![tenant.into(), giver.id.clone().into(), format_date(today).into()],
        )
        .await?
        .map(|r| r.try_get::<i64>("", "n"))
        .transpose()?
        .unwrap_or(0);
        if given >= i64::from(self.kudos_daily_limit) {
            return Err(self.kudos_limit(conn, tenant, today).await?);
        }
        let id = super::new_id();
        let now = now_micros();
        exec(
            conn,
            "INSERT INTO kudos (id, tenant_id, giver_id, recipient_id, milestone_id, message, visibility, giver_day, \
             create_time) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            vec![
                id.clone().into(),
                tenant.into(),
                giver.id.into(),
                recipient.into(),
                milestone.into(),
                req.message.clone().into(),
                req.visibility.into(),
                format_date(today).into(),
                now.into(),
            ],
        )
        .await?;
        let sql = format!("SELECT {KUDOS_COLUMNS} FROM kudos WHERE id = $1");
        let kudos = kudos_of(
            &row(conn, &sql, vec![id.into()])
                .await?
                .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("kudos vanished")))?,
        )?;
        let event = pb::RecognitionEvent {
            sequence: 0,
            event_time: Some(micros_to_timestamp(now)),
            tenant_id: tenant.to_string(),
            subject: Some(pb::recognition_event::Subject::Kudos(kudos.clone())),
        };
        Ok(self.finish(txn, ctx, vec![event], kudos).await?)
    }

    /// RESOURCE_EXHAUSTED (KUDOS_DAILY_LIMIT), retry at the tenant's next
    /// midnight.
    async fn kudos_limit(
        &self,
        conn: &impl ConnectionTrait,
        tenant: &str,
        today: chrono::NaiveDate,
    ) -> Result<Rejection, ApiError> {
        let zone = row(
            conn,
            "SELECT time_zone FROM org_settings WHERE tenant_id = $1",
            vec![tenant.into()],
        )
        .await?
        .and_then(|r| r.try_get::<String>("", "time_zone").ok())
        .and_then(|z| milestones_domain::tenant::parse_time_zone(&z).ok())
        .unwrap_or(chrono_tz::Tz::UTC);
        let midnight = today
            .checked_add_days(Days::new(1))
            .and_then(|d| d.and_hms_opt(0, 0, 0))
            .and_then(|t| zone.from_local_datetime(&t).earliest())
            .map(|t| t.with_timezone(&Utc));
        let wait = midnight
            .map(|m| (m - Utc::now()).to_std().unwrap_or(Duration::from_secs(1)))
            .unwrap_or(Duration::from_secs(3600));
        Ok(Rejection {
            error: ApiError::ResourceExhausted {
                reason: "KUDOS_DAILY_LIMIT",
                message: format!(
                    "you have given the most kudos allowed per day ({}); give more tomorrow",
                    self.kudos_daily_limit
                ),
            },
            metadata: vec![("limit", self.kudos_daily_limit.to_string())],
            retry_after: Some(wait),
        })
    }

    pub async fn get_kudos(&self, caller: &Caller, name: &str) -> Result<pb::Kudos, ApiError> {
        let id = Kind::Kudos.parse("name", name)?;
        let conn = self.db.conn();
        let sql = format!("SELECT {KUDOS_COLUMNS} FROM kudos WHERE id = $1 AND tenant_id = $2");
        let k = kudos_of(
            &row(conn, &sql, vec![id.into(), caller.tenant_id.clone().into()])
                .await?
                .ok_or_else(|| ApiError::not_found(name))?,
        )?;
        let viewer = store::viewer(conn, caller).await?;
        if !may_see_kudos(conn, &caller.tenant_id, &viewer, &k, &mut HashMap::new()).await? {
            return Err(ApiError::not_found(name));
        }
        Ok(k)
    }

    pub async fn list_kudos(
        &self,
        caller: &Caller,
        req: pb::ListKudosRequest,
    ) -> Result<pb::ListKudosResponse, ApiError> {
        let (start, end) = time_window(req.start_time.as_ref(), req.end_time.as_ref())?;
        let page = Page::parse(
            req.page_size,
            &req.page_token,
            &format!(
                "kudos|{}|{}|{}|{start:?}|{end:?}",
                req.recipient, req.giver, req.milestone
            ),
        )?;
        let mut base = format!("SELECT {KUDOS_COLUMNS} FROM kudos WHERE tenant_id = $1");
        let mut values: Vec<Value> = vec![caller.tenant_id.clone().into()];
        for (field, name, column, collection) in [
            ("recipient", &req.recipient, "recipient_id", Collection::Members),
            ("giver", &req.giver, "giver_id", Collection::Members),
            ("milestone", &req.milestone, "milestone_id", Collection::Milestones),
        ] {
            if !name.is_empty() {
                values.push(parse_name(collection, field, name)?.into());
                base.push_str(&format!(" AND {column} = ${}", values.len()));
            }
        }
        if let Some(s) = start {
            values.push(s.into());
            base.push_str(&format!(" AND create_time >= ${}", values.len()));
        }
        if let Some(e) = end {
            values.push(e.into());
            base.push_str(&format!(" AND create_time < ${}", values.len()));
        }
        let conn = self.db.conn();
        let viewer = store::viewer(conn, caller).await?;
        let mut cache = HashMap::new();
        let mut after = page.after.as_deref().map(parse_newest_key).transpose()?;
        let mut out = Vec::new();
        'scan: loop {
            let mut sql = base.clone();
            let mut vals = values.clone();
            newest_first(&mut sql, &mut vals, &after, SCAN_BATCH);
            let batch = rows(conn, &sql, vals).await?;
            let exhausted = (batch.len() as u64) < SCAN_BATCH;
            for r in &batch {
                let key = (r.try_get::<i64>("", "create_time")?, r.try_get::<String>("", "id")?);
                after = Some(key.clone());
                let k = kudos_of(r)?;
                if may_see_kudos(conn, &caller.tenant_id, &viewer, &k, &mut cache).await? {
                    out.push((newest_key(key.0, &key.1), k));
                    if out.len() as u64 >= page.fetch_limit() {
                        break 'scan;
                    }
                }
            }
            if exhausted {
                break;
            }
        }
        let (out, next_page_token) = page.finish(out, |(k, _)| k.clone());
        Ok(pb::ListKudosResponse {
            kudos: out.into_iter().map(|(_, k)| k).collect(),
            next_page_token,
        })
    }

    pub async fn create_feedback(&self, ctx: &Ctx, feedback: pb::Feedback) -> Result<pb::Feedback, ApiError> {
        let mut v = Violations::new();
        let member = Collection::Members
            .parse(&feedback.member)
            .map_err(|e| v.add("feedback.member", e))
            .ok();
        let milestone = optional_id(
            &mut v,
            Collection::Milestones,
            "feedback.milestone",
            &feedback.milestone,
        );
        v.check_text("feedback.body", &feedback.body, 1, 5000);
        match pb::FeedbackKind::try_from(feedback.kind) {
            Ok(pb::FeedbackKind::Unspecified) => v.add("feedback.kind", "is required"),
            Ok(_) => {}
            Err(_) => v.add("feedback.kind", format!("{} is not a FeedbackKind", feedback.kind)),
        }
        let member = v.into_result(member)?.unwrap_or_default();
        let author = self.caller_member(&ctx.caller, "CreateFeedback").await?;
        let (txn, replay) = self.begin::<pb::Feedback>(ctx).await?;
        if let Some(r) = replay {
            return Ok(r);
        }
        let conn = &*txn;
        let tenant = ctx.tenant();
        self.require_exists(conn, tenant, &member, milestone.as_deref()).await?;
        let viewer = store::viewer(conn, &ctx.caller).await?;
        let audience = store::member_audience(conn, tenant, &member).await?;
        if !viewer.in_manager_chain(&audience) {
            return Err(ApiError::permission_denied(
                "only a manager in the member's manager chain may write them feedback (not the member themself)",
            ));
        }
        let id = super::new_id();
        exec(
            conn,
            "INSERT INTO feedback (id, tenant_id, member_id, author_id, milestone_id, body, kind, create_time) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            vec![
                id.clone().into(),
                tenant.into(),
                member.into(),
                author.id.into(),
                milestone.into(),
                feedback.body.into(),
                feedback.kind.into(),
                now_micros().into(),
            ],
        )
        .await?;
        let sql = format!("SELECT {FEEDBACK_COLUMNS} FROM feedback WHERE id = $1");
        let out = feedback_of(
            &row(conn, &sql, vec![id.into()])
                .await?
                .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("feedback vanished")))?,
        )?;
        self.finish(txn, ctx, Vec::new(), out).await
    }

    /// Whether the viewer is the feedback's member or in their chain.
    async fn sees_feedback(
        &self,
        viewer: &Viewer,
        tenant: &str,
        member: &str,
        cache: &mut HashMap<String, Audience>,
    ) -> Result<bool, ApiError> {
        if viewer.member.as_deref() == Some(member) {
            return Ok(true);
        }
        if !viewer.is_manager {
            return Ok(false);
        }
        if !cache.contains_key(member) {
            let a = store::member_audience(self.db.conn(), tenant, member).await?;
            cache.insert(member.to_string(), a);
        }
        Ok(cache.get(member).is_some_and(|a| viewer.may_see_feedback(a)))
    }

    pub async fn get_feedback(&self, caller: &Caller, name: &str) -> Result<pb::Feedback, ApiError> {
        let id = Kind::Feedback.parse("name", name)?;
        let conn = self.db.conn();
        let sql = format!("SELECT {FEEDBACK_COLUMNS} FROM feedback WHERE id = $1 AND tenant_id = $2");
        let r = row(conn, &sql, vec![id.into(), caller.tenant_id.clone().into()])
            .await?
            .ok_or_else(|| ApiError::not_found(name))?;
        let member: String = r.try_get("", "member_id")?;
        let viewer = store::viewer(conn, caller).await?;
        if !self
            .sees_feedback(&viewer, &caller.tenant_id, &member, &mut HashMap::new())
            .await?
        {
            return Err(ApiError::permission_denied(
                "feedback is private to its member and their manager chain",
            ));
        }
        feedback_of(&r)
    }

    pub async fn list_feedback(
        &self,
        caller: &Caller,
        req: pb::ListFeedbackRequest,
    ) -> Result<pb::ListFeedbackResponse, ApiError> {
        let kind = pb::FeedbackKind::try_from(req.kind)
            .map_err(|_| ApiError::invalid("kind", format!("{} is not a FeedbackKind", req.kind)))?;
        let page = Page::parse(
            req.page_size,
            &req.page_token,
            &format!("feedback|{}|{}|{}", req.member, req.milestone, req.kind),
        )?;
        let mut base = format!("SELECT {FEEDBACK_COLUMNS} FROM feedback WHERE tenant_id = $1");
        let mut values: Vec<Value> = vec![caller.tenant_id.clone().into()];
        let conn = self.db.conn();
        if !req.member.is_empty() {
            let member = parse_name(Collection::Members, "member", &req.member)?;
            self.require_member(conn, &caller.tenant_id, &member).await?;
            values.push(member.into());
            base.push_str(&format!(" AND member_id = ${}", values.len()));
        }
        if !req.milestone.is_empty() {
            values.push(parse_name(Collection::Milestones, "milestone", &req.milestone)?.into());
            base.push_str(&format!(" AND milestone_id = ${}", values.len()));
        }
        if kind != pb::FeedbackKind::Unspecified {
            values.push(req.kind.into());
            base.push_str(&format!(" AND kind = ${}", values.len()));
        }
        let viewer = store::viewer(conn, caller).await?;
        let mut cache = HashMap::new();
        let mut after = page.after.as_deref().map(parse_newest_key).transpose()?;
        let mut out = Vec::new();
        // Without a member of their own, nobody sees any feedback.
        if viewer.member.is_some() {
            'scan: loop {
                let mut sql = base.clone();
                let mut vals = values.clone();
                newest_first(&mut sql, &mut vals, &after, SCAN_BATCH);
                let batch = rows(conn, &sql, vals).await?;
                let exhausted = (batch.len() as u64) < SCAN_BATCH;
                for r in &batch {
                    let key = (r.try_get::<i64>("", "create_time")?, r.try_get::<String>("", "id")?);
                    after = Some(key.clone());
                    let member: String = r.try_get("", "member_id")?;
                    if self
                        .sees_feedback(&viewer, &caller.tenant_id, &member, &mut cache)
                        .await?
                    {
                        out.push((newest_key(key.0, &key.1), feedback_of(r)?));
                        if out.len() as u64 >= page.fetch_limit() {
                            break 'scan;
                        }
                    }
                }
                if exhausted {
                    break;
                }
            }
        }
        let (out, next_page_token) = page.finish(out, |(k, _)| k.clone());
        Ok(pb::ListFeedbackResponse {
            feedback: out.into_iter().map(|(_, f)| f).collect(),
            next_page_token,
        })
    }
}
