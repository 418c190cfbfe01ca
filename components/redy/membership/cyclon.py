"""The enhanced shuffle (CYCLON: Voulgaris, Gavidia, van Steen 2005) as a sans-IO state machine.

A node keeps at most `view_size` (c) neighbours, each with an age. Every period the driver calls
`tick()`: all ages grow by one, the oldest neighbour Q is removed from the view *before* anything
is sent, and the returned request holds `shuffle_length - 1` (SL - 1) random other entries plus
the node's own fresh entry. Q answers with up to SL random entries of its own (`on_request`) and
merges what it got; the initiator merges the reply (`on_reply`). No reply before the driver's
timeout (`on_timeout`): Q stays removed, which is how dead nodes leave views.

Merge rule (both sides): never the node itself, never a duplicate (the younger copy is kept, but
a node's address changes only by its own word: a third party's younger copy with another broker
is ignored); fill empty slots first, then replace entries that were sent to the other side. One
peer's unsolicited requests place at most SL entries per period, whatever their number.

Failure detection beyond CYCLON (`detector="redy"`): a refused or timed-out *connection* to a
neighbour's broker is strong evidence that it is gone (`on_unreachable`). The node drops that
neighbour at once and keeps a tombstone, so stale copies of the dead entry that others still pass
around are not merged back; an entry of that node *younger* than the tombstone (created after
the evidence, so by the node itself) lifts it. The evidence is about an address: the tombstone
holds the broker that failed, and only copies with that broker are refused, so a member that
passes around a dead address for a live node gets only that address refused, never the node.
A lost message alone (`on_timeout`) is weak
evidence and changes nothing beyond CYCLON's own rule, so message loss cannot evict live nodes.

`detector="verify"` is `redy` plus a check on admission: every entry a merge lets into the view
is listed (`take_admitted`) for the driver to dial at once, instead of at its next period's
state push. A stale copy of a dead node that arrives after the node's own purge is then gone
within one connection attempt, not one period later, and passes no further. The dial is the
connection the next push opens anyway, so it costs no message; a live node answers it, so it
evicts no live node.

Ages are kept as a per-node tick counter minus a base, so ageing the whole view is O(1); this
core also drives `redy.sim` for 10^5 nodes, hence plain tuples on the hot path.
"""

from __future__ import annotations

import random
from collections.abc import Hashable, Iterable
from typing import Any, NamedTuple

from redy.errors import RedyError

NodeId = Any  # a node id: str in the real processes, int in the simulator
_STRIKES = 3  # unanswered shuffles in a row before the redy detector gives a neighbour up
DETECTORS = ("cyclon", "redy", "verify")


def check_parameters(view_size: int, shuffle_length: int, detector: str) -> None:
    """Refuse, in one line, a shuffle length not in 0 < SL < c or an unknown detector."""
    if not 0 < shuffle_length < view_size:
        raise RedyError(
            f"shuffle length must satisfy 0 < SL < c, got SL={shuffle_length}, c={view_size}"
        )
    if detector not in DETECTORS:
        raise RedyError(f"unknown detector {detector!r}; expected one of {', '.join(DETECTORS)}")


class Neighbour(NamedTuple):
    """One neighbour: node id, broker URI of its grid listener, age in shuffle periods. The
    core's own entry (a plain tuple, int ids in the simulator's hot path); on the wire it is
    messages.ViewEntry, converted in redy.membership.overlay only."""

    node: NodeId
    broker: str
    age: int


class ShuffleOut(NamedTuple):
    """A shuffle request to send: to `target`, matched by `nonce`, carrying `entries`."""

    target: Neighbour
    nonce: int
    entries: tuple[Neighbour, ...]


class Cyclon:
    """One node's view and its shuffle protocol. Events in, messages out; no I/O, no clock."""

    __slots__ = (
        "_admitted",
        "_base",
        "_broker",
        "_pending",
        "_placed",
        "_placed_tick",
        "_rng",
        "_strikes",
        "_tick",
        "_tombstones",
        "detector",
        "me",
        "shuffle_length",
        "suspect_ttl",
        "uri",
        "view_size",
    )

    def __init__(
        self,
        node: NodeId,
        uri: str,
        view_size: int,
        shuffle_length: int,
        rng: random.Random,
        *,
        detector: str = "redy",
        suspect_ttl: int = 0,
    ) -> None:
        check_parameters(view_size, shuffle_length, detector)
        self.me = node
        self.uri = uri
        self.view_size = view_size
        self.shuffle_length = shuffle_length
        self.detector = detector
        # A tombstone lasts long enough for every stale copy to age out of the overlay.
        self.suspect_ttl = suspect_ttl or 4 * view_size
        self._rng = rng
        self._tick = 0
        self._base: dict[Hashable, int] = {}  # node -> tick at which its age was 0
        self._broker: dict[Hashable, str] = {}
        self._pending: dict[int, tuple[Neighbour, tuple[Hashable, ...]]] = {}
        # node -> (tick of the evidence, the broker that failed; None: any broker)
        self._tombstones: dict[Hashable, tuple[int, str | None]] = {}
        # Entries each sender offered in this period's requests (bounded: see on_request).
        self._placed: dict[Hashable, int] = {}
        self._placed_tick = 0
        self._strikes: dict[Hashable, int] = {}  # node -> unanswered shuffles in a row
        # Entries merged into the view since the last take_admitted() (detector "verify").
        self._admitted: list[Hashable] | None = [] if detector == "verify" else None

    # -- reading -------------------------------------------------------------------------------

    @property
    def view(self) -> tuple[Neighbour, ...]:
        t = self._tick
        return tuple(Neighbour(n, self._broker[n], t - b) for n, b in self._base.items())

    def neighbours(self) -> Iterable[NodeId]:
        return self._base.keys()

    def __len__(self) -> int:
        return len(self._base)

    def _entry(self, node: Hashable) -> Neighbour:
        return Neighbour(node, self._broker[node], self._tick - self._base[node])

    # -- events --------------------------------------------------------------------------------

    def seed(self, entries: Iterable[Neighbour]) -> None:
        """Start from known entries (a joining node: the introducer and its retained view)."""
        self._merge(entries, ())

    def tick(self) -> ShuffleOut | None:
        """One period: age all entries, pick and remove the oldest neighbour, build the request.
        The core counts periods, not time: its driver calls it once a period."""
        self._tick += 1
        self._expire_tombstones()
        if not self._base:
            return None
        base = self._base
        oldest = min(base.values())
        candidates = [n for n, b in base.items() if b == oldest]
        q = candidates[0] if len(candidates) == 1 else self._rng.choice(candidates)
        target = self._entry(q)
        del base[q]
        del self._broker[q]
        others = list(base)
        k = min(self.shuffle_length - 1, len(others))
        sent = self._rng.sample(others, k) if k else []
        entries = (*(self._entry(n) for n in sent), Neighbour(self.me, self.uri, 0))
        nonce = self._rng.getrandbits(62)
        self._pending[nonce] = (target, tuple(sent))
        return ShuffleOut(target, nonce, entries)

    def probe(self, target: Neighbour) -> ShuffleOut:
        """A shuffle request to a node that is not (or no longer) in the view: a remembered
        contact, to rejoin after the view emptied or to find the other side of a healed
        partition. Its reply merges like any other; no reply changes nothing in the view."""
        others = [n for n in self._base if n != target.node]
        k = min(self.shuffle_length - 1, len(others))
        sent = self._rng.sample(others, k) if k else []
        entries = (*(self._entry(n) for n in sent), Neighbour(self.me, self.uri, 0))
        nonce = self._rng.getrandbits(62)
        # A tombstone of the target is lifted by its own reply (age-0 entries are younger).
        self._pending[nonce] = (Neighbour(target.node, target.broker, -1), tuple(sent))
        return ShuffleOut(target, nonce, entries)

    def on_request(self, sender: Neighbour, entries: Iterable[Neighbour]) -> tuple[Neighbour, ...]:
        """Answer a shuffle offer (also while our own is pending) and merge what it brought.

        One sender places at most `shuffle_length` entries per period (an honest node sends one
        request of SL entries per period), so requests in a loop cannot fill the view; entries
        that claim another node at the sender's own broker are bogus and dropped."""
        if self._placed_tick != self._tick:
            self._placed.clear()
            self._placed_tick = self._tick
        used = self._placed.get(sender.node, 0)
        room = max(self.shuffle_length - used, 0)
        offered = tuple(e for e in entries if e.node == sender.node or e.broker != sender.broker)
        entries = offered[:room]
        self._placed[sender.node] = used + len(entries)
        if sender.node in self._tombstones and sender.age == 0:
            del self._tombstones[sender.node]  # it talks to us: it is alive
        others = [n for n in self._base if n != sender.node]
        k = min(self.shuffle_length, len(others))
        if len(entries) < len(offered):
            # Give away no more than we take: an entry sent and not replaced would sit in both
            # views, and such duplicates skew the in-degrees.
            k = min(k, len(entries))
        sent = self._rng.sample(others, k) if k else []
        reply = tuple(self._entry(n) for n in sent)
        self._merge(entries, sent, sender.node)
        return reply

    def on_reply(self, nonce: int, entries: Iterable[Neighbour]) -> bool:
        """Merge the answer to our request; False (and nothing done) for an unknown or stale
        nonce."""
        pending = self._pending.pop(nonce, None)
        if pending is None:
            return False
        target, sent = pending
        self._strikes.pop(target.node, None)
        self._tombstones.pop(target.node, None)  # it answered: it is alive
        self._merge(entries, sent)  # an answer we asked for: not capped
        return True

    def on_timeout(self, nonce: int) -> None:
        """No answer in time.

        CYCLON: the target stays removed. `redy`: a lost message is weak evidence, so the target
        goes back (if there is room, at its age: it is tried again next period) until it has
        missed `_STRIKES` shuffles in a row; its death is left to strong evidence.
        """
        pending = self._pending.pop(nonce, None)
        if pending is None or self.detector == "cyclon" or pending[0].age < 0:
            return  # CYCLON's rule, or an unanswered probe: nothing to put back
        target = pending[0]
        strikes = self._strikes.get(target.node, 0) + 1
        if strikes >= _STRIKES or target.node in self._tombstones:
            self._strikes.pop(target.node, None)
            return
        self._strikes[target.node] = strikes
        if target.node not in self._base and len(self._base) < self.view_size:
            self._base[target.node] = self._tick - target.age
            self._broker[target.node] = target.broker

    def take_admitted(self) -> tuple[NodeId, ...]:
        """The nodes merged into the view since the last call and still in it, for the driver
        to dial now (detector "verify"; always empty otherwise)."""
        if not self._admitted:
            return ()
        out = tuple(n for n in dict.fromkeys(self._admitted) if n in self._base)
        self._admitted.clear()
        return out

    def awaiting_dial(self) -> frozenset[NodeId]:
        """The nodes merged since the last take_admitted() (detector "verify"): in the view, not
        yet handed to the driver to dial."""
        return frozenset(self._admitted) if self._admitted else frozenset()

    def discard(self, node: NodeId) -> None:
        """Drop `node`'s entry without any verdict on the node: the entry itself was bogus
        (the broker at its address is another node's), so no tombstone is kept."""
        self._base.pop(node, None)
        self._broker.pop(node, None)
        self._strikes.pop(node, None)

    def on_unreachable(self, node: NodeId, broker: str | None = None) -> None:
        """The driver could not connect to `node`'s broker at `broker` (refused or timed out);
        None: whatever its address (the simulator, where a node has one)."""
        if self.detector == "cyclon":
            return
        if broker is None or self._broker.get(node, broker) == broker:
            self._base.pop(node, None)
            self._broker.pop(node, None)
            self._strikes.pop(node, None)
        self._tombstones[node] = (self._tick, broker)

    # -- merging -------------------------------------------------------------------------------

    def _expire_tombstones(self) -> None:
        if self._tombstones and self._tick % 8 == 0:
            limit = self._tick - self.suspect_ttl
            for n in [n for n, (t, _) in self._tombstones.items() if t < limit]:
                del self._tombstones[n]

    def _merge(
        self, entries: Iterable[Neighbour], sent: Iterable[Hashable], placer: Hashable = None
    ) -> None:
        """Merge `entries` that `placer` offered unasked (None: our seed or an answer we asked
        for); only `placer` itself may change its own address."""
        base = self._base
        broker = self._broker
        tick = self._tick
        tomb = self._tombstones
        fresh: list[tuple[Hashable, str, int]] = []
        for node, uri, age in entries:
            if node == self.me or age < 0:
                continue
            if tomb:
                died = tomb.get(node)
                if died is not None and (died[1] is None or died[1] == uri):
                    if age >= tick - died[0]:
                        continue  # a stale copy from before the evidence: the node is gone
                    del tomb[node]
            new_base = tick - age
            if node in base:  # a duplicate: keep the younger copy
                if new_base > base[node] and (uri == broker[node] or node == placer):
                    base[node] = new_base
                    broker[node] = uri
            else:
                fresh.append((node, uri, new_base))
        # Newcomers fill empty slots first, then take the places of entries we sent away.
        replaceable = [n for n in sent if n in base]
        for node, uri, new_base in fresh:
            if node in base:
                continue
            if len(base) >= self.view_size:
                if not replaceable:
                    break
                victim = replaceable.pop()
                del base[victim]
                del broker[victim]
            base[node] = new_base
            broker[node] = uri
            if self._admitted is not None:
                self._admitted.append(node)
