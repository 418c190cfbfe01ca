"""Distant mode end to end: 12 nodes (broker + governance each) form, heal and regrow the
overlay over real brokers, read from the retained views as an operator would."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from graphs import connected

from redy import messages
from redy.brokers import NodeBroker, ProcessBroker
from redy.topics import render

pytestmark = pytest.mark.e2e

N, C, SL = 12, 5, 3
PERIOD_S = 0.5
# Bounds on what the test measures, in shuffle periods. A quiet 2-core machine showed join 10,
# heal 3, rejoin 6; under a load of 9 one phase needed more than 10. Filling 12 views of 5 through
# one introducer takes a few rounds of fan-out; a dead neighbour is dropped after one unanswered
# shuffle (timeout < period) and replaced from the next reply; a restarted node needs its own
# view filled and one other node to pick it up.
JOIN_MAX, HEAL_MAX, REJOIN_MAX = 40, 20, 30


class Grid:
    def __init__(self, tmp: Path, free_port: Any) -> None:
        self.tmp = tmp
        self.brokers: dict[str, ProcessBroker] = {}
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.free_port = free_port
        self.intro = ""

    def start_broker(self, node: str, port: int | None = None, grid: int | None = None) -> None:
        cfg = NodeBroker(
            node=node,
            port=port or self.free_port(),
            grid_port=grid or self.free_port(),
            unit_port=self.free_port(),
            state_dir=self.tmp / "state",
        )
        b = ProcessBroker(cfg)
        b.start()
        self.brokers[node] = b

    def start_governance(self, node: str) -> None:
        b = self.brokers[node]
        argv = [
            sys.executable,
            "-m",
            "redy",
            "governance",
            "--node",
            node,
            "--broker",
            b.uri,
            "--credentials",
            str(b.config.credentials_path),
            "--grid-broker",
            b.grid_uri,
            "--view-size",
            str(C),
            "--shuffle-length",
            str(SL),
            "--shuffle-period-s",
            str(PERIOD_S),
            "--shuffle-timeout-s",
            "0.4",
            "--period-s",
            str(PERIOD_S),
            "--seed",
            str(abs(hash(node)) % 10_000),
        ]
        if self.intro and self.intro != b.grid_uri:
            argv += ["--introducer", self.intro]
        with open(self.tmp / f"{node}.log", "ab") as log:
            self.procs[node] = subprocess.Popen(argv, stdout=log, stderr=log)

    def views(self, nodes: list[str]) -> dict[str, set[str]]:
        """The retained view of each node, read from its own broker as operator."""
        out = {}
        for n in nodes:
            b = self.brokers[n]
            done = subprocess.run(
                [
                    "mosquitto_sub",
                    "-p",
                    str(b.port),
                    "-u",
                    "operator",
                    "-P",
                    b.credentials.password("operator"),
                    "-t",
                    render("view", node=n),
                    "-C",
                    "1",
                    "-W",
                    "2",
                ],
                capture_output=True,
                check=False,
            )
            if done.returncode == 0 and done.stdout.strip():
                view = messages.decode(render("view", node=n), done.stdout.strip())
                out[n] = {e.node for e in view.entries}
        return out

    def kill(self, node: str) -> None:
        self.procs[node].send_signal(signal.SIGKILL)
        self.procs[node].wait()
        self.brokers[node].kill()

    def stop(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs.values():
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        for b in self.brokers.values():
            b.stop()


def _until(pred: Any, periods: int, what: str) -> float:
    """How many shuffle periods until `pred()` holds, checked every period; AssertionError once
    `periods` have passed without it."""
    start = time.monotonic()
    deadline = start + periods * PERIOD_S
    while time.monotonic() < deadline:
        if pred():
            return (time.monotonic() - start) / PERIOD_S
        time.sleep(PERIOD_S)
    raise AssertionError(f"{what} not within {periods} periods")


@pytest.fixture
def grid(tmp_path: Path, free_port: Any) -> Any:
    g = Grid(tmp_path, free_port)
    yield g
    g.stop()


def test_twelve_nodes_join_heal_after_three_crashes_and_a_restarted_node_rejoins(
    grid: Grid,
) -> None:
    names = [f"node-{i:02d}" for i in range(N)]
    for n in names:
        grid.start_broker(n)
    grid.intro = grid.brokers[names[0]].grid_uri
    for n in names:
        grid.start_governance(n)

    def full_and_connected() -> bool:
        v = grid.views(names)
        return len(v) == N and all(len(x) == C for x in v.values()) and connected(v)

    joined_in = _until(full_and_connected, JOIN_MAX, "every view full and the overlay connected")

    first = grid.brokers[names[0]]
    auth = ["--broker", first.uri, "--credentials", str(first.config.credentials_path)]
    redy = [sys.executable, "-m", "redy"]
    shown = subprocess.run([*redy, "view", names[0], *auth], capture_output=True, text=True)
    assert shown.returncode == 0, shown.stderr
    # The view moves while we look (a shuffle in flight holds one entry less): check its shape.
    header = re.match(rf"view of {names[0]} \((\d+) neighbours\)", shown.stdout)
    assert header is not None and 1 <= int(header.group(1)) <= C
    assert len(shown.stdout.strip().splitlines()) == 1 + int(header.group(1))
    listed = subprocess.run(
        [*redy, "node", "list", *auth], capture_output=True, text=True, timeout=60
    )
    assert listed.returncode == 0, listed.stderr
    reached = {line.split()[0] for line in listed.stdout.splitlines()}
    # Following directed views reaches everyone known by someone; with views of 5 in 12 nodes a
    # node nobody lists at this instant is rare but possible, so one may be missing.
    assert names[0] in reached and reached <= set(names) and len(reached) >= N - 1

    victims = names[3:6]
    ports = {n: (grid.brokers[n].port, grid.brokers[n].grid_port) for n in victims}
    for n in victims:
        grid.kill(n)
    survivors = [n for n in names if n not in victims]

    def healed() -> bool:
        v = grid.views(survivors)
        return (
            len(v) == len(survivors)
            and all(not (x & set(victims)) for x in v.values())
            and connected(v)
        )

    healed_in = _until(healed, HEAL_MAX, "no live view names the dead and survivors connected")

    back = victims[0]
    grid.start_broker(back, *ports[back])
    grid.start_governance(back)

    def rejoined() -> bool:
        v = grid.views([*survivors, back])
        return len(v.get(back, ())) == C and any(back in x for n, x in v.items() if n != back)

    rejoined_in = _until(rejoined, REJOIN_MAX, "the restarted node back in the overlay")
    # Each phase is bounded by _until above; the figures go to the log for the README's table.
    print(f"periods: joined {joined_in:.0f}, healed {healed_in:.0f}, rejoined {rejoined_in:.0f}")
