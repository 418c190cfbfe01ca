"""A node's market epochs and gossip rounds, sans-IO: `handle(now, event)` / `next_deadline()`.

The governance unit (or a test with a fake clock and in-memory links) drives it: it calls
`handle(now, Tick())` at `next_deadline()`, `handle(now, Received(msg))` for every gossip
message from a peer, and `handle(now, Refused(msg))` when a peer's broker refused a push; it
carries out the actions returned: `Send(msg)` (publish to `msg.target`), `Cleared(...)`
(command the units to their dispatch at the price found) and `Dropped(sender, reason)` (a peer's
message broke the mass bounds, MassBounds: log the offender).

Epoch `e` starts at `e * epoch_s` on the nodes' shared clock; a node that starts mid-epoch waits
for the next one, and a message of the next epoch starts it early (the sender's clock is a
little ahead). Rounds are paced by message arrival, with the round numbers as a logical clock:
a node makes its next push as soon as a message of its own round or a later one has arrived
(and `min_gap_s` has passed since its last push), catching up push by push when it is behind,
and otherwise when `round_s` has passed with nothing. Rounds thus advance one network hop at a
time, together on all nodes, and the price is known a few dozen hops after the epoch starts
instead of at a fixed fraction of the epoch. After `rounds` pushes a node ends its phase
(PriceDiscovery); a message of a later phase makes it catch up at once. Phases not finished by `finish_by` of the
epoch end there with the price found so far.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Hashable, Sequence

import attrs

from redy.balancing.aggregation import Aggregator, MassBounds, NodeId
from redy.balancing.curves import Bid
from redy.balancing.discovery import PhaseGossip, PriceDiscovery, PriceSearch
from redy.balancing.events import Cleared, Dropped, Tick
from redy.errors import RedyError

__all__ = ["Cleared", "Dropped", "Tick"]  # the markets' shared events, also named here


@attrs.frozen
class Received:
    msg: PhaseGossip


@attrs.frozen
class Refused:
    """The target's broker refused `msg`: its mass comes back."""

    msg: PhaseGossip


Event = Tick | Received | Refused


@attrs.frozen
class Send:
    msg: PhaseGossip


Action = Send | Cleared | Dropped


@attrs.frozen
class Pacing:
    """Epoch length, pushes per phase and the round timers (s). `round_s` bounds a round when
    no message comes: a few peer round trips (a push that waits it out is a round lost)."""

    epoch_s: float
    rounds: int = 60
    round_s: float = 0.02
    min_gap_s: float = 0.0
    finish_by: float = 0.5

    def __attrs_post_init__(self) -> None:
        if not (self.epoch_s > 0 and self.rounds >= 1 and self.round_s > 0):
            raise RedyError("market pacing: expected epoch_s > 0, rounds >= 1 and round_s > 0")
        if not (0 <= self.min_gap_s < self.round_s and 0 < self.finish_by <= 1):
            raise RedyError("market pacing: expected 0 <= min_gap_s < round_s, 0 < finish_by <= 1")


class MarketCore:
    """One node's epochs (see the module docstring)."""

    def __init__(
        self,
        aggregator: Aggregator,
        pacing: Pacing,
        bids: Callable[[], Sequence[Bid]],
        neighbours: Callable[[], Sequence[NodeId]],
        search: PriceSearch | None = None,
        bounds: MassBounds | None = None,
    ) -> None:
        """`bounds`: what a peer's message may carry (None: anything, for trusted tests); its
        capacity also bounds this node's own curve, so that its peers take its mass."""
        cap = bounds.capacity_kw if bounds is not None else math.inf
        self.discovery = PriceDiscovery(aggregator, search, cap)
        self.bounds = bounds
        self.pacing = pacing
        self._bids_of = bids
        self._neighbours = neighbours
        self.epoch = 0  # the epoch running or last run; 0: none yet
        self._next_epoch: int | None = None  # set on the first event
        self._bids: tuple[Bid, ...] = ()
        self._running = False
        self._pushes = 0  # in the current phase
        self._last_push = -math.inf
        self._seen_round = 0  # the latest round of the phase heard of from a peer
        self._started_at = 0.0
        self._heard = 0  # peers' messages taken in this epoch
        self.last: Cleared | None = None

    # --- time ----------------------------------------------------------------------------

    def _start_of(self, epoch: int) -> float:
        return epoch * self.pacing.epoch_s

    def next_deadline(self) -> float:
        """When the driver must call `handle(now, Tick())` at the latest."""
        if self._next_epoch is None:
            return -math.inf  # call now: the core learns the time
        if not self._running:
            return self._start_of(self._next_epoch)
        finish = self._start_of(self.epoch) + self.pacing.finish_by * self.pacing.epoch_s
        return min(self._last_push + self.pacing.round_s, finish)

    # --- events --------------------------------------------------------------------------

    def handle(self, now: float, event: Event) -> list[Action]:
        out: list[Action] = []
        if self._next_epoch is None:
            # A node that starts mid-epoch waits for the next one.
            self._next_epoch = math.ceil(now / self.pacing.epoch_s)
        if isinstance(event, Received) and self.bounds is not None:
            m = event.msg.msg
            reason = self.bounds.refusal(m.weight, m.values, self.discovery.search.k, m.round)
            if reason is not None:
                return [Dropped(m.sender, reason)]
        if isinstance(event, Received):
            self._early_start(now, event.msg, out)
        if not self._running and now >= self._start_of(self._next_epoch):
            self._start(now, math.floor(now / self.pacing.epoch_s), out)
        if not self._running:
            return out
        if isinstance(event, Received):
            self._receive(now, event.msg, out)
        elif isinstance(event, Refused):
            self.discovery.on_undeliverable(event.msg)
        finish = self._start_of(self.epoch) + self.pacing.finish_by * self.pacing.epoch_s
        if now >= finish:
            self._finish(now, out)
            return out
        if now >= self._last_push + self.pacing.round_s:
            self._push(now, out)
        elif (
            isinstance(event, Received)
            and self._pushes <= self._seen_round
            and now >= self._last_push + self.pacing.min_gap_s
        ):
            self._push(now, out)  # a peer is at our round or past it: go on
        return out

    def _early_start(self, now: float, msg: PhaseGossip, out: list[Action]) -> None:
        epoch = msg.msg.epoch
        assert self._next_epoch is not None
        lead = self._start_of(epoch) - now
        if epoch == self._next_epoch and 0 < lead <= self.pacing.epoch_s / 4:
            self._finish(now, out)  # still on the last epoch: it ends here
            self._start(now, epoch, out, push=False)

    def _start(self, now: float, epoch: int, out: list[Action], push: bool = True) -> None:
        self.epoch = epoch
        self._next_epoch = epoch + 1
        self._bids = tuple(self._bids_of())
        self.discovery.start_epoch(epoch, self._bids)
        self._running = True
        self._pushes = 0
        self._seen_round = 0
        self._started_at = now
        self._heard = 0
        if push:
            self._push(now, out)

    def _receive(self, now: float, msg: PhaseGossip, out: list[Action]) -> None:
        if msg.msg.epoch != self.epoch:
            return
        while self._running and msg.phase > self.discovery.phase:
            self._end_phase(now, out, push=False)  # the sender is ahead: catch up
        if self._running and self.discovery.on_message(msg):
            self._heard += 1
            self._seen_round = max(self._seen_round, msg.msg.round)

    def _push(self, now: float, out: list[Action]) -> None:
        self._last_push = now
        out.extend(Send(m) for m in self.discovery.round(list(self._neighbours())))
        self._pushes += 1
        if self._pushes >= self.pacing.rounds:
            self._end_phase(now, out)

    def _finish(self, now: float, out: list[Action]) -> None:
        """Time is up: the current phase counts if it made a quarter of its pushes (or nothing
        was found yet), and no further phase starts. Clearing the phases left at once would
        clear each on the node's own curve alone: at 50 nodes on a saturated host that put
        nodes tens of EUR/MWh apart."""
        if not self._running:
            return
        if self.discovery.result is None or 4 * self._pushes >= self.pacing.rounds:
            self.discovery.end_phase(last=True)
        else:
            self.discovery.stop()
        self._close(now, out)

    def _end_phase(self, now: float, out: list[Action], push: bool = True) -> None:
        self.discovery.end_phase()
        self._pushes = 0
        self._seen_round = 0
        if not self.discovery.done:
            if push:  # the next phase starts with a push of its own
                self._push(now, out)
            return
        self._close(now, out)

    def _close(self, now: float, out: list[Action]) -> None:
        self._pushes = 0
        self._seen_round = 0
        self._running = False
        result = self.discovery.result
        if result is not None:
            elapsed = now - self._started_at
            self.last = Cleared(self.epoch, result, self._bids, elapsed, self._heard)
            out.append(self.last)


class ClockOffsets:
    """This node's clock offset from its neighbours (s): the median, over senders, of each
    sender's smallest (our receive time - their send time) among its last `window` messages.
    A message's latency only adds to that difference, and on a loaded host its queueing adds
    up to a second: the smallest of a few is the offset plus the shortest latency (NTP's
    minimum-delay filter). The median makes one skewed neighbour irrelevant.

    A driver runs its `MarketCore` on its clock minus `correction_s()`: nodes whose clocks are
    up to `tolerance_s` off their neighbours' then start their epochs together (within the
    latency) and clear together; a node further off keeps its own clock, takes no part, and
    says so (`skewed`)."""

    def __init__(self, tolerance_s: float = 1.0, max_senders: int = 64, window: int = 8) -> None:
        self.tolerance_s = tolerance_s
        self._latest: dict[Hashable, list[float]] = {}
        self._max = max_senders
        self._window = window
        self._offset: float | None = None  # offset_s() since the last sample
        self._stale = False

    def sample(self, sender: Hashable, sent_s: float, received_s: float) -> None:
        recent = self._latest.pop(sender, [])
        before = min(recent) if recent else None
        recent.append(received_s - sent_s)
        del recent[: -self._window]
        self._latest[sender] = recent
        while len(self._latest) > self._max:
            del self._latest[next(iter(self._latest))]
            self._stale = True
        # Most samples leave the sender's smallest as it was (queueing only adds): the median is
        # worked out again only when one of the smallest changed.
        if before is None or min(recent) != before:
            self._stale = True

    def offset_s(self) -> float | None:
        if self._stale:  # asked far more often than the smallest values change
            self._stale = False
            self._offset = (
                float(statistics.median(min(v) for v in self._latest.values()))
                if self._latest
                else None
            )
        return self._offset

    def skewed(self) -> bool:
        """Off the neighbours by more than the tolerance."""
        offset = self.offset_s()
        return offset is not None and abs(offset) > self.tolerance_s

    def correction_s(self) -> float:
        """What to subtract from this node's clock to run on its neighbours' time: the offset
        within the tolerance, nothing beyond it (or before any neighbour was heard)."""
        offset = self.offset_s()
        return 0.0 if offset is None or self.skewed() else offset
