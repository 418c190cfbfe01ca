"""The shuffle of redy.membership.cyclon over arrays, compiled: `redy sim membership --engine fast`.

Why a second engine: the core-driven simulator spends ~80 us of interpreter time per shuffle
spread over the whole protocol (merge, entry tuples, `random.sample`, the driver loop), with no
hot spot to remove, so 10^5 nodes x 50 cycles took ~7 minutes and 10^6 nodes did not fit. This
engine runs the same protocol, event for event and in the same order, on one `int32` row of `c`
slots per node, compiled with numba; the graph metrics go through `scipy.sparse` and compiled
breadth-first searches. It cannot replay the core's random streams (numba has its own
generator), so tests/sim/test_array_cyclon.py holds its metrics against the core-driven engine
on the same seeds, within their seed-to-seed spread.

What mirrors what in `Cyclon`: `_cycle` holds the driver loop of redy.sim.membership.ShuffleNet.cycle
with `tick` (age all, drop the oldest, random among ties, SL-1 random others plus the own fresh
entry), `on_request` (SL random others) and `on_unreachable` written inline; `_merge` is
`Cyclon._merge` (no self, the younger duplicate wins, empty slots first, then the slots of the
entries sent away, last sent first; tombstones that stale copies cannot pass and a younger copy
lifts; with the `verify` detector, every admitted entry dialled at once and a dead one dropped
as `Cyclon.take_admitted` lets the driver do) and `_on_timeout` is `Cyclon.on_timeout` for the
`redy` and `verify` detectors (three strikes). One
difference, in memory only: a node keeps at most `_TOMBSTONES_PER_VIEW_SLOT * c` tombstones
(the core's dict has no bound; 35 was the most a node held with c = 20 through two 50 %
crashes) and `_STRIKE_SLOTS` strike counters; when full, the oldest tombstone makes room.
Tombstones expire as in the core: `4c` periods, swept every 8 periods.
"""

from __future__ import annotations

import random
from typing import Any

import numba
import numpy as np
from scipy.sparse import coo_array, csr_array
from scipy.sparse.csgraph import connected_components

from redy.sim.views import SOURCES, metric_sample, overlay_report

# The kernels' arguments: numba compiles them for the arrays passed; mypy sees these.
Arr = np.ndarray
ViewState = tuple[np.ndarray, ...]

_TOMBSTONES_PER_VIEW_SLOT = 4
_STRIKE_SLOTS = 4
_STRIKES = 3  # as redy.membership.cyclon._STRIKES
_EXPIRE_EVERY = 8  # the core sweeps its tombstones every 8 periods


class ArrayOverlay:
    """Every node's view as rows of two `(capacity, c)` int32 arrays: node ids and the node's
    tick at which that entry's age was 0 (age = own tick - base, as in the core)."""

    def __init__(
        self, capacity: int, nodes: int, c: int, sl: int, detector: str, seed: int
    ) -> None:
        self.c, self.sl = c, sl
        self.redy = detector != "cyclon"
        self.verify = detector == "verify"
        self.ttl = 4 * c  # Cyclon's default suspect_ttl
        self.ids = np.full((capacity, c), -1, dtype=np.int32)
        self.base = np.zeros((capacity, c), dtype=np.int32)
        self.length = np.zeros(capacity, dtype=np.int32)
        self.tick = np.zeros(capacity, dtype=np.int32)
        self.alive = np.zeros(capacity, dtype=np.bool_)
        tombs = _TOMBSTONES_PER_VIEW_SLOT * c if self.redy else 0
        strikes = _STRIKE_SLOTS if self.redy else 0
        self.tomb_id = np.full((capacity, tombs), -1, dtype=np.int32)
        self.tomb_t = np.zeros((capacity, tombs), dtype=np.int32)
        self.strike_id = np.full((capacity, strikes), -1, dtype=np.int32)
        self.strike_n = np.zeros((capacity, strikes), dtype=np.int32)
        self.n = 0  # nodes created so far (rows 0..n-1)
        self.introducer = 0
        seed_rng(seed)
        self.add(nodes)

    def add(self, count: int) -> np.ndarray:
        first = self.n
        self.n += count
        self.alive[first : self.n] = True
        return np.arange(first, self.n, dtype=np.int32)

    def live(self) -> np.ndarray:
        return np.flatnonzero(self.alive[: self.n]).astype(np.int32)

    def bootstrap(self, kind: str) -> None:
        n, c = self.n, self.c
        if kind == "star":
            self.ids[1:n, 0] = 0
            self.length[1:n] = 1
        elif kind == "ring":
            k = min(c, n - 1)
            self.ids[:n, :k] = (np.arange(n)[:, None] + np.arange(1, k + 1)[None, :]) % n
            self.length[:n] = k
        else:
            random_bootstrap(self.ids, self.length, n, c)

    def crash(self, fraction: float, rng: random.Random) -> None:
        live = self.live().tolist()
        self.alive[rng.sample(live, round(fraction * len(live)))] = False

    def join(self, count: int, rng: random.Random) -> None:
        """`count` new nodes, each seeded with one introducer and its view (the retained view)."""
        self.introducer = rng.choice(self.live().tolist())
        for j in self.add(count):
            _seed_from(self._state(), int(j), self.introducer, self.ttl, self.verify)

    def revive(self, node: int, introducer: int) -> None:
        """A node that was down comes back: an empty view, no tombstones or strikes, seeded
        from `introducer`'s retained view as a restarted process reads it."""
        self.alive[node] = True
        self.ids[node] = -1
        self.length[node] = 0
        self.tomb_id[node] = -1
        self.strike_id[node] = -1
        if introducer != node and self.alive[introducer]:
            _seed_from(self._state(), node, introducer, self.ttl, self.verify)

    def cycle(self, loss: float) -> None:
        order = self.live()
        _cycle(
            self._state(),
            order,
            loss,
            self.c,
            self.sl,
            self.redy,
            self.verify,
            self.ttl,
            self.introducer,
        )

    def in_degree(self) -> np.ndarray:
        live = self.live()
        return np.asarray(_in_degree(self.ids, self.length, live, self.n)[live])

    def dead_links(self) -> int:
        return int(_dead_links(self.ids, self.length, self.alive, self.live()))

    def mean_view_size(self) -> float:
        live = self.live()
        return float(self.length[live].mean()) if len(live) else 0.0

    def adjacency(self) -> csr_array:
        """Undirected adjacency among live nodes (links to dead nodes and self-links left out)."""
        n = self.n
        src = np.repeat(np.arange(n, dtype=np.int32), self.c)
        dst = self.ids[:n].ravel()
        keep = (dst >= 0) & (dst != src)
        src, dst = src[keep], dst[keep]
        keep = self.alive[src] & self.alive[dst]
        src, dst = src[keep], dst[keep]
        rows = np.concatenate([src, dst])
        cols = np.concatenate([dst, src])
        del src, dst
        ones = np.ones(len(rows), dtype=np.int8)
        graph = coo_array((ones, (rows, cols)), shape=(n, n)).tocsr()
        graph.sum_duplicates()
        return graph

    def _state(self) -> tuple[np.ndarray, ...]:
        return (
            self.ids,
            self.base,
            self.length,
            self.tick,
            self.alive,
            self.tomb_id,
            self.tomb_t,
            self.strike_id,
            self.strike_n,
        )

    def metrics(self, rng: random.Random) -> dict[str, Any]:
        """The same report, from the same samples, as the core engine's (redy.sim.membership)."""
        live = self.live()
        graph = self.adjacency()
        sample = np.asarray(metric_sample(live.tolist(), rng), dtype=np.int32)
        indptr = graph.indptr.astype(np.int64)
        indices = graph.indices.astype(np.int32)
        return overlay_report(
            len(live),
            self.in_degree(),
            float(_clustering(indptr, indices, sample)) / len(sample) if len(sample) else 0.0,
            float(_path_length(indptr, indices, sample[:SOURCES])),
            len(sample),
            _largest_component(graph, live),
        )

    def sweep(self, rng: random.Random) -> list[dict[str, float]]:
        """Remove live nodes in 5 % steps (no more shuffling) and report the largest component."""
        live = self.live()
        order = np.asarray(rng.sample(live.tolist(), len(live)), dtype=np.int64)
        graph = self.adjacency()
        out = []
        for step in range(1, 20):
            removed = np.zeros(self.n, dtype=np.bool_)
            removed[order[: int(len(order) * step * 0.05)]] = True
            remaining = live[~removed[live]]
            keep = np.flatnonzero(~removed)
            position = np.full(self.n, -1, dtype=np.int64)
            position[keep] = np.arange(len(keep))
            largest = _largest_component(graph[keep][:, keep], position[remaining])
            frac = largest / len(remaining) if len(remaining) else 0.0
            out.append(
                {"removed_fraction": round(step * 0.05, 2), "largest_component_fraction": frac}
            )
        return out


def _largest_component(graph: csr_array, nodes: np.ndarray) -> int:
    if not len(nodes):
        return 0
    _, labels = connected_components(graph, directed=False)
    return int(np.bincount(labels[nodes]).max())


# -- compiled kernels ------------------------------------------------------------------------------
# The state tuple: ids, base, length, tick, alive, tomb_id, tomb_t, strike_id, strike_n.


@numba.njit(cache=True)
def seed_rng(seed: int) -> None:
    np.random.seed(seed)


@numba.njit(cache=True)
def random_bootstrap(ids: np.ndarray, length: np.ndarray, n: int, c: int) -> None:
    want = min(c + 1, n)
    picked = np.empty(want, dtype=np.int32)
    for i in range(n):
        got = 0
        while got < want:  # `want` distinct nodes, uniformly (rejection: want << n or n small)
            j = np.random.randint(0, n)
            dup = False
            for k in range(got):
                if picked[k] == j:
                    dup = True
                    break
            if not dup:
                picked[got] = j
                got += 1
        m = 0
        for k in range(want):
            if picked[k] != i and m < c:
                ids[i, m] = picked[k]
                m += 1
        length[i] = m


@numba.njit(cache=True)
def find_entry(ids: np.ndarray, length: np.ndarray, p: int, node: int) -> int:
    for s in range(length[p]):
        if ids[p, s] == node:
            return s
    return -1


@numba.njit(cache=True)
def remove_slot(ids: np.ndarray, base: np.ndarray, length: np.ndarray, p: int, s: int) -> None:
    last = length[p] - 1
    ids[p, s] = ids[p, last]
    base[p, s] = base[p, last]
    ids[p, last] = -1
    length[p] = last


@numba.njit(cache=True)
def tomb_find(
    tomb_id: np.ndarray, tomb_t: np.ndarray, tick: int, p: int, node: int, ttl: int,
) -> int:  # fmt: skip
    """The slot of a tombstone for `node` still standing at `tick`, or -1."""
    limit = tick - tick % _EXPIRE_EVERY - ttl
    for s in range(tomb_id.shape[1]):
        if tomb_id[p, s] == node and tomb_t[p, s] >= limit:
            return s
    return -1


@numba.njit(cache=True)
def tomb_add(
    tomb_id: np.ndarray, tomb_t: np.ndarray, tick: int, p: int, node: int, ttl: int,
) -> None:  # fmt: skip
    limit = tick - tick % _EXPIRE_EVERY - ttl
    free = -1
    oldest = 0
    for s in range(tomb_id.shape[1]):
        if tomb_id[p, s] == node:
            tomb_t[p, s] = tick
            return
        if tomb_id[p, s] < 0 or tomb_t[p, s] < limit:
            if free < 0:
                free = s
        elif tomb_t[p, s] < tomb_t[p, oldest]:
            oldest = s
    s = free if free >= 0 else oldest
    tomb_id[p, s] = node
    tomb_t[p, s] = tick


@numba.njit(cache=True)
def strike(strike_id: np.ndarray, strike_n: np.ndarray, p: int, q: int, gone: bool) -> bool:
    """One more message of p's to q lost: whether q gets another chance (fewer than `_STRIKES`
    in a row, and not `gone` by other evidence); its count is forgotten when not."""
    slot = -1
    free = -1
    for s in range(strike_id.shape[1]):
        if strike_id[p, s] == q:
            slot = s
        elif strike_id[p, s] < 0 and free < 0:
            free = s
    strikes = (strike_n[p, slot] if slot >= 0 else 0) + 1
    if strikes >= _STRIKES or gone:
        if slot >= 0:
            strike_id[p, slot] = -1
        return False
    if slot < 0:
        slot = free if free >= 0 else 0
    strike_id[p, slot] = q
    strike_n[p, slot] = strikes
    return True


@numba.njit(cache=True)
def strike_pop(strike_id: np.ndarray, p: int, node: int) -> None:
    for s in range(strike_id.shape[1]):
        if strike_id[p, s] == node:
            strike_id[p, s] = -1


@numba.njit(cache=True)
def _sample_slots(
    ids: np.ndarray, length: np.ndarray, p: int, skip: int, k: int, slots: np.ndarray,
) -> int:  # fmt: skip
    """Put up to `k` distinct random slots of p's view (not holding `skip`) first in `slots`;
    return how many."""
    m = 0
    for s in range(length[p]):
        if ids[p, s] != skip:
            slots[m] = s
            m += 1
    k = min(k, m)
    for a in range(k):  # partial Fisher-Yates
        b = a + np.random.randint(0, m - a)
        t = slots[a]
        slots[a] = slots[b]
        slots[b] = t
    return k


@numba.njit(cache=True)
def _merge(
    state: ViewState,
    p: int,
    e_ids: np.ndarray,
    e_ages: np.ndarray,
    ne: int,
    sent: np.ndarray,
    nsent: int,
    c: int,
    redy: bool,
    ttl: int,
    scratch: np.ndarray,
) -> int:
    """`scratch`: int32[3, c + 1], room for the newcomers, their bases and the replaceable.
    Returns how many newcomers `scratch[0]` lists (some may not have found a slot)."""
    ids, base, length, tick, _, tomb_id, tomb_t, _, _ = state
    t = tick[p]
    fresh_ids = scratch[0]
    fresh_base = scratch[1]
    nf = 0
    for k in range(ne):
        node = e_ids[k]
        age = e_ages[k]
        if node == p or age < 0:
            continue
        if redy:
            s = tomb_find(tomb_id, tomb_t, t, p, node, ttl)
            if s >= 0:
                if age >= t - tomb_t[p, s]:
                    continue  # a stale copy from before the evidence: the node is gone
                tomb_id[p, s] = -1
        new_base = t - age
        s = find_entry(ids, length, p, node)
        if s >= 0:
            if new_base > base[p, s]:
                base[p, s] = new_base  # a duplicate: keep the younger copy
        else:
            fresh_ids[nf] = node
            fresh_base[nf] = new_base
            nf += 1
    replaceable = scratch[2]
    nr = 0
    for k in range(nsent):
        if find_entry(ids, length, p, sent[k]) >= 0:
            replaceable[nr] = sent[k]
            nr += 1
    for k in range(nf):
        node = fresh_ids[k]
        if find_entry(ids, length, p, node) >= 0:
            continue
        if length[p] >= c:
            if nr == 0:
                break
            nr -= 1
            remove_slot(ids, base, length, p, find_entry(ids, length, p, replaceable[nr]))
        s = length[p]
        ids[p, s] = node
        base[p, s] = fresh_base[k]
        length[p] = s + 1
    return nf


@numba.njit(cache=True)
def _dial(state: ViewState, p: int, fresh: np.ndarray, nf: int, ttl: int) -> None:
    """The `verify` detector: p dials each newcomer a merge let into its view (`fresh[:nf]`);
    a dead node's broker refuses, so it goes as `on_unreachable` has it."""
    ids, base, length, tick, alive, tomb_id, tomb_t, strike_id, _ = state
    for k in range(nf):
        node = fresh[k]
        if alive[node]:
            continue
        s = find_entry(ids, length, p, node)
        if s >= 0:
            remove_slot(ids, base, length, p, s)
            strike_pop(strike_id, p, node)
            tomb_add(tomb_id, tomb_t, tick[p], p, node, ttl)


@numba.njit(cache=True)
def _seed_from(state: ViewState, p: int, intro: int, ttl: int, verify: bool) -> None:
    """p merges the introducer's fresh entry and its view (a joining node reads the retained
    view)."""
    ids, base, length, tick = state[0], state[1], state[2], state[3]
    n = length[intro]
    e_ids = np.empty(n + 1, dtype=np.int32)
    e_ages = np.empty(n + 1, dtype=np.int32)
    e_ids[0] = intro
    e_ages[0] = 0
    for s in range(n):
        e_ids[s + 1] = ids[intro, s]
        e_ages[s + 1] = tick[intro] - base[intro, s]
    # Cyclon.seed: a merge with nothing sent. Only the redy detector has tombstone columns.
    c = ids.shape[1]
    scratch = np.empty((3, c + 1), dtype=np.int32)
    nf = _merge(state, p, e_ids, e_ages, n + 1, e_ids, 0, c, True, ttl, scratch)
    if verify:
        _dial(state, p, scratch[0], nf, ttl)


@numba.njit(cache=True)
def _on_timeout(state: ViewState, p: int, q: int, q_age: int, c: int, ttl: int) -> None:
    """The redy detector's answer to a lost message: three strikes before q is given up."""
    ids, base, length, tick, _, tomb_id, tomb_t, strike_id, strike_n = state
    gone = tomb_find(tomb_id, tomb_t, tick[p], p, q, ttl) >= 0
    if not strike(strike_id, strike_n, p, q, gone):
        return
    if find_entry(ids, length, p, q) < 0 and length[p] < c:
        s = length[p]
        ids[p, s] = q
        base[p, s] = tick[p] - q_age
        length[p] = s + 1


@numba.njit(cache=True)
def _cycle(
    state: ViewState,
    order: np.ndarray,
    loss: float,
    c: int,
    sl: int,
    redy: bool,
    verify: bool,
    ttl: int,
    introducer: int,
) -> None:  # fmt: skip
    """One cycle: every node of `order` (the live ones) initiates one shuffle, in random order."""
    ids, base, length, tick, alive, tomb_id, tomb_t, strike_id, _ = state
    np.random.shuffle(order)
    req_ids = np.empty(sl, dtype=np.int32)
    req_ages = np.empty(sl, dtype=np.int32)
    rep_ids = np.empty(c, dtype=np.int32)
    rep_ages = np.empty(c, dtype=np.int32)
    sent_p = np.empty(c, dtype=np.int32)
    sent_q = np.empty(c, dtype=np.int32)
    slots = np.empty(c, dtype=np.int32)
    scratch = np.empty((3, c + 1), dtype=np.int32)
    intro = introducer
    for p in order:
        if redy:
            # The state push to every neighbour's broker: a refused connection is evidence.
            s = 0
            while s < length[p]:
                j = ids[p, s]
                if not alive[j]:
                    remove_slot(ids, base, length, p, s)
                    strike_pop(strike_id, p, j)
                    tomb_add(tomb_id, tomb_t, tick[p], p, j, ttl)
                else:
                    s += 1
            if length[p] == 0:
                intro = introducer
                if not alive[intro]:
                    intro = order[np.random.randint(0, len(order))]
                if intro != p:
                    _seed_from(state, p, intro, ttl, verify)
        # -- tick: age all, remove the oldest (random among ties), build the request
        tick[p] += 1
        n = length[p]
        if n == 0:
            continue
        oldest = base[p, 0]
        qs = 0
        ties = 1
        for s in range(1, n):
            b = base[p, s]
            if b < oldest:
                oldest = b
                qs = s
                ties = 1
            elif b == oldest:
                ties += 1
                if np.random.randint(0, ties) == 0:
                    qs = s
        q = ids[p, qs]
        q_age = tick[p] - base[p, qs]
        remove_slot(ids, base, length, p, qs)
        k = _sample_slots(ids, length, p, -1, sl - 1, slots)
        for a in range(k):
            sent_p[a] = req_ids[a] = ids[p, slots[a]]
            req_ages[a] = tick[p] - base[p, slots[a]]
        req_ids[k] = p
        req_ages[k] = 0
        if not alive[q]:
            if redy:  # on_timeout, then on_unreachable: q out, its strikes gone, a tombstone
                strike_pop(strike_id, p, q)
                tomb_add(tomb_id, tomb_t, tick[p], p, q, ttl)
            continue
        if loss > 0.0 and np.random.random() < loss:
            if redy:
                _on_timeout(state, p, q, q_age, c, ttl)
            continue
        # -- q answers (on_request): lift a tombstone of p, SL random others, merge
        if redy:
            s = tomb_find(tomb_id, tomb_t, tick[q], q, p, ttl)
            if s >= 0:
                tomb_id[q, s] = -1
        m = _sample_slots(ids, length, q, p, sl, slots)
        for a in range(m):
            sent_q[a] = rep_ids[a] = ids[q, slots[a]]
            rep_ages[a] = tick[q] - base[q, slots[a]]
        nf = _merge(state, q, req_ids, req_ages, k + 1, sent_q, m, c, redy, ttl, scratch)
        if verify:
            _dial(state, q, scratch[0], nf, ttl)
        if loss > 0.0 and np.random.random() < loss:
            if redy:
                _on_timeout(state, p, q, q_age, c, ttl)
            continue
        # -- on_reply
        if redy:
            strike_pop(strike_id, p, q)
        nf = _merge(state, p, rep_ids, rep_ages, m, sent_p, k, c, redy, ttl, scratch)
        if verify:
            _dial(state, p, scratch[0], nf, ttl)


@numba.njit(cache=True)
def _in_degree(ids: np.ndarray, length: np.ndarray, live: np.ndarray, n: int) -> np.ndarray:
    counts = np.zeros(n, dtype=np.int64)
    for p in live:
        for s in range(length[p]):
            counts[ids[p, s]] += 1
    return counts


@numba.njit(cache=True)
def _dead_links(ids: np.ndarray, length: np.ndarray, alive: np.ndarray, live: np.ndarray) -> int:
    dead = 0
    for p in live:
        for s in range(length[p]):
            if not alive[ids[p, s]]:
                dead += 1
    return dead


@numba.njit(cache=True)
def _clustering(indptr: np.ndarray, indices: np.ndarray, sample: np.ndarray) -> float:
    """Sum over `sample` of the local clustering coefficient (links among neighbours / k(k-1))."""
    mark = np.zeros(len(indptr) - 1, dtype=np.bool_)
    acc = 0.0
    for u in sample:
        lo, hi = indptr[u], indptr[u + 1]
        k = hi - lo
        if k < 2:
            continue
        for a in range(lo, hi):
            mark[indices[a]] = True
        links = 0
        for a in range(lo, hi):
            v = indices[a]
            for b in range(indptr[v], indptr[v + 1]):
                if mark[indices[b]]:
                    links += 1
        for a in range(lo, hi):
            mark[indices[a]] = False
        acc += links / (k * (k - 1))
    return acc


@numba.njit(cache=True)
def _path_length(indptr: np.ndarray, indices: np.ndarray, sources: np.ndarray) -> float:
    """Mean hop count from each source to every node it reaches (breadth-first)."""
    n = len(indptr) - 1
    dist = np.full(n, -1, dtype=np.int32)
    queue = np.empty(n, dtype=np.int32)
    total = 0
    count = 0
    for src in sources:
        head, tail = 0, 1
        queue[0] = src
        dist[src] = 0
        while head < tail:
            u = queue[head]
            head += 1
            for a in range(indptr[u], indptr[u + 1]):
                v = indices[a]
                if dist[v] < 0:
                    dist[v] = dist[u] + 1
                    total += dist[v]
                    count += 1
                    queue[tail] = v
                    tail += 1
        for a in range(tail):
            dist[queue[a]] = -1
    return total / count if count else 0.0
