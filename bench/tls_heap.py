"""A unit's heap after many TLS links to a real broker, with glibc's default mmap threshold and
with the one `redy.lifetime.fix_mmap_threshold` sets (issue 30: a governance unit grew while its
neighbours' brokers failed and came back).

Each run is a fresh child process: it starts one mosquitto (a node broker's grid listener,
mutual TLS), then opens and closes a link to it `--links` times through `PeerLinks` as a
governance unit does after a fault, and reads its own `[heap]` resident size from
/proc/self/smaps after `--warmup` links (the reference, once the first links have warmed the
allocator up) and at the end (steady state: the heap no longer changes over the last fifth).
Three runs of each; the figure to read is the end heap with the fixed threshold as a ratio to
the default's.

    python bench/tls_heap.py [--links 400] [--warmup 40] [--json] [--docs]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path


def _heap_kb() -> int:
    heap, name = 0, ""
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split()
            if head and "-" in head[0] and not head[0].endswith(":"):
                name = head[5] if len(head) > 5 else ""
            elif line.startswith("Rss:") and name == "[heap]":
                heap += int(head[1])
    return heap


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _links(n: int, warmup: int) -> dict[str, list[int]]:
    from redy import pki
    from redy.brokers.backends import ProcessBroker
    from redy.brokers.config import NodeBroker
    from redy.transport.peer_links import PeerLinks

    state = Path(tempfile.mkdtemp(prefix="redy-tls-heap-"))
    config = NodeBroker(
        node="gas-1", port=_free_port(), grid_port=_free_port(), unit_port=_free_port(),
        state_dir=state, units={},
    )  # fmt: skip
    broker = ProcessBroker(config, die_with_parent=True)
    broker.start()
    heaps: list[int] = []
    try:
        links = PeerLinks("me", pki.issue(state, "me", ["127.0.0.1"]), timeout_s=3.0)
        for i in range(n):
            await links.publish(config.grid_uri, "redy/gas-1/grid/gossip/me", b"{}", node="gas-1")
            await links.close(config.grid_uri)
            if i + 1 == warmup or (i + 1) % max(1, n // 10) == 0:
                heaps.append(_heap_kb())
    finally:
        broker.stop()
    return {"heap_kb": heaps}


def _child(args: argparse.Namespace) -> None:
    if args.fixed:
        from redy.lifetime import fix_mmap_threshold

        if not fix_mmap_threshold():
            sys.exit("mallopt refused the threshold (not glibc?)")
    print(json.dumps(asyncio.run(_links(args.links, args.warmup))))


def _idle_share(seconds: float = 1.0) -> float:
    def times() -> tuple[int, int]:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        return v[3] + v[4], sum(v)

    import time

    i0, t0 = times()
    time.sleep(seconds)
    i1, t1 = times()
    return (i1 - i0) / max(1, t1 - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--links", type=int, default=400)
    ap.add_argument("--warmup", type=int, default=40)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--fixed", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        _child(args)
        return
    rows = []
    idle = _idle_share()
    for run in range(1, args.runs + 1):
        for fixed in (False, True):
            cmd = [sys.executable, __file__, "--child", "--links", str(args.links)]
            cmd += ["--warmup", str(args.warmup)] + (["--fixed"] if fixed else [])
            env = {**os.environ, "PYTHONUNBUFFERED": "1"}
            out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
            heaps = json.loads(out.stdout.strip().splitlines()[-1])["heap_kb"]
            rows.append({"run": run, "fixed": fixed, "after_warmup_kb": heaps[0],
                         "end_kb": heaps[-1], "series_kb": heaps})  # fmt: skip
    report = {"links": args.links, "warmup": args.warmup, "host_idle": round(idle, 2), "runs": rows}
    default = statistics.median(r["end_kb"] for r in rows if not r["fixed"])
    fixed = statistics.median(r["end_kb"] for r in rows if r["fixed"])
    report["end_ratio_fixed_to_default"] = round(fixed / default, 3)
    if args.json:
        print(json.dumps(report))
        return
    print(f"{args.links} TLS links opened and closed; host idle {idle:.0%} before the runs")
    print("| run | threshold | heap after warm-up, KiB | heap at the end, KiB | last fifth grew |")
    print("|---|---|---|---|---|")
    for r in rows:
        s = r["series_kb"]
        tail = s[-1] - s[max(0, len(s) - 3)]
        kind = "fixed 128 KiB" if r["fixed"] else "glibc default"
        print(f"| {r['run']} | {kind} | {r['after_warmup_kb']} | {r['end_kb']} | {tail:+d} KiB |")
    print(f"median end heap, fixed / default: {report['end_ratio_fixed_to_default']}")


if __name__ == "__main__":
    if "--child" in sys.argv:
        main()
    else:
        import docpage

        with docpage.recorded("tls_heap"):  # --docs: its page of the site too
            main()
