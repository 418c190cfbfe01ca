"""The live nodes' bids as arrays and the kernels that read them: curves, crossings, own limits and
settlement (redy.sim.array_balance)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numba
import numpy as np

from redy.balancing.curves import (
    MIN_RAMP_EUR_MWH,
    Bid,
    Dispatchable,
    Fixed,
    FlexibleLoad,
    Renewable,
    Storage,
)
from redy.errors import SimulationError
from redy.sim.array_cyclon import (
    Arr,
)


class BidTable:
    """The bids of the live nodes as arrays: every bid is a base injection plus blocks, each
    block `kw` times a response in [0, 1] to the price: a ramp from `lo` to `hi`, or a step at
    `lo` (`strict`: only above it). The blocks are those of `Bid.offer()`, in order, so the same
    table gives the curve, the dispatch and the exact cost."""

    def __init__(self, nodes: Sequence[int], bids: Mapping[int, Sequence[Bid]]) -> None:
        node, base, base_cost, ptr = [], [], [], [0]
        kw: list[float] = []
        lo: list[float] = []
        hi: list[float] = []
        strict: list[bool] = []
        self.count: list[int] = []
        for i in nodes:
            self.count.append(len(bids[i]))
            for b in bids[i]:
                node.append(i)
                offer = b.offer()
                base.append(offer.base_kw)
                base_cost.append(offer.base_cost_eur_h)
                strict_steps = _strict_steps(b)
                for blk, s in zip(offer.blocks, strict_steps, strict=True):
                    kw.append(blk.kw)
                    lo.append(blk.cost_lo_eur_mwh)
                    top = blk.cost_hi_eur_mwh
                    hi.append(
                        blk.cost_lo_eur_mwh if top - blk.cost_lo_eur_mwh < MIN_RAMP_EUR_MWH else top
                    )
                    strict.append(s)
                ptr.append(len(kw))
        self.node = np.asarray(node, dtype=np.int64)
        self.base = np.asarray(base, dtype=np.float64)
        self.base_cost = np.asarray(base_cost, dtype=np.float64)
        self.ptr = np.asarray(ptr, dtype=np.int64)
        self.kw = np.asarray(kw, dtype=np.float64)
        self.lo = np.asarray(lo, dtype=np.float64)
        self.hi = np.asarray(hi, dtype=np.float64)
        self.strict = np.asarray(strict, dtype=np.bool_)

    def arrays(self) -> tuple[np.ndarray, ...]:
        return (self.node, self.base, self.ptr, self.kw, self.lo, self.hi, self.strict)


def _strict_steps(b: Bid) -> tuple[bool, ...]:
    """Per block of `b.offer()`: whether its step answers only above its price (`>`; a load
    runs at or under its willingness to pay, storage discharges above its price) or at it."""
    if isinstance(b, FlexibleLoad):
        return (True,)
    if isinstance(b, Storage):
        return (False, True)
    if isinstance(b, Dispatchable):
        return (False,) if b.on else ()
    if isinstance(b, Renewable):
        return (False,)
    if isinstance(b, Fixed):
        return ()
    raise SimulationError(f"unknown bid {b!r}")


@numba.njit(cache=True)
def _injection(
    b: int, p: float, base: Arr, ptr: Arr, kw: Arr, lo: Arr, hi: Arr, strict: Arr
) -> float:
    """Bid b's injection (kW) at price p."""
    out = base[b]
    for c in range(ptr[b], ptr[b + 1]):
        if hi[c] > lo[c]:
            share = (p - lo[c]) / (hi[c] - lo[c])
            out += kw[c] * min(max(share, 0.0), 1.0)
        elif p > lo[c] or (p == lo[c] and not strict[c]):
            out += kw[c]
    return float(out)


@numba.njit(cache=True)
def curves_kernel(
    out: Arr, rows: Arr, prices: Arr, cols: Arr, node: Arr, base: Arr, ptr: Arr, kw: Arr, lo: Arr,
    hi: Arr, strict: Arr,
) -> None:  # fmt: skip
    """Every node's curve (the sum of its bids' samples, curves.curve) at the grid columns
    `cols` into its row of `out`; column k is its load at the cap and k + 1 its must-run at
    the floor (PriceDiscovery's phase 1)."""
    k = len(prices)
    for i in rows:
        out[i, :] = 0.0
    for b in range(len(node)):
        row = out[node[b]]
        for j in range(len(cols)):
            c = cols[j]
            if c < k:
                row[j] += _injection(b, prices[c], base, ptr, kw, lo, hi, strict)
            elif c == k:
                row[j] += -min(_injection(b, prices[k - 1], base, ptr, kw, lo, hi, strict), 0.0)
            else:
                row[j] += max(_injection(b, prices[0], base, ptr, kw, lo, hi, strict), 0.0)


@numba.njit(cache=True)
def crossing_kernel(
    prices: Arr, node: Arr, base: Arr, ptr: Arr, kw: Arr, lo: Arr, hi: Arr, strict: Arr
) -> int:
    """The first column where the sum of all bids reaches zero (k - 1 if none): a bisection,
    the sum being non-decreasing in price."""
    lo_c, hi_c = -1, len(prices) - 1
    while hi_c - lo_c > 1:
        mid = (lo_c + hi_c) // 2
        total = 0.0
        for b in range(len(node)):
            total += _injection(b, prices[mid], base, ptr, kw, lo, hi, strict)
        if total >= 0:
            hi_c = mid
        else:
            lo_c = mid
    return hi_c


@numba.njit(cache=True)
def own_limits(
    floor: float, cap: float, own_cap: Arr, own_floor: Arr, node: Arr, base: Arr, ptr: Arr, kw: Arr,
    lo: Arr, hi: Arr, strict: Arr,
) -> None:  # fmt: skip
    """Every node's own load at the cap and must-run injection at the floor (kW)."""
    for b in range(len(node)):
        i = node[b]
        own_cap[i] -= min(_injection(b, cap, base, ptr, kw, lo, hi, strict), 0.0)
        own_floor[i] += max(_injection(b, floor, base, ptr, kw, lo, hi, strict), 0.0)


@numba.njit(cache=True)
def settle_kernel(
    node: Arr, base: Arr, base_cost: Arr, ptr: Arr, kw: Arr, lo: Arr, hi: Arr, strict: Arr, mode: Arr,
    p_at: Arr, p_lo: Arr, p_hi: Arr, price: Arr,
) -> tuple[Arr, Arr]:  # fmt: skip
    """Every bid's dispatch (kW) and exact cost (EUR/h). Per node: mode 0 reads the bid at
    `p_at` (outside the grid, or the reference price for a node with no result), mode 1
    interpolates between the grid prices `p_lo` and `p_hi` around `price` (curves.dispatch_kw).
    Cost: the base, then the blocks filled in order, each the integral of its marginal cost
    (curves.Offer.cost_eur_h)."""
    nb = len(node)
    dispatch = np.empty(nb)
    cost = np.empty(nb)
    for b in range(nb):
        i = node[b]
        if mode[i] == 0:
            d = _injection(b, p_at[i], base, ptr, kw, lo, hi, strict)
        else:
            x0, x1 = p_lo[i], p_hi[i]
            a = _injection(b, x0, base, ptr, kw, lo, hi, strict)
            c = _injection(b, x1, base, ptr, kw, lo, hi, strict)
            d = a + (c - a) * (price[i] - x0) / (x1 - x0)
        dispatch[b] = d
        total = base_cost[b]
        rest = d - base[b]
        for s in range(ptr[b], ptr[b + 1]):
            if rest <= 0:
                break
            x = min(max(rest, 0.0), kw[s])
            filled = x / kw[s] if kw[s] > 0 else 0.0
            total += x * (lo[s] + (hi[s] - lo[s]) * filled / 2.0) / 1000.0
            rest -= kw[s]
        cost[b] = total
    return dispatch, cost
