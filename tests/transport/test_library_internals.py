"""What redy.transport takes from its two MQTT libraries beyond their public API, held to the
pinned versions: these tests fail when a gmqtt or paho release changes it. Against a real
broker: a refused login is known by its CONNACK code in both libraries, not by its text."""

from __future__ import annotations

import asyncio
import random
import socket
import time
from importlib.metadata import version
from typing import Any

import gmqtt
import pytest
from gmqtt.mqtt.handler import MQTTConnectError

from redy.brokers.probe import try_connect, wait_authenticated
from redy.errors import BrokerError, DeliveryFailed
from redy.transport.backoff import Backoff
from redy.transport.client import OWN_BROKER_CAP_S, REFUSED_CONNECT, AsyncLink, connack_code
from redy.transport.paho_client import RECONNECT_MAX_S, RECONNECT_MIN_S, new_client, refused_login

pytestmark = pytest.mark.integration


def test_the_pinned_versions() -> None:
    major, minor = (int(x) for x in version("gmqtt").split(".")[:2])
    assert (major, minor) == (0, 8)
    assert version("paho-mqtt").startswith("2.")


def test_gmqtt_keeps_what_the_acking_client_overrides() -> None:
    """_AckingClient overrides `_remove_message_from_queue` (called on PUBACK) and uses
    `_connection.publish` and `_persistent_storage.push_message`; MQTTConnectError keeps its
    code in `_code`."""
    client = gmqtt.Client("probe")
    assert callable(client._remove_message_from_queue)
    assert callable(client._persistent_storage.push_message)
    assert connack_code(MQTTConnectError(134)) == 134
    assert connack_code(OSError("refused")) is None


async def test_gmqtt_internals_on_a_real_connection(process_broker: Any) -> None:
    broker = process_broker("gas-1")
    link = AsyncLink(
        broker.uri, "me", user="operator", password=broker.credentials.password("operator")
    )
    await link.connect()
    try:
        transport = link._client._connection._transport  # what _no_delay and peer_cn read
        sock = transport.get_extra_info("socket")
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        await link.publish("redy/gas-1/probe", b"{}", qos=1)  # publish_mid, awaited PUBACK
    finally:
        await link.close()


async def test_a_refused_login_is_final_by_its_code_in_gmqtt(process_broker: Any) -> None:
    broker = process_broker("gas-1")
    link = AsyncLink(broker.uri, "me", user="operator", password="wrong", timeout_s=2.0)
    with pytest.raises(DeliveryFailed) as refused:
        await link.connect()
    assert refused.value.code in REFUSED_CONNECT
    with pytest.raises(BrokerError, match="refused us"):
        await asyncio.wait_for(link.connect_retrying(attempts=5), 10)


def test_a_refused_login_is_known_by_its_code_in_paho(process_broker: Any) -> None:
    broker = process_broker("gas-1")
    host, port = "127.0.0.1", broker.config.port
    assert try_connect(host, port, "operator", broker.credentials.password("operator"))[0]
    ok, reason = try_connect(host, port, "operator", "wrong")
    assert not ok and reason
    started = time.monotonic()
    with pytest.raises(BrokerError, match="did not accept user 'operator'"):
        wait_authenticated(host, port, "operator", "wrong", timeout_s=30)
    assert time.monotonic() - started < 15  # given up on the refusal, not after the 30 s

    class Reason:
        value = 135

    assert refused_login(Reason()) and not refused_login(None)


def test_paho_reconnects_wait_the_one_backoff() -> None:
    """new_client's override of paho's `_reconnect_wait` sleeps the next jittered backoff delay
    (growing, capped) and starts again once paho has cleared `_reconnect_delay`, as it does on
    every accepted CONNACK."""
    client = new_client("x", user="u", password="p")
    assert client.backoff.first_s == 2 * RECONNECT_MIN_S  # its first wait: 1 to 2 s
    assert client.backoff.cap_s == RECONNECT_MAX_S
    client.backoff = Backoff(first_s=0.01, cap_s=0.04, rng=random.Random(3))
    waited = []
    for n in range(4):
        started = time.monotonic()
        client._reconnect_wait()
        waited.append(time.monotonic() - started)
        top = min(0.04, 0.01 * 2**n)
        assert top / 2 <= client._reconnect_delay <= top  # the delay paho slept
    assert client.backoff.attempts == 4
    assert min(waited) >= 0.005
    client._reconnect_delay = None  # what paho's CONNACK handler does
    client._reconnect_wait()
    assert client.backoff.attempts == 1 and client._reconnect_delay <= 0.01


def test_paho_loop_stop_closes_the_wake_up_socket_pair() -> None:
    """paho opens a socket pair in loop_start and closes it only in __del__; new_client's
    loop_stop closes it (paho's `_sockpairR`/`_sockpairW`, `_reset_sockets`)."""
    client = new_client("x")
    client.loop_start()
    pair = (client._sockpairR, client._sockpairW)
    assert all(s is not None and s.fileno() >= 0 for s in pair)
    client.loop_stop()
    assert client._sockpairR is None and client._sockpairW is None
    assert all(s is not None and s.fileno() == -1 for s in pair)  # closed, not just dropped


def test_paho_clears_the_delay_on_an_accepted_connack(process_broker: Any) -> None:
    broker = process_broker("gas-1")
    client = new_client("x", user="operator", password=broker.credentials.password("operator"))
    client._reconnect_delay = 7  # as after a wait
    client.connect("127.0.0.1", broker.config.port)
    try:
        deadline = time.monotonic() + 5
        while client._reconnect_delay is not None and time.monotonic() < deadline:
            client.loop(0.1)
        assert client._reconnect_delay is None
    finally:
        client.disconnect()


async def test_gmqtt_retries_a_lost_session_with_the_backoff(process_broker: Any) -> None:
    """gmqtt calls the client's `reconnect` after a lost session and after each failed attempt;
    _AckingClient sets its public `reconnect_delay` to the next backoff delay, and a new session
    resets the backoff."""
    broker = process_broker("gas-1")
    link = AsyncLink(
        broker.uri,
        "me",
        user="operator",
        password=broker.credentials.password("operator"),
        reconnect=True,
    )
    await link.connect()
    try:
        broker.stop()
        async with asyncio.timeout(10):
            while link._client.backoff.attempts < 2:  # at least one failed retry
                await asyncio.sleep(0.05)
        assert 0 < link._client.reconnect_delay <= OWN_BROKER_CAP_S
        broker.start()
        async with asyncio.timeout(15):
            while not link.is_connected:
                await asyncio.sleep(0.05)
        assert link._client.backoff.attempts == 0
    finally:
        await link.close()
