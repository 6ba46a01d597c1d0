//! The command line: `milestones server`, `migrate`, `token`, `bench`,
//! `demo`, and the client commands for people (`teams`, `members`,
//! `memberships`, `metrics`, `milestones`, `record`, `progress`,
//! `leaderboard`, `watch`, `kudos`, `recognitions`).
//!
//! # Layout
//! - [`client`]: connection flags, tokens, the three gRPC clients.
//! - [`resolve`]: names people type (display names, e-mails) to resources.
//! - [`org`], [`activity`], [`live`]: the client commands.
//! - [`demo`]: seeds a realistic sales org and keeps it busy.
//! - [`output`]: tables, bars, colours and JSON; [`errors`]: what to fix
//!   and the exit codes.

mod activity;
mod client;
mod demo;
mod errors;
mod live;
mod org;
mod output;
mod resolve;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use milestones_runtime::auth::{mint_token, Role};
use milestones_runtime::config::{self, Settings};
use milestones_runtime::server::shutdown_signal;
use milestones_runtime::telemetry;

use crate::suite;
use client::ClientArgs;
use output::{ColorWhen, Format};

const AFTER_HELP: &str = "\
Names: wherever a team, member, metric or milestone is asked for, give its
resource name (teams/…, members/…) or its display name (members also by
e-mail); an ambiguous name is refused with the candidates.

Tokens: client commands send --token / MILESTONES_TOKEN. Without one, in
development mode, they mint a short-lived admin token for --tenant (demo).

Exit codes: 0 done; 1 unexpected failure; 2 bad command line; 64 invalid
configuration; 65 request refused (bad input field by field, not found,
already exists, wrong state); 69 server unreachable; 75 a limit was hit, try
later; 77 token refused or missing a role.

Start here:
  milestones server --demo              # a running suite with a busy sales org
  milestones leaderboard --metric \"New ARR\"
  milestones watch";

/// Sales Milestones: set milestones for sales teams and reps, track
/// progress, recognise achievement.
#[derive(Parser, Debug)]
#[command(name = "milestones", version, after_help = AFTER_HELP)]
pub struct Cli {
    /// A YAML config file; `MILESTONES__SECTION__KEY` environment variables
    /// override it (e.g. MILESTONES__GOAL__DATABASE_URL).
    #[arg(long, global = true, env = "MILESTONES_CONFIG")]
    config: Option<PathBuf>,

    /// How client commands print results: `table` for people, `json` for
    /// scripts (errors then go to stderr as JSON too).
    #[arg(
        long,
        short,
        global = true,
        value_enum,
        default_value = "table",
        env = "MILESTONES_OUTPUT"
    )]
    output: Format,

    /// When to colour tables: `auto` colours a terminal unless NO_COLOR is
    /// set.
    #[arg(long, global = true, value_enum, default_value = "auto")]
    color: ColorWhen,

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
        /// Also seed a demo sales org in tenant --demo-tenant (reusing it if
        /// it exists) and keep generating activity, as `milestones demo`
        /// does. Needs all three services.
        #[arg(long)]
        demo: bool,
        /// The tenant the demo lives in.
        #[arg(long, default_value = "demo", requires = "demo")]
        demo_tenant: String,
    },
    /// Applies pending database migrations and exits.
    Migrate {
        /// Which services' databases to migrate, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "goal,progress,recognition")]
        services: Vec<String>,
    },
    /// Mints a development bearer token signed with the configured HS256
    /// secret, and prints it. Refused when the suite verifies RS256 or
    /// ES256 tokens (always in production): those come from the identity
    /// provider.
    Token {
        /// The tenant the token acts for.
        #[arg(long, default_value = "demo")]
        tenant: String,
        /// The caller's subject (`sub` claim); a member with this subject
        /// acts as themselves (e.g. gives kudos).
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
    /// Seeds a running suite with a realistic sales org (three regions, two
    /// dozen reps, a quarter of deals and calls, milestones with
    /// checkpoints, badges and rules), then keeps generating activity so
    /// leaderboards move and recognitions arrive.
    Demo(demo::DemoArgs),
    /// Creates and lists teams.
    #[command(visible_alias = "team")]
    Teams {
        #[command(flatten)]
        conn: ClientArgs,
        #[command(subcommand)]
        action: org::TeamAction,
    },
    /// Creates and lists members (the people of the sales org).
    #[command(visible_alias = "member")]
    Members {
        #[command(flatten)]
        conn: ClientArgs,
        #[command(subcommand)]
        action: org::MemberAction,
    },
    /// Puts members in teams and lists who is where.
    #[command(visible_alias = "membership")]
    Memberships {
        #[command(flatten)]
        conn: ClientArgs,
        #[command(subcommand)]
        action: org::MembershipAction,
    },
    /// Creates and lists metrics (what is measured).
    #[command(visible_alias = "metric")]
    Metrics {
        #[command(flatten)]
        conn: ClientArgs,
        #[command(subcommand)]
        action: org::MetricAction,
    },
    /// Creates, lists and activates milestones.
    #[command(visible_alias = "milestone")]
    Milestones {
        #[command(flatten)]
        conn: ClientArgs,
        #[command(subcommand)]
        action: org::MilestoneAction,
    },
    /// Records an activity (a deal, a call) and prints it with who was
    /// credited. Needs an admin token or an integration (service) token.
    Record {
        #[command(flatten)]
        conn: ClientArgs,
        #[command(flatten)]
        args: activity::RecordArgs,
    },
    /// Shows a milestone's progress: value, target, attainment, status,
    /// the value expected by today and the projected value at the end.
    Progress {
        #[command(flatten)]
        conn: ClientArgs,
        #[command(flatten)]
        args: activity::ProgressArgs,
    },
    /// Ranks members on a metric over a period, with progress bars coloured
    /// by pace (green on pace, yellow from 80 % of it, red below).
    Leaderboard {
        #[command(flatten)]
        conn: ClientArgs,
        #[command(flatten)]
        args: activity::LeaderboardArgs,
    },
    /// Prints progress updates and recognitions as they happen.
    Watch {
        #[command(flatten)]
        conn: ClientArgs,
        #[command(flatten)]
        args: live::WatchArgs,
    },
    /// Thanks a member publicly (or privately) with kudos.
    Kudos {
        #[command(flatten)]
        conn: ClientArgs,
        #[command(flatten)]
        args: live::KudosArgs,
    },
    /// Lists recent recognitions (badges and points awarded by the rules).
    #[command(visible_alias = "recognition")]
    Recognitions {
        #[command(flatten)]
        conn: ClientArgs,
        #[command(flatten)]
        args: live::RecognitionsArgs,
    },
}

/// The async runtime of every command, servers and clients alike.
///
/// Without tokio's LIFO slot: the task a task wakes is queued like any
/// other instead of running next. A group commit answers its calls all at
/// once; with the slot, each answer's HTTP/2 connection task ran (and wrote
/// to the socket, waking the peer) before the next answer was ready, so 16
/// answers took 16 writes, and the client's 16 next calls 16 more. Queued,
/// they go out together. Measured on PostgreSQL (2026-11-30, five
/// alternating pairs of 20,000 calls at 16 clients): the server's system
/// calls per call 8.1 -> 3.1, its CPU per call 46.5-51 -> 37.5-39 µs, and
/// the median throughput 9.4k -> 10.4k calls/s (single pairs vary with the
/// machine). The setting is unstable in tokio, so `.cargo/config.toml`
/// passes `--cfg tokio_unstable`; a build without it keeps the slot.
fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    #[cfg(tokio_unstable)]
    builder.disable_lifo_slot();
    builder.enable_all().build()
}

/// Parses the command line, runs the command, and returns the exit code
/// (see the table in `milestones --help`).
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    cli.color.apply();
    let format = cli.output;
    let settings = match config::load(cli.config.as_deref()) {
        Ok(s) => s,
        Err(e) => {
            anstream::eprintln!("{e}");
            return ExitCode::from(64);
        }
    };
    let runtime = match runtime() {
        Ok(r) => r,
        Err(e) => {
            anstream::eprintln!("cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command, settings, format)) {
        Ok(()) => ExitCode::SUCCESS,
        // `milestones ... | head` closing the pipe early is not a failure.
        Err(e)
            if e.chain().any(|c| {
                c.downcast_ref::<std::io::Error>()
                    .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            }) =>
        {
            ExitCode::SUCCESS
        }
        Err(e) => {
            let (exit, detail) = errors::classify(&e);
            if format == Format::Json {
                anstream::eprintln!("{}", serde_json::json!({ "error": detail }));
            } else {
                anstream::eprintln!("{} {e:#}", output::paint(output::RED.bold(), "error:"));
            }
            ExitCode::from(exit)
        }
    }
}

async fn run(command: Command, mut settings: Settings, format: Format) -> anyhow::Result<()> {
    match command {
        Command::Server {
            services,
            listen,
            demo,
            demo_tenant,
        } => {
            let telemetry = telemetry::start(&settings.log, &settings.telemetry)?;
            if let Some(addr) = listen {
                settings.listen_addr = addr;
            }
            if demo && suite::SERVICES.iter().any(|s| !services.iter().any(|x| x == s)) {
                return Err(errors::refuse(
                    "--demo",
                    "needs all three services: drop --services, or run `milestones demo --endpoint` against a full suite",
                ));
            }
            let listener = tokio::net::TcpListener::bind(&settings.listen_addr)
                .await
                .map_err(|e| {
                    anyhow::anyhow!(
                        "cannot listen on {}: {e}; is another server running? choose another address with --listen",
                        settings.listen_addr
                    )
                })?;
            let local = listener.local_addr()?;
            let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
            let shutdown = async move {
                shutdown_signal().await;
                let _ = stop_tx.send(true);
            };
            if demo {
                anstream::eprintln!(
                    "Sales Milestones is listening on {local}; seeding the demo in tenant {demo_tenant:?}...\nIn another terminal, try:\n  milestones leaderboard --metric \"New ARR\"\n  milestones watch"
                );
                let args = demo::DemoArgs::in_process(format!("http://{local}"), demo_tenant);
                tokio::spawn(demo::run_until(args, settings.clone(), stop_rx));
            } else {
                anstream::eprintln!(
                    "Sales Milestones is listening on {local}.\nGet a development token with:\n  export MILESTONES_TOKEN=$(milestones token --tenant demo --subject you --role admin)\nthen try: milestones teams list"
                );
            }
            let served = suite::run(settings, &services, listener, shutdown).await;
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
                        anstream::eprintln!("goal: migrations applied");
                    }
                    "progress" => {
                        let url = settings.progress.database().url_for("progress", &settings.data_dir);
                        let db = milestones_runtime::db::Db::connect(&url, 1).await?;
                        milestones_progress::migrate(&db).await?;
                        anstream::eprintln!("progress: migrations applied");
                    }
                    "recognition" => {
                        let url = settings
                            .recognition
                            .database()
                            .url_for("recognition", &settings.data_dir);
                        let db = milestones_runtime::db::Db::connect(&url, 1).await?;
                        milestones_recognition::migrate(&db).await?;
                        anstream::eprintln!("recognition: migrations applied");
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
        Command::Demo(args) => demo::run(args, settings).await,
        Command::Token {
            tenant,
            subject,
            role,
            ttl_hours,
        } => {
            let roles = role
                .iter()
                .map(|r| {
                    Role::parse(r).ok_or_else(|| {
                        errors::refuse(
                            "--role",
                            format!("{r:?} is not a role: use admin, manager, rep or service"),
                        )
                    })
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            client::refuse_unless_minted_tokens_verify(&settings, "auth.algorithm")?;
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
            org::teams(&mut client::connect(&conn, &settings).await?, action, format).await
        }
        Command::Members { conn, action } => {
            org::members(&mut client::connect(&conn, &settings).await?, action, format).await
        }
        Command::Memberships { conn, action } => {
            org::memberships(&mut client::connect(&conn, &settings).await?, action, format).await
        }
        Command::Metrics { conn, action } => {
            org::metrics(&mut client::connect(&conn, &settings).await?, action, format).await
        }
        Command::Milestones { conn, action } => {
            org::milestones(&mut client::connect(&conn, &settings).await?, action, format).await
        }
        Command::Record { conn, args } => {
            activity::record(&mut client::connect(&conn, &settings).await?, args, format).await
        }
        Command::Progress { conn, args } => {
            activity::progress(&mut client::connect(&conn, &settings).await?, args, format).await
        }
        Command::Leaderboard { conn, args } => {
            activity::leaderboard(&mut client::connect(&conn, &settings).await?, args, format).await
        }
        Command::Watch { conn, args } => live::watch(&mut client::connect(&conn, &settings).await?, args, format).await,
        Command::Kudos { conn: c, args } => {
            let mut connection = client::connect(&c, &settings).await?;
            live::kudos(&mut connection, &c, &settings, args, format).await
        }
        Command::Recognitions { conn, args } => {
            live::recognitions(&mut client::connect(&conn, &settings).await?, args, format).await
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    /// The command line is well formed (no clashing flags) and every flag
    /// and subcommand has a help text.
    #[test]
    fn every_flag_is_explained() {
        let cmd = Cli::command();
        cmd.clone().debug_assert();
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for arg in cmd.get_arguments() {
                let id = arg.get_id().as_str();
                if id == "help" || id == "version" {
                    continue;
                }
                if arg.get_help().is_none() {
                    missing.push(format!("{path} --{id}"));
                }
            }
            for sub in cmd.get_subcommands() {
                if sub.get_name() == "help" {
                    continue;
                }
                if sub.get_about().is_none() {
                    missing.push(format!("{path} {}", sub.get_name()));
                }
                walk(sub, &format!("{path} {}", sub.get_name()), missing);
            }
        }
        let mut missing = Vec::new();
        walk(&cmd, "milestones", &mut missing);
        assert!(missing.is_empty(), "without help: {missing:?}");
    }

    /// `.cargo/config.toml` reaches the build: without it the runtime
    /// silently keeps tokio's LIFO slot (and answers a batch one write at a
    /// time).
    #[test]
    fn the_runtime_is_built_without_the_lifo_slot() {
        #[cfg(not(tokio_unstable))]
        panic!("built without --cfg tokio_unstable (is RUSTFLAGS set? it replaces .cargo/config.toml)");
        #[cfg(tokio_unstable)]
        assert!(runtime().is_ok());
    }
}
