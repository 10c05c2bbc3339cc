#!/usr/bin/env python3
"""Top heap owners at the peak snapshot of a valgrind massif file, grouped by the first frames
from the server's crates (hyper, engineioxide, socketioxide, tungstenite, tokio, herald...).

    valgrind --tool=massif --massif-out-file=massif.out --threshold=0.5 target/release/herald
    python3 bench/tools/massif_top.py massif.out [connections]
"""
import re
import sys

path = sys.argv[1]
conns = int(sys.argv[2]) if len(sys.argv) > 2 else 0
lines = open(path).read().split("\n")
snaps = []
for i, l in enumerate(lines):
    if l.startswith("snapshot="):
        j = i
        while not lines[j].startswith("mem_heap_B="):
            j += 1
        k = j
        while not lines[k].startswith("heap_tree="):
            k += 1
        if lines[k] != "heap_tree=empty":
            snaps.append((int(lines[j].split("=")[1]), k))
heap, k = max(snaps)
print(f"peak heap {heap / 1e6:.2f} MB" + (f" = {heap / conns / 1024:.1f} KiB per connection ({conns})" if conns else ""))
KEYS = ("engineioxide", "socketioxide", "hyper", "tungstenite", "herald", "axum", "tokio::runtime::task",
        "tokio::sync", "tokio::net", "mio", "tower", "http::")
pat = re.compile(r"^( *)n(\d+): (\d+) (.*)$")
stack, agg = [], {}
for line in lines[k + 1:]:
    if line.startswith("snapshot="):
        break
    m = pat.match(line)
    if not m:
        continue
    depth, children, size = len(m.group(1)), int(m.group(2)), int(m.group(3))
    fn = re.sub(r" \(.*?\)$", "", re.sub(r"^0x[0-9A-F]+: ", "", m.group(4)))
    stack = stack[:depth] + [fn]
    if children == 0 and size > 0:
        path_ = [s for s in stack if any(x in s for x in KEYS)][:3]
        key = " <- ".join(p[:80] for p in path_) or "(other)"
        agg[key] = agg.get(key, 0) + size
for key, size in sorted(agg.items(), key=lambda x: -x[1])[:20]:
    per = f"{size / conns / 1024:6.2f} KiB/conn  " if conns else ""
    print(f"{size / 1e6:7.2f} MB  {per}{key}")
