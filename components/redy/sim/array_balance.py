"""The market of `redy sim balance` over arrays, compiled: `redy sim balance --engine fast`.

Why a second engine: the core-driven one (every node a `PriceDiscovery` over a `PushSum` or a
`FlowUpdating`, redy.sim.balance) spends ~35 us of interpreter time per push-sum message and
~20 us per Flow Updating message (attrs messages, dicts of flows, the driver loop); a 1,000-node
epoch of Flow Updating sends ~470,000 messages. This engine runs the same rounds, event for event
and in the same order (asynchronous rounds: the live nodes act in a random order, a message
arrives before the next node acts), on one row of floats per node, compiled with numba, over the
overlay of the compiled shuffle (redy.sim.array_cyclon). The bids, the reference optimum and the
exact cost are the core engine's own: the same seeds draw the same bids. It cannot replay the
core's random streams, so tests/sim/test_array_balance.py holds its metrics against the core
engine on the same seeds, within their seed-to-seed spread.

What mirrors what:
- `PriceDiscovery`: phases on the coarse grid (with the load at the cap and the must-run at the
  floor appended), then windows around the price found; `clear`, the shortage and surplus shares
  and the window rule are written out in `_end_phase`. One difference: nodes whose prices fall
  in different cells pick different windows, and in the core the lowest window spreads by gossip
  (a node restarts on it when it hears of it); here every node starts the phase on the lowest
  window at once. The nodes' prices differ by far less than a cell, so this is rare.
- `PushSum` (`_pushsum`): keep half, push half (at most MAX_PUSH_WEIGHT) to one random view entry; a refused push (a dead
  node's broker) brings the mass back, removes the entry (`Cyclon.on_unreachable`) and tries
  another, three tries in all; a lost push or one to a node that has finished loses its mass.
- `FlowUpdating`: two kernels. `_flow_exact` keeps, as the core does, a flow and an estimate per
  link (memory: 2 x links x k floats), and is used for a phase with a crash or with message
  loss. `_pull_rounds` needs no per-link state: with reliable, immediate delivery both ends of a
  link hold opposite flows and the same estimate, the one of whichever end acted last, so a node
  rebuilds its flows' sum from its neighbours' current estimates (those that acted since it
  last did; the flows telescope). It does the same arithmetic in another order, so the two
  agree to rounding (a test holds them together); it is what lets 100,000 nodes fit.

Flow Updating's cost is reading the neighbours' estimates: ~20 rows of k floats per node per
round (those that acted since it last did) at random in memory, ~100 ns each at 10^5 nodes.
Every column of the grid gets its own arithmetic, the same for all, so three ways gossip fewer
columns and give the very numbers of the whole grid, bit for bit (tests hold each against the
whole grid): a run of columns equal in every node gossips once (`_distinct_columns`: the curves
are flat outside the bids' prices); the columns above a little past the true crossing wait
(`FastMarket._band`: a node reads them only if all below are < 0, and then the phase runs again
on the whole grid); and the columns go in two blocks, one per core. Who hears from whom in a
round depends on the order alone, so it is worked out once per round for all blocks (`_heard`,
both cores), and each block then runs the round from those lists (`_sweep`), asking for the rows
of the node a few turns ahead before it needs them (redy.sim.prefetch). The estimates are kept,
as a message would carry them, in single precision (`flow_estimate_dtype`): half the bytes per
row; each node's value (rounded once to single) and flows stay in double, and a node moves its
flows by its estimate as stored, the very number its neighbours read. Prices come out within
1e-6 EUR/MWh of double precision (a test holds them).
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Mapping, Sequence
from typing import Any

import numba
import numpy as np

from redy.balancing.aggregation import MAX_PUSH_WEIGHT, PUSH_TRIES
from redy.balancing.curves import (
    MIN_RAMP_EUR_MWH,
    Bid,
    Dispatchable,
    Fixed,
    FlexibleLoad,
    PriceGrid,
    Renewable,
    Storage,
)
from redy.balancing.discovery import PriceSearch
from redy.errors import SimulationError
from redy.sim.array_cyclon import (
    Arr,
    ArrayOverlay,
    ViewState,
    find_entry,
    remove_slot,
    seed_rng,
    strike_pop,
    tomb_add,
)
from redy.sim.prefetch import prefetch

# Result status codes in the arrays, and their names in the report.
_NONE, _CLEARED, _SHORTAGE, _SURPLUS = 0, 1, 2, 3
STATUS_NAMES = ("none", "cleared", "shortage", "surplus")
# Above this, the per-link state of `_flow_exact` is refused with a clear error.
_EXACT_FLOW_LIMIT_BYTES = 4 * 1024**3
# Columns either side of the true crossing that push-sum gossips first (FastMarket._band),
# and above it that Flow Updating gossips first (with every column below).
_BAND = 6
_FLOW_ABOVE = 12
# Flow Updating's columns per block at least (`_pull_blocks`): a block replays every link of
# every round, which a narrow block does not repay.
_MIN_BLOCK = 32


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


# -- the bids ----------------------------------------------------------------------------------


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
def _curves(
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
def _crossing(
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
def _own_limits(
    floor: float, cap: float, own_cap: Arr, own_floor: Arr, node: Arr, base: Arr, ptr: Arr, kw: Arr,
    lo: Arr, hi: Arr, strict: Arr,
) -> None:  # fmt: skip
    """Every node's own load at the cap and must-run injection at the floor (kW)."""
    for b in range(len(node)):
        i = node[b]
        own_cap[i] -= min(_injection(b, cap, base, ptr, kw, lo, hi, strict), 0.0)
        own_floor[i] += max(_injection(b, floor, base, ptr, kw, lo, hi, strict), 0.0)


@numba.njit(cache=True)
def _settle(
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


# -- membership side effects -------------------------------------------------------------------


@numba.njit(cache=True)
def _unreachable(view: ViewState, p: int, j: int, ttl: int) -> None:
    """Cyclon.on_unreachable for the redy detector: j out of p's view, its strikes gone, a
    tombstone."""
    ids, base, length, tick, strike_id, tomb_id, tomb_t = view
    s = find_entry(ids, length, p, j)
    if s >= 0:
        remove_slot(ids, base, length, p, s)
    strike_pop(strike_id, p, j)
    tomb_add(tomb_id, tomb_t, tick[p], p, j, ttl)


# -- push-sum ----------------------------------------------------------------------------------


@numba.njit(cache=True)
def _pushsum(
    s: Arr, w: Arr, order: Arr, done: Arr, alive: Arr, view: ViewState, ttl: int, rounds: int,
    loss: float,
) -> int:  # fmt: skip
    """`rounds` asynchronous rounds of push-sum; returns the messages sent."""
    ids, length = view[0], view[2]
    width = s.shape[1]
    sent = 0
    for _ in range(rounds):
        np.random.shuffle(order)
        for i in order:
            if done[i]:
                continue
            for _try in range(PUSH_TRIES):
                n = length[i]
                if n == 0:
                    break
                t = ids[i, np.random.randint(0, n)]
                sent += 1
                if not alive[t]:
                    # Refused: the half comes back (x / 2 + x / 2 == x), the entry goes.
                    _unreachable(view, i, t, ttl)
                    continue
                si = s[i]
                # Half, but never more than MAX_PUSH_WEIGHT (PushSum.round: what receivers take).
                share = 0.5 if w[i] <= 2.0 * MAX_PUSH_WEIGHT else MAX_PUSH_WEIGHT / w[i]
                moved_w = w[i] * share
                w[i] -= moved_w
                if not (loss > 0.0 and np.random.random() < loss) and not done[t]:
                    st = s[t]
                    for q in range(width):
                        moved = si[q] * share
                        si[q] -= moved
                        st[q] += moved
                    w[t] += moved_w
                else:  # lost, or the target has finished: that share is gone
                    for q in range(width):
                        si[q] -= si[q] * share
                break
    return sent


# -- Flow Updating -----------------------------------------------------------------------------


@numba.njit(cache=True)
def _pull_act(
    i: int, v: Arr, flows: Arr, e: Arr, last: Arr, clock: int, indptr: Arr, idx: Arr, gone: Arr,
    acc: Arr, accv: Arr,
) -> int:  # fmt: skip
    """One Flow Updating round of node i without per-link state (module docstring): `flows[i]`
    is the sum of i's flows, `last[j]` the clock of j's last round (-1: none this phase)."""
    width = v.shape[1]
    ti = last[i]
    d = 0
    m = 0
    acc[:] = 0.0
    accv[:] = 0.0
    for a in range(indptr[i], indptr[i + 1]):
        if gone[a]:
            continue
        d += 1
        j = idx[a]
        if last[j] > ti:  # j acted since i last did: the link holds j's estimate
            ej = e[j]
            for q in range(width):
                acc[q] += ej[q]
            if ti < 0:
                vj = v[j]  # j's flow to i began from j's own value
                for q in range(width):
                    accv[q] += vj[q]
            m += 1
    ei, fi, vi = e[i], flows[i], v[i]
    for q in range(width):
        # j's rounds since i's last moved the flow i->j by minus (e_j - the link's estimate)
        fi[q] -= acc[q] - (accv[q] if ti < 0 else m * ei[q])
        total_est = acc[q] + (d - m) * ei[q]  # the other links hold i's own estimate
        ei[q] = (vi[q] - fi[q] + total_est) / (d + 1)
        fi[q] += d * ei[q] - total_est  # the estimate as stored (and sent): flows stay opposite
    last[i] = clock
    return d


@numba.njit(cache=True)
def _pull_orders(order: Arr, rounds: int) -> Arr:
    """The order of each of `rounds` rounds: one shuffle of `order` a round."""
    orders = np.empty((rounds, len(order)), dtype=order.dtype)
    for r in range(rounds):
        np.random.shuffle(order)
        orders[r] = order
    return orders


@numba.njit(cache=True)
def _pull_rounds(
    v: Arr, flows: Arr, e: Arr, last: Arr, orders: Arr, done: Arr, alive: Arr, indptr: Arr, idx: Arr,
    gone: Arr, view: ViewState, ttl: int, clock0: int, tell_view: bool,
) -> tuple[int, int]:  # fmt: skip
    """The rounds of `orders` of Flow Updating, reliable delivery, no crash inside, over the
    columns `v`, `flows` and `e` hold (every column its own arithmetic: a block of columns
    gives the very numbers of the whole grid); links to nodes dead from the start go at a
    node's first round (refused, then a second round; the view hears of it if `tell_view`)."""
    width = v.shape[1]
    acc = np.empty(width)
    accv = np.empty(width)
    clock = clock0
    sent = 0
    for r in range(orders.shape[0]):
        for i in orders[r]:
            if done[i]:
                continue
            clock += 1
            sent += _pull_act(i, v, flows, e, last, clock, indptr, idx, gone, acc, accv)
            dead = 0
            for a in range(indptr[i], indptr[i + 1]):
                if not gone[a] and not alive[idx[a]]:
                    gone[a] = True
                    dead += 1
                    if tell_view:
                        _unreachable(view, i, idx[a], ttl)
            if dead:
                # Refused: i forgets those links (each flow is i's estimate minus its own value:
                # the dead never acted this phase) and runs its round again without them.
                fi, ei, vi = flows[i], e[i], v[i]
                for q in range(len(fi)):
                    fi[q] -= dead * (ei[q] - vi[q])
                clock += 1
                sent += _pull_act(i, v, flows, e, last, clock, indptr, idx, gone, acc, accv)
    return sent, clock


@numba.njit(cache=True, parallel=True)
def _pull_blocks(
    v: Arr, flows: Arr, e: Arr, last: Arr, orders: Arr, done: Arr, alive: Arr, indptr: Arr, idx: Arr,
    gone: Arr, view: ViewState, ttl: int, clock0: int, block: int,
) -> tuple[int, int]:  # fmt: skip
    """`_pull_rounds` block of `block` columns by block, on both cores. Each block is copied
    into rows of its own (a neighbour's estimates, read ~40 times a round, then stay in the
    cache: the whole grid's do not at 10^5 nodes) and runs every round; the rounds' order,
    the links that go and the clocks are the same in every block, the view hears of the dead
    links once (block 0)."""
    width = v.shape[1]
    count = (width + block - 1) // block
    last0, gone0 = last.copy(), gone.copy()
    sent = np.zeros(count, dtype=np.int64)
    clock = np.zeros(count, dtype=np.int64)
    for b in numba.prange(count):
        c0 = b * block
        c1 = min(width, c0 + block)
        vb = np.ascontiguousarray(v[:, c0:c1])
        fb = np.ascontiguousarray(flows[:, c0:c1])
        eb = np.ascontiguousarray(e[:, c0:c1])
        lb, gb = last0.copy(), gone0.copy()
        sent[b], clock[b] = _pull_rounds(
            vb, fb, eb, lb, orders, done, alive, indptr, idx, gb, view, ttl, clock0, b == 0
        )
        flows[:, c0:c1] = fb
        e[:, c0:c1] = eb
        if b == 0:
            last[:] = lb
            gone[:] = gb
    return sent[0], clock[0]


_NO_TURN = np.iinfo(np.int32).max


@numba.njit(cache=True)
def _acting(order: Arr, done: Arr, last: Arr, rank: Arr, turns: Arr) -> int:
    """`rank[i]`: i's turn among the nodes that act in a round of `order` (-1: it does not);
    `turns[i]`: that turn (`_NO_TURN`: none) and the clock of i's last round, side by side
    for `_heard`. Returns how many act."""
    count = 0
    for i in order:
        turns[i, 1] = last[i]
        if done[i]:
            rank[i] = -1
            turns[i, 0] = _NO_TURN
        else:
            rank[i] = count
            turns[i, 0] = count
            count += 1
    return count


@numba.njit(cache=True, parallel=True)
def _heard(
    rank: Arr, turns: Arr, indptr: Arr, idx: Arr, gone: Arr, heard: Arr, m: Arr, degree: Arr
) -> None:
    """For every node that acts in the round (`rank`), the live links it will have (`degree`)
    and, in link order, the neighbours that will have acted since its own last round when its
    turn comes: those before it in this round and those after it in the last one (`heard`
    from `indptr[i]`, `m[i]` of them). They depend on the order alone, not on the estimates,
    so every block of columns reads them, and the nodes are independent: both cores, in the
    links' order in memory."""
    for i in numba.prange(len(rank)):
        if rank[i] < 0:
            continue
        ri, ti = turns[i, 0], turns[i, 1]
        d = 0
        c = indptr[i]
        for a in range(indptr[i], indptr[i + 1]):
            if gone[a]:
                continue
            d += 1
            j = idx[a]
            if turns[j, 0] < ri or turns[j, 1] > ti:
                heard[c] = j
                c += 1
        m[i] = c - indptr[i]
        degree[i] = d


@numba.njit(cache=True)
def _sweep(
    g: Arr, e: Arr, v: Arr, order: Arr, done: Arr, indptr: Arr, heard: Arr, m: Arr, degree: Arr,
    ahead: int,
) -> None:  # fmt: skip
    """One round of `_pull_act` on one block of columns, with the neighbours each node hears
    from given (`_heard`) and, per node, its value minus its flows' sum in `g` (all the round
    needs of either). `v`: the values, for the phase's first round (then no node has acted
    yet, no link is to the dead); empty: every node has acted before."""
    width = g.shape[1]
    first = v.shape[0] > 0
    acc = np.empty(width)
    accv = np.zeros(width)
    line_e = max(1, 64 // e.itemsize)
    n = len(order)
    for k in range(n):
        if ahead and k + ahead < n:  # the rows a later turn reads, asked for now
            nx = order[k + ahead]
            if not done[nx]:
                for q in range(0, width, 8):
                    prefetch(g, nx, q)
                for q in range(0, width, line_e):
                    prefetch(e, nx, q)
                for t in range(indptr[nx], indptr[nx] + m[nx]):
                    for q in range(0, width, line_e):
                        prefetch(e, heard[t], q)
        i = order[k]
        if done[i]:
            continue
        acc[:] = 0.0
        base, mi, d = indptr[i], m[i], degree[i]
        for t in range(base, base + mi):
            ej = e[heard[t]]
            for q in range(width):
                acc[q] += ej[q]
        gi, ei = g[i], e[i]
        if first:
            accv[:] = 0.0
            for t in range(base, base + mi):
                vj = v[heard[t]]  # j's flow to i began from j's own value
                for q in range(width):
                    accv[q] += vj[q]
        for q in range(width):
            # as `_pull_act`: u is the value minus the flows once the heard links have moved
            u = gi[q] + acc[q] - (accv[q] if first else mi * ei[q])
            total_est = acc[q] + (d - mi) * ei[q]
            ei[q] = (u + total_est) / (d + 1)
            gi[q] = u - d * ei[q] + total_est  # with the estimate as stored (and sent)


@numba.njit(cache=True, parallel=True)
def _sweep_blocks(
    g3: Arr, e3: Arr, v3: Arr, order: Arr, done: Arr, indptr: Arr, heard: Arr, m: Arr, degree: Arr,
    ahead: int,
) -> None:  # fmt: skip
    """`_sweep` on every block of columns, both cores (`v3`: the values' blocks, for the
    phase's first round; else empty)."""
    for b in numba.prange(g3.shape[0]):
        _sweep(g3[b], e3[b], v3[b], order, done, indptr, heard, m, degree, ahead)


@numba.njit(cache=True)
def _exact_act(
    i: int, v: Arr, e: Arr, flow: Arr, est: Arr, has: Arr, indptr: Arr, idx: Arr, rev: Arr, gone: Arr,
    done: Arr, alive: Arr, loss: float, refused: Arr, work: Arr,
) -> tuple[int, int]:  # fmt: skip
    """FlowUpdating.round for node i with a flow and an estimate per link, then delivery.
    Loops over the columns, in `work`'s rows: array expressions would allocate per link."""
    width = v.shape[1]
    own, total_est, new = work[0], work[1], work[2]
    own[:] = v[i]
    total_est[:] = 0.0
    ei = e[i]
    d = 0
    for a in range(indptr[i], indptr[i + 1]):
        if gone[a]:
            continue
        d += 1
        fa = flow[a]
        told = est[a] if has[a] else ei  # FlowUpdating's default: its own estimate
        for q in range(width):
            own[q] -= fa[q]
            total_est[q] += told[q]
    for q in range(width):
        new[q] = (own[q] + total_est[q]) / (d + 1)
    nref = 0
    for a in range(indptr[i], indptr[i + 1]):
        if gone[a]:
            continue
        fa, ea = flow[a], est[a]
        told = ea if has[a] else ei
        for q in range(width):
            fa[q] += new[q] - told[q]
        ea[:] = new
        has[a] = True
        j = idx[a]
        if not alive[j]:
            refused[nref] = a
            nref += 1
        elif not (loss > 0.0 and np.random.random() < loss) and not done[j]:
            b = rev[a]
            if b >= 0 and not gone[b]:
                fb = flow[b]
                for q in range(width):
                    fb[q] = -fa[q]
                est[b] = new
                has[b] = True
    ei[:] = new
    return d, nref


@numba.njit(cache=True)
def _flow_exact(
    v: Arr, e: Arr, flow: Arr, est: Arr, has: Arr, order: Arr, done: Arr, alive: Arr, indptr: Arr,
    idx: Arr, rev: Arr, gone: Arr, view: ViewState, ttl: int, rounds: int, loss: float,
) -> int:  # fmt: skip
    """`rounds` asynchronous rounds of Flow Updating with per-link state (loss, crashes)."""
    refused = np.empty(max(1, len(idx)), dtype=np.int64)
    work = np.empty((3, v.shape[1]))
    sent = 0
    for _ in range(rounds):
        np.random.shuffle(order)
        for i in order:
            if done[i]:
                continue
            for _try in range(PUSH_TRIES):
                d, nref = _exact_act(
                    i,
                    v,
                    e,
                    flow,
                    est,
                    has,
                    indptr,
                    idx,
                    rev,
                    gone,
                    done,
                    alive,
                    loss,
                    refused,
                    work,
                )
                sent += d
                if nref == 0:
                    break
                for r in range(nref):
                    a = refused[r]
                    gone[a] = True  # forgotten at the next round, as FlowUpdating does
                    flow[a] = 0.0
                    has[a] = False
                    _unreachable(view, i, idx[a], ttl)
    return sent


@numba.njit(cache=True)
def _link_rows(ids: Arr, length: Arr, alive: Arr, live: Arr, n: int) -> tuple[Arr, Arr, Arr]:
    """FastMarket._links: i->j for every j in a live i's view, and j->i if j is alive; each
    row sorted, once per neighbour."""
    ptr = np.zeros(n + 1, dtype=np.int64)
    for i in live:
        for s in range(length[i]):
            j = ids[i, s]
            ptr[i + 1] += 1
            if alive[j]:
                ptr[j + 1] += 1
    ptr = np.cumsum(ptr)
    fill = ptr[:-1].copy()
    ends = np.empty(ptr[n], dtype=np.int64)
    for i in live:
        for s in range(length[i]):
            j = ids[i, s]
            ends[fill[i]] = j
            fill[i] += 1
            if alive[j]:
                ends[fill[j]] = i
                fill[j] += 1
    indptr = np.zeros(n + 1, dtype=np.int64)
    idx = np.empty(ptr[n], dtype=np.int32)
    out = 0
    for i in range(n):
        prev = -1
        for j in np.sort(ends[ptr[i] : ptr[i + 1]]):
            if j != prev:
                idx[out] = j
                out += 1
                prev = j
        indptr[i + 1] = out
    idx = idx[:out].copy()
    rev = np.full(out, -1, dtype=np.int64)
    for i in range(n):
        for a in range(indptr[i], indptr[i + 1]):
            j = idx[a]
            lo, hi = indptr[j], indptr[j + 1]
            at = lo + np.searchsorted(idx[lo:hi], i)
            if at < hi and idx[at] == i:
                rev[a] = at
    return indptr, idx, rev


@numba.njit(cache=True)
def _new_columns(bits: Arr, rows: Arr) -> Arr:
    """Per column of `bits` (floats viewed as integers): whether some row of `rows` differs
    from the column before."""
    width = bits.shape[1]
    new = np.zeros(width, dtype=np.bool_)
    new[0] = True
    for i in rows:
        row = bits[i]
        for q in range(1, width):
            if row[q] != row[q - 1]:
                new[q] = True
    return new


def _distinct_columns(values: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The columns of `values` to gossip, each run of columns equal bit for bit in the `rows`
    once, and per column of `values` its run's position among them. Flow Updating does the
    same arithmetic on every column, so equal columns come out equal: gossiping one of a run
    gives the very numbers of gossiping all. The curves being flat outside the bids' prices,
    phase 1 holds ~22 runs of 203 columns, the last phase ~100 of 201 (issue 16's note)."""
    new = _new_columns(values.view(np.uint64), rows)
    return values[:, np.flatnonzero(new)], np.cumsum(new) - 1


def _rows(buffer: np.ndarray, width: int) -> np.ndarray:
    """The first rows x `width` floats of `buffer` as a C-contiguous array of `width` columns
    (a column slice would be strided: the kernels compiled for it run ~2x slower)."""
    n = buffer.shape[0]
    return buffer.reshape(-1)[: n * width].reshape(n, width)


# -- clearing ----------------------------------------------------------------------------------


@numba.njit(cache=True)
def _end_phase(
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
            st = _CLEARED if c0 == 0 else _SURPLUS
        elif ck < 0:
            p = prices[k - 1]
            st = _SHORTAGE
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
            st = _CLEARED
        if not commit:
            continue
        if st != _CLEARED:
            if phase == 1:
                status[i] = st
                price[i] = p
                res_floor[i], res_cap[i] = prices[0], prices[k - 1]
                if st == _SHORTAGE:
                    short, load = -ck, est[last + 1]
                    unserved[i] = own_cap[i] * short / load if load > 0 else 0.0
                else:
                    run = est[last + 2]
                    excess[i] = own_floor[i] * c0 / run if run > 0 else 0.0
            done[i] = True
            continue
        status[i] = _CLEARED
        price[i] = p
        res_floor[i], res_cap[i] = prices[0], prices[k - 1]
        if phase >= last_phase:
            done[i] = True
            continue
        cell = np.searchsorted(prices, p, side="right") - 1
        cell_first[i] = min(max(cell - margin, 0), k - 1 - width)
    return unknown


@numba.njit(cache=True)
def _draw_seed() -> int:
    return np.random.randint(0, 2**31 - 1)


# -- the engine --------------------------------------------------------------------------------


class FastMarket:
    """The overlay and every node's market state for `simulate_balance(engine="fast")`."""

    # Flow Updating with a flow per link in every phase, not only where loss or a crash needs
    # it (tests hold the two kernels together).
    per_link_flows = False
    # Push-sum on a band of columns first (`_band`); off: always on the whole grid (tests).
    push_sum_band = True
    # Flow Updating gossips each run of equal grid columns once (`_distinct_columns`), and,
    # without per-link state, splits the columns into this many blocks, one per core
    # (`_pull_blocks`). Off and 1: every column, all at once (tests hold them together).
    flow_distinct_columns = True
    # Flow Updating on the columns up to a little above the true crossing first (`_band`).
    flow_below_crossing = True
    flow_column_blocks = 2
    # What Flow Updating's estimates are stored (and so sent) in without per-link state.
    flow_estimate_dtype: type = np.float32
    # Flow Updating runs from the heard lists (`_pull_heard`; off: `_pull`), asking for the
    # rows of the node this many turns ahead.
    flow_heard_lists = True
    flow_prefetch = 4

    def __init__(
        self, nodes: int, view_size: int, shuffle_length: int, search: PriceSearch, seed: int
    ) -> None:
        self.n = nodes
        self.search = search
        self.overlay = ArrayOverlay(nodes, nodes, view_size, shuffle_length, "redy", seed)
        self.overlay.bootstrap("random")
        for _ in range(10):
            self.overlay.cycle(0.0)
        width = search.k + 2
        self._a = np.zeros((nodes, width))
        self._b = np.zeros((nodes, width))
        self._w = np.zeros(nodes)
        self._e = np.zeros((0, width))
        self.messages = 0
        # The latest epoch's results, per node: status, price, the grid it was found on.
        self.status = np.zeros(nodes, dtype=np.int8)
        self.price = np.zeros(nodes)
        self.floor = np.zeros(nodes)
        self.cap = np.zeros(nodes)
        self.unserved = np.zeros(nodes)
        self.excess = np.zeros(nodes)
        self.table: BidTable | None = None
        self._links_cache: tuple[bytes, tuple[np.ndarray, np.ndarray, np.ndarray]] | None = None

    def _view(self) -> tuple[np.ndarray, ...]:
        o = self.overlay
        return (o.ids, o.base, o.length, o.tick, o.strike_id, o.tomb_id, o.tomb_t)

    def cycle(self, loss: float) -> list[int]:
        self.overlay.cycle(loss)
        return [int(i) for i in self.overlay.live()]

    def run(
        self,
        epoch: int,
        live: list[int],
        bids: Mapping[int, Sequence[Bid]],
        algorithm: str,
        rounds: int,
        loss: float,
        crash: tuple[float, random.Random] | None,
    ) -> tuple[list[int], int]:
        """One epoch's phases for the `live` nodes; `crash`: (fraction, rng) to crash halfway
        through the first phase. Returns the nodes still live and how many crashed."""
        search, k, n = self.search, self.search.k, self.n
        table = self.table = BidTable(live, bids)
        arrays = table.arrays()
        own_cap = np.zeros(n)
        own_floor = np.zeros(n)
        _own_limits(search.floor_eur_mwh, search.cap_eur_mwh, own_cap, own_floor, *arrays)
        alive = self.overlay.alive
        done = np.ones(n, dtype=np.bool_)
        done[live] = False
        for field in (self.status, self.price, self.unserved, self.excess):
            field[:] = 0
        grid = search.coarse()
        order = np.asarray(live, dtype=np.int32)
        crashed = 0
        cell_first = np.full(n, -1, dtype=np.int64)
        for phase in range(1, search.phases + 1):
            if done[order].all():
                break
            prices = grid.prices
            width = k + 2 if phase == 1 else k
            split = rounds // 2 if crash is not None and phase == 1 else 0
            dead: list[int] = []
            if split and crash is not None:  # drawn now, from the same list the core draws from
                dead = crash[1].sample(order.tolist(), round(crash[0] * len(order)))
            full = np.arange(width)
            tries = [full]
            pushsum = algorithm == "pushsum"
            if self.push_sum_band if pushsum else self.flow_below_crossing:
                band = self._band(prices, k, phase, arrays, pushsum)
                tries = [band, full] if len(band) < width else [full]
            seed = _draw_seed()
            saved = self._save() if len(tries) > 1 and (dead or not alive[: self.n].all()) else None
            start_order = order
            for attempt, cols in enumerate(tries):
                if attempt:
                    order = start_order
                    if saved is not None:
                        self._restore(saved)
                seed_rng(seed)
                values = _rows(self._a, len(cols))
                _curves(values, order, prices, cols, *arrays)
                gossiped, spread = values, None
                if algorithm != "pushsum" and self.flow_distinct_columns:
                    gossiped, spread = _distinct_columns(values, order)
                state = self._start(algorithm, gossiped, order, done, loss, bool(split))
                sent = 0
                for count, crash_now in (
                    [(split - 1, False), (rounds - split + 1, True)] if split else [(rounds, False)]
                ):
                    if crash_now:
                        alive[dead] = False
                        order = order[alive[order]]
                        self._after_crash(state, dead)
                    sent += self._rounds(state, algorithm, order, done, count, loss)
                est = state["s"] if algorithm == "pushsum" else state["e"]
                if spread is not None:  # every grid column its run's estimate
                    values[:] = est[:, spread]
                    est = values
                elif est.dtype != values.dtype:
                    values[:] = est
                    est = values
                ends = (est, self._w, algorithm == "pushsum", cols, order, done, prices, k)
                rest = (phase, search.phases, search.margin, own_cap, own_floor, self.status)
                out = (self.price, self.unserved, self.excess, self.floor, self.cap, cell_first)
                last_try = attempt == len(tries) - 1
                if last_try or _end_phase(*ends, *rest, *out, False) == 0:
                    _end_phase(*ends, *rest, *out, True)
                    break
            self.messages += sent
            crashed = len(dead)
            firsts = cell_first[order]
            firsts = firsts[firsts >= 0]
            if not len(firsts):
                break
            # The lowest window wins (discovery.py); here all take it at once.
            first = int(firsts.min())
            step = 2 * search.margin + 1
            grid = PriceGrid(float(prices[first]), float(prices[first + step]), k)
        return [int(i) for i in order], crashed

    # -- push-sum on a band of columns ---------------------------------------------------------

    def _band(
        self,
        prices: np.ndarray,
        k: int,
        phase: int,
        arrays: tuple[np.ndarray, ...],
        pushsum: bool = True,
    ) -> np.ndarray:
        """The grid columns push-sum gossips first: both ends (and phase 1's two extras) and
        `_BAND` columns either side of where the true average curve crosses zero. Push-sum's
        estimate is a weighted mean of non-decreasing curves with weights >= 0, so it is
        non-decreasing, in floating point too (halving and adding are monotone); a node whose
        crossing falls between two neighbouring columns of the band has the very price it
        would have found on the whole grid. If any node's does not, the phase runs again on
        the whole grid from the same random state (`run`).

        Flow Updating's estimate need not be monotone (a node's new estimate weighs its own
        old one negatively when most neighbours have acted since), so its band starts at the
        floor: every column a node reads looking for its first one >= 0 is there, each with
        the numbers of the whole grid (every column its own arithmetic); only the columns
        above the band, which a node reads only if all of the band's are < 0, are left out."""
        cross = _crossing(prices, *arrays)
        lowest = max(cross - _BAND, 0) if pushsum else 0
        band = np.arange(lowest, min(cross + (_BAND if pushsum else _FLOW_ABOVE), k - 1) + 1)
        extras = [k, k + 1] if phase == 1 else []
        return np.unique(np.concatenate([[0, k - 1], band, extras])).astype(np.int64)

    def _save(self) -> tuple[np.ndarray, ...]:
        """What a phase changes besides the gossip state: views, tombstones, strikes, deaths."""
        o = self.overlay
        return tuple(
            a.copy()
            for a in (
                o.ids,
                o.base,
                o.length,
                o.strike_id,
                o.strike_n,
                o.tomb_id,
                o.tomb_t,
                o.alive,
            )
        )

    def _restore(self, saved: tuple[np.ndarray, ...]) -> None:
        o = self.overlay
        for a, b in zip(
            (o.ids, o.base, o.length, o.strike_id, o.strike_n, o.tomb_id, o.tomb_t, o.alive),
            saved,
            strict=True,
        ):
            a[...] = b

    # -- aggregation state per phase ----------------------------------------------------------

    def _start(
        self,
        algorithm: str,
        values: np.ndarray,
        order: np.ndarray,
        done: np.ndarray,
        loss: float,
        crash: bool,
    ) -> dict[str, Any]:
        width = values.shape[1]
        if algorithm == "pushsum":
            s = values  # push-sum needs the values no more
            self._w[:] = 0.0
            self._w[order] = 1.0
            return {"s": s}
        indptr, idx, rev = self._links(order)
        gone = np.zeros(len(idx), dtype=np.bool_)
        linked = loss > 0 or crash or self.per_link_flows
        dtype = np.float64 if linked else self.flow_estimate_dtype
        if len(self._e) != self.n or self._e.shape[1] < width or self._e.dtype != dtype:
            self._e = np.zeros((self.n, self.search.k + 2), dtype=dtype)
        e = _rows(self._e, width)
        e[order] = values[order]
        values[order] = e[order]  # each node's value as its estimate holds it
        state: dict[str, Any] = {
            "v": values,
            "e": e,
            "indptr": indptr,
            "idx": idx,
            "rev": rev,
            "gone": gone,
        }
        if linked:
            need = 2 * len(idx) * width * 8
            if need > _EXACT_FLOW_LIMIT_BYTES:
                raise SimulationError(
                    f"Flow Updating with message loss or a crash keeps a flow per link: "
                    f"{len(idx):,} links need {need / 1024**3:.1f} GiB; expected at most "
                    f"{_EXACT_FLOW_LIMIT_BYTES / 1024**3:.0f} GiB (fewer nodes, or --engine core)"
                )
            state["flow"] = np.zeros((len(idx), width))
            state["est"] = np.zeros((len(idx), width))
            state["has"] = np.zeros(len(idx), dtype=np.bool_)
        else:
            flows = _rows(self._b, width)
            flows[order] = 0.0
            state["flows"] = flows
            state["last"] = np.full(self.n, -1, dtype=np.int64)
            state["clock"] = 0
        return state

    def _rounds(
        self,
        state: dict[str, Any],
        algorithm: str,
        order: np.ndarray,
        done: np.ndarray,
        rounds: int,
        loss: float,
    ) -> int:
        if rounds <= 0:
            return 0
        alive, view, ttl = self.overlay.alive, self._view(), self.overlay.ttl
        order = order.copy()
        if algorithm == "pushsum":
            return int(_pushsum(state["s"], self._w, order, done, alive, view, ttl, rounds, loss))
        if "flow" in state:
            return int(
                _flow_exact(
                    state["v"],
                    state["e"],
                    state["flow"],
                    state["est"],
                    state["has"],
                    order,
                    done,
                    alive,
                    state["indptr"],
                    state["idx"],
                    state["rev"],
                    state["gone"],
                    view,
                    ttl,
                    rounds,
                    loss,
                )
            )
        orders = _pull_orders(order, rounds)
        if not self.flow_heard_lists:
            return self._pull(state, orders, done)
        live_links = self.overlay.alive[state["idx"][~state["gone"]]]
        fresh = bool((state["last"] < 0).all())
        if fresh and live_links.all():
            return self._pull_heard(state, orders, done, fresh=True)
        # links to the dead go at a node's first round, as it comes; then, every node having
        # acted, the rounds from the heard lists
        sent = self._pull(state, orders[:1], done)
        return sent + self._pull_heard(state, orders[1:], done, fresh=False)

    def _pull(self, state: dict[str, Any], orders: np.ndarray, done: np.ndarray) -> int:
        """`orders`' rounds of Flow Updating without per-link state, as they come."""
        width = state["v"].shape[1]
        block = max(-(-width // max(self.flow_column_blocks, 1)), _MIN_BLOCK)
        pull = (
            state["v"],
            state["flows"],
            state["e"],
            state["last"],
            orders,
            done,
            self.overlay.alive,
            state["indptr"],
            state["idx"],
            state["gone"],
            self._view(),
            self.overlay.ttl,
            state["clock"],
        )
        if block < width:
            sent, state["clock"] = _pull_blocks(*pull, block)
        else:
            sent, state["clock"] = _pull_rounds(*pull, True)
        return int(sent)

    def _heard_block(self, width: int) -> int:
        """Columns per block for `_pull_heard`: `flow_column_blocks` equal blocks, one per
        core. Narrower blocks, whose estimates would stay in the cache, measured slower at
        10^5 nodes: every block reads the heard lists and its rows of `g` again."""
        count = max(1, min(width, self.flow_column_blocks))
        return -(-width // count)

    def _pull_heard(
        self, state: dict[str, Any], orders: np.ndarray, done: np.ndarray, fresh: bool
    ) -> int:
        """`orders`' rounds of Flow Updating without per-link state, from the phase's start
        (`fresh`, no link to the dead) or once every node of the phase has acted: who hears
        from whom in a round is known from the order (`_heard`), then every block of columns
        runs the round with it (`_sweep_blocks`); each column its own arithmetic, as ever."""
        if not len(orders):
            return 0
        v, flows, e = state["v"], state["flows"], state["e"]
        indptr, idx, gone, last = state["indptr"], state["idx"], state["gone"], state["last"]
        n, width = v.shape
        block = self._heard_block(width)
        count = -(-width // block)
        g3 = np.zeros((count, n, block))
        e3 = np.zeros((count, n, block), dtype=e.dtype)
        spans = [(b, b * block, min(width, (b + 1) * block)) for b in range(count)]
        for b, c0, c1 in spans:
            np.subtract(v[:, c0:c1], flows[:, c0:c1], out=g3[b, :, : c1 - c0])
            e3[b, :, : c1 - c0] = e[:, c0:c1]
        none = np.zeros((count, 0, block))
        v3 = g3.copy() if fresh else none  # no flows yet: g is v
        heard = np.empty(len(idx), dtype=idx.dtype)
        m = np.zeros(n, dtype=np.int64)
        degree = np.zeros(n, dtype=np.int64)
        rank = np.full(n, -1, dtype=np.int64)
        turns = np.empty((n, 2), dtype=np.int32)
        turns[:, 0], turns[:, 1] = _NO_TURN, -1
        clock, sent = state["clock"], 0
        who = orders[0][~done[orders[0]]]  # the nodes that act: the same in every round
        for order in orders:
            acting = _acting(order, done, last, rank, turns)
            _heard(rank, turns, indptr, idx, gone, heard, m, degree)
            _sweep_blocks(g3, e3, v3, order, done, indptr, heard, m, degree, self.flow_prefetch)
            v3 = none
            sent += int(degree[who].sum())
            last[who] = clock + 1 + rank[who]
            clock += acting
        state["clock"] = clock
        for b, c0, c1 in spans:
            e[:, c0:c1] = e3[b, :, : c1 - c0]
            np.subtract(v[:, c0:c1], g3[b, :, : c1 - c0], out=flows[:, c0:c1])
        return sent

    def _after_crash(self, state: dict[str, Any], dead: list[int]) -> None:
        """Flow Updating: a live node's links to the crashed that only their views made go
        (the core rebuilds the undirected overlay from the live views every round)."""
        if "flow" not in state:
            return
        o = self.overlay
        indptr, idx, gone = state["indptr"], state["idx"], state["gone"]
        src = np.repeat(np.arange(len(indptr) - 1), np.diff(indptr))
        crashed = np.zeros(self.n, dtype=np.bool_)
        crashed[dead] = True
        for a in np.flatnonzero(crashed[idx] & ~gone):
            i, j = int(src[a]), int(idx[a])
            if crashed[i]:
                continue
            if find_entry(o.ids, o.length, i, j) < 0:
                gone[a] = True
                state["flow"][a] = 0.0
                state["has"][a] = False

    def _links(self, live: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The undirected overlay of the live nodes' views (redy.sim.balance._neighbours) as
        sorted rows (indptr, idx) and, per link i->j, the position of j->i (-1: none)."""
        o = self.overlay
        key = hashlib.blake2b(digest_size=16)
        for part in (o.ids, o.length, o.alive, live):
            key.update(np.ascontiguousarray(part).data)
        if self._links_cache is None or self._links_cache[0] != key.digest():
            # the phases of an epoch mostly share the views: built once (~0.4 s at 10^5)
            rows = _link_rows(o.ids, o.length, o.alive, live.astype(np.int64), self.n)
            self._links_cache = (key.digest(), rows)
        result: tuple[np.ndarray, np.ndarray, np.ndarray] = self._links_cache[1]
        return result

    # -- dispatch ----------------------------------------------------------------------------

    def settle(self, live: list[int], reference_price: float) -> tuple[np.ndarray, np.ndarray]:
        """Every live node's bids' dispatch (kW) and cost (EUR/h), in the table's order."""
        assert self.table is not None
        n, k = self.n, self.search.k
        mode = np.zeros(n, dtype=np.int8)
        p_at = np.full(n, reference_price)
        p_lo = np.zeros(n)
        p_hi = np.zeros(n)
        nodes = np.asarray(live, dtype=np.int64)
        found = nodes[self.status[nodes] != _NONE]
        grids = np.stack([self.floor[found], self.cap[found]], axis=1)
        for floor, cap in np.unique(grids, axis=0):
            group = found[(self.floor[found] == floor) & (self.cap[found] == cap)]
            prices = np.linspace(floor, cap, k)
            price = self.price[group]
            q = np.searchsorted(prices, price)
            below, above = price <= prices[0], price >= prices[-1]
            inside = ~(below | above)
            p_at[group[below]] = prices[0]
            p_at[group[above]] = prices[-1]
            mode[group[inside]] = 1
            p_lo[group[inside]] = prices[q[inside] - 1]
            p_hi[group[inside]] = prices[q[inside]]
        t = self.table
        result: tuple[np.ndarray, np.ndarray] = _settle(
            t.node,
            t.base,
            t.base_cost,
            t.ptr,
            t.kw,
            t.lo,
            t.hi,
            t.strict,
            mode,
            p_at,
            p_lo,
            p_hi,
            self.price,
        )
        return result
