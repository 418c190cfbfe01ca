"""The end of a phase over arrays: clearing, the shortage and surplus shares, the next window
(redy.sim.array_balance)."""

from __future__ import annotations

import numba
import numpy as np

from redy.sim.array_balance.common import CLEARED, SHORTAGE, SURPLUS
from redy.sim.array_cyclon import (
    Arr,
)


@numba.njit(cache=True)
def end_phase(
    values: Arr, weight: Arr, pushsum: bool, cols: Arr, nodes: Arr, done: Arr, prices: Arr, k: int,
    phase: int, last_phase: int, margin: int, own_cap: Arr, own_floor: Arr, status: Arr, price: Arr,
    unserved: Arr, excess: Arr, res_floor: Arr, res_cap: Arr, cell_first: Arr, commit: bool,
) -> int:  # fmt: skip
    """PriceDiscovery.end_phase for every node of `nodes` on the shared grid `prices`: clear
    its estimate (clearing.clear), record the result, mark it done or give the first cell of
    the window it wants next (-1: none). `values` holds the grid columns `cols` only (sorted;
    0 and k - 1 among them, and k, k + 1 in phase 1). Returns how many nodes' crossings fall
    between two columns that are not neighbours (then nothing is recorded unless `commit`)."""
    width = 2 * margin + 1
    last = 0
    while cols[last] != k - 1:
        last += 1
    unknown = 0
    for i in nodes:
        if commit:
            cell_first[i] = -1
        if done[i]:
            continue
        if pushsum and not weight[i] > 0:
            if commit:
                done[i] = True  # no estimate: the result stays as it was
            continue
        est = values[i] / weight[i] if pushsum else values[i]
        c0 = est[0]
        ck = est[last]
        if c0 >= 0:
            p = prices[0]
            st = CLEARED if c0 == 0 else SURPLUS
        elif ck < 0:
            p = prices[k - 1]
            st = SHORTAGE
        else:
            j = 1
            while est[j] < 0:
                j += 1
            q = cols[j]
            if cols[j - 1] != q - 1:
                unknown += 1
                continue
            a, b = est[j - 1], est[j]
            f = 0.0 if b == a else (0.0 - a) / (b - a)
            p = prices[q - 1] + f * (prices[q] - prices[q - 1])
            st = CLEARED
        if not commit:
            continue
        if st != CLEARED:
            if phase == 1:
                status[i] = st
                price[i] = p
                res_floor[i], res_cap[i] = prices[0], prices[k - 1]
                if st == SHORTAGE:
                    short, load = -ck, est[last + 1]
                    unserved[i] = own_cap[i] * short / load if load > 0 else 0.0
                else:
                    run = est[last + 2]
                    excess[i] = own_floor[i] * c0 / run if run > 0 else 0.0
            done[i] = True
            continue
        status[i] = CLEARED
        price[i] = p
        res_floor[i], res_cap[i] = prices[0], prices[k - 1]
        if phase >= last_phase:
            done[i] = True
            continue
        cell = np.searchsorted(prices, p, side="right") - 1
        cell_first[i] = min(max(cell - margin, 0), k - 1 - width)
    return unknown


@numba.njit(cache=True)
def draw_seed() -> int:
    return np.random.randint(0, 2**31 - 1)
