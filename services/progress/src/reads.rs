//! Reads: activities, leaderboards, time series, performance history. None
//! rescans the activity history: they read running values and daily totals.

use std::collections::{BTreeMap, HashMap};

use chrono::Utc;
use milestones_api::progress as pb;
use milestones_domain::attainment::basis_points;
use milestones_domain::calendar::{format_date, DateRange, FiscalPeriod, PeriodKind};
use milestones_domain::names::{Collection, Owner};
use milestones_runtime::auth::Caller;
use milestones_runtime::paging::Page;
use milestones_runtime::wire::{date_from_wire, date_to_wire, micros_to_timestamp, now_micros};
use milestones_runtime::ApiError;
use sea_orm::{ConnectionTrait, DatabaseBackend, Value};

use crate::ops::{period_from, Progress};
use crate::store::{self, rows};

fn in_list(start: usize, n: usize) -> String {
    (0..n).map(|i| format!("${}", start + i)).collect::<Vec<_>>().join(", ")
}

impl Progress {
    pub async fn list_activities(
        &self,
        caller: &Caller,
        req: pb::ListActivitiesRequest,
    ) -> Result<pb::ListActivitiesResponse, ApiError> {
        let to_micros = |t: &Option<prost_types::Timestamp>| {
            t.as_ref().map(|t| {
                t.seconds
                    .saturating_mul(1_000_000)
                    .saturating_add(i64::from(t.nanos / 1_000))
            })
        };
        let (start, end) = (to_micros(&req.start_time), to_micros(&req.end_time));
        let page = Page::parse(
            req.page_size,
            &req.page_token,
            &format!(
                "activities|{}|{}|{start:?}|{end:?}|{}",
                req.member, req.metric, req.show_voided
            ),
        )?;
        let mut clause = String::from("a.tenant_id = $1");
        let mut values: Vec<Value> = vec![caller.tenant_id.clone().into()];
        let mut push = |clause: &mut String, sql: &str, v: Value| {
            values.push(v);
            clause.push_str(&sql.replace('?', &format!("${}", values.len())));
        };
        if !req.member.is_empty() {
            let m = Collection::Members
                .parse(&req.member)
                .map_err(|e| ApiError::invalid("member", e))?;
            push(
                &mut clause,
                " AND a.id IN (SELECT activity_id FROM credits WHERE tenant_id = a.tenant_id AND member_id = ?)",
                m.into(),
            );
        }
        if !req.metric.is_empty() {
            let m = Collection::Metrics
                .parse(&req.metric)
                .map_err(|e| ApiError::invalid("metric", e))?;
            push(&mut clause, " AND a.metric_id = ?", m.into());
        }
        if let Some(s) = start {
            push(&mut clause, " AND a.occurred_at >= ?", s.into());
        }
        if let Some(e) = end {
            push(&mut clause, " AND a.occurred_at < ?", e.into());
        }
        if !req.show_voided {
            push(&mut clause, " AND a.state = ?", "active".into());
        }
        if let Some(after) = &page.after {
            push(&mut clause, " AND a.id > ?", after.clone().into());
        }
        let sql = format!(
            "SELECT a.id FROM activities a WHERE {clause} ORDER BY a.id LIMIT {}",
            page.fetch_limit()
        );
        let ids: Vec<String> = rows(self.db.conn(), &sql, values)
            .await?
            .iter()
            .map(|r| r.try_get("", "id"))
            .collect::<Result<_, _>>()?;
        let (ids, next_page_token) = page.finish(ids, |id| id.clone());
        let mut activities = Vec::with_capacity(ids.len());
        for id in ids {
            activities.push(self.get_activity_by_id(&caller.tenant_id, &id).await?);
        }
        Ok(pb::ListActivitiesResponse {
            activities,
            next_page_token,
        })
    }

    /// Ranks the members of a team subtree (or the whole tenant) on a metric
    /// over a period. A member's value is the sum of their credited amounts
    /// dated in the period (read from their active milestone over exactly
    /// that period when they have one, so a quarter's board reads one row
    /// per member); target and attainment come from that milestone. Members are those in the
    /// subtree on the period's last day, or today if earlier.
    pub async fn leaderboard(
        &self,
        caller: &Caller,
        req: pb::GetLeaderboardRequest,
    ) -> Result<pb::GetLeaderboardResponse, ApiError> {
        let conn = self.db.conn();
        let tenant = caller.tenant_id.as_str();
        // The org copy ingestion keeps: the subtree's members without
        // querying teams and memberships (about a third of a call's time).
        let org = self.org_cache.get_for_read(conn, tenant).await?;
        let settings = &org.settings;
        let metric = Collection::Metrics
            .parse(&req.metric)
            .map_err(|e| ApiError::invalid("metric", e))?;
        let period = match &req.period {
            Some(pb::get_leaderboard_request::Period::FiscalPeriod(p)) => {
                period_from(Some(p), None, &settings.calendar)?
            }
            Some(pb::get_leaderboard_request::Period::DateRange(r)) => period_from(None, Some(r), &settings.calendar)?,
            None => settings
                .calendar
                .range(&settings.calendar.quarter_of(settings.today(Utc::now()))),
        };
        let rank_by = pb::RankBy::try_from(req.rank_by).map_err(|_| ApiError::invalid("rank_by", "is not a RankBy"))?;
        let page = Page::parse(
            req.page_size,
            &req.page_token,
            &format!(
                "leaderboard|{}|{}|{}|{}|{:?}",
                req.team,
                metric,
                period.start(),
                period.end(),
                rank_by
            ),
        )?;
        let today = settings.today(Utc::now());
        let day = format_date(period.end().min(today).max(period.start()));
        let members = if req.team.is_empty() {
            org.members_on(None, &day)
        } else {
            let team = Collection::Teams
                .parse(&req.team)
                .map_err(|e| ApiError::invalid("team", e))?;
            if !org.has_team(&team) {
                return Err(ApiError::not_found(req.team.clone()));
            }
            org.members_on(Some(&team), &day)
        };
        let mut totals: HashMap<String, i64> = HashMap::new();
        let mut goals: HashMap<String, (String, i64)> = HashMap::new();
        // The members travel as one JSON parameter and each is found
        // through its own key: with a long `IN` list the planner may scan
        // all of the tenant's milestones instead, each through its chain of
        // recent versions (5 ms for 250 reps just after a burst of writes,
        // against 0.5 ms).
        let postgres = conn.get_database_backend() == DatabaseBackend::Postgres;
        let ids: Vec<&str> = members.iter().map(|(id, _)| id.as_str()).collect();
        let sql = if postgres {
            "SELECT p.* FROM jsonb_array_elements_text($5::jsonb) AS r(id) CROSS JOIN LATERAL \
             (SELECT id, owner_id, target, value, state FROM milestone_progress WHERE tenant_id = $1 \
             AND owner_kind = 'member' AND owner_id = r.id AND metric_id = $2 AND start_date = $3 \
             AND end_date = $4 AND state <> 'cancelled' OFFSET 0) p"
        } else {
            "SELECT id, owner_id, target, value, state FROM milestone_progress WHERE tenant_id = $1 \
             AND metric_id = $2 AND owner_kind = 'member' AND start_date = $3 AND end_date = $4 \
             AND state <> 'cancelled' AND owner_id IN (SELECT value FROM json_each($5))"
        };
        let period_values = || -> Vec<Value> {
            vec![
                tenant.into(),
                metric.clone().into(),
                format_date(period.start()).into(),
                format_date(period.end()).into(),
            ]
        };
        let mut values = period_values();
        values.push(serde_json::to_string(&ids).unwrap_or_default().into());
        for r in rows(conn, sql, values).await? {
            let owner: String = r.try_get("", "owner_id")?;
            // An active member milestone over exactly this period counts
            // exactly the member's credits in it: its kept value is the
            // total, without summing days.
            if r.try_get::<String>("", "state")? == "active" {
                totals.insert(owner.clone(), r.try_get("", "value")?);
            }
            goals.insert(owner, (r.try_get("", "id")?, r.try_get("", "target")?));
        }
        let unsummed: Vec<&str> = ids.into_iter().filter(|id| !totals.contains_key(*id)).collect();
        if !unsummed.is_empty() {
            let sql = if postgres {
                "SELECT r.id AS member_id, t.total FROM jsonb_array_elements_text($5::jsonb) AS r(id) \
                 CROSS JOIN LATERAL (SELECT CAST(SUM(amount) AS BIGINT) AS total FROM member_daily \
                 WHERE tenant_id = $1 AND member_id = r.id AND metric_id = $2 AND day >= $3 AND day <= $4) t"
            } else {
                "SELECT member_id, CAST(SUM(amount) AS BIGINT) AS total FROM member_daily WHERE tenant_id = $1 \
                 AND metric_id = $2 AND day >= $3 AND day <= $4 AND member_id IN (SELECT value FROM json_each($5)) \
                 GROUP BY member_id"
            };
            let mut values = period_values();
            values.push(serde_json::to_string(&unsummed).unwrap_or_default().into());
            for r in rows(conn, sql, values).await? {
                let total: i64 = r.try_get::<Option<i64>>("", "total")?.unwrap_or(0);
                totals.insert(r.try_get("", "member_id")?, total);
            }
        }
        let mut entries: Vec<pb::LeaderboardEntry> = members
            .into_iter()
            .map(|(id, display_name)| {
                let value = totals.get(&id).copied().unwrap_or(0);
                let goal = goals.get(&id);
                pb::LeaderboardEntry {
                    rank: 0,
                    member: Collection::Members.name(&id),
                    display_name,
                    value,
                    milestone: goal.map(|(m, _)| Collection::Milestones.name(m)).unwrap_or_default(),
                    target: goal.map(|(_, t)| *t),
                    attainment_basis_points: goal.map(|(_, t)| basis_points(value, *t)),
                }
            })
            .collect();
        let key = |e: &pb::LeaderboardEntry| match rank_by {
            pb::RankBy::Value => (e.value, 0),
            // Equal attainment is a tie; members without a milestone come
            // after those with one, ranked among themselves by value.
            _ => match e.attainment_basis_points {
                Some(a) => (a, 0),
                None => (i64::MIN, e.value),
            },
        };
        entries.sort_by(|a, b| key(b).cmp(&key(a)).then_with(|| a.member.cmp(&b.member)));
        // Competition ranking: ties share a rank, the next rank skips.
        let mut previous: Option<(i64, i64)> = None;
        for i in 0..entries.len() {
            let k = key(&entries[i]);
            entries[i].rank = match previous {
                Some(p) if p == k => entries[i - 1].rank,
                _ => (i + 1) as i32,
            };
            previous = Some(k);
        }
        let total_size = entries.len() as i32;
        let offset: usize = page.after.as_deref().and_then(|a| a.parse().ok()).unwrap_or(0);
        let window: Vec<(usize, pb::LeaderboardEntry)> = entries.into_iter().enumerate().skip(offset).collect();
        let (window, next_page_token) = page.finish(window, |(i, _)| (i + 1).to_string());
        Ok(pb::GetLeaderboardResponse {
            entries: window.into_iter().map(|(_, e)| e).collect(),
            next_page_token,
            start_date: Some(date_to_wire(period.start())),
            end_date: Some(date_to_wire(period.end())),
            total_size,
            as_of: Some(micros_to_timestamp(now_micros())),
        })
    }

    /// The cumulative value of a milestone per day (or week) from its start
    /// to today (or its end), with the linear expected value beside it.
    pub async fn time_series(
        &self,
        caller: &Caller,
        req: pb::GetTimeSeriesRequest,
    ) -> Result<pb::GetTimeSeriesResponse, ApiError> {
        let conn = self.db.conn();
        let id = Collection::Milestones
            .parse(&req.milestone)
            .map_err(|e| ApiError::invalid("milestone", e))?;
        let m = store::milestones_where(
            conn,
            "id = $1 AND tenant_id = $2",
            vec![id.clone().into(), caller.tenant_id.clone().into()],
        )
        .await?
        .into_iter()
        .next()
        .ok_or_else(|| ApiError::not_found(req.milestone.clone()))?;
        let granularity = pb::TimeSeriesGranularity::try_from(req.granularity)
            .map_err(|_| ApiError::invalid("granularity", "is not a TimeSeriesGranularity"))?;
        let step = if granularity == pb::TimeSeriesGranularity::Week {
            7
        } else {
            1
        };
        let settings = store::tenant_settings(conn, &caller.tenant_id).await?;
        let period = m
            .period()
            .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("stored period of {id} does not parse")))?;
        let last = settings.today(Utc::now()).min(period.end());
        // An active member milestone counts exactly the member's credits in
        // its period, so its days are the member's; any other milestone
        // keeps its own (a member's, copied when it stopped being active).
        let (sql, values): (&str, Vec<Value>) = if m.owner_kind == "member" && m.state == "active" {
            (
                "SELECT day, amount FROM member_daily WHERE tenant_id = $1 AND member_id = $2 AND metric_id = $3 \
                 AND day >= $4 AND day <= $5",
                vec![
                    m.tenant_id.clone().into(),
                    m.owner_id.clone().into(),
                    m.metric_id.clone().into(),
                    m.start_date.clone().into(),
                    m.end_date.clone().into(),
                ],
            )
        } else {
            (
                "SELECT day, amount FROM milestone_daily WHERE milestone_id = $1",
                vec![id.into()],
            )
        };
        let daily: BTreeMap<String, i64> = rows(conn, sql, values)
            .await?
            .iter()
            .map(|r| Ok((r.try_get("", "day")?, r.try_get("", "amount")?)))
            .collect::<Result<_, sea_orm::DbErr>>()?;
        let mut points = Vec::new();
        let mut running: i64 = 0;
        let mut day = period.start();
        let total_days = period.days();
        let mut elapsed = 0i64;
        while day <= last {
            running = running.saturating_add(daily.get(&format_date(day)).copied().unwrap_or(0));
            elapsed += 1;
            let is_point = elapsed % step == 0 || day == last;
            if is_point {
                let expected = i64::try_from(i128::from(m.target) * i128::from(elapsed) / i128::from(total_days))
                    .unwrap_or(i64::MAX);
                points.push(pb::TimeSeriesPoint {
                    date: Some(date_to_wire(day)),
                    value: running,
                    expected_value: expected,
                });
            }
            match day.succ_opt() {
                Some(d) => day = d,
                None => break,
            }
        }
        Ok(pb::GetTimeSeriesResponse {
            points,
            target: m.target,
            as_of: Some(micros_to_timestamp(now_micros())),
        })
    }

    /// What an owner attained on a metric in the fiscal periods before a
    /// date: the basis of goal's realism assessment.
    pub async fn performance_history(
        &self,
        caller: &Caller,
        req: pb::GetPerformanceHistoryRequest,
    ) -> Result<pb::GetPerformanceHistoryResponse, ApiError> {
        let conn = self.db.conn();
        let tenant = caller.tenant_id.as_str();
        let owner = Owner::parse(&req.owner).map_err(|e| ApiError::invalid("owner", e))?;
        let metric = Collection::Metrics
            .parse(&req.metric)
            .map_err(|e| ApiError::invalid("metric", e))?;
        let count = match req.period_count {
            0 => 4,
            n if (1..=12).contains(&n) => n,
            n => {
                return Err(ApiError::invalid(
                    "period_count",
                    format!("must be from 1 to 12 (got {n})"),
                ))
            }
        };
        let length = pb::PeriodLength::try_from(req.period_length)
            .map_err(|_| ApiError::invalid("period_length", "is not a PeriodLength"))?;
        let settings = store::tenant_settings(conn, tenant).await?;
        let before = date_from_wire(req.before_date.as_ref())
            .map_err(|e| ApiError::invalid("before_date", e))?
            .unwrap_or_else(|| settings.today(Utc::now()));
        let cal = settings.calendar;
        // The period containing `before`, then step back one period at a time.
        let current = cal.quarter_of(before);
        let mut periods = Vec::new();
        let mut cursor = match length {
            pb::PeriodLength::Year => FiscalPeriod {
                year: current.year,
                kind: PeriodKind::Year,
            },
            pb::PeriodLength::Half => {
                let q = match current.kind {
                    PeriodKind::Quarter(q) => q,
                    _ => 1,
                };
                FiscalPeriod {
                    year: current.year,
                    kind: PeriodKind::Half(if q <= 2 { 1 } else { 2 }),
                }
            }
            pb::PeriodLength::Month => {
                let start = cal
                    .range(&FiscalPeriod {
                        year: current.year,
                        kind: PeriodKind::Year,
                    })
                    .start();
                let months = (before.year() - start.year()) * 12 + before.month() as i32 - start.month() as i32;
                FiscalPeriod {
                    year: current.year,
                    kind: PeriodKind::Month((months + 1).clamp(1, 12) as u8),
                }
            }
            _ => current,
        };
        for _ in 0..count {
            cursor = cursor.previous();
            periods.push(cursor);
        }
        let mut out = Vec::new();
        for p in periods {
            let range = cal.range(&p);
            let (value, activity_count) = self.attained(tenant, &owner, &metric, &range).await?;
            let (kind, owner_id) = match &owner {
                Owner::Team(id) => ("team", id.clone()),
                Owner::Member(id) => ("member", id.clone()),
            };
            let goal = store::milestones_where(
                conn,
                "tenant_id = $1 AND owner_kind = $2 AND owner_id = $3 AND metric_id = $4 AND start_date = $5 AND end_date = $6",
                vec![
                    tenant.into(),
                    kind.into(),
                    owner_id.into(),
                    metric.clone().into(),
                    format_date(range.start()).into(),
                    format_date(range.end()).into(),
                ],
            )
            .await?
            .into_iter()
            .next();
            out.push(pb::PerformancePeriod {
                start_date: Some(date_to_wire(range.start())),
                end_date: Some(date_to_wire(range.end())),
                fiscal_period: p.name(),
                attained_value: value,
                activity_count,
                milestone: goal
                    .as_ref()
                    .map(|g| Collection::Milestones.name(&g.id))
                    .unwrap_or_default(),
                target: goal.as_ref().map(|g| g.target),
                attainment_basis_points: goal.as_ref().map(|g| basis_points(value, g.target)),
            });
        }
        Ok(pb::GetPerformanceHistoryResponse {
            periods: out,
            as_of: Some(micros_to_timestamp(now_micros())),
        })
    }

    /// The value an owner attained on a metric over a range: from daily
    /// totals for a member; as of each credit's date for a team.
    async fn attained(
        &self,
        tenant: &str,
        owner: &Owner,
        metric: &str,
        range: &DateRange,
    ) -> Result<(i64, i64), ApiError> {
        let conn = self.db.conn();
        let (start, end) = (format_date(range.start()), format_date(range.end()));
        let r = match owner {
            Owner::Member(id) => {
                store::row(
                    conn,
                    "SELECT CAST(COALESCE(SUM(amount), 0) AS BIGINT) AS total, CAST(COALESCE(SUM(activity_count), 0) AS BIGINT) AS n FROM member_daily \
                     WHERE tenant_id = $1 AND member_id = $2 AND metric_id = $3 AND day >= $4 AND day <= $5",
                    vec![tenant.into(), id.clone().into(), metric.into(), start.into(), end.into()],
                )
                .await?
            }
            Owner::Team(id) => {
                let teams = store::subtree(conn, tenant, id).await?;
                let sql = format!(
                    "SELECT CAST(COALESCE(SUM(c.amount), 0) AS BIGINT) AS total, COUNT(DISTINCT c.activity_id) AS n FROM credits c \
                     JOIN projection_memberships ms ON ms.tenant_id = c.tenant_id AND ms.member_id = c.member_id \
                     AND ms.start_date <= c.occurred_date AND (ms.end_date IS NULL OR ms.end_date >= c.occurred_date) \
                     WHERE c.tenant_id = $1 AND c.metric_id = $2 AND c.active = $3 AND c.occurred_date >= $4 \
                     AND c.occurred_date <= $5 AND ms.team_id IN ({})",
                    in_list(6, teams.len())
                );
                let mut values: Vec<Value> = vec![tenant.into(), metric.into(), true.into(), start.into(), end.into()];
                values.extend(teams.into_iter().map(Value::from));
                store::row(conn, &sql, values).await?
            }
        };
        Ok(match r {
            Some(r) => (r.try_get::<i64>("", "total")?, r.try_get::<i64>("", "n")?),
            None => (0, 0),
        })
    }
}

use chrono::Datelike;
