//! Turns what people type into resource names: `teams/{id}` is taken as
//! is (after checking it exists), anything else is looked up by display
//! name (members also by e-mail or token subject), case-insensitively.
//! Ambiguous names are refused with the candidates, so the user can pick.

use milestones_api::goal as g;

use super::client::Goal;
use super::errors::{explain, refuse};

/// Every team of the tenant (all pages).
pub async fn all_teams(goal: &mut Goal) -> anyhow::Result<Vec<g::Team>> {
    let mut out = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = goal
            .list_teams(g::ListTeamsRequest {
                page_size: 500,
                page_token,
                ..Default::default()
            })
            .await
            .map_err(explain)?
            .into_inner();
        out.extend(page.teams);
        if page.next_page_token.is_empty() {
            return Ok(out);
        }
        page_token = page.next_page_token;
    }
}

/// Every member of the tenant, or of a team subtree today (all pages).
pub async fn all_members(goal: &mut Goal, team: &str, role: g::MemberRole) -> anyhow::Result<Vec<g::Member>> {
    let mut out = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = goal
            .list_members(g::ListMembersRequest {
                team: team.to_string(),
                role: role as i32,
                page_size: 500,
                page_token,
                ..Default::default()
            })
            .await
            .map_err(explain)?
            .into_inner();
        out.extend(page.members);
        if page.next_page_token.is_empty() {
            return Ok(out);
        }
        page_token = page.next_page_token;
    }
}

/// Every metric of the tenant (all pages).
pub async fn all_metrics(goal: &mut Goal) -> anyhow::Result<Vec<g::Metric>> {
    let mut out = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = goal
            .list_metrics(g::ListMetricsRequest {
                page_size: 500,
                page_token,
            })
            .await
            .map_err(explain)?
            .into_inner();
        out.extend(page.metrics);
        if page.next_page_token.is_empty() {
            return Ok(out);
        }
        page_token = page.next_page_token;
    }
}

/// Every milestone matching `filter` (all pages).
pub async fn all_milestones(goal: &mut Goal, filter: g::ListMilestonesRequest) -> anyhow::Result<Vec<g::Milestone>> {
    let mut out = Vec::new();
    let mut req = g::ListMilestonesRequest {
        page_size: 500,
        ..filter
    };
    loop {
        let page = goal.list_milestones(req.clone()).await.map_err(explain)?.into_inner();
        out.extend(page.milestones);
        if page.next_page_token.is_empty() {
            return Ok(out);
        }
        req.page_token = page.next_page_token;
    }
}

/// The one candidate named `wanted`, or an error that lists the choices.
fn pick<T>(
    flag: &str,
    kind: &str,
    list_hint: &str,
    wanted: &str,
    candidates: Vec<T>,
    describe: impl Fn(&T) -> String,
) -> anyhow::Result<T> {
    let count = candidates.len();
    let mut it = candidates.into_iter();
    match (it.next(), count) {
        (Some(only), 1) => Ok(only),
        (None, _) => Err(refuse(
            flag,
            format!("no {kind} is named {wanted:?}; see `milestones {list_hint} list`, or give its resource name"),
        )),
        (Some(first), _) => {
            let names: Vec<String> = std::iter::once(first).chain(it).map(|c| describe(&c)).collect();
            Err(refuse(
                flag,
                format!(
                    "{wanted:?} matches {count} {kind}s ({}); give the resource name instead",
                    names.join(", ")
                ),
            ))
        }
    }
}

fn same(a: &str, b: &str) -> bool {
    a.trim().to_lowercase() == b.trim().to_lowercase()
}

/// A team by `teams/{id}` or display name.
pub async fn team(goal: &mut Goal, flag: &str, wanted: &str) -> anyhow::Result<g::Team> {
    if wanted.starts_with("teams/") {
        return Ok(goal
            .get_team(g::GetTeamRequest { name: wanted.into() })
            .await
            .map_err(explain)?
            .into_inner());
    }
    let matches: Vec<g::Team> = all_teams(goal)
        .await?
        .into_iter()
        .filter(|t| same(&t.display_name, wanted))
        .collect();
    pick(flag, "team", "teams", wanted, matches, |t| t.name.clone())
}

/// A member by `members/{id}`, display name, e-mail or token subject.
pub async fn member(goal: &mut Goal, flag: &str, wanted: &str) -> anyhow::Result<g::Member> {
    if wanted.starts_with("members/") {
        return Ok(goal
            .get_member(g::GetMemberRequest { name: wanted.into() })
            .await
            .map_err(explain)?
            .into_inner());
    }
    let matches: Vec<g::Member> = all_members(goal, "", g::MemberRole::Unspecified)
        .await?
        .into_iter()
        .filter(|m| {
            same(&m.display_name, wanted) || same(&m.email, wanted) || (!m.subject.is_empty() && m.subject == wanted)
        })
        .collect();
    pick(flag, "member", "members", wanted, matches, |m| {
        format!("{} <{}>", m.name, m.email)
    })
}

/// A metric by `metrics/{id}` or display name.
pub async fn metric(goal: &mut Goal, flag: &str, wanted: &str) -> anyhow::Result<g::Metric> {
    if wanted.starts_with("metrics/") {
        return Ok(goal
            .get_metric(g::GetMetricRequest { name: wanted.into() })
            .await
            .map_err(explain)?
            .into_inner());
    }
    let matches: Vec<g::Metric> = all_metrics(goal)
        .await?
        .into_iter()
        .filter(|m| same(&m.display_name, wanted))
        .collect();
    pick(flag, "metric", "metrics", wanted, matches, |m| m.name.clone())
}

/// A milestone by `milestones/{id}` or display name.
pub async fn milestone(goal: &mut Goal, flag: &str, wanted: &str) -> anyhow::Result<g::Milestone> {
    if wanted.starts_with("milestones/") {
        return Ok(goal
            .get_milestone(g::GetMilestoneRequest {
                name: wanted.trim_end_matches("/progress").into(),
            })
            .await
            .map_err(explain)?
            .into_inner());
    }
    let matches: Vec<g::Milestone> = all_milestones(goal, g::ListMilestonesRequest::default())
        .await?
        .into_iter()
        .filter(|m| same(&m.display_name, wanted))
        .collect();
    pick(flag, "milestone", "milestones", wanted, matches, |m| {
        format!("{} {}", m.name, m.fiscal_period)
    })
}

/// Who owns a milestone: a team or a member, by name or display name.
pub enum Owner {
    Team(g::Team),
    Member(g::Member),
}

impl Owner {
    pub fn name(&self) -> &str {
        match self {
            Owner::Team(t) => &t.name,
            Owner::Member(m) => &m.name,
        }
    }

    pub fn display_name(&self) -> &str {
        match self {
            Owner::Team(t) => &t.display_name,
            Owner::Member(m) => &m.display_name,
        }
    }
}

/// A team or member, by resource name or display name (a name that is both
/// a team's and a member's is refused as ambiguous).
pub async fn owner(goal: &mut Goal, flag: &str, wanted: &str) -> anyhow::Result<Owner> {
    if wanted.starts_with("teams/") {
        return Ok(Owner::Team(team(goal, flag, wanted).await?));
    }
    if wanted.starts_with("members/") {
        return Ok(Owner::Member(member(goal, flag, wanted).await?));
    }
    let teams: Vec<g::Team> = all_teams(goal)
        .await?
        .into_iter()
        .filter(|t| same(&t.display_name, wanted))
        .collect();
    let members: Vec<g::Member> = all_members(goal, "", g::MemberRole::Unspecified)
        .await?
        .into_iter()
        .filter(|m| same(&m.display_name, wanted) || same(&m.email, wanted))
        .collect();
    let owners: Vec<Owner> = teams
        .into_iter()
        .map(Owner::Team)
        .chain(members.into_iter().map(Owner::Member))
        .collect();
    pick(flag, "team or member", "teams", wanted, owners, |o| {
        o.name().to_string()
    })
}

/// Display names of the tenant's teams, members and metrics, for showing
/// people names instead of ids. Loaded once per command.
#[derive(Default)]
pub struct Directory {
    names: std::collections::HashMap<String, String>,
    metrics: std::collections::HashMap<String, g::Metric>,
}

impl Directory {
    pub async fn load(goal: &mut Goal) -> anyhow::Result<Directory> {
        let mut d = Directory::default();
        for t in all_teams(goal).await? {
            d.names.insert(t.name, t.display_name);
        }
        for m in all_members(goal, "", g::MemberRole::Unspecified).await? {
            d.names.insert(m.name, m.display_name);
        }
        for m in all_metrics(goal).await? {
            d.names.insert(m.name.clone(), m.display_name.clone());
            d.metrics.insert(m.name.clone(), m);
        }
        Ok(d)
    }

    /// The display name of a team, member or metric, or the resource name
    /// itself if unknown (e.g. created after loading).
    pub fn name<'a>(&'a self, resource: &'a str) -> &'a str {
        self.names.get(resource).map_or(resource, String::as_str)
    }

    pub fn remember(&mut self, resource: &str, display_name: &str) {
        self.names.insert(resource.to_string(), display_name.to_string());
    }

    /// How the values of a metric read.
    pub fn unit(&self, metric: &str) -> super::output::Unit {
        self.metrics
            .get(metric)
            .map(super::output::Unit::of)
            .unwrap_or_default()
    }
}
