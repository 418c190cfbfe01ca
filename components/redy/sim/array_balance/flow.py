"""Flow Updating over arrays: the exact per-link kernel, the pull kernels, the heard lists, the
column blocks and the links' rows (redy.sim.array_balance)."""

from __future__ import annotations

import numba
import numpy as np

from redy.balancing.aggregation import PUSH_TRIES
from redy.sim.array_balance.common import NO_TURN
from redy.sim.array_balance.pushsum import unreachable
from redy.sim.array_cyclon import (
    Arr,
    ViewState,
)
from redy.sim.prefetch import prefetch


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
def pull_orders(order: Arr, rounds: int) -> Arr:
    """The order of each of `rounds` rounds: one shuffle of `order` a round."""
    orders = np.empty((rounds, len(order)), dtype=order.dtype)
    for r in range(rounds):
        np.random.shuffle(order)
        orders[r] = order
    return orders


@numba.njit(cache=True)
def pull_rounds(
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
                        unreachable(view, i, idx[a], ttl)
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
def pull_blocks(
    v: Arr, flows: Arr, e: Arr, last: Arr, orders: Arr, done: Arr, alive: Arr, indptr: Arr, idx: Arr,
    gone: Arr, view: ViewState, ttl: int, clock0: int, block: int,
) -> tuple[int, int]:  # fmt: skip
    """`pull_rounds` block of `block` columns by block, on both cores. Each block is copied
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
        sent[b], clock[b] = pull_rounds(
            vb, fb, eb, lb, orders, done, alive, indptr, idx, gb, view, ttl, clock0, b == 0
        )
        flows[:, c0:c1] = fb
        e[:, c0:c1] = eb
        if b == 0:
            last[:] = lb
            gone[:] = gb
    return sent[0], clock[0]


@numba.njit(cache=True)
def acting_kernel(order: Arr, done: Arr, last: Arr, rank: Arr, turns: Arr) -> int:
    """`rank[i]`: i's turn among the nodes that act in a round of `order` (-1: it does not);
    `turns[i]`: that turn (`NO_TURN`: none) and the clock of i's last round, side by side
    for `heard_kernel`. Returns how many act."""
    count = 0
    for i in order:
        turns[i, 1] = last[i]
        if done[i]:
            rank[i] = -1
            turns[i, 0] = NO_TURN
        else:
            rank[i] = count
            turns[i, 0] = count
            count += 1
    return count


@numba.njit(cache=True, parallel=True)
def heard_kernel(
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
    from given (`heard_kernel`) and, per node, its value minus its flows' sum in `g` (all the round
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
def sweep_blocks(
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
def flow_exact(
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
                    unreachable(view, i, idx[a], ttl)
    return sent


@numba.njit(cache=True)
def link_rows(ids: Arr, length: Arr, alive: Arr, live: Arr, n: int) -> tuple[Arr, Arr, Arr]:
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


def distinct_columns(values: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The columns of `values` to gossip, each run of columns equal bit for bit in the `rows`
    once, and per column of `values` its run's position among them. Flow Updating does the
    same arithmetic on every column, so equal columns come out equal: gossiping one of a run
    gives the very numbers of gossiping all. The curves being flat outside the bids' prices,
    phase 1 holds ~22 runs of 203 columns, the last phase ~100 of 201 (issue 16's note)."""
    new = _new_columns(values.view(np.uint64), rows)
    return values[:, np.flatnonzero(new)], np.cumsum(new) - 1


def rows_kernel(buffer: np.ndarray, width: int) -> np.ndarray:
    """The first rows x `width` floats of `buffer` as a C-contiguous array of `width` columns
    (a column slice would be strided: the kernels compiled for it run ~2x slower)."""
    n = buffer.shape[0]
    return buffer.reshape(-1)[: n * width].reshape(n, width)
