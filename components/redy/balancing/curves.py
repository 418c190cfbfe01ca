"""Bid curves: a node's net injection (kW, + = to the grid) at each price of a fixed grid.

Every bid is a non-decreasing step function of price (producers offer above their cost, loads
consume below their willingness to pay, storage charges when cheap and discharges when dear).
A curve is the bid sampled at the grid's prices and read between grid prices by linear
interpolation; `dispatch_kw(bid, price)` reads the same interpolation, so the curve a node
gossips and the setpoint it gives its device at the clearing price cannot disagree.
"""

from __future__ import annotations

from collections.abc import Iterable
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
class Dispatchable:
    """A producer: p_min_kw below its marginal cost, p_max_kw at and above it (within the
    interval's ramp limits, which the caller folds into p_min/p_max); off: nothing."""

    p_min_kw: float
    p_max_kw: float
    cost_eur_mwh: float
    on: bool = True

    def injection_kw(self, price: float) -> float:
        if not self.on:
            return 0.0
        return self.p_max_kw if price >= self.cost_eur_mwh else self.p_min_kw


@attrs.frozen
class Renewable:
    """PV, wind: what the weather gives, curtailed only when the price is under its cost."""

    available_kw: float
    cost_eur_mwh: float = 0.0

    def injection_kw(self, price: float) -> float:
        return self.available_kw if price >= self.cost_eur_mwh else 0.0


@attrs.frozen
class FlexibleLoad:
    """A load that runs only when the price is at or under its willingness to pay."""

    power_kw: float
    wtp_eur_mwh: float

    def injection_kw(self, price: float) -> float:
        return -self.power_kw if price <= self.wtp_eur_mwh else 0.0


@attrs.frozen
class Storage:
    """Charges at `charge_kw` under `charge_below_eur_mwh`, discharges at `discharge_kw` above
    `discharge_above_eur_mwh` (both already limited by the state of charge for the interval)."""

    charge_kw: float
    discharge_kw: float
    charge_below_eur_mwh: float
    discharge_above_eur_mwh: float

    def injection_kw(self, price: float) -> float:
        if price < self.charge_below_eur_mwh:
            return -self.charge_kw
        if price > self.discharge_above_eur_mwh:
            return self.discharge_kw
        return 0.0


@attrs.frozen
class Fixed:
    """A load (or must-run output) that does not answer prices."""

    power_kw: float

    def injection_kw(self, price: float) -> float:
        return self.power_kw


Bid = Dispatchable | Renewable | FlexibleLoad | Storage | Fixed


def urgency_wtp(urgency: float, base_eur_mwh: float, cap_eur_mwh: float) -> float:
    """Willingness to pay that rises with urgency (0: can wait; 1 or more: must run now)."""
    u = min(max(urgency, 0.0), 1.0)
    return base_eur_mwh + (cap_eur_mwh - base_eur_mwh) * u * u


def ev_urgency(remaining_kwh: float, power_kw: float, time_left_s: float) -> float:
    """EV: time needed at full power / time left to the deadline."""
    if remaining_kwh <= 0:
        return 0.0
    if time_left_s <= 0:
        return 1.0
    return remaining_kwh / power_kw * 3600.0 / time_left_s


def heater_urgency(t_c: float, t_min_c: float, t_max_c: float) -> float:
    """Water heater: 0 at the top of its band, 1 at the bottom."""
    return min(max((t_max_c - t_c) / (t_max_c - t_min_c), 0.0), 1.0)


def sample(bid: Bid, grid: PriceGrid) -> np.ndarray:
    """The bid's injection (kW) at each grid price."""
    return np.fromiter((bid.injection_kw(float(p)) for p in grid.prices), float, grid.k)


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
    """What the dispatch at `price` costs per hour: generation at marginal cost, plus the
    value of flexible consumption not served (kW x EUR/MWh / 1000)."""
    total = 0.0
    for b in bids:
        p = dispatch_kw(b, grid, price)
        if isinstance(b, Dispatchable | Renewable) and p > 0:
            total += p * b.cost_eur_mwh / 1000.0
        elif isinstance(b, FlexibleLoad):
            total += (b.power_kw + p) * b.wtp_eur_mwh / 1000.0  # p <= 0: served part
    return total
