"""When a governance unit publishes its node's energy state, sans-IO (its timing, testable with a
fake clock; the unit's state task only waits and publishes).

The state goes out on the node's own broker every `period_s`, at once when something changed
(`due(now, dirty=True)`: a unit came or went, a broker reconnected), and at each market epoch's
first price, out of band (`published_early`), after which the next one is a whole period later.
A state also goes to the neighbours' brokers (`push_neighbours`), less often: the first at once,
then every `neighbour_period_s`, never while the previous push is still under way (a neighbour's
broker may take the links' timeout to fail)."""

from __future__ import annotations

import math


class NeighbourPush:
    """When the energy state also goes to the neighbours' brokers: the first state at once, then
    every `period_s`. Each push is a publish on every neighbour's broker, so it goes less often
    than the local state."""

    def __init__(self, period_s: float) -> None:
        self.period_s = period_s
        self._last = -math.inf

    def due(self, now: float) -> bool:
        """Whether the state published at `now` goes to the neighbours (and counts as sent)."""
        if now < self._last + self.period_s:
            return False
        self._last = now
        return True


class StatePacing:
    """See the module docstring. Times are the caller's monotonic clock, in seconds."""

    def __init__(self, period_s: float, neighbour_period_s: float) -> None:
        self.period_s = period_s
        self.next_at = math.inf  # when the next state goes out unless something changes first
        self._neighbours = NeighbourPush(neighbour_period_s)

    def start(self, now: float) -> None:
        self.next_at = now + self.period_s

    def wait_s(self, now: float) -> float:
        """How long the state task may wait for a change before it publishes anyway."""
        return max(0.0, self.next_at - now)

    def due(self, now: float, dirty: bool) -> bool:
        """Whether to publish at `now` (something changed, or the period is over); if so the
        next is a period later."""
        if not dirty and now < self.next_at:
            return False
        self.next_at = now + self.period_s
        return True

    def published_early(self, now: float) -> None:
        """An epoch's first price went out at `now`, outside the period: the next state a whole
        period after it."""
        self.next_at = now + self.period_s

    def push_neighbours(self, now: float, pushing: bool) -> bool:
        """Whether the state published at `now` also goes to the neighbours."""
        return not pushing and self._neighbours.due(now)
