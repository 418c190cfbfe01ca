"""Connections from a governance unit to its neighbours' grid listeners (MQTT 5).

A governance unit reads only its own broker and writes to its neighbours' brokers. `PeerLinks`
holds at most `max_links` connections (`redy.transport.client.AsyncLink`), one per neighbour
broker URI, opened on first use and closed when the view has not named that broker for
`idle_s` with no use, or when the least recently used goes beyond `max_links`: shuffles move
entries in and out of views all the time, and a TLS dial per admitted entry (mutual
certificates, both ends) cost more CPU than the idle connections it saved. Every
connect and publish is bounded by a timeout and every failure, whatever its cause (refused, no
CONNACK, no PUBACK, full window, lost socket), is one `PeerUnreachable`: the membership driver
takes it as strong evidence that the neighbour is gone, the market keeps the push's mass. A
broker that failed is remembered as bad for `cooldown_s`: further sends to it fail at once
instead of costing another timeout each.

A closed link is garbage in reference cycles (gmqtt's client and its packet handler, asyncio's
TLS protocol and transport) that only a full collection frees, with its 256 KiB TLS read buffer
and OpenSSL's state; CPython runs one rarely in a long-lived process (a spared governance unit
of the chaos hour: two in 56 minutes; one forced then freed 19 closed links and 3.9 MB). So
once links have closed, `keep_only` collects, at most every COLLECT_EVERY_S.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from redy.errors import DeliveryFailed, PeerImpostor, PeerUnreachable, WrongIdentity
from redy.pki import Identity
from redy.transport.client import AsyncLink

_log = logging.getLogger(__name__)

COLLECT_EVERY_S = 30.0  # at most one full collection this often, and only after links closed


class PeerLinks:
    """A bounded set of connections to neighbours' grid listeners.

    `node` is this node's id; `identity` its certificate (CN = node id), which peers' brokers
    take as our username and client id. Every link is mutual TLS, and the broker at the other
    end must present the certificate of the node we mean (`publish(..., node=)`).
    """

    def __init__(
        self,
        node: str,
        identity: Identity,
        *,
        max_links: int = 32,
        timeout_s: float = 2.0,
        keepalive_s: int = 10,
        cooldown_s: float | None = None,
        idle_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._node = node
        self._tls = identity.client_context()
        self._max_links = max_links
        self._timeout_s = timeout_s
        self._keepalive_s = keepalive_s
        self._cooldown_s = 2 * timeout_s if cooldown_s is None else cooldown_s
        self._idle_s = idle_s
        self._clock = clock
        self._links: OrderedDict[str, AsyncLink] = OrderedDict()
        self._used: dict[str, float] = {}  # uri -> last use
        self._locks: dict[str, asyncio.Lock] = {}
        # uri -> (until, reason, the node whose certificate it presented if that was the fault)
        self._bad: dict[str, tuple[float, str, str | None]] = {}
        self.dials = 0  # connections opened (attempted) to peers' brokers
        self._closed = 0  # links closed (or failed to open) since the last collection
        self._collected_at = clock()
        self.failures = 0  # dials and deliveries that failed

    @property
    def open_uris(self) -> tuple[str, ...]:
        return tuple(self._links)

    def _check_bad(self, uri: str, node: str | None) -> None:
        bad = self._bad.get(uri)
        if bad is None:
            return
        until, reason, presented = bad
        if self._clock() >= until:
            del self._bad[uri]
        elif presented is None:
            raise PeerUnreachable(uri, f"failed recently ({reason})")
        elif node is not None and node != presented:
            raise PeerImpostor(uri, f"failed recently ({reason})", presented)

    def _mark_bad(self, uri: str, reason: str, presented: str | None = None) -> None:
        self.failures += 1
        self._bad[uri] = (self._clock() + self._cooldown_s, reason, presented)
        if len(self._bad) > 4 * self._max_links:  # bounded: forget the oldest verdicts
            for old in list(self._bad)[: len(self._bad) - 4 * self._max_links]:
                del self._bad[old]

    async def link(self, uri: str, node: str | None = None) -> AsyncLink:
        """The open connection to `uri` (whose broker must be `node`'s), opening it (and closing
        the least recently used one beyond `max_links`) if needed; PeerUnreachable if it cannot
        be had, PeerImpostor if the broker there is not `node`'s."""
        self._check_bad(uri, node)
        lock = self._locks.setdefault(uri, asyncio.Lock())
        async with lock:
            link = self._links.get(uri)
            if link is not None and link.is_connected:
                if node is not None and link.peer_cn() != node:
                    raise PeerImpostor(uri, f"the broker there is {link.peer_cn()!r}, not {node!r}")
                self._links.move_to_end(uri)
                self._used[uri] = self._clock()
                return link
            if link is not None:
                await self.close(uri)
            self._check_bad(uri, node)  # another task may have failed on it while we waited
            link = AsyncLink(
                uri,
                self._node,
                user=self._node,  # ignored by the broker: the certificate's CN is the username
                password="",
                timeout_s=self._timeout_s,
                keepalive_s=self._keepalive_s,
                tls=self._tls,
                expect_cn=node,
            )
            self.dials += 1
            self._closed += 1  # until it connects: a failed dial leaves a closed client behind
            try:
                await link.connect()
            except WrongIdentity as exc:
                self._mark_bad(uri, exc.reason, exc.presented or "")
                raise PeerImpostor(uri, exc.reason, exc.presented) from None
            except DeliveryFailed as exc:
                self._mark_bad(uri, exc.reason)
                raise PeerUnreachable(uri, exc.reason) from None
            self._closed -= 1
            self._links[uri] = link
            self._used[uri] = self._clock()
            while len(self._links) > self._max_links:
                await self.close(next(iter(self._links)))
            return link

    async def publish(
        self,
        uri: str,
        topic: str,
        payload: bytes,
        *,
        node: str | None = None,
        qos: int = 1,
        retain: bool = False,
        **properties: Any,
    ) -> None:
        """Publish on `node`'s broker at `uri` and wait for its PUBACK (QoS 1); PeerUnreachable
        (or PeerImpostor), and nothing else, if that does not happen within the timeout."""
        link = await self.link(uri, node)
        try:
            await link.publish(topic, payload, qos=qos, retain=retain, **properties)
        except DeliveryFailed as exc:
            self._mark_bad(uri, exc.reason)
            await self.close(uri)  # a stalled window never drains: start afresh next time
            raise PeerUnreachable(uri, exc.reason) from None

    async def close(self, uri: str) -> None:
        link = self._links.pop(uri, None)
        self._used.pop(uri, None)
        if link is not None:
            await link.close()
            self._closed += 1
        lock = self._locks.get(uri)
        if lock is not None and not lock.locked() and uri not in self._links:
            del self._locks[uri]

    async def keep_only(self, uris: set[str]) -> None:
        """Close every link whose broker is not in `uris` (the current view) and that is lost
        or has not been used for `idle_s`."""
        stale = self._clock() - self._idle_s
        for uri, link in list(self._links.items()):
            if uri not in uris and (not link.is_connected or self._used.get(uri, 0.0) <= stale):
                await self.close(uri)
        # A dial that failed left its lock behind (its broker never got a link): without this,
        # every URI ever named (a hostile member can name a new port each time) kept one.
        for uri in [
            u for u, lock in self._locks.items() if u not in self._links and not lock.locked()
        ]:
            del self._locks[uri]
        now = self._clock()
        if self._closed > 0 and now - self._collected_at >= COLLECT_EVERY_S:
            self._closed, self._collected_at = 0, now
            gc.collect()

    async def close_all(self) -> None:
        for uri in list(self._links):
            await self.close(uri)
