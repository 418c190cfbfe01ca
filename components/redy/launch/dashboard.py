"""A live text table of a launch's nodes (for `make demo`): production, consumption, net,
flexibility, units online, price; and a summary at the end. Plain lines, no terminal control:
it works in CI logs and over ssh alike. It reads the same live model as the web page
(redy.dashboard: one Feed of operator connections into one GridModel), so the two cannot
disagree and a launch opens one set of connections for both."""

from __future__ import annotations

import threading
from typing import Any

import click

from redy.dashboard.server import Feed
from redy.launch.supervisor import Supervisor


class Dashboard:
    """Prints the table of `feed`'s model every `period_s` seconds, nodes in launch order."""

    def __init__(self, sup: Supervisor, feed: Feed, period_s: float = 5.0) -> None:
        self.sup = sup
        self.feed = feed
        self.period_s = period_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="dashboard", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.period_s):
            click.echo(self.table())

    def _rows(self) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
        snap = self.feed.snapshot()
        return snap, {r["node"]: r for r in snap["nodes"]}

    def table(self) -> str:
        snap, rows = self._rows()
        sim_h = (snap.get("sim_time_s") or 0.0) / 3600.0
        lines = [
            f"--- simulated {int(sim_h) % 24:02d}:{int(sim_h * 60) % 60:02d} "
            f"(day {int(sim_h // 24) + 1}) ---",
            f"{'node':<14}{'prod kW':>11}{'cons kW':>11}{'net kW':>11}{'flex+ kW':>10}"
            f"{'flex- kW':>10}{'units':>7}{'price':>9}  status",
        ]
        total = 0.0
        for n in self.sup.desc.nodes:
            r = rows.get(n.node)
            if r is None or r["net_kw"] is None:
                lines.append(f"{n.node:<14}{'(no state yet)':>33}")
                continue
            total += r["net_kw"]
            price = f"{r['price_eur_mwh']:.1f}" if r["price_eur_mwh"] is not None else "-"
            lines.append(
                f"{n.node:<14}{r['production_kw']:>11.1f}{r['consumption_kw']:>11.1f}"
                f"{r['net_kw']:>11.1f}{r['flex_up_kw']:>10.1f}{r['flex_down_kw']:>10.1f}"
                f"{r['units_online']:>4}/{r['units_total']:<2}{price:>9}  {r['status'] or ''}"
            )
        lines.append(f"{'grid balance':<14}{'':>22}{total:>11.1f}")
        return "\n".join(lines)

    def summary(self) -> str:
        _, rows = self._rows()
        lines = ["=== summary ==="]
        for n in self.sup.desc.nodes:
            r = rows.get(n.node)
            if r is None or not r["states"]:
                lines.append(f"{n.node}: no state received")
                continue
            lines.append(
                f"{n.node}: {r['states']} states, mean net {r['mean_net_kw']:.1f} kW, "
                f"peak production {r['peak_production_kw']:.1f} kW, "
                f"peak consumption {r['peak_consumption_kw']:.1f} kW, "
                f"units online at the end {r['units_online']}/{r['units_total']}"
                + _epochs(r["health"])
            )
        lines.append(
            f"processes: {len(self.sup.children)} supervised, {self.sup.respawns} respawns"
            + (f", gave up on {', '.join(self.sup.given_up)}" if self.sup.given_up else "")
        )
        return "\n".join(lines)

    def stop(self) -> None:
        self._stop.set()


def _epochs(health: dict[str, Any] | None) -> str:
    """A node's market epochs as its governance counted them (the counters the metrics serve)."""
    if health is None or not health["epochs_cleared"] + health["epochs_missed"]:
        return ""
    return f", epochs cleared {health['epochs_cleared']}, missed {health['epochs_missed']}"
