"""The asyncio MQTT client layer (gmqtt, MQTT 5): one place that connects, one that publishes.

Every asyncio connection of the project goes through `AsyncLink`: the governance unit's session
with its own broker, its links to neighbours' grid listeners (`redy.transport.peer_links`) and
the one-shot reads of an introducer. What it guarantees:

- `connect()` is bounded by a timeout on the CONNACK (a broker that accepts TCP and then stalls
  costs one timeout), and `connect_retrying()` retries with `Backoff`, the project's one
  reconnect policy (`redy.transport.backoff`), as does gmqtt's own retry of a lost session;
- `publish()` awaits the broker's PUBACK for QoS 1 within a timeout; a full in-flight window
  (gmqtt's `OverflowError`), a timeout, a broken socket or any other exception of the client
  library becomes `DeliveryFailed`, the one exception a caller has to expect. Nothing a broker
  does or fails to do escapes as another exception.

Timeouts use `asyncio.timeout`, never `asyncio.wait_for`: in Python 3.11 wait_for can swallow a
cancellation that arrives as the awaited thing completes, and a unit would then never stop.

gmqtt gives no handle on a publish's acknowledgement, so `_AckingClient` records the packet id of
each QoS 1 publish and resolves a future when gmqtt drops the stored packet on PUBACK.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from collections.abc import Callable
from typing import Any

import gmqtt
from gmqtt.mqtt.handler import MQTTConnectError

from redy.errors import BrokerError, DeliveryFailed, WrongIdentity
from redy.messages import parse_uri
from redy.transport.backoff import Backoff

# CONNACK codes that refuse our credentials, for good: MQTT 3.1.1's 4 and 5, MQTT 5's 134
# (bad user name or password) and 135 (not authorized).
REFUSED_CONNECT = frozenset({4, 5, 134, 135})

_log = logging.getLogger(__name__)

# The backoff of gmqtt's own retries of a lost session (the governance's own broker).
OWN_BROKER_FIRST_S = 0.25
OWN_BROKER_CAP_S = 2.0


class _AckingClient(gmqtt.Client):  # type: ignore[misc]  # gmqtt ships no types
    """gmqtt.Client whose QoS 1 publishes can be awaited until their PUBACK, and whose retries
    of a lost session wait the project's `Backoff` instead of gmqtt's fixed delay."""

    def __init__(self, client_id: str, *, backoff: Backoff, **kwargs: Any) -> None:
        super().__init__(client_id, **kwargs)
        self._acks: dict[int, asyncio.Future[None]] = {}
        self.backoff = backoff

    async def reconnect(self, delay: bool = False) -> None:
        """gmqtt's retry (it calls this on a lost session, and again with `delay` after each
        failed attempt): the delay it sleeps (`reconnect_delay`, public) is the next backoff."""
        if delay:
            self.reconnect_delay = self.backoff.next_delay()
        await super().reconnect(delay)

    def publish_mid(self, message: gmqtt.Message) -> int:
        """Send `message`; its packet id (QoS 1), or 0 for QoS 0, which gmqtt gives none."""
        mid, package = self._connection.publish(message)
        if message.qos == 0:
            return 0
        self._persistent_storage.push_message(mid, package)
        return int(mid)

    def _remove_message_from_queue(self, mid: int) -> None:  # called by gmqtt on PUBACK
        super()._remove_message_from_queue(mid)
        fut = self._acks.pop(mid, None)
        if fut is not None and not fut.done():
            fut.set_result(None)

    def ack_future(self, mid: int) -> asyncio.Future[None]:
        fut = asyncio.get_running_loop().create_future()
        self._acks[mid] = fut
        return fut

    def forget(self, mid: int) -> None:
        self._acks.pop(mid, None)


OnMessage = Callable[[str, bytes, dict[str, Any]], None]


class AsyncLink:
    """One MQTT 5 connection to one broker.

    `on_message(topic, payload, properties)` runs in the event loop for every message of the
    subscriptions; `subscriptions` are renewed on every (re)connect. `reconnect` lets gmqtt
    re-establish a lost session by itself (the governance's own broker); peer links leave it off
    and are re-opened on demand.
    """

    def __init__(
        self,
        uri: str,
        client_id: str,
        *,
        user: str,
        password: str,
        timeout_s: float = 2.0,
        keepalive_s: int = 5,
        subscriptions: tuple[str, ...] = (),
        on_message: OnMessage | None = None,
        will: gmqtt.Message | None = None,
        reconnect: bool = False,
        on_connect: Callable[[], None] | None = None,
        tls: ssl.SSLContext | None = None,
        expect_cn: str | None = None,
    ) -> None:
        self.uri = uri
        self._host, self._port = parse_uri(uri)
        self._tls = tls
        self._expect_cn = expect_cn
        self._cn: tuple[object, str | None] | None = None  # (TLS transport, its peer's CN)
        self.timeout_s = timeout_s
        self._keepalive_s = keepalive_s
        self._subscriptions = subscriptions
        self._on_message = on_message
        self._on_connect_cb = on_connect
        # gmqtt retries a lost session by itself (`reconnect`), each attempt after the next
        # backoff delay; a node's own broker is on the same host, so the delays start at a
        # quarter of a second and stop growing at 2 s. Peer links do not retry: they are
        # re-opened on demand, a failed one only after PeerLinks' cool-down.
        self._client = _AckingClient(
            client_id,
            clean_session=True,
            will_message=will,
            backoff=Backoff(first_s=OWN_BROKER_FIRST_S, cap_s=OWN_BROKER_CAP_S),
        )
        self._client.set_auth_credentials(user, password)
        self._client.set_config({"reconnect_retries": -1 if reconnect else 0})
        self._client.on_connect = self._connected
        self._client.on_message = self._message

    @property
    def is_connected(self) -> bool:
        return bool(self._client.is_connected)

    def _connected(self, client: gmqtt.Client, *_: Any) -> None:
        self._client.backoff.reset()
        for topic in self._subscriptions:
            client.subscribe(topic, qos=1)
        if self._on_connect_cb is not None:
            self._on_connect_cb()

    def _message(self, _c: Any, topic: str, payload: bytes, _qos: int, props: Any) -> int:
        if self._on_message is not None:
            try:
                self._on_message(topic, payload, dict(props or {}))
            except Exception:  # a handler bug must not kill gmqtt's reader
                _log.exception("handling a message on %s from %s", topic, self.uri)
        return 0

    async def connect(self) -> None:
        """Connect once; DeliveryFailed if refused, unreachable or no CONNACK in time;
        WrongIdentity if the broker's certificate does not name `expect_cn`.

        An mqtts:// URI needs `tls`; a plain mqtt:// one is dialled only without it."""
        secure = self.uri.startswith("mqtts://")
        if secure != (self._tls is not None):
            raise WrongIdentity(
                self.uri,
                "plain mqtt:// refused between nodes (mutual TLS only)"
                if self._tls is not None
                else "mqtts:// needs a TLS identity",
            )
        try:
            async with asyncio.timeout(self.timeout_s):
                await self._client.connect(
                    self._host, self._port, ssl=self._tls or False, keepalive=self._keepalive_s
                )
        except TimeoutError:
            await self.close()
            raise DeliveryFailed(self.uri, f"no CONNACK within {self.timeout_s:g} s") from None
        except ssl.SSLCertVerificationError as exc:
            await self.close()
            raise WrongIdentity(self.uri, f"certificate refused: {exc.verify_message}") from None
        except Exception as exc:  # OSError, MQTTConnectError and whatever a broken peer provokes
            await self.close()
            raise DeliveryFailed(self.uri, _reason(exc), connack_code(exc)) from None
        self._no_delay()
        if self._expect_cn is not None:
            presented = self.peer_cn()
            if presented != self._expect_cn:
                await self.close()
                raise WrongIdentity(
                    self.uri,
                    f"certificate names {presented!r}, not {self._expect_cn!r}",
                    presented,
                )

    def _no_delay(self) -> None:
        """Send small packets at once: with Nagle's algorithm a publish that follows another
        waits for the peer's delayed ACK (40 ms on Linux), on every hop of a gossip round."""
        transport = getattr(self._client._connection, "_transport", None)
        sock = transport.get_extra_info("socket") if transport is not None else None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def peer_cn(self) -> str | None:
        """The CN of the broker's certificate (None without TLS)."""
        from redy.pki import common_name

        transport = getattr(self._client._connection, "_transport", None)
        if self._cn is not None and self._cn[0] is transport:
            return self._cn[1]  # one TLS session, one certificate: parsed once
        sslobj = transport.get_extra_info("ssl_object") if transport is not None else None
        der = sslobj.getpeercert(binary_form=True) if sslobj is not None else None
        cn = common_name(der) if der else None
        self._cn = (transport, cn)
        return cn

    async def connect_retrying(self, *, attempts: int = 0, backoff: Backoff | None = None) -> None:
        """Connect, retrying with `backoff` (forever when `attempts` is 0); a refusal of our
        credentials is final (BrokerError)."""
        backoff = backoff or Backoff()
        n = 0
        while True:
            n += 1
            try:
                await self.connect()
                return
            except DeliveryFailed as exc:
                if exc.code in REFUSED_CONNECT:
                    raise BrokerError(f"broker {self.uri} refused us: {exc.reason}") from None
                if attempts and n >= attempts:
                    raise
                delay = backoff.next_delay()
                _log.warning("%s; retrying in %.1f s", exc, delay)
                await asyncio.sleep(delay)

    async def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        qos: int = 1,
        retain: bool = False,
        timeout_s: float | None = None,
        **properties: Any,
    ) -> None:
        """Publish and, for QoS 1, wait for the PUBACK; DeliveryFailed otherwise."""
        ack = self.send(topic, payload, qos=qos, retain=retain, **properties)
        if ack is not None:
            await self.acked(ack, timeout_s)

    def send(
        self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False, **properties: Any
    ) -> tuple[int, asyncio.Future[None]] | None:
        """Hand a publish to the socket now, with no await before it goes out; what `acked`
        waits on (QoS 1) or None (QoS 0). DeliveryFailed if it cannot be sent."""
        if not self.is_connected:
            raise DeliveryFailed(self.uri, "not connected")
        try:
            mid = self._client.publish_mid(
                gmqtt.Message(topic, payload, qos=qos, retain=retain, **properties)
            )
        except OverflowError:
            raise DeliveryFailed(self.uri, "in-flight window full (no PUBACKs)") from None
        except Exception as exc:
            raise DeliveryFailed(self.uri, _reason(exc)) from None
        if qos == 0:
            return None
        return mid, self._client.ack_future(mid)

    async def acked(
        self, ack: tuple[int, asyncio.Future[None]], timeout_s: float | None = None
    ) -> None:
        """Wait for the PUBACK of a `send`; DeliveryFailed if none comes within the timeout."""
        mid, fut = ack
        timeout = self.timeout_s if timeout_s is None else timeout_s
        try:
            async with asyncio.timeout(timeout):
                await fut
        except TimeoutError:
            raise DeliveryFailed(self.uri, f"no PUBACK within {timeout:g} s") from None
        finally:
            self._client.forget(mid)

    async def close(self) -> None:
        try:
            async with asyncio.timeout(1.0):
                await self._client.disconnect()
        except (
            Exception
        ) as exc:  # a dead peer's socket may fail in many ways; it is gone either way
            _log.debug("closing link to %s: %s", self.uri, exc)
        with contextlib.suppress(Exception):
            transport = getattr(self._client._connection, "_transport", None)
            if transport is not None:
                transport.abort()


def connack_code(exc: BaseException) -> int | None:
    """The CONNACK reason code of gmqtt's refused connect (its MQTTConnectError keeps it in
    `_code`, a private attribute of gmqtt 0.8: pinned, and tests/transport checks it)."""
    if isinstance(exc, MQTTConnectError):
        code = getattr(exc, "_code", None)
        return code if isinstance(code, int) else None
    return None


def _reason(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
