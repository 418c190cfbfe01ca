"""Bid curves: a node's net injection (kW, + = to the grid) at each price of a fixed grid.

Every bid is a non-decreasing function of price (producers offer above their cost, loads
consume below their willingness to pay, storage charges when cheap and discharges when dear):
a step at one marginal cost, or a linear ramp when the marginal cost rises over the bid's range
(a thermal plant's). `offer()` states the same bid as the continuous problem sees it (blocks of
kW at a marginal cost), which the reference solver and the exact cost use. A curve is the bid
sampled at the grid's prices and read between grid prices by linear interpolation;
`dispatch_kw(bid, price)` reads the same interpolation, so the curve a node gossips and the
setpoint it gives its device at the clearing price cannot disagree.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from functools import cached_property

import attrs
import numpy as np

from redy.errors import RedyError


@attrs.frozen
class PriceGrid:
    """K prices from `floor_eur_mwh` to `cap_eur_mwh` (EUR/MWh), evenly spaced."""

    floor_eur_mwh: float = -100.0
    cap_eur_mwh: float = 500.0
    k: int = 121

    def __attrs_post_init__(self) -> None:
        if self.k < 2 or not self.floor_eur_mwh < self.cap_eur_mwh:
            raise RedyError("price grid: expected k >= 2 and floor < cap")

    @cached_property
    def prices(self) -> np.ndarray:
        return np.linspace(self.floor_eur_mwh, self.cap_eur_mwh, self.k)


@attrs.frozen
class Block:
    """`kw` of injection offered at a marginal cost rising linearly from `cost_lo_eur_mwh` (its
    first kW) to `cost_hi_eur_mwh` (its last); equal costs make a step."""

    kw: float
    cost_lo_eur_mwh: float
    cost_hi_eur_mwh: float

    def cost_eur_h(self, kw: float) -> float:
        """The exact integral of the marginal cost over the block's first `kw` kW (EUR/h)."""
        x = min(max(kw, 0.0), self.kw)
        # The marginal cost at x is lo + (hi - lo) x / kw; its mean over 0..x is halfway.
        filled = x / self.kw if self.kw > 0 else 0.0
        lo, hi = self.cost_lo_eur_mwh, self.cost_hi_eur_mwh
        return x * (lo + (hi - lo) * filled / 2.0) / 1000.0


@attrs.frozen
class Offer:
    """A bid as the continuous problem sees it: `base_kw` of injection that does not answer
    prices (costing `base_cost_eur_h`), then `blocks` filled in merit order (cheapest first)."""

    base_kw: float
    base_cost_eur_h: float
    blocks: tuple[Block, ...] = ()

    def cost_eur_h(self, injection_kw: float) -> float:
        """What `injection_kw` costs: the base, then the blocks filled in order, each at the
        exact integral of its marginal cost."""
        total, rest = self.base_cost_eur_h, injection_kw - self.base_kw
        for b in self.blocks:
            if rest <= 0:
                break
            total += b.cost_eur_h(rest)
            rest -= b.kw
        return total


# A ramp narrower than this (EUR/MWh) is a step: dividing by its width would overflow.
MIN_RAMP_EUR_MWH = 1e-9


def _top(lo: float, hi: float | None) -> float:
    """The marginal cost of a range's last kW: `hi`, or `lo` for a step."""
    return lo if hi is None or hi - lo < MIN_RAMP_EUR_MWH else hi


def _check_ramp(lo: float, hi: float | None, what: str) -> None:
    if hi is not None and not hi >= lo:
        raise RedyError(f"{what}: expected a marginal cost that rises (at_min {lo} <= at_max {hi})")


@attrs.frozen
class Dispatchable:
    """A producer (or any unit with a range of injection): p_min_kw below its marginal cost,
    p_max_kw at and above it (within the interval's ramp limits, which the caller folds into
    p_min/p_max); off: nothing. With `cost_max_eur_mwh` the marginal cost rises linearly from
    `cost_eur_mwh` at p_min_kw to `cost_max_eur_mwh` at p_max_kw (a thermal plant's quadratic
    cost), and the injection follows it between the two prices."""

    p_min_kw: float
    p_max_kw: float
    cost_eur_mwh: float
    on: bool = True
    cost_max_eur_mwh: float | None = None

    def __attrs_post_init__(self) -> None:
        _check_ramp(self.cost_eur_mwh, self.cost_max_eur_mwh, "dispatchable bid")

    def injection_kw(self, price: float) -> float:
        return float(self.curve_kw(np.asarray(price, dtype=float)))

    def curve_kw(self, prices: np.ndarray) -> np.ndarray:
        if not self.on:
            return np.zeros_like(prices)
        lo, hi = self.cost_eur_mwh, _top(self.cost_eur_mwh, self.cost_max_eur_mwh)
        if hi == lo:
            return np.where(prices >= lo, self.p_max_kw, self.p_min_kw)
        share = np.clip((prices - lo) / (hi - lo), 0.0, 1.0)
        return self.p_min_kw + (self.p_max_kw - self.p_min_kw) * share

    def _block(self) -> Block:
        hi = _top(self.cost_eur_mwh, self.cost_max_eur_mwh)
        return Block(self.p_max_kw - self.p_min_kw, self.cost_eur_mwh, hi)

    def offer(self) -> Offer:
        if not self.on:
            return Offer(0.0, 0.0)
        # The must-run part is charged at the cost of the first kW above it.
        return Offer(self.p_min_kw, self.p_min_kw * self.cost_eur_mwh / 1000.0, (self._block(),))


@attrs.frozen
class Renewable:
    """PV, wind: what the weather gives, curtailed only when the price is under its cost."""

    available_kw: float
    cost_eur_mwh: float = 0.0

    def injection_kw(self, price: float) -> float:
        return float(self.curve_kw(np.asarray(price, dtype=float)))

    def curve_kw(self, prices: np.ndarray) -> np.ndarray:
        return np.where(prices >= self.cost_eur_mwh, self.available_kw, 0.0)

    def offer(self) -> Offer:
        return Offer(0.0, 0.0, (Block(self.available_kw, self.cost_eur_mwh, self.cost_eur_mwh),))


@attrs.frozen
class FlexibleLoad:
    """A load that runs only when the price is at or under its willingness to pay. With
    `wtp_max_eur_mwh` the willingness to pay is a ramp: the whole load runs at or under
    `wtp_eur_mwh`, none of it at or over `wtp_max_eur_mwh`, and linearly between (the kW it
    gives up first are the ones it values least)."""

    power_kw: float
    wtp_eur_mwh: float
    wtp_max_eur_mwh: float | None = None

    def __attrs_post_init__(self) -> None:
        _check_ramp(self.wtp_eur_mwh, self.wtp_max_eur_mwh, "flexible load bid")

    def injection_kw(self, price: float) -> float:
        return float(self.curve_kw(np.asarray(price, dtype=float)))

    def curve_kw(self, prices: np.ndarray) -> np.ndarray:
        lo, hi = self.wtp_eur_mwh, _top(self.wtp_eur_mwh, self.wtp_max_eur_mwh)
        if hi == lo:
            return np.where(prices <= lo, -self.power_kw, 0.0)
        return -self.power_kw * (1.0 - np.clip((prices - lo) / (hi - lo), 0.0, 1.0))

    def _block(self) -> Block:
        return Block(self.power_kw, self.wtp_eur_mwh, _top(self.wtp_eur_mwh, self.wtp_max_eur_mwh))

    def offer(self) -> Offer:
        # Served in full costs nothing; each kW given up costs what it was worth.
        return Offer(-self.power_kw, 0.0, (self._block(),))


@attrs.frozen
class Storage:
    """Charges at `charge_kw` under `charge_below_eur_mwh`, discharges at `discharge_kw` above
    `discharge_above_eur_mwh` (both already limited by the state of charge for the interval)."""

    charge_kw: float
    discharge_kw: float
    charge_below_eur_mwh: float
    discharge_above_eur_mwh: float

    def injection_kw(self, price: float) -> float:
        return float(self.curve_kw(np.asarray(price, dtype=float)))

    def curve_kw(self, prices: np.ndarray) -> np.ndarray:
        charge = np.where(prices < self.charge_below_eur_mwh, -self.charge_kw, 0.0)
        return charge + np.where(prices > self.discharge_above_eur_mwh, self.discharge_kw, 0.0)

    def offer(self) -> Offer:
        # Idle costs nothing: charging earns the value of the energy stored, discharging
        # costs the value of the energy given up.
        cb, da = self.charge_below_eur_mwh, self.discharge_above_eur_mwh
        return Offer(
            -self.charge_kw,
            -self.charge_kw * cb / 1000.0,
            (Block(self.charge_kw, cb, cb), Block(self.discharge_kw, da, da)),
        )


@attrs.frozen
class Fixed:
    """A load (or must-run output) that does not answer prices."""

    power_kw: float

    def injection_kw(self, price: float) -> float:
        return self.power_kw

    def curve_kw(self, prices: np.ndarray) -> np.ndarray:
        return np.full_like(prices, self.power_kw, dtype=float)

    def offer(self) -> Offer:
        return Offer(self.power_kw, 0.0)


Bid = Dispatchable | Renewable | FlexibleLoad | Storage | Fixed


def ramp_ends(cost: float | Sequence[float]) -> tuple[float, float | None]:
    """A stated marginal cost as (at_min, at_max): one number is a step (at_max None)."""
    if isinstance(cost, int | float):
        return float(cost), None
    lo, hi = cost
    return float(lo), float(hi)


def running_cost_eur_h(
    power_kw: float, min_kw: float, max_kw: float, cost: float | Sequence[float]
) -> float:
    """What a producer's output `power_kw` costs per hour at its stated marginal cost (one
    number, or rising from min_kw to max_kw): the exact integral of it, as the market counts."""
    lo, hi = ramp_ends(cost)
    if hi is None or power_kw <= 0:
        return max(power_kw, 0.0) * lo / 1000.0
    bid = Dispatchable(max(min_kw, 0.0), max(max_kw, 0.0), lo, cost_max_eur_mwh=hi)
    return bid.offer().cost_eur_h(power_kw)


def sample(bid: Bid, grid: PriceGrid) -> np.ndarray:
    """The bid's injection (kW) at each grid price."""
    return bid.curve_kw(grid.prices)


def curve(bids: Iterable[Bid], grid: PriceGrid) -> np.ndarray:
    """A node's curve: the sum of its bids' samples; non-decreasing in price."""
    total = np.zeros(grid.k)
    for b in bids:
        total += sample(b, grid)
    return total


def dispatch_kw(bid: Bid, grid: PriceGrid, price: float) -> float:
    """The setpoint of `bid` at `price`: its curve read at that price (the same linear
    interpolation between the two neighbouring grid prices, without sampling the whole curve)."""
    prices = grid.prices
    if price <= prices[0]:
        return bid.injection_kw(float(prices[0]))
    if price >= prices[-1]:
        return bid.injection_kw(float(prices[-1]))
    k = int(np.searchsorted(prices, price))
    lo, hi = float(prices[k - 1]), float(prices[k])
    a, b = bid.injection_kw(lo), bid.injection_kw(hi)
    return a + (b - a) * (price - lo) / (hi - lo)


def cost_eur_h(bids: Iterable[Bid], grid: PriceGrid, price: float) -> float:
    """What the dispatch at `price` (read on `grid`) costs per hour: for every bid, the exact
    integral of its marginal cost over the range it is dispatched in (see `Offer`)."""
    return sum(b.offer().cost_eur_h(dispatch_kw(b, grid, price)) for b in bids)
