"""Issue 26's figures: coalitions against the signed shuffle (`redy sim membership --secure`).

    .venv/bin/python bench/coalition.py [--nodes 1000 10000] [--fractions 0.01 0.05 0.1 0.3]

For each size and coalition fraction, 40 cycles after a random start (c = 12, SL = 2, `verify`):
the coalition's share of the entries in honest views at the end, as a ratio to its share of the
nodes (the goal: at most 1.2), the worst honest view, the honest views more than half hostile,
whether the honest overlay is connected, and how many members every honest node knows by then.
Then the honest nodes' cost in the same run: the plain shuffle and the signed one without
members (shuffle bytes per node and period, and with the state pushes to every neighbour), and
dead entries one period after 50 % and 90 % crashes. Ratios only, no timing assertions.

    .venv/bin/python bench/coalition.py --fast [--runs 3] [--fast-nodes 100000]

The fast engine's signed shuffle (redy.sim.array_secure) instead: the 100,000 x 50 run (c = 20,
SL = 8, random start, `verify`, half the nodes crash at cycle 50) with the plain shuffle and the
signed one, each a cold `redy sim membership` process (bench/simrun.py), `--runs` times in turn,
with the host's idle share over each; the same at c = 12, SL = 2; dead entries one period after
50 % and 90 % crashes at that size; the smart-grid day (redy.sim.churn) at 10,000 nodes with
both shuffles; and the coalitions at 10,000 nodes on the fast engine.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from redy.sim.membership import simulate_membership
from redy.sim.sweep import message_sizes

_C, _SL = 12, 2


def _run(nodes: int, **kw: Any) -> dict[str, Any]:
    base: dict[str, Any] = dict(
        nodes=nodes,
        view_size=_C,
        shuffle_length=_SL,
        cycles=40,
        bootstrap="random",
        detector="verify",
        seed=5,
        engine="core",
    )
    base.update(kw)
    return simulate_membership(**base)


def coalitions(sizes: list[int], fractions: list[float], strategies: list[str]) -> None:
    print("nodes  F     strategy  share/F  final   worst  >half  connected  known/members  s")
    for n in sizes:
        for f in fractions:
            for strategy in strategies:
                t = time.perf_counter()
                a = _run(n, adversaries=f, secure=True, strategy=strategy)["adversaries"]
                print(
                    f"{n:<6} {f:<5} {strategy:<9} {a['final_share_ratio']:7.2f}  "
                    f"{a['final_attacker_share']:.3f}   {a['max_share_final']:.2f}   "
                    f"{a['views_over_half_final']:.3f}  "
                    f"{a['honest_largest_component_fraction'] == 1.0!s:<9}  "
                    f"{a['members_known_to_all']}/{a['members']:<10}  "
                    f"{time.perf_counter() - t:.0f}",
                    flush=True,
                )


def cost(nodes: int) -> None:
    plain = _run(nodes)
    signed = _run(nodes, secure=True)
    push = message_sizes(_C, _SL)["push"] * _C  # one state push to every neighbour a period
    b0, b1 = plain["shuffle_bytes_per_node_period"], signed["shuffle_bytes_per_node_period"]
    print(
        f"\n{nodes} nodes, no members: shuffle bytes per node and period {b0:.0f} -> {b1:.0f} "
        f"(x{b1 / b0:.2f}); with the state pushes {b0 + push:.0f} -> {b1 + push:.0f} "
        f"(x{(b1 + push) / (b0 + push):.2f}); in-degree std {plain['in_degree']['std']:.2f} -> "
        f"{signed['in_degree']['std']:.2f}"
    )
    for crash in (0.5, 0.9):
        row = []
        for secure in (False, True):
            r = _run(nodes, secure=secure, crash=crash, crash_at=20, cycles=30)
            dead = r["dead_links"]
            row.append(f"{'signed' if secure else 'plain'}: dead entries {dead[:4]}")
        print(f"crash {crash:.0%} at cycle 20: " + "; ".join(row))
    row = []
    for secure in (False, True):
        r = _run(nodes, secure=secure, join_count=nodes // 5, join_at=20, cycles=40)
        row.append(
            f"{'signed' if secure else 'plain'}: largest component "
            f"{r['largest_component_fraction']:.3f}, in-degree min {r['in_degree']['min']}"
        )
    print(f"{nodes // 5} nodes join through one introducer at cycle 20: " + "; ".join(row))


def _fast_args(nodes: int, c: int, sl: int, secure: bool) -> list[str]:
    return [
        "membership",
        f"--nodes={nodes}",
        "--cycles=50",
        f"--view={c}",
        f"--shuffle={sl}",
        "--bootstrap=random",
        "--detector=verify",
        "--crash=0.5",
        "--crash-at=50",
        "--engine=fast",
        *(["--secure"] if secure else []),
    ]


def fast_speed(nodes: int, runs: int) -> None:
    from simrun import run_sim

    for secure in (False, True):  # compiles the kernels (cached after), outside the timings
        run_sim([*_fast_args(200, 12, 2, secure), "--cycles=2"])
    for c, sl in ((20, 8), (12, 2)):
        print(
            f"\n{nodes:,} x 50, c = {c}, SL = {sl}, fast engine: plain -> signed (cold processes)"
        )
        ratios = []
        for k in range(1, runs + 1):
            plain = run_sim(_fast_args(nodes, c, sl, False))
            signed = run_sim(_fast_args(nodes, c, sl, True))
            ratio = signed["wall_s"] / plain["wall_s"]
            ratios.append(ratio)
            print(
                f"  run {k}: {plain['wall_s']:.1f} s (idle {plain['idle_share']:.0%}, "
                f"{plain['rss_mib']:.0f} MiB) -> {signed['wall_s']:.1f} s (idle "
                f"{signed['idle_share']:.0%}, {signed['rss_mib']:.0f} MiB): x{ratio:.2f} "
                f"(inside the simulator x{signed['elapsed_s'] / plain['elapsed_s']:.2f}); "
                f"in-degree std {plain['in_degree']['std']:.2f} -> "
                f"{signed['in_degree']['std']:.2f}, views {plain['in_degree']['mean']:.1f} -> "
                f"{signed['in_degree']['mean']:.1f} entries",
                flush=True,
            )
        print(f"  ratio x{min(ratios):.2f}-x{max(ratios):.2f} (goal: at most x1.5)")


def fast_healing(nodes: int) -> None:
    for crash in (0.5, 0.9):
        r = _run(nodes, cycles=25, crash=crash, crash_at=20, secure=True, engine="fast")
        print(
            f"{nodes:,} nodes, fast engine, signed, crash {crash:.0%} at cycle 20: dead entries "
            f"{r['dead_links']}, largest component {r['largest_component_fraction']:.4f}"
        )


def fast_churn(nodes: int) -> None:
    import random

    from redy.sim.array_cyclon import ArrayOverlay
    from redy.sim.array_secure import SecureArrayOverlay
    from redy.sim.churn import SmartGridDay, run_day

    print(f"\nsmart-grid day, {nodes:,} nodes, c = {_C}, SL = {_SL}, verify, 50 cycles warm-up:")
    for name, cls in (("plain", ArrayOverlay), ("signed", SecureArrayOverlay)):
        ov = cls(nodes, nodes, _C, _SL, "verify", 5)
        ov.bootstrap("random")
        for _ in range(50):
            ov.cycle(0.0)
        t = time.perf_counter()
        m = run_day(ov, SmartGridDay(nodes, random.Random(5 * 7919)), random.Random(5))
        cells = ", ".join(f"{k.removeprefix('churn_')} {v:.4g}" for k, v in m.items())
        print(f"  {name}: {cells} ({time.perf_counter() - t:.0f} s)", flush=True)


def fast_coalitions(nodes: int, fractions: list[float], strategies: list[str]) -> None:
    print(f"\ncoalitions on the fast engine, {nodes:,} nodes, 40 cycles:")
    print("F     strategy  share/F  final   worst  >half  connected  known/members  verdicts")
    for f in fractions:
        for strategy in strategies:
            a = _run(nodes, adversaries=f, secure=True, strategy=strategy, engine="fast")[
                "adversaries"
            ]
            print(
                f"{f:<5} {strategy:<9} {a['final_share_ratio']:7.2f}  "
                f"{a['final_attacker_share']:.3f}   {a['max_share_final']:.2f}   "
                f"{a['views_over_half_final']:.3f}  "
                f"{a['honest_largest_component_fraction'] == 1.0!s:<9}  "
                f"{a['members_known_to_all']}/{a['members']:<10}  "
                f"honest named {a['honest_verdicts']}",
                flush=True,
            )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, nargs="+", default=[1000, 10000])
    ap.add_argument("--fractions", type=float, nargs="+", default=[0.01, 0.05, 0.1, 0.3])
    ap.add_argument("--strategies", nargs="+", default=["hoard", "mix"])
    ap.add_argument("--no-cost", action="store_true")
    ap.add_argument("--fast", action="store_true", help="the fast engine's figures instead")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--fast-nodes", type=int, default=100_000)
    ap.add_argument("--no-speed", action="store_true")
    args = ap.parse_args()
    if args.fast:
        if not args.no_speed:
            fast_speed(args.fast_nodes, args.runs)
        fast_healing(args.fast_nodes)
        fast_churn(10_000)
        fast_coalitions(10_000, args.fractions, args.strategies)
        return
    coalitions(args.nodes, args.fractions, args.strategies)
    if not args.no_cost:
        cost(min(args.nodes))


if __name__ == "__main__":
    main()
