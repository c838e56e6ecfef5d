#!/usr/bin/env bash
# End-to-end demo on one machine: a relay, an agent and a sample "on-premise" HTTP
# service, all on 127.0.0.1; then an on-premise connection created, tested and called
# through the reverse SSH tunnel with the REST API (envelope and streamed proxy).
# Run it with `make demo` (which installs the project first). Everything it creates
# lives in ./.demo (or $ONPREM_DEMO_DIR); every process it starts is stopped on exit.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DEMO_DIR=${ONPREM_DEMO_DIR:-$ROOT/.demo}
ONLINE_TIMEOUT_S=${ONPREM_DEMO_TIMEOUT_S:-20}
STEPS=14

if [ -x "$ROOT/.venv/bin/python" ]; then
    PY=$ROOT/.venv/bin/python
    export PATH="$ROOT/.venv/bin:$PATH"
else
    PY=$(command -v python3)
fi
for cmd in onprem-relay onprem-agent; do
    if ! command -v "$cmd" >/dev/null 2>&1; then
        echo "demo: '$cmd' not found: run 'make install' first (or use 'make demo')" >&2
        exit 1
    fi
done

step=0
say() {
    step=$((step + 1))
    printf '[%d/%d] %s\n' "$step" "$STEPS" "$*"
}

PIDS=()
RELAY_LOG=$DEMO_DIR/relay.log
AGENT_LOG=$DEMO_DIR/agent.log
SERVICE_LOG=$DEMO_DIR/service.log

show_logs() {
    local log
    for log in "$RELAY_LOG" "$AGENT_LOG" "$SERVICE_LOG"; do
        if [ -s "$log" ]; then
            echo "---- last lines of $log ----" >&2
            tail -n 25 "$log" >&2
        fi
    done
}

die() {
    echo "demo: FAILED at step $step: $*" >&2
    show_logs
    exit 1
}

cleanup() {
    local pid i
    # Newest first: the agent stops before the relay it is connected to.
    for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
        pid=${PIDS[i]}
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 1 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
    done
    for pid in "${PIDS[@]}"; do
        # Bounded: a process that ignored SIGTERM for 5 s gets SIGKILL.
        kill -9 "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Start a command in the background with its output in a log file.
start_bg() {
    local log=$1
    shift
    "$@" >"$log" 2>&1 &
    PIDS+=("$!")
    LAST_PID=$!
}

alive() { kill -0 "$1" 2>/dev/null; }

# died WHAT PID: fail with the exit code of a background process that has ended.
died() {
    local rc=0
    wait "$2" 2>/dev/null || rc=$?
    die "$1 exited with code $rc"
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() {
    local port=$1 pid=$2 what=$3
    for _ in $(seq 1 100); do
        port_open "$port" && return 0
        alive "$pid" || died "$what" "$pid"
        sleep 0.1
    done
    die "$what is not listening on 127.0.0.1:$port after 10 s"
}

# One JSON field from stdin: json_field KEY.
json_field() {
    "$PY" -c 'import json, sys; print(json.load(sys.stdin)[sys.argv[1]])' "$1"
}

# ---------------------------------------------------------------------------

if [ -e "$DEMO_DIR" ]; then
    if [ -f "$DEMO_DIR/.onprem-demo" ] || [ -z "$(ls -A "$DEMO_DIR")" ]; then
        rm -rf "$DEMO_DIR"
    else
        echo "demo: $DEMO_DIR exists and was not made by this script: remove it first" >&2
        exit 1
    fi
fi
mkdir -p "$DEMO_DIR"
touch "$DEMO_DIR/.onprem-demo"
cd "$DEMO_DIR"

read -r SSH_PORT HTTP_PORT SERVICE_PORT < <("$PY" - <<'EOF'
import socket

socks = [socket.socket() for _ in range(3)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))
for s in socks:
    s.close()
EOF
)
[ -n "${SERVICE_PORT:-}" ] || die "could not pick free ports"

RELAY_DIR=$DEMO_DIR/relay
export ONPREM_RELAY_CONFIG=$RELAY_DIR/relay.yaml

say "onprem-relay init --dir $RELAY_DIR"
onprem-relay init --dir "$RELAY_DIR" >"$DEMO_DIR/init.log" 2>&1 \
    || { cat "$DEMO_DIR/init.log" >&2; die "onprem-relay init failed"; }
[ -f "$ONPREM_RELAY_CONFIG" ] || die "onprem-relay init wrote no $ONPREM_RELAY_CONFIG"

say "relay.yaml: ssh on 127.0.0.1:$SSH_PORT, http on 127.0.0.1:$HTTP_PORT"
"$PY" - "$ONPREM_RELAY_CONFIG" "$SSH_PORT" "$HTTP_PORT" <<'EOF'
import sys

import yaml

path, ssh_port, http_port = sys.argv[1:]
with open(path, encoding="utf-8") as f:
    cfg = yaml.safe_load(f) or {}
cfg.setdefault("ssh", {}).update(
    listen=f"127.0.0.1:{ssh_port}", public_address=f"127.0.0.1:{ssh_port}"
)
cfg.setdefault("http", {}).update(
    listen=f"127.0.0.1:{http_port}", public_url=f"http://127.0.0.1:{http_port}"
)
cfg.setdefault("log", {}).update(level="info")
with open(path, "w", encoding="utf-8") as f:
    yaml.safe_dump(cfg, f, sort_keys=False)
EOF

say "onprem-relay accounts create demo --json"
ACCOUNT_JSON=$(onprem-relay accounts create demo --json 2>"$DEMO_DIR/cli.log") \
    || { cat "$DEMO_DIR/cli.log" >&2; die "accounts create failed"; }
ACCOUNT_ID=$(json_field id <<<"$ACCOUNT_JSON") || die "accounts create printed no id"
API_TOKEN=$(json_field api_token <<<"$ACCOUNT_JSON") || die "accounts create printed no api_token"
echo "      account $ACCOUNT_ID (API token printed once, not shown here)"

say "onprem-relay agents create --account demo demo-agent --json"
AGENT_JSON=$(onprem-relay agents create --account demo demo-agent --json 2>"$DEMO_DIR/cli.log") \
    || { cat "$DEMO_DIR/cli.log" >&2; die "agents create failed"; }
AGENT_ID=$(json_field id <<<"$AGENT_JSON") || die "agents create printed no id"
HOST_KEY=$(json_field host_key <<<"$AGENT_JSON") || die "agents create printed no host_key"
echo "      agent $AGENT_ID, relay host key $HOST_KEY"

say "sample on-prem service: http://127.0.0.1:$SERVICE_PORT/hello.json"
mkdir -p "$DEMO_DIR/service"
printf '{"service": "erp-demo", "message": "hello from inside the firewall", "port": %d}\n' \
    "$SERVICE_PORT" >"$DEMO_DIR/service/hello.json"
start_bg "$SERVICE_LOG" "$PY" -m http.server "$SERVICE_PORT" --bind 127.0.0.1 \
    --directory "$DEMO_DIR/service"
wait_port "$SERVICE_PORT" "$LAST_PID" "the sample service"

say "agent.yaml + token file (0600): allow only 127.0.0.1:$SERVICE_PORT"
AGENT_DIR=$DEMO_DIR/agent
mkdir -p "$AGENT_DIR"
(
    umask 077
    json_field token <<<"$AGENT_JSON" >"$AGENT_DIR/token"
)
chmod 600 "$AGENT_DIR/token"
cat >"$AGENT_DIR/agent.yaml" <<EOF
relay:
  address: "127.0.0.1:$SSH_PORT"
  host_key: "$HOST_KEY"
agent_id: $AGENT_ID
token_file: $AGENT_DIR/token
allow:
  - "127.0.0.1:$SERVICE_PORT"
audit_file: $AGENT_DIR/audit.log
log: {level: info, format: json}
EOF

say "onprem-relay serve (log: $RELAY_LOG)"
start_bg "$RELAY_LOG" onprem-relay serve --config "$ONPREM_RELAY_CONFIG"
RELAY_PID=$LAST_PID
# The relay logs one "relay_listening" event once its SSH, HTTP and forward ports are
# bound; probing the forward port instead would open (and fail) a stream.
for _ in $(seq 1 150); do
    grep -q '"relay_listening"' "$RELAY_LOG" 2>/dev/null && break
    alive "$RELAY_PID" || died "the relay" "$RELAY_PID"
    sleep 0.1
done
grep -q '"relay_listening"' "$RELAY_LOG" || die "the relay did not start listening within 15 s"

say "onprem-agent run --config $AGENT_DIR/agent.yaml (log: $AGENT_LOG)"
start_bg "$AGENT_LOG" onprem-agent run --config "$AGENT_DIR/agent.yaml"
AGENT_PID=$LAST_PID

say "waiting up to ${ONLINE_TIMEOUT_S}s for the agent to be online"
deadline=$((SECONDS + ONLINE_TIMEOUT_S))
status=unknown
while :; do
    alive "$AGENT_PID" || died "the agent" "$AGENT_PID"
    alive "$RELAY_PID" || died "the relay" "$RELAY_PID"
    if list_json=$(onprem-relay agents list --account demo --json 2>"$DEMO_DIR/cli.log"); then
        status=$("$PY" -c '
import json, sys
data = json.load(sys.stdin)
agents = data.get("agents", data.get("items", [])) if isinstance(data, dict) else data
print(next((a.get("status", "unknown") for a in agents if a.get("id") == sys.argv[1]), "absent"))
' "$AGENT_ID" <<<"$list_json") || status=unparsable
    fi
    [ "$status" = online ] && break
    [ "$SECONDS" -lt "$deadline" ] \
        || die "agent $AGENT_ID not online after ${ONLINE_TIMEOUT_S}s (last status: $status)"
    sleep 0.5
done
echo "      agent $AGENT_ID is online"

API=http://127.0.0.1:$HTTP_PORT
# api METHOD PATH [JSON BODY]: call the relay's REST API with the account's token;
# prints the status line and the body (indented JSON when it is JSON).
api() {
    "$PY" - "$API_TOKEN" "$1" "$API$2" "${3:-}" <<'EOF'
import json, sys, urllib.error, urllib.request

token, method, url, body = sys.argv[1:]
req = urllib.request.Request(url, method=method, data=body.encode() if body else None)
req.add_header("Authorization", f"Bearer {token}")
if body:
    req.add_header("Content-Type", "application/json")
try:
    with urllib.request.urlopen(req, timeout=30) as resp:
        status, raw = resp.status, resp.read()
except urllib.error.HTTPError as err:
    status, raw = err.code, err.read()
try:
    text = json.dumps(json.loads(raw), indent=2)
except ValueError:
    text = raw.decode(errors="replace")
print(f"HTTP {status}")
print(text)
sys.exit(0 if status < 300 else 1)
EOF
}

CONNECTION=$(cat <<EOF
{"name": "ERP demo (on-prem)", "mode": "onpremise", "agent_id": "$AGENT_ID",
 "http": {"base_uri": "http://127.0.0.1:$SERVICE_PORT",
          "ping": {"method": "GET", "relative_uri": "/hello.json",
                   "success_path": "service", "success_values": ["erp-demo"]}}}
EOF
)

say "POST /v1/connections/test: Test connection (mode onpremise, through agent $AGENT_ID)"
out=$(api POST /v1/connections/test "$CONNECTION") || { echo "$out"; die "test request failed"; }
echo "$out" | sed 's/^/      /'
grep -q '"ok": true' <<<"$out" || die "the connection test did not pass"

say "POST /v1/connections: Save & continue (tests again, then saves)"
out=$(api POST /v1/connections "$CONNECTION") || { echo "$out"; die "saving the connection failed"; }
CONNECTION_ID=$(sed 1d <<<"$out" | json_field id) || die "no connection id in: $out"
echo "      connection $CONNECTION_ID, state $(sed 1d <<<"$out" | json_field state)"

say "POST /v1/connections/$CONNECTION_ID/request: GET /hello.json in a JSON envelope"
out=$(api POST "/v1/connections/$CONNECTION_ID/request" \
    '{"method": "GET", "relative_uri": "/hello.json"}') || { echo "$out"; die "request failed"; }
echo "$out" | sed 's/^/      /'
grep -q "hello from inside the firewall" <<<"$out" || die "unexpected response through the tunnel"

say "GET /v1/connections/$CONNECTION_ID/proxy/hello.json: the same, streamed"
out=$(api GET "/v1/connections/$CONNECTION_ID/proxy/hello.json") || { echo "$out"; die "proxy failed"; }
echo "$out" | sed 's/^/      /'
grep -q "hello from inside the firewall" <<<"$out" || die "unexpected response through the proxy"

say "GET /console/sign-in: the web console over the same API"
page=$(curl -fsS "$API/console/sign-in") || die "the web console did not answer"
grep -q "Sign in with your account's API token" <<<"$page" || die "unexpected console page"
echo "      open $API/console/ while a relay runs and sign in with the account's API token"

echo "demo: OK: the relay reached the on-prem service through agent $AGENT_ID"
# The agent writes its audit line when the stream closes, just after curl returns.
for _ in $(seq 1 20); do
    [ -s "$AGENT_DIR/audit.log" ] && break
    sleep 0.1
done
if [ -s "$AGENT_DIR/audit.log" ]; then
    echo "agent audit log ($AGENT_DIR/audit.log):"
    tail -n 5 "$AGENT_DIR/audit.log"
fi
