"""The asyncio client layer against real brokers and against listeners that misbehave on purpose:
every failure is a DeliveryFailed within its timeout, never another exception."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import random
import signal
import socket
import time
import weakref
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from redy import pki
from redy.errors import DeliveryFailed, PeerUnreachable
from redy.transport.backoff import Backoff
from redy.transport.client import AsyncLink
from redy.transport.peer_links import COLLECT_EVERY_S, PeerLinks

pytestmark = pytest.mark.integration


def _me(broker: Any, name: str = "me") -> pki.Identity:
    return pki.issue(broker.config.state_dir, name, ["127.0.0.1"])


def _grid_link(broker: Any, timeout_s: float = 0.5) -> AsyncLink:
    return AsyncLink(
        broker.config.grid_uri,
        "me",
        user="me",
        password="",
        timeout_s=timeout_s,
        tls=_me(broker).client_context(),
        expect_cn=broker.config.node,
    )


@asynccontextmanager
async def _watched_grid_link(broker: Any, got: list[bytes]) -> AsyncIterator[AsyncLink]:
    """A connected grid link to `broker`, while an operator's link appends every gossip payload
    there to `got` (awaited by `_until`); both closed afterwards."""
    watch = AsyncLink(
        broker.uri,
        "watch",
        user="operator",
        password=broker.credentials.password("operator"),
        timeout_s=2.0,
        subscriptions=("redy/gas-1/grid/gossip/+",),
        on_message=lambda _t, payload, _p: got.append(payload),
    )
    await watch.connect()
    link = _grid_link(broker)
    try:
        await link.connect()
        yield link
    finally:
        await link.close()
        await watch.close()


async def _until(got: list[bytes], n: int) -> None:
    async with asyncio.timeout(5.0):
        while len(got) < n:
            await asyncio.sleep(0.05)


async def test_publish_waits_for_the_puback_of_a_real_broker(process_broker: Any) -> None:
    broker = process_broker("gas-1")
    link = _grid_link(broker)
    await link.connect()
    try:
        for _ in range(50):  # far beyond Mosquitto's in-flight window of 20
            await link.publish("redy/gas-1/grid/gossip/me", b"{}", qos=1)
    finally:
        await link.close()


async def test_a_qos_0_publish_is_sent_and_not_reported_as_failed(process_broker: Any) -> None:
    """gmqtt gives a QoS 0 publish no packet id: that is no failure. (Each such publish used to
    raise DeliveryFailed after its packet had gone out, and a peer link then dropped the
    neighbour as unreachable.)"""
    broker = process_broker("gas-1")
    got: list[bytes] = []
    async with _watched_grid_link(broker, got) as link:
        for i in range(5):
            await link.publish("redy/gas-1/grid/gossip/me", b'{"n": %d}' % i, qos=0)
        await _until(got, 5)
    assert got == [b'{"n": %d}' % i for i in range(5)]


async def test_a_stopped_broker_is_a_failed_delivery_not_an_overflow(process_broker: Any) -> None:
    broker = process_broker("gas-1")
    link = _grid_link(broker, timeout_s=0.3)
    await link.connect()
    os.kill(broker.pid, signal.SIGSTOP)
    try:
        failures: list[str] = []
        for _ in range(30):  # without awaited PUBACKs the 21st publish raised OverflowError
            try:
                await link.publish("redy/gas-1/grid/gossip/me", b"{}", qos=1)
            except DeliveryFailed as exc:
                failures.append(exc.reason)
        assert len(failures) == 30
        assert all("PUBACK" in r or "window" in r for r in failures), failures[:3]
    finally:
        os.kill(broker.pid, signal.SIGCONT)
        await link.close()


@asynccontextmanager
async def _listener(handler: Callable[..., Any]) -> AsyncIterator[int]:
    """A TCP listener whose connections `handler` serves; on the way out it closes them all
    (Python 3.11's server.close() leaves accepted connections open)."""
    writers: list[asyncio.StreamWriter] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        with contextlib.suppress(ConnectionError):
            await handler(reader, writer)

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield port
    finally:
        server.close()
        for w in writers:
            w.close()
        for w in writers:
            with contextlib.suppress(ConnectionError):
                await w.wait_closed()
        await server.wait_closed()


async def _silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Accepts TCP and never answers (a stalled broker, or a hostile one)."""
    await reader.read(-1)


# CONNACK, MQTT 5: flags 0, reason 0, properties {Receive Maximum (0x21): 2}.
_CONNACK_RECEIVE_MAX_2 = bytes([0x20, 0x06, 0x00, 0x00, 0x03, 0x21, 0x00, 0x02])


async def _acks_nothing(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Answers CONNECT with Receive Maximum 2, then never acknowledges a publish."""
    await reader.read(1024)
    writer.write(_CONNACK_RECEIVE_MAX_2)
    await writer.drain()
    await reader.read(-1)


async def test_a_listener_that_never_connacks_costs_one_timeout() -> None:
    async with _listener(_silent) as port:
        link = AsyncLink(f"mqtt://127.0.0.1:{port}", "x", user="u", password="p", timeout_s=0.3)
        t0 = time.monotonic()
        with pytest.raises(DeliveryFailed, match="no CONNACK"):
            await link.connect()
        assert time.monotonic() - t0 < 2.0


async def test_receive_maximum_2_and_no_acks_never_raise_overflow() -> None:
    async with _listener(_acks_nothing) as port:
        link = AsyncLink(f"mqtt://127.0.0.1:{port}", "x", user="u", password="p", timeout_s=0.2)
        await link.connect()
        outcomes = []
        for _ in range(10):
            try:
                await link.publish("t", b"x", qos=1)
                outcomes.append("ok")
            except DeliveryFailed as exc:
                outcomes.append(exc.reason)
        await link.close()
    assert "ok" not in outcomes
    assert any("window full" in o for o in outcomes), outcomes


async def test_send_puts_a_publish_on_the_wire_at_once_and_acked_waits_for_its_puback(
    process_broker: Any,
) -> None:
    """`send` is a plain call: the packet goes out with no turn of the event loop first (the
    governance publishes an epoch's first price that way, ahead of the gossip queued behind
    it). The PUBACK is awaited apart with `acked`; at QoS 0 there is nothing to wait for."""
    broker = process_broker("gas-1")
    got: list[bytes] = []
    async with _watched_grid_link(broker, got) as link:
        ack = link.send("redy/gas-1/grid/gossip/me", b'{"n": 1}', qos=1)  # a plain call
        assert ack is not None
        await link.acked(ack)
        assert link.send("redy/gas-1/grid/gossip/me", b'{"n": 2}', qos=0) is None
        await _until(got, 2)
    assert got == [b'{"n": 1}', b'{"n": 2}']


async def test_peer_links_remember_a_bad_broker_and_fail_fast(tmp_path: Path) -> None:
    async with _listener(_silent) as port:
        me = pki.issue(tmp_path, "me", ["127.0.0.1"])
        links = PeerLinks("me", me, timeout_s=0.3, cooldown_s=30)
        uri = f"mqtts://127.0.0.1:{port}"
        t0 = time.monotonic()
        with pytest.raises(PeerUnreachable):
            await links.publish(uri, "redy/x/grid/gossip/me", b"{}")
        first = time.monotonic() - t0
        t1 = time.monotonic()
        for _ in range(5):
            with pytest.raises(PeerUnreachable, match="failed recently"):
                await links.publish(uri, "redy/x/grid/gossip/me", b"{}")
        assert first >= 0.3
        assert time.monotonic() - t1 < first  # five later sends cost less than the first one


async def test_failed_dials_to_ever_new_ports_leave_nothing_behind(tmp_path: Path) -> None:
    """A hostile member can name a new closed port in every shuffle: each failed dial may leave
    a verdict (bounded) but no per-URI lock once the view no longer names it."""
    me = pki.issue(tmp_path, "me", ["127.0.0.1"])
    links = PeerLinks("me", me, timeout_s=0.3, max_links=4)
    for _ in range(20):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]  # closed again: the dial is refused
        with pytest.raises(PeerUnreachable):
            await links.publish(f"mqtts://127.0.0.1:{port}", "redy/x/grid/gossip/me", b"{}")
    await links.keep_only(set())
    assert links._locks == {}  # the state this test is about
    assert len(links._bad) <= 16  # bounded at 4 x max_links
    await links.close_all()


async def test_closed_links_are_freed_soon_not_at_the_next_full_collection(
    process_broker: Any,
) -> None:
    """A closed link lives on in reference cycles (gmqtt's client, asyncio's TLS transport) with
    its 256 KiB buffer until a full collection, which CPython runs rarely: keep_only collects
    once links have closed, at most every COLLECT_EVERY_S."""
    gas = process_broker("gas-1")
    now = [0.0]
    links = PeerLinks("me", _me(gas), timeout_s=2.0, clock=lambda: now[0])
    gone: list[weakref.ref[Any]] = []
    gc.disable()  # only keep_only's collection may free them
    try:
        for _ in range(3):
            await links.publish(gas.config.grid_uri, "redy/gas-1/grid/gossip/me", b"{}")
            gone.append(weakref.ref(await links.link(gas.config.grid_uri)))
            await links.close(gas.config.grid_uri)
        await links.keep_only(set())  # too soon after the last collection: none yet
        assert sum(r() is not None for r in gone) == 3
        await asyncio.sleep(0.5)  # the transports' last callbacks run (as between periods)
        now[0] += COLLECT_EVERY_S
        await links.keep_only(set())
        assert [r() for r in gone] == [None, None, None]
    finally:
        gc.enable()
        await links.close_all()


async def test_concurrent_pushes_to_a_stalled_and_a_live_peer(process_broker: Any) -> None:
    """A stalled peer delays nobody: the live peer's PUBACK arrives while the other times out."""
    live = process_broker("gas-1")
    async with _listener(_silent) as port:
        links = PeerLinks("me", _me(live), timeout_s=1.0)
        done: dict[str, float] = {}
        t0 = time.monotonic()

        async def push(name: str, uri: str, topic: str) -> None:
            with contextlib.suppress(PeerUnreachable):
                await links.publish(uri, topic, b"{}")
            done[name] = time.monotonic() - t0

        await asyncio.gather(
            push("stalled", f"mqtts://127.0.0.1:{port}", "redy/x/grid/gossip/me"),
            push("live", live.config.grid_uri, "redy/gas-1/grid/gossip/me"),
        )
        await links.close_all()
    assert done["live"] < done["stalled"]
    assert done["stalled"] >= 1.0


def test_backoff_is_jittered_exponential_and_capped() -> None:
    b = Backoff(first_s=0.1, cap_s=2.0, rng=random.Random(1))
    delays = [b.next_delay() for _ in range(8)]
    for n, d in enumerate(delays):
        top = min(2.0, 0.1 * 2**n)
        assert top / 2 <= d <= top
    b.reset()
    assert b.next_delay() <= 0.1


async def test_a_link_outlives_its_view_entry_until_it_idles(process_broker: Any) -> None:
    """Shuffles move entries out of a view and back all the time: the link to a broker the view
    no longer names stays open while it is used (no new TLS dial when the entry comes back)
    and closes once it has gone unused for `idle_s`; a link the view names stays."""
    a, b = process_broker("gas-1"), process_broker("gas-2")
    now = [1000.0]
    links = PeerLinks("me", _me(a), timeout_s=1.0, idle_s=60.0, clock=lambda: now[0])
    try:
        first = await links.link(a.config.grid_uri, "gas-1")
        await links.link(b.config.grid_uri, "gas-2")
        now[0] += 30.0
        await links.keep_only({b.config.grid_uri})  # gas-1 left the view 30 s after its use
        assert a.config.grid_uri in links.open_uris
        assert await links.link(a.config.grid_uri, "gas-1") is first  # back: the same link
        now[0] += 59.0
        await links.keep_only({b.config.grid_uri})
        assert a.config.grid_uri in links.open_uris
        now[0] += 2.0  # 61 s unused and out of the view
        await links.keep_only({b.config.grid_uri})
        assert links.open_uris == (b.config.grid_uri,)  # in the view: kept, however idle
        assert not first.is_connected
    finally:
        await links.close_all()
