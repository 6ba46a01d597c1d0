//! The command line: `milestones server`, `migrate`, `token`, and client
//! commands for people (`teams`, `metrics`, `milestones`).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use milestones_api::goal as pb;
use milestones_api::goal::goal_service_client::GoalServiceClient;
use milestones_runtime::auth::{mint_token, Role};
use milestones_runtime::config::{self, Settings};
use milestones_runtime::server::shutdown_signal;
use milestones_runtime::telemetry;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;
use tonic::Request;
use tonic_types::StatusExt;

use crate::suite;

/// Sales Milestones: set milestones for sales teams and reps, track
/// progress, recognise achievement.
#[derive(Parser, Debug)]
#[command(name = "milestones", version, about)]
pub struct Cli {
    /// A YAML config file; `MILESTONES__SECTION__KEY` environment variables
    /// override it (e.g. MILESTONES__GOAL__DATABASE_URL).
    #[arg(long, global = true, env = "MILESTONES_CONFIG")]
    config: Option<PathBuf>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Runs the services (all of them by default) on one port. With no
    /// configuration it uses embedded SQLite files under ./data.
    Server {
        /// Which services to run, comma-separated (available: goal, progress,
        /// recognition).
        #[arg(long, value_delimiter = ',', default_value = "goal,progress,recognition")]
        services: Vec<String>,
        /// Overrides `listen_addr`, e.g. 0.0.0.0:50051.
        #[arg(long)]
        listen: Option<String>,
    },
    /// Applies pending database migrations and exits.
    Migrate {
        /// Which services' databases to migrate, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "goal,progress,recognition")]
        services: Vec<String>,
    },
    /// Mints a development bearer token signed with the configured HS256
    /// secret, and prints it.
    Token {
        /// The tenant the token acts for.
        #[arg(long, default_value = "demo")]
        tenant: String,
        /// The caller's subject (`sub` claim).
        #[arg(long, default_value = "dev")]
        subject: String,
        /// Roles, comma-separated: admin, manager, rep, service.
        #[arg(long, value_delimiter = ',', default_value = "admin")]
        role: Vec<String>,
        /// How long the token is valid, in hours.
        #[arg(long, default_value_t = 24)]
        ttl_hours: u64,
    },
    /// Measures the suite: creates its own tenant and org, then prints
    /// ingestion throughput, read and event latencies (see the README).
    Bench(crate::bench::BenchArgs),
    /// Manages teams.
    Teams {
        #[command(flatten)]
        conn: ClientArgs,
        #[command(subcommand)]
        action: TeamAction,
    },
    /// Manages metrics.
    Metrics {
        #[command(flatten)]
        conn: ClientArgs,
        #[command(subcommand)]
        action: MetricAction,
    },
    /// Manages milestones.
    Milestones {
        #[command(flatten)]
        conn: ClientArgs,
        #[command(subcommand)]
        action: MilestoneAction,
    },
}

/// How the client reaches the server.
#[derive(Args, Debug)]
struct ClientArgs {
    /// The server's address.
    #[arg(long, env = "MILESTONES_ENDPOINT", default_value = "http://127.0.0.1:50051")]
    endpoint: String,
    /// A bearer token (see `milestones token`).
    #[arg(long, env = "MILESTONES_TOKEN", hide_env_values = true)]
    token: String,
}

#[derive(Subcommand, Debug)]
enum TeamAction {
    /// Lists all teams.
    List,
    /// Creates a team.
    Create {
        /// The team's name, e.g. "EMEA Enterprise".
        name: String,
        /// The parent team, `teams/{id}`.
        #[arg(long, default_value = "")]
        parent: String,
    },
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum UnitArg {
    Count,
    Currency,
    Seconds,
}

#[derive(Subcommand, Debug)]
enum MetricAction {
    /// Lists all metrics.
    List,
    /// Creates a metric summed over activities.
    Create {
        /// The metric's name, e.g. "New ARR".
        name: String,
        /// What its values count.
        #[arg(long, value_enum, default_value = "count")]
        unit: UnitArg,
        /// ISO-4217 code, required with `--unit currency`.
        #[arg(long, default_value = "")]
        currency: String,
        /// Count activities instead of summing their values.
        #[arg(long)]
        count_activities: bool,
    },
}

#[derive(Subcommand, Debug)]
enum MilestoneAction {
    /// Lists milestones.
    List {
        /// Only this owner's (`teams/{id}` or `members/{id}`).
        #[arg(long, default_value = "")]
        owner: String,
        /// Only milestones overlapping this fiscal period, e.g. FY2027-Q1.
        #[arg(long, default_value = "")]
        period: String,
    },
    /// Creates a milestone.
    Create {
        /// What is to be achieved.
        name: String,
        /// The owner, `teams/{id}` or `members/{id}`.
        #[arg(long)]
        owner: String,
        /// The metric, `metrics/{id}`.
        #[arg(long)]
        metric: String,
        /// The fiscal period, e.g. FY2027-Q1.
        #[arg(long)]
        period: String,
        /// The target in the metric's smallest unit (cents for money).
        #[arg(long)]
        target: i64,
        /// Make it ACTIVE straight away.
        #[arg(long)]
        activate: bool,
    },
}

/// Parses the command line, runs the command, and returns the exit code:
/// 0 on success, 64 for bad configuration, 1 for other failures.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let settings = match config::load(cli.config.as_deref()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(64);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command, settings)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command, mut settings: Settings) -> anyhow::Result<()> {
    match command {
        Command::Server { services, listen } => {
            let telemetry = telemetry::start(&settings.log, &settings.telemetry)?;
            if let Some(addr) = listen {
                settings.listen_addr = addr;
            }
            let listener = tokio::net::TcpListener::bind(&settings.listen_addr)
                .await
                .map_err(|e| {
                    anyhow::anyhow!(
                        "cannot listen on {}: {e}; is another server running? choose another address with --listen",
                        settings.listen_addr
                    )
                })?;
            eprintln!(
                "Sales Milestones is listening on {}.\nGet a development token with:\n  export MILESTONES_TOKEN=$(milestones token --tenant demo --subject you --role admin)\nthen try: milestones teams list",
                listener.local_addr()?
            );
            let served = suite::run(settings, &services, listener, shutdown_signal()).await;
            telemetry.shutdown();
            served
        }
        Command::Migrate { services } => {
            telemetry::init(&settings.log);
            for s in &services {
                match s.as_str() {
                    "goal" => {
                        let url = settings.goal.database().url_for("goal", &settings.data_dir);
                        let db = milestones_runtime::db::Db::connect(&url, 1).await?;
                        milestones_goal::migrate(&db).await?;
                        eprintln!("goal: migrations applied");
                    }
                    "progress" => {
                        let url = settings.progress.database().url_for("progress", &settings.data_dir);
                        let db = milestones_runtime::db::Db::connect(&url, 1).await?;
                        milestones_progress::migrate(&db).await?;
                        eprintln!("progress: migrations applied");
                    }
                    "recognition" => {
                        let url = settings
                            .recognition
                            .database()
                            .url_for("recognition", &settings.data_dir);
                        let db = milestones_runtime::db::Db::connect(&url, 1).await?;
                        milestones_recognition::migrate(&db).await?;
                        eprintln!("recognition: migrations applied");
                    }
                    other => anyhow::bail!(
                        "unknown service {other:?}; the services are: {}",
                        suite::SERVICES.join(", ")
                    ),
                }
            }
            Ok(())
        }
        Command::Bench(args) => crate::bench::run(args, &settings).await,
        Command::Token {
            tenant,
            subject,
            role,
            ttl_hours,
        } => {
            let roles = role
                .iter()
                .map(|r| {
                    Role::parse(r)
                        .ok_or_else(|| anyhow::anyhow!("unknown role {r:?}: use admin, manager, rep or service"))
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            let token = mint_token(
                &settings.auth.to_config(),
                &tenant,
                &subject,
                &roles,
                Duration::from_secs(ttl_hours * 3600),
            )?;
            println!("{token}");
            Ok(())
        }
        Command::Teams { conn, action } => {
            let mut client = connect(&conn).await?;
            match action {
                TeamAction::List => {
                    let teams = client
                        .list_teams(authed(
                            &conn,
                            pb::ListTeamsRequest {
                                page_size: 500,
                                ..Default::default()
                            },
                        )?)
                        .await
                        .map_err(explain)?
                        .into_inner()
                        .teams;
                    println!("{:<44} {:<30} PARENT", "NAME", "DISPLAY NAME");
                    for t in teams {
                        println!("{:<44} {:<30} {}", t.name, t.display_name, t.parent);
                    }
                }
                TeamAction::Create { name, parent } => {
                    let team = client
                        .create_team(authed(
                            &conn,
                            pb::CreateTeamRequest {
                                team: Some(pb::Team {
                                    display_name: name,
                                    parent,
                                    ..Default::default()
                                }),
                                request_id: String::new(),
                            },
                        )?)
                        .await
                        .map_err(explain)?
                        .into_inner();
                    println!("{}", team.name);
                }
            }
            Ok(())
        }
        Command::Metrics { conn, action } => {
            let mut client = connect(&conn).await?;
            match action {
                MetricAction::List => {
                    let metrics = client
                        .list_metrics(authed(
                            &conn,
                            pb::ListMetricsRequest {
                                page_size: 500,
                                ..Default::default()
                            },
                        )?)
                        .await
                        .map_err(explain)?
                        .into_inner()
                        .metrics;
                    println!("{:<46} {:<30} UNIT", "NAME", "DISPLAY NAME");
                    for m in metrics {
                        let unit = pb::MetricUnit::try_from(m.unit).map(|u| u.as_str_name()).unwrap_or("?");
                        println!("{:<46} {:<30} {} {}", m.name, m.display_name, unit, m.currency_code);
                    }
                }
                MetricAction::Create {
                    name,
                    unit,
                    currency,
                    count_activities,
                } => {
                    let unit = match unit {
                        UnitArg::Count => pb::MetricUnit::Count,
                        UnitArg::Currency => pb::MetricUnit::Currency,
                        UnitArg::Seconds => pb::MetricUnit::Seconds,
                    };
                    let aggregation = if count_activities {
                        pb::MetricAggregation::Count
                    } else {
                        pb::MetricAggregation::Sum
                    };
                    let metric = client
                        .create_metric(authed(
                            &conn,
                            pb::CreateMetricRequest {
                                metric: Some(pb::Metric {
                                    display_name: name,
                                    unit: unit as i32,
                                    currency_code: currency,
                                    aggregation: aggregation as i32,
                                    ..Default::default()
                                }),
                                request_id: String::new(),
                            },
                        )?)
                        .await
                        .map_err(explain)?
                        .into_inner();
                    println!("{}", metric.name);
                }
            }
            Ok(())
        }
        Command::Milestones { conn, action } => {
            let mut client = connect(&conn).await?;
            match action {
                MilestoneAction::List { owner, period } => {
                    let milestones = client
                        .list_milestones(authed(
                            &conn,
                            pb::ListMilestonesRequest {
                                owner,
                                fiscal_period: period,
                                page_size: 500,
                                ..Default::default()
                            },
                        )?)
                        .await
                        .map_err(explain)?
                        .into_inner()
                        .milestones;
                    println!(
                        "{:<49} {:<28} {:<10} {:>14} STATE",
                        "NAME", "DISPLAY NAME", "PERIOD", "TARGET"
                    );
                    for m in milestones {
                        let state = pb::MilestoneState::try_from(m.state)
                            .map(|s| s.as_str_name())
                            .unwrap_or("?");
                        println!(
                            "{:<49} {:<28} {:<10} {:>14} {}",
                            m.name,
                            m.display_name,
                            m.fiscal_period,
                            m.target,
                            state.trim_start_matches("MILESTONE_STATE_")
                        );
                    }
                }
                MilestoneAction::Create {
                    name,
                    owner,
                    metric,
                    period,
                    target,
                    activate,
                } => {
                    let m = client
                        .create_milestone(authed(
                            &conn,
                            pb::CreateMilestoneRequest {
                                milestone: Some(pb::Milestone {
                                    display_name: name,
                                    owner,
                                    metric,
                                    fiscal_period: period,
                                    target,
                                    ..Default::default()
                                }),
                                activate,
                                request_id: String::new(),
                            },
                        )?)
                        .await
                        .map_err(explain)?
                        .into_inner();
                    println!("{}", m.name);
                }
            }
            Ok(())
        }
    }
}

async fn connect(args: &ClientArgs) -> anyhow::Result<GoalServiceClient<Channel>> {
    let channel = Channel::from_shared(args.endpoint.clone())
        .map_err(|e| anyhow::anyhow!("--endpoint {:?} is not a URL: {e}", args.endpoint))?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .map_err(|e| anyhow::anyhow!("cannot reach {}: {e}; is `milestones server` running?", args.endpoint))?;
    Ok(GoalServiceClient::new(channel))
}

fn authed<T>(args: &ClientArgs, body: T) -> anyhow::Result<Request<T>> {
    let mut req = Request::new(body);
    let value: MetadataValue<_> = format!("Bearer {}", args.token)
        .parse()
        .map_err(|_| anyhow::anyhow!("the token contains characters that cannot be sent"))?;
    req.metadata_mut().insert("authorization", value);
    Ok(req)
}

/// Turns a status into an error that says what to fix, field by field.
fn explain(status: tonic::Status) -> anyhow::Error {
    match status.get_details_bad_request() {
        Some(br) if !br.field_violations.is_empty() => {
            let mut text = format!("{:?}: fix these fields:", status.code());
            for v in br.field_violations {
                text.push_str(&format!("\n  {}: {}", v.field, v.description));
            }
            anyhow::anyhow!(text)
        }
        _ => anyhow::anyhow!("{:?}: {}", status.code(), status.message()),
    }
}
