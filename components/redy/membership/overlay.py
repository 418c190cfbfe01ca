"""One node's membership as a sans-IO state machine: the timing and bookkeeping around the shuffle
core (`Cyclon`) that a governance unit needs, with no MQTT, no sleeping and no clock of its own.

The driver (redy.units.overlay) calls `tick(now)` once per shuffle period and feeds what
happens: `sent` / `failed` for each message it tried to deliver, `on_request` and `on_reply` for
what arrives. Every call returns the messages to send now (`Send`), on the wire's own types.
Tests run many of these against each other over in-memory links with a fake clock.

Beyond the core's view it remembers, in bounded lists, the nodes it has talked to (`contacts`)
and the neighbours it lost to a failed connection (`lost`). With an empty view it probes those
nodes every period (the driver also asks its introducers again: `alone`); with a view it probes
one of them every `probe_every` periods (half that while it has lost neighbours). That is how
each side of a partition rebuilds its own overlay without the introducer, and how the two sides
find each other again once the network heals. A lost node that does not answer `PROBES` probes
is forgotten.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Iterable

import attrs

from redy import messages
from redy.logformat import Tally
from redy.membership.cyclon import Cyclon, Neighbour, ShuffleOut

_log = logging.getLogger(__name__)

PROBES = 20  # probes a lost neighbour may leave unanswered before it is forgotten


@attrs.frozen
class Send:
    """A message for `node`'s grid listener at `broker`: a shuffle request, a reply, or (the
    signed shuffle) a proof against a member."""

    node: str
    broker: str
    message: messages.ShuffleRequest | messages.ShuffleReply | messages.Evidence


def to_wire(entries: Iterable[Neighbour]) -> tuple[messages.ViewEntry, ...]:
    return tuple(messages.ViewEntry(node=e.node, broker=e.broker, age=e.age) for e in entries)


def from_wire(entries: Iterable[messages.ViewEntry]) -> list[Neighbour]:
    return [Neighbour(e.node, e.broker, e.age) for e in entries]


class Overlay:
    """The membership of node `node` (grid listener `grid_uri`) around the shuffle `core`.

    A request unanswered `timeout_s` after it was sent counts as lost (the core decides what
    that means). `now` is any monotonic time in seconds, the same for every call."""

    def __init__(
        self, *, node: str, grid_uri: str, core: Cyclon, timeout_s: float, probe_every: int = 4
    ) -> None:
        self.node = node
        self.grid_uri = grid_uri
        self.core = core
        self.timeout_s = timeout_s
        self.probe_every = probe_every
        self._deadlines: dict[int, float] = {}  # nonce of a request in flight -> when it is lost
        self._periods = 0
        limit = 2 * core.view_size
        self.contacts = RecentPeers(limit)  # node -> broker, most recent last
        self.lost = RecentPeers(limit)  # neighbours lost to a failed connection
        self._unreachable = Tally(limit)  # failed exchanges per node, for the log
        self._probes: dict[str, int] = {}  # lost node -> unanswered probes

    # -- reading -------------------------------------------------------------------------------

    @property
    def view(self) -> tuple[messages.ViewEntry, ...]:
        return to_wire(self.core.view)

    @property
    def alone(self) -> bool:
        """An empty view: the driver should ask its introducers again."""
        return not len(self.core)

    # -- events --------------------------------------------------------------------------------

    def seed(self, descriptor: messages.NodeDescriptor | None, view: messages.View | None) -> None:
        """Start from an introducer's retained descriptor and view."""
        entries: list[Neighbour] = []
        if descriptor is not None:
            entries.append(Neighbour(descriptor.node, descriptor.broker, 0))
        if view is not None:
            entries.extend(from_wire(view.entries))
        self.core.seed(entries)
        self._remember_view()

    def tick(self, now: float) -> list[Send]:
        """One shuffle period: lose what timed out, shuffle with the oldest neighbour, and probe
        a lost neighbour or an old contact when it is time to."""
        self._periods += 1
        for nonce, deadline in list(self._deadlines.items()):
            if now >= deadline:
                del self._deadlines[nonce]
                self.core.on_timeout(nonce)
                _log.info("node=%s shuffle %d timed out", self.node, nonce)
        out: list[Send] = []
        request = self.core.tick()
        if request is not None:
            out.append(self._request(request))
        # Every period while alone, twice as often as usual while some neighbour is lost (the
        # other side of a partition may be back), else every `probe_every` periods.
        every = 1 if self.alone else self.probe_every // (2 if len(self.lost) else 1)
        if self._periods % max(every, 1) == 0:
            target = self._probe_target()
            if target is not None:
                out.append(self._request(self.core.probe(target)))
        self._remember_view()
        return out

    def sent(self, send: Send, now: float) -> None:
        """`send` reached its broker: a request is now awaited until `now + timeout_s`."""
        if isinstance(send.message, messages.ShuffleRequest):
            self._deadlines[send.message.nonce] = now + self.timeout_s

    def failed(self, send: Send, reason: str = "", impostor: bool = False) -> None:
        """`send` could not be delivered: its broker refused us or did not answer."""
        if isinstance(send.message, messages.ShuffleRequest):
            self.core.on_timeout(send.message.nonce)
        self.unreachable(send.node, send.broker, reason, impostor)

    def unreachable(self, node: str, broker: str, reason: str = "", impostor: bool = False) -> None:
        """A failed exchange with `node` at `broker`: strong evidence that it is gone, unless
        the broker there was not `node`'s at all (`impostor`: a bogus entry, dropped, nothing
        concluded about the node)."""
        if impostor:
            _log.warning(
                "node=%s dropped a bogus entry: %s at %s (%s)", self.node, node, broker, reason
            )
            self.core.discard(node)
            self.contacts.pop(node)
            return
        n = self._unreachable.add(node)
        if n is not None:  # at the 1st, 2nd, 4th... time: a member naming it cannot flood the log
            _log.info("node=%s neighbour %s unreachable (%d times): %s", self.node, node, n, reason)
        self.core.on_unreachable(node, broker)
        self.lost.put(node, broker)

    def on_request(self, request: messages.ShuffleRequest) -> Send:
        """Answer a shuffle offer (even while our own is pending); the reply to send."""
        self._alive(request.sender, request.broker)
        reply_entries = self.core.on_request(
            Neighbour(request.sender, request.broker, 0), from_wire(request.entries)
        )
        reply = messages.ShuffleReply(
            sender=self.node, nonce=request.nonce, entries=to_wire(reply_entries)
        )
        self._remember_view()
        return Send(request.sender, request.broker, reply)

    def on_reply(self, reply: messages.ShuffleReply) -> bool:
        """Merge an answer to one of our requests; False for an unknown or late one."""
        self._deadlines.pop(reply.nonce, None)
        if not self.core.on_reply(reply.nonce, from_wire(reply.entries)):
            _log.debug("node=%s stale reply %d from %s", self.node, reply.nonce, reply.sender)
            return False
        broker = self.lost.get(reply.sender) or self.contacts.get(reply.sender)
        if broker is not None:
            self._alive(reply.sender, broker)
        self._remember_view()
        return True

    # -- inside --------------------------------------------------------------------------------

    def _request(self, out: ShuffleOut) -> Send:
        request = messages.ShuffleRequest(
            sender=self.node, broker=self.grid_uri, nonce=out.nonce, entries=to_wire(out.entries)
        )
        return Send(out.target.node, out.target.broker, request)

    def _remember_view(self) -> None:
        for e in self.core.view:
            self.contacts.put(e.node, e.broker)

    def _alive(self, node: str, broker: str) -> None:
        """`node` talked to us: it is a contact, not lost."""
        self.contacts.put(node, broker)
        self.lost.pop(node)
        self._probes.pop(node, None)

    def _probe_target(self) -> Neighbour | None:
        """A lost neighbour (oldest first), else a contact outside the view."""
        in_view = set(self.core.neighbours())
        for node, broker in self.lost.items():
            if node in in_view:
                continue
            self.lost.put(node, broker)  # to the back: the next probe tries another
            tries = self._probes.get(node, 0) + 1
            if tries > PROBES:
                self.lost.pop(node)
                self._probes.pop(node, None)
                continue
            self._probes[node] = tries
            return Neighbour(node, broker, 0)
        for node, broker in self.contacts.items():
            if node not in in_view:
                self.contacts.put(node, broker)
                return Neighbour(node, broker, 0)
        return None


class RecentPeers:
    """A bounded map node -> broker URI; `put` moves a node to the back, the front is evicted."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._d: OrderedDict[str, str] = OrderedDict()

    def put(self, node: str, broker: str) -> None:
        self._d.pop(node, None)
        self._d[node] = broker
        while len(self._d) > self.limit:
            self._d.popitem(last=False)

    def pop(self, node: str) -> None:
        self._d.pop(node, None)

    def get(self, node: str) -> str | None:
        return self._d.get(node)

    def items(self) -> list[tuple[str, str]]:
        return list(self._d.items())

    def __len__(self) -> int:
        return len(self._d)

    def __contains__(self, node: object) -> bool:
        return node in self._d
