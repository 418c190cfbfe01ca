"""Figures of a simulation: `redy sim membership|balance ... --plot FILE.png`.

The functions take the simulators' result dicts (the same JSON `--json` prints), so a saved
result can be plotted later and the simulators stay free of any drawing code. matplotlib runs on
its Agg backend: no display is needed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from redy.errors import SimulationError


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: str | Path) -> None:
    try:
        fig.savefig(path, dpi=100)
    except (OSError, ValueError) as exc:
        raise SimulationError(f"cannot write plot {path}: {exc}") from None
    finally:
        _pyplot().close(fig)


def plot_membership(result: dict[str, Any], path: str | Path) -> None:
    """Draw `membership_figure(result)` to `path` (PNG by its suffix)."""
    _save(membership_figure(result), path)


def plot_balance(result: dict[str, Any], path: str | Path) -> None:
    """Draw `balance_figure(result)` to `path` (PNG by its suffix)."""
    _save(balance_figure(result), path)


def membership_figure(result: dict[str, Any]) -> Any:
    """In-degree distribution of the final overlay and dead links per cycle after the crash.

    The distribution is drawn from `in_degree.histogram` (count of nodes per in-degree) when the
    result has it, else as its summary (min, mean +- std, max).
    """
    plt = _pyplot()
    params = result.get("parameters", {})
    fig, (ax_deg, ax_dead) = plt.subplots(1, 2, figsize=(11, 4.2))
    deg = result.get("in_degree", {})
    hist = deg.get("histogram")
    if hist:
        ax_deg.bar(range(len(hist)), hist, width=0.9, color="#4472c4")
        ax_deg.set_ylabel("nodes")
    elif deg:
        mean, std = deg["mean"], deg["std"]
        ax_deg.errorbar([mean], [0], xerr=[[mean - deg["min"]], [deg["max"] - mean]], fmt="none",
                        ecolor="#999999", capsize=6)  # fmt: skip
        ax_deg.errorbar([mean], [0], xerr=[std], fmt="o", color="#4472c4", capsize=6)
        ax_deg.set_yticks([])
        ax_deg.annotate(f"mean {mean:.1f}, std {std:.2f}, min {deg['min']}, max {deg['max']}",
                        (0.02, 0.9), xycoords="axes fraction")  # fmt: skip
    ax_deg.set_xlabel("in-degree")
    ax_deg.set_title(f"in-degree, {result.get('nodes', '?')} live nodes")
    dead = result.get("dead_links") or []
    start = params.get("crash_at") or 1
    if dead:
        ax_dead.plot(range(start, start + len(dead)), dead, marker="o", color="#c0504d")
    else:
        ax_dead.annotate("no crash in this run", (0.3, 0.5), xycoords="axes fraction")
    ax_dead.set_xlabel("cycle")
    ax_dead.set_ylabel("dead links in live views")
    ax_dead.set_title(f"dead links after crashing {params.get('crash', 0):.0%}")
    fig.suptitle(
        f"membership: N={params.get('nodes')}, c={params.get('view')}, "
        f"SL={params.get('shuffle')}, {params.get('cycles')} cycles"
    )
    fig.tight_layout()
    return fig


def balance_figure(result: dict[str, Any]) -> Any:
    """Price (gossip and optimum) and grid imbalance per epoch."""
    plt = _pyplot()
    epochs = result.get("epochs") or []
    if not epochs:
        raise SimulationError("the balance result has no epochs to plot")
    x = [e["epoch"] for e in epochs]
    fig, (ax_p, ax_i) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    ax_p.plot(x, [e["price"] for e in epochs], marker="o", label="gossip (median node)")
    ax_p.plot(x, [e["price_optimal"] for e in epochs], ls="--", color="k", label="optimum")
    ax_p.set_ylabel("price [EUR/MWh]")
    ax_p.legend()
    ax_i.bar(x, [e["imbalance_kw"] for e in epochs], color="#c0504d", label="imbalance")
    ax_i.set_ylabel("imbalance [kW]")
    ax_i.set_xlabel("epoch")
    ratio = ax_i.twinx()
    ratio.plot(x, [100 * e["imbalance_ratio"] for e in epochs], color="#4472c4", marker=".")
    ratio.set_ylabel("|imbalance| / load [%]")
    params = result.get("parameters", {})
    fig.suptitle(
        f"balance: N={params.get('nodes')}, {params.get('rounds')} rounds, "
        f"{params.get('aggregation')}"
    )
    fig.tight_layout()
    return fig
