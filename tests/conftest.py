"""Fixtures that start real brokers (both backends) and MQTT clients; all clean up on failure."""

from __future__ import annotations

import os
import queue
import secrets
import shutil
import socket
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from redy.brokers import ContainerBroker, NodeBroker, ProcessBroker, image_name, make_broker

os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")

BACKENDS = ["process", "container"]


def _free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (the kernel's pick)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def free_port() -> Callable[[], int]:
    """free_port() -> a TCP port free on 127.0.0.1 right now."""
    return _free_port


def _docker_ready() -> str | None:
    if shutil.which("docker") is None:
        return "docker is not installed (make test installs docker.io)"
    done = subprocess.run(
        ["docker", "image", "inspect", image_name()], capture_output=True, check=False
    )
    if done.returncode != 0:
        return f"image {image_name()} is missing (make image builds it)"
    return None


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    if request.param == "container":
        problem = _docker_ready()
        if problem:
            # Not a skip: make test provides docker and the image, so a missing one is a failure.
            pytest.fail(f"container backend unavailable: {problem}")
    return str(request.param)


BrokerFactory = Callable[..., ProcessBroker | ContainerBroker]


@pytest.fixture
def start_broker(tmp_path: Path, backend: str) -> Iterator[BrokerFactory]:
    """start_broker(node, units={...}) -> a started broker of the test's backend."""
    started: list[ProcessBroker | ContainerBroker] = []

    def start(node: str = "house-1", units: dict[str, str] | None = None, **kw: Any) -> Any:
        config = NodeBroker(
            node=node,
            port=kw.pop("port", None) or _free_port(),
            grid_port=kw.pop("grid_port", None) or _free_port(),
            state_dir=kw.pop("state_dir", tmp_path / "state"),
            units=units or {},
        )
        broker = make_broker(config, kw.pop("backend", backend))
        started.append(broker)
        broker.start()
        return broker

    yield start
    for broker in reversed(started):
        broker.stop()


@pytest.fixture
def process_broker(tmp_path: Path) -> Iterator[BrokerFactory]:
    """Like start_broker, always the process backend (for tests about units, not brokers)."""
    started: list[ProcessBroker] = []

    def start(node: str = "house-1", units: dict[str, str] | None = None, **kw: Any) -> Any:
        config = NodeBroker(
            node=node,
            port=kw.pop("port", None) or _free_port(),
            grid_port=kw.pop("grid_port", None) or _free_port(),
            state_dir=kw.pop("state_dir", tmp_path / "state"),
            units=units or {},
        )
        broker = ProcessBroker(config)
        started.append(broker)
        broker.start()
        return broker

    yield start
    for broker in reversed(started):
        broker.stop()


class Client:
    """A connected paho MQTT 5 client for tests: publish, subscribe, collect messages."""

    def __init__(self, port: int, user: str | None, password: str | None, client_id: str) -> None:
        self.messages: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self.refused: str | None = None
        self._connected = threading.Event()
        self._subscribed = threading.Event()
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        if user is not None:
            self.c.username_pw_set(user, password)
        self.c.on_connect = self._on_connect
        self.c.on_message = lambda _c, _u, m: self.messages.put(m)
        self.c.on_subscribe = lambda *_a: self._subscribed.set()
        self.c.connect("127.0.0.1", port, keepalive=10)
        self.c.loop_start()
        if not self._connected.wait(5):
            raise TimeoutError("no CONNACK")

    def _on_connect(self, _c: Any, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if reason.is_failure:
            self.refused = str(reason)
        self._connected.set()

    def subscribe(self, pattern: str, qos: int = 1) -> None:
        self._subscribed.clear()
        self.c.subscribe(pattern, qos=qos)
        assert self._subscribed.wait(5), f"no SUBACK for {pattern}"

    def publish(self, topic: str, payload: bytes | str, qos: int = 1, retain: bool = False) -> None:
        info = self.c.publish(topic, payload, qos=qos, retain=retain)
        info.wait_for_publish(5)

    def received(self, timeout_s: float = 1.0) -> list[mqtt.MQTTMessage]:
        """Everything that arrives within `timeout_s`."""
        out = []
        try:
            while True:
                out.append(self.messages.get(timeout=timeout_s))
        except queue.Empty:
            return out

    def wait_for(self, topic: str, timeout_s: float = 5.0) -> mqtt.MQTTMessage:
        """The first message on `topic` (others that arrive meanwhile are dropped)."""
        import time

        deadline = time.monotonic() + timeout_s
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"nothing on {topic} within {timeout_s} s")
            try:
                m = self.messages.get(timeout=left)
            except queue.Empty:
                continue
            if m.topic == topic:
                return m

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


@pytest.fixture
def mqtt_client() -> Iterator[Callable[..., Client]]:
    """mqtt_client(port, user, password, client_id=None) -> a connected Client."""
    made: list[Client] = []

    def make(
        port: int, user: str | None, password: str | None, client_id: str | None = None
    ) -> Client:
        c = Client(port, user, password, client_id or f"test-{secrets.token_hex(4)}")
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()
