"""Distant mode, membership: drives the pure shuffle core over MQTT for one governance unit.

The core (`redy.membership`) decides; this driver only moves messages and keeps time:
- every `period_s` it ticks the core; the request goes to the chosen neighbour's grid listener on
  `redy/<Q>/membership/shuffle` with an MQTT 5 response topic (our own `.../shuffle/reply`) and the
  nonce as correlation data;
- replies and requests arrive on our own broker (the governance reads only its own broker);
- no reply within `timeout_s`: the core is told, and Q stays removed; a refused or timed-out
  connection to Q's broker is also reported as strong evidence (`on_unreachable`);
- after every change the view is republished, retained, on our own broker, and links to brokers
  that left the view are closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import gmqtt

from redy import messages
from redy.errors import InvalidMessage
from redy.membership.cyclon import Cyclon, ShuffleOut
from redy.membership.cyclon import ViewEntry as CoreEntry
from redy.topics import render
from redy.transport.peer_links import PeerLinks, PeerUnreachable

_log = logging.getLogger(__name__)

PublishLocal = Callable[[str, Any], Awaitable[None]]


def _to_wire(entries: tuple[CoreEntry, ...] | list[CoreEntry]) -> tuple[messages.ViewEntry, ...]:
    return tuple(messages.ViewEntry(node=e.node, broker=e.broker, age=e.age) for e in entries)


def _from_wire(entries: tuple[messages.ViewEntry, ...]) -> list[CoreEntry]:
    return [CoreEntry(node=e.node, broker=e.broker, age=e.age) for e in entries]


async def read_introducer(
    uri: str, user: str, password: str, client_id: str, timeout_s: float = 3.0
) -> tuple[messages.NodeDescriptor | None, messages.View | None]:
    """Read an introducer's retained descriptor and view from its grid listener."""
    host, port = messages.parse_uri(uri)
    found: dict[str, Any] = {}
    got_both = asyncio.Event()

    def on_message(_client: Any, topic: str, payload: bytes, _qos: int, _props: Any) -> int:
        try:
            msg = messages.decode(topic, payload)
        except InvalidMessage as exc:
            _log.warning("introducer %s sent an invalid message: %s", uri, exc)
            return 0
        found[type(msg).__name__] = msg
        if "NodeDescriptor" in found and "View" in found:
            got_both.set()
        return 0

    client = gmqtt.Client(f"{client_id}-join", clean_session=True)
    client.set_auth_credentials(user, password)
    client.on_message = on_message
    try:
        await asyncio.wait_for(client.connect(host, port, keepalive=10), timeout_s)
    except (TimeoutError, OSError, gmqtt.MQTTConnectError) as exc:
        raise PeerUnreachable(uri, str(exc) or type(exc).__name__) from None
    try:
        client.subscribe("redy/+/descriptor", qos=1)
        client.subscribe("redy/+/membership/view", qos=1)
        # A fresh introducer may have no view yet: its descriptor is enough.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(got_both.wait(), timeout_s)
    finally:
        await client.disconnect()
    return found.get("NodeDescriptor"), found.get("View")


class OverlayDriver:
    """One node's membership over MQTT. `publish_local(topic, msg)` publishes on our own broker."""

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
        grid_password: str = "",
        state_expiry_s: int = 30,
        clock: Callable[[], float] = time.monotonic,
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
        self._reply_topic = render("shuffle_reply", node=node)
        self._introducer = introducer
        self._grid_password = grid_password
        self._state_expiry_s = state_expiry_s

    async def join(self) -> None:
        """Seed the view from the introducer's retained descriptor and view (if reachable)."""
        if not self._introducer or self._introducer == self.grid_uri:
            return
        try:
            desc, view = await read_introducer(
                self._introducer, "grid", self._grid_password, self.node
            )
        except PeerUnreachable as exc:
            _log.warning("node=%s introducer unreachable: %s", self.node, exc.reason)
            return
        self.seed(desc, view)
        _log.info(
            "node=%s joined through %s (%d entries)", self.node, self._introducer, len(self.core)
        )

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

    async def publish_view(self) -> None:
        msg = messages.View(node=self.node, ts_s=time.time(), entries=self.view)
        await self._publish_local(render("view", node=self.node), msg)

    async def run(self) -> None:
        """Tick every period and expire unanswered requests, until cancelled."""
        await self.join()
        await self.publish_view()
        while True:
            await asyncio.sleep(self._period_s)
            await self._expire()
            if not len(self.core):
                await self.join()  # alone: ask the introducer again
            out = self.core.tick(self._clock())
            if out is not None:
                await self._send_request(out)
            await self.publish_view()
            await self._links.keep_only({e.broker for e in self.core.view})

    async def _expire(self) -> None:
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
        topic = render("shuffle", node=out.target.node)
        try:
            await self._links.publish(
                out.target.broker,
                topic,
                messages.encode(request),
                qos=1,
                response_topic=self._reply_topic,
                correlation_data=str(out.nonce).encode(),
            )
        except PeerUnreachable as exc:
            _log.info(
                "node=%s neighbour %s unreachable: %s", self.node, out.target.node, exc.reason
            )
            self.core.on_timeout(out.nonce)
            self.core.on_unreachable(out.target.node)
            return
        self._pending[out.nonce] = self._clock() + self._timeout_s

    async def push_state(self, state: messages.NodeEnergyState) -> None:
        """Publish our energy state on every neighbour's broker (retained, expiring), which
        doubles as a probe: a neighbour whose broker refuses us is dropped at once."""
        payload = messages.encode(state)
        changed = False
        for entry in self.core.view:
            topic = render("neighbour_state", node=entry.node, peer=self.node)
            try:
                await self._links.publish(
                    entry.broker,
                    topic,
                    payload,
                    qos=1,
                    retain=True,
                    message_expiry_interval=self._state_expiry_s,
                )
            except PeerUnreachable as exc:
                _log.info("node=%s neighbour %s unreachable: %s", self.node, entry.node, exc.reason)
                self.core.on_unreachable(entry.node)
                changed = True
        if changed:
            await self.publish_view()

    async def on_request(
        self, request: messages.ShuffleRequest, response_topic: str | None
    ) -> None:
        """Answer a shuffle offer (even while our own is pending) on the sender's broker."""
        reply_entries = self.core.on_request(
            CoreEntry(node=request.sender, broker=request.broker, age=0),
            _from_wire(request.entries),
        )
        reply = messages.ShuffleReply(
            sender=self.node, nonce=request.nonce, entries=_to_wire(reply_entries)
        )
        topic = response_topic or render("shuffle_reply", node=request.sender)
        try:
            await self._links.publish(request.broker, topic, messages.encode(reply), qos=1)
        except PeerUnreachable as exc:
            _log.info("node=%s cannot answer %s: %s", self.node, request.sender, exc.reason)
            self.core.on_unreachable(request.sender)
        await self.publish_view()

    async def on_reply(self, reply: messages.ShuffleReply) -> None:
        if self._pending.pop(reply.nonce, None) is None:
            _log.debug(
                "node=%s stale shuffle reply %d from %s", self.node, reply.nonce, reply.sender
            )
            return
        self.core.on_reply(reply.nonce, _from_wire(reply.entries))
        await self.publish_view()
