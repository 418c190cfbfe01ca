"""FastMarket, the fast engine's driver over the compiled overlay (redy.sim.array_balance)."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from redy.balancing.curves import (
    Bid,
    PriceGrid,
)
from redy.balancing.discovery import PriceSearch
from redy.errors import SimulationError
from redy.sim.array_balance.bids import (
    BidTable,
    crossing_kernel,
    curves_kernel,
    own_limits,
    settle_kernel,
)
from redy.sim.array_balance.common import NO_TURN, NONE
from redy.sim.array_balance.flow import (
    acting_kernel,
    distinct_columns,
    flow_exact,
    heard_kernel,
    link_rows,
    pull_blocks,
    pull_orders,
    pull_rounds,
    rows_kernel,
    sweep_blocks,
)
from redy.sim.array_balance.phases import draw_seed, end_phase
from redy.sim.array_balance.pushsum import pushsum_kernel
from redy.sim.array_cyclon import (
    ArrayOverlay,
    find_entry,
    seed_rng,
)

STATUS_NAMES = ("none", "cleared", "shortage", "surplus")


# Above this, the per-link state of `flow_exact` is refused with a clear error.
_EXACT_FLOW_LIMIT_BYTES = 4 * 1024**3


# Columns either side of the true crossing that push-sum gossips first (FastMarket._band),
# and above it that Flow Updating gossips first (with every column below).
_BAND = 6


_FLOW_ABOVE = 12


# Flow Updating's columns per block at least (`pull_blocks`): a block replays every link of
# every round, which a narrow block does not repay.
_MIN_BLOCK = 32


class FastMarket:
    """The overlay and every node's market state for `simulate_balance(engine="fast")`."""

    # Flow Updating with a flow per link in every phase, not only where loss or a crash needs
    # it (tests hold the two kernels together).
    per_link_flows = False
    # Push-sum on a band of columns first (`_band`); off: always on the whole grid (tests).
    push_sum_band = True
    # Flow Updating gossips each run of equal grid columns once (`distinct_columns`), and,
    # without per-link state, splits the columns into this many blocks, one per core
    # (`pull_blocks`). Off and 1: every column, all at once (tests hold them together).
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
        own_limits(search.floor_eur_mwh, search.cap_eur_mwh, own_cap, own_floor, *arrays)
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
            seed = draw_seed()
            saved = self._save() if len(tries) > 1 and (dead or not alive[: self.n].all()) else None
            start_order = order
            for attempt, cols in enumerate(tries):
                if attempt:
                    order = start_order
                    if saved is not None:
                        self._restore(saved)
                seed_rng(seed)
                values = rows_kernel(self._a, len(cols))
                curves_kernel(values, order, prices, cols, *arrays)
                gossiped, spread = values, None
                if algorithm != "pushsum" and self.flow_distinct_columns:
                    gossiped, spread = distinct_columns(values, order)
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
                if last_try or end_phase(*ends, *rest, *out, False) == 0:
                    end_phase(*ends, *rest, *out, True)
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
        cross = crossing_kernel(prices, *arrays)
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
        e = rows_kernel(self._e, width)
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
            flows = rows_kernel(self._b, width)
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
            return int(
                pushsum_kernel(state["s"], self._w, order, done, alive, view, ttl, rounds, loss)
            )
        if "flow" in state:
            return int(
                flow_exact(
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
        orders = pull_orders(order, rounds)
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
            sent, state["clock"] = pull_blocks(*pull, block)
        else:
            sent, state["clock"] = pull_rounds(*pull, True)
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
        from whom in a round is known from the order (`heard_kernel`), then every block of columns
        runs the round with it (`sweep_blocks`); each column its own arithmetic, as ever."""
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
        turns[:, 0], turns[:, 1] = NO_TURN, -1
        clock, sent = state["clock"], 0
        who = orders[0][~done[orders[0]]]  # the nodes that act: the same in every round
        for order in orders:
            acting = acting_kernel(order, done, last, rank, turns)
            heard_kernel(rank, turns, indptr, idx, gone, heard, m, degree)
            sweep_blocks(g3, e3, v3, order, done, indptr, heard, m, degree, self.flow_prefetch)
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
            rows = link_rows(o.ids, o.length, o.alive, live.astype(np.int64), self.n)
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
        found = nodes[self.status[nodes] != NONE]
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
        result: tuple[np.ndarray, np.ndarray] = settle_kernel(
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
