"""The cell market's protocol run message by message against the model that counts it: per
node and epoch, what every node a `CellNode` received, sent, checked and signed
(`redy sim balance --market cells --engine core`, redy.sim.cell_protocol), beside what the
model (redy.sim.cell_market, the same nodes in the same cells) counts for bytes received and
signature checks, with the protocol's price against the reference optimum (with hostile
members, `--adversaries`: the optimum of the offers the cells counted, and whether the price
stayed in the band honest members of their certified sizes could reach).

Each (N, cell size) is its own cold process of `--epochs` epochs; per node, the mean (and the
max over nodes) of the epochs' figures. The checks' CPU is estimated as checks x one real ECDSA
P-256 verification measured here.

    python bench/cell_protocol.py [--grids 64/8,256/16,1000/128,2000/128] [--epochs 2] \
        [--adversaries 0,0.1]
"""

from __future__ import annotations

import argparse
from statistics import mean
from typing import Any

from simrun import run_sim, verify_s


def _row(grid: str, epochs: int, seed: int, check_s: float, hostile: float) -> str:
    nodes, size = (int(x) for x in grid.split("/"))
    r: dict[str, Any] = run_sim(
        [
            "balance",
            "--market",
            "cells",
            "--engine",
            "core",
            f"--nodes={nodes}",
            f"--cell-size={size}",
            f"--epochs={epochs}",
            f"--seed={seed}",
            f"--adversaries={hostile}",
        ]
    )
    p, es = r["parameters"], r["epochs"]

    def per(key: str, stat: str = "mean") -> float:
        return mean(e["per_node"][key][stat] for e in es)

    def model(key: str) -> float:
        return mean(e["model"][key]["mean"] for e in es)

    same = sum(1 for e in es if e["every_honest_node_same_price"])
    inside = sum(1 for e in es if e.get("inside_band", True))
    error = max((e["price_error"] for e in es if e["price_error"] is not None), default=None)
    return (
        f"| {nodes:,} | {hostile:.0%} | {size} | {p['cells']} | {p['roster'][0]}-{p['roster'][1]} |"
        f" {per('messages_received'):.0f} ({per('messages_received', 'max'):.0f}) |"
        f" {per('bytes_received') / 1024:.1f} ({per('bytes_received', 'max') / 1024:.1f}) |"
        f" {model('bytes_received') / 1024:.1f} |"
        f" {per('signature_checks'):.0f} ({per('signature_checks', 'max'):.0f}) |"
        f" {model('signature_checks'):.0f} | {per('signature_checks') * check_s * 1e3:.0f} |"
        f" {per('signatures_made'):.1f} |"
        f" {per('bytes_received') / model('bytes_received'):.2f} |"
        f" {per('signature_checks') / model('signature_checks'):.2f} |"
        f" {same} of {len(es)} | {inside} of {len(es)} | {error:.0e} | {r['cpu_s'] / len(es):.1f} | {r['idle_share']:.0%} |"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--grids", default="64/8,256/16,1000/128,2000/128", help="N/cell size, ...")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument(
        "--adversaries",
        default="0",
        help="hostile shares, comma-separated (each member one attack in turn: --attack mix)",
    )
    args = ap.parse_args()
    check_s = verify_s()
    print(f"one offer check (ECDSA P-256 and limits): {check_s * 1e6:.0f} us")
    print(
        "| N | hostile | cell size | cells | roster | messages received, mean (max) |"
        " KiB received, mean (max) | model KiB | signature checks, mean (max) | model checks |"
        " their ECDSA time, ms | signatures made | bytes / model | checks / model |"
        " epochs every honest node the same price | epochs inside the band |"
        " price error, EUR/MWh | simulator CPU s/epoch |"
        " host idle |"
    )
    print("|" + "---|" * 19)
    for hostile in (float(x) for x in args.adversaries.split(",")):
        for grid in args.grids.split(","):
            print(_row(grid, args.epochs, args.seed, check_s, hostile), flush=True)


if __name__ == "__main__":
    main()
