//! `teams`, `members`, `memberships`, `metrics` and `milestones`: create
//! and list the org, what it measures and the milestones set on it.

use clap::{Subcommand, ValueEnum};
use milestones_api::goal as g;
use milestones_domain::calendar::parse_date;
use serde_json::Value;

use super::client::{Calendar, Conn};
use super::errors::{explain, refuse};
use super::output::{self as out, paint, short, Cell, Format, Table, Unit};
use super::resolve::{self, Directory};

// === teams ===

#[derive(Subcommand, Debug)]
pub enum TeamAction {
    /// Lists the teams, with their parents.
    List {
        /// Only the direct sub-teams of this team (resource name or display
        /// name); `-` lists the top-level teams only.
        #[arg(long)]
        parent: Option<String>,
    },
    /// Creates a team and prints its resource name (`teams/{id}`).
    Create {
        /// The team's name, e.g. "EMEA Enterprise".
        name: String,
        /// The parent team (resource name or display name); omit for a
        /// top-level team.
        #[arg(long, default_value = "")]
        parent: String,
    },
}

pub async fn teams(conn: &mut Conn, action: TeamAction, format: Format) -> anyhow::Result<()> {
    match action {
        TeamAction::List { parent } => {
            let parent = match parent.as_deref() {
                None | Some("") => String::new(),
                Some("-") => "-".to_string(),
                Some(p) => resolve::team(&mut conn.goal, "--parent", p).await?.name,
            };
            let all = resolve::all_teams(&mut conn.goal).await?;
            let names: std::collections::HashMap<&str, &str> =
                all.iter().map(|t| (t.name.as_str(), t.display_name.as_str())).collect();
            let shown: Vec<&g::Team> = all
                .iter()
                .filter(|t| match parent.as_str() {
                    "" => true,
                    "-" => t.parent.is_empty(),
                    p => t.parent == p,
                })
                .collect();
            if format == Format::Json {
                return Ok(out::json(&Value::Array(
                    shown.iter().map(|t| out::team_json(t)).collect(),
                ))?);
            }
            let mut table = Table::new(&["NAME", "DISPLAY NAME", "PARENT"]);
            for t in shown {
                let parent = names.get(t.parent.as_str()).copied().unwrap_or(&t.parent);
                table.row(vec![
                    t.name.as_str().into(),
                    t.display_name.as_str().into(),
                    parent.into(),
                ]);
            }
            Ok(table.print()?)
        }
        TeamAction::Create { name, parent } => {
            let parent = if parent.is_empty() {
                parent
            } else {
                resolve::team(&mut conn.goal, "--parent", &parent).await?.name
            };
            let team = conn
                .goal
                .create_team(g::CreateTeamRequest {
                    team: Some(g::Team {
                        display_name: name,
                        parent,
                        ..Default::default()
                    }),
                    request_id: new_request_id(),
                })
                .await
                .map_err(explain)?
                .into_inner();
            created(format, &team.name, out::team_json(&team))
        }
    }
}

/// Prints what a create returned: its name for people (so that
/// `X=$(milestones teams create ...)` works) or the resource for scripts.
fn created(format: Format, name: &str, json: Value) -> anyhow::Result<()> {
    match format {
        Format::Table => out::line(name)?,
        Format::Json => out::json(&json)?,
    }
    Ok(())
}

/// A fresh idempotency key for one write.
pub fn new_request_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

fn date_flag(flag: &str, text: &str) -> anyhow::Result<milestones_api::Date> {
    parse_date(text)
        .map(out::to_wire)
        .ok_or_else(|| refuse(flag, format!("{text:?} is not a date: use YYYY-MM-DD, e.g. 2026-10-01")))
}

// === members and memberships ===

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum RoleArg {
    /// Sells and has personal milestones.
    Rep,
    /// Sets and reviews milestones for their teams.
    Manager,
    /// Administers the tenant.
    Admin,
}

impl RoleArg {
    fn wire(self) -> g::MemberRole {
        match self {
            RoleArg::Rep => g::MemberRole::Rep,
            RoleArg::Manager => g::MemberRole::Manager,
            RoleArg::Admin => g::MemberRole::Admin,
        }
    }
}

#[derive(Subcommand, Debug)]
pub enum MemberAction {
    /// Lists the members (people), optionally of one team subtree today.
    List {
        /// Only members of this team or its sub-teams today (resource name
        /// or display name).
        #[arg(long)]
        team: Option<String>,
        /// Only members with this role.
        #[arg(long, value_enum)]
        role: Option<RoleArg>,
    },
    /// Creates a member and prints their resource name (`members/{id}`).
    Create {
        /// The member's full name, e.g. "Ada Lovelace".
        name: String,
        /// Their e-mail address, unique in the tenant.
        #[arg(long)]
        email: String,
        /// What they do in the sales org.
        #[arg(long, value_enum, default_value = "rep")]
        role: RoleArg,
        /// The `sub` claim of their tokens, which lets them act as
        /// themselves (e.g. give kudos); unique in the tenant.
        #[arg(long, default_value = "")]
        subject: String,
        /// Also put them in this team (resource name or display name).
        #[arg(long)]
        team: Option<String>,
        /// With --team: the first day of the membership (YYYY-MM-DD);
        /// defaults to the first day of the current fiscal quarter, so this
        /// quarter's activities count for the team.
        #[arg(long, requires = "team")]
        since: Option<String>,
    },
}

pub async fn members(conn: &mut Conn, action: MemberAction, format: Format) -> anyhow::Result<()> {
    match action {
        MemberAction::List { team, role } => {
            let team = match team {
                Some(t) => resolve::team(&mut conn.goal, "--team", &t).await?.name,
                None => String::new(),
            };
            let role = role.map_or(g::MemberRole::Unspecified, RoleArg::wire);
            let members = resolve::all_members(&mut conn.goal, &team, role).await?;
            if format == Format::Json {
                return Ok(out::json(&Value::Array(
                    members.iter().map(out::member_json).collect(),
                ))?);
            }
            let mut table = Table::new(&["NAME", "DISPLAY NAME", "EMAIL", "ROLE", "SUBJECT"]);
            for m in &members {
                let role =
                    g::MemberRole::try_from(m.role).map_or("?".to_string(), |r| short(r.as_str_name(), "MEMBER_ROLE_"));
                table.row(vec![
                    m.name.as_str().into(),
                    m.display_name.as_str().into(),
                    m.email.as_str().into(),
                    role.into(),
                    m.subject.as_str().into(),
                ]);
            }
            Ok(table.print()?)
        }
        MemberAction::Create {
            name,
            email,
            role,
            subject,
            team,
            since,
        } => {
            // Resolve the team first, so a typo creates nothing.
            let team = match team {
                Some(t) => Some(resolve::team(&mut conn.goal, "--team", &t).await?),
                None => None,
            };
            let start = match since {
                Some(s) => date_flag("--since", &s)?,
                None => quarter_start(conn).await?,
            };
            let member = conn
                .goal
                .create_member(g::CreateMemberRequest {
                    member: Some(g::Member {
                        display_name: name,
                        email,
                        role: role.wire() as i32,
                        subject,
                        ..Default::default()
                    }),
                    request_id: new_request_id(),
                })
                .await
                .map_err(explain)?
                .into_inner();
            let mut json = out::member_json(&member);
            if let Some(team) = team {
                let membership = join(conn, &member.name, &team.name, Some(start), None).await?;
                json["membership"] = out::membership_json(&membership);
            }
            created(format, &member.name, json)
        }
    }
}

async fn quarter_start(conn: &mut Conn) -> anyhow::Result<milestones_api::Date> {
    let calendar = Calendar::load(&mut conn.goal).await?;
    let range = calendar.range(&calendar.this_quarter(), "--since")?;
    Ok(out::to_wire(range.start()))
}

async fn join(
    conn: &mut Conn,
    member: &str,
    team: &str,
    start: Option<milestones_api::Date>,
    end: Option<milestones_api::Date>,
) -> anyhow::Result<g::Membership> {
    Ok(conn
        .goal
        .create_membership(g::CreateMembershipRequest {
            membership: Some(g::Membership {
                member: member.to_string(),
                team: team.to_string(),
                start_date: start,
                end_date: end,
                ..Default::default()
            }),
            request_id: new_request_id(),
        })
        .await
        .map_err(explain)?
        .into_inner())
}

#[derive(Subcommand, Debug)]
pub enum MembershipAction {
    /// Lists memberships (who is in which team, from when to when).
    List {
        /// Only this member's (resource name, display name or e-mail).
        #[arg(long)]
        member: Option<String>,
        /// Only this team's, not its sub-teams' (resource name or display
        /// name).
        #[arg(long)]
        team: Option<String>,
    },
    /// Puts a member in a team from a date and prints the membership's
    /// resource name. A member is in one team at a time: end the previous
    /// membership first when someone moves.
    Create {
        /// The member (resource name, display name or e-mail).
        #[arg(long)]
        member: String,
        /// The team (resource name or display name).
        #[arg(long)]
        team: String,
        /// The first day (YYYY-MM-DD); defaults to the first day of the
        /// current fiscal quarter.
        #[arg(long)]
        since: Option<String>,
        /// The last day (YYYY-MM-DD), inclusive; omit for open-ended.
        #[arg(long)]
        until: Option<String>,
    },
}

pub async fn memberships(conn: &mut Conn, action: MembershipAction, format: Format) -> anyhow::Result<()> {
    match action {
        MembershipAction::List { member, team } => {
            let member = match member {
                Some(m) => resolve::member(&mut conn.goal, "--member", &m).await?.name,
                None => String::new(),
            };
            let team = match team {
                Some(t) => resolve::team(&mut conn.goal, "--team", &t).await?.name,
                None => String::new(),
            };
            let mut all = Vec::new();
            let mut page_token = String::new();
            loop {
                let page = conn
                    .goal
                    .list_memberships(g::ListMembershipsRequest {
                        member: member.clone(),
                        team: team.clone(),
                        page_size: 500,
                        page_token,
                        ..Default::default()
                    })
                    .await
                    .map_err(explain)?
                    .into_inner();
                all.extend(page.memberships);
                if page.next_page_token.is_empty() {
                    break;
                }
                page_token = page.next_page_token;
            }
            if format == Format::Json {
                return Ok(out::json(&Value::Array(
                    all.iter().map(out::membership_json).collect(),
                ))?);
            }
            let names = Directory::load(&mut conn.goal).await?;
            let mut table = Table::new(&["NAME", "MEMBER", "TEAM", "FROM", "UNTIL"]);
            for m in &all {
                table.row(vec![
                    m.name.as_str().into(),
                    names.name(&m.member).into(),
                    names.name(&m.team).into(),
                    out::date(m.start_date.as_ref()).into(),
                    out::date(m.end_date.as_ref()).into(),
                ]);
            }
            Ok(table.print()?)
        }
        MembershipAction::Create {
            member,
            team,
            since,
            until,
        } => {
            let member = resolve::member(&mut conn.goal, "--member", &member).await?;
            let team = resolve::team(&mut conn.goal, "--team", &team).await?;
            let start = match since {
                Some(s) => date_flag("--since", &s)?,
                None => quarter_start(conn).await?,
            };
            let end = until.map(|u| date_flag("--until", &u)).transpose()?;
            let membership = join(conn, &member.name, &team.name, Some(start), end).await?;
            created(format, &membership.name, out::membership_json(&membership))
        }
    }
}

// === metrics ===

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum UnitArg {
    /// A plain count (calls, meetings, deals).
    Count,
    /// Money, in the minor unit of --currency (cents).
    Currency,
    /// A duration in whole seconds (talk time).
    Seconds,
}

#[derive(Subcommand, Debug)]
pub enum MetricAction {
    /// Lists the metrics.
    List,
    /// Creates a metric and prints its resource name (`metrics/{id}`).
    Create {
        /// The metric's name, e.g. "New ARR".
        name: String,
        /// What its values count.
        #[arg(long, value_enum, default_value = "count")]
        unit: UnitArg,
        /// ISO-4217 code such as EUR, required with `--unit currency`.
        #[arg(long, default_value = "")]
        currency: String,
        /// Count activities instead of summing their values (e.g. deals
        /// won, whatever their size).
        #[arg(long)]
        count_activities: bool,
        /// Accept negative values (credit notes, churn).
        #[arg(long)]
        allow_negative: bool,
        /// What the metric means and how it is counted.
        #[arg(long, default_value = "")]
        description: String,
    },
}

pub async fn metrics(conn: &mut Conn, action: MetricAction, format: Format) -> anyhow::Result<()> {
    match action {
        MetricAction::List => {
            let metrics = resolve::all_metrics(&mut conn.goal).await?;
            if format == Format::Json {
                return Ok(out::json(&Value::Array(
                    metrics.iter().map(out::metric_json).collect(),
                ))?);
            }
            let mut table = Table::new(&["NAME", "DISPLAY NAME", "UNIT", "AGGREGATION"]);
            for m in &metrics {
                let unit =
                    g::MetricUnit::try_from(m.unit).map_or("?".to_string(), |u| short(u.as_str_name(), "METRIC_UNIT_"));
                let unit = if m.currency_code.is_empty() {
                    unit
                } else {
                    format!("{unit} ({})", m.currency_code)
                };
                let aggregation = g::MetricAggregation::try_from(m.aggregation)
                    .map_or("?".to_string(), |a| short(a.as_str_name(), "METRIC_AGGREGATION_"));
                table.row(vec![
                    m.name.as_str().into(),
                    m.display_name.as_str().into(),
                    unit.into(),
                    aggregation.into(),
                ]);
            }
            Ok(table.print()?)
        }
        MetricAction::Create {
            name,
            unit,
            currency,
            count_activities,
            allow_negative,
            description,
        } => {
            let unit = match unit {
                UnitArg::Count => g::MetricUnit::Count,
                UnitArg::Currency => g::MetricUnit::Currency,
                UnitArg::Seconds => g::MetricUnit::Seconds,
            };
            let aggregation = if count_activities {
                g::MetricAggregation::Count
            } else {
                g::MetricAggregation::Sum
            };
            let metric = conn
                .goal
                .create_metric(g::CreateMetricRequest {
                    metric: Some(g::Metric {
                        display_name: name,
                        description,
                        unit: unit as i32,
                        currency_code: currency.to_uppercase(),
                        aggregation: aggregation as i32,
                        allow_negative_values: allow_negative,
                        ..Default::default()
                    }),
                    request_id: new_request_id(),
                })
                .await
                .map_err(explain)?
                .into_inner();
            created(format, &metric.name, out::metric_json(&metric))
        }
    }
}

// === milestones ===

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum StateArg {
    Draft,
    Active,
    Achieved,
    Missed,
    Cancelled,
}

#[derive(Subcommand, Debug)]
pub enum MilestoneAction {
    /// Lists milestones, with their owner, period, target and state.
    List {
        /// Only this owner's: a team or member (resource name or display
        /// name).
        #[arg(long, default_value = "")]
        owner: String,
        /// Only those owned in this team's subtree (the team, its sub-teams
        /// and their members).
        #[arg(long)]
        team: Option<String>,
        /// Only milestones overlapping this fiscal period, e.g. FY2027-Q1.
        #[arg(long, default_value = "")]
        period: String,
        /// Only milestones on this metric (resource name or display name).
        #[arg(long)]
        metric: Option<String>,
        /// Only milestones in this state.
        #[arg(long, value_enum)]
        state: Option<StateArg>,
    },
    /// Creates a milestone and prints its resource name
    /// (`milestones/{id}`).
    Create {
        /// What is to be achieved, e.g. "EMEA new business Q1".
        name: String,
        /// Who owns it: a team or member (resource name or display name).
        #[arg(long)]
        owner: String,
        /// The metric it is measured on (resource name or display name).
        #[arg(long)]
        metric: String,
        /// The fiscal period, e.g. FY2027-Q1, FY2027-H1, FY2027 or
        /// FY2027-M01; defaults to the current fiscal quarter.
        #[arg(long)]
        period: Option<String>,
        /// The target in the metric's smallest unit (cents for money).
        #[arg(long)]
        target: i64,
        /// A stretch target above --target, in the same unit.
        #[arg(long)]
        stretch: Option<i64>,
        /// An intermediate target: `[LABEL=]VALUE[@YYYY-MM-DD]`, where VALUE
        /// is in the metric's unit or a share of --target such as `50%`;
        /// repeat for several, in increasing order, e.g.
        /// `--checkpoint Half-way=50%@2027-02-14`.
        #[arg(long = "checkpoint", value_name = "CHECKPOINT")]
        checkpoints: Vec<String>,
        /// The milestone this one contributes to (resource name or display
        /// name).
        #[arg(long)]
        parent: Option<String>,
        /// Why it matters and how it will be reached.
        #[arg(long, default_value = "")]
        description: String,
        /// Make it ACTIVE (tracked) straight away instead of DRAFT.
        #[arg(long)]
        activate: bool,
    },
    /// Moves a DRAFT milestone to ACTIVE, so progress tracks it.
    Activate {
        /// The milestone (resource name or display name).
        milestone: String,
    },
}

/// Parses `[LABEL=]VALUE[@YYYY-MM-DD]`.
fn checkpoint(text: &str, target: i64) -> anyhow::Result<g::Checkpoint> {
    let bad = |why: &str| {
        refuse(
            "--checkpoint",
            format!("{text:?} {why}: use [LABEL=]VALUE[@YYYY-MM-DD], e.g. Half-way=50% or 1000000@2027-02-14"),
        )
    };
    let (label, rest) = match text.rsplit_once('=') {
        Some((l, r)) => (l.trim().to_string(), r),
        None => (String::new(), text),
    };
    let (value, due) = match rest.split_once('@') {
        Some((v, d)) => (v.trim(), Some(date_flag("--checkpoint", d.trim())?)),
        None => (rest.trim(), None),
    };
    let value = match value.strip_suffix('%') {
        Some(pct) => {
            let pct: f64 = pct.trim().parse().map_err(|_| bad("has no number before %"))?;
            (target as f64 * pct / 100.0).round() as i64
        }
        None => value.replace(['_', ','], "").parse().map_err(|_| bad("has no value"))?,
    };
    let label = if label.is_empty() && rest.trim_end().ends_with('%') {
        rest.split('@').next().unwrap_or_default().trim().to_string()
    } else {
        label
    };
    Ok(g::Checkpoint {
        display_name: label,
        target: value,
        due_date: due,
    })
}

pub async fn milestones(conn: &mut Conn, action: MilestoneAction, format: Format) -> anyhow::Result<()> {
    match action {
        MilestoneAction::List {
            owner,
            team,
            period,
            metric,
            state,
        } => {
            let owner = if owner.is_empty() {
                owner
            } else {
                resolve::owner(&mut conn.goal, "--owner", &owner)
                    .await?
                    .name()
                    .to_string()
            };
            let team_subtree = match team {
                Some(t) => resolve::team(&mut conn.goal, "--team", &t).await?.name,
                None => String::new(),
            };
            let metric = match metric {
                Some(m) => resolve::metric(&mut conn.goal, "--metric", &m).await?.name,
                None => String::new(),
            };
            let state = state.map_or(g::MilestoneState::Unspecified, |s| match s {
                StateArg::Draft => g::MilestoneState::Draft,
                StateArg::Active => g::MilestoneState::Active,
                StateArg::Achieved => g::MilestoneState::Achieved,
                StateArg::Missed => g::MilestoneState::Missed,
                StateArg::Cancelled => g::MilestoneState::Cancelled,
            });
            let milestones = resolve::all_milestones(
                &mut conn.goal,
                g::ListMilestonesRequest {
                    owner,
                    team_subtree,
                    fiscal_period: period,
                    metric,
                    state: state as i32,
                    ..Default::default()
                },
            )
            .await?;
            if format == Format::Json {
                return Ok(out::json(&Value::Array(
                    milestones.iter().map(out::milestone_json).collect(),
                ))?);
            }
            let names = Directory::load(&mut conn.goal).await?;
            let mut table = Table::new(&["NAME", "DISPLAY NAME", "OWNER", "PERIOD", ">TARGET", "STATE"]);
            for m in &milestones {
                let state = g::MilestoneState::try_from(m.state)
                    .map_or("?".to_string(), |s| short(s.as_str_name(), "MILESTONE_STATE_"));
                let period = if m.fiscal_period.is_empty() {
                    format!(
                        "{}..{}",
                        out::date(m.start_date.as_ref()),
                        out::date(m.end_date.as_ref())
                    )
                } else {
                    m.fiscal_period.clone()
                };
                table.row(vec![
                    m.name.as_str().into(),
                    m.display_name.as_str().into(),
                    names.name(&m.owner).into(),
                    period.into(),
                    names.unit(&m.metric).format(m.target).into(),
                    state.into(),
                ]);
            }
            Ok(table.print()?)
        }
        MilestoneAction::Create {
            name,
            owner,
            metric,
            period,
            target,
            stretch,
            checkpoints,
            parent,
            description,
            activate,
        } => {
            let owner = resolve::owner(&mut conn.goal, "--owner", &owner).await?;
            let metric = resolve::metric(&mut conn.goal, "--metric", &metric).await?;
            let parent = match parent {
                Some(p) => resolve::milestone(&mut conn.goal, "--parent", &p).await?.name,
                None => String::new(),
            };
            let period = match period {
                Some(p) => p,
                None => Calendar::load(&mut conn.goal).await?.this_quarter(),
            };
            let checkpoints = checkpoints
                .iter()
                .map(|c| checkpoint(c, target))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let m = conn
                .goal
                .create_milestone(g::CreateMilestoneRequest {
                    milestone: Some(g::Milestone {
                        display_name: name,
                        description,
                        owner: owner.name().to_string(),
                        metric: metric.name.clone(),
                        fiscal_period: period,
                        target,
                        stretch_target: stretch,
                        checkpoints,
                        parent,
                        ..Default::default()
                    }),
                    activate,
                    request_id: new_request_id(),
                })
                .await
                .map_err(explain)?
                .into_inner();
            if format == Format::Table {
                if let Some(a) = &m.assessment {
                    let realism = g::Realism::try_from(a.realism).unwrap_or(g::Realism::Unspecified);
                    if matches!(realism, g::Realism::Sandbagged | g::Realism::Unrealistic) {
                        let target = Unit::of(&metric).format(m.target);
                        anstream::eprintln!(
                            "{} the target of {target} looks {}: {}",
                            paint(out::YELLOW, "note:"),
                            short(realism.as_str_name(), "REALISM_").to_lowercase(),
                            a.explanation
                        );
                    }
                }
            }
            created(format, &m.name, out::milestone_json(&m))
        }
        MilestoneAction::Activate { milestone } => {
            let m = resolve::milestone(&mut conn.goal, "milestone", &milestone).await?;
            let m = conn
                .goal
                .activate_milestone(g::ActivateMilestoneRequest {
                    name: m.name,
                    etag: String::new(),
                    request_id: new_request_id(),
                })
                .await
                .map_err(explain)?
                .into_inner();
            created(format, &m.name, out::milestone_json(&m))
        }
    }
}

/// A table cell for an optional value.
pub fn or_dash(value: Option<String>) -> Cell {
    match value {
        Some(v) => Cell::new(v),
        None => Cell::styled("-", out::DIM),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Checkpoints take a label, a share of the target or a value, and a
    /// due date.
    #[test]
    fn checkpoints_parse() {
        let c = checkpoint("Half-way=50%@2027-02-14", 1_000).expect("parses");
        assert_eq!((c.display_name.as_str(), c.target), ("Half-way", 500));
        assert_eq!(c.due_date.map(|d| (d.month, d.day)), Some((2, 14)));
        let c = checkpoint("25%", 1_000).expect("parses");
        assert_eq!((c.display_name.as_str(), c.target, c.due_date), ("25%", 250, None));
        let c = checkpoint("1_500", 10_000).expect("parses");
        assert_eq!((c.display_name.as_str(), c.target), ("", 1_500));
        let e = checkpoint("half", 10_000).expect_err("no value");
        assert!(e.to_string().starts_with("--checkpoint:"), "{e}");
    }
}
