"""A tool's synchronous MQTT session (paho, MQTT 5): what `redy topic`, `redy view`, `redy node`,
`redy bag`, `redy deploy` and the Home Assistant bridge open on a node's broker, with the
operator's password (local listener) or certificate (grid listener). A refused or unreachable
broker is a BrokerError with one line saying which."""

from __future__ import annotations

import logging
import queue
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import paho.mqtt.client as mqtt

from redy import messages, pki
from redy.errors import BrokerError, InvalidMessage
from redy.transport.paho_client import new_client

_log = logging.getLogger(__name__)
CONNECT_TIMEOUT_S = 5.0


class Received:
    """One message as the tools see it."""

    __slots__ = ("payload", "retained", "t_ns", "t_s", "topic")

    def __init__(self, topic: str, payload: bytes, retained: bool) -> None:
        self.topic = topic
        self.payload = payload
        self.retained = retained
        self.t_s = time.monotonic()
        self.t_ns = time.time_ns()  # wall clock, for recordings


@contextmanager
def connect(
    broker: str,
    user: str | None,
    password: str | None,
    inbox: queue.Queue[Received] | None = None,
    tls: pki.Identity | None = None,
) -> Iterator[mqtt.Client]:
    """A connected paho client (MQTT 5), its network loop in a thread; BrokerError if refused.
    `user` None connects anonymously (a replay broker that allows it). An mqtts:// broker (a
    node's grid listener) needs `tls`: the operator's certificate from the grid's pki/."""
    host, port = messages.parse_uri(broker)
    connected = threading.Event()
    outcome: dict[str, str] = {}
    if broker.startswith("mqtts://") and (tls is None or not tls.cert.exists()):
        raise BrokerError(
            f"{broker} is a grid listener (mutual TLS): give --credentials of a launched node"
            " so its grid's pki/operator.crt can be used"
        )
    client = new_client(
        f"redy-cli-{secrets.token_hex(4)}",
        user=user,
        password=password,
        tls=tls if broker.startswith("mqtts://") else None,
    )

    def on_connect(c: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        outcome["reason"] = str(reason)
        if not reason.is_failure:
            outcome["ok"] = "yes"
        connected.set()

    def on_message(c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        if inbox is not None:
            inbox.put(Received(msg.topic, bytes(msg.payload), bool(msg.retain)))

    client.on_connect = on_connect
    client.on_message = on_message
    try:
        client.connect(host, port, keepalive=30)
    except OSError as exc:
        raise BrokerError(f"cannot reach broker {broker}: {exc.strerror or exc}") from None
    client.loop_start()
    try:
        if not connected.wait(CONNECT_TIMEOUT_S):
            raise BrokerError(f"broker {broker} did not answer within {CONNECT_TIMEOUT_S:.0f} s")
        if "ok" not in outcome:
            raise BrokerError(f"broker {broker} refused user {user!r}: {outcome.get('reason')}")
        yield client
    finally:
        client.disconnect()
        client.loop_stop()


def subscribe(client: mqtt.Client, pattern: str) -> None:
    result, _ = client.subscribe(pattern, qos=1)
    if result != mqtt.MQTT_ERR_SUCCESS:
        raise BrokerError(f"cannot subscribe to {pattern}: {mqtt.error_string(result)}")


def read_retained(
    client: mqtt.Client,
    inbox: queue.Queue[Received],
    topics_: list[str],
    wait_s: float = 1.5,
    on_invalid: Callable[[str], object] | None = None,
) -> dict[str, Any]:
    """The retained message of each topic (decoded), waiting up to `wait_s` seconds; missing
    ones are left out, invalid ones told to `on_invalid` (default: logged)."""
    for t in topics_:
        subscribe(client, t)
    found: dict[str, Any] = {}
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline and len(found) < len(topics_):
        try:
            r = inbox.get(timeout=0.1)
        except queue.Empty:
            continue
        try:
            found[r.topic] = messages.decode(r.topic, r.payload)
        except InvalidMessage as exc:
            (on_invalid or _log.warning)(f"INVALID {exc}")
    return found
