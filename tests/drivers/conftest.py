"""Real counterparts of the device drivers, on 127.0.0.1: a pymodbus Modbus TCP server holding
SunSpec register maps (with faults on demand), a plain Mosquitto playing the Zigbee2MQTT broker,
and unit processes under a real node broker."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from redy import messages

NODE = "house-1"
logging.getLogger("pymodbus").setLevel(logging.WARNING)  # its server logs every frame at DEBUG


def until(pred: Callable[[], Any], timeout_s: float = 10.0, what: str = "condition") -> Any:
    """The first truthy value of `pred()`, polled every 50 ms; AssertionError after timeout."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        got = pred()
        if got:
            return got
        time.sleep(0.05)
    raise AssertionError(f"{what} not reached within {timeout_s} s")


class Operator:
    """Every decoded message of the node, in order, from an operator subscription."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.log: list[tuple[str, Any]] = []

    def pump(self) -> list[tuple[str, Any]]:
        for m in self.client.received(0.05):
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


class Units:
    """Unit processes (`python -m redy ROLE ...`) with logs in tmp; stopped after the test."""

    def __init__(self, tmp: Path, broker: Any) -> None:
        self.tmp, self.broker = tmp, broker
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, role: str, unit: str, device: str, *args: str, **params: Any) -> Any:
        argv = [
            sys.executable, "-m", "redy", role, "--node", NODE, "--unit", unit,
            "--device", device, "--broker", self.broker.uri,
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

BASE = 40000


class ModbusServer:
    """pymodbus's own TCP server on 127.0.0.1, run on a thread with its own event loop. Each
    unit id holds one register block from BASE; `mode[unit_id]` picks a fault: 'ok', 'silent'
    (no answer in time), 'exception' (code 4, server device failure); `patch[unit_id]` holds
    {address: raw} written into the registers at every access; `on_access(unit_id, registers,
    start_address, written values or None)` plays the device's physics."""

    def __init__(self, port: int, blocks: dict[int, list[int]], on_access: Any) -> None:
        self.port = port
        self.registers = {uid: list(regs) for uid, regs in blocks.items()}
        self.mode = dict.fromkeys(blocks, "ok")
        self.patch: dict[int, dict[int, int]] = {uid: {} for uid in blocks}
        self._on_access = on_access
        self._loop = asyncio.new_event_loop()
        self._server: Any = None
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def start(self) -> None:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._serve(), self._loop).result(10)

    async def _serve(self) -> None:
        from pymodbus.server import ModbusTcpServer
        from pymodbus.simulator import DataType, SimData, SimDevice

        devices = [
            SimDevice(
                id=uid,
                simdata=[SimData(BASE, values=regs, datatype=DataType.REGISTERS)],
                action=self._action(uid),
            )
            for uid, regs in self.registers.items()
        ]
        self._server = ModbusTcpServer(devices, address=("127.0.0.1", self.port))
        await self._server.serve_forever(background=True)

    def _action(self, uid: int) -> Any:
        from pymodbus.constants import ExcCodes

        async def action(
            fc: int, start: int, address: int, count: int, regs: list[int], values: Any
        ) -> Any:
            mode = self.mode[uid]
            if mode == "silent":
                await asyncio.sleep(3)  # well past the client's timeout
                return ExcCodes.GATEWAY_NO_RESPONSE
            if mode == "exception":
                return ExcCodes.DEVICE_FAILURE
            for a, raw in self.patch[uid].items():
                regs[a - start] = raw
            self._on_access(uid, regs, start, values)
            self.registers[uid] = regs
            return None

        return action

    def stop(self) -> None:
        if self._server is not None:
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(self._server.shutdown(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)


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


@pytest.fixture
def z2m_broker(tmp_path: Path, free_port: Callable[[], int]) -> Iterator[int]:
    """A Mosquitto on 127.0.0.1 configured like a typical Zigbee2MQTT set-up (anonymous,
    one listener); its port."""
    port = free_port()
    conf = tmp_path / "z2m-mosquitto.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nlog_dest stderr\n"
    )
    exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    with open(tmp_path / "z2m-mosquitto.log", "wb") as log:
        proc = subprocess.Popen([exe, "-c", str(conf)], stdout=log, stderr=log)
    try:
        import socket

        def accepting() -> bool:
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", port)) == 0

        until(accepting, 10, "the Zigbee2MQTT broker listening")
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
