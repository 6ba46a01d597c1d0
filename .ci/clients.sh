#!/usr/bin/env bash
# Generated clients in other languages against a running suite:
#   - Python: grpcio-tools generates a client from proto/ in a fresh virtual
#     environment; clients/python/scenario.py runs the integrator scenario.
#   - Go: protoc with protoc-gen-go and protoc-gen-go-grpc, all from Debian's
#     packages (installed here when missing), generates a client; the Go
#     module proxy is not reachable, so clients/go/scenario.go builds in
#     GOPATH mode against Debian's Go sources in /usr/share/gocode.
# The server is the already built binary (MILESTONES_BIN, default
# target/debug/milestones: run `cargo build -p milestones` first) on a free
# loopback port with a temporary data folder. Fails, never skips, when
# something is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
start=$(date +%s)
step() { echo; echo "=== clients: $* ($(( $(date +%s) - start ))s)"; }

bin=${MILESTONES_BIN:-target/debug/milestones}
[ -x "$bin" ] || { echo "missing: $bin (build it first: cargo build -p milestones)"; exit 1; }
bin=$(cd "$(dirname "$bin")" && pwd)/$(basename "$bin")
command -v python3 >/dev/null || { echo "missing: python3"; exit 1; }

work=$(mktemp -d)
server_pid=
cleanup() {
  if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then
    kill "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

step "Python: virtual environment and generated client"
python3 -m venv "$work/venv"
py="$work/venv/bin/python"
"$py" -m pip install --quiet --disable-pip-version-check \
  grpcio grpcio-tools grpcio-status grpcio-health-checking googleapis-common-protos
"$py" -m pip list --disable-pip-version-check 2>/dev/null | grep -iE '^(grpcio|protobuf|googleapis)' || true
mkdir -p "$work/py"
# Only milestones/**: the vendored google/api and google/type protos are the
# upstream ones that googleapis-common-protos already ships as Python modules.
mapfile -t protos < <(cd proto && find milestones -name '*.proto' | sort)
"$py" -m grpc_tools.protoc -I proto --python_out="$work/py" --pyi_out="$work/py" \
  --grpc_python_out="$work/py" "${protos[@]}"

step "Go: toolchain and generated client"
go_debs=(golang-go protobuf-compiler libprotobuf-dev protoc-gen-go protoc-gen-go-grpc
  golang-google-grpc-dev golang-google-protobuf-dev golang-google-genproto-dev
  golang-github-golang-protobuf-1-5-dev)
missing=()
for deb in "${go_debs[@]}"; do
  dpkg-query -W -f='${Status}' "$deb" 2>/dev/null | grep -q 'install ok installed' || missing+=("$deb")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing from Debian: ${missing[*]}"
  command -v apt-get >/dev/null || { echo "missing: apt-get (needed for ${missing[*]})"; exit 1; }
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
for tool in go protoc protoc-gen-go protoc-gen-go-grpc; do
  command -v "$tool" >/dev/null || { echo "missing: $tool"; exit 1; }
done
echo "$(go version); $(protoc --version); $(protoc-gen-go --version); $(protoc-gen-go-grpc --version)"
gopath="$work/gopath"
mkdir -p "$gopath/src"
# The protos' go_package options put the code under
# github.com/sales-milestones/milestones/gen/go/...; google/type and
# google/api come from Debian's genproto.
(cd proto && protoc -I . -I /usr/include --go_out="$gopath/src" --go-grpc_out="$gopath/src" "${protos[@]}")
export GO111MODULE=off GOPATH="$gopath:/usr/share/gocode" GOPROXY=off GOFLAGS=
export GOCACHE=${GOCACHE:-$work/gocache}
go build -o "$work/go-scenario" "$root/clients/go/scenario.go"

step "server"
port=$("$py" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
export MILESTONES_ENDPOINT="127.0.0.1:$port"
mkdir -p "$work/data"
(
  cd "$work"
  export MILESTONES__DATA_DIR="$work/data" MILESTONES__LOG__FORMAT=json MILESTONES__LOG__FILTER=warn
  # Heartbeats every second so the scenario's cursor check is quick.
  export MILESTONES__GRPC__FEED_HEARTBEAT_MS=1000
  exec "$bin" server --listen "$MILESTONES_ENDPOINT"
) >"$work/server.log" 2>&1 &
server_pid=$!
server_log() { echo "--- server log (last 40 lines)"; tail -n 40 "$work/server.log" || true; }
trap 'server_log' ERR
"$py" - "$MILESTONES_ENDPOINT" "$server_pid" <<'EOF'
import os, sys, time
import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
endpoint, pid = sys.argv[1], int(sys.argv[2])
deadline = time.monotonic() + 60
while True:
    try:
        os.kill(pid, 0)
    except OSError:
        sys.exit("the server exited while starting")
    try:
        with grpc.insecure_channel(endpoint) as ch:
            r = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=1)
            if r.status == health_pb2.HealthCheckResponse.SERVING:
                print(f"serving on {endpoint}")
                break
    except grpc.RpcError:
        pass
    if time.monotonic() > deadline:
        sys.exit(f"the server did not become healthy on {endpoint} within 60 s")
    time.sleep(0.2)
EOF

step "Python scenario"
MILESTONES_TOKEN=$("$bin" token --tenant "py-$(date +%s%N)" --subject integrator --role admin) \
  PYTHONPATH="$work/py" "$py" clients/python/scenario.py

step "Go scenario"
MILESTONES_TOKEN=$("$bin" token --tenant "go-$(date +%s%N)" --subject integrator --role admin) \
  "$work/go-scenario"

step "done"
