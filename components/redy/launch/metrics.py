"""`redy launch --metrics PORT`: the launch's nodes and processes in the Prometheus text format.

Served on 127.0.0.1 by prometheus_client's own HTTP server (`/metrics`), from what the launch
already holds: the live model of the nodes' brokers that the table and the web page read (each
node's retained state and its governance's counters, `node_health`), the supervisor's respawns,
and each supervised process's resident memory and open file descriptors from /proc. Nothing is
counted here: a counter is the governance's or the supervisor's, so the page, the table and the
metrics cannot disagree.

Names follow Prometheus's conventions: a `redy_` prefix, base units (`_seconds`, `_bytes`),
`_total` on counters. A counter of a governance unit counts from its process's start
(`redy_governance_start_time_seconds`): a respawn resets it, which Prometheus's rate() expects.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from prometheus_client import start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from redy.launch.supervisor import Supervisor
from redy.topics import CONTRACT

STATUSES = next(f.values for f in CONTRACT.types["NodeEnergyState"].fields if f.name == "status")


def process_figures(pid: int) -> tuple[float, int] | None:
    """A live process's resident memory (bytes) and open file descriptors; None if it is gone
    or not ours to read."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return float(line.split()[1]) * 1024, fds
    return None


class LaunchCollector(Collector):
    """Collects the series of every node and process of `sup` from `feed`'s model at each
    scrape."""

    def __init__(self, sup: Supervisor, feed: Any) -> None:
        self.sup = sup
        self.feed = feed

    def collect(self) -> Iterator[Metric]:
        rows = {r["node"]: r for r in self.feed.snapshot()["nodes"]}
        nodes = [n.node for n in self.sup.desc.nodes]
        yield from self._nodes(nodes, rows)
        yield from self._processes()

    def _nodes(self, nodes: list[str], rows: dict[str, dict[str, Any]]) -> Iterable[Metric]:
        def gauge(name: str, doc: str, labels: tuple[str, ...] = ("node",)) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, doc, labels=list(labels))

        def counter(name: str, doc: str, labels: tuple[str, ...] = ("node",)) -> Any:
            return CounterMetricFamily(name, doc, labels=list(labels))

        up = gauge("redy_node_up", "1 if the node's broker answers and its state is fresh")
        price = gauge("redy_node_price_eur_per_mwh", "the clearing price the node found")
        epoch = gauge("redy_node_epoch", "the market epoch of that price")
        status = gauge("redy_node_status", "1 for the node's current status", ("node", "status"))
        offset = gauge("redy_node_clock_offset_seconds", "the node's clock minus its neighbours'")
        cleared = counter(
            "redy_market_epochs_cleared", "market epochs the node cleared in with others"
        )
        missed = counter(
            "redy_market_epochs_missed", "market epochs that ended without the node clearing"
        )
        offers = gauge("redy_market_offers", "offers the node's last clearing counted")
        dials = counter("redy_peer_dials", "connections opened to peers' brokers")
        failures = counter("redy_peer_failures", "peer connections or deliveries that failed")
        links = gauge("redy_peer_links", "connections to peers' brokers open now")
        dropped = counter(
            "redy_messages_dropped", "messages and work dropped, per reason", ("node", "reason")
        )
        inbox = gauge("redy_governance_inbox_messages", "messages waiting in the inboxes")
        tasks = gauge("redy_governance_tasks", "asyncio tasks of the governance's process")
        started = gauge("redy_governance_start_time_seconds", "when the governance process started")
        solved = counter("redy_plan_solved", "plans the node solved and published")
        solve_s = gauge("redy_plan_solve_seconds", "wall time of the node's last plan solve")
        interval = gauge("redy_plan_interval", "the current planning interval")
        binding = gauge(
            "redy_plan_binding", "1 if the node's own plan commands its units in this interval"
        )
        admitted = counter("redy_plan_offers_admitted", "peers' plan offers the node took in")
        refused = counter(
            "redy_plan_offers_refused",
            "plan offers the node refused, per reason",
            ("node", "reason"),
        )
        for node in nodes:
            r = rows.get(node, {})
            up.add_metric([node], float(r.get("liveness") == "up"))
            if r.get("price_eur_mwh") is not None:
                price.add_metric([node], r["price_eur_mwh"])
                epoch.add_metric([node], r["epoch"])
            for s in STATUSES:
                status.add_metric([node, s], float(r.get("status") == s))
            if r.get("clock_offset_s") is not None:
                offset.add_metric([node], r["clock_offset_s"])
            h = r.get("health")
            if h is None:
                continue
            cleared.add_metric([node], h["epochs_cleared"])
            missed.add_metric([node], h["epochs_missed"])
            offers.add_metric([node], h["offers"])
            dials.add_metric([node], h["peer_dials"])
            failures.add_metric([node], h["peer_failures"])
            links.add_metric([node], h["peer_links"])
            for reason, n in sorted(h["dropped"].items()):
                dropped.add_metric([node, reason], n)
            inbox.add_metric([node], h["inbox"])
            tasks.add_metric([node], h["tasks"])
            started.add_metric([node], h["started_s"])
            p = h.get("plan")
            if p is None:
                continue  # plans are off
            solved.add_metric([node], p["solved"])
            solve_s.add_metric([node], p["solve_s"])
            interval.add_metric([node], p["interval"])
            binding.add_metric([node], float(p["binding"]))
            admitted.add_metric([node], p["offers_admitted"])
            for reason, n in sorted(p["offers_refused"].items()):
                refused.add_metric([node, reason], n)
        yield from (up, price, epoch, status, offset, cleared, missed, offers, dials, failures)
        yield from (links, dropped, inbox, tasks, started)
        yield from (solved, solve_s, interval, binding, admitted, refused)

    def _processes(self) -> Iterable[Metric]:
        labels = ["node", "process"]
        alive = GaugeMetricFamily("redy_process_up", "1 if the process runs", labels=labels)
        respawns = CounterMetricFamily(
            "redy_process_respawns", "times the launcher brought the process back", labels=labels
        )
        rss = GaugeMetricFamily(
            "redy_process_resident_memory_bytes", "resident memory", labels=labels
        )
        fds = GaugeMetricFamily("redy_process_open_fds", "open file descriptors", labels=labels)
        procs: list[tuple[str, str, int | None, bool, int]] = []
        for c in self.sup.children:
            node, _, name = c.name.partition("/")
            procs.append((node, name, c.pid, c.alive(), c.respawns))
        for n, broker, restarts in self.sup.broker_processes():
            procs.append((n, "broker", getattr(broker, "pid", None), broker.alive(), restarts))
        procs.append(("", "launcher", os.getpid(), True, 0))
        for node, name, pid, running, count in procs:
            alive.add_metric([node, name], float(running))
            if name != "launcher":
                respawns.add_metric([node, name], count)
            figures = process_figures(pid) if running and pid is not None else None
            if figures is not None:
                rss.add_metric([node, name], figures[0])
                fds.add_metric([node, name], figures[1])
        yield from (alive, respawns, rss, fds)


def serve(sup: Supervisor, feed: Any, port: int) -> tuple[Any, int]:
    """Serve the launch's metrics on 127.0.0.1:`port` (0: any free port) in a thread; the server
    (its `shutdown()` stops it) and the port it listens on."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(LaunchCollector(sup, feed))
    server, _thread = start_http_server(port, addr="127.0.0.1", registry=registry)
    return server, server.server_port
