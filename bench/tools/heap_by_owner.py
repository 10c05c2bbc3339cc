#!/usr/bin/env python3
"""Heap per connection by owner, from heaptrack's peak flamegraph (`heaptrack_print
--flamegraph-cost-type peak -F FILE`): each allocation is charged to the innermost frame of
Herald, socketioxide, engineioxide, tungstenite, hyper/axum, http or SQLite on its stack, and
sorted into the categories BENCHMARKS.md uses (session 6).

    heap_by_owner.py FG SOCKETS                     one profile
    heap_by_owner.py FG_BEFORE SOCKETS FG_AFTER SOCKETS   two, side by side
"""
import re,collections,sys
def clean(f): return re.sub(r'::h[0-9a-f]{16}','',re.sub(r'\$u7b\$\$u7b\$closure\$u7d\$\$u7d\$','{closure}',f)).replace('$LT$','<').replace('$GT$','>').replace('$C$',',')
crates=['herald::','engineioxide','socketioxide','tungstenite','hyper','axum','http::','sqlite3','rusqlite','matchit','tower']
def owner(fs):
    for i in range(len(fs)-1,-1,-1):
        if any(c in fs[i] for c in crates): return i
    return None
def cat(fs):
    i=owner(fs)
    if i is None: return 'other (runtime, start-up)'
    o=fs[i]; rest=fs[i+1:]
    spawned=any('tokio::task::spawn' in f for f in rest)
    if o.startswith('herald::'):
        if 'watch_expiry' in o: return 'Herald: token expiry task, one per socket'
        for k,n in [('presence','Herald: presence (per user)'),('seen','Herald: seen marks / sessions (per user)'),('store::sqlite','Herald: user rooms cache, SQLite'),('limits','Herald: limits'),('socket::events','Herald: per-socket event state'),]:
            if k in o: return n
        return 'Herald: other ('+o.split(' ')[0][:60]+')'
    if 'socketioxide::extensions' in o: return 'socketioxide extensions (holding Herald\'s per-socket values)'
    if 'CoreLocalAdapter' in o: return 'socketioxide: room index'
    if 'socketioxide' in o: return 'socketioxide: socket, event handlers'
    if 'create_session' in o and any('mpsc::block' in f for f in rest): return 'engineioxide: outgoing packet channel (first block, 32 slots)'
    if 'create_session' in o or 'Socket<D>::new' in o: return 'engineioxide: socket state (Arc<Socket>, channels)'
    if 'spawn_heartbeat' in o: return 'engineioxide: heartbeat task'
    if 'ws::new_req::{closure}' in o and spawned: return 'engineioxide: write task (forward_to_socket)'
    if 'ws::new_req' in o and spawned: return 'engineioxide: connection task (upgrade, read loop)'
    if 'engineioxide' in o: return 'engineioxide: other'
    if 'tungstenite' in o: return 'tungstenite: WebSocket state, read buffer'
    if 'http::' in o: return 'request head kept per socket (headers, extensions)'
    if 'sqlite3' in o or 'rusqlite' in o: return 'SQLite page cache'
    return 'axum / hyper: connection'
def run(path):
    agg=collections.Counter(); tot=0
    for l in open(path):
        stack,_,cost=l.rstrip().rpartition(' ')
        try: cost=int(cost)
        except: continue
        tot+=cost; agg[cat([clean(f) for f in stack.split(';')])]+=cost
    return agg,tot
profiles = [(run(sys.argv[i]), int(sys.argv[i + 1])) for i in range(1, len(sys.argv) - 1, 2)]
keys = sorted({k for (agg, _), _ in profiles for k in agg}, key=lambda k: -profiles[-1][0][0].get(k, 0))
names = ["bytes per socket"] if len(profiles) == 1 else ["before: bytes per socket", "after"]
print("| what (heaptrack, peak, by the innermost crate frame) | " + " | ".join(names) + " |")
print("|---|" + "---|" * len(profiles))
for k in keys:
    values = [agg.get(k, 0) / n for (agg, _), n in profiles]
    if all(v < 1 for v in values):
        continue
    print(f"| {k} | " + " | ".join(f"{v:,.0f}" for v in values) + " |")
print("| **heap at peak, in all** | " + " | ".join(f"**{tot / n:,.0f}**" for (_, tot), n in profiles) + " |")
