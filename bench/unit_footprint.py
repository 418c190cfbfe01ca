"""Memory and CPU of figure3's processes, separate-process mode against --compose mode.

Launches launch/figure3.yaml twice (each for `--seconds`), samples every process of the launch
(RSS and PSS from /proc, CPU time over the window), prints a table per role, the per-node totals,
the compose/process ratio, and how many figure3-style nodes one machine of this size would hold
in each mode (the smaller of the memory bound, 80 % of RAM, and the CPU bound, 80 % of cores).

    python bench/unit_footprint.py [--seconds 12] [--docs]

With --docs it also writes its page of the documentation site (docs/benchmarks/runs/).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import docpage

ROOT = Path(__file__).resolve().parents[1]
TICK = os.sysconf("SC_CLK_TCK")


def _kb(pid: int, field: str, path: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/{path}").read_text().splitlines():
            if line.startswith(field):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _cpu_s(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICK
    except (OSError, IndexError):
        return 0.0


def _role(cmd: str) -> str:
    for role in ("detection", "action", "governance", "compose"):
        if f"redy {role}" in cmd or f"redy.launch.{role}" in cmd:
            return role
    return "broker" if "mosquitto" in cmd else "other"


def _procs(state: Path) -> dict[int, str]:
    out = subprocess.run(["ps", "-ww", "-eo", "pid=,args="], capture_output=True, text=True)
    found = {}
    for line in out.stdout.splitlines():
        pid, _, cmd = line.strip().partition(" ")
        if str(state) in cmd and "redy launch" not in cmd:
            found[int(pid)] = _role(cmd)
    return found


def measure(compose: bool, seconds: float) -> dict[str, list[tuple[int, int, float]]]:
    with tempfile.TemporaryDirectory() as tmp:
        state = Path(tmp)
        argv = [
            sys.executable,
            "-m",
            "redy",
            "launch",
            str(ROOT / "launch" / "figure3.yaml"),
            "--duration",
            str(seconds + 6),
            "--state-dir",
            str(state),
        ]
        if compose:
            argv.append("--compose")
        launcher = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(4)  # start-up is not steady state
        procs = _procs(state)
        cpu0 = {p: _cpu_s(p) for p in procs}
        time.sleep(seconds)
        rows: dict[str, list[tuple[int, int, float]]] = defaultdict(list)
        for pid, role in procs.items():
            cpu = (_cpu_s(pid) - cpu0[pid]) / seconds
            rows[role].append((_kb(pid, "VmRSS", "status"), _kb(pid, "Pss:", "smaps_rollup"), cpu))
        launcher.wait(60)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=12.0)
    ap.add_argument("--docs", action="store_true", help="write docs/benchmarks/runs/ too")
    args = ap.parse_args()
    with docpage.recorded("unit_footprint", enabled=args.docs):
        _run(args.seconds)


def _run(seconds: float) -> None:
    mem_budget_kb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024 * 0.8
    cores = os.cpu_count() or 1
    totals = {}
    for compose in (False, True):
        mode = "compose" if compose else "process"
        rows = measure(compose, seconds)
        print(f"== {mode} mode (figure3: 3 nodes, 7 units, 3 brokers)")
        rss = pss = cpu = 0.0
        for role, samples in sorted(rows.items()):
            n = len(samples)
            r = sum(s[0] for s in samples) / n
            p = sum(s[1] for s in samples) / n
            c = sum(s[2] for s in samples) / n
            rss += r * n
            pss += p * n
            cpu += c * n
            print(
                f"  {role:<11} x{n}: RSS {r / 1024:6.1f} MiB  PSS {p / 1024:6.1f} MiB  "
                f"CPU {c * 100:5.2f} %"
            )
        per_node_pss, per_node_cpu = pss / 3, cpu / 3
        by_mem = int(mem_budget_kb / per_node_pss)
        by_cpu = int(0.8 * cores / per_node_cpu) if per_node_cpu else by_mem
        totals[mode] = (per_node_pss, per_node_cpu, min(by_mem, by_cpu))
        print(
            f"  per node: PSS {per_node_pss / 1024:.1f} MiB (RSS {rss / 3 / 1024:.1f} MiB), "
            f"CPU {per_node_cpu * 100:.2f} % of a core -> nodes per machine: "
            f"{min(by_mem, by_cpu)} (memory bound {by_mem}, CPU bound {by_cpu})"
        )
    p, c = totals["process"], totals["compose"]
    print(
        f"compose / process: memory per node {c[0] / p[0]:.2f}x, CPU per node "
        f"{c[1] / p[1] if p[1] else float('nan'):.2f}x, nodes per machine {c[2] / p[2]:.2f}x"
    )


if __name__ == "__main__":
    main()
