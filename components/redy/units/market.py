"""Distant mode, balancing: a governance unit's market epochs over MQTT.

Every epoch (one market interval of `epoch_s` wall-clock seconds; nodes share the clock, as
NTP-synchronised hosts do, up to a tolerated skew) the node turns what its units report into a
bid curve, runs `rounds` rounds of push-sum gossip with its current neighbours
(`redy/<Q>/grid/gossip` on their brokers; a push that is not acknowledged keeps its mass),
clears its estimate of the average curve, and commands its action units to the dispatch at that
price. Messages of older epochs are ignored, those of the next epoch kept until it starts; a
node that starts mid-epoch waits for the next one. The node's status says honestly whether it
took part: `isolated` when no neighbour's gossip reached it, `skewed` when its clock is off its
neighbours' by more than the schedule tolerates.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np

from redy import messages
from redy.balancing.aggregation import GossipOut, PushSum
from redy.balancing.clearing import Clearing, clear
from redy.balancing.curves import (
    Bid,
    Dispatchable,
    Fixed,
    FlexibleLoad,
    PriceGrid,
    Storage,
    curve,
    dispatch_kw,
    ramp_ends,
)
from redy.balancing.schedule import ClockOffsets, EpochSchedule, FutureBuffer
from redy.topics import render
from redy.transport.peer_links import PeerLinks, PeerUnreachable
from redy.units.node_state import NodeState

_log = logging.getLogger(__name__)

# Prices (EUR/MWh) where storage that states no policy charges and discharges (batteries state
# theirs), and the value of a flexible load that states no willingness to pay (EVs and water
# heaters state theirs).
STORAGE_CHARGE_BELOW = 60.0
STORAGE_DISCHARGE_ABOVE = 110.0
LOAD_VALUE_DEFAULT = 150.0


def node_bids(state: NodeState) -> dict[str, Bid]:
    """One bid per online unit: meters are fixed, actuators bid their reachable range."""
    bids: dict[str, Bid] = {}
    for name, u in state.units.items():
        if not u.online:
            continue
        if u.role == "action" and u.status is not None:
            s = u.status
            # A stated marginal cost is one number, or [at_min, at_max] rising over the range.
            cost, cost_max = (None, None)
            if s.marginal_cost_eur_mwh is not None:
                cost, cost_max = ramp_ends(s.marginal_cost_eur_mwh)
            if s.min_kw >= 0:
                bids[name] = Dispatchable(
                    s.min_kw, s.max_kw, cost if cost is not None else 0.0, cost_max_eur_mwh=cost_max
                )
            elif s.max_kw <= 0:
                value = cost if cost is not None else LOAD_VALUE_DEFAULT
                if s.max_kw < 0:
                    bids[f"{name}.base"] = Fixed(s.max_kw)
                bids[name] = FlexibleLoad(s.max_kw - s.min_kw, value, cost_max)
            elif cost is not None and cost_max is not None and s.charge_below_eur_mwh is None:
                # Storage that states a rising cost: charges fully under at_min, discharges
                # fully over at_max, and follows the ramp between.
                bids[name] = Dispatchable(s.min_kw, s.max_kw, cost, cost_max_eur_mwh=cost_max)
            else:
                charge_below = s.charge_below_eur_mwh
                discharge_above = s.discharge_above_eur_mwh
                bids[name] = Storage(
                    -s.min_kw,
                    s.max_kw,
                    STORAGE_CHARGE_BELOW if charge_below is None else charge_below,
                    STORAGE_DISCHARGE_ABOVE if discharge_above is None else discharge_above,
                )
        elif u.measurement is not None:
            bids[name] = Fixed(u.measurement.power_kw)
    return bids


class MarketDriver:
    """One node's epochs of gossip, clearing and dispatch.

    Rounds follow `EpochSchedule`: gossip in the first half of the epoch, clearing once a
    tolerated clock skew has passed after the last round. Pushes go out as tasks of their own,
    each bounded by the links' timeout, so a slow neighbour never delays a round; a push that is
    not acknowledged gives its mass back (if its epoch is still running). Messages of the next
    epoch (from a node whose clock is ahead) are kept until that epoch starts.
    """

    def __init__(
        self,
        *,
        node: str,
        state: NodeState,
        links: PeerLinks,
        neighbours: Callable[[], list[messages.ViewEntry]],
        command: Callable[[str, float], Awaitable[None]],
        epoch_s: float,
        rounds: int,
        rng: random.Random,
        grid: PriceGrid | None = None,
        clock: Callable[[], float] = time.time,
        tolerance_s: float = 1.0,
    ) -> None:
        self.node = node
        self.state = state
        self._links = links
        self._neighbours = neighbours
        self._command = command
        self.schedule = EpochSchedule(epoch_s, rounds, tolerance_s)
        self.grid = grid or PriceGrid()
        self._clock = clock
        self.core = PushSum(node, rng)
        self.epoch: int | None = None
        self.result: Clearing | None = None
        self.result_epoch: int | None = None
        self.status: str = "waiting"
        self.offsets = ClockOffsets()
        self._future = FutureBuffer()
        self._received = 0  # gossip messages counted in the current epoch
        self._pushes: set[asyncio.Task[None]] = set()

    def on_gossip(self, msg: messages.Gossip) -> None:
        if msg.algorithm != "pushsum" or len(msg.values) != self.grid.k or msg.weight < 0:
            _log.warning(
                "node=%s dropped gossip from %s: expected pushsum with %d values and weight >= 0,"
                " got %s with %d values and weight %g",
                self.node,
                msg.sender,
                self.grid.k,
                msg.algorithm,
                len(msg.values),
                msg.weight,
            )
            return
        if msg.ts_s is not None:
            self.offsets.sample(msg.sender, msg.ts_s, self._clock())
        out = GossipOut(
            target=self.node,
            sender=msg.sender,
            epoch=msg.epoch,
            round=msg.round,
            weight=msg.weight,
            values=np.asarray(msg.values, dtype=float),
        )
        current = self.core.epoch
        if msg.epoch == current + 1 or (self.epoch is None and msg.epoch > current):
            self._future.keep(msg.epoch, out)  # a node ahead of us already started it
        elif self.core.on_message(out):
            self._received += 1

    async def _push(self, out: GossipOut, broker: str) -> None:
        msg = messages.Gossip(
            sender=self.node,
            epoch=out.epoch,
            round=out.round,
            algorithm="pushsum",
            weight=out.weight,
            values=tuple(float(v) for v in out.values),
            ts_s=self._clock(),
        )
        try:
            await self._links.publish(
                broker,
                render("gossip", node=out.target, peer=self.node),
                messages.encode(msg),
                node=out.target,
                qos=1,
            )
        except PeerUnreachable as exc:
            _log.debug("node=%s push to %s failed: %s", self.node, out.target, exc.reason)
            self.core.on_undeliverable(out)

    def _send(self, outs: list[GossipOut], brokers: dict[str, str]) -> None:
        for out in outs:
            task = asyncio.create_task(self._push(out, brokers[out.target]))
            self._pushes.add(task)
            task.add_done_callback(self._pushes.discard)

    async def _sleep_until(self, t: float) -> None:
        await asyncio.sleep(max(0.0, t - self._clock()))

    def _start_epoch(self, epoch: int, bids: dict[str, Bid]) -> None:
        self.core.start_epoch(epoch, curve(bids.values(), self.grid))
        self.epoch = epoch
        self._received = 0
        for out in self._future.release(epoch):
            if self.core.on_message(out):
                self._received += 1

    async def run(self) -> None:
        """Epoch after epoch until cancelled; pending pushes are cancelled with it."""
        try:
            await self._run()
        finally:
            for task in list(self._pushes):
                task.cancel()

    async def _run(self) -> None:
        sched = self.schedule
        while True:
            epoch = sched.next_epoch(self._clock())
            await self._sleep_until(sched.start(epoch))
            bids = node_bids(self.state)
            self._start_epoch(epoch, bids)
            for r in range(1, sched.rounds + 1):
                await self._sleep_until(sched.round_at(epoch, r))
                brokers = {e.node: e.broker for e in self._neighbours()}
                self._send(self.core.round(list(brokers)), brokers)
            await self._sleep_until(sched.clear_at(epoch))
            estimate = self.core.estimate()
            if estimate is None:
                continue
            self.result = clear(estimate, self.grid)
            self.result_epoch = epoch
            self.status = self._honest_status(self.result.status)
            for name, bid in bids.items():
                if name.endswith(".base") or not isinstance(
                    bid, Dispatchable | FlexibleLoad | Storage
                ):
                    continue
                await self._command(name, dispatch_kw(bid, self.grid, self.result.price_eur_mwh))
            _log.info(
                "node=%s epoch %d price %.2f EUR/MWh (%s)",
                self.node,
                epoch,
                self.result.price_eur_mwh,
                self.status,
            )

    def _honest_status(self, cleared: str) -> str:
        """`cleared` (or shortage/surplus) only when the node really took part with others."""
        offset = self.offsets.offset_s()
        if offset is not None and abs(offset) > self.schedule.tolerated_skew_s:
            _log.warning(
                "node=%s clock is %+.2f s off its neighbours' (tolerated: %.2f s)",
                self.node,
                offset,
                self.schedule.tolerated_skew_s,
            )
            return "skewed"
        if self._received == 0:
            return "isolated"  # it averaged nothing but its own curve
        return cleared

    def state_fields(self) -> dict[str, Any]:
        """Price, epoch, status and clock offset for the node's NodeEnergyState."""
        offset = self.offsets.offset_s()
        fields: dict[str, Any] = {"status": self.status}
        if offset is not None:
            fields["clock_offset_s"] = round(offset, 3)
        if self.result is not None:
            fields |= {"price_eur_mwh": self.result.price_eur_mwh, "epoch": self.result_epoch}
        return fields
