#!/usr/bin/env bash
# Tests the deployment files (see deploy/test_deploy.py for the list): hadolint, yamllint,
# kubernetes-validate and the Compose schema, what the files must agree on, then real Herald
# processes started from the Kubernetes manifests and compose.yaml (with redis-server and
# nginx when installed). Ends with "deploy: N passed, N failed, N skipped".
#
# Needs python3 with venv and PyPI access the first time (the tools go into deploy/.venv),
# and a built herald (HERALD_BIN, default target/debug/herald; built here when missing).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
venv="$here/.venv"
requirements="$here/requirements-test.txt"

if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
stamp="$venv/.requirements.sha256"
want="$(sha256sum "$requirements" | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "== installing $(grep -cv '^#' "$requirements") test tools into deploy/.venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$requirements"
  echo "$want" > "$stamp"
fi

export HERALD_BIN="${HERALD_BIN:-$root/target/debug/herald}"
if [ ! -x "$HERALD_BIN" ]; then
  (cd "$root" && cargo build --quiet --bin herald)
fi
exec "$venv/bin/python" "$here/test_deploy.py"
