//! Awards: applying one milestone event of progress's feed to the rules in
//! force when it happened, and reading the recognitions made.
//!
//! The consumer calls [`Recognition::apply_milestone_event`] inside the
//! transaction that also moves its cursor. Each award is an INSERT that
//! does nothing on a conflict with the UNIQUE keys of `recognitions`, and
//! points and the feed entry follow only when the row was really inserted,
//! so a replayed event or a second replica awards nothing twice.

use std::collections::{BTreeSet, HashMap, HashSet};

use milestones_api::progress as progress_pb;
use milestones_api::recognition as pb;
use milestones_domain::calendar::{format_date, parse_date};
use milestones_domain::names::{Collection, Owner};
use milestones_runtime::auth::Caller;
use milestones_runtime::paging::Page;
use milestones_runtime::wire::{date_from_wire, micros_to_timestamp, now_micros};
use milestones_runtime::ApiError;
use sea_orm::{ConnectionTrait, QueryResult, Value};

use super::points::{newest_first, post_entry, Cause};
use super::{micros_of, newest_key, parse_name, parse_newest_key, time_window, Kind, Recognition};
use crate::domain::{self, Audience, Happened, RuleTerms, Viewer};
use crate::store::{self, exec, row, rows};

/// Rows scanned per query while filling a page the caller may only partly
/// see.
const SCAN_BATCH: u64 = 200;

/// Final rankings fetched before the transaction, for TOP_N rules: rule id
/// → (member id → rank).
pub type Standings = HashMap<String, HashMap<String, u32>>;

/// Teams stored as `|a|b|` so that one LIKE finds a team among them.
fn pack_teams(teams: &[String]) -> String {
    if teams.is_empty() {
        String::new()
    } else {
        format!("|{}|", teams.join("|"))
    }
}

fn unpack_teams(packed: &str) -> Vec<String> {
    packed
        .split('|')
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

/// The terms of every rule of `tenant` in force at `at` (µs): for each rule,
/// its latest version that started before `at`. Rules created after `at`
/// have none.
pub async fn rules_in_force(conn: &impl ConnectionTrait, tenant: &str, at: i64) -> Result<Vec<RuleTerms>, ApiError> {
    let found = rows(
        conn,
        "SELECT v.rule_id, v.enabled, v.trigger_kind, v.streak_length, v.top_n, v.scope_team, v.scope_metric, \
         v.badge_id, v.points, v.visibility FROM rule_versions v WHERE v.tenant_id = $1 AND v.valid_from < $2 \
         AND v.version = (SELECT MAX(w.version) FROM rule_versions w WHERE w.rule_id = v.rule_id AND w.valid_from < $2) \
         ORDER BY v.rule_id",
        vec![tenant.into(), at.into()],
    )
    .await?;
    found
        .iter()
        .map(|r| {
            Ok(RuleTerms {
                rule_id: r.try_get("", "rule_id")?,
                trigger: pb::RuleTrigger::try_from(r.try_get::<i32>("", "trigger_kind")?)
                    .unwrap_or(pb::RuleTrigger::Unspecified),
                enabled: r.try_get("", "enabled")?,
                streak_length: r.try_get::<i32>("", "streak_length")?.max(0) as u32,
                top_n: r.try_get::<i32>("", "top_n")?.max(0) as u32,
                scope_team: r.try_get("", "scope_team")?,
                scope_metric: r.try_get("", "scope_metric")?,
                badge_id: r.try_get("", "badge_id")?,
                points: r.try_get("", "points")?,
                visibility: pb::Visibility::try_from(r.try_get::<i32>("", "visibility")?)
                    .unwrap_or(pb::Visibility::Private),
            })
        })
        .collect()
}

/// The fields of a milestone event this service uses, parsed.
#[derive(Debug, Clone)]
pub struct EventFacts {
    pub tenant: String,
    pub sequence: i64,
    pub time: i64,
    pub kind: progress_pb::MilestoneEventKind,
    pub milestone: String,
    pub owner: Owner,
    pub metric: String,
    /// Owner's teams and their ancestors (ids), nearest first.
    pub owner_teams: Vec<String>,
    pub start: String,
    pub end: String,
    pub threshold: i64,
    pub value: i64,
    pub checkpoint_index: Option<i32>,
    pub attainment_basis_points: i64,
}

impl EventFacts {
    /// Parses an event; `None` for one this service cannot use (it is
    /// skipped, and the cursor still moves past it).
    pub fn parse(e: &progress_pb::MilestoneEvent) -> Option<EventFacts> {
        let kind = progress_pb::MilestoneEventKind::try_from(e.kind).ok()?;
        let start = date_from_wire(e.start_date.as_ref()).ok().flatten()?;
        let end = date_from_wire(e.end_date.as_ref()).ok().flatten()?;
        Some(EventFacts {
            tenant: e.tenant_id.clone(),
            sequence: e.sequence,
            time: micros_of("event_time", e.event_time.as_ref()).ok().flatten()?,
            kind,
            milestone: Collection::Milestones.parse(&e.milestone).ok()?,
            owner: Owner::parse(&e.owner).ok()?,
            metric: Collection::Metrics.parse(&e.metric).ok()?,
            owner_teams: e
                .owner_teams
                .iter()
                .filter_map(|t| Collection::Teams.parse(t).ok())
                .collect(),
            start: format_date(start),
            end: format_date(end),
            threshold: e.threshold,
            value: e.value,
            checkpoint_index: e.checkpoint_index,
            attainment_basis_points: e.attainment_basis_points,
        })
    }

    fn member(&self) -> Option<&str> {
        match &self.owner {
            Owner::Member(m) => Some(m),
            Owner::Team(_) => None,
        }
    }
}

/// Fills in the owner's teams when progress named none (e.g. for a period
/// end of a member's milestone), from the org copy as of the event's day
/// within the period.
pub async fn complete_owner_teams(conn: &impl ConnectionTrait, facts: &mut EventFacts) -> Result<(), ApiError> {
    if !facts.owner_teams.is_empty() {
        return Ok(());
    }
    let tenant = facts.tenant.clone();
    facts.owner_teams = match &facts.owner {
        Owner::Member(m) => {
            let event_day = chrono::DateTime::from_timestamp_micros(facts.time).map(|t| t.date_naive());
            let day = match (parse_date(&facts.end), event_day) {
                (Some(end), Some(d)) => end.min(d),
                (Some(end), None) => end,
                (None, d) => d.unwrap_or_default(),
            };
            let direct = store::member_teams_on(conn, &tenant, m, day).await?;
            store::ancestors(conn, &tenant, &direct).await?.into_iter().collect()
        }
        Owner::Team(t) => {
            let own: BTreeSet<String> = [t.clone()].into_iter().collect();
            store::ancestors(conn, &tenant, &own).await?.into_iter().collect()
        }
    };
    Ok(())
}

/// The rules in force for the event that react to its kind and cover it.
pub async fn candidate_rules(conn: &impl ConnectionTrait, facts: &EventFacts) -> Result<Vec<RuleTerms>, ApiError> {
    Ok(rules_in_force(conn, &facts.tenant, facts.time)
        .await?
        .into_iter()
        .filter(|t| {
            t.enabled
                && domain::reacts_to(t.trigger) == Some(facts.kind)
                && (!domain::members_only(t.trigger) || facts.member().is_some())
                && domain::in_scope(t, &facts.metric, &facts.owner_teams)
        })
        .collect())
}

const RECOGNITION_COLUMNS: &str = "id, rule_id, trigger_kind, milestone_id, metric_id, event_seq, recipient_kind, \
     recipient_id, badge_id, points, reason, recipient_teams, visibility, create_time";

fn recognition_of(r: &QueryResult) -> Result<pb::Recognition, ApiError> {
    let kind: String = r.try_get("", "recipient_kind")?;
    let recipient: String = r.try_get("", "recipient_id")?;
    let teams: String = r.try_get("", "recipient_teams")?;
    Ok(pb::Recognition {
        name: Kind::Recognitions.name(&r.try_get::<String>("", "id")?),
        recipient: Some(if kind == "team" {
            pb::recognition::Recipient::Team(Collection::Teams.name(&recipient))
        } else {
            pb::recognition::Recipient::Member(Collection::Members.name(&recipient))
        }),
        rule: Kind::Rules.name(&r.try_get::<String>("", "rule_id")?),
        trigger: r.try_get("", "trigger_kind")?,
        badge: r
            .try_get::<Option<String>>("", "badge_id")?
            .map(|b| Kind::Badges.name(&b))
            .unwrap_or_default(),
        points: r.try_get("", "points")?,
        reason: r.try_get("", "reason")?,
        milestone: Collection::Milestones.name(&r.try_get::<String>("", "milestone_id")?),
        metric: Collection::Metrics.name(&r.try_get::<String>("", "metric_id")?),
        milestone_event_sequence: r.try_get("", "event_seq")?,
        recipient_teams: unpack_teams(&teams).iter().map(|t| Collection::Teams.name(t)).collect(),
        visibility: r.try_get("", "visibility")?,
        create_time: Some(micros_to_timestamp(r.try_get("", "create_time")?)),
    })
}

/// The audience of a recognition: its member recipient, or its team.
pub async fn recipient_audience(
    conn: &impl ConnectionTrait,
    tenant: &str,
    recipient: Option<&pb::recognition::Recipient>,
    cache: &mut HashMap<String, Audience>,
) -> Result<Audience, ApiError> {
    let key = match recipient {
        Some(pb::recognition::Recipient::Member(m)) | Some(pb::recognition::Recipient::Team(m)) => m.clone(),
        None => String::new(),
    };
    if let Some(a) = cache.get(&key) {
        return Ok(a.clone());
    }
    let audience = match recipient {
        Some(pb::recognition::Recipient::Member(m)) => match Collection::Members.parse(m) {
            Ok(id) => store::member_audience(conn, tenant, &id).await?,
            Err(_) => Audience::default(),
        },
        Some(pb::recognition::Recipient::Team(t)) => match Collection::Teams.parse(t) {
            Ok(id) => store::team_audience(conn, tenant, &id).await?,
            Err(_) => Audience::default(),
        },
        None => Audience::default(),
    };
    cache.insert(key, audience.clone());
    Ok(audience)
}

/// Whether the viewer may see the recognition.
pub async fn may_see_recognition(
    conn: &impl ConnectionTrait,
    tenant: &str,
    viewer: &Viewer,
    r: &pb::Recognition,
    cache: &mut HashMap<String, Audience>,
) -> Result<bool, ApiError> {
    let visibility = pb::Visibility::try_from(r.visibility).unwrap_or(pb::Visibility::Private);
    if viewer.sees_all || visibility == pb::Visibility::Public {
        return Ok(true);
    }
    let audience = recipient_audience(conn, tenant, r.recipient.as_ref(), cache).await?;
    Ok(viewer.may_see(visibility, &audience))
}

impl Recognition {
    /// Applies one milestone event within `txn`: records achievements and
    /// makes the awards of every rule that fires, with their points. Returns
    /// the feed events to publish with the transaction.
    pub async fn apply_milestone_event(
        &self,
        conn: &impl ConnectionTrait,
        facts: &mut EventFacts,
        standings: &Standings,
    ) -> Result<Vec<pb::RecognitionEvent>, ApiError> {
        let tenant = facts.tenant.clone();
        complete_owner_teams(conn, facts).await?;
        let owner_name = facts.owner.name();
        let packed_teams = pack_teams(&facts.owner_teams);
        let rules = candidate_rules(conn, facts).await?;
        if facts.kind == progress_pb::MilestoneEventKind::TargetReached {
            // First-in-team looks at achievements before this one: check
            // before recording it.
            let mut first_rules = Vec::new();
            for rule in rules
                .iter()
                .filter(|r| r.trigger == pb::RuleTrigger::FirstInTeamToAchieve)
            {
                if self.nobody_achieved_before(conn, facts, rule).await? {
                    first_rules.push(rule.rule_id.clone());
                }
            }
            exec(
                conn,
                "INSERT INTO achievements (milestone_id, tenant_id, owner, metric_id, start_date, end_date, owner_teams, \
                 event_seq) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (milestone_id) DO NOTHING",
                vec![
                    facts.milestone.clone().into(),
                    tenant.clone().into(),
                    owner_name.clone().into(),
                    facts.metric.clone().into(),
                    facts.start.clone().into(),
                    facts.end.clone().into(),
                    packed_teams.clone().into(),
                    facts.sequence.into(),
                ],
            )
            .await?;
            return self
                .award_all(
                    conn,
                    facts,
                    &rules,
                    |rule| match rule.trigger {
                        pb::RuleTrigger::FirstInTeamToAchieve => first_rules.contains(&rule.rule_id),
                        _ => true,
                    },
                    standings,
                )
                .await;
        }
        self.award_all(conn, facts, &rules, |_| true, standings).await
    }

    /// Whether no member in the rule's scope reached the target of a
    /// milestone on the same metric and period before this event.
    async fn nobody_achieved_before(
        &self,
        conn: &impl ConnectionTrait,
        facts: &EventFacts,
        rule: &RuleTerms,
    ) -> Result<bool, ApiError> {
        let mut sql = "SELECT milestone_id FROM achievements WHERE tenant_id = $1 AND metric_id = $2 \
                       AND start_date = $3 AND end_date = $4 AND owner LIKE 'members/%' AND milestone_id <> $5 \
                       AND event_seq < $6"
            .to_string();
        let mut values: Vec<Value> = vec![
            facts.tenant.clone().into(),
            facts.metric.clone().into(),
            facts.start.clone().into(),
            facts.end.clone().into(),
            facts.milestone.clone().into(),
            facts.sequence.into(),
        ];
        if let Some(team) = &rule.scope_team {
            values.push(format!("%|{team}|%").into());
            sql.push_str(&format!(" AND owner_teams LIKE ${}", values.len()));
        }
        sql.push_str(" LIMIT 1");
        Ok(row(conn, &sql, values).await?.is_none())
    }

    /// Whether the event's owner also achieved the rule's streak.
    async fn streak_holds(
        &self,
        conn: &impl ConnectionTrait,
        facts: &EventFacts,
        length: u32,
    ) -> Result<bool, ApiError> {
        let achieved: HashSet<_> = rows(
            conn,
            "SELECT start_date, end_date FROM achievements WHERE tenant_id = $1 AND owner = $2 AND metric_id = $3",
            vec![
                facts.tenant.clone().into(),
                facts.owner.name().into(),
                facts.metric.clone().into(),
            ],
        )
        .await?
        .iter()
        .filter_map(|r| {
            let s: String = r.try_get("", "start_date").ok()?;
            let e: String = r.try_get("", "end_date").ok()?;
            Some((parse_date(&s)?, parse_date(&e)?))
        })
        .collect();
        match (parse_date(&facts.start), parse_date(&facts.end)) {
            (Some(s), Some(e)) => Ok(domain::streak_holds(s, e, &achieved, length)),
            _ => Ok(false),
        }
    }

    async fn award_all(
        &self,
        conn: &impl ConnectionTrait,
        facts: &EventFacts,
        rules: &[RuleTerms],
        eligible: impl Fn(&RuleTerms) -> bool,
        standings: &Standings,
    ) -> Result<Vec<pb::RecognitionEvent>, ApiError> {
        let mut published = Vec::new();
        for rule in rules.iter().filter(|r| eligible(r)) {
            let detail = match rule.trigger {
                pb::RuleTrigger::AchievedNPeriodsInARow => {
                    if !self.streak_holds(conn, facts, rule.streak_length).await? {
                        continue;
                    }
                    Some(rule.streak_length)
                }
                pb::RuleTrigger::TopNAtPeriodClose => {
                    let rank = facts
                        .member()
                        .and_then(|m| standings.get(&rule.rule_id).and_then(|s| s.get(m)).copied());
                    match rank {
                        Some(rank) if rank <= rule.top_n => Some(rank),
                        _ => continue,
                    }
                }
                _ => None,
            };
            if let Some(event) = self.award(conn, facts, rule, detail).await? {
                published.push(event);
            }
        }
        Ok(published)
    }

    /// Makes one award unless it exists: the recognition, the points and
    /// the feed event, or nothing.
    async fn award(
        &self,
        conn: &impl ConnectionTrait,
        facts: &EventFacts,
        rule: &RuleTerms,
        detail: Option<u32>,
    ) -> Result<Option<pb::RecognitionEvent>, ApiError> {
        let display = row(
            conn,
            "SELECT display_name FROM org_milestones WHERE id = $1",
            vec![facts.milestone.clone().into()],
        )
        .await?
        .map(|r| r.try_get::<String>("", "display_name"))
        .transpose()?
        .unwrap_or_else(|| Collection::Milestones.name(&facts.milestone));
        let threshold = facts.threshold;
        let reason = domain::reason(
            rule.trigger,
            &Happened {
                milestone: &display,
                checkpoint_index: facts.checkpoint_index,
                value: facts.value,
                threshold,
                attainment_basis_points: facts.attainment_basis_points,
            },
            detail,
        );
        let (recipient_kind, recipient_id) = match &facts.owner {
            Owner::Member(m) => ("member", m.clone()),
            Owner::Team(t) => ("team", t.clone()),
        };
        // Points go to members only.
        let points = if recipient_kind == "member" { rule.points } else { 0 };
        let first_key = (rule.trigger == pb::RuleTrigger::FirstInTeamToAchieve)
            .then(|| format!("{}|{}|{}", facts.metric, facts.start, facts.end));
        let id = super::new_id();
        let now = now_micros();
        let inserted = exec(
            conn,
            "INSERT INTO recognitions (id, tenant_id, rule_id, trigger_kind, milestone_id, metric_id, event_kind, \
             threshold, event_seq, recipient_kind, recipient_id, badge_id, points, reason, recipient_teams, visibility, \
             first_key, create_time) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, \
             $17, $18) ON CONFLICT DO NOTHING",
            vec![
                id.clone().into(),
                facts.tenant.clone().into(),
                rule.rule_id.clone().into(),
                (rule.trigger as i32).into(),
                facts.milestone.clone().into(),
                facts.metric.clone().into(),
                (facts.kind as i32).into(),
                threshold.into(),
                facts.sequence.into(),
                recipient_kind.into(),
                recipient_id.clone().into(),
                rule.badge_id.clone().into(),
                points.into(),
                reason.into(),
                pack_teams(&facts.owner_teams).into(),
                (rule.visibility as i32).into(),
                first_key.into(),
                now.into(),
            ],
        )
        .await?;
        if inserted == 0 {
            return Ok(None);
        }
        if points > 0 {
            post_entry(
                conn,
                &facts.tenant,
                &recipient_id,
                points,
                Cause::Recognition(id.clone()),
                now,
            )
            .await
            .map_err(|r| r.error)?;
        }
        let sql = format!("SELECT {RECOGNITION_COLUMNS} FROM recognitions WHERE id = $1");
        let stored = row(conn, &sql, vec![id.into()])
            .await?
            .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("recognition vanished")))?;
        Ok(Some(pb::RecognitionEvent {
            sequence: 0,
            event_time: Some(micros_to_timestamp(now)),
            tenant_id: facts.tenant.clone(),
            subject: Some(pb::recognition_event::Subject::Recognition(recognition_of(&stored)?)),
        }))
    }
}

impl Recognition {
    pub async fn get_recognition(&self, caller: &Caller, name: &str) -> Result<pb::Recognition, ApiError> {
        let id = Kind::Recognitions.parse("name", name)?;
        let conn = self.db.conn();
        let sql = format!("SELECT {RECOGNITION_COLUMNS} FROM recognitions WHERE id = $1 AND tenant_id = $2");
        let r = row(conn, &sql, vec![id.into(), caller.tenant_id.clone().into()])
            .await?
            .ok_or_else(|| ApiError::not_found(name))?;
        let r = recognition_of(&r)?;
        let viewer = store::viewer(conn, caller).await?;
        if !may_see_recognition(conn, &caller.tenant_id, &viewer, &r, &mut HashMap::new()).await? {
            return Err(ApiError::not_found(name));
        }
        Ok(r)
    }

    pub async fn list_recognitions(
        &self,
        caller: &Caller,
        req: pb::ListRecognitionsRequest,
    ) -> Result<pb::ListRecognitionsResponse, ApiError> {
        let (start, end) = time_window(req.start_time.as_ref(), req.end_time.as_ref())?;
        let page = Page::parse(
            req.page_size,
            &req.page_token,
            &format!(
                "recognitions|{}|{}|{}|{start:?}|{end:?}",
                req.member, req.team, req.rule
            ),
        )?;
        let mut base = format!("SELECT {RECOGNITION_COLUMNS} FROM recognitions WHERE tenant_id = $1");
        let mut values: Vec<Value> = vec![caller.tenant_id.clone().into()];
        if !req.member.is_empty() {
            values.push(parse_name(Collection::Members, "member", &req.member)?.into());
            base.push_str(&format!(
                " AND recipient_kind = 'member' AND recipient_id = ${}",
                values.len()
            ));
        }
        if !req.team.is_empty() {
            let team = parse_name(Collection::Teams, "team", &req.team)?;
            values.push(format!("%|{team}|%").into());
            base.push_str(&format!(" AND recipient_teams LIKE ${}", values.len()));
        }
        if !req.rule.is_empty() {
            values.push(Kind::Rules.parse("rule", &req.rule)?.into());
            base.push_str(&format!(" AND rule_id = ${}", values.len()));
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
                let rec = recognition_of(r)?;
                if may_see_recognition(conn, &caller.tenant_id, &viewer, &rec, &mut cache).await? {
                    out.push((newest_key(key.0, &key.1), rec));
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
        Ok(pb::ListRecognitionsResponse {
            recognitions: out.into_iter().map(|(_, r)| r).collect(),
            next_page_token,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Packed teams round-trip and match one LIKE per team.
    #[test]
    fn packs_teams_for_like() {
        let teams = vec!["a".to_string(), "b-1".to_string()];
        let packed = pack_teams(&teams);
        assert_eq!(packed, "|a|b-1|");
        assert!(packed.contains("|b-1|") && !packed.contains("|b|"));
        assert_eq!(unpack_teams(&packed), teams);
        assert_eq!(pack_teams(&[]), "");
        assert!(unpack_teams("").is_empty());
    }
}
