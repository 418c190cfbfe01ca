"""Exact clearing from every node's signed offer, flooded over the overlay, sans-IO.

The market of the real processes (`market: offers`). Each epoch, every governance unit states its
node's offer once: the injection that does not answer prices (`base_kw`) and its blocks, each
`kw` at a marginal cost rising from `cost_lo` to `cost_hi` (a step when equal), the same form
the reference solver reads (`curves.Offer`). It signs the offer with its node key (ECDSA P-256,
the key of its TLS identity, by the `sign` it is given: redy.signing) and sends it to its
neighbours; then, in waves (each node's at a phase of its own), each node passes on to each
neighbour the offers that neighbour has neither sent it nor had from it (its neighbours: its
view, and the few peers outside it that sent it offers in the epoch, since views are directed
and a node may be in no one's). After a few waves
every node holds every offer and clears the exact sum by itself (`clear`): the price to float
precision over the whole range, dispatch in merit order, and a marginal step shared pro rata.

Why this and not push-sum for the processes: push-sum needs about 180 sequential pushes an epoch
(three refinement phases of 60), each a JSON curve of 201 values, and at 50 nodes on two cores
that traffic saturated the host and the price came late and 10 EUR/MWh apart. Here each node's
traffic is its neighbours' copies of N small offers, the price is exact, and a member moves the
price only as an honest member of its certified size would: an offer is accepted only with a
valid signature by a node certificate of the grid CA naming the node (no operator's, no reserved
name), so nobody can speak in another's name or invent members, and only within the import and
export limits that certificate states (the grid's capacity bound where it states none). The
certificate rides along only while it or the receiving neighbour is new (`FRESH_EPOCHS`); each
offer is checked once per epoch. The cost is O(N) offers per node per epoch: the simulators run
this core to about 1,000 nodes (`redy sim balance --market offers`) and keep push-sum for
10^4 nodes and more.

A node that signs two different offers for one epoch is left out of that epoch by everyone who
sees both (both are passed on, so everyone does). A node clears as soon as it holds the offer of
every peer it cleared with in the epoch before; failing that (a peer gone), after three waves
with no new offer; in its first epoch, `settle_s` after the last new offer (never on its own
alone before the epoch's `finish_by`). It clears again if a later offer comes before
`finish_by`.
"""

from __future__ import annotations

import hashlib
import math
import zlib
from collections.abc import Callable, Iterable, Sequence
from typing import TypeVar

import attrs
import numpy as np

from redy.balancing.curves import Bid
from redy.balancing.events import Cleared, Dropped, Tick
from redy.errors import RedyError
from redy.messages import NodeOffer

NodeId = str
T = TypeVar("T")

MAX_BLOCKS = 64  # per offer (the contract's list length is 1 + 3 x this)
MESSAGE_BYTES = 40_000  # offers per message are batched up to about this (payload limit 64 KiB)
MAX_NODES = 10_000  # offers a node keeps per epoch
# Certificates ride along with a node's offers while they are new: for FRESH_EPOCHS after a
# node first shows them (a newcomer, a renewal), and to a neighbour for FRESH_EPOCHS after its
# session first shows or changes (a newcomer, a restart). Any other time every member already
# holds them; each (neighbour, node) pair still gets one every CERT_REFRESH_EPOCHS epochs, at a
# phase of its own, in case all the copies sent while new were lost (QoS 0).
FRESH_EPOCHS = 3
CERT_REFRESH_EPOCHS = 64
_PENDING_PER_NODE = 4  # offers without a certificate that wait for one, per node
# Peers outside the view that sent us offers this epoch get the offers they lack too, up to
# this many, short of a crowd: views are directed, and a node in no one's view (often in a grid
# of three, where a shuffle takes the partner out of the view) would otherwise hear nobody.
BACK_LINKS = 4


# --- offers ------------------------------------------------------------------------------------


def offer_values(
    bids: Iterable[Bid], capacity_kw: float = math.inf, bounds_kw: tuple[float, float] | None = None
) -> tuple[float, ...]:
    """A node's bids as one offer: base_kw, then (kw, cost_lo, cost_hi) per block; held to
    `bounds_kw` (its certified -import..export kW of net injection; default -capacity..capacity),
    the must-run part first, the dearest blocks cut."""
    lo_kw, hi_kw = bounds_kw if bounds_kw is not None else (-capacity_kw, capacity_kw)
    base, blocks = 0.0, []
    for b in bids:
        o = b.offer()
        base += o.base_kw
        blocks += [(k.kw, k.cost_lo_eur_mwh, k.cost_hi_eur_mwh) for k in o.blocks if k.kw > 0]
    base = min(max(base, lo_kw), hi_kw)
    room = hi_kw - base
    kept: list[float] = [base]
    for kw, lo, hi in sorted(blocks, key=lambda x: (x[1], x[2]))[:MAX_BLOCKS]:
        take = min(kw, room)
        if take <= 0:
            break
        kept += [take, lo, hi]
        room -= take
    return tuple(float(v) for v in kept)


def offer_refusal(
    values: Sequence[float], capacity_kw: float, bounds_kw: tuple[float, float] | None = None
) -> str | None:
    """Why an offer breaks its form or its bounds (None: it keeps them): `bounds_kw`, the
    signer's certified -import..export kW of net injection, else the grid's +-capacity_kw."""
    if len(values) % 3 != 1 or len(values) > 1 + 3 * MAX_BLOCKS:
        return f"{len(values)} values, expected base_kw then up to {MAX_BLOCKS} (kw, lo, hi)"
    base = values[0]
    kws = values[1::3]
    top = base + sum(kws)
    if any(k <= 0 for k in kws):
        return "a block of no or negative kW"
    if any(lo > hi for lo, hi in zip(values[2::3], values[3::3], strict=True)):
        return "a block whose marginal cost falls"
    lo_kw, hi_kw = bounds_kw if bounds_kw is not None else (-capacity_kw, capacity_kw)
    # Rounding room scaled by the bounds that apply: by capacity_kw, an unbounded grid (inf)
    # let any offer through its signer's certified limits.
    tol = 1e-9 * max((abs(b) for b in (lo_kw, hi_kw) if math.isfinite(b)), default=1.0)
    if not (lo_kw - tol <= base and top <= hi_kw + tol):
        what = "its certified limits" if bounds_kw is not None else "the grid's bound"
        return (
            f"net injection from {base:.6g} to {top:.6g} kW, beyond {what} of"
            f" {lo_kw:g}..{hi_kw:g} kW"
        )
    return None


# Why an offer waits: it came without a certificate and none is held for its node.
cert_missing = "no certificate held for its node"


# --- clearing ----------------------------------------------------------------------------------


@attrs.frozen
class ExactResult:
    """The price (EUR/MWh) where the sum of the offers crosses zero, how ('cleared', 'shortage',
    'surplus'), the share of the blocks whose step is at the price that runs, and this node's
    share of the unserved load or excess must-run injection (kW)."""

    price_eur_mwh: float
    status: str
    step_share: float = 1.0
    unserved_kw: float = 0.0
    excess_kw: float = 0.0

    def dispatch_kw(self, bid: Bid) -> float:
        """A bid's injection at the price: its base, then its blocks in merit order."""
        o = bid.offer()
        out = o.base_kw
        for blk in o.blocks:
            out += blk.kw * _response(
                self.price_eur_mwh, blk.cost_lo_eur_mwh, blk.cost_hi_eur_mwh, self.step_share
            )
        return float(out)


def _response(price: float, lo: float, hi: float, step_share: float) -> float:
    if hi > lo:
        return min(max((price - lo) / (hi - lo), 0.0), 1.0)
    if price > lo:
        return 1.0
    return step_share if price == lo else 0.0


class _Sum:
    """The total injection of many offers at a price, just below it (`left`: steps at the price
    off) or at it (`right`: on)."""

    def __init__(self, offers: Iterable[Sequence[float]]) -> None:
        base = 0.0
        kw: list[float] = []
        lo: list[float] = []
        hi: list[float] = []
        for v in offers:
            base += v[0]
            kw += v[1::3]
            lo += v[2::3]
            hi += v[3::3]
        self.base = base
        self.kw, self.lo, self.hi = np.array(kw), np.array(lo), np.array(hi)
        self.ramp = self.hi > self.lo

    def _ramps(self, p: float) -> float:
        r = self.ramp
        share = np.clip((p - self.lo[r]) / (self.hi[r] - self.lo[r]), 0.0, 1.0)
        return float(np.dot(self.kw[r], share))

    def left(self, p: float) -> float:
        on = ~self.ramp & (self.lo < p)
        return self.base + float(self.kw[on].sum()) + self._ramps(p)

    def right(self, p: float) -> float:
        on = ~self.ramp & (self.lo <= p)
        return self.base + float(self.kw[on].sum()) + self._ramps(p)


def clear(
    offers: Sequence[Sequence[float]],
    own: Sequence[float],
    floor_eur_mwh: float = -500.0,
    cap_eur_mwh: float = 4000.0,
) -> ExactResult:
    """The crossing of the offers' sum (exact: the sum is linear between the blocks' costs, so
    it is found on the line between the two costs that bracket it, or at a step's cost); `own`:
    this node's offer, for its share of a shortage or surplus."""
    s = _Sum(offers)
    if s.right(cap_eur_mwh) < 0:
        short = -s.right(cap_eur_mwh)
        load = sum(-min(_Sum([v]).right(cap_eur_mwh), 0.0) for v in offers)
        mine = -min(_Sum([own]).right(cap_eur_mwh), 0.0)
        share = mine * short / load if load > 0 else 0.0
        return ExactResult(cap_eur_mwh, "shortage", 1.0, unserved_kw=share)
    if s.left(floor_eur_mwh) > 0:
        excess = s.left(floor_eur_mwh)
        run = sum(max(_Sum([v]).left(floor_eur_mwh), 0.0) for v in offers)
        mine = max(_Sum([own]).left(floor_eur_mwh), 0.0)
        share = mine * excess / run if run > 0 else 0.0
        return ExactResult(floor_eur_mwh, "surplus", 0.0, excess_kw=share)
    # The sum is linear between the blocks' costs (a ramp's ends, a step's cost): find, by
    # bisection over those points, the first at which it reaches zero, then the crossing on the
    # line before it (or at the point itself, a step or an exact zero).
    points = np.unique(np.concatenate(([floor_eur_mwh, cap_eur_mwh], s.lo, s.hi)))
    points = points[(points >= floor_eur_mwh) & (points <= cap_eur_mwh)]
    a, b = 0, len(points) - 1  # right(points[b]) >= 0
    while a < b:
        mid = (a + b) // 2
        if s.right(float(points[mid])) >= 0:
            b = mid
        else:
            a = mid + 1
    price = float(points[b])
    below = s.left(price)
    if b > 0 and below > 0:  # on the line from the point before, which it starts below zero
        x0 = float(points[b - 1])
        start = s.right(x0)
        price = x0 + (price - x0) * (-start / (below - start))
        price = min(max(price, x0), float(points[b]))
    left, right = s.left(price), s.right(price)
    share = 1.0
    if right > left and left <= 0 <= right:
        share = min(max(-left / (right - left), 0.0), 1.0)
    return ExactResult(float(price), "cleared", share)


# --- the epoch core -------------------------------------------------------------------------------


@attrs.frozen
class Received:
    """Offers a neighbour sent (the driver has checked the message's form)."""

    sender: NodeId
    epoch: int
    offers: tuple[NodeOffer, ...]


@attrs.frozen
class Refused:
    """The target's broker refused these offers: they go again in the next wave."""

    target: NodeId
    epoch: int
    offers: tuple[NodeOffer, ...]


Event = Tick | Received | Refused


@attrs.frozen
class Send:
    target: NodeId
    epoch: int
    offers: tuple[NodeOffer, ...]


Action = Send | Cleared | Dropped


@attrs.frozen
class Timing:
    """Epoch length (s); the period of the waves in which nodes pass offers on (`wave_s`); how
    long a node waits with no new offer before it clears (`settle_s`, a little over a wave);
    and the share of the epoch after which nothing changes (`finish_by`).

    A node that cleared with more than `crowd` peers in the epoch before passes offers on every
    `crowd_wave_s` instead (and settles `crowd_wave_s - wave_s` later), and to `crowd_fanout`
    of its neighbours only (its own offer still goes to all). Each wave is a message to every
    neighbour that lacks something, so short waves on a crowd make many small messages: on a
    busy host they queue, and the price comes later than with fewer, fuller ones. Each node's
    waves keep their period at a phase of their own (drawn from its name), so an offer waits for
    the next wave of the node that holds it, not for one instant shared by all. Relaying to
    fewer neighbours makes fewer messages, but a node then relies on fewer in-neighbours
    (docs/market-latency.md has the measurements behind these defaults)."""

    epoch_s: float
    wave_s: float = 0.08
    settle_s: float = 0.1
    finish_by: float = 0.5
    crowd: int = 20
    crowd_wave_s: float = 0.3
    crowd_fanout: int = 8

    def __attrs_post_init__(self) -> None:
        if not (self.epoch_s > 0 and self.settle_s > 0 and self.wave_s > 0):
            raise RedyError("offer market timing: expected epoch_s, wave_s and settle_s > 0")
        if self.crowd_wave_s < self.wave_s:
            raise RedyError("offer market timing: expected crowd_wave_s >= wave_s")
        if not 0 < self.finish_by <= 1:
            raise RedyError("offer market timing: expected 0 < finish_by <= 1")
        if self.crowd_fanout < 1:
            raise RedyError("offer market timing: expected crowd_fanout >= 1")

    def for_peers(self, peers: int) -> tuple[float, float]:
        """The wave period and settling time for a node that last cleared with `peers`."""
        if peers <= self.crowd:
            return self.wave_s, self.settle_s
        return self.crowd_wave_s, self.settle_s + self.crowd_wave_s - self.wave_s


def _draw(key: str) -> float:
    """A number in [0, 1) drawn from `key`, the same on every run: a hash (CRC32 is linear, so
    the draws of names that differ in a few characters come out related)."""
    digest = hashlib.blake2b(key.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def batched(
    items: Sequence[T], size_of: Callable[[T], int], max_bytes: int, max_items: int = 0
) -> Iterable[tuple[T, ...]]:
    """`items` in order, in batches of about `max_bytes` at most by `size_of` (one item alone
    may exceed it) and of `max_items` at most (0: no limit)."""
    batch: list[T] = []
    size = 0
    for item in items:
        n = size_of(item)
        if batch and (size + n > max_bytes or len(batch) == max_items):
            yield tuple(batch)
            batch, size = [], 0
        batch.append(item)
        size += n
    if batch:
        yield tuple(batch)


def _batches(offers: Sequence[NodeOffer]) -> Iterable[tuple[NodeOffer, ...]]:
    """Offers in messages of about MESSAGE_BYTES at most (a number takes up to 24 bytes)."""
    return batched(
        offers, lambda o: len(o.cert or "") + len(o.sig) + 24 * len(o.values) + 100, MESSAGE_BYTES
    )


class OfferCore:
    """One node's epochs of the offer market (see the module docstring). Drive it with
    `handle(now, event)` at `next_deadline()` and on every event, and carry out what it returns.

    A node sends its own offer to its neighbours at the epoch's start, then passes on what it
    learnt in waves, every `wave_s` at this node's phase within the period:
    to each neighbour, the offers it has neither sent us nor had from us. The waves keep the
    messages few (a node's traffic is a few messages per neighbour per epoch, whatever the
    number of offers), and the price is known a few waves after the start."""

    def __init__(
        self,
        node: NodeId,
        timing: Timing,
        bids: Callable[[], Sequence[Bid]],
        neighbours: Callable[[], Sequence[NodeId]],
        sign: Callable[[int, tuple[float, ...]], NodeOffer],
        refusal: Callable[[NodeOffer], str | None],
        capacity_kw: float,
        floor_eur_mwh: float = -500.0,
        cap_eur_mwh: float = 4000.0,
        bounds_kw: tuple[float, float] | None = None,
        cert_of: Callable[[NodeId], str | None] | None = None,
    ) -> None:
        """`bounds_kw`: this node's certified net injection (-import..export kW; default the
        grid's +-capacity_kw); `cert_of`: the certificate held for a node, for the neighbours
        that lack it (None: offers go on as they came, certificate and all)."""
        self.node = node
        self.timing = timing
        self._phase = _draw(node)  # of a wave: the nodes' waves interleave
        self._bids_of = bids
        self._neighbours = neighbours
        self._sign = sign
        self._refusal = refusal
        self.capacity_kw = capacity_kw
        self.bounds_kw = bounds_kw
        self._cert_of = cert_of
        self.floor_eur_mwh, self.cap_eur_mwh = floor_eur_mwh, cap_eur_mwh
        # Per node, from its offers: its session, and the epoch we first saw that session.
        self._sessions: dict[NodeId, tuple[int | None, int]] = {}
        # Per node: its certificate as we last saw it, and the epoch we first saw that one.
        self._certs_seen: dict[NodeId, tuple[str, int]] = {}
        self._bare: dict[str, NodeOffer] = {}  # sig -> the offer without its certificate
        self._pending: dict[NodeId, list[NodeOffer]] = {}  # offers waiting for a certificate
        self.epoch = 0
        self._next_epoch: int | None = None
        self._running = False
        self._bids: tuple[Bid, ...] = ()
        self._own: tuple[float, ...] = ()
        self._known: dict[NodeId, NodeOffer] = {}
        self._by_sig: dict[str, NodeOffer] = {}  # every offer taken in, proofs included
        self._banned: set[NodeId] = set()
        self._refused: set[str] = set()  # signatures of offers refused this epoch
        self._members: frozenset[NodeId] = frozenset()  # the peers cleared with last epoch
        self._has: dict[NodeId, set[str]] = {}  # per peer: the signatures it has
        self._back: list[NodeId] = []  # senders of this epoch outside the view (BACK_LINKS)
        self._started_at = 0.0
        self._last_new = 0.0
        self._dirty = False  # offers not yet passed on to every neighbour
        self._wave_at = 0.0  # when the next wave goes (while dirty)
        self._wave_s, self._settle_s = timing.wave_s, timing.settle_s  # by last epoch's size
        self._fanout: int | None = None  # neighbours offers are passed on to (None: all)
        self._quiet_s = timing.settle_s  # the lull after which a node clears what it has
        self._awaiting = False  # some peer of the last epoch not yet heard from
        self._cleared_with = -1  # the version cleared last
        self.last: Cleared | None = None
        self.sent = (0, 0)  # messages and offers sent in the epoch

    # --- time --------------------------------------------------------------------------------

    def _start_of(self, epoch: int) -> float:
        return epoch * self.timing.epoch_s

    def _finish(self) -> float:
        return self._start_of(self.epoch) + self.timing.finish_by * self.timing.epoch_s

    def _next_wave(self, now: float) -> float:
        w = self._wave_s
        start = self._start_of(self.epoch) + self._phase * w
        return start + (math.floor((now - start) / w + 1e-9) + 1) * w

    def next_deadline(self) -> float:
        if self._next_epoch is None:
            return -math.inf
        if not self._running:
            return self._start_of(self._next_epoch)
        out = self._finish()
        if self._dirty:
            out = min(out, self._wave_at)
        if self._cleared_with != len(self._by_sig):
            out = min(out, self._last_new + self._quiet_s)
        return out

    # --- events ------------------------------------------------------------------------------

    def handle(self, now: float, event: Event) -> list[Action]:
        out: list[Action] = []
        if self._next_epoch is None:
            self._next_epoch = math.ceil(now / self.timing.epoch_s)
        if isinstance(event, Received):
            lead = self._start_of(event.epoch) - now
            early = event.epoch == self._next_epoch and 0 < lead <= self.timing.epoch_s / 4
            if early and self._genuine(event):
                self._clear(now, out)  # still on the last epoch: it ends here
                self._start(now, event.epoch, out)  # the sender's clock is a little ahead
        if not self._running and now >= self._start_of(self._next_epoch):
            self._start(now, math.floor(now / self.timing.epoch_s), out)
        if not self._running:
            return out
        if isinstance(event, Received) and event.epoch == self.epoch:
            self._receive(now, event, out)
            if self._awaiting and self._members.issubset(self._known):
                self._awaiting = False
                self._quiet_s = self._settle_s  # later offers (a newcomer's) settle as usual
                self._clear(now, out)  # every peer of the last epoch is in: no need to settle
        elif isinstance(event, Refused) and event.epoch == self.epoch:
            has = self._has.get(event.target)
            if event.target in self._back:
                self._back.remove(event.target)  # out of the view, unreachable: not retried
            elif has is not None:
                has.difference_update(o.sig for o in event.offers)
                self._mark_dirty(now)
        if now >= self._finish():
            self._clear(now, out)
            self._running = False
            return out
        if self._dirty and now >= self._wave_at:
            self._wave(out)
        if self._cleared_with != len(self._by_sig) and now >= self._last_new + self._quiet_s:
            self._clear(now, out)
        return out

    def _genuine(self, event: Received) -> bool:
        """Whether a message stamped with the next epoch carries a member's offer for it, signed
        and within its limits (a sender's own offer comes first): only then does the epoch end
        early, so an unsigned or forged message cannot end it for its receivers."""
        return any(
            o.epoch == event.epoch and o.node != self.node and self._refusal(o) is None
            for o in event.offers[:2]
        )

    def _mark_dirty(self, now: float) -> None:
        if not self._dirty:
            self._dirty = True
            self._wave_at = self._next_wave(now)

    def _start(self, now: float, epoch: int, out: list[Action]) -> None:
        self.epoch = epoch
        self._next_epoch = epoch + 1
        self._running = True
        self._bids = tuple(self._bids_of())
        self._own = offer_values(self._bids, self.capacity_kw, self.bounds_kw)
        mine = self._sign(epoch, self._own)
        self._members = frozenset(self._known).difference(self._banned, (self.node,))
        self._wave_s, self._settle_s = self.timing.for_peers(len(self._members))
        crowded = len(self._members) > self.timing.crowd
        self._fanout = self.timing.crowd_fanout if crowded else None
        # While a peer of the last epoch is missing, a lull of a few waves is no sign that all
        # offers are in (a queue on a loaded host): wait for three waves' quiet, not one.
        self._awaiting = bool(self._members)  # until every one of them is in
        self._quiet_s = max(self._settle_s, 3 * self._wave_s) if self._awaiting else self._settle_s
        self._known = {self.node: mine}
        self._by_sig = {mine.sig: mine}
        self._banned = set()
        self._refused = set()
        self._has = {}
        self._back = []
        self._bare = {}
        self._pending = {}
        self._started_at = now
        self._last_new = math.inf  # no clearing on our own offer alone before the finish
        self._cleared_with = -1
        self.sent = (0, 0)
        self._dirty = True
        self._wave_at = now  # our own offer goes out at once
        self._wave(out)

    def _receive(self, now: float, event: Received, out: list[Action]) -> None:
        if (
            self._fanout is None  # past a crowd, views are full and everyone is in several
            and event.sender not in self._has
            and len(self._back) < BACK_LINKS
            and event.sender != self.node
            and event.sender not in self._neighbours()
        ):
            self._back.append(event.sender)  # it may be in no one's view: it gets ours too
            self._mark_dirty(now)
        has = self._has.setdefault(event.sender, set())
        for offer in event.offers:
            has.add(offer.sig)
            if offer.epoch != self.epoch or offer.node == self.node or offer.sig in self._by_sig:
                continue
            self._take(now, event.sender, offer, out)

    def _take(self, now: float, sender: NodeId, offer: NodeOffer, out: list[Action]) -> None:
        held = self._known.get(offer.node)
        if held is None and len(self._known) >= MAX_NODES:
            return
        # Checked once: a refused offer that comes again, or a third offer of a node already
        # left out, costs no signature check (a member replaying one would cost one each time).
        if offer.sig in self._refused or offer.node in self._banned:
            return
        reason = self._refusal(offer) or offer_refusal(offer.values, self.capacity_kw)
        if reason == cert_missing:  # a copy with the certificate may still come
            waiting = self._pending.setdefault(offer.node, [])
            if len(waiting) < _PENDING_PER_NODE and len(self._pending) <= MAX_NODES:
                waiting.append(offer)
            return
        if reason is not None:
            if len(self._refused) < MAX_NODES:
                self._refused.add(offer.sig)
            out.append(Dropped(sender, reason))
            return
        if held is not None and held.values == offer.values:
            return  # the same offer signed again (ECDSA signs at random)
        self._by_sig[offer.sig] = offer
        self._last_new = now
        self._mark_dirty(now)
        self._session_of(offer)
        if offer.cert is not None:
            self._fresh_cert(offer.node, offer.cert)  # new from when we first saw it
        if held is None:
            self._known[offer.node] = offer
        else:  # two offers signed by one node for one epoch: both go on, it is left out
            self._banned.add(offer.node)
        for later in self._pending.pop(offer.node, ()) if offer.cert is not None else ():
            if later.sig not in self._by_sig:
                self._take(now, sender, later, out)

    def _session_of(self, offer: NodeOffer) -> None:
        """Note the session a node's offer states. A session seen first, or changed (a newcomer,
        a node that restarted and lost the certificates it held), makes the node fresh. One that
        changed gets this epoch's offers again, with their certificates (before, we took it
        for a node that held them); one seen first has had them with theirs (a node we know
        no session of is fresh)."""
        seen = self._sessions.get(offer.node)
        if seen is None or seen[0] != offer.session:
            if seen is not None:
                self._has.pop(offer.node, None)
            if len(self._sessions) >= 4 * MAX_NODES:
                self._sessions.clear()
            self._sessions[offer.node] = (offer.session, self.epoch)

    def _fresh_cert(self, node: NodeId, cert: str) -> bool:
        """Whether `node`'s certificate is new (first seen, or renewed, in the last epochs)."""
        seen = self._certs_seen.get(node)
        if seen is None or seen[0] != cert:
            if len(self._certs_seen) >= 4 * MAX_NODES:
                self._certs_seen.clear()
            seen = self._certs_seen[node] = (cert, self.epoch)
        return self.epoch - seen[1] < FRESH_EPOCHS

    def _for(self, target: NodeId, offer: NodeOffer) -> NodeOffer:
        """`offer` as `target` gets it: with its node's certificate while the certificate or
        the target is fresh (and at the pair's refresh), else without."""
        if self._cert_of is None:
            return offer
        cert = offer.cert or self._cert_of(offer.node)
        if cert is None:
            return offer
        new_cert = self._fresh_cert(offer.node, cert)  # noted whatever the target
        session = self._sessions.get(target)
        fresh = session is None or self.epoch - session[1] < FRESH_EPOCHS
        if fresh or new_cert or self._refresh(target, offer.node):
            return offer if offer.cert == cert else attrs.evolve(offer, cert=cert)
        bare = self._bare.get(offer.sig)
        if bare is None:
            bare = self._bare[offer.sig] = attrs.evolve(offer, cert=None)
        return bare

    def _refresh(self, target: NodeId, node: NodeId) -> bool:
        phase = zlib.crc32(f"{target}/{node}".encode())
        return (phase + self.epoch) % CERT_REFRESH_EPOCHS == 0

    def _relays(self, targets: Sequence[NodeId]) -> list[NodeId]:
        """The neighbours this epoch's waves pass offers on to: all of them, or past a crowd
        `crowd_fanout` of them, drawn afresh each epoch (a rank per neighbour and epoch, so a
        neighbour keeps its place while the view moves around it)."""
        others = [t for t in targets if t != self.node]
        if self._fanout is None or len(others) <= self._fanout:
            return others
        key = f"{self.node}/{self.epoch}/"
        return sorted(others, key=lambda t: _draw(key + t))[: self._fanout]

    def _wave(self, out: list[Action]) -> None:
        self._dirty = False
        offers = list(self._by_sig.values())
        view = self._neighbours()
        targets = [*view, *(b for b in self._back if b not in view)]
        # Our own offer goes to every neighbour at the start; then the chosen relays.
        for target in targets if len(offers) == 1 else self._relays(targets):
            if target == self.node:
                continue
            has = self._has.setdefault(target, set())
            new = [self._for(target, o) for o in offers if o.sig not in has]
            has.update(o.sig for o in new)
            for batch in _batches(new):
                self.sent = (self.sent[0] + 1, self.sent[1] + len(batch))
                out.append(Send(target, self.epoch, batch))

    def _clear(self, now: float, out: list[Action]) -> None:
        if not self._running or self._cleared_with == len(self._by_sig):
            return
        self._cleared_with = len(self._by_sig)
        # In one order on every node: the same offers sum to the same price to the last bit.
        held = [o.values for n, o in sorted(self._known.items()) if n not in self._banned]
        result = clear(held, self._own, self.floor_eur_mwh, self.cap_eur_mwh)
        heard = sum(1 for n in self._known if n != self.node and n not in self._banned)
        self.last = Cleared(self.epoch, result, self._bids, now - self._started_at, heard)
        out.append(self.last)
