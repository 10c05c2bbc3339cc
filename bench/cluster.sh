#!/usr/bin/env bash
# Herald as a cluster: N release instances sharing one redis-server, the load generator's workers
# spread over them (worker i connects to instance i mod N), every socket in role_ops.
#
#   bench/cluster.sh [--instances 5] [--conns 99900] [--workers 10] [--messages 20] [--out DIR]
#                    [--redis-cluster]   a Redis Cluster (3 masters + 3 replicas, redis-cli --cluster
#                                        create) instead of one redis-server; instances get
#                                        redis+cluster:// with the seeds
#
# Runs two scenarios and appends their JSON lines to DIR/results.jsonl (default
# bench/results/cluster):
#   connect  hold every connection; RSS of all instances together, per connection
#   fanout   POST /api/v1/notify to role_ops on instance 1: each notification is stored once and
#            reaches every socket on every instance (relay through Redis); time until the last has it
#
# Loopback only; each process (every instance and every load-generator worker) holds at most
# 20,000 open files, so an instance takes at most ~19,980 sockets; bounded by --max-secs.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
INSTANCES=5
CONNS=99900
WORKERS=10
MESSAGES=20
OUT="$HERE/results/cluster"
REDIS_CLUSTER=0
while [ $# -gt 0 ]; do
  case "$1" in
    --instances) INSTANCES="$2"; shift ;;
    --conns) CONNS="$2"; shift ;;
    --workers) WORKERS="$2"; shift ;;
    --messages) MESSAGES="$2"; shift ;;
    --out) OUT="$2"; shift ;;
    --redis-cluster) REDIS_CLUSTER=1 ;;
    -h|--help) sed -n 2,18p "$0"; exit 0 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
mkdir -p "$OUT"
RESULTS="$OUT/results.jsonl"
ulimit -n 20000 2>/dev/null || ulimit -n "$(ulimit -Hn)"
if [ "$(ulimit -n)" -gt 20000 ]; then ulimit -n 20000; fi

SECRET=bench-secret
KEY=bench-key
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
log() { echo "[cluster $(date +%H:%M:%S)] $*" >&2; }

(cd "$ROOT" && cargo build --release --quiet)
cargo build --release --quiet --manifest-path "$HERE/loadgen/Cargo.toml"
LOADGEN="$HERE/loadgen/target/release/herald-loadgen"

PIDS=()
cleanup() { for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

# A port whose cluster bus port (+10000) is free too.
free_cluster_port() {
  python3 -c '
import socket
while True:
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]
    if p < 55000:
        b = socket.socket()
        try:
            b.bind(("127.0.0.1", p + 10000)); print(p); break
        except OSError:
            pass
'
}

if [ "$REDIS_CLUSTER" = 1 ]; then
  NODES=()
  for n in 1 2 3 4 5 6; do
    port=$(free_cluster_port); mkdir -p "$OUT/redis-node-$port"
    (cd "$OUT/redis-node-$port" && exec redis-server --port "$port" --bind 127.0.0.1 --cluster-enabled yes \
      --cluster-config-file nodes.conf --cluster-node-timeout 2000 --save '' --appendonly no --loglevel warning) > "$OUT/redis-$port.log" 2>&1 &
    PIDS+=($!); NODES+=("127.0.0.1:$port")
  done
  for node in "${NODES[@]}"; do
    for _ in $(seq 50); do redis-cli -p "${node##*:}" ping >/dev/null 2>&1 && break; sleep 0.1; done
  done
  redis-cli --cluster create "${NODES[@]}" --cluster-replicas 1 --cluster-yes > "$OUT/redis-cluster-create.log"
  for _ in $(seq 100); do redis-cli -p "${NODES[0]##*:}" cluster info | grep -q 'cluster_state:ok' && break; sleep 0.2; done
  REDIS_URL="redis+cluster://${NODES[0]},${NODES[1]},${NODES[2]}"
  REDIS_KIND="redis-cluster"
else
  REDIS_PORT=$(free_port)
  redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no --loglevel warning > "$OUT/redis.log" 2>&1 &
  PIDS+=($!)
  for _ in $(seq 50); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done
  REDIS_URL="redis://127.0.0.1:$REDIS_PORT/0"
  REDIS_KIND="redis"
fi

URLS=(); HERALD_PIDS=()
per_instance=$(( (CONNS + INSTANCES - 1) / INSTANCES + 10 ))
for i in $(seq 1 "$INSTANCES"); do
  port=$(free_port)
  env HERALD__SERVER__HOST=127.0.0.1 HERALD__SERVER__PORT="$port" HERALD__SERVER__NODE_ID="bench-$i" HERALD__STORAGE__DATA_DIR="$OUT/data-$i" \
    HERALD__AUTH__JWT_SECRET="$SECRET" HERALD__API__KEYS="$KEY" HERALD__REDIS__URL="$REDIS_URL" \
    HERALD__LIMITS__MAX_CONNECTIONS="$per_instance" HERALD__LIMITS__CONNECTS_PER_IP_PER_MINUTE=0 \
    RUST_LOG=warn "$ROOT/target/release/herald" > "$OUT/herald-$i.log" 2>&1 &
  PIDS+=($!); HERALD_PIDS+=($!); URLS+=("http://127.0.0.1:$port")
done
for url in "${URLS[@]}"; do
  for _ in $(seq 100); do
    [ "$(curl -fs "$url/ready" -o /dev/null -w '%{http_code}' || true)" = 200 ] && break
    sleep 0.1
  done
done
log "$INSTANCES instances ready: ${URLS[*]} ($REDIS_URL)"

socket_urls=$(IFS=,; echo "${URLS[*]}")
pids=$(IFS=,; echo "${HERALD_PIDS[*]}")
common=(--url "${URLS[0]}" --socket-urls "$socket_urls" --server-pid "$pids" --secret "$SECRET" --api-key "$KEY"
  --server-name "herald-x$INSTANCES" --conns "$CONNS" --workers "$WORKERS" --src-ips 8 --role ops
  --connect-concurrency 32 --max-secs 300 --out "$RESULTS" --tag "cluster-$INSTANCES-$REDIS_KIND")

log "connect: $CONNS sockets over $INSTANCES instances"
timeout 500 "$LOADGEN" connect "${common[@]}" --hold-secs 10
for url in "${URLS[@]}"; do curl -fs "$url/health" | python3 -c 'import json,sys; h=json.load(sys.stdin); print(h["node_id"] if "node_id" in h else "", h["connections"], h.get("redis"))' >&2 || true; done

log "fanout: $MESSAGES notifications to role_ops, posted on instance 1"
timeout 500 "$LOADGEN" fanout "${common[@]}" --messages "$MESSAGES" --msg-timeout-secs 20 --gap-ms 200
log "results in $RESULTS"
