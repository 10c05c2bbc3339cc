#!/usr/bin/env bash
# Herald + real backends end-to-end: python-socketio/Flask-SocketIO (JSON and pickle era),
# @socket.io/redis-emitter, notify:* channels, storage, Redis trouble, instance loss, nginx.
#
#   HERALD_BIN=/path/to/herald client-test/backends/run.sh [node --test args, e.g. a test file]
#
# Installs what it needs idempotently (npm ci, two virtualenvs, nginx via apt when root and
# missing), starts its own redis-server/Herald/nginx processes on free loopback ports, and exits
# non-zero on any failure. Works from any cwd.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
cd "$HERE"

: "${HERALD_BIN:=}"
if [[ -z "$HERALD_BIN" ]]; then
  echo "run.sh: set HERALD_BIN to the herald binary (e.g. HERALD_BIN=$REPO/target/debug/herald after 'cargo build')" >&2
  exit 2
fi
HERALD_BIN="$(cd "$(dirname "$HERALD_BIN")" && pwd)/$(basename "$HERALD_BIN")"
[[ -x "$HERALD_BIN" ]] || { echo "run.sh: HERALD_BIN=$HERALD_BIN is not an executable" >&2; exit 2; }
export HERALD_BIN

need() { command -v "$1" >/dev/null 2>&1 || { echo "run.sh: '$1' is required" >&2; exit 2; }; }
need node; need npm; need redis-server; need redis-cli
PYTHON="${PYTHON:-python3}"; need "$PYTHON"
node -e 'process.exit(Number(process.versions.node.split(".")[0]) >= 20 ? 0 : 1)' || { echo "run.sh: node >= 20 required" >&2; exit 2; }

# nginx (tests 6 and 7): Debian package when missing and we are root
if ! command -v nginx >/dev/null 2>&1 && [[ ! -x /usr/sbin/nginx ]]; then
  if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null 2>&1; then
    echo "run.sh: installing nginx (apt)"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light >/dev/null 2>&1 \
      || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx >/dev/null
    # only the binary is wanted: never leave the system service running
    if command -v systemctl >/dev/null 2>&1; then systemctl stop nginx >/dev/null 2>&1 || true; fi
    if [[ -f /run/nginx.pid ]]; then kill "$(cat /run/nginx.pid)" 2>/dev/null || true; fi
  else
    echo "run.sh: nginx is required (apt-get install nginx)" >&2; exit 2
  fi
fi

# node packages, from the committed lock file
stamp="node_modules/.lock-stamp"
if [[ ! -f "$stamp" ]] || ! cmp -s package-lock.json "$stamp"; then
  npm ci --no-audit --no-fund --loglevel=error
  cp package-lock.json "$stamp"
fi

# the two python generations
for gen in json pickle; do
  venv=".venv-$gen"; req="requirements-$gen.txt"
  if [[ ! -f "$venv/.req-stamp" ]] || ! cmp -s "$req" "$venv/.req-stamp"; then
    rm -rf "$venv"
    "$PYTHON" -m venv "$venv"
    "$venv/bin/pip" install -q --disable-pip-version-check -r "$req"
    cp "$req" "$venv/.req-stamp"
  fi
done
echo "run.sh: python-socketio $(.venv-json/bin/python -c 'import importlib.metadata as m; print(m.version("python-socketio"))') (JSON) and $(.venv-pickle/bin/python -c 'import importlib.metadata as m; print(m.version("python-socketio"))') (pickle); herald $HERALD_BIN"

export BACKENDS_RUN_DIR="$HERE/.run"
rm -rf "$BACKENDS_RUN_DIR"; mkdir -p "$BACKENDS_RUN_DIR"

if [[ $# -gt 0 ]]; then
  files=("$@")
else
  files=(test/*.test.js)
fi
# one file at a time: each starts its own redis-server and Herald cluster, and 2 cores are shared
set +e
# a hung test file must not hang the run: 120 s per test, 600 s for everything (the chaos
# test alone takes about 70 s)
timeout --kill-after=10 600 node --test --test-concurrency=1 --test-timeout=120000 --test-reporter=spec "${files[@]}"
rc=$?
set -e
if [[ $rc -ne 0 ]]; then
  echo "run.sh: FAILED (exit $rc); process logs in $BACKENDS_RUN_DIR" >&2
fi
exit $rc
