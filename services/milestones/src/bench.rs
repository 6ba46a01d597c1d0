//! `milestones bench`: load against a running suite, printing throughput and
//! latency percentiles. Anyone can rerun it; see the README's performance
//! section for the figures and the commands that produced them.
//!
//! It builds its own tenant (an org of `--members` reps in `--teams` teams
//! four levels deep, each rep and team with a milestone this quarter), then
//! measures: unary RecordActivity at each concurrency, milestone event
//! latency, reads (GetProgress, GetLeaderboard over a team of about 200) at
//! 10k activities, bulk RecordActivities up to `--activities`, and the reads
//! again.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use milestones_api::goal as g;
use milestones_api::goal::goal_service_client::GoalServiceClient;
use milestones_api::progress as p;
use milestones_api::progress::progress_service_client::ProgressServiceClient;
use milestones_runtime::auth::{mint_token, Role};
use milestones_runtime::config::Settings;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::service::Interceptor;
use tonic::transport::Channel;

/// What to run.
#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    /// The suite's address.
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    endpoint: String,
    /// Reps in the org.
    #[arg(long, default_value_t = 1_000)]
    members: usize,
    /// Teams in the org (four levels deep).
    #[arg(long, default_value_t = 50)]
    teams: usize,
    /// Unary RecordActivity calls per concurrency level.
    #[arg(long, default_value_t = 2_000)]
    unary_requests: usize,
    /// Concurrency levels for unary ingestion, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
    concurrency: Vec<usize>,
    /// Total activities to reach with bulk import.
    #[arg(long, default_value_t = 1_000_000)]
    activities: usize,
    /// Activities per RecordActivities call.
    #[arg(long, default_value_t = 1_000)]
    batch: usize,
    /// Concurrent bulk callers. The server merges concurrent batches into
    /// larger transactions, which takes more calls in flight than it has
    /// writers (two): to 1M on PostgreSQL, 8 callers 36.7-39.4k
    /// activities/s, 12 callers 47.6k, 16 callers 45.6k.
    #[arg(long, default_value_t = 12)]
    bulk_concurrency: usize,
    /// HTTP/2 connections the unary and bulk callers are spread over, in
    /// turn: a pool of channels, as gRPC's performance guide advises for
    /// high load. A connection is one stream of frames that one task reads
    /// and writes in order on each side; over several, the server's and
    /// the client's connection tasks work on both cores. Measured on
    /// PostgreSQL (2026-11-30) in one process, taking turns in six rounds
    /// of 6,000 calls so that each count sees the same machine: at 16
    /// clients, one connection against four 4.9k/6.0k, 4.5k/5.1k and
    /// 5.4k/5.9k calls/s in three series (8 connections 5.3k and 16 4.6k
    /// in the first); at 64 clients 9.3k/10.1k.
    #[arg(long, default_value_t = 4)]
    channels: usize,
    /// A shell command that prints a `tps = N` line, as pgbench does: the
    /// baseline the unary target at 16 clients is set against. The 16
    /// clients then make `--unary-requests` calls in each of
    /// `--baseline-rounds` rounds, each just after a run of the command,
    /// and each round is compared with the run before it: this machine's
    /// speed moves by a third within a minute, so figures taken minutes
    /// apart do not compare.
    #[arg(long)]
    baseline_command: Option<String>,
    /// Rounds of the comparison with `--baseline-command`.
    #[arg(long, default_value_t = 5)]
    baseline_rounds: usize,
    /// Read calls per measurement.
    #[arg(long, default_value_t = 1_000)]
    reads: usize,
    /// The server's process id, on the same Linux machine: the unary and
    /// bulk lines then also give the CPU time the server, this client and
    /// PostgreSQL spent per activity, which varies less between runs than
    /// throughput on a shared machine.
    #[arg(long)]
    server_pid: Option<u32>,
}

#[derive(Clone)]
struct Bearer(MetadataValue<Ascii>);

impl Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        req.metadata_mut().insert("authorization", self.0.clone());
        Ok(req)
    }
}

type Goal = GoalServiceClient<InterceptedService<Channel, Bearer>>;
type Progress = ProgressServiceClient<InterceptedService<Channel, Bearer>>;

/// Latency samples of one measurement.
struct Samples {
    name: String,
    latencies: Vec<Duration>,
    elapsed: Duration,
    items: usize,
    /// CPU time spent meanwhile, when the server's process is known.
    cpu: Option<Cpu>,
}

impl Samples {
    /// The calls of two measurements of the same kind, as one.
    fn merge(mut self, other: Samples) -> Samples {
        self.latencies.extend(other.latencies);
        self.elapsed += other.elapsed;
        self.items += other.items;
        self.cpu = match (self.cpu, other.cpu) {
            (Some(a), Some(b)) => Some(Cpu {
                server: a.server + b.server,
                client: a.client + b.client,
                postgres: a.postgres + b.postgres,
            }),
            _ => None,
        };
        self
    }

    fn print(&mut self) {
        self.latencies.sort();
        let pct = |q: f64| {
            let i = ((self.latencies.len() as f64 - 1.0) * q).round() as usize;
            self.latencies.get(i).map_or(0.0, |d| d.as_secs_f64() * 1_000.0)
        };
        println!(
            "{:<44} {:>10.0}/s  p50 {:>7.2} ms  p95 {:>7.2} ms  p99 {:>7.2} ms  ({} in {:.1} s)",
            self.name,
            self.items as f64 / self.elapsed.as_secs_f64(),
            pct(0.50),
            pct(0.95),
            pct(0.99),
            self.items,
            self.elapsed.as_secs_f64()
        );
        if let Some(cpu) = self.cpu {
            let per_item = |seconds: f64| seconds / self.items.max(1) as f64 * 1e6;
            println!(
                "{:<44} CPU per item: server {:.1} µs, client {:.1} µs, PostgreSQL {:.1} µs",
                "",
                per_item(cpu.server),
                per_item(cpu.client),
                per_item(cpu.postgres)
            );
        }
    }
}

/// The CPU seconds (user and system) in a `/proc/PID/stat` line. The
/// command name, in parentheses, may hold spaces and parentheses itself;
/// the times are in USER_HZ ticks, 100 per second in Linux's ABI.
fn stat_seconds(stat: &str) -> Option<f64> {
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / 100.0)
}

/// CPU seconds spent by the server, this process and every PostgreSQL
/// process on the machine, from Linux's `/proc`.
#[derive(Clone, Copy, Debug)]
struct Cpu {
    server: f64,
    client: f64,
    postgres: f64,
}

impl Cpu {
    /// So far; None without the server's process id or `/proc`.
    fn now(server_pid: Option<u32>) -> Option<Cpu> {
        let seconds = stat_seconds;
        let read = |pid: &str| std::fs::read_to_string(format!("/proc/{pid}/stat")).ok();
        let server = seconds(&read(&server_pid?.to_string())?)?;
        let client = seconds(&read("self")?)?;
        let mut postgres = 0.0;
        for entry in std::fs::read_dir("/proc").ok()?.flatten() {
            let pid = entry.file_name().to_string_lossy().to_string();
            if !pid.bytes().all(|b| b.is_ascii_digit()) {
                continue;
            }
            let is_postgres = std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c.starts_with(b"postgres"));
            if is_postgres {
                postgres += read(&pid).as_deref().and_then(seconds).unwrap_or(0.0);
            }
        }
        Some(Cpu {
            server,
            client,
            postgres,
        })
    }

    /// What was spent since `before`.
    fn since(before: Option<Cpu>, server_pid: Option<u32>) -> Option<Cpu> {
        let (before, after) = (before?, Cpu::now(server_pid)?);
        Some(Cpu {
            server: after.server - before.server,
            client: after.client - before.client,
            postgres: after.postgres - before.postgres,
        })
    }
}

struct Org {
    members: Vec<g::Member>,
    milestones: Vec<g::Milestone>,
    leaderboard_team: g::Team,
    metric: g::Metric,
    quarter: String,
}

fn now_ts() -> prost_types::Timestamp {
    let now = chrono::Utc::now() - chrono::Duration::seconds(1);
    prost_types::Timestamp {
        seconds: now.timestamp(),
        nanos: 0,
    }
}

/// Runs the benchmark.
pub async fn run(args: BenchArgs, settings: &Settings) -> anyhow::Result<()> {
    let tenant = format!("bench-{}", chrono::Utc::now().timestamp());
    let token = mint_token(
        &settings.auth.to_config(),
        &tenant,
        "bench",
        &[Role::Admin],
        Duration::from_secs(86_400),
    )?;
    let bearer = Bearer(format!("Bearer {token}").parse()?);
    let channel = connect(&args.endpoint).await?;
    let mut goal = GoalServiceClient::with_interceptor(channel.clone(), bearer.clone());
    let progress = ProgressServiceClient::with_interceptor(channel.clone(), bearer.clone());
    println!(
        "tenant {tenant}: building an org of {} reps in {} teams",
        args.members, args.teams
    );
    let org = build_org(&mut goal, &args).await?;
    wait_for_projection(&progress, &org).await?;
    let mut pool = vec![progress.clone()];
    for _ in 1..args.channels.max(1) {
        let channel = connect(&args.endpoint).await?;
        pool.push(ProgressServiceClient::with_interceptor(channel, bearer.clone()));
    }
    let recorded = Arc::new(AtomicU64::new(0));
    println!(
        "unary and bulk callers take turns over {} HTTP/2 connections (--channels)",
        pool.len()
    );

    for &c in &args.concurrency {
        match &args.baseline_command {
            Some(command) if c == BASELINE_CLIENTS => {
                versus_baseline(command, &args, &pool, &org, &recorded).await?;
            }
            _ => unary(&pool, &org, args.unary_requests, c, &recorded, args.server_pid)
                .await?
                .print(),
        }
    }
    event_latency(&mut goal, &progress, &org, &tenant).await?.print();
    top_up(&pool, &org, 10_000, &args, &recorded).await?;
    reads(&progress, &org, args.reads, recorded.load(Ordering::Relaxed)).await?;
    let mut bulk = top_up(&pool, &org, args.activities, &args, &recorded).await?;
    if bulk.items == 0 {
        // Nothing to import: a line of zeros would read as a measurement.
        println!(
            "RecordActivities: skipped, {} activities already recorded (--activities {})",
            recorded.load(Ordering::Relaxed),
            args.activities
        );
        return Ok(());
    }
    bulk.print();
    reads(&progress, &org, args.reads, recorded.load(Ordering::Relaxed)).await?;
    Ok(())
}

async fn build_org(goal: &mut Goal, args: &BenchArgs) -> anyhow::Result<Org> {
    let metric = goal
        .create_metric(g::CreateMetricRequest {
            metric: Some(g::Metric {
                display_name: "New ARR".into(),
                unit: g::MetricUnit::Currency as i32,
                currency_code: "EUR".into(),
                aggregation: g::MetricAggregation::Sum as i32,
                ..Default::default()
            }),
            request_id: String::new(),
        })
        .await?
        .into_inner();
    let today = chrono::Utc::now().date_naive();
    let quarter = milestones_domain::calendar::FiscalCalendar::default()
        .quarter_of(today)
        .name();
    // Four levels: 1 root, then the rest spread 1:4 per level.
    let mut levels: Vec<Vec<g::Team>> = Vec::new();
    let sizes = level_sizes(args.teams);
    for (depth, size) in sizes.iter().enumerate() {
        let mut level = Vec::new();
        for i in 0..*size {
            let parent = if depth == 0 {
                String::new()
            } else {
                levels[depth - 1][i % levels[depth - 1].len()].name.clone()
            };
            let team = goal
                .create_team(g::CreateTeamRequest {
                    team: Some(g::Team {
                        display_name: format!("L{depth} team {i}"),
                        parent,
                        ..Default::default()
                    }),
                    request_id: String::new(),
                })
                .await?
                .into_inner();
            level.push(team);
        }
        levels.push(level);
    }
    let leaves = levels.last().cloned().unwrap_or_default();
    let mut members = Vec::new();
    let mut milestones = Vec::new();
    for i in 0..args.members {
        let m = goal
            .create_member(g::CreateMemberRequest {
                member: Some(g::Member {
                    display_name: format!("Rep {i}"),
                    email: format!("rep{i}@bench.example"),
                    role: g::MemberRole::Rep as i32,
                    ..Default::default()
                }),
                request_id: String::new(),
            })
            .await?
            .into_inner();
        let team = &leaves[i % leaves.len()];
        goal.create_membership(g::CreateMembershipRequest {
            membership: Some(g::Membership {
                member: m.name.clone(),
                team: team.name.clone(),
                start_date: Some(milestones_runtime::wire::date_to_wire(today - chrono::Days::new(400))),
                ..Default::default()
            }),
            request_id: String::new(),
        })
        .await?;
        milestones.push(create_milestone(goal, &m.name, &metric.name, &quarter, 100_000_000).await?);
        members.push(m);
    }
    for level in &levels {
        for t in level {
            create_milestone(goal, &t.name, &metric.name, &quarter, 1_000_000_000_000).await?;
        }
    }
    // The level-1 team whose subtree is closest to 200 reps.
    let per_level1 = args.members / levels.get(1).map_or(1, |l| l.len().max(1));
    println!("  leaderboard team: a level-1 team of about {per_level1} reps");
    let leaderboard_team = levels
        .get(1)
        .and_then(|l| l.first())
        .or_else(|| levels[0].first())
        .cloned()
        .unwrap_or_default();
    Ok(Org {
        members,
        milestones,
        leaderboard_team,
        metric,
        quarter,
    })
}

/// Team counts per level for `total` teams four levels deep.
fn level_sizes(total: usize) -> Vec<usize> {
    let total = total.max(4);
    let l1 = ((total - 1) / 12).max(1);
    let l2 = ((total - 1 - l1) / 3).max(1);
    let l3 = total - 1 - l1 - l2;
    vec![1, l1, l2, l3]
}

async fn create_milestone(
    goal: &mut Goal,
    owner: &str,
    metric: &str,
    quarter: &str,
    target: i64,
) -> anyhow::Result<g::Milestone> {
    Ok(goal
        .create_milestone(g::CreateMilestoneRequest {
            milestone: Some(g::Milestone {
                display_name: format!("{quarter} bench"),
                owner: owner.into(),
                metric: metric.into(),
                fiscal_period: quarter.into(),
                target,
                checkpoints: vec![g::Checkpoint {
                    display_name: "half".into(),
                    target: target / 2,
                    due_date: None,
                }],
                ..Default::default()
            }),
            activate: true,
            request_id: String::new(),
        })
        .await?
        .into_inner())
}

async fn wait_for_projection(progress: &Progress, org: &Org) -> anyhow::Result<()> {
    let last = org
        .milestones
        .last()
        .map(|m| format!("{}/progress", m.name))
        .unwrap_or_default();
    let start = Instant::now();
    loop {
        let mut c = progress.clone();
        if c.get_progress(p::GetProgressRequest { name: last.clone() })
            .await
            .is_ok()
        {
            println!(
                "  progress caught up with goal's feed in {:.1} s",
                start.elapsed().as_secs_f64()
            );
            return Ok(());
        }
        if start.elapsed() > Duration::from_secs(300) {
            anyhow::bail!("progress did not catch up with goal's feed within 5 minutes");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn activity(org: &Org, i: u64, value: i64) -> p::RecordActivityRequest {
    let m = &org.members[(i as usize * 7919) % org.members.len()];
    p::RecordActivityRequest {
        member: m.name.clone(),
        metric: org.metric.name.clone(),
        value,
        occurred_at: Some(now_ts()),
        source: "bench".into(),
        external_reference: String::new(),
        credit_splits: vec![],
        request_id: format!("bench-{i}"),
    }
}

async fn unary(
    pool: &[Progress],
    org: &Org,
    requests: usize,
    concurrency: usize,
    recorded: &Arc<AtomicU64>,
    server_pid: Option<u32>,
) -> anyhow::Result<Samples> {
    let cpu = Cpu::now(server_pid);
    let start = Instant::now();
    let mut tasks = Vec::new();
    let per_task = requests / concurrency.max(1);
    for caller in 0..concurrency {
        let mut c = pool[caller % pool.len()].clone();
        let recorded = recorded.clone();
        let reqs: Vec<p::RecordActivityRequest> = (0..per_task)
            .map(|_| activity(org, recorded.fetch_add(1, Ordering::Relaxed), 1_000))
            .collect();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(reqs.len());
            for r in reqs {
                let t = Instant::now();
                c.record_activity(r).await?;
                lat.push(t.elapsed());
            }
            Ok::<_, tonic::Status>(lat)
        }));
    }
    let mut latencies = Vec::new();
    for t in tasks {
        latencies.extend(t.await??);
    }
    Ok(Samples {
        name: format!("RecordActivity, concurrency {concurrency}"),
        items: latencies.len(),
        latencies,
        elapsed: start.elapsed(),
        cpu: Cpu::since(cpu, server_pid),
    })
}

/// A new HTTP/2 connection to the suite.
async fn connect(endpoint: &str) -> anyhow::Result<Channel> {
    Ok(Channel::from_shared(endpoint.to_string())?
        .http2_adaptive_window(true)
        .connect()
        .await?)
}

/// The client count of the unary target's baseline (pgbench `-c 16`).
const BASELINE_CLIENTS: usize = 16;

/// Unary calls at 16 clients in rounds, each just after a run of the
/// baseline `command`; prints each round's share of the baseline, the
/// calls of all rounds together, and the median share.
async fn versus_baseline(
    command: &str,
    args: &BenchArgs,
    pool: &[Progress],
    org: &Org,
    recorded: &Arc<AtomicU64>,
) -> anyhow::Result<()> {
    let rounds = args.baseline_rounds.max(1);
    let mut all: Option<Samples> = None;
    let mut shares = Vec::with_capacity(rounds);
    for round in 1..=rounds {
        let tps = baseline_tps(command.to_string()).await?;
        let s = unary(
            pool,
            org,
            args.unary_requests,
            BASELINE_CLIENTS,
            recorded,
            args.server_pid,
        )
        .await?;
        let rate = s.items as f64 / s.elapsed.as_secs_f64();
        let share = 100.0 * rate / tps;
        println!("  round {round}: baseline {tps:.0} tps, then RecordActivity {rate:.0}/s: {share:.1} %");
        shares.push(share);
        all = Some(match all {
            None => s,
            Some(a) => a.merge(s),
        });
    }
    if let Some(mut all) = all {
        all.print();
    }
    shares.sort_by(f64::total_cmp);
    println!(
        "RecordActivity at {BASELINE_CLIENTS} clients: {:.1} % of the baseline, the median of {rounds} rounds \
         (target: at least 50 %)",
        shares[shares.len() / 2]
    );
    Ok(())
}

/// Runs the baseline `command` (through `sh -c`) and reads its `tps = N`
/// line. Its errors go to this process's stderr.
async fn baseline_tps(command: String) -> anyhow::Result<f64> {
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("sh")
            .arg("-c")
            .arg(&command)
            .stderr(std::process::Stdio::inherit())
            .output()
            .map(|out| (command, out))
    })
    .await??;
    let (command, out) = out;
    if !out.status.success() {
        anyhow::bail!("the baseline command failed ({}): {command}", out.status);
    }
    parse_tps(&String::from_utf8_lossy(&out.stdout))
        .ok_or_else(|| anyhow::anyhow!("the baseline command printed no `tps = N` line: {command}"))
}

/// The rate in pgbench's `tps = 12345.678 (without initial connection time)`.
fn parse_tps(output: &str) -> Option<f64> {
    output
        .lines()
        .find_map(|line| line.trim().strip_prefix("tps = "))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

/// Time from RecordActivity to the milestone event reaching a consumer.
async fn event_latency(goal: &mut Goal, progress: &Progress, org: &Org, tenant: &str) -> anyhow::Result<Samples> {
    let rounds = 50;
    let mut targets = Vec::new();
    for i in 0..rounds {
        let m = goal
            .create_member(g::CreateMemberRequest {
                member: Some(g::Member {
                    display_name: format!("Latency {i}"),
                    email: format!("latency{i}@bench.example"),
                    role: g::MemberRole::Rep as i32,
                    ..Default::default()
                }),
                request_id: String::new(),
            })
            .await?
            .into_inner();
        let ms = create_milestone(goal, &m.name, &org.metric.name, &org.quarter, 2).await?;
        targets.push((m, ms));
    }
    let probe = Org {
        members: vec![],
        milestones: targets.iter().map(|(_, m)| m.clone()).collect(),
        ..clone_org(org)
    };
    wait_for_projection(progress, &probe).await?;
    let mut c = progress.clone();
    let mut feed = c
        .watch_milestone_events(p::WatchMilestoneEventsRequest { after_sequence: 0 })
        .await?
        .into_inner();
    // Skip the backlog: read until the first heartbeat.
    while let Some(msg) = feed.message().await? {
        if matches!(msg.kind, Some(p::watch_milestone_events_response::Kind::Heartbeat(_))) {
            break;
        }
    }
    let mut latencies = Vec::new();
    let start = Instant::now();
    for (i, (member, milestone)) in targets.iter().enumerate() {
        let t = Instant::now();
        c.record_activity(p::RecordActivityRequest {
            member: member.name.clone(),
            metric: org.metric.name.clone(),
            value: 2,
            occurred_at: Some(now_ts()),
            source: "bench".into(),
            external_reference: String::new(),
            credit_splits: vec![],
            request_id: format!("latency-{tenant}-{i}"),
        })
        .await?;
        loop {
            let msg = tokio::time::timeout(Duration::from_secs(10), feed.message()).await??;
            if let Some(p::watch_milestone_events_response::Kind::Event(e)) = msg.and_then(|m| m.kind) {
                if e.milestone == milestone.name && e.kind == p::MilestoneEventKind::TargetReached as i32 {
                    latencies.push(t.elapsed());
                    break;
                }
            }
        }
    }
    Ok(Samples {
        name: "activity → milestone event delivered".into(),
        items: latencies.len(),
        latencies,
        elapsed: start.elapsed(),
        cpu: None,
    })
}

fn clone_org(org: &Org) -> Org {
    Org {
        members: org.members.clone(),
        milestones: org.milestones.clone(),
        leaderboard_team: org.leaderboard_team.clone(),
        metric: org.metric.clone(),
        quarter: org.quarter.clone(),
    }
}

/// Bulk-imports until `total` activities are recorded.
async fn top_up(
    pool: &[Progress],
    org: &Org,
    total: usize,
    args: &BenchArgs,
    recorded: &Arc<AtomicU64>,
) -> anyhow::Result<Samples> {
    let cpu = Cpu::now(args.server_pid);
    let start = Instant::now();
    let before = recorded.load(Ordering::Relaxed) as usize;
    let missing = total.saturating_sub(before);
    let batches = missing.div_ceil(args.batch.max(1));
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for caller in 0..args.bulk_concurrency.max(1) {
        let mut c = pool[caller % pool.len()].clone();
        let (next, recorded) = (next.clone(), recorded.clone());
        let org = clone_org(org);
        let batch = args.batch;
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            loop {
                let b = next.fetch_add(1, Ordering::Relaxed) as usize;
                if b >= batches {
                    return Ok::<_, tonic::Status>(lat);
                }
                let n = batch.min(missing - b * batch);
                let requests = (0..n)
                    .map(|_| activity(&org, recorded.fetch_add(1, Ordering::Relaxed), 10))
                    .collect();
                let t = Instant::now();
                c.record_activities(p::RecordActivitiesRequest { requests }).await?;
                lat.push(t.elapsed());
            }
        }));
    }
    let mut latencies = Vec::new();
    for t in tasks {
        latencies.extend(t.await??);
    }
    Ok(Samples {
        name: format!(
            "RecordActivities ×{} (bulk, {} callers)",
            args.batch, args.bulk_concurrency
        ),
        items: missing,
        latencies,
        elapsed: start.elapsed(),
        cpu: Cpu::since(cpu, args.server_pid),
    })
}

async fn reads(progress: &Progress, org: &Org, n: usize, recorded: u64) -> anyhow::Result<()> {
    let mut c = progress.clone();
    let mut lat = Vec::with_capacity(n);
    let start = Instant::now();
    for i in 0..n {
        let m = &org.milestones[(i * 7919) % org.milestones.len()];
        let t = Instant::now();
        c.get_progress(p::GetProgressRequest {
            name: format!("{}/progress", m.name),
        })
        .await?;
        lat.push(t.elapsed());
    }
    Samples {
        name: format!("GetProgress at {recorded} activities"),
        items: n,
        latencies: lat,
        elapsed: start.elapsed(),
        cpu: None,
    }
    .print();
    let mut lat = Vec::with_capacity(n);
    let start = Instant::now();
    for _ in 0..n {
        let t = Instant::now();
        c.get_leaderboard(p::GetLeaderboardRequest {
            team: org.leaderboard_team.name.clone(),
            metric: org.metric.name.clone(),
            period: Some(p::get_leaderboard_request::Period::FiscalPeriod(org.quarter.clone())),
            rank_by: p::RankBy::Attainment as i32,
            page_size: 50,
            page_token: String::new(),
        })
        .await?;
        lat.push(t.elapsed());
    }
    Samples {
        name: format!("GetLeaderboard at {recorded} activities"),
        items: n,
        latencies: lat,
        elapsed: start.elapsed(),
        cpu: None,
    }
    .print();
    Ok(())
}

#[cfg(test)]
mod tests {
    /// utime and stime are the 14th and 15th fields, counted past a
    /// command name that holds spaces and a parenthesis.
    #[test]
    fn cpu_seconds_come_from_utime_and_stime() {
        let stat = "4242 (tokio (rt) w) S 1 4242 4242 0 -1 4194560 812 0 0 0 1234 56 0 0 20 0 9 0 100 0 0";
        assert_eq!(super::stat_seconds(stat), Some(12.90));
        assert_eq!(super::stat_seconds("4242 (short) S 1"), None);
    }

    /// pgbench's summary ends with the rate; the lines before it hold other
    /// numbers.
    #[test]
    fn the_baseline_rate_is_read_from_the_tps_line() {
        let pgbench = "transaction type: insert.sql\nnumber of clients: 16\nlatency average = 1.3 ms\n\
                       initial connection time = 21.5 ms\ntps = 12091.874 (without initial connection time)\n";
        assert_eq!(super::parse_tps(pgbench), Some(12091.874));
        assert_eq!(super::parse_tps("number of clients: 16\n"), None);
        assert_eq!(super::parse_tps("tps = fast\n"), None);
    }
}
