"""Real counterparts of the device drivers, on 127.0.0.1: a pymodbus Modbus TCP server holding
SunSpec register maps (with faults on demand), a plain Mosquitto playing the Zigbee2MQTT broker,
and unit processes under a real node broker."""

from __future__ import annotations

import contextlib
import logging
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from counterparts import ModbusServer, start_plain_mosquitto
from polling import until as until  # re-exported: `from conftest import until`

from redy import messages

NODE = "house-1"
logging.getLogger("pymodbus").setLevel(logging.WARNING)  # its server logs every frame at DEBUG


class Operator:
    """Every decoded message of the node, in order, from an operator subscription."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.log: list[tuple[str, Any]] = []

    def pump(self) -> list[tuple[str, Any]]:
        for m in self.client.drain():
            with contextlib.suppress(messages.InvalidMessage):
                self.log.append((m.topic, messages.decode(m.topic, m.payload)))
        return self.log

    def latest(self, topic: str) -> Any:
        for t, msg in reversed(self.pump()):
            if t == topic:
                return msg
        return None

    def all(self, topic: str) -> list[Any]:
        return [msg for t, msg in self.pump() if t == topic]

    def governance_view(self, unit: str, status: Any) -> Any:
        """A NodeState holding `unit` online with its retained meta and `status`: what the
        node's governance plans from (redy.units.planner.horizon_offer)."""
        from redy.topics import render
        from redy.units.node_state import NodeState

        meta = self.latest(render("unit_meta", node=NODE, unit=unit))
        state = NodeState(NODE)
        state.on_message(render("unit_meta", node=NODE, unit=unit), meta)
        state.on_message(
            render("unit_state", node=NODE, unit=unit),
            messages.UnitState(state="online", bd_seq=meta.bd_seq),
        )
        state.on_message(render("actuator_status", node=NODE, unit=unit), status)
        return state


class Units:
    """Unit processes (`python -m redy ROLE ...`) with logs in tmp; stopped after the test."""

    def __init__(self, tmp: Path, broker: Any) -> None:
        self.tmp, self.broker = tmp, broker
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, role: str, unit: str, device: str, *args: str, **params: Any) -> Any:
        argv = [
            sys.executable, "-m", "redy", role, "--node", NODE, "--unit", unit,
            "--device", device, "--broker", self.broker.unit_uri,
            "--credentials", str(self.broker.config.credentials_path), *args,
        ]  # fmt: skip
        for k, v in params.items():
            argv += ["--param", f"{k}={v}"]
        with open(self.tmp / f"{unit}.log", "wb") as f:
            p = subprocess.Popen(argv, stdout=f, stderr=f)
        self.procs.append(p)
        return p

    def log(self, unit: str) -> str:
        return (self.tmp / f"{unit}.log").read_text()

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()


@pytest.fixture
def node(
    process_broker: Any, mqtt_client: Any, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[tuple[Units, Operator]]:
    """A node broker with the units the test module names in UNITS, an operator watching
    `redy/house-1/#`, and a starter of unit processes."""
    broker = process_broker(NODE, request.module.UNITS)
    operator = mqtt_client(broker.port, "operator", broker.credentials.password("operator"))
    operator.subscribe(f"redy/{NODE}/#")
    units = Units(tmp_path, broker)
    yield units, Operator(operator)
    units.stop()


# --- Modbus TCP with SunSpec maps ---------------------------------------------------------------


@pytest.fixture
def modbus_server(free_port: Callable[[], int]) -> Iterator[Callable[..., ModbusServer]]:
    """modbus_server(blocks={unit_id: registers}, on_access=fn) -> a started ModbusServer."""
    servers: list[ModbusServer] = []

    def start(blocks: dict[int, list[int]], on_access: Any = lambda *_: None) -> ModbusServer:
        s = ModbusServer(free_port(), blocks, on_access)
        servers.append(s)
        s.start()
        return s

    yield start
    for s in servers:
        s.stop()


# --- a plain Mosquitto as the Zigbee2MQTT broker ------------------------------------------------


class PlainBroker:
    """A plain Mosquitto process on 127.0.0.1:`port`; stop() may come before the fixture's."""

    def __init__(self, port: int, folder: Path) -> None:
        self.port = port
        self.proc = start_plain_mosquitto(port, folder)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def z2m_broker(tmp_path: Path, free_port: Callable[[], int]) -> Iterator[PlainBroker]:
    """A plain Mosquitto playing the Zigbee2MQTT broker."""
    broker = PlainBroker(free_port(), tmp_path)
    try:
        yield broker
    finally:
        broker.stop()
