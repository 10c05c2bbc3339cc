#!/usr/bin/env bash
# What the seen marks cost Redis: N connected sockets (one user each) on one Herald instance with
# Redis, B stored broadcasts one second apart, then Redis's own command counts for the window.
#
#   bench/marks.sh [--conns 10000] [--broadcasts 20] [--herald PATH] [--out DIR] [--legacy]
#
# --legacy: for a Herald from before `storage.*` existed (0.1), to compare with.
#
# Prints the Redis commands (and the keys written by them) per broadcast notification. Loopback
# only; every process it starts is stopped at the end. Needs release builds of Herald
# (`cargo build --release`) and of the load generator (bench/loadgen), as bench/run.sh makes.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
CONNS=10000
BROADCASTS=20
HERALD="$ROOT/target/release/herald"
OUT="${TMPDIR:-/tmp}/herald-marks"
LEGACY=0
while [ $# -gt 0 ]; do
  case "$1" in
    --conns) CONNS="$2"; shift ;;
    --broadcasts) BROADCASTS="$2"; shift ;;
    --herald) HERALD="$2"; shift ;;
    --out) OUT="$2"; shift ;;
    --legacy) LEGACY=1 ;;
    -h|--help) sed -n 2,9p "$0"; exit 0 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
LOADGEN="$HERE/loadgen/target/release/herald-loadgen"
[ -x "$LOADGEN" ] || cargo build --release --quiet --manifest-path "$HERE/loadgen/Cargo.toml"
ulimit -n 20000 2>/dev/null || true
rm -rf "$OUT"; mkdir -p "$OUT"
SECRET=bench-secret-0123456789abcdef0123456789; KEY=bench-api-key
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }
PIDS=()
trap 'for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done' EXIT

RP=$(free_port)
redis-server --port "$RP" --bind 127.0.0.1 --save '' --appendonly no --loglevel warning > "$OUT/redis.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 50); do redis-cli -p "$RP" ping >/dev/null 2>&1 && break; sleep 0.1; done
HP=$(free_port)
env HERALD__SERVER__HOST=127.0.0.1 HERALD__SERVER__PORT="$HP" HERALD__AUTH__JWT_SECRET="$SECRET" HERALD__API__KEYS="$KEY" \
  HERALD__REDIS__URL="redis://127.0.0.1:$RP/0" HERALD__LIMITS__MAX_CONNECTIONS=20000 \
  $([ "$LEGACY" = 1 ] || echo "HERALD__STORAGE__DATA_DIR=$OUT/data") \
  HERALD__LIMITS__CONNECTS_PER_IP_PER_MINUTE=0 RUST_LOG=warn "$HERALD" > "$OUT/herald.log" 2>&1 &
HPID=$!; PIDS+=($HPID)
for _ in $(seq 100); do curl -fs "http://127.0.0.1:$HP/ready" >/dev/null 2>&1 && break; sleep 0.1; done

"$LOADGEN" connect --url "http://127.0.0.1:$HP" --secret "$SECRET" --api-key "$KEY" --server-pid "$HPID" --conns "$CONNS" \
  --workers 1 --src-ips 8 --hold-secs $((BROADCASTS + 30)) --max-secs $((BROADCASTS + 90)) --out "$OUT/connect.jsonl" \
  > "$OUT/loadgen.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 600); do
  n=$(curl -fs "http://127.0.0.1:$HP/health" | python3 -c 'import json,sys; print(json.load(sys.stdin)["connections"])' 2>/dev/null || echo 0)
  [ "$n" -ge "$CONNS" ] && break; sleep 0.1
done
echo "connected: $n sockets" >&2
sleep 3 # connects' own writes settle
redis-cli -p "$RP" CONFIG RESETSTAT >/dev/null
for i in $(seq "$BROADCASTS"); do
  curl -fs -XPOST "http://127.0.0.1:$HP/api/v1/notify" -H "Authorization: Bearer $KEY" -H 'Content-Type: application/json' \
    -d "{\"to\":{\"broadcast\":true},\"type\":\"bench\",\"message\":\"broadcast $i\"}" >/dev/null
  sleep 1
done
sleep 2 # the last flushes
redis-cli -p "$RP" INFO commandstats > "$OUT/commandstats.txt"
python3 - "$OUT/commandstats.txt" "$BROADCASTS" "$CONNS" <<'PY'
import re, sys
path, broadcasts, conns = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
calls = {}
for line in open(path):
    m = re.match(r"cmdstat_(\S+):calls=(\d+)", line)
    if m:
        calls[m.group(1)] = int(m.group(2))
writes = sum(calls.get(c, 0) for c in ("set", "hset", "hsetnx", "hdel", "hincrby", "xadd", "pexpire", "expire", "zadd", "sadd"))
total = sum(calls.values())
print(f"{conns} sockets, {broadcasts} stored broadcasts one second apart, {broadcasts + 2} s window")
print(f"redis commands: {total} ({total / broadcasts:.1f} per broadcast); key writes: {writes} ({writes / broadcasts:.1f} per broadcast)")
print("by command: " + ", ".join(f"{k}={v}" for k, v in sorted(calls.items(), key=lambda kv: -kv[1])))
PY
