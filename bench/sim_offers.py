"""What the offer market costs each node, measured on the simulated market (`redy sim balance
--market offers`: every node the governance's OfferCore, over the simulator's overlay).

For each N, `--runs` runs of `--epochs` epochs (seeds 1, 2, 3...), each its own `redy sim
balance` process. Per node and epoch (honest nodes, mean and max over nodes, then the mean over
the epochs after the first `offers.FRESH_EPOCHS`, in which certificates still ride along; the
first epoch's bytes beside): bytes received (the codec's lengths), offer signatures checked,
certificates checked (in the first epoch: every peer's; none later), the offer copies it
received with a certificate and the share of those whose certificate it already held, and the
estimated memory of its market state (redy.sim.offer_market.OfferGrid.memory; not tracemalloc).
Per run: the simulator's CPU seconds per epoch (all N nodes: the cores' Python work, stand-in
signatures), that per node, and the real signature checks' CPU per node and epoch estimated as
checks x the time of one `signing.Verifier.refusal` measured here; the simulator's wall time and
peak RSS, with the host's idle CPU share over the run beside them (the machine may be shared: a
busy host makes timings longer, not the counts). Also the largest price error against the
reference optimum over all runs.

    python bench/sim_offers.py [--nodes 100,300,1000] [--epochs 5] [--runs 3] [--view 8] \
        [--plot docs/offer-market-flooding.png]

The view defaults to the governance's (8), the shuffle to 4.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from simrun import run_sim
from simrun import verify_s as one_check_s

from redy.balancing.offers import FRESH_EPOCHS


def _run(nodes: int, epochs: int, view: int, shuffle: int, seed: int) -> dict[str, Any]:
    return run_sim(
        ["balance", "--market", "offers", f"--nodes={nodes}", f"--epochs={epochs}",
         f"--view={view}", f"--shuffle={shuffle}", f"--seed={seed}"]
    )  # fmt: skip


def _steady(r: dict[str, Any]) -> list[dict[str, Any]]:
    """The epochs after certificates stop riding along (FRESH_EPOCHS), else all of them."""
    epochs: list[dict[str, Any]] = r["epochs"]
    return epochs[FRESH_EPOCHS:] or epochs


def _per_node(r: dict[str, Any], key: str, stat: str) -> float:
    """The mean over the steady epochs of a per-node figure's `stat` (mean or max over
    nodes)."""
    epochs = _steady(r)
    return float(sum(e["per_node"][key][stat] for e in epochs)) / len(epochs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--nodes", default="100,300,1000")
    ap.add_argument("--epochs", type=int, default=FRESH_EPOCHS + 2)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--view", type=int, default=8)
    ap.add_argument("--shuffle", type=int, default=4)
    ap.add_argument("--plot", default=None, help="a PNG of the figures against N (log-log)")
    a = ap.parse_args()
    rows: list[tuple[int, float, float, float, float]] = []  # N, KiB, mem KiB, CPU ms, verify ms
    verify_s = one_check_s()
    print(
        f"offer market, view {a.view}, shuffle {a.shuffle}, {a.epochs} epochs per run, "
        f"{os.cpu_count()} cores; one real offer check {verify_s * 1e6:.0f} us"
    )
    print(
        f"per node and epoch, mean (max) over honest nodes, epochs after the first"
        f" {FRESH_EPOCHS} (certificates still ride along in those; 1st: the first epoch);"
        " CPU: the simulator's, all nodes; est. verify: checks x one real check"
    )
    head = (
        f"{'N':>5} {'run':>3} {'1st KiB':>8} {'KiB received':>17} {'sig checks':>13} "
        f"{'1st certs':>9} "
        f"{'certs in (held)':>15} "
        f"{'memory KiB (est.)':>17} {'CPU s/epoch':>11} {'per node ms':>11} "
        f"{'est. verify ms':>14} {'wall s':>7} {'RSS MiB':>7} {'idle':>5}"
    )
    print(head)
    print("-" * len(head))
    worst = 0.0
    for n in (int(x) for x in a.nodes.split(",")):
        for run in range(1, a.runs + 1):
            r = _run(n, a.epochs, a.view, a.shuffle, run)
            worst = max([worst, *(e["price_error"] for e in r["epochs"])])
            cpu = sum(e["cpu_s"] for e in _steady(r)) / len(_steady(r))
            first = r["epochs"][0]["per_node"]["bytes_received"]["mean"]
            sigs = _per_node(r, "signature_checks", "mean")
            certs = r["epochs"][0]["per_node"]["certificate_checks"]["mean"]
            certs_in = _per_node(r, "certificates_received", "mean")
            held = _per_node(r, "certificates_already_held", "mean") / max(certs_in, 1.0)
            rows.append(
                (
                    n,
                    _per_node(r, "bytes_received", "mean") / 1024,
                    _per_node(r, "memory_bytes", "mean") / 1024,
                    cpu / n * 1000,
                    sigs * verify_s * 1000,
                )
            )
            print(
                f"{n:>5} {run:>3} {first / 1024:>8.0f} "
                f"{_per_node(r, 'bytes_received', 'mean') / 1024:>7.0f} "
                f"({_per_node(r, 'bytes_received', 'max') / 1024:>7.0f}) "
                f"{sigs:>5.0f} ({_per_node(r, 'signature_checks', 'max'):>5.0f}) "
                f"{certs:>9.0f} {certs_in:>7.0f} ({held:>5.0%}) "
                f"{_per_node(r, 'memory_bytes', 'mean') / 1024:>7.0f} "
                f"({_per_node(r, 'memory_bytes', 'max') / 1024:>7.0f}) "
                f"{cpu:>11.2f} {cpu / n * 1000:>11.2f} {sigs * verify_s * 1000:>14.1f} "
                f"{r['wall_s']:>7.1f} {r['rss_mib']:>7.0f} {r['idle_share']:>5.0%}"
            )
    print(f"largest honest price error against the reference: {worst:.2e} EUR/MWh")
    if a.plot:
        _plot(rows, Path(a.plot))


def _plot(rows: list[tuple[int, float, float, float, float]], path: Path) -> None:
    """Per node and epoch against N on log-log axes, each run a point, and the line of each
    fitted per-offer cost carried to 10^6 nodes (flooding: linear in N)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    labels = [
        ("received, KiB", 1, "tab:blue"),
        ("memory, KiB (est.)", 2, "tab:green"),
        ("simulator CPU, ms", 3, "tab:orange"),
        ("signature checks, ms (ECDSA)", 4, "tab:red"),
    ]
    xs = [10**k for k in (2, 3, 4, 5, 6)]
    for label, col, color in labels:
        ns = [r[0] for r in rows]
        ys = [r[col] for r in rows]
        ax.scatter(ns, ys, color=color, s=14, label=label)
        slope = sum(y / n for n, y in zip(ns, ys, strict=True)) / len(ns)  # per peer
        ax.plot(xs, [slope * x for x in xs], color=color, lw=0.8, ls="--")
    ax.axhline(2048, color="grey", lw=0.8, ls=":")
    ax.text(110, 2300, "issue 25's goal at 10^6: 2 MB, 2 s of checks", fontsize=8, color="grey")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("nodes N")
    ax.set_ylabel("per node and epoch")
    ax.set_title("Offer market by flooding (redy sim balance --market offers); dashed: x N")
    ax.legend(fontsize=8, loc="upper left")
    ax.grid(True, which="major", lw=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"plot: {path}")


if __name__ == "__main__":
    main()
