//! `watch`, `kudos` and `recognitions`: the live side of the suite.

use std::collections::HashMap;

use chrono::Utc;
use clap::{Args, ValueEnum};
use milestones_api::goal as g;
use milestones_api::progress as p;
use milestones_api::recognition as r;
use milestones_runtime::auth::Role;
use milestones_runtime::config::Settings;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tonic::Streaming;

use super::client::{dev_token, settle, settle_on, tenant_of, token, ClientArgs, Conn};
use super::errors::{explain, explain_with, refuse};
use super::org::new_request_id;
use super::output::{self as out, paint, short, Format, Table};
use super::resolve::{self, Directory};

// === watch ===

/// `milestones watch`.
#[derive(Args, Debug)]
pub struct WatchArgs {
    /// Follow this milestone's progress (resource name or display name).
    #[arg(long)]
    pub milestone: Option<String>,
    /// Follow every active milestone of this member (resource name, display
    /// name or e-mail).
    #[arg(long)]
    pub member: Option<String>,
    /// Follow every active milestone owned in this team's subtree (resource
    /// name or display name).
    #[arg(long)]
    pub team: Option<String>,
    /// Also follow new recognitions and kudos. On by default when no
    /// --milestone, --member or --team is given (then the progress of every
    /// top-level team is followed too).
    #[arg(long)]
    pub recognitions: bool,
    /// Also show what happened before the watch started (the initial
    /// progress snapshots and the retained recognition feed).
    #[arg(long)]
    pub replay: bool,
    /// Stop after this many updates; by default watch until Ctrl-C.
    #[arg(long)]
    pub limit: Option<usize>,
}

/// One thing to show.
enum Update {
    Progress(p::Progress),
    Recognition(r::Recognition),
    Kudos(r::Kudos),
    /// A stream ended: what ended and why.
    Ended(String, Option<tonic::Status>),
}

pub async fn watch(conn: &mut Conn, args: WatchArgs, format: Format) -> anyhow::Result<()> {
    let mut selectors = Vec::new();
    if let Some(m) = &args.milestone {
        let m = resolve::milestone(&mut conn.goal, "--milestone", m).await?;
        selectors.push(p::watch_progress_request::Selector::Milestone(m.name));
    }
    if let Some(m) = &args.member {
        let m = resolve::member(&mut conn.goal, "--member", m).await?;
        selectors.push(p::watch_progress_request::Selector::Member(m.name));
    }
    if let Some(t) = &args.team {
        let t = resolve::team(&mut conn.goal, "--team", t).await?;
        selectors.push(p::watch_progress_request::Selector::Team(t.name));
    }
    let mut recognitions = args.recognitions;
    if selectors.is_empty() {
        recognitions = true;
        let top = resolve::all_teams(&mut conn.goal).await?;
        // At most 10 streams per caller; keep room for the feed.
        for t in top.into_iter().filter(|t| t.parent.is_empty()).take(8) {
            selectors.push(p::watch_progress_request::Selector::Team(t.name));
        }
    }
    let mut names = Directory::load(&mut conn.goal).await?;
    let mut milestones: HashMap<String, String> = HashMap::new();
    for m in resolve::all_milestones(
        &mut conn.goal,
        g::ListMilestonesRequest {
            state: g::MilestoneState::Active as i32,
            ..Default::default()
        },
    )
    .await?
    {
        milestones.insert(m.name, m.display_name);
    }
    let mut badges: HashMap<String, String> = HashMap::new();
    if recognitions {
        if let Ok(list) = conn
            .recognition
            .list_badges(r::ListBadgesRequest {
                page_size: 500,
                page_token: String::new(),
            })
            .await
        {
            for b in list.into_inner().badges {
                badges.insert(b.name, b.display_name);
            }
        }
    }

    let started = Utc::now();
    let (tx, mut rx) = mpsc::channel::<Update>(256);
    for selector in selectors {
        let what = match &selector {
            p::watch_progress_request::Selector::Milestone(n)
            | p::watch_progress_request::Selector::Member(n)
            | p::watch_progress_request::Selector::Team(n) => n.clone(),
        };
        let req = p::WatchProgressRequest {
            selector: Some(selector),
        };
        let stream = settle(|| {
            let mut c = conn.progress.clone();
            let req = req.clone();
            async move { c.watch_progress(req).await.map(|r| r.into_inner()) }
        })
        .await
        .map_err(explain)?;
        tokio::spawn(forward_progress(
            stream,
            tx.clone(),
            (!args.replay).then_some(started),
            what,
        ));
    }
    if recognitions {
        let stream = conn
            .recognition
            .watch_recognitions(r::WatchRecognitionsRequest { after_sequence: 0 })
            .await
            .map_err(explain)?
            .into_inner();
        tokio::spawn(forward_recognitions(
            stream,
            tx.clone(),
            (!args.replay).then_some(started),
        ));
    }
    drop(tx);
    anstream::eprintln!("{}", paint(out::DIM, "watching; Ctrl-C to stop"));

    let mut shown = 0usize;
    while let Some(update) = rx.recv().await {
        let line = match &update {
            Update::Ended(what, status) => {
                return match status {
                    Some(s) => Err(explain(s.clone()).context(format!("the watch of {what} ended"))),
                    None => Err(anyhow::anyhow!(
                        "the watch of {what} ended: the server closed it; run the command again"
                    )),
                };
            }
            Update::Progress(p) => {
                if !milestones.contains_key(&p.milestone) {
                    // Created after the watch started: learn its name once.
                    if let Ok(m) = conn
                        .goal
                        .get_milestone(g::GetMilestoneRequest {
                            name: p.milestone.clone(),
                        })
                        .await
                    {
                        let m = m.into_inner();
                        milestones.insert(m.name, m.display_name);
                    }
                }
                let title = milestones
                    .get(&p.milestone)
                    .map_or(p.milestone.as_str(), String::as_str);
                match format {
                    Format::Json => {
                        let mut j = out::progress_json(p);
                        j["type"] = json!("progress");
                        j["display_name"] = json!(title);
                        j.to_string()
                    }
                    Format::Table => progress_line(p, title, &names),
                }
            }
            Update::Recognition(rec) => {
                if format == Format::Table {
                    refresh_names(conn, &mut names, rec.recipient_name()).await;
                }
                match format {
                    Format::Json => {
                        let mut j = out::recognition_json(rec);
                        j["type"] = json!("recognition");
                        j.to_string()
                    }
                    Format::Table => recognition_line(rec, &names, &badges),
                }
            }
            Update::Kudos(k) => {
                if format == Format::Table {
                    refresh_names(conn, &mut names, &k.giver).await;
                    refresh_names(conn, &mut names, &k.recipient).await;
                }
                match format {
                    Format::Json => {
                        let mut j = out::kudos_json(k);
                        j["type"] = json!("kudos");
                        j.to_string()
                    }
                    Format::Table => kudos_line(k, &names),
                }
            }
        };
        if out::line(line).is_err() {
            return Ok(());
        }
        shown += 1;
        if args.limit.is_some_and(|l| shown >= l) {
            return Ok(());
        }
    }
    Ok(())
}

/// Learns the display name of a member created after the watch started.
async fn refresh_names(conn: &mut Conn, names: &mut Directory, resource: &str) {
    if names.name(resource) != resource || !resource.starts_with("members/") {
        return;
    }
    if let Ok(m) = conn
        .goal
        .get_member(g::GetMemberRequest {
            name: resource.to_string(),
        })
        .await
    {
        let m = m.into_inner();
        names.remember(&m.name, &m.display_name);
    }
}

trait RecipientName {
    fn recipient_name(&self) -> &str;
}

impl RecipientName for r::Recognition {
    fn recipient_name(&self) -> &str {
        match &self.recipient {
            Some(r::recognition::Recipient::Member(m)) => m,
            Some(r::recognition::Recipient::Team(t)) => t,
            None => "",
        }
    }
}

fn clock() -> String {
    paint(out::DIM, chrono::Local::now().format("%H:%M:%S"))
}

fn progress_line(p: &p::Progress, title: &str, names: &Directory) -> String {
    let unit = names.unit(&p.metric);
    let colour = out::status_style(p.status);
    let status =
        p::ProgressStatus::try_from(p.status).map_or("?".to_string(), |s| short(s.as_str_name(), "PROGRESS_STATUS_"));
    format!(
        "{} {} {} {} {} of {}  {}",
        clock(),
        paint(out::BOLD, title),
        paint(colour, out::bar(p.attainment_basis_points, 16)),
        out::percent(p.attainment_basis_points),
        unit.format(p.value),
        unit.format(p.target),
        paint(colour, status),
    )
}

fn recognition_line(rec: &r::Recognition, names: &Directory, badges: &HashMap<String, String>) -> String {
    let badge = badges.get(&rec.badge).map(|b| format!(" [{b}]")).unwrap_or_default();
    let points = if rec.points > 0 {
        format!(" +{} pts", out::thousands(rec.points))
    } else {
        String::new()
    };
    format!(
        "{} {} {}{}{}: {}",
        clock(),
        paint(out::YELLOW, "★"),
        paint(out::BOLD, names.name(rec.recipient_name())),
        paint(out::MAGENTA, badge),
        paint(out::GREEN, points),
        rec.reason
    )
}

fn kudos_line(k: &r::Kudos, names: &Directory) -> String {
    format!(
        "{} {} {} → {}: {}",
        clock(),
        paint(out::CYAN, "♥ kudos"),
        names.name(&k.giver),
        paint(out::BOLD, names.name(&k.recipient)),
        k.message
    )
}

async fn forward_progress(
    mut stream: Streaming<p::WatchProgressResponse>,
    tx: mpsc::Sender<Update>,
    since: Option<chrono::DateTime<Utc>>,
    what: String,
) {
    loop {
        match stream.message().await {
            Ok(Some(msg)) => {
                let Some(p::watch_progress_response::Kind::Progress(p)) = msg.kind else {
                    continue;
                };
                // The initial snapshots show values that changed before the
                // watch started: skipped unless asked for.
                let changed = p.update_time.as_ref().and_then(out::to_datetime);
                if let Some(since) = since {
                    if changed.is_none_or(|c| c < since) {
                        continue;
                    }
                }
                if tx.send(Update::Progress(p)).await.is_err() {
                    return;
                }
            }
            Ok(None) => {
                let _ = tx.send(Update::Ended(what, None)).await;
                return;
            }
            Err(s) => {
                let _ = tx.send(Update::Ended(what, Some(s))).await;
                return;
            }
        }
    }
}

async fn forward_recognitions(
    mut stream: Streaming<r::WatchRecognitionsResponse>,
    tx: mpsc::Sender<Update>,
    since: Option<chrono::DateTime<Utc>>,
) {
    loop {
        match stream.message().await {
            Ok(Some(msg)) => {
                let Some(r::watch_recognitions_response::Kind::Event(e)) = msg.kind else {
                    continue;
                };
                let at = e.event_time.as_ref().and_then(out::to_datetime);
                if let (Some(since), Some(at)) = (since, at) {
                    if at < since {
                        continue;
                    }
                }
                let update = match e.subject {
                    Some(r::recognition_event::Subject::Recognition(rec)) => Update::Recognition(rec),
                    Some(r::recognition_event::Subject::Kudos(k)) => Update::Kudos(k),
                    None => continue,
                };
                if tx.send(update).await.is_err() {
                    return;
                }
            }
            Ok(None) => {
                let _ = tx.send(Update::Ended("recognitions".into(), None)).await;
                return;
            }
            Err(s) => {
                let _ = tx.send(Update::Ended("recognitions".into(), Some(s))).await;
                return;
            }
        }
    }
}

// === kudos ===

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum VisibilityArg {
    /// Everyone in the tenant.
    Public,
    /// The recipient's teams, their managers and you.
    Team,
    /// Only the recipient, their managers and you.
    Private,
}

/// `milestones kudos`.
#[derive(Args, Debug)]
pub struct KudosArgs {
    /// Who to thank (resource name, display name or e-mail).
    pub member: String,
    /// What for, 1..500 characters.
    #[arg(long, short)]
    pub message: String,
    /// The milestone it is about (resource name or display name).
    #[arg(long)]
    pub milestone: Option<String>,
    /// Who may see it.
    #[arg(long, value_enum, default_value = "public")]
    pub visibility: VisibilityArg,
    /// Give it as this member (resource name, display name or e-mail):
    /// the CLI mints a development token with their subject. Without it,
    /// the token's subject must be a member's.
    #[arg(long)]
    pub from: Option<String>,
}

pub async fn kudos(
    conn: &mut Conn,
    client: &ClientArgs,
    settings: &Settings,
    args: KudosArgs,
    format: Format,
) -> anyhow::Result<()> {
    let recipient = resolve::member(&mut conn.goal, "member", &args.member).await?;
    let milestone = match &args.milestone {
        Some(m) => resolve::milestone(&mut conn.goal, "--milestone", m).await?.name,
        None => String::new(),
    };
    let mut giver_conn = conn.clone();
    if let Some(from) = &args.from {
        let giver = resolve::member(&mut conn.goal, "--from", from).await?;
        if giver.subject.is_empty() {
            return Err(refuse(
                "--from",
                format!(
                    "{} has no token subject, so they cannot act as themselves; create members with --subject",
                    giver.display_name
                ),
            ));
        }
        let tenant = tenant_of(&token(client, settings)?, settings)?;
        let role = match g::MemberRole::try_from(giver.role) {
            Ok(g::MemberRole::Manager) => Role::Manager,
            Ok(g::MemberRole::Admin) => Role::Admin,
            _ => Role::Rep,
        };
        let t = dev_token(settings, &tenant, &giver.subject, &[role])?;
        giver_conn = conn.with_token(&t)?;
    }
    let req = r::GiveKudosRequest {
        recipient: recipient.name.clone(),
        milestone,
        message: args.message.clone(),
        visibility: match args.visibility {
            VisibilityArg::Public => r::Visibility::Public,
            VisibilityArg::Team => r::Visibility::Team,
            VisibilityArg::Private => r::Visibility::Private,
        } as i32,
        request_id: new_request_id(),
    };
    // With --from, goal knows the giver's subject, so a refusal is
    // recognition's copy of the org catching up.
    let lagging: &[tonic::Code] = if args.from.is_some() {
        &[tonic::Code::NotFound, tonic::Code::PermissionDenied]
    } else {
        &[tonic::Code::NotFound]
    };
    let kudos = settle_on(lagging, || {
        let mut c = giver_conn.recognition.clone();
        let req = req.clone();
        async move { c.give_kudos(req).await.map(|r| r.into_inner()) }
    })
    .await
    .map_err(|s| {
        let hint = (s.code() == tonic::Code::PermissionDenied && args.from.is_none())
            .then_some("kudos come from a member: pass --from NAME, or use a token whose subject is a member's");
        explain_with(s, hint)
    })?;
    if format == Format::Json {
        return Ok(out::json(&out::kudos_json(&kudos))?);
    }
    let mut names = Directory::default();
    names.remember(&recipient.name, &recipient.display_name);
    refresh_names(conn, &mut names, &kudos.giver).await;
    out::line(format!(
        "{}  {} → {}: {}",
        kudos.name,
        names.name(&kudos.giver),
        recipient.display_name,
        kudos.message
    ))?;
    Ok(())
}

// === recognitions ===

/// `milestones recognitions`.
#[derive(Args, Debug)]
pub struct RecognitionsArgs {
    /// Only this member's (resource name, display name or e-mail).
    #[arg(long)]
    pub member: Option<String>,
    /// Only those within this team's subtree (resource name or display
    /// name).
    #[arg(long)]
    pub team: Option<String>,
    /// At most this many, newest first.
    #[arg(long, default_value_t = 20)]
    pub limit: usize,
}

pub async fn recognitions(conn: &mut Conn, args: RecognitionsArgs, format: Format) -> anyhow::Result<()> {
    let member = match &args.member {
        Some(m) => resolve::member(&mut conn.goal, "--member", m).await?.name,
        None => String::new(),
    };
    let team = match &args.team {
        Some(t) => resolve::team(&mut conn.goal, "--team", t).await?.name,
        None => String::new(),
    };
    let mut all = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = conn
            .recognition
            .list_recognitions(r::ListRecognitionsRequest {
                member: member.clone(),
                team: team.clone(),
                page_size: args.limit.clamp(1, 500) as i32,
                page_token,
                ..Default::default()
            })
            .await
            .map_err(explain)?
            .into_inner();
        all.extend(page.recognitions);
        if page.next_page_token.is_empty() || all.len() >= args.limit {
            break;
        }
        page_token = page.next_page_token;
    }
    all.truncate(args.limit);
    if format == Format::Json {
        return Ok(out::json(&Value::Array(
            all.iter().map(out::recognition_json).collect(),
        ))?);
    }
    let names = Directory::load(&mut conn.goal).await?;
    let badges: HashMap<String, String> = conn
        .recognition
        .list_badges(r::ListBadgesRequest {
            page_size: 500,
            page_token: String::new(),
        })
        .await
        .map(|b| {
            b.into_inner()
                .badges
                .into_iter()
                .map(|b| (b.name, b.display_name))
                .collect()
        })
        .unwrap_or_default();
    let mut table = Table::new(&["WHEN", "WHO", "BADGE", ">POINTS", "WHY"]);
    for rec in &all {
        table.row(vec![
            out::when(rec.create_time.as_ref()).into(),
            names.name(rec.recipient_name()).into(),
            badges.get(&rec.badge).map_or("", String::as_str).into(),
            out::thousands(rec.points).into(),
            rec.reason.as_str().into(),
        ]);
    }
    if table.is_empty() {
        out::line(paint(out::DIM, "no recognitions yet"))?;
        return Ok(());
    }
    Ok(table.print()?)
}
