"""Half a generated grid hangs at once, on real processes, beside what the simulator predicts.

Generates a grid of `--nodes` nodes (plants, factories, EV stations, households: the launch
files' c, SL and periods, i.e. docs/shuffle-study.md's recommendation), runs it with
`redy launch --compose`, waits until every node has a view and the grid clears one price, then
stops (SIGSTOP) the broker and the container process of half the nodes (not the plants) at
once: to the survivors they hang, as a host that vanished. It prints the seconds until no
survivor's retained view names a stopped node and until the survivors clear one price again,
beside the seconds the simulator predicts for the same N and settings (the core engine, the
verify detector, 5 seeds). Ports: a base where all the grid's ports are free. Everything it
started is resumed and stopped at the end.

    python bench/overlay_crash.py [--nodes 50] [--epoch-s 4] [--timeout 240] [--settle 120]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import docpage
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

ROOT = Path(__file__).resolve().parents[1]
REDY = [sys.executable, "-c", "import sys; from redy.cli import main; sys.exit(main())"]


class Watch:
    """Every node's retained view and energy state, read from its own broker as an operator."""

    def __init__(self, state: Path, nodes: dict[str, int]) -> None:
        self.views: dict[str, set[str]] = {}
        self.states: dict[str, dict[str, Any]] = {}
        self.lock = threading.Lock()
        self.outcome: str | None = None
        self.clients = []
        for node, port in nodes.items():
            creds = json.loads((state / node / "credentials.json").read_text())
            c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"watch-{node}")
            c.username_pw_set("operator", creds["users"]["operator"])
            c.on_connect = self._subscriber(node)
            c.on_message = self._on_message
            c.connect_async("127.0.0.1", port, keepalive=30)
            c.loop_start()
            self.clients.append(c)

    def _subscriber(self, node: str) -> Any:
        def on_connect(c: mqtt.Client, *_: Any) -> None:
            c.subscribe([(f"redy/{node}/membership/view", 1), (f"redy/{node}/governance/state", 1)])

        return on_connect

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        with contextlib.suppress(ValueError, KeyError, TypeError):
            body = json.loads(msg.payload)
            node = msg.topic.split("/")[1]
            with self.lock:
                if msg.topic.endswith("/membership/view"):
                    self.views[node] = {e["node"] for e in body["entries"]}
                else:
                    self.states[node] = body

    def close(self) -> None:
        for c in self.clients:
            c.disconnect()
            c.loop_stop()

    def one_price(self, nodes: list[str], after_epoch: int) -> int | None:
        """The epoch (> after_epoch) in which every node of `nodes` reports one price and one
        status (`self.outcome`)."""
        with self.lock:
            states = [self.states.get(n) for n in nodes]
        if any(s is None or s.get("epoch") is None for s in states):
            return None
        epochs = {s["epoch"] for s in states if s}
        if len(epochs) != 1:
            return None
        epoch = epochs.pop()
        prices = [s.get("price_eur_mwh") for s in states if s]
        # One outcome: all cleared, or all short or in surplus at the range's end (the price
        # is then the cap or the floor, and still one).
        statuses = {s.get("status") for s in states if s}
        if epoch <= after_epoch or len(statuses) != 1:
            return None
        self.outcome = statuses.pop()
        if any(p is None for p in prices) or max(prices) - min(prices) > 0.01:
            return None
        return int(epoch)

    def ready(self, nodes: list[str]) -> bool:
        with self.lock:
            return all(self.views.get(n) and (self.states.get(n) or {}).get("epoch") for n in nodes)

    def spread(self, nodes: list[str]) -> str:
        """The latest epoch's price spread (EUR/MWh) over those of `nodes` that report it."""
        with self.lock:
            states = [self.states.get(n) or {} for n in nodes]
        last = max((s.get("epoch") or 0 for s in states), default=0)
        prices = [
            s["price_eur_mwh"]
            for s in states
            if s.get("epoch") == last and s.get("price_eur_mwh") is not None
        ]
        if not prices:
            return "no price"
        return f"{max(prices) - min(prices):.2f} EUR/MWh over {len(prices)} of {len(nodes)}"

    def names(self, survivors: list[str], gone: set[str]) -> int:
        with self.lock:
            return sum(len(self.views.get(n, set()) & gone) for n in survivors)


def _pids(state: Path, node: str) -> list[int]:
    """The broker and the container process of `node` in this launch's state dir."""
    conf = f"{state}/{node}/mosquitto.conf"
    spec = f"{state}/{node}/compose.json"
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            if (conf in cmd and "mosquitto" in cmd) or (spec in cmd and "redy.launch" in cmd):
                out.append(int(entry.name))
    return out


def _free_base(count: int) -> int:
    from redy.brokers import port_is_free

    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(21000, 29000 - count)
        if all(port_is_free(base + i) and port_is_free(base + 10000 + i) for i in range(count)):
            return base
    raise SystemExit("no free range of ports found")


def _predicted(nodes: int, view: int, shuffle: int, period_s: float, timeout_s: float) -> str:
    from redy.sim.membership import simulate_membership

    cycles = []
    for seed in range(1, 6):
        r = simulate_membership(
            nodes=nodes,
            view_size=min(view, nodes - 1),
            shuffle_length=shuffle,
            cycles=40,
            crash=0.5,
            crash_at=20,
            detector="verify",
            bootstrap="random",
            seed=seed,
            engine="core",
        )
        cycles.append(next((k + 1 for k, d in enumerate(r["dead_links"]) if d == 0), 99))
    mean = sum(cycles) / len(cycles)
    return (
        f"{mean:.1f} cycles = {mean * period_s + timeout_s:.1f} s (at most, {period_s:g} s period)"
    )


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--nodes", type=int, default=50)
    ap.add_argument("--epoch-s", type=float, default=4.0)
    ap.add_argument("--timeout", type=float, default=240.0, help="for the grid to start")
    ap.add_argument(
        "--settle", type=float, default=120.0, help="for one price, before and after the crash"
    )
    args = ap.parse_args()
    n = args.nodes
    plants, factories, ev = max(2, n // 16), max(1, n // 10), max(1, n // 10)
    mix = f"gas_plant={plants},factory={factories},ev_station={ev},eco_house={n - plants - factories - ev}"
    tmp = Path(tempfile.mkdtemp(prefix="overlay-crash-"))
    grid = tmp / "grid.yaml"
    base = _free_base(n)
    subprocess.run(
        [
            *REDY,
            "grid",
            "generate",
            "--mix",
            mix,
            "--ports",
            str(base),
            "--epoch-s",
            str(args.epoch_s),
            "-o",
            str(grid),
        ],
        check=True,
    )
    from redy.launch.parser import parse

    desc = parse(grid, {})
    ports = {s.node: s.broker.port for s in desc.nodes}
    kinds = {s.node: s.governance.kind if s.governance else "" for s in desc.nodes}
    g0 = next(s.governance for s in desc.nodes if s.governance and s.governance.kind == "eco_house")
    state = (tmp / "state").resolve()
    log = open(tmp / "launch.log", "wb")  # noqa: SIM115
    launcher = subprocess.Popen(
        [*REDY, "launch", str(grid), "--compose", "--state-dir", str(state)],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    stopped: list[int] = []
    watch = None
    try:
        deadline = time.monotonic() + args.timeout
        while not all((state / node / "credentials.json").exists() for node in ports):
            if time.monotonic() > deadline or launcher.poll() is not None:
                raise SystemExit(f"the grid did not start; see {tmp / 'launch.log'}")
            time.sleep(1)
        watch = Watch(state, ports)
        nodes = list(ports)
        print(
            f"{n} nodes ({mix}), c = {g0.view_size}, SL = {g0.shuffle_length}; waiting for one price"
        )
        started = time.monotonic()
        # Every node with a view and an epoch; then one price, for at most `--settle` seconds
        # (a saturated host may never get there: the crash goes ahead, and the report says so).
        before = None
        while not watch.ready(nodes):
            if time.monotonic() > deadline:
                raise SystemExit("not every node had a view and an epoch before the crash")
            time.sleep(0.5)
        settle = time.monotonic() + args.settle
        while before is None and time.monotonic() < settle:
            before = watch.one_price(nodes, 0)
            time.sleep(0.5)
        spread0 = watch.spread(nodes)
        after = time.monotonic() - started
        if before is None:
            print(f"no common price within {after:.0f} s of the start (spread {spread0})")
        else:
            print(f"one price at epoch {before}, {after:.0f} s after the start")
        before = before or 0
        deadline = time.monotonic() + args.settle
        candidates = [node for node in nodes if kinds[node] != "gas_plant"]
        gone = set(random.Random(1).sample(candidates, n // 2))
        survivors = [node for node in nodes if node not in gone]
        for node in gone:
            for pid in _pids(state, node):
                os.kill(pid, signal.SIGSTOP)
                stopped.append(pid)
        t0 = time.monotonic()
        t0_wall = time.time()
        named0 = watch.names(survivors, gone)
        views_clean = price_again = None
        while (views_clean is None or price_again is None) and time.monotonic() < deadline:
            now = time.monotonic() - t0
            if views_clean is None and watch.names(survivors, gone) == 0:
                views_clean = now
            if price_again is None:
                epoch = watch.one_price(survivors, before)
                # An epoch that started after the crash (epoch numbers count epochs since 1970).
                if epoch is not None and epoch * args.epoch_s >= t0_wall:
                    price_again = now
            time.sleep(0.2)
        predicted = _predicted(
            n, g0.view_size, g0.shuffle_length, g0.shuffle_period_s, g0.shuffle_timeout_s
        )

        def shown(x: float | None) -> str:
            return "not within the timeout" if x is None else f"{x:.1f} s"

        print(f"stopped {len(gone)} nodes at once; survivors' views named them {named0} times")
        print(f"no survivor's view names a stopped node after: {shown(views_clean)}")
        print(f"  the simulator predicts (verify detector, N = {n}): {predicted}")
        print(
            f"the survivors clear one price again after: {shown(price_again)} "
            f"(epochs of {args.epoch_s:g} s; {watch.outcome})"
        )
        if price_again is None:
            print(f"  survivors' last epoch: price spread {watch.spread(survivors)}")
    finally:
        for pid in stopped:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        if watch is not None:
            watch.close()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(launcher.pid, signal.SIGTERM)
        try:
            launcher.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(launcher.pid, signal.SIGKILL)
            launcher.wait()
        log.close()
    return 0


if __name__ == "__main__":
    with docpage.recorded("overlay_crash"):  # --docs: its page of the site too
        sys.exit(main())
