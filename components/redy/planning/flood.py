"""Horizon offers passed on over the overlay until every node holds every one, sans-IO.

Every planning interval each governance unit states its node's horizon offer for the interval
(`redy.planning.offer`), signs it with its node key (`redy.planning.wire.signed_body`) and hands
it to `PlanFlood.begin`; `wave(neighbours)` then says which offers to send to whom: to each
neighbour the offers it has neither sent us nor had from us, as the offer market passes its
offers on (`redy.balancing.offers`). Its neighbours are its view and, views being directed, up
to `BACK_LINKS` peers outside it that sent it offers in the interval (a node in no one's view
would hear nobody). A wave with nothing new sends nothing, so the driver may call it often.

Each offer is checked once (`check`, see `checker`): its form, its horizon (the grid's length
and interval), the signature of a grid-CA certificate naming its node, and the limits that
certificate states, interval by interval (`offer.limits_refusal`). What fails is dropped and
returned as a `Drop` naming the neighbour that sent it, once per offer; it is not passed on.
Offers taken in are counted (`admitted`), and refusals per kind (`refused_by`, KINDS).
Per node, the offer of its latest session counts (`PlanOffer.session`: when its governance
started; a restarted node signs a new offer for the interval, and it replaces the old one
everywhere); a node that signs two different offers in one session is left out of the interval
(both go on, so every node that sees one sees the other), as in the offer market, and so is
one that shows more than MAX_SESSIONS sessions in an interval. Either way
what a node holds is a function of the offers it has seen, not of their order. Offers for the next
interval from a neighbour whose clock runs a little ahead wait for it (bounded).

`offers()` is what every node solves (`redy.planning.problem.solve`): the admitted offers in
canonical order, one per node. `version` changes whenever that set does, so a driver knows when
to solve again; nodes that hold the same offers solve the same problem and get the same plan.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Sequence

import attrs

from redy.balancing.offers import BACK_LINKS, batched, cert_missing
from redy.errors import InvalidMessage
from redy.messages import PlanOffer
from redy.pki import Grant
from redy.planning.offer import HorizonOffer, limits_refusal
from redy.planning.wire import from_message, signed_body

MAX_NODES = 10_000  # offers held per interval
MESSAGE_BYTES = 40_000  # offers per message are batched up to about this (payload limit 64 KiB)
MESSAGE_OFFERS = 64  # and up to this many (the contract's list length)
_EARLY_MAX = 4096  # offers for the next interval held until it begins
# Sessions of one node in one interval beyond which it is left out of it (a restart or two is
# a fault; more is a member making every node solve again and again).
MAX_SESSIONS = 3

NodeId = str


@attrs.frozen
class Send:
    """Offers for `target`'s broker."""

    target: NodeId
    start: int
    offers: tuple[PlanOffer, ...]


@attrs.frozen
class Drop:
    """An offer refused: who sent it, whose it claims to be, and why (`kind`, one of KINDS, for
    the counters; the `reason` for the log)."""

    sender: NodeId
    node: NodeId
    reason: str
    kind: str = attrs.field(default="other", eq=False)


# Why offers are refused, as counted (`PlanFlood.refused_by`): a form or numbers that make no
# offer, another horizon than the grid's, no valid signature of a grid-CA node certificate,
# beyond the certified limits, two offers in one session, too many sessions in one interval.
KINDS = ("form", "horizon", "signature", "limits", "twice", "sessions", "other")


@attrs.frozen
class Refusal:
    """Why the check refused an offer: its `kind` (one of KINDS) and one line for the log."""

    kind: str
    reason: str

    def __str__(self) -> str:
        return self.reason


Check = Callable[[PlanOffer], HorizonOffer | Refusal | str]  # a str: a refusal of kind other


def checker(
    signer_grant: Callable[[str, str | None, bytes, str], Grant | str],
    capacity_kw: float,
    horizon: int,
    interval_min: float,
) -> Check:
    """The check of an offer message: the offer it carries, or why it counts for nothing.
    `signer_grant(node, cert, body, sig)`: what the grid CA grants `node` if `sig` is its
    signature of `body` (redy.signing.Verifier.signer_grant), else why not."""

    def check(msg: PlanOffer) -> HorizonOffer | Refusal:
        try:
            offer = from_message(msg)
        except InvalidMessage as exc:
            return Refusal("form", f"plan offer of {msg.node}: {exc}")
        if offer.horizon != horizon or offer.interval_min != interval_min:
            return Refusal(
                "horizon",
                f"plan offer of {msg.node}: {offer.horizon} intervals of"
                f" {offer.interval_min:g} min, expected {horizon} of {interval_min:g} min",
            )
        got = signer_grant(msg.node, msg.cert, signed_body(offer, msg.session), msg.sig)
        if isinstance(got, str):
            return Refusal("signature", got)
        why = limits_refusal(offer, got.bounds_kw(capacity_kw))
        return offer if why is None else Refusal("limits", f"plan offer of {msg.node}: {why}")

    return check


def _size(o: PlanOffer) -> int:
    numbers = len(o.base_kw) + sum(2 * len(b.kw) for b in o.blocks)
    numbers += 9 * len(o.storage) + 4 * len(o.deferrable)
    return len(o.cert or "") + len(o.sig) + 24 * numbers + 300


def _batches(offers: Sequence[PlanOffer]) -> Iterable[tuple[PlanOffer, ...]]:
    return batched(offers, _size, MESSAGE_BYTES, MESSAGE_OFFERS)


class PlanFlood:
    """One node's share of passing the horizon offers on (see the module docstring)."""

    def __init__(self, node: NodeId, check: Check) -> None:
        self.node = node
        self._check = check
        self.start: int | None = None
        self._held: dict[NodeId, HorizonOffer] = {}
        self._by_sig: dict[str, PlanOffer] = {}  # every offer taken in, to pass on
        self._banned: set[NodeId] = set()
        self._session: dict[NodeId, int] = {}  # per node, the session of its offer held
        self._sessions_seen: dict[NodeId, set[int]] = {}
        self._restless: set[NodeId] = set()  # more than MAX_SESSIONS sessions in the interval
        self._refused: set[str] = set()  # signatures of offers refused this interval
        self._has: dict[NodeId, set[str]] = {}  # per peer: the signatures it has
        self._back: list[NodeId] = []
        self._early: list[tuple[NodeId, PlanOffer]] = []
        self._early_sigs: set[str] = set()  # each kept once, whoever sends it again
        self.version = 0  # changes whenever offers() does
        self.changed_at = 0.0  # when it last changed (the driver's clock)
        # Counters since this flood began: peers' offers taken in (a restarted node's new one
        # too), and offers refused, per kind (KINDS).
        self.admitted = 0
        self.refused_by: Counter[str] = Counter()

    def begin(self, now: float, start: int, own: PlanOffer, offer: HorizonOffer) -> list[Drop]:
        """A new interval, with this node's own offer (`own` carries `offer`, signed)."""
        self.start = start
        self._held = {self.node: offer}
        self._session = {self.node: own.session if own.session is not None else -1}
        self._by_sig = {own.sig: own}
        self._banned = set()
        self._restless = set()
        self._sessions_seen = {}
        self._refused = set()
        self._has = {}
        self._back = []
        self.version += 1
        self.changed_at = now
        early, self._early = self._early, []
        self._early_sigs = set()
        drops: list[Drop] = []
        for sender, o in early:
            if o.start == start:
                self._take(now, sender, o, drops)
        return drops

    def receive(
        self,
        now: float,
        sender: NodeId,
        start: int,
        offers: Sequence[PlanOffer],
        neighbours: Sequence[NodeId],
    ) -> list[Drop]:
        """Offers a neighbour sent (its message's form checked by the codec)."""
        drops: list[Drop] = []
        if self.start is None or start == self.start + 1:
            for o in offers:
                if len(self._early) >= _EARLY_MAX:
                    break
                if o.start == start and o.sig not in self._early_sigs:
                    self._early_sigs.add(o.sig)
                    self._early.append((sender, o))
            return drops
        if start != self.start:
            return drops
        if (
            sender not in self._has
            and sender != self.node
            and len(self._back) < BACK_LINKS
            and sender not in neighbours
        ):
            self._back.append(sender)
        has = self._has.setdefault(sender, set())
        for o in offers:
            has.add(o.sig)
            self._take(now, sender, o, drops)
        return drops

    def _take(self, now: float, sender: NodeId, o: PlanOffer, drops: list[Drop]) -> None:
        if o.start != self.start or o.node == self.node or o.sig in self._by_sig:
            return
        if o.node in self._restless:
            return
        session = o.session if o.session is not None else -1
        current = self._session.get(o.node)
        if current is not None and (
            session < current or (session == current and o.node in self._banned)
        ):
            return  # a session its node has left (restarted since), or one it signed twice in
        if o.sig in self._refused:
            return
        held = self._held.get(o.node)
        if held is None and len(self._held) >= MAX_NODES:
            return
        got = self._check(o)
        if not isinstance(got, HorizonOffer):
            why = got if isinstance(got, Refusal) else Refusal("other", got)
            if why.reason != cert_missing:  # a copy with its certificate may still come
                if len(self._refused) < MAX_NODES:
                    self._refused.add(o.sig)
                self._drop(drops, Drop(sender, o.node, why.reason, why.kind))
            return
        if held is not None and session == current and held == got:
            return  # the same offer signed again (ECDSA signs at random)
        self._by_sig[o.sig] = o
        if held is None or current is None or session > current:
            if held is not None:  # a newer session (a restart) replaces the offer, and the
                self._has.pop(o.node, None)  # restarted node gets every offer again
            self._held[o.node] = got
            self._session[o.node] = session
            self._banned.discard(o.node)
            sessions = self._sessions_seen.setdefault(o.node, set())
            sessions.add(session)
            if len(sessions) > MAX_SESSIONS:  # restarts by the second: left out, and not heard
                self._restless.add(o.node)
                reason = f"{len(sessions)} sessions of {o.node}"
                self._drop(drops, Drop(sender, o.node, reason, "sessions"))
            else:
                self.admitted += 1
        else:  # two offers in one session: both go on, and the node is left out
            self._banned.add(o.node)
            reason = f"two different plan offers of {o.node}"
            self._drop(drops, Drop(sender, o.node, reason, "twice"))
        self.version += 1
        self.changed_at = now

    def _drop(self, drops: list[Drop], d: Drop) -> None:
        self.refused_by[d.kind] += 1
        drops.append(d)

    def refused(self, target: NodeId, start: int, offers: Sequence[PlanOffer]) -> None:
        """`target`'s broker did not take these: they go again in the next wave (a peer
        outside the view is not tried again in the interval)."""
        if start != self.start:
            return
        if target in self._back:
            self._back.remove(target)
            return
        has = self._has.get(target)
        if has is not None:
            has.difference_update(o.sig for o in offers)

    def wave(self, neighbours: Sequence[NodeId]) -> list[Send]:
        """What to send now: to each neighbour, the offers it lacks."""
        if self.start is None:
            return []
        out = []
        targets = [*neighbours, *(b for b in self._back if b not in neighbours)]
        for target in dict.fromkeys(targets):
            if target == self.node:
                continue
            has = self._has.setdefault(target, set())
            new = [o for sig, o in self._by_sig.items() if sig not in has]
            has.update(o.sig for o in new)
            out += [Send(target, self.start, batch) for batch in _batches(new)]
        return out

    def offers(self) -> list[HorizonOffer]:
        """The admitted offers of the interval, one per node, in canonical order (by node)."""
        return [
            self._held[n]
            for n in sorted(self._held)
            if n not in self._banned and n not in self._restless
        ]
