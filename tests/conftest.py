"""Fixtures that start real brokers (both backends) and MQTT clients; all clean up on failure.

Brokers started here die with the test run even when it is killed: process brokers through the
kernel's parent-death signal, containers through a sweep at the start and end of every session
that removes test containers whose owning pytest process is gone.
"""

from __future__ import annotations

import contextlib
import os
import queue
import random
import secrets
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from hypothesis import settings

# Before anything imports testcontainers: no Ryuk image can be pulled here, we reap ourselves.
os.environ["TESTCONTAINERS_RYUK_DISABLED"] = "true"

from redy import pki
from redy.brokers import ContainerBroker, NodeBroker, ProcessBroker, image_name
from redy.transport.paho_client import new_client

# Property tests assert behaviour, not speed: hypothesis's per-example deadline (200 ms) failed a
# pure test on a machine shared at a load of 55. Speed is for bench/.
settings.register_profile("redy", deadline=None)
settings.load_profile("redy")

# Every ResourceWarning fails the run (tests/leaks.py).
pytest_plugins = ["leaks"]

BACKENDS = ["process", "container"]
_TEST_LABEL = "org.redy.test"

# --- ports -----------------------------------------------------------------------------------

# Ports are drawn below the kernel's ephemeral range, so a client's outgoing connection can never
# hold a port a broker is about to bind; each is handed out once per session.
_given_ports: set[int] = set()
# Unseeded on purpose: concurrent test runs on one machine must not walk the same ports.
_port_rng = random.Random()


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now and was not handed out before in this run."""
    high = _ephemeral_low() - 1
    for _ in range(200):
        # With no room below the ephemeral range, take the kernel's pick instead.
        port = _port_rng.randint(20000, high) if high > 21000 else 0
        if port in _given_ports:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            port = int(s.getsockname()[1])
        if port in _given_ports:
            continue
        _given_ports.add(port)
        return port
    raise RuntimeError(f"no free port in 20000..{high}")


@pytest.fixture
def free_port() -> Callable[[], int]:
    """free_port() -> a TCP port free on 127.0.0.1 right now (never the same one twice)."""
    return _free_port


# --- the container backend -------------------------------------------------------------------


def _docker_ready() -> str | None:
    if shutil.which("docker") is None:
        return "docker is not installed (make test installs docker.io)"
    done = subprocess.run(
        ["docker", "image", "inspect", image_name()], capture_output=True, check=False
    )
    if done.returncode != 0:
        return f"image {image_name()} is missing or dockerd is down (make test provides both)"
    return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _sweep_test_containers(owner_pid: int | None) -> None:
    """Remove test containers of `owner_pid` (None: of owners that are no longer running)."""
    if shutil.which("docker") is None:
        return
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        listed = subprocess.run(
            ["docker", "ps", "-a", "--filter", f"label={_TEST_LABEL}", "--format",
             '{{.ID}} {{.Label "org.redy.owner-pid"}}'],
            capture_output=True, text=True, check=False, timeout=30,
        )  # fmt: skip
        doomed = []
        for line in listed.stdout.splitlines():
            cid, _, pid = line.partition(" ")
            if not pid.isdigit():
                continue
            if (int(pid) == owner_pid) if owner_pid is not None else not _pid_alive(int(pid)):
                doomed.append(cid)
        if doomed:
            subprocess.run(
                ["docker", "rm", "-f", *doomed], capture_output=True, check=False, timeout=60
            )


@pytest.fixture(scope="session")
def _no_leftover_containers() -> Iterator[None]:
    """Before the first container test, remove test containers of killed runs; after the
    session, any of ours that a failed stop() left."""
    _sweep_test_containers(None)
    yield
    _sweep_test_containers(os.getpid())


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """The broker backend, parametrised: every test using it runs on both."""
    if request.param == "container":
        request.getfixturevalue("_no_leftover_containers")
        problem = _docker_ready()
        if problem:
            # Not a skip: make test provides docker and the image, so a missing one is a failure.
            pytest.fail(f"container backend unavailable: {problem}")
    return str(request.param)


# --- brokers ---------------------------------------------------------------------------------

BrokerFactory = Callable[..., ProcessBroker | ContainerBroker]


def _make_test_broker(config: NodeBroker, backend: str) -> ProcessBroker | ContainerBroker:
    if backend == "process":
        return ProcessBroker(config, die_with_parent=True)
    if backend == "container":
        return ContainerBroker(config, labels={_TEST_LABEL: "1"})
    raise ValueError(f"unknown backend {backend!r}")


@contextlib.contextmanager
def _broker_factory(tmp_path: Path, default_backend: str) -> Iterator[BrokerFactory]:
    with contextlib.ExitStack() as stack:

        def start(node: str = "house-1", units: dict[str, str] | None = None, **kw: Any) -> Any:
            config = NodeBroker(
                node=node,
                port=kw.pop("port", None) or _free_port(),
                grid_port=kw.pop("grid_port", None) or _free_port(),
                unit_port=kw.pop("unit_port", None) or _free_port(),
                state_dir=kw.pop("state_dir", tmp_path / "state"),
                units=units or {},
                **kw.pop("config", {}),
            )
            broker = _make_test_broker(config, kw.pop("backend", default_backend))
            if kw:
                raise TypeError(f"unexpected arguments {sorted(kw)}")
            # Registered before start(): a broker that half-started is stopped as well.
            stack.callback(broker.stop)
            broker.start()
            return broker

        yield start


@pytest.fixture
def start_broker(tmp_path: Path, backend: str) -> Iterator[BrokerFactory]:
    """start_broker(node, units={name: role}, port=, grid_port=, unit_port=, state_dir=, backend=) -> a
    started broker of the test's backend (parametrised: process and container), stopped after
    the test whatever happens."""
    with _broker_factory(tmp_path, backend) as start:
        yield start


@pytest.fixture
def process_broker(tmp_path: Path) -> Iterator[BrokerFactory]:
    """Like start_broker, always the process backend (for tests about units, not brokers)."""
    with _broker_factory(tmp_path, "process") as start:
        yield start


# --- clients ---------------------------------------------------------------------------------


class Client:
    """A connected paho MQTT 5 client for tests: publish, subscribe, collect messages."""

    def __init__(
        self,
        port: int,
        user: str | None,
        password: str | None,
        client_id: str,
        tls: pki.Identity | None = None,
    ) -> None:
        self.messages: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self.refused: str | None = None
        self._connected = threading.Event()
        self._subscribed = threading.Event()
        self.c = new_client(client_id, user=user, password=password, tls=tls)
        self.c.on_connect = self._on_connect
        self.c.on_message = lambda _c, _u, m: self.messages.put(m)
        self.c.on_subscribe = lambda *_a: self._subscribed.set()
        self.c.connect("127.0.0.1", port, keepalive=10)
        self.c.loop_start()
        if not self._connected.wait(5):
            self.c.loop_stop()
            raise TimeoutError(f"no CONNACK from 127.0.0.1:{port}")

    def _on_connect(self, client: Any, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if reason.is_failure:
            self.refused = str(reason)
            client.disconnect()  # else paho's loop keeps retrying and close() waits for it
        self._connected.set()

    def subscribe(self, pattern: str, qos: int = 1) -> None:
        self._subscribed.clear()
        self.c.subscribe(pattern, qos=qos)
        assert self._subscribed.wait(5), f"no SUBACK for {pattern}"

    def publish(self, topic: str, payload: bytes | str, qos: int = 1, retain: bool = False) -> None:
        info = self.c.publish(topic, payload, qos=qos, retain=retain)
        info.wait_for_publish(5)

    def drain(self) -> list[mqtt.MQTTMessage]:
        """What has arrived so far, without waiting."""
        out: list[mqtt.MQTTMessage] = []
        while True:
            try:
                out.append(self.messages.get_nowait())
            except queue.Empty:
                return out

    def retained(self, pattern: str) -> dict[str, mqtt.MQTTMessage]:
        """The broker's retained store under `pattern`, topic -> message, without waiting for
        silence: the broker queues a subscription's retained messages before it reads the next
        SUBSCRIBE, so when the SUBACK of a second (sentinel) subscription is in, they all are.
        QoS 0, so no in-flight window can hold some of them back behind that SUBACK. The
        subscription stays; what was queued before is dropped."""
        self.drain()
        self.subscribe(pattern, qos=0)
        self.subscribe(f"redy-test-sentinel/{secrets.token_hex(4)}", qos=0)
        return {m.topic: m for m in self.drain() if m.retain}

    def received_until(self, marker: str, timeout_s: float = 5.0) -> list[mqtt.MQTTMessage]:
        """Every message up to and including the first one on topic `marker`.

        A broker delivers one publisher's messages to one subscriber in order, so when a test
        publishes the forbidden messages and then an allowed marker from the same client, what
        this returns is all that will ever arrive of them: no waiting for silence."""
        out: list[mqtt.MQTTMessage] = []
        deadline = time.monotonic() + timeout_s
        while not out or out[-1].topic != marker:
            left = deadline - time.monotonic()
            try:
                out.append(self.messages.get(timeout=max(left, 0.0)))
            except queue.Empty:
                seen = [m.topic for m in out]
                raise TimeoutError(
                    f"marker {marker} not seen in {timeout_s} s; got {seen}"
                ) from None
        return out

    def wait_for(self, topic: str, timeout_s: float = 5.0) -> mqtt.MQTTMessage:
        """The first message on `topic` (others that arrive meanwhile are dropped)."""
        return self.received_until(topic, timeout_s)[-1]

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


@pytest.fixture
def mqtt_client() -> Iterator[Callable[..., Client]]:
    """mqtt_client(port, user, password, client_id=None, tls=None) -> a connected Client (closed
    after the test; `.refused` says why the broker refused it, None when accepted). `tls`: a
    peer's identity (peer_identity()) for a grid listener."""
    with contextlib.ExitStack() as stack:

        def make(
            port: int,
            user: str | None,
            password: str | None,
            client_id: str | None = None,
            tls: pki.Identity | None = None,
        ) -> Client:
            c = Client(port, user, password, client_id or f"test-{secrets.token_hex(4)}", tls)
            stack.callback(c.close)
            return c

        yield make


# --- plain brokers ---------------------------------------------------------------------------


@pytest.fixture
def plain_broker(tmp_path: Path) -> Iterator[Callable[[], int]]:
    """plain_broker() -> the port of a fresh anonymous Mosquitto on 127.0.0.1 (no accounts, no
    persistence): a site broker such as Home Assistant's, or a broker to replay a recording
    into. Stopped after the test whatever happens."""
    with contextlib.ExitStack() as stack:

        def start() -> int:
            port = _free_port()
            conf = tmp_path / f"plain-{port}.conf"
            conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
            proc = subprocess.Popen(["mosquitto", "-c", str(conf)], stderr=subprocess.DEVNULL)
            stack.callback(proc.wait, 10)
            stack.callback(proc.terminate)
            deadline = time.monotonic() + 10
            while True:
                with socket.socket() as s:
                    if s.connect_ex(("127.0.0.1", port)) == 0:
                        return port
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"plain mosquitto on {port} did not start")
                time.sleep(0.05)

        yield start


@pytest.fixture
def overlay_driver() -> Callable[..., Any]:
    """overlay_driver(core, links, identity, period_s=1.0) -> an OverlayDriver for node "me"
    whose own-broker publishes go nowhere (the tests read its core and lists)."""
    from redy.units.overlay import OverlayDriver

    async def publish_local(_topic: str, _msg: Any) -> bool:
        return True

    def make(core: Any, links: Any, identity: Any, period_s: float = 1.0) -> OverlayDriver:
        return OverlayDriver(
            node="me",
            grid_uri="mqtts://127.0.0.1:1",
            core=core,
            links=links,
            publish_local=publish_local,
            period_s=period_s,
            timeout_s=1.0,
            identity=identity,
        )

    return make
