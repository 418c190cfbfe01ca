"""What the cell market costs each node from 10^3 to 10^6 nodes, and what a coalition can do to
it, measured on the simulator (`redy sim balance --market cells`, redy.sim.cell_market).

For each N, `--runs` runs of `--epochs` epochs (seeds 1, 2, 3...), each its own process started
cold. Per node and epoch (honest nodes; mean, and max over nodes, averaged over the epochs):
bytes received and signatures checked (the protocol's counts, redy.sim.cell_market), the
checks' CPU estimated as checks x one real ECDSA P-256 verification measured here, memory
(estimate), how many members see one offer, and the certificates fetched once per seed period.
Per run: phases per epoch, the largest price error against the reference solver on the same
offers (`reference.solve_blocks`), the simulator's CPU per epoch, wall time, peak RSS and the
host's idle share over the run beside them. Every epoch is steady: cells and rosters are fixed
for the seed period, nothing warms up.

With `--adversaries 0.01,0.1` (at `--nodes 10000`), each share of coordinated members runs the
mixed attacks (`--attack mix`: lying to its certified limits either way, two-faced, withholding,
late, replaying, early, forging its cell's sums), and each epoch prints the honest price, the
band honest members of the same certified limits could reach (the reference solver on the
honest bids plus their full export at the floor, or their full import at the cap), whether
every honest node cleared the same price, and the cost against the run without members.

    python bench/sim_cells.py [--nodes 1000,10000,100000,1000000] [--epochs 10] [--runs 3] \
        [--plot docs/cell-market.png]
    python bench/sim_cells.py --nodes 10000 --adversaries 0.01,0.1 --runs 3
"""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path
from typing import Any

from simrun import run_sim, verify_s


def _run(nodes: int, epochs: int, seed: int, extra: list[str]) -> dict[str, Any]:
    return run_sim(
        ["balance", "--market", "cells", f"--nodes={nodes}", f"--epochs={epochs}",
         f"--seed={seed}", *extra]
    )  # fmt: skip


def _mean(r: dict[str, Any], key: str, stat: str = "mean") -> float:
    epochs = r["epochs"]
    return float(sum(e["per_node"][key][stat] for e in epochs)) / len(epochs)


def _cost(a: argparse.Namespace, verify_s: float) -> None:
    rows: list[tuple[int, float, float, float]] = []  # N, KiB, est. verify ms, memory KiB
    print(
        f"cell market, {a.epochs} epochs per run, {os.cpu_count()} cores;"
        f" one real ECDSA check {verify_s * 1e6:.0f} us"
    )
    print("per node and epoch, mean (max) over honest nodes, averaged over the epochs")
    head = (
        f"{'N':>8} {'run':>3} {'cells':>5} {'phases':>6} {'KiB received':>15} "
        f"{'sig checks':>12} {'verify ms':>9} {'memory KiB':>10} {'seen by':>7} "
        f"{'certs/period KiB':>16} {'price error':>11} {'CPU s/epoch':>11} {'wall s':>7} "
        f"{'RSS MiB':>7} {'idle':>5}"
    )
    print(head)
    print("-" * len(head))
    worst = 0.0
    for n in (int(x) for x in a.nodes.split(",")):
        for run in range(1, a.runs + 1):
            r = _run(n, a.epochs, run, [])
            errors = [e["price_error"] for e in r["epochs"]]
            if any(x is None for x in errors):
                raise SystemExit(f"N={n} run {run}: an epoch without a price: {errors}")
            worst = max([worst, *errors])
            phases = sum(e["phases"] for e in r["epochs"]) / len(r["epochs"])
            kib = _mean(r, "bytes_received") / 1024
            checks = _mean(r, "signature_checks")
            mem = _mean(r, "memory_bytes") / 1024
            cpu = sum(e["cpu_s"] for e in r["epochs"]) / len(r["epochs"])
            rows.append((n, kib, checks * verify_s * 1000, mem))
            print(
                f"{n:>8} {run:>3} {r['parameters']['cells']:>5} {phases:>6.1f} "
                f"{kib:>6.0f} ({_mean(r, 'bytes_received', 'max') / 1024:>6.0f}) "
                f"{checks:>5.0f} ({_mean(r, 'signature_checks', 'max'):>4.0f}) "
                f"{checks * verify_s * 1000:>9.0f} {mem:>10.0f} "
                f"{_mean(r, 'offer_seen_by'):>7.0f} "
                f"{r['cert_bytes_per_period']['mean'] / 1024:>16.0f} {max(errors):>11.1e} "
                f"{cpu:>11.2f} {r['wall_s']:>7.1f} {r['rss_mib']:>7.0f} {r['idle_share']:>5.0%}"
            )
    print(f"largest price error against the reference solver: {worst:.2e} EUR/MWh")
    print(
        "model: received ~ (m-1)(offer + 2 votes) + phases x log2(N/m) x 3 x (sum + (m/3+1)"
        " signatures); checks ~ 3(m-1) + phases x log2(N/m) x (m/3+1); m = 128"
    )
    if a.plot:
        _plot(rows, Path(a.plot))


def _coalitions(a: argparse.Namespace) -> None:
    n = int(a.nodes.split(",")[0])
    print(f"coalitions at {n} nodes, {a.epochs} epochs per run, each member one attack in turn")
    head = (
        f"{'share':>5} {'run':>3} {'members':>7} {'unsafe cells':>12} {'epochs in band':>14} "
        f"{'same price':>10} {'max |price - band edge| inside':>30} {'error':>8} "
        f"{'bytes x':>7} {'checks x':>8} {'idle':>5}"
    )
    print(head)
    print("-" * len(head))
    for share in (float(x) for x in a.adversaries.split(",")):
        for run in range(1, a.runs + 1):
            base = _run(n, a.epochs, run, [])
            r = _run(n, a.epochs, run, [f"--adversaries={share}", "--attack=mix"])
            inside = sum(1 for e in r["epochs"] if e.get("inside_band"))
            same = all(e["every_honest_node_same_price"] for e in r["epochs"])
            margin = min(
                min(e["price"] - e["band"][0], e["band"][1] - e["price"])
                for e in r["epochs"]
                if e["price"] is not None
            )
            err = max(
                math.inf if e["price_error"] is None else e["price_error"] for e in r["epochs"]
            )
            print(
                f"{share:>5.0%} {run:>3} {r['adversaries']['members']:>7} "
                f"{r['cells']['unsafe']:>12} {inside:>7}/{len(r['epochs']):<6} {same!s:>10} "
                f"{margin:>30.2f} {err:>8.1e} "
                f"{_mean(r, 'bytes_received') / _mean(base, 'bytes_received'):>7.3f} "
                f"{_mean(r, 'signature_checks') / _mean(base, 'signature_checks'):>8.3f} "
                f"{r['idle_share']:>5.0%}"
            )
            for e in r["epochs"] if run == 1 else ():
                print(
                    f"      epoch {e['epoch']}: price {e['price']:.4f}, honest optimum"
                    f" {e['price_honest_optimum']:.4f}, band {e['band'][0]:.4f}..{e['band'][1]:.4f}"
                )


def _plot(rows: list[tuple[int, float, float, float]], path: Path) -> None:
    """Per node and epoch against N on log-log axes, each run a point, with the goal."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, col, color in [
        ("received, KiB", 1, "tab:blue"),
        ("signature checks, ms (ECDSA, est.)", 2, "tab:red"),
        ("memory, KiB (est.)", 3, "tab:green"),
    ]:
        ax.scatter([r[0] for r in rows], [r[col] for r in rows], color=color, s=14, label=label)
    ax.axhline(2000, color="grey", lw=0.8, ls=":")
    ax.text(1100, 2200, "issue 25's goal at 10^6: 2 MB received, 2,000 ms of checks", fontsize=8)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("nodes N")
    ax.set_ylabel("per node and epoch")
    ax.set_title("Cell market (redy sim balance --market cells), cells of 128")
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(True, which="major", lw=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"plot: {path}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--nodes", default="1000,10000,100000,1000000")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--adversaries", default=None, help="shares, comma-separated (coalitions)")
    ap.add_argument("--plot", default=None, help="a PNG of the figures against N (log-log)")
    a = ap.parse_args()
    if a.adversaries:
        _coalitions(a)
    else:
        _cost(a, verify_s())


if __name__ == "__main__":
    main()
