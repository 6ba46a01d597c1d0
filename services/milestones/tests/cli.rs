//! The command line against a real suite: each test starts the
//! `milestones` binary as a server on a free port with its own data
//! directory, runs client commands as separate processes and checks what
//! they print and how they exit.

use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Datelike;
use serde_json::Value;

#[path = "../../../tests/suite/test_ca.rs"]
mod test_ca;
use test_ca::TestCa;

const BIN: &str = env!("CARGO_BIN_EXE_milestones");

/// A command without any MILESTONES* variable of the caller's shell, so a
/// developer's token or endpoint cannot leak into a test.
fn clean_command() -> Command {
    let mut cmd = Command::new(BIN);
    for (key, _) in std::env::vars() {
        if key.starts_with("MILESTONES") || key == "NO_COLOR" || key.starts_with("CLICOLOR") {
            cmd.env_remove(key);
        }
    }
    cmd
}

/// What a command did.
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    /// Runs `cmd` to its end.
    fn of(cmd: &mut Command) -> Run {
        let out = cmd.output().expect("run the cli");
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    #[track_caller]
    fn ok(self) -> Run {
        assert_eq!(self.code, 0, "command failed: {}\n{}", self.stderr, self.stdout);
        self
    }

    #[track_caller]
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.stdout))
    }

    /// The first word of the output: the resource name a create prints.
    fn name(&self) -> String {
        self.stdout.split_whitespace().next().unwrap_or_default().to_string()
    }
}

/// A path under the temporary directory no other test (or run) uses.
fn scratch_path(prefix: &str) -> PathBuf {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    std::env::temp_dir().join(format!(
        "{prefix}-{}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed),
        chrono::Utc::now().timestamp_micros()
    ))
}

/// A suite server in a child process, killed when dropped.
struct Server {
    child: Child,
    endpoint: String,
    data_dir: PathBuf,
    log: Arc<Mutex<String>>,
    /// Variables every client command of this server gets (TLS files).
    client_env: Vec<(&'static str, PathBuf)>,
}

impl Server {
    fn start() -> Server {
        Server::start_with("http", &[], Vec::new())
    }

    /// A server with `server_env` on top of the test's settings, reached
    /// at `scheme`://, its client commands given `client_env`.
    fn start_with(scheme: &str, server_env: &[(&str, &PathBuf)], client_env: Vec<(&'static str, PathBuf)>) -> Server {
        let data_dir = scratch_path("milestones-cli-test");
        let mut child = clean_command()
            .args(["server", "--listen", "127.0.0.1:0"])
            .env("MILESTONES__DATA_DIR", &data_dir)
            .env("MILESTONES__LOG__FILTER", "warn")
            .env("MILESTONES__GRPC__FEED_POLL_MS", "100")
            .env("MILESTONES__GRPC__SHUTDOWN_GRACE_SECS", "1")
            .envs(server_env.iter().map(|(k, v)| (*k, v.as_os_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the server");
        let stderr = child.stderr.take().expect("server stderr");
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel();
        let sink = log.clone();
        // Keeps reading so the server never blocks on a full pipe, and
        // passes on the address it listens on.
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(rest) = line.split("listening on ").nth(1) {
                    let addr = rest.split_whitespace().next().unwrap_or_default();
                    let _ = tx.send(addr.trim_end_matches(['.', ';']).to_string());
                }
                if let Ok(mut l) = sink.lock() {
                    l.push_str(&line);
                    l.push('\n');
                }
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(addr) => addr,
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "the server did not say where it listens: {}",
                    log.lock().map(|l| l.clone()).unwrap_or_default()
                );
            }
        };
        let server = Server {
            child,
            endpoint: format!("{scheme}://{addr}"),
            data_dir,
            log,
            client_env,
        };
        // Listening is not serving: wait for the services to answer.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let r = server.cli(&["teams", "list"]);
            if r.code == 0 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the server never answered: {}\n{}",
                r.stderr,
                server.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        server
    }

    fn log(&self) -> String {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// A client command against this server, in tenant `demo`, without
    /// colours.
    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = clean_command();
        cmd.args(args)
            .env("MILESTONES_ENDPOINT", &self.endpoint)
            .envs(self.client_env.iter().map(|(k, v)| (*k, v.as_os_str())))
            .env("NO_COLOR", "1")
            .stdin(Stdio::null());
        cmd
    }

    fn cli(&self, args: &[&str]) -> Run {
        Run::of(&mut self.command(args))
    }

    /// Runs `args` until it succeeds and `accept` likes the result, for up
    /// to 20 s (for what the services learn from each other's feeds).
    fn eventually(&self, args: &[&str], accept: impl Fn(&Run) -> bool) -> Run {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let r = self.cli(args);
            if r.code == 0 && accept(&r) {
                return r;
            }
            assert!(
                Instant::now() < deadline,
                "{args:?} never gave what was expected: {}\n{}",
                r.stderr,
                r.stdout
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}

/// The current fiscal quarter of a tenant with default settings.
fn this_quarter() -> String {
    let today = chrono::Utc::now().date_naive();
    format!("FY{}-Q{}", today.year(), (today.month() - 1) / 3 + 1)
}

/// A small org: team Sales with reps Ada, Bob and Cy (token subjects ada,
/// bob, cy), metric "New ARR" in EUR, and a EUR 10,000 milestone each.
/// Returns the milestone names, Ada's first.
fn small_org(s: &Server) -> Vec<String> {
    s.cli(&["teams", "create", "Sales"]).ok();
    s.cli(&[
        "metrics",
        "create",
        "New ARR",
        "--unit",
        "currency",
        "--currency",
        "EUR",
    ])
    .ok();
    let mut milestones = Vec::new();
    for (name, subject) in [("Ada Lovelace", "ada"), ("Bob Jones", "bob"), ("Cy Young", "cy")] {
        let email = format!("{subject}@example.com");
        s.cli(&[
            "members",
            "create",
            name,
            "--email",
            &email,
            "--subject",
            subject,
            "--team",
            "Sales",
        ])
        .ok();
        let first = name.split(' ').next().unwrap_or_default();
        let m = s
            .cli(&[
                "milestones",
                "create",
                &format!("{first}'s goal"),
                "--owner",
                name,
                "--metric",
                "New ARR",
                "--target",
                "1000000",
                "--checkpoint",
                "Half-way=50%",
                "--stretch",
                "1200000",
                "--activate",
            ])
            .ok();
        milestones.push(m.name());
    }
    milestones
}

/// Teams, members, memberships, metrics and milestones can be created with
/// display names for references, and listed as tables and as JSON.
#[test]
fn org_commands_create_and_list() {
    let s = Server::start();
    let sales = s.cli(&["teams", "create", "Sales"]).ok().name();
    assert!(sales.starts_with("teams/"), "{sales}");
    // The singular alias, and a parent given by its display name.
    let emea = s.cli(&["team", "create", "EMEA", "--parent", "sales"]).ok().name();
    let teams = s.cli(&["-o", "json", "teams", "list"]).ok().json();
    let parents: Vec<(&str, &str)> = teams
        .as_array()
        .expect("a list")
        .iter()
        .map(|t| {
            (
                t["display_name"].as_str().unwrap_or(""),
                t["parent"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(parents, vec![("Sales", ""), ("EMEA", sales.as_str())]);
    let table = s.cli(&["teams", "list", "--parent", "Sales"]).ok().stdout;
    assert!(table.contains(&emea) && table.contains("Sales"), "{table}");

    let ada = s
        .cli(&[
            "members",
            "create",
            "Ada Lovelace",
            "--email",
            "ada@example.com",
            "--subject",
            "ada",
            "--team",
            "EMEA",
        ])
        .ok()
        .name();
    assert!(ada.starts_with("members/"), "{ada}");
    s.cli(&[
        "member",
        "create",
        "Bob Jones",
        "--email",
        "bob@example.com",
        "--role",
        "manager",
    ])
    .ok();
    let joined = s
        .cli(&[
            "-o",
            "json",
            "memberships",
            "create",
            "--member",
            "bob@example.com",
            "--team",
            &emea,
            "--since",
            "2026-01-05",
        ])
        .ok()
        .json();
    assert_eq!(joined["start_date"], "2026-01-05");
    let in_emea = s
        .cli(&["-o", "json", "memberships", "list", "--team", "EMEA"])
        .ok()
        .json();
    assert_eq!(in_emea.as_array().map(Vec::len), Some(2), "{in_emea}");
    let members = s
        .cli(&["members", "list", "--team", "EMEA", "--role", "manager"])
        .ok()
        .stdout;
    assert!(
        members.contains("Bob Jones") && members.contains("MANAGER"),
        "{members}"
    );
    assert!(!members.contains("Ada Lovelace"), "only managers: {members}");

    let arr = s
        .cli(&[
            "-o",
            "json",
            "metric",
            "create",
            "New ARR",
            "--unit",
            "currency",
            "--currency",
            "eur",
        ])
        .ok()
        .json();
    assert_eq!(arr["unit"], "METRIC_UNIT_CURRENCY");
    assert_eq!(arr["currency_code"], "EUR");
    s.cli(&["metrics", "create", "Calls"]).ok();
    let metrics = s.cli(&["metrics", "list"]).ok().stdout;
    assert!(
        metrics.contains("CURRENCY (EUR)") && metrics.contains("Calls"),
        "{metrics}"
    );

    let goal = s
        .cli(&[
            "milestones",
            "create",
            "Ada's quarter",
            "--owner",
            "Ada Lovelace",
            "--metric",
            "New ARR",
            "--target",
            "1000000",
            "--stretch",
            "1200000",
            "--checkpoint",
            "Half-way=50%",
            "--activate",
        ])
        .ok()
        .name();
    assert!(goal.starts_with("milestones/"), "{goal}");
    let listed = s
        .cli(&["-o", "json", "milestones", "list", "--owner", "Ada Lovelace"])
        .ok()
        .json();
    let m = &listed[0];
    assert_eq!(listed.as_array().map(Vec::len), Some(1));
    assert_eq!(m["name"], goal.as_str());
    assert_eq!(m["state"], "MILESTONE_STATE_ACTIVE");
    assert_eq!(m["fiscal_period"], this_quarter().as_str(), "defaults to this quarter");
    assert_eq!(m["checkpoints"][0]["target"], 500_000);
    assert_eq!(m["checkpoints"][0]["display_name"], "Half-way");
    assert_eq!(m["stretch_target"], 1_200_000);
    let table = s.cli(&["milestones", "list", "--period", &this_quarter()]).ok().stdout;
    assert!(
        table.contains("Ada's quarter") && table.contains("EUR 10,000.00") && table.contains("ACTIVE"),
        "{table}"
    );
}

/// Recorded activities show up in progress (value, target, attainment,
/// pace, forecast and status agree) and in the leaderboard, in order, as a
/// table with bars and as JSON; a repeated request id records nothing twice.
#[test]
fn record_progress_and_leaderboard() {
    let s = Server::start();
    let goals = small_org(&s);
    // A retry repeats the request exactly, including when it happened
    // (`--at` defaults to now, to the second).
    let at = chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string();
    let recorded = s
        .cli(&[
            "record",
            "Ada Lovelace",
            "New ARR",
            "600000",
            "--request-id",
            "deal-1",
            "--reference",
            "opp-1",
            "--at",
            &at,
        ])
        .ok();
    assert!(recorded.name().starts_with("activities/"), "{}", recorded.stdout);
    assert!(recorded.stdout.contains("EUR 6,000.00"), "{}", recorded.stdout);
    // The same request id again returns the same activity.
    let again = s
        .cli(&[
            "record",
            "Ada Lovelace",
            "New ARR",
            "600000",
            "--request-id",
            "deal-1",
            "--reference",
            "opp-1",
            "--at",
            &at,
        ])
        .ok();
    assert_eq!(again.name(), recorded.name());
    let bob = s
        .cli(&[
            "-o",
            "json",
            "record",
            "bob@example.com",
            "New ARR",
            "250000",
            "--source",
            "crm",
        ])
        .ok()
        .json();
    assert_eq!(bob["credited_amounts"][0]["amount"], 250_000);
    assert_eq!(bob["source"], "crm");

    let p = s.cli(&["-o", "json", "progress", "Ada's goal"]).ok().json();
    assert_eq!(p["milestone"], goals[0].as_str());
    assert_eq!(
        (p["value"].as_i64(), p["target"].as_i64()),
        (Some(600_000), Some(1_000_000))
    );
    assert_eq!(p["attainment_basis_points"], 6_000);
    let (elapsed, total) = (
        p["elapsed_days"].as_i64().unwrap_or(0),
        p["total_days"].as_i64().unwrap_or(0),
    );
    assert!(elapsed >= 1 && total >= elapsed, "{p}");
    let expected = 1_000_000 * elapsed / total;
    assert_eq!(p["expected_value"], expected);
    assert_eq!(p["projected_value"], 600_000 * total / elapsed);
    let status = if 600_000 >= expected {
        "PROGRESS_STATUS_ON_TRACK"
    } else if 600_000 * 5 >= expected * 4 {
        "PROGRESS_STATUS_AT_RISK"
    } else {
        "PROGRESS_STATUS_OFF_TRACK"
    };
    assert_eq!(p["status"], status);
    assert_eq!(p["checkpoints"][0]["reached"], true);
    let table = s.cli(&["progress", &goals[0]]).ok().stdout;
    for wanted in [
        "EUR 6,000.00",
        "EUR 10,000.00",
        "60.0%",
        "✓ Half-way: EUR 5,000.00",
        "EUR 12,000.00",
    ] {
        assert!(table.contains(wanted), "{wanted:?} missing from:\n{table}");
    }
    let mine = s.cli(&["-o", "json", "progress", "--owner", "Bob Jones"]).ok().json();
    assert_eq!(mine[0]["value"], 250_000);

    let board = s.cli(&["-o", "json", "leaderboard", "--metric", "New ARR"]).ok().json();
    let rows: Vec<(i64, &str, i64, i64)> = board["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .map(|e| {
            (
                e["rank"].as_i64().unwrap_or(0),
                e["display_name"].as_str().unwrap_or(""),
                e["value"].as_i64().unwrap_or(-1),
                e["attainment_basis_points"].as_i64().unwrap_or(-1),
            )
        })
        .collect();
    assert_eq!(
        rows,
        vec![
            (1, "Ada Lovelace", 600_000, 6_000),
            (2, "Bob Jones", 250_000, 2_500),
            (3, "Cy Young", 0, 0)
        ]
    );
    assert_eq!(board["fiscal_period"], this_quarter().as_str());
    assert_eq!(board["total_size"], 3);

    let table = s
        .cli(&["leaderboard", "--metric", "New ARR", "--team", "Sales", "--by", "value"])
        .ok()
        .stdout;
    let order: Vec<usize> = ["Ada Lovelace", "Bob Jones", "Cy Young"]
        .iter()
        .map(|n| table.find(n).unwrap_or_else(|| panic!("{n} missing:\n{table}")))
        .collect();
    assert!(order.windows(2).all(|w| w[0] < w[1]), "{table}");
    assert!(
        table.contains("██████████████▍") && table.contains("60.0%"),
        "a 60 % bar:\n{table}"
    );
    assert!(!table.contains('\u{1b}'), "NO_COLOR means no escapes:\n{table}");
    let coloured = s
        .command(&["leaderboard", "--metric", "New ARR", "--limit", "1"])
        .env_remove("NO_COLOR")
        .env("CLICOLOR_FORCE", "1")
        .output()
        .expect("run");
    let coloured = String::from_utf8_lossy(&coloured.stdout);
    assert!(coloured.contains("\u{1b}["), "CLICOLOR_FORCE colours:\n{coloured}");
    assert!(!coloured.contains("Bob Jones"), "--limit 1:\n{coloured}");
}

/// Bad input is refused field by field with exit code 65 (as text, and as
/// JSON on stderr with --output json); unknown names, unreachable servers
/// and bad flags have their own messages and codes.
#[test]
fn errors_say_what_to_fix() {
    let s = Server::start();
    small_org(&s);
    let bad = s.cli(&[
        "milestones",
        "create",
        "Q1",
        "--owner",
        "Sales",
        "--metric",
        "New ARR",
        "--period",
        "FY2027-Q5",
        "--target",
        "0",
    ]);
    assert_eq!(bad.code, 65, "{}", bad.stderr);
    assert!(
        bad.stderr.contains("InvalidArgument: fix these fields:"),
        "{}",
        bad.stderr
    );
    assert!(
        bad.stderr
            .contains("  milestone.fiscal_period: \"FY2027-Q5\" is not a fiscal period"),
        "{}",
        bad.stderr
    );
    assert!(
        bad.stderr
            .contains("  milestone.target: must be greater than zero (got 0)"),
        "{}",
        bad.stderr
    );
    assert!(bad.stdout.is_empty());

    let json = s.cli(&["-o", "json", "record", "Ada Lovelace", "New ARR", "0"]);
    assert_eq!(json.code, 65);
    let error: Value = serde_json::from_str(json.stderr.trim()).expect("JSON on stderr");
    assert_eq!(error["error"]["code"], "INVALID_ARGUMENT");
    assert_eq!(error["error"]["field_violations"][0]["field"], "value");

    let unknown = s.cli(&["record", "Nobody", "New ARR", "100"]);
    assert_eq!(unknown.code, 65);
    assert!(
        unknown.stderr.contains("member: no member is named \"Nobody\""),
        "{}",
        unknown.stderr
    );
    let at = s.cli(&["record", "Ada Lovelace", "New ARR", "100", "--at", "yesterday"]);
    assert_eq!(at.code, 65);
    assert!(
        at.stderr.contains("--at: \"yesterday\" is neither RFC 3339"),
        "{}",
        at.stderr
    );
    let draft = s
        .cli(&[
            "milestones",
            "create",
            "Draft",
            "--owner",
            "Cy Young",
            "--metric",
            "New ARR",
            "--target",
            "5",
        ])
        .ok();
    let not_tracked = s.cli(&["progress", &draft.name()]);
    assert_eq!(not_tracked.code, 65);
    assert!(
        not_tracked.stderr.contains("milestones activate"),
        "{}",
        not_tracked.stderr
    );

    let down = s.cli(&["teams", "list", "--endpoint", "http://127.0.0.1:9"]);
    assert_eq!(down.code, 69, "{}", down.stderr);
    assert!(
        down.stderr.contains("is `milestones server` running?"),
        "{}",
        down.stderr
    );
    let refused = s.cli(&["teams", "list", "--token", "not-a-jwt"]);
    assert_eq!(refused.code, 77, "{}", refused.stderr);
    assert!(refused.stderr.contains("milestones token"), "{}", refused.stderr);
    let usage = s.cli(&["leaderboard"]);
    assert_eq!(usage.code, 2);
    assert!(usage.stderr.contains("--metric"), "{}", usage.stderr);
}

/// Kudos are given as a member (`--from` mints their token) and show up
/// with giver, recipient and message; without a member behind the token
/// the error says to use --from.
#[test]
fn kudos_from_a_member() {
    let s = Server::start();
    small_org(&s);
    let given = s
        .cli(&["kudos", "Ada Lovelace", "--from", "bob", "-m", "Great demo today"])
        .ok();
    assert!(given.name().starts_with("kudos/"), "{}", given.stdout);
    assert!(
        given.stdout.contains("Bob Jones → Ada Lovelace: Great demo today"),
        "{}",
        given.stdout
    );
    let json = s
        .cli(&[
            "-o",
            "json",
            "kudos",
            "cy@example.com",
            "--from",
            "Ada Lovelace",
            "-m",
            "Thanks!",
            "--visibility",
            "team",
        ])
        .ok()
        .json();
    assert_eq!(json["message"], "Thanks!");
    assert_eq!(json["visibility"], "VISIBILITY_TEAM");
    let ada = s.cli(&["-o", "json", "members", "list"]).ok().json();
    let ada_name = ada
        .as_array()
        .and_then(|a| a.iter().find(|m| m["display_name"] == "Ada Lovelace"))
        .map(|m| m["name"].clone())
        .expect("Ada listed");
    assert_eq!(json["giver"], ada_name);

    let anonymous = s.cli(&["kudos", "Ada Lovelace", "-m", "hi"]);
    assert_eq!(anonymous.code, 77, "{}", anonymous.stderr);
    assert!(anonymous.stderr.contains("pass --from NAME"), "{}", anonymous.stderr);
}

/// `watch` prints a member's progress and the kudos feed as they happen,
/// one JSON document per line, and stops after --limit updates.
#[test]
fn watch_prints_live_updates() {
    let s = Server::start();
    small_org(&s);
    // Let progress and recognition know the org before watching.
    s.cli(&["record", "Bob Jones", "New ARR", "1"]).ok();
    s.cli(&["kudos", "Bob Jones", "--from", "ada", "-m", "warm-up"]).ok();
    let mut watch = s
        .command(&[
            "-o",
            "json",
            "watch",
            "--member",
            "Ada Lovelace",
            "--recognitions",
            "--limit",
            "2",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start watch");
    let mut stderr = BufReader::new(watch.stderr.take().expect("stderr"));
    let mut first = String::new();
    stderr.read_line(&mut first).expect("watch says it is watching");
    assert!(first.contains("watching"), "{first}");
    s.cli(&["record", "Ada Lovelace", "New ARR", "700000"]).ok();
    s.cli(&["kudos", "Ada Lovelace", "--from", "cy", "-m", "Way to go"])
        .ok();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = watch.try_wait().expect("poll watch") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = watch.kill();
            panic!("watch did not stop after 2 updates");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut out = String::new();
    watch
        .stdout
        .take()
        .expect("stdout")
        .read_to_string(&mut out)
        .expect("read");
    let mut rest = String::new();
    let _ = stderr.read_to_string(&mut rest);
    assert!(status.success(), "{rest}");
    let updates: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert_eq!(updates.len(), 2, "{out}");
    let progress = updates
        .iter()
        .find(|u| u["type"] == "progress")
        .expect("a progress update");
    assert_eq!(
        (progress["value"].as_i64(), progress["display_name"].as_str()),
        (Some(700_000), Some("Ada's goal"))
    );
    let kudos = updates.iter().find(|u| u["type"] == "kudos").expect("the kudos");
    assert_eq!(
        kudos["message"], "Way to go",
        "the warm-up kudos before the watch is not replayed"
    );
}

/// The demo seeds a sales org with a quarter of history (two dozen reps
/// ranked on New ARR, recognitions awarded), generates live activity for
/// the time asked, and can be run again on the same data.
#[test]
fn demo_seeds_a_sales_org() {
    let s = Server::start();
    let started = Instant::now();
    let demo = s
        .cli(&[
            "demo",
            "--endpoint",
            &s.endpoint,
            "--duration-secs",
            "3",
            "--interval-ms",
            "200",
        ])
        .ok();
    assert!(
        demo.stdout
            .contains("demo ready: tenant \"demo\": 4 teams, 28 people, 52 milestones"),
        "{}",
        demo.stdout
    );
    assert!(
        demo.stdout.contains("★"),
        "a spotlight close within the 3 s:\n{}",
        demo.stdout
    );
    assert!(started.elapsed() < Duration::from_secs(120));

    let board = s.cli(&["-o", "json", "leaderboard", "--metric", "New ARR"]).ok().json();
    let entries = board["entries"].as_array().expect("entries");
    let reps: Vec<&Value> = entries
        .iter()
        .filter(|e| e["attainment_basis_points"].is_i64())
        .collect();
    assert_eq!(reps.len(), 24, "{board}");
    assert!(
        reps.iter().all(|e| e["value"].as_i64().unwrap_or(0) > 0),
        "every rep has sold: {board}"
    );
    let attainments: Vec<i64> = reps
        .iter()
        .filter_map(|e| e["attainment_basis_points"].as_i64())
        .collect();
    assert!(
        attainments.windows(2).all(|w| w[0] >= w[1]),
        "ranked by attainment: {attainments:?}"
    );
    assert!(
        attainments[0] > 2 * attainments[23],
        "a believable spread: {attainments:?}"
    );
    let calls = s
        .cli(&["-o", "json", "leaderboard", "--metric", "Calls", "--team", "EMEA"])
        .ok()
        .json();
    assert_eq!(calls["total_size"], 9, "eight reps and a manager in EMEA");
    assert!(calls["entries"][0]["value"].as_i64().unwrap_or(0) > 100, "{calls}");
    s.eventually(&["-o", "json", "recognitions", "--limit", "5"], |r| {
        r.json().as_array().is_some_and(|a| !a.is_empty())
    });

    // Again on the same data: nothing is duplicated.
    let again = s.cli(&["demo", "--endpoint", &s.endpoint, "--once"]).ok();
    assert!(again.stdout.contains("already there"), "{}", again.stdout);
    let teams = s.cli(&["-o", "json", "teams", "list"]).ok().json();
    assert_eq!(teams.as_array().map(Vec::len), Some(4));
    let people = s.cli(&["-o", "json", "members", "list"]).ok().json();
    assert_eq!(people.as_array().map(Vec::len), Some(28));
}

/// `--help` documents names, tokens and exit codes, and each command's
/// flags.
#[test]
fn help_explains_the_flags() {
    let top = clean_command().arg("--help").output().expect("help");
    let top = String::from_utf8_lossy(&top.stdout);
    for wanted in [
        "Exit codes:",
        "65 request refused",
        "--output",
        "leaderboard",
        "kudos",
        "watch",
    ] {
        assert!(top.contains(wanted), "{wanted:?} missing:\n{top}");
    }
    let record = clean_command().args(["record", "--help"]).output().expect("help");
    let record = String::from_utf8_lossy(&record.stdout);
    for wanted in [
        "--request-id",
        "idempotency key",
        "--at",
        "RFC 3339",
        "--split",
        "smallest unit",
    ] {
        assert!(record.contains(wanted), "{wanted:?} missing:\n{record}");
    }
}

/// `name` holding `pem` in `dir`.
fn pem_file(dir: &std::path::Path, name: &str, pem: &str) -> PathBuf {
    std::fs::create_dir_all(dir).expect("scratch dir");
    let path = dir.join(name);
    std::fs::write(&path, pem).expect("write pem");
    path
}

/// Against a server demanding mutual TLS, the CLI connects with --ca-cert
/// and a client certificate (here from the environment) and works as over
/// plaintext; without a client certificate, trusting another CA, or
/// without --ca-cert it exits UNAVAILABLE or with a usage error that names
/// what to pass.
#[test]
fn the_cli_reaches_a_server_over_mutual_tls() {
    let dir = scratch_path("milestones-cli-tls");
    let ca = TestCa::new("Milestones Test CA");
    let ca_file = pem_file(&dir, "ca.pem", &ca.pem());
    let (cert, key) = ca.issue("milestones", &["localhost", "127.0.0.1"]);
    let (server_cert, server_key) = (pem_file(&dir, "server.pem", &cert), pem_file(&dir, "server.key", &key));
    let (cert, key) = ca.issue("crm-connector", &["crm-connector"]);
    let (client_cert, client_key) = (pem_file(&dir, "client.pem", &cert), pem_file(&dir, "client.key", &key));
    let other_ca = pem_file(&dir, "other-ca.pem", &TestCa::new("Other CA").pem());
    let s = Server::start_with(
        "https",
        &[
            ("MILESTONES__TLS__CERT_FILE", &server_cert),
            ("MILESTONES__TLS__KEY_FILE", &server_key),
            ("MILESTONES__TLS__CLIENT_CA_FILE", &ca_file),
            ("MILESTONES__TLS__CA_FILE", &ca_file),
        ],
        vec![
            ("MILESTONES_CA_CERT", ca_file.clone()),
            ("MILESTONES_CLIENT_CERT", client_cert.clone()),
            ("MILESTONES_CLIENT_KEY", client_key.clone()),
        ],
    );
    assert!(s.endpoint.starts_with("https://"), "{}", s.endpoint);

    let sales = s.cli(&["teams", "create", "Sales"]).ok().name();
    assert!(sales.starts_with("teams/"), "{sales}");
    let listed = s.cli(&["teams", "list"]).ok();
    assert!(listed.stdout.contains("Sales"), "{}", listed.stdout);

    // Each refusal: a fresh command with only the flags under test.
    let bare = |args: &[&str]| {
        Run::of(
            clean_command()
                .args(args)
                .args(["--endpoint", &s.endpoint])
                .env("NO_COLOR", "1")
                .stdin(Stdio::null()),
        )
    };
    let ca_arg = ca_file.to_string_lossy().into_owned();
    let no_ca = bare(&["teams", "list"]);
    assert_ne!(no_ca.code, 0);
    assert!(no_ca.stderr.contains("--ca-cert"), "{}", no_ca.stderr);

    let missing = bare(&["teams", "list", "--ca-cert", "/nonexistent/ca.pem"]);
    assert_eq!(missing.code, 65, "{}", missing.stderr);
    assert_eq!(
        missing.stderr.matches("--ca-cert").count(),
        1,
        "names the flag once: {}",
        missing.stderr
    );
    assert!(
        missing.stderr.contains("cannot read /nonexistent/ca.pem"),
        "{}",
        missing.stderr
    );

    let no_client_cert = bare(&["teams", "list", "--ca-cert", &ca_arg]);
    assert_eq!(
        no_client_cert.code, 69,
        "UNAVAILABLE's exit code: {}",
        no_client_cert.stderr
    );
    assert!(
        (no_client_cert.stderr.contains("connection failed") || no_client_cert.stderr.contains("cannot reach"))
            && no_client_cert.stderr.contains("--client-cert"),
        "{}",
        no_client_cert.stderr
    );

    let other = other_ca.to_string_lossy().into_owned();
    let (cert_arg, key_arg) = (
        client_cert.to_string_lossy().into_owned(),
        client_key.to_string_lossy().into_owned(),
    );
    let wrong_ca = bare(&[
        "teams",
        "list",
        "--ca-cert",
        &other,
        "--client-cert",
        &cert_arg,
        "--client-key",
        &key_arg,
    ]);
    assert_eq!(wrong_ca.code, 69, "UNAVAILABLE's exit code: {}", wrong_ca.stderr);
    assert!(
        wrong_ca.stderr.contains("cannot reach") || wrong_ca.stderr.contains("connection failed"),
        "{}",
        wrong_ca.stderr
    );

    // The same files over plaintext are a mistake worth naming.
    let plaintext = Run::of(clean_command().args([
        "teams",
        "list",
        "--endpoint",
        "http://127.0.0.1:9",
        "--ca-cert",
        &ca_arg,
    ]));
    assert_eq!(plaintext.code, 65, "{}", plaintext.stderr);
    assert!(plaintext.stderr.contains("https://"), "{}", plaintext.stderr);
    drop(s);
    let _ = std::fs::remove_dir_all(&dir);
}

/// When the suite verifies RS256 or ES256 tokens, `milestones token` and
/// the client commands' own development token would only be refused by
/// the server: both refuse up front and say where tokens come from.
#[test]
fn no_development_token_is_minted_for_an_identity_provider() {
    // A complete RS256 configuration: the services' own token comes from
    // the provider too.
    let service_token = scratch_path("milestones-cli-service-token");
    std::fs::write(&service_token, "a.service.token").expect("write the service token");
    let with_rs256 = |args: &[&str]| {
        Run::of(
            clean_command()
                .args(args)
                .env("MILESTONES__AUTH__ALGORITHM", "RS256")
                .env("MILESTONES__AUTH__SERVICE_TOKEN_FILE", &service_token)
                .env(
                    "MILESTONES__AUTH__JWKS_URL",
                    "https://idp.example.com/.well-known/jwks.json",
                )
                .env("MILESTONES_ENDPOINT", "http://127.0.0.1:9")
                .env("NO_COLOR", "1"),
        )
    };
    let minted = with_rs256(&["token", "--tenant", "acme"]);
    assert_eq!(minted.code, 65, "{}\n{}", minted.stderr, minted.stdout);
    assert!(minted.stdout.is_empty(), "no token is printed: {}", minted.stdout);
    assert!(
        minted.stderr.contains("RS256") && minted.stderr.contains("identity provider"),
        "{}",
        minted.stderr
    );
    // Refused before connecting: the endpoint above listens nowhere.
    let listed = with_rs256(&["teams", "list"]);
    assert_eq!(listed.code, 65, "{}", listed.stderr);
    assert!(
        listed.stderr.contains("--token") && listed.stderr.contains("identity provider"),
        "{}",
        listed.stderr
    );
    // With HS256 (the default) the same command mints one.
    let dev = Run::of(clean_command().args(["token", "--tenant", "acme"])).ok();
    assert_eq!(dev.stdout.trim().split('.').count(), 3, "a JWT: {}", dev.stdout);
    let _ = std::fs::remove_file(&service_token);
}
