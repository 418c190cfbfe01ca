"""A live text table of a launch's nodes (for `make demo`): production, consumption, net,
units online, price; and a summary at the end. Plain lines, no terminal control: it works in CI
logs and over ssh alike."""

from __future__ import annotations

import threading
from typing import Any

import click
import paho.mqtt.client as mqtt

from redy import messages
from redy.brokers import load_credentials
from redy.errors import InvalidMessage
from redy.launch.supervisor import Supervisor
from redy.topics import render
from redy.transport.paho_client import new_client


class Dashboard:
    """Watches every node's retained governance state as operator and prints a table."""

    def __init__(self, sup: Supervisor, period_s: float = 5.0) -> None:
        self.sup = sup
        self.period_s = period_s
        self.states: dict[str, messages.NodeEnergyState] = {}
        self.history: dict[str, list[messages.NodeEnergyState]] = {}
        self._lock = threading.Lock()
        self._clients: list[mqtt.Client] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        for n in self.sup.desc.nodes:
            cfg = self.sup.broker_config(n)
            password = load_credentials(cfg.credentials_path).password("operator")
            c = new_client(f"redy-dashboard-{n.node}", user="operator", password=password)
            c.on_message = self._on_message
            c.on_connect = lambda cl, *_a, node=n.node: cl.subscribe(
                render("node_state", node=node), qos=1
            )
            c.connect(*messages.parse_uri(n.broker.local_uri), keepalive=10)
            c.loop_start()
            self._clients.append(c)
        self._thread = threading.Thread(target=self._loop, name="dashboard", daemon=True)
        self._thread.start()

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            state = messages.decode(msg.topic, msg.payload)
        except InvalidMessage:
            return
        with self._lock:
            self.states[state.node] = state
            self.history.setdefault(state.node, []).append(state)

    def _loop(self) -> None:
        while not self._stop.wait(self.period_s):
            click.echo(self.table())

    def table(self) -> str:
        with self._lock:
            states = dict(self.states)
        sim_h = max((s.ts_s for s in states.values()), default=0.0) / 3600.0
        lines = [
            f"--- simulated {int(sim_h) % 24:02d}:{int(sim_h * 60) % 60:02d} "
            f"(day {int(sim_h // 24) + 1}) ---",
            f"{'node':<14}{'prod kW':>11}{'cons kW':>11}{'net kW':>11}{'flex+ kW':>10}"
            f"{'flex- kW':>10}{'units':>7}{'price':>9}  status",
        ]
        total = 0.0
        for n in self.sup.desc.nodes:
            s = states.get(n.node)
            if s is None:
                lines.append(f"{n.node:<14}{'(no state yet)':>33}")
                continue
            total += s.net_kw
            price = f"{s.price_eur_mwh:.1f}" if s.price_eur_mwh is not None else "-"
            lines.append(
                f"{n.node:<14}{s.production_kw:>11.1f}{s.consumption_kw:>11.1f}{s.net_kw:>11.1f}"
                f"{s.flex_up_kw:>10.1f}{s.flex_down_kw:>10.1f}"
                f"{s.units_online:>4}/{s.units_total:<2}{price:>9}  {s.status or ''}"
            )
        lines.append(f"{'grid balance':<14}{'':>22}{total:>11.1f}")
        return "\n".join(lines)

    def summary(self) -> str:
        with self._lock:
            history = {k: list(v) for k, v in self.history.items()}
        lines = ["=== summary ==="]
        for n in self.sup.desc.nodes:
            h = history.get(n.node, [])
            if not h:
                lines.append(f"{n.node}: no state received")
                continue
            mean_net = sum(s.net_kw for s in h) / len(h)
            lines.append(
                f"{n.node}: {len(h)} states, mean net {mean_net:.1f} kW, "
                f"peak production {max(s.production_kw for s in h):.1f} kW, "
                f"peak consumption {max(s.consumption_kw for s in h):.1f} kW, "
                f"units online at the end {h[-1].units_online}/{h[-1].units_total}"
            )
        lines.append(
            f"processes: {len(self.sup.children)} supervised, {self.sup.respawns} respawns"
            + (f", gave up on {', '.join(self.sup.given_up)}" if self.sup.given_up else "")
        )
        return "\n".join(lines)

    def stop(self) -> None:
        self._stop.set()
        for c in self._clients:
            c.disconnect()
            c.loop_stop()
