"""Connections from a governance unit to its neighbours' grid listeners (gmqtt, MQTT 5).

A governance unit reads only its own broker and writes to its neighbours' brokers. `PeerLinks`
holds at most `max_links` client connections, one per neighbour broker URI, opened on first use
and closed when the view no longer names that broker. Every connect and publish is bounded by a
timeout; a refused or timed-out connection raises `PeerUnreachable`, which the membership driver
takes as strong evidence that the neighbour is gone.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from typing import Any

import gmqtt

from redy.errors import BrokerError
from redy.messages import parse_uri

_log = logging.getLogger(__name__)


class PeerUnreachable(BrokerError):
    """A neighbour's grid listener refused us or did not answer in time."""

    def __init__(self, uri: str, reason: str) -> None:
        super().__init__(f"peer broker {uri} unreachable: {reason}")
        self.uri = uri
        self.reason = reason


class PeerLinks:
    """A bounded set of gmqtt connections to neighbours' grid listeners.

    `node` is this node's id, used as MQTT client id (the peers' ACL patterns confine us to our
    own topics by it); `user`/`password` are the grid credential.
    """

    def __init__(
        self,
        node: str,
        user: str,
        password: str,
        *,
        max_links: int = 32,
        timeout_s: float = 2.0,
        keepalive_s: int = 10,
    ) -> None:
        self._node = node
        self._user = user
        self._password = password
        self._max_links = max_links
        self._timeout_s = timeout_s
        self._keepalive_s = keepalive_s
        self._links: OrderedDict[str, gmqtt.Client] = OrderedDict()
        self._locks: dict[str, asyncio.Lock] = {}

    @property
    def open_uris(self) -> tuple[str, ...]:
        return tuple(self._links)

    async def _open(self, uri: str) -> gmqtt.Client:
        host, port = parse_uri(uri)
        client = gmqtt.Client(self._node, clean_session=True)
        client.set_auth_credentials(self._user, self._password)
        # We manage peer liveness ourselves: a lost link is closed, not retried forever.
        client.set_config({"reconnect_retries": 0, "reconnect_delay": 1})
        try:
            await asyncio.wait_for(
                client.connect(host, port, keepalive=self._keepalive_s), self._timeout_s
            )
        except TimeoutError:
            await _close_quietly(client)
            raise PeerUnreachable(uri, f"no CONNACK within {self._timeout_s:g} s") from None
        except (OSError, gmqtt.MQTTConnectError) as exc:
            await _close_quietly(client)
            raise PeerUnreachable(uri, str(exc) or type(exc).__name__) from None
        return client

    async def link(self, uri: str) -> gmqtt.Client:
        """The open connection to `uri`, opening it (and closing the least recently used one
        beyond `max_links`) if needed."""
        lock = self._locks.setdefault(uri, asyncio.Lock())
        async with lock:
            client = self._links.get(uri)
            if client is not None and client.is_connected:
                self._links.move_to_end(uri)
                return client
            if client is not None:
                await self.close(uri)
            client = await self._open(uri)
            self._links[uri] = client
            while len(self._links) > self._max_links:
                oldest = next(iter(self._links))
                await self.close(oldest)
            return client

    async def publish(
        self,
        uri: str,
        topic: str,
        payload: bytes,
        *,
        qos: int = 1,
        retain: bool = False,
        **properties: Any,
    ) -> None:
        """Publish on a neighbour's broker; PeerUnreachable if its link cannot be had."""
        client = await self.link(uri)
        client.publish(topic, payload, qos=qos, retain=retain, **properties)

    async def close(self, uri: str) -> None:
        client = self._links.pop(uri, None)
        if client is not None:
            await _close_quietly(client)

    async def keep_only(self, uris: set[str]) -> None:
        """Close every link whose broker is not in `uris` (the current view)."""
        for uri in [u for u in self._links if u not in uris]:
            await self.close(uri)

    async def close_all(self) -> None:
        for uri in list(self._links):
            await self.close(uri)


async def _close_quietly(client: gmqtt.Client) -> None:
    try:
        await asyncio.wait_for(client.disconnect(), 1.0)
    except Exception as exc:  # a dead peer's socket may fail in many ways; it is gone either way
        _log.debug("closing peer link: %s", exc)
