"""Distant mode, membership: drives the pure shuffle core over MQTT for one governance unit.

The core (`redy.membership`) decides; this driver only moves messages and keeps time:
- every `period_s` it ticks the core; the request goes to the chosen neighbour's grid listener on
  `redy/<Q>/membership/shuffle` with an MQTT 5 response topic (our own `.../shuffle/reply`) and the
  nonce as correlation data;
- replies and requests arrive on our own broker (the governance reads only its own broker);
- no reply within `timeout_s`: the core is told, and Q stays removed; a refused or timed-out
  connection to Q's broker is also reported as strong evidence (`on_unreachable`);
- after every change the view is republished, retained, on our own broker, and links to brokers
  that left the view are closed;
- with the core's `verify` detector, every entry a merge admits is dialled at once (the link the
  next state push would open anyway): a dead node that a stale copy brought back is dropped
  within one connection attempt instead of a period later.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any

from redy import messages
from redy.errors import InvalidMessage
from redy.membership.cyclon import Cyclon, ShuffleOut
from redy.membership.cyclon import ViewEntry as CoreEntry
from redy.pki import Identity
from redy.topics import render
from redy.transport.client import AsyncLink, DeliveryFailed
from redy.transport.peer_links import PeerImpostor, PeerLinks, PeerUnreachable

_log = logging.getLogger(__name__)

_PROBES = 20  # probes a lost neighbour may leave unanswered before it is forgotten

PublishLocal = Callable[[str, Any], Awaitable[Any]]


def _to_wire(entries: tuple[CoreEntry, ...] | list[CoreEntry]) -> tuple[messages.ViewEntry, ...]:
    return tuple(messages.ViewEntry(node=e.node, broker=e.broker, age=e.age) for e in entries)


def _from_wire(entries: tuple[messages.ViewEntry, ...]) -> list[CoreEntry]:
    return [CoreEntry(node=e.node, broker=e.broker, age=e.age) for e in entries]


async def read_introducer(
    uri: str, identity: Identity, client_id: str, timeout_s: float = 3.0
) -> tuple[messages.NodeDescriptor | None, messages.View | None]:
    """Read an introducer's retained descriptor and view from its grid listener (mutual TLS).
    Its certificate must name the node its descriptor names, else nothing it says is taken."""
    found: dict[str, Any] = {}
    got_both = asyncio.Event()

    def on_message(topic: str, payload: bytes, _props: dict[str, Any]) -> None:
        try:
            msg = messages.decode(topic, payload)
        except InvalidMessage as exc:
            _log.warning("introducer %s sent an invalid message: %s", uri, exc)
            return
        found[type(msg).__name__] = msg
        if "NodeDescriptor" in found and "View" in found:
            got_both.set()

    # The client id is ours: the broker makes it our certificate's CN anyway.
    link = AsyncLink(
        uri,
        client_id,
        user=client_id,
        password="",
        timeout_s=timeout_s,
        subscriptions=("redy/+/descriptor", "redy/+/membership/view"),
        on_message=on_message,
        tls=identity.client_context() if uri.startswith("mqtts://") else None,
    )
    try:
        await link.connect()
    except DeliveryFailed as exc:
        raise PeerUnreachable(uri, exc.reason) from None
    try:
        # A fresh introducer may have no view yet: its descriptor is enough.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await got_both.wait()
        presented = link.peer_cn()
    finally:
        await link.close()
    desc: messages.NodeDescriptor | None = found.get("NodeDescriptor")
    view: messages.View | None = found.get("View")
    if desc is not None and desc.node != presented:
        raise PeerImpostor(
            uri, f"its certificate names {presented!r} but its descriptor {desc.node!r}"
        )
    if view is not None and view.node != presented:
        view = None
    return desc, view


class OverlayDriver:
    """One node's membership over MQTT. `publish_local(topic, msg)` publishes on our own broker.

    Beyond the core's view the driver remembers, in bounded lists, the nodes it has talked to
    (`contacts`) and the neighbours it lost to a failed connection (`lost`). With an empty view it
    asks its introducers again and probes those nodes every period; with a view it probes one of
    them every `probe_every` periods (half that while it has lost neighbours). That is how each side of a partition rebuilds its own
    overlay without the introducer, and how the two sides find each other again once the network
    heals. A lost node that does not answer `_PROBES` probes is forgotten.
    """

    def __init__(
        self,
        *,
        node: str,
        grid_uri: str,
        core: Cyclon,
        links: PeerLinks,
        publish_local: PublishLocal,
        period_s: float,
        timeout_s: float,
        introducer: str | None = None,
        identity: Identity | None = None,
        state_expiry_s: int = 30,
        clock: Callable[[], float] = time.monotonic,
        probe_every: int = 4,
    ) -> None:
        self.node = node
        self.grid_uri = grid_uri
        self.core = core
        self._links = links
        self._publish_local = publish_local
        self._period_s = period_s
        self._timeout_s = timeout_s
        self._clock = clock
        self._pending: dict[int, float] = {}  # nonce -> deadline
        self._introducers = [
            u for u in (introducer or "").replace(" ", "").split(",") if u and u != grid_uri
        ]
        self._identity = identity
        self._state_expiry_s = state_expiry_s
        self._probe_every = probe_every
        self._periods = 0
        limit = 2 * core.view_size
        self.contacts: _Recent = _Recent(limit)  # node -> broker, most recent last
        self.lost: _Recent = _Recent(limit)  # neighbours lost to a failed connection
        self._probes: dict[str, int] = {}  # lost node -> unanswered probes

    async def join(self) -> None:
        """Seed the view from an introducer's retained descriptor and view (the first that
        answers)."""
        if self._identity is None:
            return
        for uri in self._introducers:
            try:
                desc, view = await read_introducer(uri, self._identity, self.node)
            except PeerUnreachable as exc:
                _log.warning("node=%s introducer %s unreachable: %s", self.node, uri, exc.reason)
                continue
            self.seed(desc, view)
            await self._dial_admitted()
            _log.info("node=%s joined through %s (%d entries)", self.node, uri, len(self.core))
            return

    @property
    def view(self) -> tuple[messages.ViewEntry, ...]:
        return _to_wire(self.core.view)

    def seed(self, descriptor: messages.NodeDescriptor | None, view: messages.View | None) -> None:
        """Seed the view from an introducer's retained descriptor and view."""
        entries: list[CoreEntry] = []
        if descriptor is not None:
            entries.append(CoreEntry(node=descriptor.node, broker=descriptor.broker, age=0))
        if view is not None:
            entries.extend(_from_wire(view.entries))
        self.core.seed(entries)
        self._remember_view()

    async def publish_view(self) -> None:
        self._remember_view()
        msg = messages.View(node=self.node, ts_s=time.time(), entries=self.view)
        await self._publish_local(render("view", node=self.node), msg)

    def _remember_view(self) -> None:
        for e in self.core.view:
            self.contacts.put(e.node, e.broker)

    def _alive(self, node: str, broker: str) -> None:
        """`node` talked to us: it is a contact, not lost."""
        self.contacts.put(node, broker)
        self.lost.pop(node)
        self._probes.pop(node, None)

    def _lose(self, node: str, broker: str, exc: PeerUnreachable) -> None:
        """A failed exchange with `node` at `broker`: strong evidence that it is gone, unless
        the broker there was not `node`'s at all (a bogus entry: dropped, nothing concluded)."""
        if isinstance(exc, PeerImpostor):
            _log.warning(
                "node=%s dropped a bogus entry: %s at %s (%s)", self.node, node, broker, exc.reason
            )
            self.core.discard(node)
            self.contacts.pop(node)
            return
        _log.info("node=%s neighbour %s unreachable: %s", self.node, node, exc.reason)
        self.core.on_unreachable(node)
        self.lost.put(node, broker)

    async def run(self) -> None:
        """Tick every period and expire unanswered requests, until cancelled."""
        await self.join()
        await self.publish_view()
        while True:
            await asyncio.sleep(self._period_s)
            await self.step()

    async def step(self) -> None:
        """One shuffle period."""
        self._periods += 1
        self._expire()
        if not len(self.core):
            await self.join()  # alone: ask the introducers again, then probe what we remember
        out = self.core.tick(self._clock())
        if out is not None:
            await self._send_request(out)
        # Every period while alone, twice as often as usual while some neighbour is lost (the
        # other side of a partition may be back), else every `probe_every` periods.
        every = 1 if not len(self.core) else self._probe_every // (2 if len(self.lost) else 1)
        if self._periods % max(every, 1) == 0:
            target = self._probe_target()
            if target is not None:
                await self._send_request(self.core.probe(target))
        await self.publish_view()
        await self._links.keep_only({e.broker for e in self.core.view})

    def _probe_target(self) -> CoreEntry | None:
        """A lost neighbour (oldest first), else a contact outside the view."""
        in_view = set(self.core.neighbours())
        for node, broker in self.lost.items():
            if node in in_view:
                continue
            self.lost.put(node, broker)  # to the back: the next probe tries another
            tries = self._probes.get(node, 0) + 1
            if tries > _PROBES:
                self.lost.pop(node)
                self._probes.pop(node, None)
                continue
            self._probes[node] = tries
            return CoreEntry(node, broker, 0)
        for node, broker in self.contacts.items():
            if node not in in_view:
                self.contacts.put(node, broker)
                return CoreEntry(node, broker, 0)
        return None

    def _expire(self) -> None:
        now = self._clock()
        for nonce, deadline in list(self._pending.items()):
            if now >= deadline:
                del self._pending[nonce]
                self.core.on_timeout(nonce)
                _log.info("node=%s shuffle %d timed out", self.node, nonce)

    async def _send_request(self, out: ShuffleOut) -> None:
        request = messages.ShuffleRequest(
            sender=self.node, broker=self.grid_uri, nonce=out.nonce, entries=_to_wire(out.entries)
        )
        topic = render("shuffle", node=out.target.node, peer=self.node)
        try:
            await self._links.publish(
                out.target.broker,
                topic,
                messages.encode(request),
                node=out.target.node,
                qos=1,
                response_topic=render("shuffle_reply", node=self.node, peer=out.target.node),
                correlation_data=str(out.nonce).encode(),
            )
        except PeerUnreachable as exc:
            self.core.on_timeout(out.nonce)
            self._lose(out.target.node, out.target.broker, exc)
            return
        self._pending[out.nonce] = self._clock() + self._timeout_s

    async def push_state(self, state: messages.NodeEnergyState) -> None:
        """Publish our energy state on every neighbour's broker (retained, expiring), all at
        once, each bounded by the links' timeout. It doubles as a probe: a neighbour whose
        broker fails us is dropped at once."""
        payload = messages.encode(state)
        view = self.core.view

        async def push(entry: CoreEntry) -> bool:
            topic = render("neighbour_state", node=entry.node, peer=self.node)
            try:
                await self._links.publish(
                    entry.broker,
                    topic,
                    payload,
                    node=entry.node,
                    qos=1,
                    retain=True,
                    message_expiry_interval=self._state_expiry_s,
                )
            except PeerUnreachable as exc:
                self._lose(entry.node, entry.broker, exc)
                return False
            return True

        delivered = await asyncio.gather(*(push(e) for e in view))
        if not all(delivered):
            await self.publish_view()

    async def on_request(
        self, request: messages.ShuffleRequest, response_topic: str | None
    ) -> None:
        """Answer a shuffle offer (even while our own is pending) on the sender's broker."""
        self._alive(request.sender, request.broker)
        reply_entries = self.core.on_request(
            CoreEntry(node=request.sender, broker=request.broker, age=0),
            _from_wire(request.entries),
        )
        reply = messages.ShuffleReply(
            sender=self.node, nonce=request.nonce, entries=_to_wire(reply_entries)
        )
        # Always the canonical topic, which the sender's ACL lets us write: a response topic
        # named in the request cannot send our answer anywhere else.
        topic = render("shuffle_reply", node=request.sender, peer=self.node)
        try:
            await self._links.publish(
                request.broker, topic, messages.encode(reply), node=request.sender, qos=1
            )
        except PeerUnreachable as exc:
            self._lose(request.sender, request.broker, exc)
        await self._dial_admitted()
        await self.publish_view()

    async def on_reply(self, reply: messages.ShuffleReply) -> None:
        if self._pending.pop(reply.nonce, None) is None:
            _log.debug(
                "node=%s stale shuffle reply %d from %s", self.node, reply.nonce, reply.sender
            )
            return
        self.core.on_reply(reply.nonce, _from_wire(reply.entries))
        broker = self.lost.get(reply.sender) or self.contacts.get(reply.sender)
        if broker is not None:
            self._alive(reply.sender, broker)
        await self._dial_admitted()
        await self.publish_view()

    async def _dial_admitted(self) -> None:
        """Connect, all at once, to the brokers of the entries the last merges admitted (the
        core's `verify` detector); one that cannot be reached is lost as after a failed push."""
        admitted = self.core.take_admitted()
        if not admitted:
            return
        brokers = {e.node: e.broker for e in self.core.view}

        async def dial(node: str, broker: str) -> None:
            try:
                await self._links.link(broker, node)
            except PeerUnreachable as exc:
                self._lose(node, broker, exc)

        await asyncio.gather(*(dial(n, brokers[n]) for n in admitted if n in brokers))


class _Recent:
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
