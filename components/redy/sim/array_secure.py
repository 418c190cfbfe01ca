"""The signed shuffle of redy.membership.secure over arrays, compiled: `redy sim membership
--secure --engine fast` (issue 26), for 10^5 nodes as redy.sim.array_cyclon does the plain one.

Every rule of `SecureCyclon` is here, event for event and in the order of the core-driven
simulator (redy.sim.membership.SecureShuffleNet.cycle): descriptors issued one per period and
handed on as chains (a handed-on entry kept only as a terminal copy), contacts of the entry
held longest with a token (the target's own descriptor, redeemed once), untokened first contacts (only the sender's descriptor,
one entry back, SL a period per receiver), at most SL tokened answers a period, answers no
longer than requests, every entry checked (a forged, dead or worn-out one convicts the sender),
forks of remembered chains convicting the forker, verdicts spread with the messages for
`news_periods`, min-wise samplers fed by what is merged and by the partners' view digests, a
probe of a sampled node one period in `probe_every` and whenever starved, tombstones and
strikes as in the core. Each node's view is one row of `c` slots: owner (`ids`, so the plain
engine's metrics read it unchanged), period of issue (`base`, the core's `born`), the chain's
length and last hop, a terminal flag, the period the copy came in (`since`), and with members
the chain itself (owner first, at most
`max_chain` ids): without members no check can fail on the hops in between, so only those
lengths and ends are kept and carried (the messages carry the owner, the sender and the
receiver, which every check reads).

Speed: the kernels run without numba's reference counting (they only index arrays that their
caller holds): at 100,000 nodes the counting of every field read cost as much as the shuffle;
and the per-node kernels are compiled into the cycle's loop (`_inlined`): each call passing the
whole state cost more than most of them do. What remains is memory traffic: per exchange the signed shuffle reads both views whole (the
digests), their chain lengths, ends and flags, the samplers, the redeemed ring and the answer
counts, about twice the cache lines of the plain shuffle (bench/coalition.py --fast measures
the ratio).

The coalition is redy.sim.coalition's, the same Python object the core engine drives: the
compiled loop returns to Python on a member's turn and on an honest request to a member, and the
descriptors cross as `Descriptor` tuples. With 30 % members at 10,000 nodes that costs a few
thousand crossings a period, nothing without members.

Where the arrays differ from the core, in memory only, never in a rule an honest node keeps:

- **Remembered chains.** The core remembers every chain it held or saw in a digest for
  `max_age` periods (hundreds per node). Only a member can fork (an honest node hands each
  descriptor on once, so two honest chains of one descriptor are one the prefix of the other),
  so the arrays remember only chains through a member: no verdict changes as long as members do
  not hand on honest nodes' descriptors as entries (no strategy of redy.sim.coalition does; they
  only present them as tokens, which the redeemed ring checks). They hold at most
  `_SEEN_BUCKETS x _SEEN_WAYS` chains per node, set-associative; a full bucket forgets its
  oldest, so a fork of a long-forgotten copy can go unseen where the core would see it.
- **Redeemed tokens** are a ring of `max_age + 3` periods (every period a token can be alive in),
  with chains only when members exist (without them no fork is possible).
- **Convictions** are a (node, member) table: only members can be convicted (a verdict naming an
  honest node is counted in `honest_verdicts` and has no effect; none is expected, and the test
  checks it). A node's news are the convictions it learnt in the last `news_periods` periods.
- **Tombstones and strikes** are bounded as in the plain engine; tombstones expire as the core
  sweeps them (older than `max_age + 1` periods, every 8 periods).
- **Samplers** rank nodes by a 64-bit keyed hash of its own (the core's is arbitrary precision):
  another hash, the same role; the random streams are numba's, so runs match the core's in
  distribution, not draw for draw (tests/sim/test_array_secure.py holds them together).
- **First contacts** carry only the sender's descriptor here: the core also checks anything else
  one carries (a fork there convicts), but no honest node and no member of redy.sim.coalition
  sends more.
- **Dialling** (`verify`) of what a seed admits happens at once, as the plain fast engine does;
  the core dials a joining node's seed at its next exchange.
"""

from __future__ import annotations

import inspect
import random
from collections.abc import Callable
from typing import Any, NamedTuple, TypeVar, cast

import numba
import numpy as np

from redy.membership.secure import Descriptor, SecureCyclon, SecureOut
from redy.sim.array_cyclon import (
    ArrayOverlay,
    find_entry,
    random_bootstrap,
    strike,
    strike_pop,
    tomb_add,
    tomb_find,
)
from redy.sim.coalition import Coalition, sim_uri

_SEEN_BUCKETS = 16
_SEEN_WAYS = 8
_NONE = -(2**31)  # no node (fork_point's None)
_MSG_CHAIN = 16  # a message entry's chain room: members never hand on longer ones
_EMPTY_RANK = np.uint64(2**64 - 1)
# Columns of SecureState.stats: verdicts naming an honest node (none expected), then verdicts by
# how the node came to them.
_LEARNT, _BAD_TOKEN, _BAD_ENTRY, _FORK, _TOKEN_FORK = 1, 2, 3, 4, 5
VERDICT_KINDS = ("honest_named", "learnt", "bad_token", "bad_entry", "fork", "token_fork")
_DEFAULTS = inspect.signature(SecureCyclon.__init__).parameters
Arr = np.ndarray  # the kernels' arrays (numba compiles them for the arrays passed)


class SecureState(NamedTuple):
    """Every array the kernels read and write (rows are nodes)."""

    ids: np.ndarray  # (n, c) int32 owners, -1 empty
    born: np.ndarray  # (n, c) int32 the owner's period of issue
    length: np.ndarray  # (n,) int32
    alive: np.ndarray  # (n,) bool
    tomb_id: np.ndarray
    tomb_t: np.ndarray
    strike_id: np.ndarray
    strike_n: np.ndarray
    chain: np.ndarray  # (n or 1, c, max_chain) int32, owner first, the holder last (members)
    clen: np.ndarray  # (n, c) int32
    term: np.ndarray  # (n, c) bool: handed on (or seeded): never handed on again
    last: np.ndarray  # (n, c) int32: the chain's last hop (the holder, but for seeded copies)
    red_born: np.ndarray  # (n, max_age + 3) int32: own descriptors redeemed, by born mod ring
    red_chain: np.ndarray  # (n or 1, ring, max_chain + 1) int32 (only with members)
    red_len: np.ndarray
    counts: np.ndarray  # (n, 4) int32: untokened (period, count), tokened (period, count)
    s_seed: np.ndarray  # (n, samplers) uint64
    s_rank: np.ndarray  # (n, samplers) uint64
    s_id: np.ndarray  # (n, samplers) int32, -1 empty
    s_next: np.ndarray  # (n,) int32
    phase: np.ndarray  # (n,) int32: the period mod probe_every of its probe
    conv_t: np.ndarray  # (n, members or 1) int32: period the node learnt the member's guilt
    last_learnt: np.ndarray  # (n,) int32
    midx: np.ndarray  # (n,) int32: member index or -1
    members: np.ndarray  # (members or 1,) int32
    seen_owner: np.ndarray  # (n or 1, buckets x ways) int32
    seen_born: np.ndarray
    seen_len: np.ndarray
    seen_chain: np.ndarray  # (n or 1, buckets x ways, max_chain) int32
    stats: np.ndarray  # int64[VERDICT_KINDS]: verdicts by kind
    seed_fresh: np.ndarray  # scratch of _seed: (c,) int32
    seed_row: np.ndarray  # (max_chain,) int32
    issued: np.ndarray  # scratch of the bootstrap: (n,) int32
    intro: np.ndarray  # (n,) int32: the node's own introducer (-1: the overlay's)
    since: np.ndarray  # (n, c) int32: the period the copy held came in (_NONE: long ago)


class Params(NamedTuple):
    c: int
    sl: int
    max_age: int
    max_chain: int
    news: int
    probe_every: int
    redy: bool
    verify: bool
    coalition: bool
    ttl: int


class Msg(NamedTuple):
    """Entries of one message: owner, born, chain length, chain, signatures verify."""

    owner: np.ndarray
    born: np.ndarray
    clen: np.ndarray
    chain: np.ndarray
    valid: np.ndarray


class Bufs(NamedTuple):
    req: Msg
    rep: Msg
    tok: Msg  # the target's descriptor (the token when tokened)
    sent_p: np.ndarray
    sent_q: np.ndarray
    idx: np.ndarray
    fresh: np.ndarray
    pend: np.ndarray  # (q, mode, entries, sent) of a request to a member


def _msg(rows: int) -> Msg:
    return Msg(
        np.zeros(rows, np.int32),
        np.zeros(rows, np.int32),
        np.zeros(rows, np.int32),
        np.zeros((rows, _MSG_CHAIN), np.int32),
        np.ones(rows, np.bool_),
    )


class SecureArrayOverlay(ArrayOverlay):
    """The overlay of the signed shuffle, with redy.sim.coalition's members when `evil` is
    given (their rows keep their bootstrap views, as the core's member nodes do)."""

    def __init__(
        self,
        capacity: int,
        nodes: int,
        c: int,
        sl: int,
        detector: str,
        seed: int,
        evil: frozenset[int] = frozenset(),
        strategy: str = "mix",
    ) -> None:
        super().__init__(capacity, nodes, c, sl, detector, seed)
        proto = SecureCyclon(0, "", c, sl, random.Random(0), detector=detector)
        mc = proto.max_chain
        ring = proto.max_age + 3
        samplers = int(_DEFAULTS["samplers"].default)
        self.period = 0
        members = sorted(evil)
        m = max(1, len(members))
        rows = capacity if members else 1
        midx = np.full(capacity, -1, np.int32)
        midx[members] = np.arange(len(members), dtype=np.int32)
        nrng = np.random.default_rng(seed)
        tombs = self.tomb_id.shape[1]
        self.st = SecureState(
            self.ids,
            self.base,
            self.length,
            self.alive,
            self.tomb_id if tombs else np.full((capacity, 1), -1, np.int32),
            self.tomb_t if tombs else np.zeros((capacity, 1), np.int32),
            self.strike_id if tombs else np.full((capacity, 1), -1, np.int32),
            self.strike_n if tombs else np.zeros((capacity, 1), np.int32),
            np.full((rows, c, mc), -1, np.int32),
            np.zeros((capacity, c), np.int8),
            np.zeros((capacity, c), np.bool_),
            np.full((capacity, c), -1, np.int32),
            np.full((capacity, ring), _NONE, np.int32),
            np.full((rows, ring, mc + 1), -1, np.int32),
            np.zeros((rows, ring), np.int32),
            np.full((capacity, 4), -1, np.int32),
            nrng.integers(1, 2**62, size=(capacity, samplers), dtype=np.uint64) | np.uint64(1),
            np.full((capacity, samplers), _EMPTY_RANK, np.uint64),
            np.full((capacity, samplers), -1, np.int32),
            np.zeros(capacity, np.int32),
            nrng.integers(0, max(1, proto.probe_every), size=capacity, dtype=np.int32),
            np.full((capacity if members else 1, m), -1, np.int32),
            np.full(capacity, _NONE, np.int32),
            midx,
            np.asarray(members or [-1], np.int32),
            np.full((rows, _SEEN_BUCKETS * _SEEN_WAYS), -1, np.int32),
            np.zeros((rows, _SEEN_BUCKETS * _SEEN_WAYS), np.int32),
            np.zeros((rows, _SEEN_BUCKETS * _SEEN_WAYS), np.int32),
            np.full((rows, _SEEN_BUCKETS * _SEEN_WAYS, mc), -1, np.int32),
            np.zeros(len(VERDICT_KINDS), np.int64),
            np.zeros(c, np.int32),
            np.zeros(mc, np.int32),
            np.zeros(capacity, np.int32),
            np.full(capacity, -1, np.int32),
            np.full((capacity, c), _NONE, np.int32),
        )
        self.prm = Params(
            c,
            sl,
            proto.max_age,
            mc,
            proto.news_periods,
            proto.probe_every,
            self.redy,
            self.verify,
            bool(members),
            proto.max_age + 1,
        )
        room = max(c, sl) + 2
        self.bufs = Bufs(
            _msg(room),
            _msg(room),
            _msg(1),
            np.zeros(room, np.int32),
            np.zeros(room, np.int32),
            np.zeros(room, np.int32),
            np.zeros(room, np.int32),
            np.zeros(4, np.int32),
        )
        self.evil = frozenset(evil)
        self.coalition: Coalition | None = None
        if members:
            arng = random.Random(seed + 7)
            self.coalition = Coalition(self.evil, strategy, sl, proto.max_age, mc, arng)

    @property
    def honest_verdicts(self) -> int:
        """Verdicts that named an honest node (none expected: see the module doc)."""
        return int(self.st.stats[0])

    # -- set-up and churn ----------------------------------------------------------------------

    def bootstrap(self, kind: str) -> None:
        """As SecureShuffleNet.bootstrap: `random` and `ring` views of descriptors each handed
        to its holder (each owner's copies of distinct periods); `star`: node 0 to contact."""
        n, c = self.n, self.c
        if kind == "ring":
            k = min(c, n - 1)
            self.ids[:n, :k] = (np.arange(n)[:, None] + np.arange(1, k + 1)[None, :]) % n
            self.length[:n] = k
        elif kind == "star":
            self.ids[1:n, 0] = 0
            self.length[1:n] = 1
        else:
            random_bootstrap(self.ids, self.length, n, c)
        _issue_bootstrap(self.st, self.prm, n, kind == "star")
        if self.coalition is not None:
            for m in self.coalition.members:
                self.coalition.absorb(self._row(m))

    def join(self, count: int, rng: random.Random) -> None:
        self.introducer = rng.choice(self.live().tolist())
        for j in self.add(count):
            self.st.intro[j] = self.introducer
            _seed(self.st, self.prm, int(j), self.introducer, self.period, True)

    def revive(self, node: int, introducer: int) -> None:
        """A restarted process: a new core (nothing remembered), seeded as a joining one."""
        _reset(self.st, node)
        self.alive[node] = True
        self.st.intro[node] = introducer
        if introducer != node and self.alive[introducer]:
            _seed(self.st, self.prm, node, introducer, self.period, True)

    # -- the cycle ------------------------------------------------------------------------------

    def cycle(self, loss: float) -> None:
        self.period += 1
        period = self.period
        order = self.live()
        _shuffle(order)
        st, prm, bufs = self.st, self.prm, self.bufs
        pos = 0
        while True:
            pos, code = _run(st, prm, bufs, order, pos, period, loss, self.introducer)
            if code == 0:
                break
            if code == 1:
                self._member_acts(int(order[pos]), period)
            else:
                self._member_answers(int(order[pos]), period, loss)
            pos += 1
        if self.coalition is not None:
            self._measure(period)

    def _member_acts(self, member: int, period: int) -> None:
        coalition = self.coalition
        assert coalition is not None
        st, prm, b = self.st, self.prm, self.bufs
        for to, out in coalition.requests_of(member, period, self.alive):
            tokened = out.token is not None
            if out.token is not None:
                _write(b.tok, [out.token])
            n = _write(b.req, out.entries)
            got = _answer(st, prm, b, to, member, False, period, tokened, n)
            if got < 0:
                coalition.refused += 1
                if out.token is not None and st.conv_t[to, st.midx[member]] < 0:
                    coalition.give_back(out.token)
                continue
            coalition.absorb(_read(b.rep, got))

    def _member_answers(self, node: int, period: int, loss: float) -> None:
        coalition = self.coalition
        assert coalition is not None
        b = self.bufs
        q, mode, n, nsent = (int(x) for x in b.pend)
        entries = tuple(_read(b.req, n))
        target = _read(b.tok, 1)[0]
        out = SecureOut(target, target if mode == 1 else None, 0, entries)
        reply = coalition.reply(q, node, out, period)
        got = _write(b.rep, reply)
        _conclude(self.st, self.prm, b, node, q, False, period, loss, mode, got, nsent)

    # -- figures --------------------------------------------------------------------------------

    def _row(self, i: int) -> list[Descriptor]:
        st = self.st
        return [
            Descriptor(
                int(st.ids[i, s]),
                sim_uri(int(st.ids[i, s])),
                int(st.born[i, s]),
                tuple(int(x) for x in st.chain[i, s, : st.clen[i, s]]),
            )
            for s in range(int(st.length[i]))
        ]

    def _honest_live(self) -> np.ndarray:
        live = self.live()
        return np.asarray(live[self.st.midx[live] < 0])

    def _measure(self, period: int) -> None:
        coalition = self.coalition
        assert coalition is not None
        honest = self._honest_live()
        ids, length = self.ids[honest], self.length[honest]
        held = np.arange(self.c)[None, :] < length[:, None]
        hostile = held & ((ids < 0) | (self.st.midx[np.maximum(ids, 0)] >= 0))
        full = length > 0
        coalition.record_shares(hostile[full].sum(axis=1) / length[full])
        if period % 5 == 0:
            coalition.record_known(self._convicted_counts(honest), len(honest), period)

    def _convicted_counts(self, honest: np.ndarray) -> dict[int, int]:
        counts = (self.st.conv_t[honest] >= 0).sum(axis=0)
        return {int(m): int(k) for m, k in zip(self.st.members, counts, strict=True) if k}

    def coalition_report(self) -> dict[str, Any]:
        coalition = self.coalition
        assert coalition is not None
        live = self.live()
        honest = self._honest_live()
        views = [self.ids[i, : self.length[i]].tolist() for i in range(self.n)]
        convicted = set(self._convicted_counts(honest))
        report = coalition.report(views, convicted, live.tolist())
        report["honest_verdicts"] = self.honest_verdicts
        return report


def _write(msg: Msg, entries: Any) -> int:
    """Put `entries` (Descriptors) into `msg`; how many fit (members send at most SL)."""
    n = min(len(entries), len(msg.owner))
    for k in range(n):
        d = entries[k]
        chain = d.chain if len(d.chain) <= _MSG_CHAIN else (*d.chain[: _MSG_CHAIN - 1], d.chain[-1])
        msg.owner[k] = d.owner
        msg.born[k] = d.born
        msg.clen[k] = len(chain)
        msg.chain[k, : len(chain)] = chain
        msg.valid[k] = d.valid
    return n


def _read(msg: Msg, n: int) -> list[Descriptor]:
    return [
        Descriptor(
            int(msg.owner[k]),
            sim_uri(int(msg.owner[k])),
            int(msg.born[k]),
            tuple(int(x) for x in msg.chain[k, : msg.clen[k]]),
            bool(msg.valid[k]),
        )
        for k in range(n)
    ]


# -- compiled kernels ------------------------------------------------------------------------------

# No reference counting in the kernels: they only index arrays their caller holds (scratch
# included), and counting the references taken at every field read cost more than the shuffle.
_NO_REFCOUNT: dict[str, Any] = {"_nrt": False}  # numba's own flag (not in its typed signature)
_F = TypeVar("_F", bound=Callable[..., Any])


def _kernel(fn: _F) -> _F:
    return cast(_F, numba.njit(cache=True, **_NO_REFCOUNT)(fn))


def _inlined(fn: _F) -> _F:
    """A kernel compiled into its callers: a call passing the whole state costs more than
    the small helpers' work."""
    return cast(_F, numba.njit(cache=True, inline="always", **_NO_REFCOUNT)(fn))


# Every read of a field of SecureState takes a reference on its array (an atomic increment): the
# per-node kernels take the fields they use once, at the top, and the per-entry helpers take
# plain arrays.


@_kernel
def _shuffle(order: np.ndarray) -> None:
    np.random.shuffle(order)


@_kernel
def _issue_bootstrap(st: SecureState, prm: Params, n: int, star: bool) -> None:
    """Every bootstrap entry (i -> j) becomes j's descriptor of a distinct period before 0,
    handed to i; with `star`, a terminal copy to contact only."""
    ids, born, length, chain, clen, term = st.ids, st.born, st.length, st.chain, st.clen, st.term
    hop = st.last
    issued = st.issued
    for i in range(n):
        for s in range(length[i]):
            j = ids[i, s]
            issued[j] += 1
            born[i, s] = -issued[j]
            clen[i, s] = 2
            hop[i, s] = i
            term[i, s] = star
            if prm.coalition:
                chain[i, s, 0] = j
                chain[i, s, 1] = i
                _remember(st, prm, i, j, -issued[j], chain[i, s], 2, 0)


@_kernel
def _reset(st: SecureState, p: int) -> None:
    st.ids[p] = -1
    st.length[p] = 0
    st.term[p] = False
    st.tomb_id[p] = -1
    st.strike_id[p] = -1
    st.red_born[p] = _NONE
    st.counts[p] = -1
    st.s_id[p] = -1
    st.s_rank[p] = _EMPTY_RANK
    if st.conv_t.shape[0] > p:
        st.conv_t[p] = -1
        st.seen_owner[p] = -1
    st.last_learnt[p] = _NONE


@_kernel
def _remove(
    ids: Arr, born: Arr, length: Arr, chain: Arr, clen: Arr, term: Arr, hop: Arr, since: Arr,
    p: int, s: int, full: bool,
) -> None:  # fmt: skip
    """Slot s of p's row leaves (the last slot takes its place); `full`: chains are kept."""
    last = length[p] - 1
    if s != last:
        ids[p, s] = ids[p, last]
        born[p, s] = born[p, last]
        since[p, s] = since[p, last]
        clen[p, s] = clen[p, last]
        term[p, s] = term[p, last]
        hop[p, s] = hop[p, last]
        if full:
            for k in range(clen[p, s]):
                chain[p, s, k] = chain[p, last, k]
    ids[p, last] = -1
    term[p, last] = False
    length[p] = last


@_kernel
def _put(
    ids: Arr, born: Arr, length: Arr, chain: Arr, clen: Arr, term: Arr, hop: Arr, since: Arr,
    prm: Params, p: int, owner: int, b: int, src: Arr, n: int, terminal: bool, t: int,
) -> None:  # fmt: skip
    """A new last slot of p's row, come in at `t`: `src[:n]` the chain (only its last hop
    without members)."""
    s = length[p]
    ids[p, s] = owner
    born[p, s] = b
    since[p, s] = t
    clen[p, s] = n
    hop[p, s] = src[n - 1]
    if prm.coalition:
        for k in range(n):
            chain[p, s, k] = src[k]
    term[p, s] = terminal or n >= prm.max_chain
    length[p] = s + 1


@_kernel
def _convicted(conv_t: Arr, midx: Arr, p: int, node: int) -> bool:
    """Whether p has convicted `node` (only members can be: module doc)."""
    if node < 0 or node >= len(midx):
        return False
    m = midx[node]
    return bool(m >= 0 and conv_t[p, m] >= 0)


@_kernel
def _chain_convicted(conv_t: Arr, midx: Arr, p: int, chain: Arr, n: int) -> bool:
    for k in range(n):
        x = chain[k]
        if _convicted(conv_t, midx, p, x):
            return True
    return False


@_kernel
def _through_member(midx: Arr, chain: Arr, n: int) -> bool:
    for k in range(n):
        x = chain[k]
        if 0 <= x < len(midx) and midx[x] >= 0:
            return True
    return False


@_kernel
def _convict(st: SecureState, prm: Params, p: int, culprit: int, period: int, reason: int) -> None:
    """SecureCyclon._convict: the culprit's entries, and every entry through it, leave.
    `reason` (a column of `stats`): _LEARNT, _BAD_TOKEN, _BAD_ENTRY, _FORK, _TOKEN_FORK."""
    if culprit < 0 or culprit >= len(st.midx) or st.midx[culprit] < 0:
        st.stats[0] += 1
        return
    m = st.midx[culprit]
    if st.conv_t[p, m] >= 0 or culprit == p:
        return
    st.stats[reason] += 1
    st.conv_t[p, m] = period
    st.last_learnt[p] = period
    _unsample(st.s_id, st.s_rank, p, culprit)
    ids, born, length, chain, clen, term = st.ids, st.born, st.length, st.chain, st.clen, st.term
    hop = st.last
    s = 0
    while s < length[p]:  # with members, chains are kept
        through = False
        for k in range(clen[p, s]):
            if chain[p, s, k] == culprit:
                through = True
                break
        if through:
            _remove(ids, born, length, chain, clen, term, hop, st.since, p, s, prm.coalition)
        else:
            s += 1


@_inlined
def _learn(st: SecureState, prm: Params, p: int, q: int, period: int) -> None:
    """p learns the convictions q carries (those q learnt in the last news periods)."""
    if not prm.coalition or st.last_learnt[q] < period - prm.news:
        return
    limit = max(0, period - prm.news)  # -1: not convicted
    conv_t, members = st.conv_t, st.members
    for m in range(len(members)):
        if conv_t[q, m] >= limit and conv_t[p, m] < 0:
            _convict(st, prm, p, members[m], period, _LEARNT)


# -- samplers


@_kernel
def _rank(seed: np.uint64, node: int) -> np.uint64:
    x = (np.uint64(node) ^ seed) * np.uint64(0xBF58476D1CE4E5B9)
    return x ^ (x >> np.uint64(31))


@_kernel
def _saw(s_seed: Arr, s_rank: Arr, s_id: Arr, p: int, owner: int) -> None:
    """A node seen named feeds p's samplers (the caller leaves out p and the convicted)."""
    for i in range(s_seed.shape[1]):
        h = _rank(s_seed[p, i], owner)
        if s_id[p, i] < 0 or h < s_rank[p, i]:
            s_rank[p, i] = h
            s_id[p, i] = owner


@_kernel
def _unsample(s_id: Arr, s_rank: Arr, p: int, node: int) -> None:
    for i in range(s_id.shape[1]):
        if s_id[p, i] == node:
            s_id[p, i] = -1
            s_rank[p, i] = _EMPTY_RANK


@_inlined
def _sample(st: SecureState, prm: Params, p: int, period: int) -> int:
    """SecureCyclon.sample: the next sampled node outside the view, or -1."""
    s_id, ids, length = st.s_id, st.ids, st.length
    conv_t, midx, tomb_id, tomb_t = st.conv_t, st.midx, st.tomb_id, st.tomb_t
    n = s_id.shape[1]
    start = st.s_next[p]
    for k in range(n):
        o = s_id[p, (start + k) % n]
        if o < 0 or find_entry(ids, length, p, o) >= 0 or _convicted(conv_t, midx, p, o):
            continue
        if prm.redy and tomb_find(tomb_id, tomb_t, period, p, o, prm.ttl) >= 0:
            continue
        st.s_next[p] = (start + k + 1) % n
        return int(o)
    return -1


# -- remembered chains and forks


@_kernel
def _fork_point(a: Arr, na: int, b: Arr, nb: int) -> int:
    for k in range(min(na, nb)):
        if a[k] != b[k]:
            return int(a[k - 1]) if k else _NONE
    return _NONE


@_kernel
def _remember(
    st: SecureState, prm: Params, p: int, owner: int, born: int, chain: Arr, n: int,
    period: int,
) -> bool:  # fmt: skip
    """SecureCyclon._remember for chains through a member (module doc); False: a fork, whose
    culprit is convicted."""
    if not prm.coalition or not _through_member(st.midx, chain, n):
        return True
    seen_owner, seen_born, seen_len, seen_chain = (
        st.seen_owner, st.seen_born, st.seen_len, st.seen_chain
    )  # fmt: skip
    lo = ((owner * 31 + born) % _SEEN_BUCKETS + _SEEN_BUCKETS) % _SEEN_BUCKETS * _SEEN_WAYS
    spare = -1
    oldest = lo
    stale = period - prm.max_age - 1
    for s in range(lo, lo + _SEEN_WAYS):
        if seen_owner[p, s] == owner and seen_born[p, s] == born:
            culprit = _fork_point(seen_chain[p, s], seen_len[p, s], chain, n)
            if culprit != _NONE:
                _convict(st, prm, p, culprit, period, _FORK)
                return False
            if n > seen_len[p, s]:
                seen_len[p, s] = n
                for k in range(n):
                    seen_chain[p, s, k] = chain[k]
            return True
        if spare < 0 and (seen_owner[p, s] < 0 or seen_born[p, s] < stale):
            spare = s
        if seen_born[p, s] < seen_born[p, oldest]:
            oldest = s
    s = spare if spare >= 0 else oldest
    seen_owner[p, s] = owner
    seen_born[p, s] = born
    seen_len[p, s] = n
    for k in range(n):
        seen_chain[p, s, k] = chain[k]
    return True


@_inlined
def _observe(st: SecureState, prm: Params, p: int, q: int, period: int) -> None:
    """p reads q's view digest (q's rows as they stand now)."""
    ids, born, length, chain, clen, hop = st.ids, st.born, st.length, st.chain, st.clen, st.last
    s_seed, s_rank, s_id, conv_t, midx = st.s_seed, st.s_rank, st.s_id, st.conv_t, st.midx
    limit = period - prm.max_age
    for s in range(length[q]):
        if born[q, s] < limit or hop[q, s] != q:
            continue
        o = ids[q, s]
        if prm.coalition and not _remember(st, prm, p, o, born[q, s], chain[q, s], clen[q, s],
                                           period):  # fmt: skip
            continue
        if o != p and not (prm.coalition and _convicted(conv_t, midx, p, o)):
            _saw(s_seed, s_rank, s_id, p, o)


# -- tokens


@_inlined
def _token_ok(st: SecureState, prm: Params, q: int, sender: int, tok: Msg, period: int) -> bool:
    n = tok.clen[0]
    if (
        tok.owner[0] != q
        or not tok.valid[0]
        or n < 2
        or tok.chain[0, 0] != q
        or tok.chain[0, n - 1] != sender
        or tok.born[0] > period + 1
        or tok.born[0] < period - prm.max_age - 1
    ):
        _convict(st, prm, q, sender, period, _BAD_TOKEN)  # not one of ours, or a dead one
        return False
    return True


@_inlined
def _redeem(st: SecureState, prm: Params, q: int, tok: Msg, period: int) -> bool:
    red_born = st.red_born
    ring = red_born.shape[1]
    born = tok.born[0]
    w = (born % ring + ring) % ring
    n = tok.clen[0]
    if red_born[q, w] == born:
        if prm.coalition:
            m = min(st.red_len[q, w], st.red_chain.shape[2])
            culprit = _fork_point(st.red_chain[q, w], m, tok.chain[0], n)
            if culprit != _NONE:
                _convict(st, prm, q, culprit, period, _TOKEN_FORK)
        return False
    red_born[q, w] = born
    if prm.coalition:
        m = min(n, st.red_chain.shape[2])
        st.red_len[q, w] = m
        for k in range(m):
            st.red_chain[q, w, k] = tok.chain[0, k]
    return True


# -- what arrives


@_inlined
def _admissible(
    st: SecureState, prm: Params, p: int, sender: int, msg: Msg, idx: Arr, n: int, period: int,
) -> int:  # fmt: skip
    """SecureCyclon._admissible over `msg[idx[:n]]`: how many remain first in `idx`; -1 when a
    malformed entry (or a fork) poisons the message."""
    m_owner, m_born, m_clen, m_chain, m_valid = msg.owner, msg.born, msg.clen, msg.chain, msg.valid
    tomb_id, tomb_t, conv_t, midx = st.tomb_id, st.tomb_t, st.conv_t, st.midx
    s_seed, s_rank, s_id = st.s_seed, st.s_rank, st.s_id
    got = 0
    for a in range(n):
        k = idx[a]
        cl = m_clen[k]
        born = m_born[k]
        owner = m_owner[k]
        if (
            not m_valid[k]
            or cl < 2
            or m_chain[k, 0] != owner
            or m_chain[k, cl - 1] != p
            or m_chain[k, cl - 2] != sender
            or born > period + 1
            or born < period - prm.max_age - 1
            or cl > prm.max_chain
        ):
            _convict(st, prm, p, sender, period, _BAD_ENTRY)  # forged, dead or worn out
            return -1
        if owner == p:
            continue
        dup = False
        for b in range(got):
            if m_owner[idx[b]] == owner:
                dup = True
                break
        if dup or (prm.coalition and _chain_convicted(conv_t, midx, p, m_chain[k], cl)):
            continue
        if prm.coalition and not _remember(st, prm, p, owner, born, m_chain[k], cl, period):
            return -1  # forks first, as the core: a copy of a node lost still proves
        if prm.redy:
            t = tomb_find(tomb_id, tomb_t, period, p, owner, prm.ttl)
            if t >= 0:
                if born <= tomb_t[p, t]:
                    continue
                tomb_id[p, t] = -1
        idx[got] = k
        got += 1
        if not (prm.coalition and _convicted(conv_t, midx, p, owner)):
            _saw(s_seed, s_rank, s_id, p, owner)
    return got


@_inlined
def _merge(
    st: SecureState, prm: Params, p: int, msg: Msg, idx: Arr, n: int, sent: Arr, nsent: int,
    fresh: Arr, period: int,
) -> int:  # fmt: skip
    """SecureCyclon._merge of `msg[idx[:n]]`; the owners let in go to `fresh` (to dial)."""
    ids, born, length, chain, clen, term = st.ids, st.born, st.length, st.chain, st.clen, st.term
    hop = st.last
    m_owner, m_born, m_clen, m_chain = msg.owner, msg.born, msg.clen, msg.chain
    mc = prm.max_chain
    for a in range(n - 1):  # the sender's order decides nothing
        b = a + np.random.randint(0, n - a)
        t = idx[a]
        idx[a] = idx[b]
        idx[b] = t
    nf = 0
    for a in range(n):
        k = idx[a]
        s = find_entry(ids, length, p, m_owner[k])
        if s < 0:
            idx[nf] = k
            nf += 1
        elif m_born[k] > born[p, s]:  # keep the younger: ours is dropped, not handed on
            cl = m_clen[k]
            born[p, s] = m_born[k]
            st.since[p, s] = period
            clen[p, s] = cl
            hop[p, s] = m_chain[k, cl - 1]
            if prm.coalition:
                for j in range(cl):
                    chain[p, s, j] = m_chain[k, j]
            term[p, s] = cl >= mc
    nr = 0
    for a in range(nsent):
        s = find_entry(ids, length, p, sent[a])
        if s >= 0 and term[p, s]:
            sent[nr] = sent[a]
            nr += 1
    added = 0
    for a in range(nf):
        k = idx[a]
        if length[p] >= prm.c:
            s = -1
            while nr > 0 and s < 0:
                nr -= 1
                s = find_entry(ids, length, p, sent[nr])
            if s < 0:  # still full: a terminal copy, drawn at random, gives way
                terminals = 0
                for j in range(length[p]):
                    if term[p, j]:
                        terminals += 1
                if terminals == 0:
                    break
                pick = np.random.randint(0, terminals)
                for j in range(length[p]):
                    if term[p, j]:
                        if pick == 0:
                            s = j
                            break
                        pick -= 1
            _remove(ids, born, length, chain, clen, term, hop, st.since, p, s, prm.coalition)
        _put(ids, born, length, chain, clen, term, hop, st.since, prm, p, m_owner[k], m_born[k],
             m_chain[k], m_clen[k], False, period)  # fmt: skip
        fresh[added] = m_owner[k]
        added += 1
    return added


@_inlined
def _unreachable(st: SecureState, prm: Params, p: int, node: int, period: int) -> None:
    if not prm.redy:
        return
    ids, length = st.ids, st.length
    s = find_entry(ids, length, p, node)
    if s >= 0:
        _remove(
            ids, st.born, length, st.chain, st.clen, st.term, st.last, st.since, p, s,
            prm.coalition,
        )  # fmt: skip
    strike_pop(st.strike_id, p, node)
    tomb_add(st.tomb_id, st.tomb_t, period, p, node, prm.ttl)
    _unsample(st.s_id, st.s_rank, p, node)


@_inlined
def _dial(st: SecureState, prm: Params, p: int, fresh: Arr, n: int, period: int) -> None:
    """`verify`: every entry a merge let in is dialled; a dead node's broker refuses."""
    if not prm.verify:
        return
    alive = st.alive
    for a in range(n):
        o = fresh[a]
        if o < 0 or not alive[o]:
            _unreachable(st, prm, p, o, period)


@_kernel
def _seed(st: SecureState, prm: Params, p: int, src: int, period: int, own: bool) -> None:
    """SecureCyclon.seed from `src`'s retained view (`own`: and src's fresh descriptor first):
    terminal entries, to contact only."""
    ids, born, length, chain, clen, term = st.ids, st.born, st.length, st.chain, st.clen, st.term
    hop = st.last
    conv_t, midx = st.conv_t, st.midx
    fresh, row = st.seed_fresh, st.seed_row
    added = 0
    for s in range(-1 if own else 0, length[src]):
        if s < 0:
            o, b, n = src, period, 1
            row[0] = src
        else:
            o, b, n = ids[src, s], born[src, s], clen[src, s]
            if prm.coalition:
                for k in range(n):
                    row[k] = chain[src, s, k]
            row[n - 1] = hop[src, s]
        if o == p or _convicted(conv_t, midx, p, o):
            continue
        if length[p] >= prm.c:
            break
        if find_entry(ids, length, p, o) < 0 and period - b <= prm.max_age:
            _put(ids, born, length, chain, clen, term, hop, st.since, prm, p, o, b, row, n, True,
                 period)  # fmt: skip
            fresh[added] = o
            added += 1
    _dial(st, prm, p, fresh, added, period)


# -- requests


@_inlined
def _drop_dead(st: SecureState, prm: Params, p: int, period: int) -> None:
    """Entries older than max_age leave (SecureCyclon._drop_dead)."""
    ids, born, length, chain, clen, term = st.ids, st.born, st.length, st.chain, st.clen, st.term
    hop = st.last
    limit = period - prm.max_age
    s = 0
    while s < length[p]:
        if born[p, s] < limit:
            _remove(ids, born, length, chain, clen, term, hop, st.since, p, s, prm.coalition)
        else:
            s += 1


@_inlined
def _starved(term: Arr, length: Arr, p: int) -> bool:
    t = 0
    for s in range(length[p]):
        if term[p, s]:
            t += 1
    return bool(t >= length[p])


@_inlined
def _hand(st: SecureState, prm: Params, p: int, s: int, to: int, msg: Msg, a: int) -> None:
    """p hands its entry in slot s to `to`, as entry a of `msg`: our copy becomes terminal."""
    chain, hop = st.chain, st.last
    n = st.clen[p, s]
    msg.owner[a] = st.ids[p, s]
    msg.born[a] = st.born[p, s]
    if prm.coalition:
        for j in range(n):
            msg.chain[a, j] = chain[p, s, j]
    else:  # only these hops are ever read without members
        msg.chain[a, 0] = st.ids[p, s]
        msg.chain[a, n - 1] = hop[p, s]
    msg.chain[a, n] = to
    msg.clen[a] = n + 1
    msg.valid[a] = True
    st.term[p, s] = True


@_inlined
def _request(
    st: SecureState, prm: Params, b: Bufs, p: int, q: int, tokened: bool, period: int
) -> tuple[int, int]:
    """SecureCyclon._request to q (b.tok holds its descriptor): (entries, entries handed on)."""
    ids, length, term = st.ids, st.length, st.term
    idx, sent = b.idx, b.sent_p
    r_owner, r_born, r_clen, r_chain, r_valid = (
        b.req.owner, b.req.born, b.req.clen, b.req.chain, b.req.valid
    )  # fmt: skip
    k = 0
    if tokened:
        m = 0
        for s in range(length[p]):
            if not term[p, s]:
                idx[m] = s
                m += 1
        k = min(prm.sl - 1, m)
        for a in range(k):  # partial Fisher-Yates
            j = a + np.random.randint(0, m - a)
            t = idx[a]
            idx[a] = idx[j]
            idx[j] = t
    for a in range(k):
        _hand(st, prm, p, idx[a], q, b.req, a)
        sent[a] = ids[p, idx[a]]
    r_owner[k] = p
    r_born[k] = period
    r_chain[k, 0] = p
    r_chain[k, 1] = q
    r_clen[k] = 2
    r_valid[k] = True
    return k + 1, k


@_inlined
def _probe(st: SecureState, prm: Params, b: Bufs, p: int, q: int, period: int) -> tuple[int, int]:
    b.tok.owner[0] = q
    b.tok.born[0] = period
    b.tok.clen[0] = 0
    return _request(st, prm, b, p, q, False, period)


@_inlined
def _tick(st: SecureState, prm: Params, b: Bufs, p: int, period: int) -> tuple[int, int, int, int]:
    """SecureCyclon.tick: (target, mode, entries, handed on); mode 1 tokened, 2 untokened to a
    seeded entry, 3 a probe; target -1: nothing to send."""
    ids, born, length, chain, clen, term = st.ids, st.born, st.length, st.chain, st.clen, st.term
    hop = st.last
    if length[p] == 0:
        return -1, 0, 0, 0
    _drop_dead(st, prm, p, period)
    if length[p] == 0:
        return -1, 0, 0, 0
    if _starved(term, length, p) or (prm.probe_every and period % prm.probe_every == st.phase[p]):
        o = _sample(st, prm, p, period)
        if o >= 0:
            n, k = _probe(st, prm, b, p, o, period)
            return o, 3, n, k
    qs = 0  # the entry held longest (SecureCyclon.tick)
    ties = 1
    since = st.since
    for s in range(1, length[p]):
        if since[p, s] < since[p, qs]:
            qs = s
            ties = 1
        elif since[p, s] == since[p, qs]:
            ties += 1
            if np.random.randint(0, ties) == 0:
                qs = s
    q = ids[p, qs]
    cl = clen[p, qs]
    t_chain = b.tok.chain
    b.tok.owner[0] = q
    b.tok.born[0] = born[p, qs]
    b.tok.clen[0] = cl
    if prm.coalition:
        for j in range(cl):
            t_chain[0, j] = chain[p, qs, j]
    else:
        t_chain[0, 0] = q
        t_chain[0, cl - 1] = hop[p, qs]
    b.tok.valid[0] = True
    tokened = not (term[p, qs] and hop[p, qs] != p)
    _remove(ids, born, length, chain, clen, term, hop, st.since, p, qs, prm.coalition)
    n, k = _request(st, prm, b, p, q, tokened, period)
    return q, 1 if tokened else 2, n, k


@_inlined
def _count(counts: Arr, q: int, col: int, period: int, cap: int) -> bool:
    """One more answer of its kind this period; False beyond `cap`."""
    count = counts[q, col + 1] + 1 if counts[q, col] == period else 1
    if count > cap:
        return False
    counts[q, col] = period
    counts[q, col + 1] = count
    return True


@_inlined
def _answer(
    st: SecureState, prm: Params, b: Bufs, q: int, sender: int, honest: bool, period: int,
    tokened: bool, n: int,
) -> int:  # fmt: skip
    """SecureCyclon.on_request at q of b.req[:n] (b.tok the token): the answer's length in
    b.rep, -1 refused. An honest sender's news and view digest come along."""
    conv_t, midx = st.conv_t, st.midx
    if honest:
        _learn(st, prm, q, sender, period)
    if sender == q or _convicted(conv_t, midx, q, sender):
        return -1
    idx = b.idx
    if not tokened:
        own = -1
        r_owner = b.req.owner
        for k in range(n):
            if r_owner[k] == sender:
                own = k
                break
        if own < 0 or not _count(st.counts, q, 0, period, prm.sl):
            return -1
        idx[0] = own
        n = 1
    else:
        if not _token_ok(st, prm, q, sender, b.tok, period):
            return -1
        if not _count(st.counts, q, 2, period, prm.sl):
            return -1  # a burst beyond any honest pace: later (the token stays good)
        if not _redeem(st, prm, q, b.tok, period):
            return -1
        for k in range(n):
            idx[k] = k
    got = _admissible(st, prm, q, sender, b.req, idx, n, period)
    if got <= 0 or _convicted(conv_t, midx, q, sender):
        return -1
    if honest:
        _observe(st, prm, q, sender, period)
        if _convicted(conv_t, midx, q, sender):
            return -1
    _drop_dead(st, prm, q, period)  # what died since its tick: the sender would convict q
    ids, length, term = st.ids, st.length, st.term
    sent, slots = b.sent_q, b.fresh
    m = 0
    for s in range(length[q]):
        if ids[q, s] != sender and not term[q, s]:
            slots[m] = s
            m += 1
    k = int(min(prm.sl, m, got))
    for a in range(k):
        j = a + np.random.randint(0, m - a)
        t = slots[a]
        slots[a] = slots[j]
        slots[j] = t
        _hand(st, prm, q, slots[a], sender, b.rep, a)
        sent[a] = ids[q, slots[a]]
    added = _merge(st, prm, q, b.req, idx, got, sent, k, b.fresh, period)
    _dial(st, prm, q, b.fresh, added, period)
    return k


@_inlined
def _on_timeout(st: SecureState, prm: Params, b: Bufs, p: int, mode: int, period: int) -> None:
    """SecureCyclon.on_timeout: a contacted entry comes back, terminal, until three misses."""
    if not prm.redy or mode == 3:
        return
    o = b.tok.owner[0]
    gone = tomb_find(st.tomb_id, st.tomb_t, period, p, o, prm.ttl) >= 0
    if not strike(st.strike_id, st.strike_n, p, o, gone or _convicted(st.conv_t, st.midx, p, o)):
        return
    ids, length = st.ids, st.length
    if find_entry(ids, length, p, o) < 0 and length[p] < prm.c:
        _put(ids, st.born, length, st.chain, st.clen, st.term, st.last, st.since, prm, p, o,
             b.tok.born[0], b.tok.chain[0], b.tok.clen[0], True, _NONE)  # fmt: skip


@_inlined
def _conclude(
    st: SecureState, prm: Params, b: Bufs, p: int, q: int, honest: bool, period: int,
    loss: float, mode: int, got: int, nsent: int,
) -> None:  # fmt: skip
    """p takes q's answer of `got` entries in b.rep (-1: refused)."""
    if got < 0:  # on_refused
        strike_pop(st.strike_id, p, q)
        if mode == 3:
            _unsample(st.s_id, st.s_rank, p, q)  # a sample that turns us away: draw another
        return
    if loss > 0.0 and np.random.random() < loss:
        _on_timeout(st, prm, b, p, mode, period)
        return
    if honest:
        _learn(st, prm, p, q, period)
    strike_pop(st.strike_id, p, q)
    if prm.redy:
        t = tomb_find(st.tomb_id, st.tomb_t, period, p, q, prm.ttl)
        if t >= 0:
            st.tomb_id[p, t] = -1
    conv_t, midx, idx = st.conv_t, st.midx, b.idx
    if _convicted(conv_t, midx, p, q):
        return
    for k in range(got):
        idx[k] = k
    n = _admissible(st, prm, p, q, b.rep, idx, got, period)
    if honest:
        _observe(st, prm, p, q, period)
    if n > 0 and not _convicted(conv_t, midx, p, q):
        added = _merge(st, prm, p, b.rep, idx, n, b.sent_p, nsent, b.fresh, period)
        _dial(st, prm, p, b.fresh, added, period)


@_inlined
def _turn(
    st: SecureState, prm: Params, b: Bufs, p: int, order: Arr, period: int, loss: float,
    introducer: int,
) -> int:  # fmt: skip
    """One honest node's shuffle (SecureShuffleNet.cycle's loop body); 2: its request goes to
    a member (b.pend), for the coalition to answer."""
    ids, length, alive = st.ids, st.length, st.alive
    if prm.redy:  # the state push to every neighbour's broker: a refusal is evidence
        s = 0
        while s < length[p]:
            j = ids[p, s]
            if not alive[j]:
                _unreachable(st, prm, p, j, period)
            else:
                s += 1
    q = -1
    mode = n = nsent = 0
    if (
        prm.redy
        and _starved(st.term, length, p)
        and (length[p] == 0 or _sample(st, prm, p, period) < 0)
    ):
        # Nobody to ask: the process asks its introducer again (and reads its retained view).
        intro = st.intro[p] if st.intro[p] >= 0 else introducer
        if not alive[intro]:
            intro = order[np.random.randint(0, len(order))]
        if intro != p:
            if length[p] == 0:
                _seed(st, prm, p, intro, period, False)
            n, nsent = _probe(st, prm, b, p, intro, period)
            q, mode = intro, 3
    if q < 0:
        q, mode, n, nsent = _tick(st, prm, b, p, period)
    if q < 0:
        return 0
    if not alive[q]:
        _unreachable(st, prm, p, q, period)
        _on_timeout(st, prm, b, p, mode, period)
        return 0
    if loss > 0.0 and np.random.random() < loss:
        _on_timeout(st, prm, b, p, mode, period)
        return 0
    if st.midx[q] >= 0:
        pend = b.pend
        pend[0] = q
        pend[1] = mode
        pend[2] = n
        pend[3] = nsent
        return 2
    got = _answer(st, prm, b, q, p, True, period, mode == 1, n)
    _conclude(st, prm, b, p, q, True, period, loss, mode, got, nsent)
    return 0


@_kernel
def _run(
    st: SecureState, prm: Params, b: Bufs, order: Arr, start: int, period: int, loss: float,
    introducer: int,
) -> tuple[int, int]:  # fmt: skip
    """The cycle's nodes from `start` on, until a member's turn (1) or a request to a member
    (2) needs the coalition: (position, code); code 0 at the end."""
    midx = st.midx
    for pos in range(start, len(order)):
        p = order[pos]
        if midx[p] >= 0:
            return pos, 1
        code = _turn(st, prm, b, p, order, period, loss, introducer)
        if code:
            return pos, code
    return len(order), 0
