"""The reference optimum: the continuous economic dispatch of the exact bids (tests, benchmarks
and the simulator only; no node ever sees all bids).

It minimises the total cost of all bids (each the exact integral of its marginal cost, see
`curves.Offer`) subject to balance (total injection 0) and every bid's limits, with the price
between `floor_eur_mwh` and `cap_eur_mwh`. The problem is convex and separable, so its solution
is the merit order: the price λ where total supply S(λ) crosses zero, every block dispatched at
its own response to λ. S is piecewise linear between the blocks' cost points (ramps) with jumps
at step costs, so the solver evaluates S exactly at every cost point with sorted prefix sums and
solves the one linear piece (or the one jump) that holds the crossing: no price grid, no
interpolation, no iteration. Independent of the gossip and clearing code by construction; the
tests check it against scipy's LP/NLP solvers and a published case.
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs
import numpy as np

from redy.balancing.curves import Bid


@attrs.frozen
class Reference:
    """The optimum: price (EUR/MWh); 'cleared', or 'shortage' (supply short even at the cap:
    `unserved_kw` of load is not served) or 'surplus' (too much must-run injection even at the
    floor: `excess_kw`); total cost (EUR/h); and every bid's injection, node by node (kW)."""

    price_eur_mwh: float
    status: str
    cost_eur_h: float
    dispatch_kw: tuple[tuple[float, ...], ...]
    unserved_kw: float = 0.0
    excess_kw: float = 0.0


def solve(
    bids_by_node: Sequence[Sequence[Bid]],
    floor_eur_mwh: float = -500.0,
    cap_eur_mwh: float = 4000.0,
) -> Reference:
    """The least-cost dispatch of all bids (see the module docstring)."""
    offers = [[b.offer() for b in bids] for bids in bids_by_node]
    base = sum(o.base_kw for node in offers for o in node)
    owner: list[tuple[int, int]] = []  # (node, bid) of each block
    kw_l: list[float] = []
    lo_l: list[float] = []
    hi_l: list[float] = []
    for n, node in enumerate(offers):
        for j, o in enumerate(node):
            for blk in o.blocks:
                owner.append((n, j))
                kw_l.append(blk.kw)
                lo_l.append(blk.cost_lo_eur_mwh)
                hi_l.append(blk.cost_hi_eur_mwh)
    kw, lo, hi = np.array(kw_l), np.array(lo_l), np.array(hi_l)
    supply = _Supply(base, kw, lo, hi)
    price, status, unserved, excess, step_share = _cross(supply, floor_eur_mwh, cap_eur_mwh)
    share = supply.response(price, step_share)
    dispatch = [[o.base_kw for o in node] for node in offers]
    for (n, j), x in zip(owner, share * kw, strict=True):
        dispatch[n][j] += float(x)
    cost = sum(
        o.cost_eur_h(p)
        for node, pn in zip(offers, dispatch, strict=True)
        for o, p in zip(node, pn, strict=True)
    )
    return Reference(
        price,
        status,
        float(cost),
        tuple(tuple(p) for p in dispatch),
        unserved,
        excess,
    )


def solve_blocks(
    base_kw: float,
    kw: np.ndarray,
    lo: np.ndarray,
    hi: np.ndarray,
    floor_eur_mwh: float = -500.0,
    cap_eur_mwh: float = 4000.0,
) -> tuple[float, str]:
    """The optimum's price and status for blocks given as arrays (the must-run injection
    `base_kw` in all, then each block's kW and marginal cost from `lo` to `hi`): what `solve`
    finds, for a million nodes without Bid objects (the simulators' reference)."""
    supply = _Supply(
        float(base_kw), np.asarray(kw, float), np.asarray(lo, float), np.asarray(hi, float)
    )
    price, status, _, _, _ = _cross(supply, floor_eur_mwh, cap_eur_mwh)
    return price, status


def _cross(
    supply: _Supply, floor_eur_mwh: float, cap_eur_mwh: float
) -> tuple[float, str, float, float, float]:
    """Where S crosses zero: price, status, unserved and excess kW, and the share of the step
    blocks at the price that runs."""
    lo, hi = supply.lo, supply.hi
    points = np.unique(np.concatenate([lo, hi, [floor_eur_mwh, cap_eur_mwh]]))
    points = points[(points >= floor_eur_mwh) & (points <= cap_eur_mwh)]
    left, right = supply.left(points), supply.right(points)
    status, unserved, excess = "cleared", 0.0, 0.0
    step_share = 1.0  # the share of the step blocks at the price that runs
    if right[-1] < 0:
        price, status, unserved = float(cap_eur_mwh), "shortage", float(-right[-1])
    elif left[0] > 0:
        price, status, excess, step_share = float(floor_eur_mwh), "surplus", float(left[0]), 0.0
    else:
        j = int(np.argmax(right >= 0))  # the first cost point where supply reaches zero
        if left[j] <= 0:  # at a cost point: the jump of the step blocks there covers zero
            price = float(points[j])
            jump = right[j] - left[j]
            step_share = float(-left[j] / jump) if jump > 0 else 1.0
        else:  # inside the linear piece between two cost points
            a, b = float(points[j - 1]), float(points[j])
            sa, sb = float(right[j - 1]), float(left[j])
            price = a + (b - a) * (-sa) / (sb - sa)
    return price, status, unserved, excess, step_share


class _Supply:
    """Total injection S(λ) = base + Σ kw · response(λ), exactly, at many prices at once."""

    def __init__(self, base: float, kw: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> None:
        self.base, self.kw, self.lo, self.hi = base, kw, lo, hi
        ramp = hi > lo
        self._ramp = ramp
        sk, sc = kw[~ramp], lo[~ramp]
        order = np.argsort(sc)
        self._step_cost = sc[order]
        self._step_cum = np.concatenate([[0.0], np.cumsum(sk[order])])
        rk, rlo, rhi = kw[ramp], lo[ramp], hi[ramp]
        rate = rk / (rhi - rlo)  # kW per EUR/MWh inside the ramp
        o_lo, o_hi = np.argsort(rlo), np.argsort(rhi)
        self._lo_sorted, self._hi_sorted = rlo[o_lo], rhi[o_hi]
        # Prefix sums over ramps that have started (lo < λ) and that are full (hi <= λ).
        self._lo_rate = np.concatenate([[0.0], np.cumsum(rate[o_lo])])
        self._lo_rate_cost = np.concatenate([[0.0], np.cumsum((rate * rlo)[o_lo])])
        self._hi_rate = np.concatenate([[0.0], np.cumsum(rate[o_hi])])
        self._hi_rate_cost = np.concatenate([[0.0], np.cumsum((rate * rlo)[o_hi])])
        self._hi_kw = np.concatenate([[0.0], np.cumsum(rk[o_hi])])

    def _ramps(self, p: np.ndarray) -> np.ndarray:
        started = np.searchsorted(self._lo_sorted, p, side="left")  # lo < p
        full = np.searchsorted(self._hi_sorted, p, side="right")  # hi <= p
        # Ramps in progress (started, not full) give rate · (p - lo); full ones give kw.
        rate = self._lo_rate[started] - self._hi_rate[full]
        rate_cost = self._lo_rate_cost[started] - self._hi_rate_cost[full]
        return np.asarray(self._hi_kw[full] + rate * p - rate_cost)

    def left(self, p: np.ndarray) -> np.ndarray:
        """S just below each price (step blocks at that price off)."""
        steps = self._step_cum[np.searchsorted(self._step_cost, p, side="left")]
        return np.asarray(self.base + steps + self._ramps(p))

    def right(self, p: np.ndarray) -> np.ndarray:
        """S at each price with the step blocks at that price on."""
        steps = self._step_cum[np.searchsorted(self._step_cost, p, side="right")]
        return np.asarray(self.base + steps + self._ramps(p))

    def response(self, price: float, step_share: float) -> np.ndarray:
        """Each block's dispatched share at `price`; step blocks exactly at it run `step_share`."""
        out = np.where(self.lo < price, 1.0, 0.0)
        out[self.lo == price] = step_share
        r = self._ramp
        out[r] = np.clip((price - self.lo[r]) / (self.hi[r] - self.lo[r]), 0.0, 1.0)
        return out
