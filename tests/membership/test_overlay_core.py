"""The sans-IO overlay (redy.membership.overlay) of 2 to 50 nodes against each other, over
in-memory links with a fake clock: joining through one introducer, message loss, crashes.

What the governance units do over MQTT (tests/membership/test_overlay_e2e.py, 12 processes and
brokers, ~15 s) in milliseconds: the harness plays the driver (redy.units.overlay) and the
network. A crashed node's broker is gone with it, so a message to it is refused at once (strong
evidence); a lost message is silence until the request's timeout (weak evidence).
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections import deque

import pytest

from redy import messages
from redy.membership.cyclon import Cyclon
from redy.membership.overlay import Overlay, Send

pytestmark = pytest.mark.pure

PERIOD_S, TIMEOUT_S, LATENCY_S = 1.0, 0.5, 0.02
C, SL = 5, 3


def _uri(node: str) -> str:
    return f"mqtts://{node}.test:8883"


class Net:
    """Nodes, an event queue ordered by fake time, loss and crashes."""

    def __init__(self, n: int, seed: int, loss: float = 0.0) -> None:
        self.rng = random.Random(seed)
        self.loss = loss
        self.now = 0.0
        self.dead: set[str] = set()
        self.nodes: dict[str, Overlay] = {}
        self._events: list[tuple[float, int, str, str, object]] = []
        self._seq = itertools.count()
        self.names = [f"n{i:02d}" for i in range(n)]
        self.introducer = self.names[0]
        for name in self.names:
            core = Cyclon(name, _uri(name), C, SL, random.Random(self.rng.getrandbits(32)))
            self.nodes[name] = Overlay(
                node=name, grid_uri=_uri(name), core=core, timeout_s=TIMEOUT_S
            )
            # Each node ticks at its own phase of the period, as unsynchronised processes do.
            self._at(self.rng.uniform(0, PERIOD_S), "tick", name, None)

    def _at(self, t: float, kind: str, node: str, what: object) -> None:
        heapq.heappush(self._events, (t, next(self._seq), kind, node, what))

    def _join(self, name: str) -> None:
        """What the driver does when alone: read the introducer's descriptor and view."""
        intro = self.introducer
        if name == intro or intro in self.dead:
            return
        desc = messages.NodeDescriptor(
            node=intro, kind="generic", broker=_uri(intro), capabilities=(), ts_s=0.0
        )
        view = messages.View(node=intro, ts_s=0.0, entries=self.nodes[intro].view)
        self.nodes[name].seed(desc, view)

    def _send(self, src: str, send: Send) -> None:
        overlay = self.nodes[src]
        if send.node in self.dead:
            overlay.failed(send, "connection refused")
            return
        overlay.sent(send, self.now)
        if self.rng.random() >= self.loss:
            self._at(self.now + LATENCY_S, "deliver", send.node, send.message)

    def run(self, periods: float) -> None:
        """Every event up to `periods` from now, then the messages still in flight (a shuffle
        in flight holds its target out of the view: the views are read between shuffles)."""
        end = self.now + periods * PERIOD_S
        while self._events and (self._events[0][0] <= end or self._events[0][2] == "deliver"):
            self._step()
        self.now = max(self.now, end)

    def _step(self) -> None:
        self.now, _, kind, node, what = heapq.heappop(self._events)
        if node in self.dead:
            return
        overlay = self.nodes[node]
        if kind == "tick":
            if overlay.alone:
                self._join(node)
            for send in overlay.tick(self.now):
                self._send(node, send)
            self._at(self.now + PERIOD_S, "tick", node, None)
        elif isinstance(what, messages.ShuffleRequest):
            self._send(node, overlay.on_request(what))
        elif isinstance(what, messages.ShuffleReply):
            overlay.on_reply(what)

    def crash(self, names: list[str]) -> None:
        self.dead.update(names)

    def views(self) -> dict[str, set[str]]:
        return {n: {e.node for e in o.view} for n, o in self.nodes.items() if n not in self.dead}

    def until(self, done: object, periods: int) -> int:
        """Periods until `done(views)` holds (checked once a period); AssertionError after."""
        assert callable(done)
        for p in range(1, periods + 1):
            self.run(1)
            if done(self.views()):
                return p
        raise AssertionError(f"not within {periods} periods: {self.views()}")


def _connected(views: dict[str, set[str]]) -> bool:
    adj: dict[str, set[str]] = {n: set() for n in views}
    for n, vs in views.items():
        for m in vs & set(views):
            adj[n].add(m)
            adj[m].add(n)
    start = next(iter(views))
    seen, todo = {start}, deque([start])
    while todo:
        for m in adj[todo.popleft()] - seen:
            seen.add(m)
            todo.append(m)
    return seen == set(views)


def _full_and_connected(views: dict[str, set[str]]) -> bool:
    """Connected, and every view full but for at most one entry: a reply that brings entries
    the view already holds leaves it one short until a later shuffle (CYCLON drops
    duplicates), and with n <= c a view cannot fill at all."""
    want = min(C, len(views) - 1)
    return all(len(v) >= want - 1 for v in views.values()) and _connected(views)


def test_two_nodes_find_each_other_through_the_introducer() -> None:
    net = Net(2, seed=1)
    net.until(lambda v: v["n00"] == {"n01"}, periods=3)
    for _ in range(10):
        net.run(1)
        views = net.views()
        # n01's shuffle takes n00 out of its view and n00 has nothing else to give back: n01
        # is alone until its next period, when it rejoins (and it still knows n00 meanwhile).
        assert views["n00"] == {"n01"} and views["n01"] <= {"n00"}
        assert "n00" in net.nodes["n01"].contacts


# Bounds in periods, twice the worst of seeds 1-20 (4 periods for 10, 20 and 50 nodes).
@pytest.mark.parametrize("n", [10, 20, 50])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_nodes_joining_through_one_introducer_fill_their_views_and_connect(
    n: int, seed: int
) -> None:
    net = Net(n, seed)
    net.until(_full_and_connected, periods=8)
    for _ in range(20):  # and it stays so
        net.run(1)
        assert _full_and_connected(net.views())


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_fifth_of_the_messages_lost_leaves_50_nodes_connected(seed: int) -> None:
    net = Net(50, seed, loss=0.2)
    net.until(_full_and_connected, periods=10)  # seeds 1-10: 5 at worst
    for _ in range(30):  # a lost message is weak evidence: nobody is dropped for it for long
        net.run(1)
        views = net.views()
        assert _connected(views)
        # Seeds 1-10: 4.5 entries of 5 on average at worst (a shuffle lost holds one out).
        assert sum(map(len, views.values())) >= 0.85 * C * len(views)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_ten_of_50_crashed_are_forgotten_and_the_survivors_stay_connected(seed: int) -> None:
    net = Net(50, seed)
    net.until(_full_and_connected, periods=8)
    victims = net.rng.sample(net.names[1:], 10)
    net.crash(victims)

    def healed(views: dict[str, set[str]]) -> bool:
        return not any(v & set(victims) for v in views.values()) and _connected(views)

    # Seeds 1-10: 6 to 12 periods until no view names the dead, full again one period later.
    net.until(healed, periods=20)
    net.until(_full_and_connected, periods=5)


def test_a_crashed_introducer_does_not_stop_the_others() -> None:
    net = Net(20, seed=4)
    net.until(_full_and_connected, periods=8)
    net.crash([net.introducer])
    net.until(lambda v: _full_and_connected(v) and not any("n00" in x for x in v.values()), 15)
