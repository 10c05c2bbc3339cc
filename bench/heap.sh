#!/usr/bin/env bash
# Heap per idle connection, by owner: Herald (release build) under heaptrack, N WebSocket
# connections from the load generator (each joins a room, held 8 s), then the peak heap split
# by who allocated it (bench/tools/heap_by_owner.py). BENCHMARKS.md, session 6.
#
#   bench/heap.sh [--conns 4000] [--out DIR]      (needs heaptrack: apt-get install heaptrack)
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
CONNS=4000
OUT="${TMPDIR:-/tmp}/herald-heap"
while [ $# -gt 0 ]; do
  case "$1" in
    --conns) CONNS="$2"; shift ;;
    --out) OUT="$2"; shift ;;
    -h|--help) sed -n 2,7p "$0"; exit 0 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
command -v heaptrack >/dev/null || { echo "heap.sh: heaptrack is needed (apt-get install heaptrack)" >&2; exit 1; }
ulimit -n 20000 2>/dev/null || true
(cd "$ROOT" && cargo build --release --quiet)
cargo build --release --quiet --manifest-path "$HERE/loadgen/Cargo.toml"
rm -rf "$OUT"; mkdir -p "$OUT"
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
SECRET=bench-secret-0123456789abcdef0123456789
env HERALD__SERVER__HOST=127.0.0.1 HERALD__SERVER__PORT="$PORT" HERALD__AUTH__JWT_SECRET="$SECRET" \
  HERALD__STORAGE__DATA_DIR="$OUT/data" HERALD__API__KEYS=bench-key HERALD__LIMITS__MAX_CONNECTIONS=20000 \
  HERALD__LIMITS__CONNECTS_PER_IP_PER_MINUTE=0 RUST_LOG=warn \
  heaptrack -o "$OUT/heaptrack" "$ROOT/target/release/herald" > "$OUT/herald.log" 2>&1 &
TRACKED=$!
for _ in $(seq 100); do curl -fs "http://127.0.0.1:$PORT/health" >/dev/null 2>&1 && break; sleep 0.3; done
"$HERE/loadgen/target/release/herald-loadgen" connect --url "http://127.0.0.1:$PORT" --secret "$SECRET" \
  --conns "$CONNS" --workers 1 --join-room team-updates --connect-concurrency 64 --hold-secs 8 --max-secs 120 --src-ips 8 \
  2>&1 | grep '^\[' || true
sleep 3 # the load generator's sockets close first: what is still allocated at exit is then a leak
pkill -INT -f "$ROOT/target/release/herald" || true
wait "$TRACKED" || true
heaptrack_print -f "$OUT"/heaptrack*.zst --flamegraph-cost-type peak -F "$OUT/peak.flamegraph" \
  --print-peaks 0 --print-allocators 0 --print-temporary 0 --print-leaks 0 --print-histogram 0 | tail -4
python3 "$HERE/tools/heap_by_owner.py" "$OUT/peak.flamegraph" "$CONNS" | tee "$OUT/by-owner.md"
