#!/usr/bin/env python3
"""Plots and a markdown summary from herald-loadgen JSON lines.

    python bench/plot.py OUTDIR [OTHER_RESULT_DIR ...]

Reads OUTDIR/results.jsonl (and each other dir's results.jsonl), writes into OUTDIR:
  latency_vs_connections.png  fan-out: time until the last socket has the message, vs room size
  latency_vs_rate.png         targeted: end-to-end p50/p99 and delivered/s vs offered rate
  cpu_efficiency.png          deliveries per server CPU-second
  summary.md                  side-by-side table, then one table per scenario with every server's
                              figures as a multiple of the Rust floor's (floor-rust), when it ran
"""
import json
import math
import os
import sys
from collections import defaultdict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

COLORS = {"herald": "tab:red", "node": "tab:green", "python": "tab:blue", "flask": "tab:purple",
          "floor-rust": "tab:gray", "floor-node": "tab:olive"}
ORDER = ["herald", "node", "python", "flask", "floor-rust", "floor-node"]
FLOOR = "floor-rust"  # the reference of the per-scenario tables' multiples


def load(dirs):
    rows = []
    for d in dirs:
        path = os.path.join(d, "results.jsonl")
        if not os.path.exists(path):
            continue
        with open(path) as f:
            for line in f:
                line = line.strip()
                if line:
                    try:
                        rows.append(json.loads(line))
                    except ValueError:
                        pass
    return rows


def servers(rows):
    seen = {r.get("server") for r in rows}
    return [s for s in ORDER if s in seen] + sorted(s for s in seen if s not in ORDER and s)


def fmt(x, digits=1):
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    if isinstance(x, (int, float)) and abs(x) >= 1000:
        return f"{x:,.0f}"
    return f"{x:.{digits}f}"


def plot_fanout(rows, out):
    fan = [r for r in rows if r.get("scenario") == "fanout" and r.get("members")]
    if not fan:
        return
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for s in servers(fan):
        by_size = {}
        for r in fan:
            if r["server"] == s:
                by_size[r["members"]] = (r["members"], r.get("last_socket_p50_ms"), r.get("last_socket_p99_ms"))
        pts = sorted(by_size.values())
        xs = [p[0] for p in pts]
        ax.plot(xs, [p[1] for p in pts], "o-", color=COLORS.get(s), label=f"{s} p50")
        ax.plot(xs, [p[2] for p in pts], "s--", color=COLORS.get(s), label=f"{s} p99")
    ax.axhline(50, color="gray", lw=0.8, ls=":")
    ax.text(0.01, 50, "Herald target: p99 ≤ 50 ms at 10k ", color="gray", fontsize=8,
            transform=ax.get_yaxis_transform(), va="bottom")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("sockets in the room")
    ax.set_ylabel("send → last socket has it (ms)")
    ax.set_title("Fan-out: HTTP send → last socket has it, vs room size")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "latency_vs_connections.png"), dpi=110)
    plt.close(fig)


def series_key(r):
    ing = r.get("ingress", "http")
    return f"{r['server']} {ing}" + (f" batch {r.get('batch')}" if ing == "http" else "")


def plot_targeted(rows, out):
    tgt = [r for r in rows if r.get("scenario") == "targeted" and r.get("rate_target")]
    if not tgt:
        return
    groups = defaultdict(list)
    for r in tgt:
        groups[(series_key(r), r["server"], r.get("ingress", "http"), r.get("batch", 1), r.get("conns"))].append(r)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.8))
    styles = {("http", 1): "o-", ("http", 100): "s--", ("redis", 1): "^:"}
    for (label, server, ing, batch, conns), rs in sorted(groups.items(), key=lambda kv: (ORDER.index(kv[0][1]) if kv[0][1] in ORDER else 9, kv[0][0])):
        rs = sorted(rs, key=lambda r: r["rate_target"])
        xs = [r["rate_target"] for r in rs]
        st = styles.get((ing, batch), "x-")
        ax1.plot(xs, [r.get("p99_ms") for r in rs], st, color=COLORS.get(server), label=f"{label} ({conns} conns) p99")
        ax2.plot(xs, [r.get("delivered_per_sec") for r in rs], st, color=COLORS.get(server), label=f"{label}")
    for ax in (ax1, ax2):
        ax.set_xscale("log")
        ax.grid(True, which="both", alpha=0.3)
        ax.set_xlabel("offered deliveries/s")
    ax1.set_yscale("log")
    ax1.set_ylabel("end-to-end p99 (ms)")
    ax1.set_title("Targeted notifications: latency vs rate")
    lo, hi = min(r["rate_target"] for r in tgt), max(r["rate_target"] for r in tgt)
    ax2.plot([lo, hi], [lo, hi], color="gray", lw=0.8, ls=":")
    ax2.set_yscale("log")
    ax2.set_ylabel("delivered/s")
    ax2.set_title("Delivered vs offered (dotted: ideal)")
    ax1.legend(fontsize=7)
    ax2.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "latency_vs_rate.png"), dpi=110)
    plt.close(fig)


def best_targeted(rows, server, ingress, batch):
    rs = [r for r in rows if r.get("scenario") == "targeted" and r.get("server") == server
          and r.get("ingress", "http") == ingress and r.get("batch", 1) == batch and r.get("rate_target")]
    ok = [r for r in rs if not r.get("broke")]
    best = max(ok, key=lambda r: r.get("delivered_per_sec") or 0) if ok else None
    peak = max(rs, key=lambda r: r.get("delivered_per_sec") or 0) if rs else None
    return best, peak


def efficiency(rows, server):
    """Deliveries per CPU-second: fan-out (largest room) and targeted (HTTP batch 100, best step)."""
    fan = [r for r in rows if r.get("scenario") == "fanout" and r.get("server") == server and r.get("deliveries_per_cpu_sec")]
    fan_eff = max(fan, key=lambda r: r["members"])["deliveries_per_cpu_sec"] if fan else None
    tgt = [r for r in rows if r.get("scenario") == "targeted" and r.get("server") == server
           and r.get("ingress", "http") == "http" and r.get("deliveries_per_cpu_sec") and (r.get("server_cpu_secs") or 0) > 0.2]
    by_batch = {}
    for b in (1, 100):
        rs = [r for r in tgt if r.get("batch") == b]
        by_batch[b] = max(r["deliveries_per_cpu_sec"] for r in rs) if rs else None
    return fan_eff, by_batch[1], by_batch[100]


def plot_efficiency(rows, out):
    ss = servers(rows)
    if not ss:
        return
    vals = {s: efficiency(rows, s) for s in ss}
    labels = ["fan-out", "targeted HTTP 1/req", "targeted HTTP 100/req"]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    width = 0.8 / len(ss)
    for i, s in enumerate(ss):
        ys = [v if v else 0 for v in vals[s]]
        ax.bar([x + i * width for x in range(3)], ys, width, color=COLORS.get(s), label=s)
    ax.set_xticks([x + width * (len(ss) - 1) / 2 for x in range(3)])
    ax.set_xticklabels(labels)
    ax.set_yscale("log")
    ax.set_ylabel("deliveries per server CPU-second")
    ax.set_title("CPU efficiency (higher is better)")
    ax.grid(True, axis="y", which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(out, "cpu_efficiency.png"), dpi=110)
    plt.close(fig)


def summary(rows, out):
    ss = servers(rows)
    lines = ["| metric | " + " | ".join(ss) + " |", "|---|" + "---|" * len(ss)]

    def row(name, f):
        lines.append(f"| {name} | " + " | ".join(f(s) for s in ss) + " |")

    conn = lambda s: [r for r in rows if r.get("scenario") == "connect" and r.get("server") == s]
    for n in sorted({r["conns"] for r in rows if r.get("scenario") == "connect"}):
        row(f"connect {n}: connected", lambda s, n=n: next((f"{r['connected']}/{n}" for r in conn(s) if r["conns"] == n), "–"))
        row(f"connect {n}: connects/s", lambda s, n=n: next((fmt(r.get("connect_rate"), 0) for r in conn(s) if r["conns"] == n), "–"))
        row(f"connect {n}: RSS KB/connection", lambda s, n=n: next((fmt(r.get("rss_per_conn_kb")) for r in conn(s) if r["conns"] == n), "–"))
        row(f"connect {n}: server RSS MB", lambda s, n=n: next((fmt((r.get("rss_after_kb") or 0) / 1024) for r in conn(s) if r["conns"] == n), "–"))
    fan = lambda s: [r for r in rows if r.get("scenario") == "fanout" and r.get("server") == s]
    for n in sorted({r["conns"] for r in rows if r.get("scenario") == "fanout"}):
        def cell(s, n=n):
            r = next((r for r in fan(s) if r["conns"] == n), None)
            if not r:
                return "–"
            inc = f", {r['incomplete_messages']} incomplete" if r.get("incomplete_messages") else ""
            return f"{fmt(r.get('last_socket_p50_ms'))} / {fmt(r.get('last_socket_p99_ms'))} / {fmt(r.get('last_socket_max_ms'))} ({r.get('messages')} msgs{inc})"
        row(f"fan-out {n}: last socket p50 / p99 / max ms", cell)
        row(f"fan-out {n}: deliveries per CPU-s", lambda s, n=n: next((fmt(r.get("deliveries_per_cpu_sec"), 0) for r in fan(s) if r["conns"] == n), "–"))
        if any(r.get("server_cpu_ms_per_message") is not None for r in rows if r.get("scenario") == "fanout"):
            row(f"fan-out {n}: server CPU ms per message", lambda s, n=n: next((fmt(r.get("server_cpu_ms_per_message")) for r in fan(s) if r["conns"] == n), "–"))
    for ing, batch, label in (("http", 1, "HTTP, 1 user/request"), ("http", 100, "HTTP, 100 users/request"), ("redis", 1, "Redis PUBLISH")):
        def cell(s, ing=ing, batch=batch):
            na = next((r for r in rows if r.get("server") == s and r.get("ingress") == ing and r.get("status") == "n/a"), None)
            if na:
                return "n/a"
            best, peak = best_targeted(rows, s, ing, batch)
            if not best and not peak:
                return "–"
            b = best or peak
            txt = f"{fmt(b.get('delivered_per_sec'), 0)}/s (p50 {fmt(b.get('p50_ms'))}, p99 {fmt(b.get('p99_ms'))} ms)"
            if peak and best and peak is not best:
                txt += f"; breaks at {fmt(peak.get('rate_target'), 0)}/s offered"
            elif peak and not best:
                txt += " (broke at first step)"
            return txt
        if any(r.get("ingress", "http") == ing and r.get("batch", 1) == batch for r in rows if r.get("scenario") == "targeted"):
            row(f"targeted, {label}: best sustained", cell)
    eff = {s: efficiency(rows, s) for s in ss}
    names = ["fan-out", "targeted 1/req", "targeted 100/req"]
    for i, name in enumerate(names):
        row(f"deliveries per CPU-s, {name}", lambda s, i=i: fmt(eff[s][i], 0))
        if "herald" in ss:
            row(f"Herald advantage, {name}", lambda s, i=i: ("–" if s == "herald" or not eff[s][i] or not eff["herald"][i]
                                                           else f"{eff['herald'][i] / eff[s][i]:.1f}x"))
    text = "\n".join(lines) + "\n" + per_scenario(rows)
    with open(os.path.join(out, "summary.md"), "w") as f:
        f.write(text)
    print(text)


def times(x, ref):
    """` (×r)`: x as a multiple of the floor's figure ref."""
    if not isinstance(x, (int, float)) or not isinstance(ref, (int, float)) or not ref or math.isnan(x) or math.isnan(ref):
        return ""
    r = x / ref
    return f" (×{r:.2f})" if r < 10 else f" (×{r:.0f})"


def per_scenario(rows):
    """One table per scenario, a row per server; (×r) = that server's figure ÷ floor-rust's."""
    ss = servers(rows)
    out = ["", f"Per scenario; (×r) is the server's figure divided by the Rust floor's ({FLOOR}).", ""]

    def table(title, header, cells):
        out.append(f"**{title}**")
        out.append("")
        out.append("| server | " + " | ".join(header) + " |")
        out.append("|---|" + "---|" * len(header))
        for s in ss:
            c = cells(s)
            if c is not None:
                out.append(f"| {s} | " + " | ".join(c) + " |")
        out.append("")

    def one(scenario, key, val):
        return lambda s: next((r for r in rows if r.get("scenario") == scenario and r.get("server") == s and r.get(key) == val), None)

    for n in sorted({r["conns"] for r in rows if r.get("scenario") == "connect"}):
        get = one("connect", "conns", n)
        f = get(FLOOR) or {}

        def cells(s, get=get, f=f, n=n):
            r = get(s)
            if not r:
                return None
            mb = (r.get("rss_after_kb") or 0) / 1024
            fmb = (f.get("rss_after_kb") or 0) / 1024 or None
            return [f"{r['connected']}/{n} ({r.get('polling', 0)} polling)",
                    fmt(r.get("connect_rate"), 0) + times(r.get("connect_rate"), f.get("connect_rate")),
                    fmt(r.get("rss_per_conn_kb")) + times(r.get("rss_per_conn_kb"), f.get("rss_per_conn_kb")),
                    fmt(mb) + times(mb, fmb),
                    fmt(r.get("server_cpu_secs_connect"), 2) + times(r.get("server_cpu_secs_connect"), f.get("server_cpu_secs_connect"))]
        table(f"connect {n} (each socket joins a room, held 3 s)",
              ["connected", "connects/s", "RSS KB per connection", "server RSS MB", "server CPU-s connecting"], cells)

    for n in sorted({r["conns"] for r in rows if r.get("scenario") == "fanout"}):
        get = one("fanout", "conns", n)
        f = get(FLOOR) or {}

        def cells(s, get=get, f=f):
            r = get(s)
            if not r:
                return None
            return [f"{r.get('deliveries')}/{r.get('expected_deliveries')}",
                    fmt(r.get("last_socket_p50_ms")) + times(r.get("last_socket_p50_ms"), f.get("last_socket_p50_ms")),
                    fmt(r.get("last_socket_p99_ms")) + times(r.get("last_socket_p99_ms"), f.get("last_socket_p99_ms")),
                    fmt(r.get("server_cpu_ms_per_message")) + times(r.get("server_cpu_ms_per_message"), f.get("server_cpu_ms_per_message")),
                    fmt(r.get("deliveries_per_cpu_sec"), 0) + times(r.get("deliveries_per_cpu_sec"), f.get("deliveries_per_cpu_sec"))]
        msgs = max((r.get("messages") or 0) for r in rows if r.get("scenario") == "fanout" and r.get("conns") == n)
        table(f"fan-out to {n} sockets ({msgs} notifications, one at a time)",
              ["delivered", "last socket p50 ms", "last socket p99 ms", "server CPU ms per message", "deliveries per CPU-s"], cells)

    for ing, batch, label in (("http", 1, "HTTP, 1 user per request"), ("http", 100, "HTTP, 100 users per request"),
                              ("redis", 1, "Redis PUBLISH notify:user:<id>")):
        steps = [r for r in rows if r.get("scenario") == "targeted" and r.get("ingress", "http") == ing
                 and r.get("batch", 1) == batch and r.get("rate_target")]
        if not steps:
            continue
        # the highest offered rate every server that ran sustained: CPU compared at equal load
        ran = {r["server"] for r in steps}
        ok_rates = [rate for rate in sorted({r["rate_target"] for r in steps})
                    if all(any(r["server"] == s and r["rate_target"] == rate and not r.get("broke") for r in steps) for s in ran)]
        common = ok_rates[-1] if ok_rates else None
        at = lambda s, rate: next((r for r in steps if r["server"] == s and r["rate_target"] == rate), None)
        fbest, _ = best_targeted(rows, FLOOR, ing, batch)
        fc = (at(FLOOR, common) or {}) if common else {}

        def cells(s, ing=ing, batch=batch, common=common, fbest=fbest, fc=fc):
            na = next((r for r in rows if r.get("server") == s and r.get("ingress") == ing and r.get("status") == "n/a"), None)
            if na:
                return ["n/a: " + na.get("reason", ""), "", "", "", ""]
            best, peak = best_targeted(rows, s, ing, batch)
            if not best and not peak:
                return None
            b = best or peak
            fb = fbest or {}
            sustained = (fmt(b.get("delivered_per_sec"), 0) + "/s" + times(b.get("delivered_per_sec"), fb.get("delivered_per_sec"))
                         + ("" if best else " (broke at the first step)"))
            broke = next((r for r in sorted((r for r in steps if r["server"] == s), key=lambda r: r["rate_target"]) if r.get("broke")), None)
            brk = (f"{fmt(broke['rate_target'], 0)}/s → {fmt(broke.get('delivered_per_sec'), 0)}/s, p99 {fmt(broke.get('p99_ms'))} ms"
                   if broke else "– (highest step held)")
            c = at(s, common) if common else None
            cpu = "–"
            if c and c.get("cpu_secs_per_100k_deliveries") is not None:
                cpu = fmt(c["cpu_secs_per_100k_deliveries"], 2) + times(c["cpu_secs_per_100k_deliveries"], fc.get("cpu_secs_per_100k_deliveries"))
            # CPU at this server's highest sustained step, against the floor's at the same step
            own = "–"
            if best and best.get("cpu_secs_per_100k_deliveries") is not None:
                f_same = at(FLOOR, best["rate_target"]) or {}
                own = (f"{fmt(best['rate_target'], 0)}/s: {fmt(best['cpu_secs_per_100k_deliveries'], 2)}"
                       + times(best["cpu_secs_per_100k_deliveries"], f_same.get("cpu_secs_per_100k_deliveries")))
            return [sustained, f"{fmt(b.get('p50_ms'))} / {fmt(b.get('p99_ms'))}", brk, cpu, own]
        table(f"targeted, {label}", ["best sustained (delivered/s)", "p50 / p99 ms there", "first step that breaks",
                                     f"server CPU-s per 100k deliveries at {fmt(common, 0) if common else '–'}/s offered",
                                     "the same at its highest sustained step"], cells)
    return "\n".join(out)


def main():
    if len(sys.argv) < 2:
        print(__doc__)
        return 2
    out = sys.argv[1]
    rows = load(sys.argv[1:])
    if not rows:
        print("no results")
        return 1
    plot_fanout(rows, out)
    plot_targeted(rows, out)
    plot_efficiency(rows, out)
    summary(rows, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
