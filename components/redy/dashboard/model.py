"""What the dashboard shows, computed from the messages of the nodes' brokers (sans-IO).

`GridModel` takes events — a broker connection up or down, a message on a topic, with the time
it arrived — and `snapshot(now_s)` returns the page's data as plain JSON-ready dicts: every node
(kind, production, consumption, price, status, units online, liveness), the overlay's edges from
the retained views, per market epoch the common price and the grid balance, and the plan the
nodes solved (their retained `Plan`s): the next 24 h of prices and each node's planned injection.
"""

from __future__ import annotations

import statistics
from typing import Any

import attrs

from redy import messages
from redy.errors import InvalidMessage
from redy.topics import CONTRACT

HISTORY_EPOCHS = 60
PLAN_HOURS = 24.0  # of the plan the page shows
# A price within this of the epoch's median counts as agreeing (gossip ends within a hair).
_AGREE_EUR_MWH = 0.5


@attrs.define
class _Node:
    node: str
    connection: str | None = None  # the broker connection it was seen on (None: only in views)
    kind: str | None = None
    state: messages.NodeEnergyState | None = None
    state_at_s: float | None = None
    units: dict[str, str] = attrs.field(factory=dict)
    neighbours: tuple[str, ...] = ()
    health: messages.GovernanceHealth | None = None  # the governance's counters
    plan: messages.Plan | None = None  # the plan it solved last
    # Over every governance state taken: how many, their nets' sum, the peaks.
    states: int = 0
    net_sum_kw: float = 0.0
    peak_production_kw: float = 0.0
    peak_consumption_kw: float = 0.0


class GridModel:
    """The grid as the dashboard sees it. `stale_after_s`: a node whose governance state has not
    changed for that long (its broker still answering) is shown as stale."""

    def __init__(self, stale_after_s: float = 15.0) -> None:
        self.stale_after_s = stale_after_s
        self._nodes: dict[str, _Node] = {}
        self._connected: dict[str, bool] = {}
        # epoch -> node -> (price EUR/MWh, net kW) as each node reported it for that epoch
        self._epochs: dict[int, dict[str, tuple[float, float]]] = {}
        self.version = 0  # bumps on every change, so a stream sends only news

    def expect(self, connection: str, node: str | None = None) -> None:
        """A broker connection the dashboard will open; `node` if its node id is known."""
        self._connected.setdefault(connection, False)
        if node is not None:
            self._node(node).connection = connection
        self.version += 1

    def on_connection(self, connection: str, up: bool) -> None:
        self._connected[connection] = up
        self.version += 1

    def on_message(self, connection: str, topic: str, payload: bytes, now_s: float) -> bool:
        """Take one message; False (and nothing changes) if it is not one the page shows."""
        try:
            spec, params = CONTRACT.match(topic)
            msg = messages.decode(topic, payload)
        except InvalidMessage:
            return False
        if spec.name not in (
            "descriptor",
            "node_state",
            "node_health",
            "unit_state",
            "view",
            "plan",
        ):
            return False
        node = self._node(params["node"])
        node.connection = node.connection or connection
        if isinstance(msg, messages.NodeDescriptor):
            node.kind = msg.kind
        elif isinstance(msg, messages.NodeEnergyState):
            if msg.node != node.node:
                return False
            node.state, node.state_at_s = msg, now_s
            node.states += 1
            node.net_sum_kw += msg.net_kw
            node.peak_production_kw = max(node.peak_production_kw, msg.production_kw)
            node.peak_consumption_kw = max(node.peak_consumption_kw, msg.consumption_kw)
            if msg.epoch is not None and msg.price_eur_mwh is not None:
                self._epochs.setdefault(msg.epoch, {})[node.node] = (msg.price_eur_mwh, msg.net_kw)
                for old in sorted(self._epochs)[:-HISTORY_EPOCHS]:
                    del self._epochs[old]
        elif isinstance(msg, messages.GovernanceHealth):
            if msg.node != node.node:
                return False
            node.health = msg
        elif isinstance(msg, messages.Plan):
            if msg.node != node.node:
                return False
            node.plan = msg
        elif isinstance(msg, messages.UnitState):
            node.units[params["unit"]] = msg.state
        elif isinstance(msg, messages.View):
            node.neighbours = tuple(sorted(e.node for e in msg.entries))
            for e in msg.entries:
                self._node(e.node)
        self.version += 1
        return True

    def _node(self, node: str) -> _Node:
        if node not in self._nodes:
            self._nodes[node] = _Node(node)
        return self._nodes[node]

    def _liveness(self, n: _Node, now_s: float) -> str:
        if n.connection is None:
            return "unknown"  # a neighbour named in a view, whose broker we do not watch
        if not self._connected.get(n.connection, False):
            return "unreachable"
        if n.state_at_s is None:
            return "waiting"
        if now_s - n.state_at_s > self.stale_after_s:
            return "stale"
        return "up"

    def snapshot(self, now_s: float) -> dict[str, Any]:
        """The page's data (see the module doc); nodes sorted by id."""
        rows = []
        for name in sorted(self._nodes):
            n = self._nodes[name]
            if n.connection is None and not n.units and n.state is None:
                continue  # only known from someone's view: a graph vertex, not a table row
            s = n.state
            online = sum(1 for v in n.units.values() if v == "online")
            rows.append(
                {
                    "node": name,
                    "kind": n.kind or (None if s is None else "?"),
                    "production_kw": None if s is None else s.production_kw,
                    "consumption_kw": None if s is None else s.consumption_kw,
                    "net_kw": None if s is None else s.net_kw,
                    "flex_up_kw": None if s is None else s.flex_up_kw,
                    "flex_down_kw": None if s is None else s.flex_down_kw,
                    "price_eur_mwh": None if s is None else s.price_eur_mwh,
                    "epoch": None if s is None else s.epoch,
                    "status": None if s is None else s.status,
                    "units_online": online if n.units else (s.units_online if s else 0),
                    "units_total": len(n.units) if n.units else (s.units_total if s else 0),
                    "liveness": self._liveness(n, now_s),
                    "states": n.states,
                    "mean_net_kw": n.net_sum_kw / n.states if n.states else None,
                    "peak_production_kw": n.peak_production_kw,
                    "peak_consumption_kw": n.peak_consumption_kw,
                    "clock_offset_s": None if s is None else s.clock_offset_s,
                    "health": None if n.health is None else _health(n.health),
                }
            )
        edges = [[a, b] for a, n in sorted(self._nodes.items()) for b in n.neighbours]
        up = [r for r in rows if r["liveness"] == "up" and r["net_kw"] is not None]
        return {
            "nodes": rows,
            "vertices": sorted(self._nodes),
            "edges": edges,
            "epochs": self._history(),
            "plan": self._plan(),
            "common_price": self._common_price(),
            "grid_balance_kw": sum(r["net_kw"] for r in up) if up else None,
            "sim_time_s": max(
                (n.state.ts_s for n in self._nodes.values() if n.state is not None), default=None
            ),
            "version": self.version,
        }

    def health(self) -> dict[str, messages.GovernanceHealth]:
        """The latest counters of every node that reported them."""
        return {name: n.health for name, n in self._nodes.items() if n.health is not None}

    def _history(self) -> list[dict[str, Any]]:
        out = []
        for epoch in sorted(self._epochs):
            reports = self._epochs[epoch]
            out.append(
                {
                    "epoch": epoch,
                    "price_eur_mwh": statistics.median(p for p, _ in reports.values()),
                    "balance_kw": sum(net for _, net in reports.values()),
                    "nodes": len(reports),
                }
            )
        return out

    def _plan(self) -> dict[str, Any] | None:
        """The latest interval's plan most nodes hold (by its digest): its prices and every
        holder's planned injection over the next PLAN_HOURS, and how many nodes hold it."""
        plans = [n.plan for n in self._nodes.values() if n.plan is not None]
        if not plans:
            return None
        start = max(p.start for p in plans)
        latest = [p for p in plans if p.start == start]
        counts: dict[str, int] = {}
        for p in latest:
            counts[p.digest] = counts.get(p.digest, 0) + 1
        digest = max(sorted(counts), key=lambda d: counts[d])
        held = sorted((p for p in latest if p.digest == digest), key=lambda p: p.node)
        first = held[0]
        n = min(len(first.price_eur_mwh), max(1, round(PLAN_HOURS * 60 / first.interval_min)))
        return {
            "start": start,
            "interval_s": first.interval_s,
            "interval_min": first.interval_min,
            "digest": digest,
            "agree": len(held),
            "of": len(latest),
            "offers": first.offers,
            "hours": [t * first.interval_min / 60.0 for t in range(n)],
            "price_eur_mwh": list(first.price_eur_mwh[:n]),
            "injection_kw": {p.node: list(p.injection_kw[:n]) for p in held},
        }

    def _common_price(self) -> dict[str, Any] | None:
        """The median price of the latest epoch most reporting nodes have reached, and how many
        of them agree with it."""
        if not self._epochs:
            return None
        most = max(len(r) for r in self._epochs.values())
        epoch = max(e for e, r in self._epochs.items() if len(r) == most)
        prices = [p for p, _ in self._epochs[epoch].values()]
        median = statistics.median(prices)
        agree = sum(1 for p in prices if abs(p - median) <= _AGREE_EUR_MWH)
        return {"epoch": epoch, "price_eur_mwh": median, "agree": agree, "of": len(prices)}


def _health(h: messages.GovernanceHealth) -> dict[str, Any]:
    """A node's counters as the page, the table and the metrics read them."""
    return {
        "epochs_cleared": h.epochs_cleared,
        "epochs_missed": h.epochs_missed,
        "offers": h.offers,
        "peer_dials": h.peer_dials,
        "peer_failures": h.peer_failures,
        "peer_links": h.peer_links,
        "inbox": h.inbox,
        "tasks": h.tasks,
        "dropped": {c.name: c.count for c in h.dropped},
        "started_s": h.started_s,
        "plan": None if h.plan is None else _plan_counters(h.plan),
    }


def _plan_counters(p: messages.PlanCounters) -> dict[str, Any]:
    refused = {c.name: c.count for c in p.offers_refused}
    return {**attrs.asdict(p, recurse=False), "offers_refused": refused}
