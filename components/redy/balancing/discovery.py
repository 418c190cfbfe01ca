"""Price discovery to 0.01 EUR/MWh over the whole price range, sans-IO: successive refinement.

One node's epoch runs `phases` gossip phases of the same aggregation (push-sum or Flow
Updating, see aggregation.py) over a grid of `k` prices:

1. the coarse grid from `floor_eur_mwh` to `cap_eur_mwh` (-500..4,000 by default, the European
   day-ahead limits). Besides the curve it averages each node's load at the cap and must-run
   injection at the floor, so that a shortage or surplus comes with its size. No crossing ends
   the epoch there: 'shortage' (at the cap) or 'surplus' (at the floor), never a clamp.
2. then, each phase (as many as it takes to reach `resolution_eur_mwh`, 0.01 by default), a
   window of `2 * margin + 1` cells of the previous grid around the cell that holds the node's
   crossing, again sampled at `k` prices: each phase narrows the step by
   (k - 1) / (2 * margin + 1) (200 / 3 by default: 22.5 -> 0.34 -> 0.005 EUR/MWh), so the
   resolution does not depend on the width of the range.

Why refinement and not exact breakpoints: the breakpoints of the sum of all bids grow with the
number of nodes (tens of thousands at 10,000 nodes), while push-sum adds fixed-length vectors;
refinement keeps every message at k values and needs only a few phases more.

Nodes must agree on the window to add their curves. They almost always do (their estimates
differ far less than a cell); when the crossing sits near a cell edge they may not, so every
message names its window and the lowest window wins: a node that hears of a lower window than
its own restarts the phase on that one with its own curve and weight 1 (its mass on the old
window is dropped, and so is everybody's: each holder restarts too), so the sum stays exact.

The final grid is fine enough that a node's dispatch, read on it by linear interpolation
(`curves.dispatch_kw`), follows the merit order up to one final step. A phase whose estimate
does not cross inside its window (a crash moved the price) keeps the previous phase's price.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import attrs
import numpy as np

from redy.balancing.aggregation import Aggregator, GossipOut, NodeId
from redy.balancing.clearing import clear
from redy.balancing.curves import Bid, PriceGrid, curve, dispatch_kw
from redy.errors import RedyError


@attrs.frozen
class PriceSearch:
    """Where the price may lie (EUR/MWh), the prices per phase, and the number of phases: by
    default as many as it takes for the last step to reach `resolution_eur_mwh`, whatever the
    width of the range."""

    floor_eur_mwh: float = -500.0
    cap_eur_mwh: float = 4000.0
    k: int = 201
    phases: int = 0
    margin: int = 1
    resolution_eur_mwh: float = 0.01

    def __attrs_post_init__(self) -> None:
        if not self.floor_eur_mwh < self.cap_eur_mwh:
            raise RedyError(
                f"price range: expected floor < cap, got {self.floor_eur_mwh}..{self.cap_eur_mwh}"
            )
        if self.phases < 0 or self.margin < 0 or self.k < 2 * self.margin + 3:
            raise RedyError(
                "price search: expected phases >= 1 (0: enough for the resolution), margin >= 0"
                " and k >= 2 * margin + 3"
            )
        if not self.resolution_eur_mwh > 0:
            raise RedyError("price search: expected a resolution > 0 EUR/MWh")
        if self.phases == 0:
            n = 1
            while self._step(n) > self.resolution_eur_mwh and n < 20:
                n += 1
            object.__setattr__(self, "phases", n)

    def _step(self, phases: int) -> float:
        step = (self.cap_eur_mwh - self.floor_eur_mwh) / (self.k - 1)
        return step * ((2 * self.margin + 1) / (self.k - 1)) ** (phases - 1)

    def step_eur_mwh(self) -> float:
        """The step of the last phase's grid."""
        return self._step(self.phases)

    def coarse(self) -> PriceGrid:
        return PriceGrid(self.floor_eur_mwh, self.cap_eur_mwh, self.k)

    def window(self, grid: PriceGrid, price: float) -> PriceGrid:
        """The next phase's grid: `2 * margin + 1` cells of `grid` around `price`."""
        prices = grid.prices
        cell = int(np.searchsorted(prices, price, side="right")) - 1
        width = 2 * self.margin + 1
        first = min(max(cell - self.margin, 0), self.k - 1 - width)
        return PriceGrid(float(prices[first]), float(prices[first + width]), self.k)


@attrs.frozen(eq=False)
class PhaseGossip:
    """One aggregation message of one phase, on the window its sender sampled."""

    phase: int
    floor_eur_mwh: float
    cap_eur_mwh: float
    msg: GossipOut

    @property
    def target(self) -> NodeId:
        return self.msg.target


@attrs.frozen
class MarketResult:
    """What a node found: the price (EUR/MWh) on `grid` (where it reads its dispatch), how
    ('cleared', 'shortage', 'surplus'), after how many phases, and its own share of the load
    not served (shortage) or of the must-run injection in excess (surplus), in kW: the grid's
    shortfall as a fraction of all load at the cap (or excess of all must-run injection at the
    floor) times the node's own, so the shares add up to the grid's."""

    price_eur_mwh: float
    status: str
    grid: PriceGrid
    phases: int
    unserved_kw: float = 0.0
    excess_kw: float = 0.0

    def dispatch_kw(self, bid: Bid) -> float:
        return dispatch_kw(bid, self.grid, self.price_eur_mwh)


class PriceDiscovery:
    """One node's phases of gossip and clearing in one epoch (see the module docstring). The
    driver calls `start_epoch`, then per phase `round(neighbours)` as often as it likes and
    `end_phase()`; `result` holds the latest price."""

    def __init__(
        self,
        aggregator: Aggregator,
        search: PriceSearch | None = None,
        capacity_kw: float = math.inf,
    ) -> None:
        self.agg = aggregator
        self.search = search or PriceSearch()
        # The grid's bound on a node's net injection (MassBounds): a node whose units could do
        # more bids only that much, so that its neighbours accept its mass.
        self.capacity_kw = capacity_kw
        self.clipped_kw = 0.0  # the largest value this node had to cut to the bound
        self.epoch = -1
        self.phase = 0
        self.grid = self.search.coarse()
        self.result: MarketResult | None = None
        self._bids: list[Bid] = []
        self._parent: PriceGrid | None = None  # the previous phase's grid
        self._done = True

    @property
    def node(self) -> NodeId:
        return self.agg.node

    @property
    def done(self) -> bool:
        """No phase left in this epoch (all run, or the coarse phase found no crossing)."""
        return self._done

    def start_epoch(self, epoch: int, bids: Sequence[Bid]) -> None:
        self.epoch = epoch
        self.phase = 1
        self.result = None
        self._done = False
        self._bids = list(bids)
        self._start(self.search.coarse())

    def _start(self, grid: PriceGrid) -> None:
        if self.phase == 1:
            self._parent = None
        self.grid = grid
        values = curve(self._bids, grid)
        if self.phase == 1:
            lo, hi = grid.prices[0], grid.prices[-1]
            load_at_cap = -sum(min(b.injection_kw(float(hi)), 0.0) for b in self._bids)
            run_at_floor = sum(max(b.injection_kw(float(lo)), 0.0) for b in self._bids)
            values = np.concatenate([values, [load_at_cap, run_at_floor]])
        worst = float(np.max(np.abs(values))) if values.size else 0.0
        if worst > self.capacity_kw:
            self.clipped_kw = max(self.clipped_kw, worst)
            values = np.clip(values, -self.capacity_kw, self.capacity_kw)
        self.agg.start_epoch(self.epoch, values)

    def round(self, neighbours: Sequence[NodeId]) -> list[PhaseGossip]:
        if self._done:
            return []
        return [self._wrap(m) for m in self.agg.round(neighbours)]

    def _wrap(self, m: GossipOut) -> PhaseGossip:
        return PhaseGossip(self.phase, self.grid.floor_eur_mwh, self.grid.cap_eur_mwh, m)

    def on_message(self, m: PhaseGossip) -> bool:
        """Take a peer's message; False if it was dropped (another epoch or phase, a higher
        window, or refused by the aggregation)."""
        if self._done or m.msg.epoch != self.epoch or m.phase != self.phase:
            return False
        mine = (self.grid.floor_eur_mwh, self.grid.cap_eur_mwh)
        theirs = (m.floor_eur_mwh, m.cap_eur_mwh)
        if theirs > mine:
            return False  # the sender restarts on ours when it hears of it
        if theirs < mine:
            if not self._is_window(m.floor_eur_mwh, m.cap_eur_mwh):
                return False  # not a window of this phase: a broken or hostile peer
            self._start(PriceGrid(m.floor_eur_mwh, m.cap_eur_mwh, self.search.k))
        return self.agg.on_message(m.msg)

    def _is_window(self, floor: float, cap: float) -> bool:
        """Whether [floor, cap] is a window the previous phase's grid gives (so a peer can
        only pull the others to a window an honest node could have chosen)."""
        if self._parent is None:
            return False  # phase 1 has one window: the whole range
        prices = self._parent.prices
        first = int(np.searchsorted(prices, floor))
        last = first + 2 * self.search.margin + 1
        return last < len(prices) and prices[first] == floor and prices[last] == cap

    def on_undeliverable(self, m: PhaseGossip) -> None:
        if m.phase == self.phase and m.floor_eur_mwh == self.grid.floor_eur_mwh:
            self.agg.on_undeliverable(m.msg)

    def stop(self) -> MarketResult | None:
        """End the epoch here, on the last phase cleared (the epoch's time is up)."""
        self._done = True
        return self.result

    def end_phase(self, last: bool = False) -> MarketResult | None:
        """Clear this phase's estimate; start the next phase if there is one (and not
        `last`)."""
        if self._done:
            return self.result
        est = self.agg.estimate()
        k = self.search.k
        if est is None:
            self._done = True
            return self.result
        c = clear(est[:k], self.grid)
        if c.status != "cleared":
            # No crossing on the whole range is the answer; inside a refined window it means
            # the estimate moved (a crash): keep the coarser price.
            if self.phase == 1:
                self.result = self._limit(c.status, est)
            self._done = True
            return self.result
        self.result = MarketResult(c.price_eur_mwh, "cleared", self.grid, self.phase)
        if last or self.phase >= self.search.phases:
            self._done = True
            return self.result
        self.phase += 1
        self._parent = self.grid
        self._start(self.search.window(self.grid, c.price_eur_mwh))
        return self.result

    def _limit(self, status: str, est: np.ndarray) -> MarketResult:
        k, g = self.search.k, self.grid
        if status == "shortage":
            short, load = -float(est[k - 1]), float(est[k])
            own = -sum(min(b.injection_kw(g.cap_eur_mwh), 0.0) for b in self._bids)
            share = own * short / load if load > 0 else 0.0
            return MarketResult(g.cap_eur_mwh, status, g, 1, unserved_kw=share)
        excess, run = float(est[0]), float(est[k + 1])
        own = sum(max(b.injection_kw(g.floor_eur_mwh), 0.0) for b in self._bids)
        share = own * excess / run if run > 0 else 0.0
        return MarketResult(g.floor_eur_mwh, status, g, 1, excess_kw=share)
