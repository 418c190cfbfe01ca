"""Clearing: the price where a (sum or average) curve, sampled on a price grid, crosses zero.

A node clears on its gossip estimate of the average curve, phase after phase (discovery.py).
The reference optimum is not this: reference.py solves the exact bids, with no grid.
"""

from __future__ import annotations

import attrs
import numpy as np

from redy.balancing.curves import PriceGrid


@attrs.frozen
class Clearing:
    """The clearing price (EUR/MWh) and how it was found: 'cleared', or no crossing:
    'shortage' (not enough supply even at the cap: the curve is < 0 everywhere) or 'surplus'
    (too much must-run supply even at the floor: > 0 everywhere)."""

    price_eur_mwh: float
    status: str


def clear(curve: np.ndarray, grid: PriceGrid) -> Clearing:
    """The lowest price at which the non-decreasing `curve` reaches zero (linear between
    grid prices)."""
    prices = grid.prices
    if curve[0] >= 0:
        return Clearing(float(prices[0]), "cleared" if curve[0] == 0 else "surplus")
    if curve[-1] < 0:
        return Clearing(float(prices[-1]), "shortage")
    k = int(np.argmax(curve >= 0))  # first grid price with curve >= 0 (k >= 1 here)
    lo, hi = curve[k - 1], curve[k]
    f = 0.0 if hi == lo else (0.0 - lo) / (hi - lo)
    return Clearing(float(prices[k - 1] + f * (prices[k] - prices[k - 1])), "cleared")
