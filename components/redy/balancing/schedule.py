"""When a node gossips and clears inside a market epoch, and how it copes with skewed clocks.

Sans-IO: the market driver asks `EpochSchedule` when to wake and `ClockOffsets` what its clock
offset is; neither reads a clock.

Nodes number epochs from their own wall clock (epoch e starts at e * epoch_s), so a node whose
clock is T seconds ahead starts every epoch T seconds early. The schedule puts all gossip rounds
in the first part of the epoch (`gossip_share`) and clears `tolerance_s` after the last round:
- a message from a node that is ahead arrives before the receiver's epoch starts; the receiver
  keeps it (`FutureBuffer`) and counts it once the epoch starts;
- a message from a node that is up to `tolerance_s` behind arrives before the receiver clears.
So nodes up to `tolerance_s` apart still exchange every round of the epoch and clear together,
as long as the epoch is long enough (`gossip_share` * epoch_s + tolerance_s < epoch_s).
"""

from __future__ import annotations

import statistics
from collections.abc import Hashable
from typing import Any

import attrs

from redy.errors import RedyError


@attrs.frozen
class EpochSchedule:
    """Times (s, on the node's clock) of an epoch's rounds and clearing."""

    epoch_s: float
    rounds: int
    tolerance_s: float = 1.0
    gossip_share: float = 0.5

    def __attrs_post_init__(self) -> None:
        if self.epoch_s <= 0 or self.rounds < 1:
            raise RedyError(
                f"epoch_s must be > 0 and rounds >= 1, got {self.epoch_s}, {self.rounds}"
            )
        if not 0 < self.gossip_share < 1:
            raise RedyError(f"gossip_share must be in (0, 1), got {self.gossip_share}")

    @property
    def round_s(self) -> float:
        return self.gossip_share * self.epoch_s / self.rounds

    @property
    def clear_offset_s(self) -> float:
        """Seconds after the epoch start at which the node clears: `tolerance_s` after its last
        round, but never later than 95 % of the epoch."""
        return min(self.gossip_share * self.epoch_s + self.tolerance_s, 0.95 * self.epoch_s)

    @property
    def tolerated_skew_s(self) -> float:
        """The clock difference the schedule absorbs (what is left of `tolerance_s`)."""
        return self.clear_offset_s - self.gossip_share * self.epoch_s

    def next_epoch(self, now: float) -> int:
        """The first epoch that starts after `now`."""
        return int(now // self.epoch_s) + 1

    def start(self, epoch: int) -> float:
        return epoch * self.epoch_s

    def round_at(self, epoch: int, r: int) -> float:
        """Round r (1-based) of `epoch`; round 1 goes out at the epoch start."""
        return self.start(epoch) + (r - 1) * self.round_s

    def clear_at(self, epoch: int) -> float:
        return self.start(epoch) + self.clear_offset_s


class FutureBuffer:
    """Messages of the epoch after the current one, kept until it starts (bounded)."""

    def __init__(self, limit: int = 256) -> None:
        self.limit = limit
        self._msgs: list[tuple[int, Any]] = []
        self.dropped = 0

    def keep(self, epoch: int, msg: Any) -> None:
        if len(self._msgs) >= self.limit:
            self.dropped += 1
            return
        self._msgs.append((epoch, msg))

    def release(self, epoch: int) -> list[Any]:
        """The kept messages of `epoch`; older ones are forgotten, newer ones kept."""
        out = [m for e, m in self._msgs if e == epoch]
        self._msgs = [(e, m) for e, m in self._msgs if e > epoch]
        return out


class ClockOffsets:
    """This node's clock offset from its neighbours: the median, over senders, of (our receive
    time - their send time) of each sender's latest message. Latency adds a few milliseconds;
    the median makes one skewed neighbour irrelevant."""

    def __init__(self, max_senders: int = 64) -> None:
        self._latest: dict[Hashable, float] = {}
        self._max = max_senders

    def sample(self, sender: Hashable, sent_s: float, received_s: float) -> None:
        self._latest.pop(sender, None)
        self._latest[sender] = received_s - sent_s
        while len(self._latest) > self._max:
            del self._latest[next(iter(self._latest))]

    def offset_s(self) -> float | None:
        if not self._latest:
            return None
        return float(statistics.median(self._latest.values()))
