"""Distant mode, membership: drives the sans-IO overlay (redy.membership.overlay) over MQTT for
one governance unit.

The overlay decides; this driver only moves messages and keeps time:
- every `period_s` it ticks the core; the request goes to the chosen neighbour's grid listener on
  `redy/<Q>/membership/shuffle` with an MQTT 5 response topic (our own `.../shuffle/reply`) and the
  nonce as correlation data;
- replies and requests arrive on our own broker (the governance reads only its own broker);
- no reply within `timeout_s`: the core is told, and Q stays removed; a refused or timed-out
  connection to Q's broker is also reported as strong evidence (`on_unreachable`);
- after every change the view is republished, retained, on our own broker, and links to brokers
  that left the view are closed;
- the signed shuffle's proofs against members (`messages.Evidence`) go to the neighbours'
  `redy/<N>/membership/evidence` when the overlay returns them, all at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from typing import Any

from redy import messages
from redy.errors import DeliveryFailed, InvalidMessage, PeerImpostor, PeerUnreachable
from redy.membership.cyclon import Cyclon
from redy.membership.overlay import Overlay, RecentPeers, Send
from redy.membership.secure import SecureCyclon
from redy.membership.secure_overlay import SecureOverlay
from redy.pki import Identity
from redy.topics import render, subscription
from redy.transport.client import AsyncLink
from redy.transport.peer_links import PeerLinks

_log = logging.getLogger(__name__)

PublishLocal = Callable[[str, Any], Awaitable[Any]]


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
        subscriptions=(subscription("descriptor"), subscription("view")),
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
    """One node's membership over MQTT: the loop around `redy.membership.overlay.Overlay`.
    `publish_local(topic, msg)` publishes on our own broker. It sleeps, sends what the overlay
    returns, feeds back what happened, and reads introducers; the overlay decides the rest."""

    def __init__(
        self,
        *,
        node: str,
        grid_uri: str,
        core: Cyclon | SecureCyclon,
        links: PeerLinks,
        publish_local: PublishLocal,
        period_s: float,
        timeout_s: float,
        introducer: str | None = None,
        identity: Identity | None = None,
        state_expiry_s: int = 30,
        clock: Callable[[], float] = time.monotonic,
        probe_every: int = 4,
        overlay: SecureOverlay | None = None,
    ) -> None:
        self.node = node
        # The signed shuffle's overlay (its core is `core`), or the plain one around `core`.
        self.overlay: Overlay | SecureOverlay
        if overlay is not None:
            self.overlay = overlay
        else:
            assert isinstance(core, Cyclon)
            self.overlay = Overlay(
                node=node,
                grid_uri=grid_uri,
                core=core,
                timeout_s=timeout_s,
                probe_every=probe_every,
            )
        self.core = core
        self._links = links
        self._publish_local = publish_local
        self._period_s = period_s
        self._clock = clock
        self._introducers = [
            u for u in (introducer or "").replace(" ", "").split(",") if u and u != grid_uri
        ]
        self._identity = identity
        self._state_expiry_s = state_expiry_s
        self._unverified: Counter[str] = Counter()  # admitted entries whose dial is under way

    @property
    def view(self) -> tuple[messages.ViewEntry, ...]:
        """The neighbours: the core's view less the entries whose dial is still under way (a
        candidate an attacker offered is neither published, nor pushed to, nor gossiped with
        until its broker has answered as that node)."""
        pending = self._unverified.keys() | self.core.awaiting_dial()
        view = self.overlay.view
        return tuple(e for e in view if e.node not in pending) if pending else view

    def broker_of(self, node: str) -> str | None:
        """The broker of `node` as its view entry or its last exchange with us gave it (None:
        unknown)."""
        for e in self.view:
            if e.node == node:
                return e.broker
        contacts: RecentPeers | None = getattr(self.overlay, "contacts", None)
        return contacts.get(node) if contacts is not None else None

    @property
    def lost(self) -> RecentPeers:
        return self.overlay.lost

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
            self.overlay.seed(desc, view)
            await self._dial_admitted()
            _log.info("node=%s joined through %s (%d entries)", self.node, uri, len(self.core))
            return

    async def publish_view(self) -> None:
        msg = messages.View(node=self.node, ts_s=time.time(), entries=self.view)
        await self._publish_local(render("view", node=self.node), msg)

    async def run(self) -> None:
        """Tick every period, until cancelled."""
        await self.join()
        await self.publish_view()
        while True:
            await asyncio.sleep(self._period_s)
            await self.step()

    async def step(self) -> None:
        """One shuffle period."""
        if self.overlay.alone:
            await self.join()  # alone: ask the introducers again; the overlay probes the rest
        sends = self.overlay.tick(self._clock())
        for send in sends:
            if not isinstance(send.message, messages.Evidence):
                await self._send(send)
        await self._send_all(s for s in sends if isinstance(s.message, messages.Evidence))
        await self.publish_view()
        await self._links.keep_only({e.broker for e in self.core.view})

    async def _send(self, send: Send) -> None:
        m = send.message
        if isinstance(m, messages.ShuffleRequest):
            topic = render("shuffle", node=send.node, peer=self.node)
            extra: dict[str, Any] = {
                "response_topic": render("shuffle_reply", node=self.node, peer=send.node),
                "correlation_data": str(m.nonce).encode(),
            }
        elif isinstance(m, messages.Evidence):
            topic, extra = render("evidence", node=send.node, peer=self.node), {}
        else:
            # Always the canonical topic, which the sender's ACL lets us write: a response
            # topic named in the request cannot send our answer anywhere else.
            topic, extra = render("shuffle_reply", node=send.node, peer=self.node), {}
        try:
            await self._links.publish(
                send.broker, topic, messages.encode(m), node=send.node, qos=1, **extra
            )
        except PeerUnreachable as exc:
            self.overlay.failed(send, exc.reason, isinstance(exc, PeerImpostor))
            return
        self.overlay.sent(send, self._clock())

    async def push_state(self, state: messages.NodeEnergyState) -> None:
        """Publish our energy state on every neighbour's broker (retained, expiring), all at
        once, each bounded by the links' timeout. It doubles as a probe: a neighbour whose
        broker fails us is dropped at once."""
        payload = messages.encode(state)

        async def push(entry: messages.ViewEntry) -> bool:
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
                impostor = isinstance(exc, PeerImpostor)
                self.overlay.unreachable(entry.node, entry.broker, exc.reason, impostor)
                return False
            return True

        delivered = await asyncio.gather(*(push(e) for e in self.view))
        if not all(delivered):
            await self.publish_view()

    async def on_request(self, request: messages.ShuffleRequest) -> None:
        """Answer a shuffle offer (even while our own is pending) on the sender's broker, on
        the canonical reply topic whatever response topic the request names."""
        await self._send(self.overlay.on_request(request))
        await self._send_evidence()
        await self._dial_admitted()
        await self.publish_view()

    async def on_reply(self, reply: messages.ShuffleReply) -> None:
        if self.overlay.on_reply(reply):
            await self._send_evidence()
            await self._dial_admitted()
            await self.publish_view()

    def on_evidence(self, msg: messages.Evidence) -> Coroutine[Any, Any, None] | None:
        """Check a neighbour's proof against a member now (the overlay bounds the work); the
        sending on of a proof that holds, to run as its own task, or None."""
        if not isinstance(self.overlay, SecureOverlay):
            return None
        sends = self.overlay.on_evidence(msg)
        if not sends:
            return None

        async def spread() -> None:
            await self._send_all(sends)
            await self.publish_view()

        return spread()

    async def _send_evidence(self) -> None:
        if isinstance(self.overlay, SecureOverlay):
            await self._send_all(self.overlay.take_evidence())

    async def _send_all(self, sends: Iterable[Send]) -> None:
        """Send, all at once, each bounded by the links' timeout."""
        await asyncio.gather(*(self._send(s) for s in sends))

    async def _dial_admitted(self) -> None:
        """Connect, all at once, to the brokers of the entries the last merges admitted (the
        core's `verify` detector; the link the next state push would open anyway): one that
        cannot be reached is lost as after a failed push, a dead node that a stale copy brought
        back is dropped within one connection attempt instead of a period later."""
        admitted = self.core.take_admitted()
        if not admitted:
            return
        brokers = {e.node: e.broker for e in self.core.view}
        admitted = tuple(n for n in admitted if n in brokers)
        # Marked before any other task runs: the dials start only at the gather's first await,
        # and a view published in between would show the candidates unchecked.
        self._unverified.update(admitted)

        async def dial(node: str, broker: str) -> None:
            try:
                await self._links.link(broker, node)
            except PeerUnreachable as exc:
                impostor = isinstance(exc, PeerImpostor)
                self.overlay.unreachable(node, broker, exc.reason, impostor)
            finally:
                self._unverified[node] -= 1
                if self._unverified[node] <= 0:
                    del self._unverified[node]

        await asyncio.gather(*(dial(n, brokers[n]) for n in admitted))
