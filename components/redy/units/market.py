"""Distant mode, balancing: a governance unit's market epochs over MQTT.

Every epoch (one market interval of `epoch_s` wall-clock seconds; nodes share the clock, as
NTP-synchronised hosts do) the node turns what its units report into a bid curve, runs
`rounds` rounds of push-sum gossip with its current neighbours (`redy/<Q>/grid/gossip` on their
brokers; a refused push keeps its mass), clears its estimate of the average curve, and commands
its action units to the dispatch at that price. Messages of other epochs are ignored; a node
that starts mid-epoch waits for the next one.
"""

from __future__ import annotations

import asyncio
import logging
import math
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
    """One node's epochs of gossip, clearing and dispatch."""

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
    ) -> None:
        self.node = node
        self.state = state
        self._links = links
        self._neighbours = neighbours
        self._command = command
        self.epoch_s = epoch_s
        self.rounds = rounds
        self.grid = grid or PriceGrid()
        self._clock = clock
        self.core = PushSum(node, rng)
        self.epoch: int | None = None
        self.result: Clearing | None = None
        self.result_epoch: int | None = None

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
        self.core.on_message(
            GossipOut(
                target=self.node,
                sender=msg.sender,
                epoch=msg.epoch,
                round=msg.round,
                weight=msg.weight,
                values=np.asarray(msg.values, dtype=float),
            )
        )

    async def _push(self, out: GossipOut, brokers: dict[str, str]) -> None:
        msg = messages.Gossip(
            sender=self.node,
            epoch=out.epoch,
            round=out.round,
            algorithm="pushsum",
            weight=out.weight,
            values=tuple(float(v) for v in out.values),
        )
        try:
            await self._links.publish(
                brokers[out.target], render("gossip", node=out.target), messages.encode(msg), qos=1
            )
        except PeerUnreachable:
            self.core.on_undeliverable(out)

    async def run(self) -> None:
        """Epoch after epoch until cancelled."""
        round_s = self.epoch_s / (self.rounds + 2)
        while True:
            now = self._clock()
            epoch = math.floor(now / self.epoch_s) + 1
            await asyncio.sleep(epoch * self.epoch_s - now)  # start at the next boundary
            bids = node_bids(self.state)
            self.core.start_epoch(epoch, curve(bids.values(), self.grid))
            self.epoch = epoch
            for r in range(1, self.rounds + 1):
                await asyncio.sleep(max(0.0, epoch * self.epoch_s + r * round_s - self._clock()))
                view = self._neighbours()
                brokers = {e.node: e.broker for e in view}
                for out in self.core.round(list(brokers)):
                    await self._push(out, brokers)
            await asyncio.sleep(
                max(0.0, epoch * self.epoch_s + (self.rounds + 1) * round_s - self._clock())
            )
            estimate = self.core.estimate()
            if estimate is None:
                continue
            self.result = clear(estimate, self.grid)
            self.result_epoch = epoch
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
                self.result.status,
            )

    def state_fields(self) -> dict[str, Any]:
        """Price, epoch and status for the node's NodeEnergyState."""
        if self.result is None:
            return {}
        return {
            "price_eur_mwh": self.result.price_eur_mwh,
            "epoch": self.result_epoch,
            "status": self.result.status,
        }
