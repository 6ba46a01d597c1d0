#!/usr/bin/env bash
# Runs `milestones bench` against a fresh suite and prints its figures.
#
#   tests/bench/run.sh sqlite   [bench args...]
#   tests/bench/run.sh postgres [bench args...]   (PostgreSQL at 127.0.0.1:5432)
#
# Uses target/release/milestones (build it with
# `cargo build --release -p milestones`), or $MILESTONES_BIN. The server
# listens on 127.0.0.1:50062 with fresh databases and is stopped at the end.
# The bench is given the server's process id, so its unary and bulk lines
# also say how much CPU the server, the client and PostgreSQL spent per
# activity.
#
# On PostgreSQL it also runs the baseline the unary target is set against:
# pgbench, one-row insert transactions at 16 clients, for $PGBENCH_SECONDS
# seconds (4 by default; 0 skips it) before each of the bench's rounds at
# 16 clients, which ends with the median share of the baseline.
set -euo pipefail
backend=${1:?usage: tests/bench/run.sh sqlite|postgres [bench args...]}
shift
bin=${MILESTONES_BIN:-target/release/milestones}
[ -x "$bin" ] || { echo "missing: $bin (cargo build --release -p milestones)"; exit 1; }
work=$(mktemp -d)
server=
vacuum=
baseline=()
cleanup() {
  [ -n "$vacuum" ] && kill "$vacuum" 2>/dev/null || true
  [ -n "$server" ] && kill "$server" 2>/dev/null || true
  wait 2>/dev/null || true
  # Also when the bench failed: the baseline's database is the script's.
  if [ ${#baseline[@]} -gt 0 ]; then
    psql -h 127.0.0.1 -U postgres -qc "DROP DATABASE IF EXISTS bench_pgbench" >/dev/null 2>&1 || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT
if [ "$backend" = postgres ] && [ "${PGBENCH_SECONDS:-4}" != 0 ]; then
  command -v pgbench >/dev/null || { echo "missing: pgbench (PGBENCH_SECONDS=0 skips the baseline)"; exit 1; }
  psql -h 127.0.0.1 -U postgres -qc "DROP DATABASE IF EXISTS bench_pgbench" >/dev/null 2>&1
  psql -h 127.0.0.1 -U postgres -qc "CREATE DATABASE bench_pgbench" >/dev/null
  psql -h 127.0.0.1 -U postgres -d bench_pgbench -qc 'CREATE TABLE t (id bigserial PRIMARY KEY, v bigint)' >/dev/null
  echo 'INSERT INTO t (v) VALUES (1);' >"$work/insert.sql"
  baseline=(--baseline-command "pgbench -h 127.0.0.1 -U postgres -n -c 16 -j 2 -T ${PGBENCH_SECONDS:-4} -f $work/insert.sql bench_pgbench")
  echo "baseline: pgbench, one-row insert transactions at 16 clients, ${PGBENCH_SECONDS:-4} s before each round at 16 clients"
fi
export MILESTONES__DATA_DIR="$work" MILESTONES__LOG__FILTER=${MILESTONES__LOG__FILTER:-warn}
if [ "$backend" = postgres ]; then
  for db in bench_goal bench_progress bench_recognition; do
    psql -h 127.0.0.1 -U postgres -qc "DROP DATABASE IF EXISTS $db" >/dev/null
    psql -h 127.0.0.1 -U postgres -qc "CREATE DATABASE $db" >/dev/null
    url="postgres://postgres@127.0.0.1:5432/$db?sslmode=disable"
    case $db in
      bench_goal) export MILESTONES__GOAL__DATABASE_URL=$url ;;
      bench_progress) export MILESTONES__PROGRESS__DATABASE_URL=$url ;;
      bench_recognition) export MILESTONES__RECOGNITION__DATABASE_URL=$url ;;
    esac
  done
  export MILESTONES__PROGRESS__MAX_CONNECTIONS=16
  # Without autovacuum (this project's machines turn it off for CI) the
  # planner never learns the tables grew: do what autovacuum would.
  if [ "$(psql -h 127.0.0.1 -U postgres -Atc 'SHOW autovacuum')" = off ]; then
    echo "autovacuum is off on this server: running VACUUM ANALYZE every 20 s instead"
    ( while sleep 20; do
        psql -h 127.0.0.1 -U postgres -d bench_progress -qc "VACUUM ANALYZE" >/dev/null 2>&1 || true
        psql -h 127.0.0.1 -U postgres -d bench_goal -qc "ANALYZE" >/dev/null 2>&1 || true
      done ) &
    vacuum=$!
  fi
fi
"$bin" server --listen 127.0.0.1:50062 >"${SERVER_LOG:-$work/server.log}" 2>&1 &
server=$!
sleep 3
"$bin" bench --endpoint http://127.0.0.1:50062 --server-pid "$server" "${baseline[@]}" "$@"
