#!/usr/bin/env bash
# Herald benchmarks: Herald vs Node socket.io 4.8 vs python-socketio 5 (ASGI, uvicorn) vs
# Flask-SocketIO 5 (gevent), and the two floors: minimal WebSocket broadcasters in Rust
# (bench/floor-rust, tokio-tungstenite) and Node (bench/floor-node, ws) that do the least the
# scenarios need (BENCHMARKS.md, "Floors").
#
#   bench/run.sh                 small sizes (1k connections), all six servers
#   bench/run.sh --full          big sizes: 19k connections, fan-out to 1k/3k/10k/19k, targeted at 10k
#                                (then bench/tools/targets.py: issue 16's targets, in DIR/targets.md)
#   bench/run.sh --smoke         a few hundred connections against Herald only (< 60 s once built);
#                                exits non-zero if the tool cannot connect or receive
#   options: --servers herald,node,python,flask,floor-rust,floor-node
#            --out DIR (default bench/results/<mode>; smoke: $TMPDIR/herald-bench-smoke)
#            --skip-build  (use the binaries / node_modules / venv already there)
#            --append      keep other servers' results in DIR/results.jsonl (re-run some servers only)
#            --scenarios connect,fanout,targeted,redis   (default: all)
#            --polling-share F  share of long-polling clients in connect/fan-out (default 0 in
#                          small and full: the floors speak WebSocket only, so every server gets
#                          the same all-WebSocket load; 0.05 in smoke). The floors always get 0.
#
# Everything targets 127.0.0.1 only; every load is bounded in count and time (--max-secs), and each
# process (servers and load generators) is held to at most 20,000 open files.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
MODE=small
SERVERS=herald,node,python,flask,floor-rust,floor-node
POLL_OPT=""
OUT=""
SKIP_BUILD=0
APPEND=0
SCENARIOS=connect,fanout,targeted,redis
while [ $# -gt 0 ]; do
  case "$1" in
    --smoke) MODE=smoke; SERVERS=herald ;;
    --full) MODE=full ;;
    --small) MODE=small ;;
    --servers) SERVERS="$2"; shift ;;
    --out) OUT="$2"; shift ;;
    --skip-build) SKIP_BUILD=1 ;;
    --append) APPEND=1 ;;
    --scenarios) SCENARIOS="$2"; shift ;;
    --polling-share) POLL_OPT="$2"; shift ;;
    -h|--help) sed -n 2,21p "$0"; exit 0 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
if [ "$MODE" = smoke ]; then
  OUT="${OUT:-${TMPDIR:-/tmp}/herald-bench-smoke}" # a smoke run leaves the work tree clean
else
  OUT="${OUT:-$HERE/results/$MODE}"
fi
mkdir -p "$OUT"
RESULTS="$OUT/results.jsonl"
if [ "$APPEND" = 1 ] && [ -f "$RESULTS" ]; then
  # keep other servers' results, drop the ones being re-run
  python3 - "$RESULTS" "$SERVERS" <<'PY'
import json, sys
path, servers = sys.argv[1], set(sys.argv[2].split(","))
keep = [l for l in open(path) if l.strip() and json.loads(l).get("server") not in servers]
open(path, "w").writelines(keep)
PY
else
  : > "$RESULTS"
fi

ulimit -n 20000 2>/dev/null || ulimit -n "$(ulimit -Hn)"
if [ "$(ulimit -n)" -gt 20000 ]; then ulimit -n 20000; fi

SECRET="${BENCH_JWT_SECRET:-bench-secret-0123456789abcdef0123456789}"
KEY="${BENCH_API_KEY:-bench-api-key}"
# Measurements need release builds. The smoke run only checks that the tool still works: it
# builds the load generator in debug and uses the Herald binary the test command already built
# (HERALD_BIN), which keeps it to a minute or two in CI.
if [ "$MODE" = smoke ]; then PROFILE=debug; else PROFILE=release; fi
LOADGEN="$HERE/loadgen/target/$PROFILE/herald-loadgen"
HERALD="${HERALD_BIN:-$ROOT/target/$PROFILE/herald}"
FLOOR_RUST="$HERE/floor-rust/target/$PROFILE/herald-floor"
PIDS=()

log() { echo "[run.sh $(date -u +%H:%M:%S)] $*" >&2; }

cleanup() {
  for p in "${PIDS[@]:-}"; do
    [ -n "$p" ] && kill "$p" 2>/dev/null || true
  done
}
trap cleanup EXIT

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

has() { [[ ",$SERVERS," == *",$1,"* ]]; }
want() { [[ ",$SCENARIOS," == *",$1,"* ]]; }

# ------------------------------------------------------------------------------------------ build
if [ "$SKIP_BUILD" = 0 ]; then
  log "building loadgen"
  if [ "$PROFILE" = release ]; then
    cargo build --release --quiet --manifest-path "$HERE/loadgen/Cargo.toml"
  else
    cargo build --quiet --manifest-path "$HERE/loadgen/Cargo.toml"
  fi
  if has floor-rust; then
    log "building floor-rust ($PROFILE)"
    if [ "$PROFILE" = release ]; then
      cargo build --release --quiet --manifest-path "$HERE/floor-rust/Cargo.toml"
    else
      cargo build --quiet --manifest-path "$HERE/floor-rust/Cargo.toml"
    fi
  fi
  if has herald && [ -z "${HERALD_BIN:-}" ]; then
    log "building herald ($PROFILE)"
    if [ "$PROFILE" = release ]; then (cd "$ROOT" && cargo build --release --quiet); else (cd "$ROOT" && cargo build --quiet --bins); fi
  fi
  if has node && [ ! -d "$HERE/node-server/node_modules" ]; then
    log "npm ci"; (cd "$HERE/node-server" && npm ci --no-audit --no-fund --silent)
  fi
  if has floor-node && [ ! -d "$HERE/floor-node/node_modules" ]; then
    log "npm ci (floor-node)"; (cd "$HERE/floor-node" && npm ci --no-audit --no-fund --silent)
  fi
  if has python || has flask || [ "$MODE" != smoke ]; then
    if [ ! -x "$HERE/.venv/bin/uvicorn" ] || ! cmp -s "$HERE/python-server/requirements.txt" "$HERE/.venv/requirements.txt"; then
      log "python venv"; python3 -m venv "$HERE/.venv"
      "$HERE/.venv/bin/pip" install --quiet -r "$HERE/python-server/requirements.txt"
      cp "$HERE/python-server/requirements.txt" "$HERE/.venv/requirements.txt"
    fi
  fi
fi

# ---------------------------------------------------------------------------------------- servers
SERVER_PID=""
PORT=""
REDIS_PORT=""
REDIS_PID=""

start_redis() {
  if [ -n "$REDIS_PID" ] || ! command -v redis-server >/dev/null; then return; fi
  REDIS_PORT=$(free_port)
  redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no --loglevel warning \
    > "$OUT/redis.log" 2>&1 &
  REDIS_PID=$!
  PIDS+=("$REDIS_PID")
  for _ in $(seq 50); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && return; sleep 0.1; done
}

start_server() { # name [redis]
  local name="$1" redis_url=""
  [ "${2:-}" = redis ] && redis_url="redis://127.0.0.1:$REDIS_PORT/0"
  PORT=$(free_port)
  case "$name" in
    herald)
      rm -rf "$OUT/herald-data"
      env HERALD__SERVER__HOST=127.0.0.1 HERALD__SERVER__PORT="$PORT" HERALD__AUTH__JWT_SECRET="$SECRET" \
        HERALD__STORAGE__DATA_DIR="$OUT/herald-data" \
        HERALD__API__KEYS="$KEY" HERALD__LIMITS__MAX_CONNECTIONS=20000 HERALD__LIMITS__CONNECTS_PER_IP_PER_MINUTE=0 \
        ${redis_url:+HERALD__REDIS__URL=$redis_url} RUST_LOG=warn "$HERALD" > "$OUT/herald.log" 2>&1 &
      ;;
    node)
      (cd "$HERE/node-server" && PORT="$PORT" JWT_SECRET="$SECRET" API_KEYS="$KEY" REDIS_URL="$redis_url" \
        exec node server.js) > "$OUT/node.log" 2>&1 &
      ;;
    python)
      (cd "$HERE/python-server" && JWT_SECRET="$SECRET" API_KEYS="$KEY" REDIS_URL="$redis_url" \
        exec "$HERE/.venv/bin/uvicorn" app:app --host 127.0.0.1 --port "$PORT" --log-level warning) \
        > "$OUT/python.log" 2>&1 &
      ;;
    flask)
      (cd "$HERE/python-server" && PORT="$PORT" JWT_SECRET="$SECRET" API_KEYS="$KEY" REDIS_URL="$redis_url" \
        exec "$HERE/.venv/bin/python" flask_app.py) > "$OUT/flask.log" 2>&1 &
      ;;
    floor-rust)
      env HOST=127.0.0.1 PORT="$PORT" JWT_SECRET="$SECRET" API_KEYS="$KEY" REDIS_URL="$redis_url" \
        "$FLOOR_RUST" > "$OUT/floor-rust.log" 2>&1 &
      ;;
    floor-node)
      (cd "$HERE/floor-node" && HOST=127.0.0.1 PORT="$PORT" JWT_SECRET="$SECRET" API_KEYS="$KEY" REDIS_URL="$redis_url" \
        exec node server.js) > "$OUT/floor-node.log" 2>&1 &
      ;;
    *) log "unknown server $name"; return 1 ;;
  esac
  SERVER_PID=$!
  PIDS+=("$SERVER_PID")
  for _ in $(seq 100); do
    curl -fs "http://127.0.0.1:$PORT/health" >/dev/null 2>&1 && { log "$name up on :$PORT (pid $SERVER_PID)"; return 0; }
    sleep 0.2
  done
  log "$name did not come up"; return 1
}

stop_server() {
  [ -z "$SERVER_PID" ] && return
  kill "$SERVER_PID" 2>/dev/null || true
  for _ in $(seq 50); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.2; done
  kill -9 "$SERVER_PID" 2>/dev/null || true
  wait "$SERVER_PID" 2>/dev/null || true
  SERVER_PID=""
  sleep 1 # let TIME_WAIT sockets and the kernel settle
}

FAILED=0
PASSED=0
lg() { # name scenario args...: one bounded load-generator run
  local name="$1"; shift
  local scenario="$1"; shift
  log "$name: $scenario $*"
  local errlog="$OUT/.last-loadgen.log"
  if ! timeout 400 "$LOADGEN" "$scenario" --url "http://127.0.0.1:$PORT" --secret "$SECRET" --api-key "$KEY" \
      --server-pid "$SERVER_PID" --server-name "$name" --out "$RESULTS" --src-ips 8 "$@" \
      >> "$OUT/loadgen.stdout" 2> "$errlog"; then
    log "$name: $scenario FAILED (see $OUT/loadgen.log)"
    FAILED=$((FAILED + 1))
  else
    PASSED=$((PASSED + 1))
  fi
  cat "$errlog" >> "$OUT/loadgen.log"
  grep '^\[' "$errlog" >&2 || true
  rm -f "$errlog"
}

# ------------------------------------------------------------------------------------------ sizes
case "$MODE" in
  smoke)
    CONNECT_SIZES="300"; FANOUT_SIZES="300"; FANOUT_MSGS=20; TARGET_CONNS=300
    RATES_1="500,1000"; RATES_B=""; RATES_REDIS=""; STEP=2; WORKERS=1; MAXS=40; POLL=0.05 ;;
  small)
    CONNECT_SIZES="1000"; FANOUT_SIZES="1000"; FANOUT_MSGS=100; TARGET_CONNS=1000
    RATES_1="1000,2000,4000,8000"; RATES_B="5000,10000,20000,50000"; RATES_REDIS="2000,5000,10000,20000"
    STEP=3; WORKERS=2; MAXS=30; POLL=0 ;;
  full)
    CONNECT_SIZES="19000"; FANOUT_SIZES="1000 3000 10000 19000"; FANOUT_MSGS=100; TARGET_CONNS=10000
    RATES_1="5000,10000,20000"; RATES_B="10000,25000,50000,100000,150000"; RATES_REDIS="5000,10000,20000,50000"
    STEP=3; WORKERS=2; MAXS=120; POLL=0 ;;
esac

# sizes can be overridden for a dry run of a mode at another scale
CONNECT_SIZES="${BENCH_CONNECT_SIZES:-$CONNECT_SIZES}"; FANOUT_SIZES="${BENCH_FANOUT_SIZES:-$FANOUT_SIZES}"
TARGET_CONNS="${BENCH_TARGET_CONNS:-$TARGET_CONNS}"; MAXS="${BENCH_MAX_SECS:-$MAXS}"
POLL="${POLL_OPT:-$POLL}"

run_server_suite() { # name
  local name="$1" poll="$POLL"
  case "$name" in floor-*) poll=0 ;; esac # the floors speak WebSocket only
  start_server "$name" || { FAILED=$((FAILED + 1)); return; }
  want connect && for n in $CONNECT_SIZES; do
    lg "$name" connect --conns "$n" --workers "$WORKERS" --polling-share "$poll" --join-room team-updates \
      --connect-concurrency 64 --hold-secs 3 --max-secs "$MAXS" --tag "connect-$n"
  done
  local msgs="$FANOUT_MSGS"
  # python-socketio needs seconds per message at 10k+ sockets: fewer sends keep the run bounded
  if { [ "$name" = python ] || [ "$name" = flask ]; } && [ "$MODE" = full ]; then msgs=20; fi
  want fanout && for n in $FANOUT_SIZES; do
    lg "$name" fanout --conns "$n" --workers "$WORKERS" --polling-share "$poll" --join-room team-updates \
      --messages "$msgs" --msg-timeout-secs 10 --max-secs "$MAXS" --tag "fanout-$n"
  done
  want targeted && lg "$name" targeted --conns "$TARGET_CONNS" --workers "$WORKERS" --rates "$RATES_1" --step-secs "$STEP" \
    --batch 1 --http-concurrency 32 --break-p99-ms 250 --max-secs "$MAXS" --tag "targeted-http-b1"
  if [ -n "$RATES_B" ] && want targeted; then
    lg "$name" targeted --conns "$TARGET_CONNS" --workers "$WORKERS" --rates "$RATES_B" --step-secs "$STEP" \
      --batch 100 --http-concurrency 16 --break-p99-ms 250 --max-secs "$MAXS" --tag "targeted-http-b100"
  fi
  stop_server
  if [ -n "$RATES_REDIS" ] && want redis; then
    start_redis
    if [ -z "$REDIS_PID" ]; then
      echo "{\"scenario\":\"targeted\",\"ingress\":\"redis\",\"server\":\"$name\",\"status\":\"n/a\",\"reason\":\"no redis-server\"}" >> "$RESULTS"
      return
    fi
    start_server "$name" redis || { FAILED=$((FAILED + 1)); return; }
    local redis_state=""
    [ "$name" = herald ] && redis_state=$(curl -fs "http://127.0.0.1:$PORT/health" | python3 -c 'import json,sys; print(json.load(sys.stdin).get("redis",""))' || true)
    if [ "$name" = herald ] && { [ "$redis_state" != up ] || ! grep -rqs 'notify:user' "$ROOT/src"; }; then
      log "herald: no Redis ingress in this build (health redis=$redis_state): redis mode n/a"
      echo "{\"scenario\":\"targeted\",\"ingress\":\"redis\",\"server\":\"herald\",\"status\":\"n/a\",\"reason\":\"Herald Redis ingress (notify:user:<id>) not in this build\"}" >> "$RESULTS"
    else
      lg "$name" targeted --conns "$TARGET_CONNS" --workers "$WORKERS" --rates "$RATES_REDIS" --step-secs "$STEP" \
        --ingress redis --redis-addr "127.0.0.1:$REDIS_PORT" --http-concurrency 4 --break-p99-ms 250 --max-secs "$MAXS" --tag "targeted-redis"
    fi
    stop_server
  fi
}

START=$(date +%s)
for s in ${SERVERS//,/ }; do
  run_server_suite "$s"
done
log "done in $(( $(date +%s) - START ))s; $FAILED failed; results in $RESULTS"

if [ "$MODE" != smoke ] && [ -x "$HERE/.venv/bin/python" ]; then
  "$HERE/.venv/bin/python" "$HERE/plot.py" "$OUT" || log "plot failed"
  python3 "$HERE/tools/targets.py" "$OUT" > "$OUT/targets.md" && cat "$OUT/targets.md" || log "targets failed"
fi
echo "bench $MODE: $PASSED passed, $FAILED failed"
[ "$FAILED" = 0 ]
