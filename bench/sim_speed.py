"""Speed and peak memory of `redy sim membership` and `redy sim balance` (issue 16).

Each run is its own `redy sim ...` process; its wall time and peak RSS (wait4) are printed with
ratios against (a) the core-driven engine (`--engine core`) measured in this same run at
10,000 nodes, (b) PeerSim's CYCLON on the same configuration, measured on a 2-core machine like
this one (issue 16's table; PeerSim itself is not run here), and (c) the issue's targets.

    python bench/sim_speed.py             # core 10^4, fast 10^4 and 10^5, balance (capped)
    python bench/sim_speed.py --million --no-balance   # also 10^6 x 30 (heavy: run it alone)
    python bench/sim_speed.py --quick     # small sizes, to try the script

Membership configuration throughout (the issue's): c = 20, SL = 8, star bootstrap, cyclon
detector, 50 % of the live nodes crash at cycle 50 (at cycle 15 for the 30-cycle 10^6 run).
Balance (default mix, 40 rounds per phase, 3 phases): both engines at a size the core engine
ends in well under a minute (push-sum 2,000 nodes, Flow Updating 300, one epoch), then the fast
engine at 100,000 nodes x 10 epochs against the issue's 5-minute target, measured, not projected,
and against the same runs before Flow Updating gossiped fewer columns (redy.sim.array_balance).
Flow Updating is also run at 100,000 nodes x 2 epochs both ways in the same run: as now (heard
lists, single-precision estimates) and by the previous path (rounds as they come, double).

    python bench/sim_speed.py --no-membership     # the balance part alone
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Any

_MIB = 1024 * 1024
# PeerSim CYCLON (c = 20, SL = 8, star, 50 % crash at cycle 50), issue 16: (seconds, MiB), the
# middle of the measured ranges 5.0-6.6 s / 255 MiB and 54-58 s / 356-381 MiB.
_PEERSIM = {(10_000, 100): (5.8, 255.0), (100_000, 50): (56.0, 368.0)}
# PeerSim's CYCLON with its protocol bugs fixed, 10,000 x 100 (REFERENCE.md).
_PEERSIM_SHAPE = {"in-degree std": 1.63, "clustering": 0.0076, "path": 2.718, "clean after": 38}
# Issue 16's targets: (seconds, MiB).
_TARGETS = {(100_000, 50): (55.0, 400.0), (1_000_000, 30): (600.0, 4096.0)}
_BALANCE_TARGET_S = 300.0  # 100,000 nodes x 10 epochs, push-sum and Flow Updating
# The fast engine at 100,000 nodes x 10 epochs before Flow Updating gossiped fewer columns
# (commit be7f7ac, this kind of machine): (seconds, MiB).
_BALANCE_BEFORE = {"pushsum": (153.0, None), "flow": (2560.0, 1479.0)}


def _run(args: list[str], cmd: list[str] | None = None) -> tuple[dict[str, Any], float, float]:
    """Run `redy ARGS --json` (or `cmd`, which prints JSON); return its JSON, wall seconds and
    peak RSS in MiB (wait4)."""
    cmd = cmd or [sys.executable, "-m", "redy", *args, "--json"]
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        elapsed = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode:
            err.seek(0)
            raise SystemExit(f"{' '.join(cmd)} failed:\n{err.read().decode()}")
        out.seek(0)
        result = json.loads(out.read())
    return result, elapsed, usage.ru_maxrss * 1024 / _MIB  # ru_maxrss is in KiB on Linux


def _membership(
    engine: str, nodes: int, cycles: int, crash_at: int
) -> tuple[dict[str, Any], float, float]:
    return _run(
        [
            "sim",
            "membership",
            f"--nodes={nodes}",
            f"--cycles={cycles}",
            "--view=20",
            "--shuffle=8",
            "--bootstrap=star",
            "--crash=0.5",
            f"--crash-at={crash_at}",
            "--detector=cyclon",
            f"--engine={engine}",
        ]
    )


def _clean_after(r: dict[str, Any]) -> str:
    first = next((k for k, d in enumerate(r["dead_links"]) if d == 0), None)
    return f"after {first} cycles" if first is not None else "not within the run"


def _shape(r: dict[str, Any]) -> str:
    return (
        f"{r['elapsed_s']:.1f} s inside the simulator; in-degree std {r['in_degree']['std']:.2f}, clustering {r['clustering']:.4f}, "
        f"path {r['avg_path_length']:.3f}, dead links gone {_clean_after(r)}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--million", action="store_true", help="also 10^6 nodes x 30 cycles")
    parser.add_argument("--quick", action="store_true", help="small sizes, to try the script")
    parser.add_argument("--no-balance", action="store_true", help="membership runs only")
    parser.add_argument("--no-membership", action="store_true", help="balance runs only")
    parser.add_argument(
        "--no-large-balance", action="store_true", help="balance: core vs fast only, no 10^5"
    )
    parser.add_argument("--balance-nodes", type=int, default=100_000)
    parser.add_argument("--balance-epochs", type=int, default=10)
    parser.add_argument("--core-pushsum-nodes", type=int, default=2_000)
    parser.add_argument("--core-flow-nodes", type=int, default=300)
    parser.add_argument("--core-epochs", type=int, default=1)
    a = parser.parse_args()
    small, large = (2_000, 20_000) if a.quick else (10_000, 100_000)
    if a.no_membership:
        _balance_section(a)
        return

    print("== membership (c=20, SL=8, star, cyclon detector, 50 % crash)")
    _, t_warm, _ = _membership("fast", 200, 2, 1)
    print(
        f"fast engine, first use (imports, compiles the kernels; cached after): {t_warm:.1f} s; "
        "the runs below reuse the cache"
    )
    core, t_core, m_core = _membership("core", small, 100, 50)
    print(f"core engine  {small:>9,} x 100: {t_core:7.1f} s {m_core:6.0f} MiB  ({_shape(core)})")
    fast, t_fast, m_fast = _membership("fast", small, 100, 50)
    print(f"fast engine  {small:>9,} x 100: {t_fast:7.1f} s {m_fast:6.0f} MiB  ({_shape(fast)})")
    inside = fast["elapsed_s"] / core["elapsed_s"]
    print(
        f"  fast / core, same run, same size: time {t_fast / t_core:.4f}x "
        f"({t_core / t_fast:.1f}x faster; {inside:.4f}x inside the simulator, without "
        f"start-up), peak memory {m_fast / m_core:.2f}x"
    )
    shape = ", ".join(f"{k} {v}" for k, v in _PEERSIM_SHAPE.items())
    print(f"  PeerSim CYCLON (bugs fixed), 10,000 x 100: {shape}")
    runs = [(small, 100, 50), (large, 50, 50)]
    if a.million and not a.quick:
        runs.append((1_000_000, 30, 15))
    for nodes, cycles, crash_at in runs:
        if (nodes, cycles) == (small, 100):
            r, t, m = fast, t_fast, m_fast
        else:
            r, t, m = _membership("fast", nodes, cycles, crash_at)
            print(f"fast engine  {nodes:>9,} x {cycles:>3}: {t:7.1f} s {m:6.0f} MiB  ({_shape(r)})")
        if (nodes, cycles) in _PEERSIM:
            ps_t, ps_m = _PEERSIM[nodes, cycles]
            print(
                f"  vs PeerSim {nodes:,} x {cycles} ({ps_t} s, {ps_m:.0f} MiB): time {t / ps_t:.3f}x "
                f"({ps_t / t:.1f}x faster), peak memory {m / ps_m:.2f}x"
            )
        if (nodes, cycles) in _TARGETS:
            tg_t, tg_m = _TARGETS[nodes, cycles]
            ok = "met" if t < tg_t and m < tg_m else "NOT met"
            print(
                f"  vs target (< {tg_t:.0f} s, < {tg_m:.0f} MiB): time {t / tg_t:.3f}x, "
                f"memory {m / tg_m:.2f}x: {ok}"
            )

    if a.no_balance:
        return
    _balance_section(a)


def _balance(
    engine: str, aggregation: str, nodes: int, epochs: int
) -> tuple[dict[str, Any], float, float]:
    return _run(
        [
            "sim",
            "balance",
            f"--nodes={nodes}",
            f"--epochs={epochs}",
            f"--aggregation={aggregation}",
            f"--engine={engine}",
        ]
    )


# Flow Updating as of stop 9 (commit 4c0cfbd): every round as it comes, each node reading its
# links' clocks in every block, estimates in double precision. The knobs switch it back on.
_PREVIOUS_FLOW = """
import json, sys
import numpy as np
from redy.sim.array_balance import FastMarket
from redy.sim.balance import simulate_balance
if sys.argv[1] == "previous":
    FastMarket.flow_heard_lists = False
    FastMarket.flow_estimate_dtype = np.float64
r = simulate_balance(nodes=int(sys.argv[2]), epochs=int(sys.argv[3]), aggregation="flow",
                     engine="fast")
print(json.dumps(r))
"""


def _flow_path(path: str, nodes: int, epochs: int) -> tuple[dict[str, Any], float, float]:
    cmd = [sys.executable, "-c", _PREVIOUS_FLOW, path, str(nodes), str(epochs)]
    return _run([], cmd)


def _quality(r: dict[str, Any]) -> str:
    ep = r["epochs"]
    worst = max(e["price_error"] for e in ep)
    imbalance = max(e["imbalance_ratio"] for e in ep)
    gap = max(abs(e["cost_gap_ratio"]) for e in ep)
    return (
        f"{r['elapsed_s']:.1f} s inside, {r['messages']:,} messages; worst epoch: price error "
        f"{worst:.4f} EUR/MWh, imbalance {imbalance:.2e} of load, cost gap {gap:.2e}"
    )


def _balance_section(a: argparse.Namespace) -> None:
    print("== balance (default mix, 40 rounds x 3 phases per epoch, as `redy sim balance`)")
    _, t_warm, _ = _balance("fast", "flow", 200, 1)
    print(f"fast engine, first use (compiles the kernels; cached after): {t_warm:.1f} s")
    core_sizes = {"pushsum": a.core_pushsum_nodes, "flow": a.core_flow_nodes}
    big, epochs = (5_000, 2) if a.quick else (a.balance_nodes, a.balance_epochs)
    for aggregation, n_core in core_sizes.items():
        n_core = min(n_core, 300) if a.quick else n_core
        ep_core = 1 if a.quick else a.core_epochs
        core, t_core, m_core = _balance("core", aggregation, n_core, ep_core)
        fast, t_fast, m_fast = _balance("fast", aggregation, n_core, ep_core)
        label = f"{aggregation:<8} {n_core:>9,} x {ep_core:>2}"
        print(f"core engine  {label}: {t_core:7.1f} s {m_core:6.0f} MiB  ({_quality(core)})")
        print(f"fast engine  {label}: {t_fast:7.1f} s {m_fast:6.0f} MiB  ({_quality(fast)})")
        inside = fast["elapsed_s"] / core["elapsed_s"]
        print(
            f"  fast / core, same run, same size: time {t_fast / t_core:.4f}x "
            f"({t_core / t_fast:.1f}x faster; {inside:.4f}x inside the simulator), "
            f"peak memory {m_fast / m_core:.2f}x"
        )
        if a.no_large_balance:
            continue
        r, t, m = _balance("fast", aggregation, big, epochs)
        print(
            f"fast engine  {aggregation:<8} {big:>9,} x {epochs:>2}: {t:7.1f} s {m:6.0f} MiB  ({_quality(r)})"
        )
        per_node_epoch = (t_core / (n_core * ep_core)) / (t / (big * epochs))
        ok = "met" if t < _BALANCE_TARGET_S else "NOT met"
        print(
            f"  vs target (< {_BALANCE_TARGET_S:.0f} s at 100,000 x 10): time "
            f"{t / _BALANCE_TARGET_S:.3f}x: {ok}; per node-epoch {per_node_epoch:.0f}x faster "
            f"than the core engine above"
        )
        if aggregation == "flow":
            _flow_against_previous(big, 1 if a.quick else 2)
        before_t, before_m = _BALANCE_BEFORE[aggregation]
        if (big, epochs) == (100_000, 10):
            memory = f", peak memory {m / before_m:.2f}x" if before_m else ""
            print(
                f"  vs before (commit be7f7ac: {before_t:.0f} s): time {t / before_t:.3f}x "
                f"({before_t / t:.1f}x faster){memory}"
            )


def _flow_against_previous(nodes: int, epochs: int) -> None:
    """This stop's Flow Updating against the previous path, same run, same seed."""
    now, t_now, m_now = _flow_path("now", nodes, epochs)
    then, t_then, m_then = _flow_path("previous", nodes, epochs)
    price = max(
        abs(a["price"] - b["price"]) for a, b in zip(now["epochs"], then["epochs"], strict=True)
    )
    print(
        f"  flow, {nodes:,} x {epochs}, same run: heard lists + single precision {t_now:.1f} s "
        f"{m_now:.0f} MiB, previous path (rounds as they come, double) {t_then:.1f} s "
        f"{m_then:.0f} MiB: time {t_now / t_then:.3f}x ({t_then / t_now:.2f}x faster), memory "
        f"{m_now / m_then:.2f}x; prices differ by at most {price:.1e} EUR/MWh"
    )


if __name__ == "__main__":
    main()
