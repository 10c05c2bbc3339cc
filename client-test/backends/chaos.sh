#!/usr/bin/env bash
# The long chaos run (lib/chaos.js; test/09-chaos.test.js is its CI variant, run by run.sh):
#
#   HERALD_BIN=/path/to/herald CHAOS_SECONDS=300 CHAOS_CLIENTS=200 client-test/backends/chaos.sh
#
# Every CHAOS_CYCLE_SECONDS (60) of production: kill -9 of the instance holding the most sockets
# at +15 s (restarted 5 s later), kill -9 of redis-server at +35 s (restarted 6 s later).
# Parameters (environment, defaults in lib/chaos.js chaosParams):
#   CHAOS_SECONDS (60)  CHAOS_CLIENTS (200)  CHAOS_POLLING (10)  CHAOS_RATE (20/s)
#   CHAOS_MIX (80,15,5: user,role,broadcast)  CHAOS_VIA_NGINX (0.4)  CHAOS_SEED (random)
#   CHAOS_CYCLE_SECONDS (60)  CHAOS_KILL_INSTANCE_AT (15)  CHAOS_INSTANCE_DOWN_SECONDS (5)
#   CHAOS_KILL_REDIS_AT (35)  CHAOS_REDIS_DOWN_SECONDS (6)  CHAOS_REDIS_PERSIST (always|everysec|no)
#   CHAOS_PING_INTERVAL_SECS / CHAOS_PING_TIMEOUT_SECS (Herald's defaults 15 / 30)
#   CHAOS_KILL_DUP_WINDOW_MS (3000)  CHAOS_MAX_ATTEMPTS (10)  CHAOS_RETRY_DEADLINE_MS (20000)
#   CHAOS_BUDGET_SECONDS (CHAOS_SECONDS + 60 here; + 40 in the CI test)  CHAOS_REPORT (5 detailed entries per problem)
#   HERALD_LOG (info)
# Output: the summary line and table on stdout; .run/chaos-summary.json, chaos-sends.json,
# chaos-clients.json and every process log in .run/ (BACKENDS_RUN_DIR). Exit status 0 when every
# check holds.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
cd "$HERE"

: "${HERALD_BIN:=$REPO/target/debug/herald}"
HERALD_BIN="$(cd "$(dirname "$HERALD_BIN")" && pwd)/$(basename "$HERALD_BIN")"
[[ -x "$HERALD_BIN" ]] || { echo "chaos.sh: HERALD_BIN=$HERALD_BIN is not an executable (cargo build first)" >&2; exit 2; }
export HERALD_BIN

need() { command -v "$1" >/dev/null 2>&1 || { echo "chaos.sh: '$1' is required" >&2; exit 2; }; }
need node; need npm; need redis-server; need redis-cli
node -e 'process.exit(Number(process.versions.node.split(".")[0]) >= 20 ? 0 : 1)' || { echo "chaos.sh: node >= 20 required" >&2; exit 2; }
if ! command -v nginx >/dev/null 2>&1 && [[ ! -x /usr/sbin/nginx ]] && [[ -z "${NGINX_BIN:-}" ]]; then
  echo "chaos.sh: nginx is required (apt-get install nginx, or run run.sh once as root)" >&2; exit 2
fi

stamp="node_modules/.lock-stamp"
if [[ ! -f "$stamp" ]] || ! cmp -s package-lock.json "$stamp"; then
  npm ci --no-audit --no-fund --loglevel=error
  cp package-lock.json "$stamp"
fi

export CHAOS_SECONDS="${CHAOS_SECONDS:-300}"
export CHAOS_CLIENTS="${CHAOS_CLIENTS:-200}"
export CHAOS_BUDGET_SECONDS="${CHAOS_BUDGET_SECONDS:-$((CHAOS_SECONDS + 60))}"
export BACKENDS_RUN_DIR="${BACKENDS_RUN_DIR:-$HERE/.run}"
rm -rf "$BACKENDS_RUN_DIR"; mkdir -p "$BACKENDS_RUN_DIR"
ulimit -n 65536 2>/dev/null || true

limit=$((CHAOS_BUDGET_SECONDS + 60))
echo "chaos.sh: ${CHAOS_SECONDS}s, ${CHAOS_CLIENTS} clients, herald $HERALD_BIN, logs in $BACKENDS_RUN_DIR (hard limit ${limit}s)"
set +e
timeout --kill-after=10 "$limit" node --test --test-concurrency=1 --test-timeout=$((limit * 1000)) --test-reporter=spec test/09-chaos.test.js
rc=$?
set -e
[[ $rc -eq 0 ]] || echo "chaos.sh: FAILED (exit $rc); summary and logs in $BACKENDS_RUN_DIR" >&2
exit $rc
