#!/usr/bin/env bash
# Black-box client tests for Herald: socket.io-client 4.x and 2.x (node), headless Chromium,
# python-socketio. Installs what they need (idempotent), then runs them against the real binary.
#
#   HERALD_BIN=/path/to/herald client-test/run.sh      (default: <repo>/target/debug/herald)
#   client-test/run.sh client-test/node/plain-ws.test.mjs client-test/python/test_x.py   (only those)
#
# Works from any directory; needs node >= 20, npm, python3 (with venv); chromium is installed
# with apt when missing and we are root (otherwise the browser test is skipped, saying so).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/.." && pwd)"
export HERALD_BIN="${HERALD_BIN:-$REPO/target/debug/herald}"
case "$HERALD_BIN" in /*) ;; *) HERALD_BIN="$PWD/$HERALD_BIN" ;; esac

if [[ ! -x "$HERALD_BIN" ]]; then
  echo "client-test: Herald binary not found or not executable: $HERALD_BIN" >&2
  echo "client-test: build it first (cargo build in $REPO) or set HERALD_BIN" >&2
  exit 2
fi
for tool in node npm python3; do
  command -v "$tool" >/dev/null || { echo "client-test: $tool is required" >&2; exit 2; }
done
node_major="$(node -p 'process.versions.node.split(".")[0]')"
if (( node_major < 20 )); then
  echo "client-test: node >= 20 is required (found $(node --version))" >&2
  exit 2
fi

# --- node dependencies (exactly the lock file; skipped when already installed from this lock)
lock_sum="$(sha256sum "$HERE/package-lock.json" | cut -d' ' -f1)"
stamp="$HERE/node_modules/.client-test-lock.sha256"
if [[ "$(cat "$stamp" 2>/dev/null)" != "$lock_sum" ]]; then
  echo "client-test: npm ci" >&2
  (cd "$HERE" && npm ci --no-audit --no-fund --loglevel=error)
  echo "$lock_sum" > "$stamp"
fi

# --- python venv with the pinned requirements (re-installed when requirements.txt changes)
venv="$HERE/.venv"
req="$HERE/python/requirements.txt"
if [[ ! -x "$venv/bin/python" ]]; then
  echo "client-test: creating $venv" >&2
  python3 -m venv "$venv"
fi
if ! cmp -s "$req" "$venv/.requirements.installed" 2>/dev/null; then
  echo "client-test: pip install -r $req" >&2
  "$venv/bin/python" -m pip install --disable-pip-version-check -q -r "$req"
  cp "$req" "$venv/.requirements.installed"
fi

# --- chromium for the browser test
if [[ ! -x /usr/bin/chromium ]]; then
  if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null; then
    echo "client-test: apt-get install chromium" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "client-test: /usr/bin/chromium missing and not root: the browser test will be skipped" >&2
  fi
fi

status=0
if (( $# )); then
  # Only the given test files: node/*.mjs with node's runner, python/*.py with pytest.
  for file in "$@"; do
    case "$file" in
      *.py) (cd "$REPO" && "$venv/bin/python" -m pytest -q -p no:cacheprovider "$file") || status=1 ;;
      *) (cd "$REPO" && node --test --test-concurrency=1 --test-reporter=spec "$file") || status=1 ;;
    esac
  done
  exit "$status"
fi
echo "== node tests (socket.io-client 4.x / 2.x, Chromium) against $HERALD_BIN"
(cd "$REPO" && node --test --test-concurrency=1 --test-reporter=spec client-test/node/) || status=1
echo "== python tests (python-socketio) against $HERALD_BIN"
(cd "$REPO" && "$venv/bin/python" -m pytest -q -p no:cacheprovider client-test/python) || status=1
exit "$status"
