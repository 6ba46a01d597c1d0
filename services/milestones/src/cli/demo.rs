//! `milestones demo` (and `server --demo`): a realistic sales org in one
//! tenant, a quarter of back-dated deals and calls, then live activity so
//! that leaderboards move and recognitions arrive within a minute.
//!
//! The org: "Acme Sales" with three regions (EMEA, North America, APAC),
//! a VP, a manager per region and eight reps each. Metrics: "New ARR" (USD
//! cents, summed) and "Calls" (a count, summed from daily dialer totals and
//! single live calls). Milestones for the current fiscal quarter: New ARR for
//! every rep (checkpoints at 25/50/75 %, a stretch at 125 %), rolled up into
//! a milestone per region and one for the whole org with the same
//! checkpoints, and Calls for every rep (a half-way checkpoint and a
//! stretch). Five badges and rules award checkpoints, quota, stretch, the
//! first rep to quota and the top three at quarter close.
//!
//! Re-running is safe: everything is found again by name (teams and
//! badges and rules by display name, people by e-mail, milestones by owner,
//! metric and period), and the quarter's history is recorded only while
//! the org's New ARR milestone has no activity. Randomness comes from a
//! seeded generator, so the same `--seed` gives the same org and history.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use chrono::{Datelike, Days, NaiveDate, NaiveTime, Utc, Weekday};
use clap::Args;
use milestones_api::goal as g;
use milestones_api::progress as p;
use milestones_api::recognition as r;
use milestones_runtime::auth::Role;
use milestones_runtime::config::Settings;
use tokio::sync::watch;
use tonic::Code;

use super::client::{channel, dev_token, settle, Bearer, Calendar, Conn};
use super::errors::explain;
use super::output::{self as out, paint, Unit};
use super::resolve;

/// `milestones demo`.
#[derive(Args, Debug, Clone)]
pub struct DemoArgs {
    /// The suite to seed (all three services behind one address).
    #[arg(long, env = "MILESTONES_ENDPOINT", default_value = "http://127.0.0.1:50051")]
    pub endpoint: String,
    /// The tenant to seed; re-running against it reuses what is there.
    /// Tokens for it are minted with the configured secret.
    #[arg(long, default_value = "demo")]
    pub tenant: String,
    /// The random generator's seed: the same seed gives the same org,
    /// history and live activity.
    #[arg(long, default_value_t = 2027)]
    pub seed: u64,
    /// Milliseconds between two live activities.
    #[arg(long, default_value_t = 1000)]
    pub interval_ms: u64,
    /// Stop the live activity after this many seconds; by default it runs
    /// until Ctrl-C.
    #[arg(long)]
    pub duration_secs: Option<u64>,
    /// Only seed (or check) the org and its history; no live activity.
    #[arg(long, conflicts_with = "duration_secs")]
    pub once: bool,
}

impl DemoArgs {
    /// The arguments `server --demo` runs with.
    pub fn in_process(endpoint: String, tenant: String) -> DemoArgs {
        DemoArgs {
            endpoint,
            tenant,
            seed: 2027,
            interval_ms: 1000,
            duration_secs: None,
            once: false,
        }
    }
}

// === A small seeded random generator (SplitMix64) ===

struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1_u64 << 53) as f64
    }

    /// Uniform in 0..n.
    fn below(&mut self, n: usize) -> usize {
        ((self.unit() * n as f64) as usize).min(n.saturating_sub(1))
    }

    /// Standard normal (Box-Muller).
    fn normal(&mut self) -> f64 {
        let u1 = self.unit().max(1e-12);
        let u2 = self.unit();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }

    /// A deal size in USD: log-normal around `median`, rounded to $100.
    fn deal_usd(&mut self, median: f64) -> i64 {
        let usd = median * (0.75 * self.normal()).exp();
        ((usd / 100.0).round() as i64).clamp(20, 3_000) * 100
    }
}

// === The org ===

const ROOT: &str = "Acme Sales";
const VP: (&str, &str) = ("Alex Morgan", "alex.morgan");

struct Region {
    name: &'static str,
    manager: (&'static str, &'static str),
    reps: [(&'static str, &'static str); 8],
}

const REGIONS: [Region; 3] = [
    Region {
        name: "EMEA",
        manager: ("Claire Dubois", "claire.dubois"),
        reps: [
            ("Amara Okafor", "amara.okafor"),
            ("Lukas Becker", "lukas.becker"),
            ("Sofia Rossi", "sofia.rossi"),
            ("Jules Moreau", "jules.moreau"),
            ("Ingrid Larsen", "ingrid.larsen"),
            ("Mateo García", "mateo.garcia"),
            ("Hannah Schmidt", "hannah.schmidt"),
            ("Tomás Novák", "tomas.novak"),
        ],
    },
    Region {
        name: "North America",
        manager: ("Daniel Foster", "daniel.foster"),
        reps: [
            ("Maya Patel", "maya.patel"),
            ("Ethan Brooks", "ethan.brooks"),
            ("Olivia Chen", "olivia.chen"),
            ("Marcus Johnson", "marcus.johnson"),
            ("Sarah Kim", "sarah.kim"),
            ("Diego Ramírez", "diego.ramirez"),
            ("Emily Walsh", "emily.walsh"),
            ("Jordan Taylor", "jordan.taylor"),
        ],
    },
    Region {
        name: "APAC",
        manager: ("Grace Liu", "grace.liu"),
        reps: [
            ("Kenji Tanaka", "kenji.tanaka"),
            ("Priya Sharma", "priya.sharma"),
            ("Liam O'Connor", "liam.oconnor"),
            ("Mei Lin", "mei.lin"),
            ("Arjun Mehta", "arjun.mehta"),
            ("Chloe Nguyen", "chloe.nguyen"),
            ("Hiroshi Sato", "hiroshi.sato"),
            ("Aisha Rahman", "aisha.rahman"),
        ],
    },
];

const ARR: &str = "New ARR";
const CALLS: &str = "Calls";
/// The median deal, in USD.
const MEDIAN_DEAL_USD: f64 = 18_000.0;
/// Calls a rep is asked for per quarter.
const CALLS_TARGET: i64 = 650;

/// A rep and what the generator knows about them.
struct Rep {
    member: g::Member,
    region: usize,
    /// How well they sell, around 1.0: drives their deals and quota.
    skill: f64,
    /// Their New ARR quota this quarter, in cents.
    quota: i64,
    arr: g::Milestone,
}

struct Org {
    calendar: Calendar,
    quarter: String,
    start: NaiveDate,
    end: NaiveDate,
    arr: g::Metric,
    calls: g::Metric,
    managers: Vec<g::Member>,
    reps: Vec<Rep>,
    root_arr: g::Milestone,
    calls_milestones: HashMap<String, g::Milestone>,
    milestones: usize,
}

fn email(subject: &str) -> String {
    format!("{subject}@acme.example")
}

// === Entry points ===

/// Runs the demo from the command line: seeds, then generates until
/// Ctrl-C, `--duration-secs` or right away with `--once`.
pub async fn run(args: DemoArgs, settings: Settings) -> anyhow::Result<()> {
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        milestones_runtime::server::shutdown_signal().await;
        let _ = stop_tx.send(true);
    });
    demo(args, settings, stop_rx).await
}

/// Runs the demo next to an in-process server, until `stop`; problems are
/// reported on stderr and never stop the server.
pub async fn run_until(args: DemoArgs, settings: Settings, stop: watch::Receiver<bool>) {
    if let Err(e) = demo(args, settings, stop).await {
        anstream::eprintln!("{} {e:#}", paint(out::RED.bold(), "demo:"));
    }
}

async fn demo(args: DemoArgs, settings: Settings, mut stop: watch::Receiver<bool>) -> anyhow::Result<()> {
    let admin_token = dev_token(&settings, &args.tenant, "demo-admin", &[Role::Admin])?;
    let mut conn = ready(&args.endpoint, &admin_token, &mut stop).await?;
    let mut rng = Rng(args.seed);
    let began = Instant::now();
    let mut org = build(&mut conn, &mut rng).await?;
    let recorded = history(&mut conn, &org, &mut rng, &args.tenant).await?;
    out::line(format!(
        "{} tenant {:?}: {} teams, {} people, {} milestones for {} ({} to {}); {} ({:.1} s)",
        paint(out::GREEN, "demo ready:"),
        args.tenant,
        1 + REGIONS.len(),
        1 + REGIONS.len() + org.reps.len(),
        org.milestones,
        org.quarter,
        org.start,
        org.end,
        if recorded == 0 {
            "the quarter's deals and calls were already there".to_string()
        } else {
            format!(
                "{} back-dated deals and calls recorded",
                out::thousands(recorded as i64)
            )
        },
        began.elapsed().as_secs_f64()
    ))?;
    if args.once {
        return Ok(());
    }
    out::line(format!(
        "generating an activity every {} ms{}; try `milestones leaderboard --metric \"New ARR\"` or `milestones watch`",
        args.interval_ms,
        args.duration_secs
            .map_or(" until Ctrl-C".to_string(), |s| format!(" for {s} s"))
    ))?;
    live(&mut conn, &mut org, &mut rng, &args, &settings, &mut stop).await
}

/// Connects once the server answers (an in-process server may still be
/// migrating), for up to a minute.
async fn ready(endpoint: &str, token: &str, stop: &mut watch::Receiver<bool>) -> anyhow::Result<Conn> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let bearer = Bearer::new(token)?;
    loop {
        let attempt = async {
            let ch = channel(endpoint, None).await?;
            let conn = Conn::over_channel(ch, bearer.clone());
            conn.goal
                .clone()
                .get_tenant_settings(g::GetTenantSettingsRequest {})
                .await
                .map_err(explain)?;
            anyhow::Ok(conn)
        };
        match attempt.await {
            Ok(conn) => return Ok(conn),
            Err(e) if Instant::now() >= deadline || *stop.borrow() => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
}

// === Seeding ===

async fn team(conn: &mut Conn, existing: &[g::Team], name: &str, parent: &str) -> anyhow::Result<g::Team> {
    if let Some(t) = existing.iter().find(|t| t.display_name == name && t.parent == parent) {
        return Ok(t.clone());
    }
    Ok(conn
        .goal
        .create_team(g::CreateTeamRequest {
            team: Some(g::Team {
                display_name: name.into(),
                parent: parent.into(),
                ..Default::default()
            }),
            request_id: String::new(),
        })
        .await
        .map_err(explain)?
        .into_inner())
}

async fn person(
    conn: &mut Conn,
    existing: &[g::Member],
    (name, subject): (&str, &str),
    role: g::MemberRole,
    team: &g::Team,
    since: NaiveDate,
) -> anyhow::Result<g::Member> {
    let email = email(subject);
    let member = match existing.iter().find(|m| m.email == email) {
        Some(m) => m.clone(),
        None => conn
            .goal
            .create_member(g::CreateMemberRequest {
                member: Some(g::Member {
                    display_name: name.into(),
                    email,
                    role: role as i32,
                    subject: subject.into(),
                    ..Default::default()
                }),
                request_id: String::new(),
            })
            .await
            .map_err(explain)?
            .into_inner(),
    };
    let memberships = conn
        .goal
        .list_memberships(g::ListMembershipsRequest {
            member: member.name.clone(),
            page_size: 1,
            ..Default::default()
        })
        .await
        .map_err(explain)?
        .into_inner()
        .memberships;
    if memberships.is_empty() {
        conn.goal
            .create_membership(g::CreateMembershipRequest {
                membership: Some(g::Membership {
                    member: member.name.clone(),
                    team: team.name.clone(),
                    start_date: Some(out::to_wire(since)),
                    ..Default::default()
                }),
                request_id: String::new(),
            })
            .await
            .map_err(explain)?;
    }
    Ok(member)
}

async fn metric(conn: &mut Conn, existing: &[g::Metric], m: g::Metric) -> anyhow::Result<g::Metric> {
    if let Some(found) = existing.iter().find(|e| e.display_name == m.display_name) {
        return Ok(found.clone());
    }
    Ok(conn
        .goal
        .create_metric(g::CreateMetricRequest {
            metric: Some(m),
            request_id: String::new(),
        })
        .await
        .map_err(explain)?
        .into_inner())
}

/// Checkpoints at the given shares of `target`, due on the day the linear
/// pace reaches them.
fn checkpoints(target: i64, shares: &[(i64, &str)], start: NaiveDate, end: NaiveDate) -> Vec<g::Checkpoint> {
    let days = (end - start).num_days();
    shares
        .iter()
        .map(|(pct, label)| g::Checkpoint {
            display_name: (*label).into(),
            target: target * pct / 100,
            due_date: start
                .checked_add_days(Days::new((days * pct / 100) as u64))
                .map(out::to_wire),
        })
        .collect()
}

const ARR_CHECKPOINTS: [(i64, &str); 3] = [(25, "First quarter"), (50, "Half-way"), (75, "Three quarters")];

/// The milestone of `owner` on `metric` this quarter: the existing one
/// (activated if still a draft), or a new active one.
async fn milestone(conn: &mut Conn, existing: &[g::Milestone], m: g::Milestone) -> anyhow::Result<g::Milestone> {
    if let Some(found) = existing
        .iter()
        .find(|e| e.owner == m.owner && e.metric == m.metric && e.state != g::MilestoneState::Cancelled as i32)
    {
        if found.state == g::MilestoneState::Draft as i32 {
            return Ok(conn
                .goal
                .activate_milestone(g::ActivateMilestoneRequest {
                    name: found.name.clone(),
                    ..Default::default()
                })
                .await
                .map_err(explain)?
                .into_inner());
        }
        return Ok(found.clone());
    }
    Ok(conn
        .goal
        .create_milestone(g::CreateMilestoneRequest {
            milestone: Some(m),
            activate: true,
            request_id: String::new(),
        })
        .await
        .map_err(explain)?
        .into_inner())
}

async fn build(conn: &mut Conn, rng: &mut Rng) -> anyhow::Result<Org> {
    let calendar = Calendar::load(&mut conn.goal).await?;
    let quarter = calendar.this_quarter();
    let range = calendar.range(&quarter, "quarter")?;
    let (start, end) = (range.start(), range.end());
    // Everyone joined a year before the quarter, so the whole history
    // counts for their teams.
    let since = start - Days::new(365);

    let teams = resolve::all_teams(&mut conn.goal).await?;
    let root = team(conn, &teams, ROOT, "").await?;
    let mut regions = Vec::new();
    for region in &REGIONS {
        regions.push(team(conn, &teams, region.name, &root.name).await?);
    }
    let people = resolve::all_members(&mut conn.goal, "", g::MemberRole::Unspecified).await?;
    let mut managers = vec![person(conn, &people, VP, g::MemberRole::Manager, &root, since).await?];
    let mut reps = Vec::new();
    for (i, region) in REGIONS.iter().enumerate() {
        managers.push(
            person(
                conn,
                &people,
                region.manager,
                g::MemberRole::Manager,
                &regions[i],
                since,
            )
            .await?,
        );
        for (j, rep) in region.reps.iter().enumerate() {
            let member = person(conn, &people, *rep, g::MemberRole::Rep, &regions[i], since).await?;
            // One star per region; the rest between 0.55 and 1.35.
            let skill = if j == 2 {
                1.55 + 0.2 * rng.unit()
            } else {
                0.55 + 0.8 * rng.unit()
            };
            // Quotas of $250k to $400k, in steps of $25k, in cents.
            let quota = (250_000 + 25_000 * rng.below(7) as i64) * 100;
            reps.push((member, i, skill, quota));
        }
    }

    let metrics = resolve::all_metrics(&mut conn.goal).await?;
    let arr = metric(
        conn,
        &metrics,
        g::Metric {
            display_name: ARR.into(),
            description: "Annual recurring revenue of new business won, in US cents.".into(),
            unit: g::MetricUnit::Currency as i32,
            currency_code: "USD".into(),
            aggregation: g::MetricAggregation::Sum as i32,
            ..Default::default()
        },
    )
    .await?;
    let calls = metric(
        conn,
        &metrics,
        g::Metric {
            display_name: CALLS.into(),
            description: "Outbound calls connected, from the dialer.".into(),
            unit: g::MetricUnit::Count as i32,
            aggregation: g::MetricAggregation::Sum as i32,
            ..Default::default()
        },
    )
    .await?;

    recognition_catalog(conn, &root, &arr).await?;

    let existing = resolve::all_milestones(
        &mut conn.goal,
        g::ListMilestonesRequest {
            fiscal_period: quarter.clone(),
            ..Default::default()
        },
    )
    .await?;
    let region_quota: Vec<i64> = (0..REGIONS.len())
        .map(|i| reps.iter().filter(|r| r.1 == i).map(|r| r.3).sum())
        .collect();
    let org_quota: i64 = region_quota.iter().sum();
    let terms = |name: String, owner: &str, metric: &g::Metric, target: i64, parent: &str| g::Milestone {
        display_name: name,
        owner: owner.into(),
        metric: metric.name.clone(),
        fiscal_period: quarter.clone(),
        target,
        stretch_target: Some(target * 125 / 100),
        checkpoints: checkpoints(target, &ARR_CHECKPOINTS, start, end),
        parent: parent.into(),
        ..Default::default()
    };
    let root_arr = milestone(
        conn,
        &existing,
        terms(format!("{ROOT} new ARR {quarter}"), &root.name, &arr, org_quota, ""),
    )
    .await?;
    let mut region_arr = Vec::new();
    for (i, region) in REGIONS.iter().enumerate() {
        region_arr.push(
            milestone(
                conn,
                &existing,
                terms(
                    format!("{} new ARR {quarter}", region.name),
                    &regions[i].name,
                    &arr,
                    region_quota[i],
                    &root_arr.name,
                ),
            )
            .await?,
        );
    }
    let mut org_reps = Vec::new();
    let mut calls_milestones = HashMap::new();
    for (member, region, skill, quota) in reps {
        let first = member.display_name.split(' ').next().unwrap_or_default().to_string();
        let arr_m = milestone(
            conn,
            &existing,
            terms(
                format!("{first}'s new ARR {quarter}"),
                &member.name,
                &arr,
                quota,
                &region_arr[region].name,
            ),
        )
        .await?;
        let calls_m = milestone(
            conn,
            &existing,
            g::Milestone {
                display_name: format!("{first}'s calls {quarter}"),
                owner: member.name.clone(),
                metric: calls.name.clone(),
                fiscal_period: quarter.clone(),
                target: CALLS_TARGET,
                stretch_target: Some(CALLS_TARGET * 120 / 100),
                checkpoints: checkpoints(CALLS_TARGET, &[(50, "Half-way")], start, end),
                ..Default::default()
            },
        )
        .await?;
        calls_milestones.insert(member.name.clone(), calls_m);
        org_reps.push(Rep {
            member,
            region,
            skill,
            quota,
            arr: arr_m,
        });
    }
    let milestones = 1 + region_arr.len() + 2 * org_reps.len();
    Ok(Org {
        calendar,
        quarter,
        start,
        end,
        arr,
        calls,
        managers,
        reps: org_reps,
        root_arr,
        calls_milestones,
        milestones,
    })
}

/// Badges and the rules that award them, created once by display name.
async fn recognition_catalog(conn: &mut Conn, root: &g::Team, arr: &g::Metric) -> anyhow::Result<()> {
    let badges = conn
        .recognition
        .list_badges(r::ListBadgesRequest {
            page_size: 500,
            page_token: String::new(),
        })
        .await
        .map_err(explain)?
        .into_inner()
        .badges;
    let mut badge_names = HashMap::new();
    let wanted = [
        (
            "Off the mark",
            r::BadgeTier::Bronze,
            "Reached a checkpoint of a quarterly milestone.",
        ),
        (
            "First past the post",
            r::BadgeTier::Silver,
            "First rep in the company to hit quota this quarter.",
        ),
        ("Quota crusher", r::BadgeTier::Gold, "Hit 100 % of a quarterly target."),
        ("Overachiever", r::BadgeTier::Platinum, "Hit the stretch target."),
        (
            "Quarter champion",
            r::BadgeTier::Platinum,
            "Top three in new ARR attainment at quarter close.",
        ),
    ];
    for (name, tier, description) in wanted {
        let badge = match badges.iter().find(|b| b.display_name == name) {
            Some(b) => b.clone(),
            None => conn
                .recognition
                .create_badge(r::CreateBadgeRequest {
                    badge: Some(r::Badge {
                        display_name: name.into(),
                        description: description.into(),
                        tier: tier as i32,
                        ..Default::default()
                    }),
                    request_id: String::new(),
                })
                .await
                .map_err(explain)?
                .into_inner(),
        };
        badge_names.insert(name, badge.name);
    }
    let rules = conn
        .recognition
        .list_rules(r::ListRulesRequest {
            page_size: 500,
            ..Default::default()
        })
        .await
        .map_err(explain)?
        .into_inner()
        .rules;
    let badge = |name: &str| badge_names.get(name).cloned().unwrap_or_default();
    let wanted = [
        r::Rule {
            display_name: "Checkpoint reached".into(),
            description: "50 points for every checkpoint of every milestone.".into(),
            trigger: r::RuleTrigger::CheckpointReached as i32,
            badge: badge("Off the mark"),
            points: 50,
            ..Default::default()
        },
        r::Rule {
            display_name: "Target reached".into(),
            description: "500 points for every target hit.".into(),
            trigger: r::RuleTrigger::MilestoneAchieved as i32,
            badge: badge("Quota crusher"),
            points: 500,
            ..Default::default()
        },
        r::Rule {
            display_name: "Stretch reached".into(),
            description: "1,000 points for every stretch target hit.".into(),
            trigger: r::RuleTrigger::StretchAchieved as i32,
            badge: badge("Overachiever"),
            points: 1_000,
            ..Default::default()
        },
        r::Rule {
            display_name: "First to quota".into(),
            description: "The first rep of the company to hit their new ARR quota.".into(),
            trigger: r::RuleTrigger::FirstInTeamToAchieve as i32,
            scope_team: root.name.clone(),
            scope_metric: arr.name.clone(),
            badge: badge("First past the post"),
            points: 250,
            ..Default::default()
        },
        r::Rule {
            display_name: "Top three at quarter close".into(),
            description: "The three best new ARR attainments when the quarter ends.".into(),
            trigger: r::RuleTrigger::TopNAtPeriodClose as i32,
            top_n: 3,
            scope_metric: arr.name.clone(),
            badge: badge("Quarter champion"),
            points: 750,
            ..Default::default()
        },
    ];
    for rule in wanted {
        if rules.iter().any(|r| r.display_name == rule.display_name) {
            continue;
        }
        let req = r::CreateRuleRequest {
            rule: Some(r::Rule {
                enabled: true,
                visibility: r::Visibility::Public as i32,
                ..rule
            }),
            request_id: String::new(),
        };
        // Scopes name a team and a metric that recognition learns from
        // goal's feed a moment after they are created.
        settle(|| {
            let mut c = conn.recognition.clone();
            let req = req.clone();
            async move { c.create_rule(req).await }
        })
        .await
        .map_err(explain)?;
    }
    Ok(())
}

fn at(day: NaiveDate, hour: u32, minute: u32) -> Option<prost_types::Timestamp> {
    let t = day.and_time(NaiveTime::from_hms_opt(hour, minute, 0)?).and_utc();
    Some(prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: 0,
    })
}

fn weekday(d: NaiveDate) -> bool {
    !matches!(d.weekday(), Weekday::Sat | Weekday::Sun)
}

/// Records the quarter so far (up to yesterday): each rep's daily dialer
/// totals and their deals, more of them late in the quarter, sized
/// log-normally. Returns how many activities were recorded (0 if the
/// quarter already had activity).
async fn history(conn: &mut Conn, org: &Org, rng: &mut Rng, tenant: &str) -> anyhow::Result<usize> {
    // Progress must track every milestone before activities count.
    let names: Vec<String> = std::iter::once(&org.root_arr)
        .chain(org.reps.iter().map(|r| &r.arr))
        .chain(org.calls_milestones.values())
        .map(|m| format!("{}/progress", m.name))
        .collect();
    let mut root_progress = None;
    for chunk in names.chunks(100) {
        let batch = settle(|| {
            let mut c = conn.progress.clone();
            let names = chunk.to_vec();
            async move {
                c.batch_get_progress(p::BatchGetProgressRequest { names })
                    .await
                    .map(|r| r.into_inner().progress)
            }
        })
        .await
        .map_err(explain)?;
        root_progress = root_progress.or_else(|| batch.first().cloned());
    }
    if root_progress.is_some_and(|p| p.activity_count > 0) {
        return Ok(0);
    }
    // Weekdays from the quarter's start up to today (any day if the
    // quarter has only begun over a weekend).
    let last = org.calendar.today().min(org.end);
    let all_days: Vec<NaiveDate> = org.start.iter_days().take_while(|d| *d <= last).collect();
    let weekdays: Vec<NaiveDate> = all_days.iter().copied().filter(|d| weekday(*d)).collect();
    let days = if weekdays.is_empty() { all_days } else { weekdays };
    if days.is_empty() {
        return Ok(0);
    }
    // Nothing in the future: today's activities happened before now.
    let now = Utc::now().timestamp() - 60;
    let quarter_began = at(org.start, 0, 0).map_or(0, |t| t.seconds);
    let when = |day: NaiveDate, hour: u32, minute: u32| {
        let t = at(day, hour, minute).map_or(now, |t| t.seconds).min(now);
        Some(prost_types::Timestamp {
            seconds: if t < quarter_began { now + 59 } else { t },
            nanos: 0,
        })
    };
    let total_days = (org.end - org.start).num_days() as f64 + 1.0;
    let elapsed = (last - org.start).num_days() as f64 + 1.0;
    let mut requests = Vec::new();
    for (i, rep) in org.reps.iter().enumerate() {
        let subject = &rep.member.subject;
        for day in &days {
            let calls = (9.0 + 3.0 * rng.normal() + 2.0 * (rep.skill - 1.0)).round().max(0.0) as i64;
            if calls > 0 {
                requests.push(p::RecordActivityRequest {
                    member: rep.member.name.clone(),
                    metric: org.calls.name.clone(),
                    value: calls,
                    occurred_at: when(*day, 17, 30),
                    source: "dialer".into(),
                    external_reference: format!("{subject}-{day}"),
                    credit_splits: vec![],
                    request_id: format!("demo-{tenant}-{}-calls-{i}-{day}", org.quarter),
                });
            }
        }
        // Sales pick up toward the end of the quarter: the share booked by
        // now grows a little faster than time.
        let share = (elapsed / total_days).powf(1.3);
        let mut goal_cents = (rep.quota as f64 * rep.skill * share * (0.9 + 0.2 * rng.unit())) as i64;
        let mut n = 0;
        while goal_cents > 0 {
            let size = rng.deal_usd(MEDIAN_DEAL_USD) * 100;
            goal_cents -= size;
            // Later days are likelier: pick the later of two draws half the
            // time.
            let a = rng.below(days.len());
            let b = rng.below(days.len());
            let day = days[if rng.unit() < 0.5 { a.max(b) } else { a }];
            requests.push(p::RecordActivityRequest {
                member: rep.member.name.clone(),
                metric: org.arr.name.clone(),
                value: size,
                occurred_at: when(day, 9 + rng.below(9) as u32, rng.below(60) as u32),
                source: "crm".into(),
                external_reference: format!("opp-{subject}-{}-{n}", org.quarter),
                credit_splits: vec![],
                request_id: format!("demo-{tenant}-{}-deal-{i}-{n}", org.quarter),
            });
            n += 1;
        }
    }
    // In time order, so checkpoints are crossed in the order they would
    // have been.
    requests.sort_by_key(|r| r.occurred_at.as_ref().map(|t| t.seconds));
    for batch in requests.chunks(500) {
        let req = p::RecordActivitiesRequest {
            requests: batch.to_vec(),
        };
        settle(|| {
            let mut c = conn.progress.clone();
            let req = req.clone();
            async move { c.record_activities(req).await }
        })
        .await
        .map_err(explain)?;
    }
    Ok(requests.len())
}

// === Live activity ===

/// The next threshold (checkpoint, target, stretch) a progress has not
/// reached, if any.
fn next_threshold(p: &p::Progress) -> Option<i64> {
    p.checkpoints
        .iter()
        .filter(|c| !c.reached)
        .map(|c| c.target)
        .chain(std::iter::once(p.target))
        .chain(p.stretch_target)
        .filter(|t| *t > p.value)
        .min()
}

async fn live(
    conn: &mut Conn,
    org: &mut Org,
    rng: &mut Rng,
    args: &DemoArgs,
    settings: &Settings,
    stop: &mut watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let ends = args.duration_secs.map(|s| Instant::now() + Duration::from_secs(s));
    let mut interval = tokio::time::interval(Duration::from_millis(args.interval_ms.max(50)));
    let usd = Unit::of(&org.arr);
    let skill_total: f64 = org.reps.iter().map(|r| r.skill).sum();
    let mut tick: u64 = 0;
    let mut last_error = String::new();
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            _ = stop.changed() => return Ok(()),
        }
        if *stop.borrow() || ends.is_some_and(|e| Instant::now() >= e) {
            return Ok(());
        }
        tick += 1;
        // A close that crosses someone's next threshold, 5 s in and then
        // every 15 s, so recognitions keep coming.
        let result = if tick % 15 == 5 {
            spotlight(conn, org, rng, settings, &args.tenant, &usd).await
        } else {
            let mut pick = rng.unit() * skill_total;
            let rep = org
                .reps
                .iter()
                .find(|r| {
                    pick -= r.skill;
                    pick <= 0.0
                })
                .unwrap_or(&org.reps[0]);
            if rng.unit() < 0.15 {
                let cents = rng.deal_usd(MEDIAN_DEAL_USD * 0.8) * 100;
                record_now(conn, rep, &org.arr, cents, "crm").await.map(|_| {
                    Some(format!(
                        "{} closed {} ({})",
                        rep.member.display_name,
                        usd.format(cents),
                        REGIONS[rep.region].name
                    ))
                })
            } else {
                record_now(conn, rep, &org.calls, 1, "dialer").await.map(|_| None)
            }
        };
        match result {
            Ok(Some(line)) => {
                last_error.clear();
                let _ = out::line(format!("{} {line}", paint(out::DIM, Utc::now().format("%H:%M:%S"))));
            }
            Ok(None) => last_error.clear(),
            Err(e) => {
                let text = format!("{e:#}");
                if text != last_error {
                    anstream::eprintln!("{} {text} (retrying)", paint(out::YELLOW, "demo:"));
                    last_error = text;
                }
            }
        }
    }
}

async fn record_now(conn: &mut Conn, rep: &Rep, metric: &g::Metric, value: i64, source: &str) -> anyhow::Result<()> {
    conn.progress
        .record_activity(p::RecordActivityRequest {
            member: rep.member.name.clone(),
            metric: metric.name.clone(),
            value,
            occurred_at: Some(prost_types::Timestamp {
                seconds: Utc::now().timestamp(),
                nanos: 0,
            }),
            source: source.into(),
            external_reference: String::new(),
            credit_splits: vec![],
            request_id: uuid::Uuid::now_v7().to_string(),
        })
        .await
        .map_err(explain)?;
    Ok(())
}

/// Closes a deal for the rep nearest to their next New ARR threshold, big
/// enough to cross it, and sometimes has their manager send kudos.
async fn spotlight(
    conn: &mut Conn,
    org: &Org,
    rng: &mut Rng,
    settings: &Settings,
    tenant: &str,
    usd: &Unit,
) -> anyhow::Result<Option<String>> {
    let names: Vec<String> = org.reps.iter().map(|r| format!("{}/progress", r.arr.name)).collect();
    let progress = conn
        .progress
        .batch_get_progress(p::BatchGetProgressRequest { names })
        .await
        .map_err(explain)?
        .into_inner()
        .progress;
    let best = org
        .reps
        .iter()
        .zip(&progress)
        .filter_map(|(rep, p)| next_threshold(p).map(|t| (rep, p, t - p.value)))
        .min_by_key(|(_, _, gap)| *gap);
    let Some((rep, p, gap)) = best else {
        return Ok(None);
    };
    // Round the deal up to $100 with a little on top.
    let extra = (rep.quota as f64 * 0.02 * rng.unit()) as i64;
    let cents = ((gap + extra) / 10_000 + 1) * 10_000;
    record_now(conn, rep, &org.arr, cents, "crm").await?;
    let attainment = (p.value + cents) * 10_000 / p.target.max(1);
    if rng.unit() < 0.6 {
        let manager = &org.managers[1 + rep.region];
        let first = rep.member.display_name.split(' ').next().unwrap_or_default();
        let message = [
            format!("Huge close, {first}! That's {} of quota.", out::percent(attainment)),
            format!("Great work {first}, keep that momentum going!"),
            format!("{first}, what a deal. The whole region is cheering."),
        ][rng.below(3)]
        .clone();
        let token = dev_token(settings, tenant, &manager.subject, &[Role::Manager])?;
        let as_manager = conn.with_token(&token)?;
        let sent = as_manager
            .recognition
            .clone()
            .give_kudos(r::GiveKudosRequest {
                recipient: rep.member.name.clone(),
                milestone: rep.arr.name.clone(),
                message,
                visibility: r::Visibility::Public as i32,
                request_id: uuid::Uuid::now_v7().to_string(),
            })
            .await;
        // The daily kudos limit is part of the product: past it the demo
        // simply sends none for the day. Other refusals are worth a note,
        // not the end of the close.
        if let Err(s) = sent {
            if s.code() != Code::ResourceExhausted {
                anstream::eprintln!("{} kudos not sent: {:#}", paint(out::YELLOW, "demo:"), explain(s));
            }
        }
    }
    Ok(Some(format!(
        "{} {} closed {} and is at {} of quota",
        paint(out::YELLOW, "★"),
        paint(out::BOLD, &rep.member.display_name),
        usd.format(cents),
        out::percent(attainment),
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The generator is deterministic and its deals look like deals.
    #[test]
    fn seeded_deals_are_repeatable_and_plausible() {
        let draw = |seed| {
            let mut rng = Rng(seed);
            (0..2_000).map(|_| rng.deal_usd(MEDIAN_DEAL_USD)).collect::<Vec<_>>()
        };
        let deals = draw(7);
        assert_eq!(deals, draw(7));
        assert_ne!(deals, draw(8));
        let mut sorted = deals.clone();
        sorted.sort_unstable();
        let median = sorted[sorted.len() / 2];
        assert!((14_000..=23_000).contains(&median), "median {median}");
        assert!(sorted.iter().all(|d| d % 100 == 0 && (2_000..=300_000).contains(d)));
        assert!(sorted[sorted.len() * 95 / 100] > 2 * median, "a long tail of big deals");
    }

    /// The next threshold skips reached checkpoints and ends at the stretch.
    #[test]
    fn next_threshold_walks_up() {
        let mut p = p::Progress {
            value: 30,
            target: 100,
            stretch_target: Some(125),
            checkpoints: vec![
                p::CheckpointProgress {
                    target: 25,
                    reached: true,
                    ..Default::default()
                },
                p::CheckpointProgress {
                    target: 50,
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        assert_eq!(next_threshold(&p), Some(50));
        p.value = 110;
        p.checkpoints[1].reached = true;
        assert_eq!(next_threshold(&p), Some(125));
        p.value = 130;
        assert_eq!(next_threshold(&p), None);
    }
}
