//! `record`, `progress` and `leaderboard`: activities in, standings out.

use chrono::{DateTime, NaiveTime, Utc};
use clap::{Args, ValueEnum};
use milestones_api::goal as g;
use milestones_api::progress as p;
use milestones_domain::calendar::parse_date;
use serde_json::{json, Value};

use super::client::{settle, Calendar, Conn};
use super::errors::{explain, refuse};
use super::org::{new_request_id, or_dash};
use super::output::{self as out, paint, short, Cell, Format, Table, Unit};
use super::resolve::{self, Directory};

/// `milestones record`.
#[derive(Args, Debug)]
pub struct RecordArgs {
    /// Who did it (the deal owner): resource name, display name or e-mail.
    pub member: String,
    /// What it counts toward: the metric's resource name or display name.
    pub metric: String,
    /// How much, in the metric's smallest unit (cents for money, 1 for one
    /// call); negative only on metrics that allow it.
    #[arg(allow_negative_numbers = true)]
    pub value: i64,
    /// When it happened: RFC 3339 (2026-11-03T14:00:00Z) or a date
    /// (2026-11-03, taken as noon UTC); defaults to now. At most 5 minutes
    /// ahead.
    #[arg(long)]
    pub at: Option<String>,
    /// The system it comes from, 1..64 of [a-z0-9._-].
    #[arg(long, default_value = "cli")]
    pub source: String,
    /// Its id in the source system (e.g. the CRM opportunity); the same
    /// reference from the same source is refused, so re-imports cannot
    /// double-count.
    #[arg(long, default_value = "")]
    pub reference: String,
    /// Shares the credit: `MEMBER=BASIS_POINTS`, repeated, summing to 10000
    /// (e.g. --split Ada=6000 --split Bob=4000).
    #[arg(long = "split", value_name = "MEMBER=BP")]
    pub splits: Vec<String>,
    /// The idempotency key: retrying with the same key records nothing
    /// twice. A retry must repeat the request exactly, `--at` included
    /// (it defaults to now); the same key with other values is refused.
    /// Defaults to a fresh UUID.
    #[arg(long)]
    pub request_id: Option<String>,
}

fn occurred_at(at: Option<&str>) -> anyhow::Result<DateTime<Utc>> {
    let Some(at) = at else {
        return Ok(Utc::now());
    };
    if let Ok(t) = DateTime::parse_from_rfc3339(at) {
        return Ok(t.with_timezone(&Utc));
    }
    if let Some(d) = parse_date(at) {
        return Ok(d
            .and_time(NaiveTime::from_hms_opt(12, 0, 0).unwrap_or_default())
            .and_utc());
    }
    Err(refuse(
        "--at",
        format!("{at:?} is neither RFC 3339 (2026-11-03T14:00:00Z) nor a date (2026-11-03)"),
    ))
}

pub async fn record(conn: &mut Conn, args: RecordArgs, format: Format) -> anyhow::Result<()> {
    let at = occurred_at(args.at.as_deref())?;
    let member = resolve::member(&mut conn.goal, "member", &args.member).await?;
    let metric = resolve::metric(&mut conn.goal, "metric", &args.metric).await?;
    let mut credit_splits = Vec::new();
    let mut names = Directory::default();
    names.remember(&member.name, &member.display_name);
    for s in &args.splits {
        let Some((who, bp)) = s.rsplit_once('=') else {
            return Err(refuse(
                "--split",
                format!("{s:?} is not MEMBER=BASIS_POINTS, e.g. Ada=6000"),
            ));
        };
        let share: i32 = bp.trim().parse().map_err(|_| {
            refuse(
                "--split",
                format!("{bp:?} in {s:?} is not a whole number of basis points"),
            )
        })?;
        let m = resolve::member(&mut conn.goal, "--split", who.trim()).await?;
        names.remember(&m.name, &m.display_name);
        credit_splits.push(p::CreditSplit {
            member: m.name,
            share_basis_points: share,
        });
    }
    let req = p::RecordActivityRequest {
        member: member.name.clone(),
        metric: metric.name.clone(),
        value: args.value,
        occurred_at: Some(prost_types::Timestamp {
            seconds: at.timestamp(),
            nanos: 0,
        }),
        source: args.source,
        external_reference: args.reference,
        credit_splits,
        request_id: args.request_id.unwrap_or_else(new_request_id),
    };
    // Goal knows the member and metric; a NOT_FOUND from progress is its
    // copy catching up, and the request id makes the retry safe.
    let activity = settle(|| {
        let mut c = conn.progress.clone();
        let req = req.clone();
        async move { c.record_activity(req).await.map(|r| r.into_inner()) }
    })
    .await
    .map_err(explain)?;
    if format == Format::Json {
        return Ok(out::json(&out::activity_json(&activity))?);
    }
    let unit = Unit::of(&metric);
    let credited: Vec<String> = activity
        .credited_amounts
        .iter()
        .map(|c| format!("{} {}", names.name(&c.member), unit.format(c.amount)))
        .collect();
    out::line(format!(
        "{}  {} of {} credited to {} ({})",
        activity.name,
        unit.format(activity.value),
        metric.display_name,
        credited.join(", "),
        out::when(activity.occurred_at.as_ref()),
    ))?;
    Ok(())
}

// === progress ===

/// `milestones progress`.
#[derive(Args, Debug)]
pub struct ProgressArgs {
    /// The milestone (resource name or display name). Omit it and give
    /// --owner to see all of an owner's active milestones.
    #[arg(required_unless_present = "owner")]
    pub milestone: Option<String>,
    /// Every ACTIVE milestone of this team or member instead (resource name
    /// or display name), as a table.
    #[arg(long, conflicts_with = "milestone")]
    pub owner: Option<String>,
}

fn status_name(status: i32) -> String {
    p::ProgressStatus::try_from(status).map_or("?".to_string(), |s| short(s.as_str_name(), "PROGRESS_STATUS_"))
}

pub async fn progress(conn: &mut Conn, args: ProgressArgs, format: Format) -> anyhow::Result<()> {
    if let Some(owner) = args.owner {
        return owner_progress(conn, &owner, format).await;
    }
    let wanted = args.milestone.unwrap_or_default();
    let milestone = resolve::milestone(&mut conn.goal, "milestone", &wanted).await?;
    if milestone.state == g::MilestoneState::Draft as i32 {
        return Err(refuse(
            "milestone",
            format!(
                "{} is a DRAFT, which is not tracked yet: activate it with `milestones milestones activate {}`",
                milestone.name, milestone.name
            ),
        ));
    }
    let name = format!("{}/progress", milestone.name);
    let progress = settle(|| {
        let mut c = conn.progress.clone();
        let name = name.clone();
        async move {
            c.get_progress(p::GetProgressRequest { name })
                .await
                .map(|r| r.into_inner())
        }
    })
    .await
    .map_err(explain)?;
    if format == Format::Json {
        let mut json = out::progress_json(&progress);
        json["display_name"] = Value::String(milestone.display_name.clone());
        return Ok(out::json(&json)?);
    }
    let names = Directory::load(&mut conn.goal).await?;
    let unit = names.unit(&progress.metric);
    let pace = if progress.total_days > 0 {
        i64::from(progress.elapsed_days) * 10_000 / i64::from(progress.total_days)
    } else {
        0
    };
    let colour = out::status_style(progress.status);
    let period = if progress.fiscal_period.is_empty() {
        String::new()
    } else {
        format!("{} ", progress.fiscal_period)
    };
    let rows: Vec<(&str, String)> = vec![
        ("owner", format!("{} ({})", names.name(&progress.owner), progress.owner)),
        ("metric", names.name(&progress.metric).to_string()),
        (
            "period",
            format!(
                "{period}{} to {}, day {} of {}",
                out::date(progress.start_date.as_ref()),
                out::date(progress.end_date.as_ref()),
                progress.elapsed_days,
                progress.total_days
            ),
        ),
        ("value", unit.format(progress.value)),
        ("target", unit.format(progress.target)),
        (
            "attainment",
            format!(
                "{} {}",
                paint(colour, out::bar(progress.attainment_basis_points, 30)),
                out::percent(progress.attainment_basis_points)
            ),
        ),
        ("status", paint(colour, status_name(progress.status))),
        (
            "expected",
            format!(
                "{} by today at a linear pace ({})",
                unit.format(progress.expected_value),
                out::percent(pace)
            ),
        ),
        (
            "projected",
            format!("{} at the end of the period", unit.format(progress.projected_value)),
        ),
    ];
    out::line(paint(
        out::BOLD,
        format!("{} ({})", milestone.display_name, milestone.name),
    ))?;
    for (label, value) in rows {
        out::line(format!("  {label:<12}{value}"))?;
    }
    if let Some(s) = progress.stretch_target {
        out::line(format!("  {:<12}{}", "stretch", unit.format(s)))?;
    }
    for c in &progress.checkpoints {
        let mark = if c.reached {
            paint(out::GREEN, "✓")
        } else {
            paint(out::DIM, "·")
        };
        let due = out::date(c.due_date.as_ref());
        let due = if due.is_empty() { due } else { format!(" by {due}") };
        let label = if c.display_name.is_empty() {
            format!("#{}", c.index + 1)
        } else {
            c.display_name.clone()
        };
        out::line(format!(
            "  {:<12}{mark} {label}: {}{due}",
            "checkpoint",
            unit.format(c.target)
        ))?;
    }
    out::line(format!(
        "  {:<12}{}",
        "activities",
        out::thousands(progress.activity_count)
    ))?;
    Ok(())
}

async fn owner_progress(conn: &mut Conn, owner: &str, format: Format) -> anyhow::Result<()> {
    let owner = resolve::owner(&mut conn.goal, "--owner", owner).await?;
    let milestones = resolve::all_milestones(
        &mut conn.goal,
        g::ListMilestonesRequest {
            owner: owner.name().to_string(),
            state: g::MilestoneState::Active as i32,
            ..Default::default()
        },
    )
    .await?;
    let mut all = Vec::new();
    for chunk in milestones.chunks(100) {
        let names: Vec<String> = chunk.iter().map(|m| format!("{}/progress", m.name)).collect();
        let batch = settle(|| {
            let mut c = conn.progress.clone();
            let names = names.clone();
            async move {
                c.batch_get_progress(p::BatchGetProgressRequest { names })
                    .await
                    .map(|r| r.into_inner().progress)
            }
        })
        .await
        .map_err(explain)?;
        all.extend(chunk.iter().cloned().zip(batch));
    }
    if format == Format::Json {
        let rows: Vec<Value> = all
            .iter()
            .map(|(m, p)| {
                let mut j = out::progress_json(p);
                j["display_name"] = Value::String(m.display_name.clone());
                j
            })
            .collect();
        return Ok(out::json(&Value::Array(rows))?);
    }
    let names = Directory::load(&mut conn.goal).await?;
    out::line(paint(out::BOLD, format!("{} ({})", owner.display_name(), owner.name())))?;
    let mut table = Table::new(&[
        "MILESTONE",
        "PERIOD",
        ">VALUE",
        ">TARGET",
        "PROGRESS",
        ">ATTAINMENT",
        "STATUS",
    ]);
    for (m, p) in &all {
        let unit = names.unit(&p.metric);
        let colour = out::status_style(p.status);
        table.row(vec![
            m.display_name.as_str().into(),
            p.fiscal_period.as_str().into(),
            unit.format(p.value).into(),
            unit.format(p.target).into(),
            Cell::styled(out::bar(p.attainment_basis_points, 20), colour),
            out::percent(p.attainment_basis_points).into(),
            Cell::styled(status_name(p.status), colour),
        ]);
    }
    if table.is_empty() {
        out::line(paint(out::DIM, "no active milestones"))?;
        return Ok(());
    }
    Ok(table.print()?)
}

// === leaderboard ===

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum RankArg {
    /// Attainment against each member's own milestone for the metric and
    /// period; members without one come after, by value.
    Attainment,
    /// The value reached.
    Value,
}

/// `milestones leaderboard`.
#[derive(Args, Debug)]
pub struct LeaderboardArgs {
    /// The metric to rank on (resource name or display name).
    #[arg(long)]
    pub metric: String,
    /// Rank the members of this team and its sub-teams (resource name or
    /// display name); omit for the whole tenant.
    #[arg(long)]
    pub team: Option<String>,
    /// The fiscal period, e.g. FY2027-Q1, FY2027-H1 or FY2027; defaults to
    /// the current fiscal quarter.
    #[arg(long)]
    pub period: Option<String>,
    /// What to rank by.
    #[arg(long, value_enum, default_value = "attainment")]
    pub by: RankArg,
    /// At most this many rows.
    #[arg(long, default_value_t = 50)]
    pub limit: usize,
}

pub async fn leaderboard(conn: &mut Conn, args: LeaderboardArgs, format: Format) -> anyhow::Result<()> {
    let metric = resolve::metric(&mut conn.goal, "--metric", &args.metric).await?;
    let team = match &args.team {
        Some(t) => Some(resolve::team(&mut conn.goal, "--team", t).await?),
        None => None,
    };
    let calendar = Calendar::load(&mut conn.goal).await?;
    let period = args.period.clone().unwrap_or_else(|| calendar.this_quarter());
    calendar.range(&period, "--period")?;
    let rank_by = match args.by {
        RankArg::Attainment => p::RankBy::Attainment,
        RankArg::Value => p::RankBy::Value,
    };
    let mut entries = Vec::new();
    let mut page_token = String::new();
    let first = loop {
        let req = p::GetLeaderboardRequest {
            team: team.as_ref().map(|t| t.name.clone()).unwrap_or_default(),
            metric: metric.name.clone(),
            period: Some(p::get_leaderboard_request::Period::FiscalPeriod(period.clone())),
            rank_by: rank_by as i32,
            page_size: args.limit.clamp(1, 500) as i32,
            page_token: page_token.clone(),
        };
        let page = settle(|| {
            let mut c = conn.progress.clone();
            let req = req.clone();
            async move { c.get_leaderboard(req).await.map(|r| r.into_inner()) }
        })
        .await
        .map_err(explain)?;
        entries.extend(page.entries.iter().cloned());
        if page.next_page_token.is_empty() || entries.len() >= args.limit {
            break page;
        }
        page_token = page.next_page_token.clone();
    };
    entries.truncate(args.limit);
    if format == Format::Json {
        return Ok(out::json(&json!({
            "metric": metric.name,
            "team": team.as_ref().map(|t| t.name.clone()).unwrap_or_default(),
            "fiscal_period": period,
            "start_date": out::date(first.start_date.as_ref()),
            "end_date": out::date(first.end_date.as_ref()),
            "total_size": first.total_size,
            "as_of": out::timestamp(first.as_of.as_ref()),
            "entries": entries.iter().map(out::leaderboard_entry_json).collect::<Vec<_>>(),
        }))?);
    }
    let unit = Unit::of(&metric);
    let (pace, elapsed, total) = match (
        first.start_date.as_ref().and_then(out::to_naive),
        first.end_date.as_ref().and_then(out::to_naive),
    ) {
        (Some(s), Some(e)) => calendar.pace(s, e),
        _ => (0, 0, 0),
    };
    let scope = team.as_ref().map_or("everyone".to_string(), |t| t.display_name.clone());
    out::line(format!(
        "{} · {period} ({} to {}) · {scope} · day {elapsed} of {total}, pace {}",
        paint(out::BOLD, &metric.display_name),
        out::date(first.start_date.as_ref()),
        out::date(first.end_date.as_ref()),
        out::percent(pace),
    ))?;
    let mut table = Table::new(&[">#", "MEMBER", ">VALUE", ">TARGET", "PROGRESS", ">ATTAINMENT"]);
    for e in &entries {
        let (bar, attainment) = match e.attainment_basis_points {
            Some(bp) => (
                Cell::styled(out::bar(bp, 24), out::pace_style(bp, pace)),
                Cell::styled(out::percent(bp), out::pace_style(bp, pace)),
            ),
            None => (Cell::styled("no milestone", out::DIM), Cell::styled("-", out::DIM)),
        };
        let rank = match e.rank {
            1 => Cell::styled("1", out::YELLOW),
            r => Cell::new(r.to_string()),
        };
        table.row(vec![
            rank,
            e.display_name.as_str().into(),
            unit.format(e.value).into(),
            or_dash(e.target.map(|t| unit.format(t))),
            bar,
            attainment,
        ]);
    }
    if table.is_empty() {
        out::line(paint(out::DIM, "nobody to rank: the team has no members"))?;
        return Ok(());
    }
    table.print()?;
    if (first.total_size as usize) > entries.len() {
        out::line(paint(
            out::DIM,
            format!(
                "{} of {} members; see more with --limit",
                entries.len(),
                first.total_size
            ),
        ))?;
    }
    Ok(())
}
