"""Market cores run against each other over in-memory links with a fake clock (no broker, no
asyncio): what the tests and the attack bench drive, in milliseconds per simulated epoch."""

from __future__ import annotations

import heapq
import itertools
import random
from collections.abc import Callable, Mapping
from typing import Protocol

from redy.balancing.aggregation import NodeId
from redy.balancing.discovery import PhaseGossip
from redy.balancing.epochs import Action, Cleared, Dropped, Event, Received, Refused, Send, Tick

# An adversary sees each honest push as it leaves (sender, time, message) and answers with the
# messages it injects: (target, message), delivered like any other.
Adversary = Callable[[NodeId, float, PhaseGossip], list[tuple[NodeId, PhaseGossip]]]


class Core(Protocol):
    def handle(self, now: float, event: Event) -> list[Action]: ...
    def next_deadline(self) -> float: ...


class InMemoryLinks:
    """Every message arrives `latency_s` after it was sent; pushes to `dead` nodes are refused
    at once. Views: node i knows i + 1 and 5 other random nodes (seeded by n)."""

    def __init__(
        self,
        n: int,
        latency_s: float,
        dead: frozenset[int] = frozenset(),
        adversary: Adversary | None = None,
    ) -> None:
        rng = random.Random(n)
        self.views = {
            i: sorted({(i + 1) % n, *rng.sample([j for j in range(n) if j != i], 5)})
            for i in range(n)
        }
        self.latency_s = latency_s
        self.dead = dead
        self.adversary = adversary
        self.cleared: list[Cleared] = []
        self.dropped: list[Dropped] = []
        self.sent = 0
        self._queue: list[tuple[float, int, NodeId, Event]] = []
        self._seq = itertools.count()

    def run(self, cores: Mapping[NodeId, Core], start_s: float, until_s: float) -> None:
        """Run the cores in time order from `start_s` until `until_s` (fake seconds)."""
        now = start_s
        for i, c in cores.items():
            self._act(i, now, c.handle(now, Tick()))
        while now < until_s:
            deadline, i = min((c.next_deadline(), i) for i, c in cores.items())
            event: Event
            if self._queue and self._queue[0][0] <= deadline:
                now, _, i, event = heapq.heappop(self._queue)
                if i not in cores:
                    continue  # to a node that is not run here (the adversary's own)
            else:
                now, event = deadline, Tick()
            self._act(i, now, cores[i].handle(now, event))

    def _deliver(self, at: float, target: NodeId, event: Event) -> None:
        heapq.heappush(self._queue, (at, next(self._seq), target, event))

    def _act(self, node: NodeId, now: float, actions: list[Action]) -> None:
        for a in actions:
            if isinstance(a, Cleared):
                self.cleared.append(a)
            elif isinstance(a, Dropped):
                self.dropped.append(a)
            elif isinstance(a, Send):
                self.sent += 1
                target = a.msg.target
                if target in self.dead:
                    self._deliver(now, node, Refused(a.msg))
                else:
                    self._deliver(now + self.latency_s, target, Received(a.msg))
                if self.adversary is not None:
                    for to, msg in self.adversary(node, now, a.msg):
                        self._deliver(now + self.latency_s, to, Received(msg))
