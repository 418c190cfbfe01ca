"""Device drivers against models: the rate each driver's unit sustains and the CPU of its
process, as ratios to a model-driven unit of the same kind measured in the same run.

Under one node broker, for each driver two unit processes run one after the other for
--seconds with the same --period-s: a model unit of the same kind, then the driver's unit
against its real counterpart on 127.0.0.1:

- sunspec_meter (detection, polls Modbus TCP)  vs household_load: pymodbus's server with a
  SunSpec meter (model 203);
- sunspec_inverter (action, polls 701 and 704)  vs gas_plant: the same server with a SunSpec
  inverter (models 701 and 704);
- z2m_plug (detection, event-driven)           vs household_load: a Mosquitto playing the
  Zigbee2MQTT broker, the plug publishing its state --events-hz times a second;
- ocpp_charger (action, the CSMS)              vs ev_charger: a charge point simulated with the
  ocpp package sending MeterValues --events-hz times a second, each awaited.

Rate: the messages the unit published on the node broker per second (measurements, or
statuses for action units); for event-driven drivers also the events their counterpart got
through per second. CPU: utime + stime of the unit process over the window, from /proc.

    python bench/device_drivers.py [--seconds 6] [--period-s 0.01] [--events-hz 100]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import docpage
import orjson
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "drivers"))
from counterparts import (  # noqa: E402
    M203,
    M701,
    M704,
    ChargePointRunner,
    ModbusServer,
    spread,
    start_plain_mosquitto,
    sunspec_map,
    words,
)

from redy.brokers import NodeBroker, ProcessBroker  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")
NODE = "bench"
UNITS = {"model-meter": "detection", "model-ev": "action", "model-gen": "action",
         "sunspec": "detection", "inverter": "action", "plug": "detection",
         "charger": "action"}  # fmt: skip


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Counts:
    """Messages per topic on the node broker, seen as the operator."""

    def __init__(self, broker: ProcessBroker) -> None:
        self.n: Counter[str] = Counter()
        self._lock = threading.Lock()
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self.c.username_pw_set("operator", broker.credentials.password("operator"))
        self.c.on_message = self._count
        self.c.connect("127.0.0.1", broker.port)
        self.c.subscribe(f"redy/{NODE}/#")
        self.c.loop_start()

    def _count(self, _c: Any, _u: Any, m: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.n[m.topic] += 1

    def get(self, topic: str) -> int:
        with self._lock:
            return self.n[topic]


def run_unit(
    broker: ProcessBroker, counts: Counts, role: str, unit: str, device: str,
    period_s: float, seconds: float, params: dict[str, Any], events: Callable[[], int] = lambda: 0,
) -> tuple[float, float, float]:  # fmt: skip
    """(messages/s published by the unit, counterpart events/s, CPU s per s of the unit)."""
    kind = "measurement" if role == "detection" else "status"
    topic = f"redy/{NODE}/{role}/{unit}/{kind}"
    argv = [sys.executable, "-m", "redy", role, "--node", NODE, "--unit", unit,
            "--device", device, "--broker", broker.uri, "--period-s", str(period_s),
            "--credentials", str(broker.config.credentials_path)]  # fmt: skip
    for k, v in params.items():
        argv += ["--param", f"{k}={v}"]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while counts.get(topic) < 5:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError(f"{unit} ({device}) published nothing on {topic}")
            time.sleep(0.05)
        n0, e0, cpu0, t0 = counts.get(topic), events(), _cpu_s(proc.pid), time.monotonic()
        time.sleep(seconds)
        n1, e1, cpu1, t1 = counts.get(topic), events(), _cpu_s(proc.pid), time.monotonic()
    finally:
        proc.terminate()
        proc.wait(10)
    dt = t1 - t0
    return (n1 - n0) / dt, (e1 - e0) / dt, (cpu1 - cpu0) / dt


@contextlib.contextmanager
def z2m_plug(folder: Path, events_hz: float) -> Iterator[tuple[int, Callable[[], int]]]:
    """A Zigbee2MQTT broker and a plug publishing its state `events_hz` times a second."""
    port = _free_port()
    proc = start_plain_mosquitto(port, folder)
    pub = mqtt.Client(CallbackAPIVersion.VERSION2)
    pub.connect("127.0.0.1", port)
    pub.loop_start()
    pub.publish("zigbee2mqtt/bridge/state", b'{"state":"online"}', retain=True)
    pub.publish("zigbee2mqtt/plug/availability", b'{"state":"online"}', retain=True)
    sent = [0]
    stop = threading.Event()

    def publish() -> None:
        next_t = time.monotonic()
        while not stop.is_set():
            n = sent[0]
            state = {"state": "ON", "power": 1000 + n % 500, "energy": 10 + n / 1000}
            pub.publish("zigbee2mqtt/plug", orjson.dumps(state))
            sent[0] += 1
            next_t += 1.0 / events_hz
            stop.wait(max(0.0, next_t - time.monotonic()))

    t = threading.Thread(target=publish, daemon=True)
    t.start()
    try:
        yield port, lambda: sent[0]
    finally:
        stop.set()
        t.join(5)
        pub.loop_stop()
        proc.terminate()
        proc.wait(5)


class MeteringChargePoint:
    """A charge point charging at 11 kW, sending MeterValues `events_hz` times a second."""

    def __init__(self, port: int, events_hz: float) -> None:
        self.port, self.events_hz = port, events_hz
        self.acked = 0
        self.runner = ChargePointRunner()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        from ocpp.v16 import call

        cp = self.runner.connect(self.port)
        ts = "2026-03-01T12:00:00Z"
        self.runner.run(cp.call(call.StartTransaction(
            connector_id=1, id_tag="BENCH", meter_start=1000, timestamp=ts)))  # fmt: skip

        async def meter_loop() -> None:
            next_t = time.monotonic()
            while not self._stop.is_set():
                await cp.meter(ts, energy_wh=1000 + self.acked, power_w=11000)
                self.acked += 1
                next_t += 1.0 / self.events_hz
                await asyncio.sleep(max(0.0, next_t - time.monotonic()))

        with contextlib.suppress(Exception):  # the CSMS going away ends the bench run
            self.runner.run(meter_loop(), timeout_s=3600)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        with contextlib.suppress(Exception):
            self.runner.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=6.0)
    ap.add_argument("--period-s", type=float, default=0.01)
    ap.add_argument("--events-hz", type=float, default=100.0)
    a = ap.parse_args()
    rows: list[tuple[str, tuple[float, float, float], tuple[float, float, float]]] = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        broker = ProcessBroker(
            NodeBroker(node=NODE, port=_free_port(), grid_port=_free_port(),
                       unit_port=_free_port(), state_dir=folder,
                       units=UNITS),
            die_with_parent=True,
        )  # fmt: skip
        broker.start()
        try:
            counts = Counts(broker)

            def run(
                role: str, unit: str, device: str, params: dict[str, Any], **kw: Any
            ) -> tuple[float, float, float]:
                return run_unit(
                    broker, counts, role, unit, device, a.period_s, a.seconds, params, **kw
                )

            load = {"annual_kwh": 4000}

            regs, _ = sunspec_map((203, M203, spread(
                M203, W=1234, W_SF=-1, TotWhExp=words(5000, 2), TotWhImp=words(12000, 2),
                TotWh_SF=0)))  # fmt: skip
            der, _ = sunspec_map(
                (701, M701, spread(M701, W=4000, W_SF=0, TotWhInj=words(10**6, 4), TotWh_SF=0)),
                (704, M704, spread(M704, WMaxLimPctEna=0, WMaxLimPct=100, WMaxLimPct_SF=0)),
            )
            server = ModbusServer(_free_port(), {1: regs, 2: der}, lambda *_: None)
            server.start()
            try:
                model = run("detection", "model-meter", "household_load", load)
                driver = run("detection", "sunspec", "sunspec_meter",
                             {"host": "127.0.0.1", "port": server.port, "rated_kw": 2})  # fmt: skip
                rows.append(("sunspec_meter (poll)", model, driver))
                model = run("action", "model-gen", "gas_plant", {})
                driver = run("action", "inverter", "sunspec_inverter",
                             {"host": "127.0.0.1", "port": server.port, "unit_id": 2,
                              "rated_kw": 5})  # fmt: skip
                rows.append(("sunspec_inverter (poll)", model, driver))
            finally:
                server.stop()

            with z2m_plug(folder, a.events_hz) as (port, sent):
                model = run("detection", "model-meter", "household_load", load)
                driver = run("detection", "plug", "z2m_plug",
                             {"broker": f"mqtt://127.0.0.1:{port}", "name": "plug"}, events=sent)  # fmt: skip
                rows.append(("z2m_plug (events)", model, driver))

            model = run("action", "model-ev", "ev_charger", {})
            port = _free_port()
            cp = MeteringChargePoint(port, a.events_hz)
            cp.start()
            try:
                driver = run("action", "charger", "ocpp_charger",
                             {"port": port, "charge_point_id": "CP-1"}, events=lambda: cp.acked)  # fmt: skip
            finally:
                cp.stop()
            rows.append(("ocpp_charger (events)", model, driver))
        finally:
            broker.stop()

    print(f"period {a.period_s:g} s (target {1 / a.period_s:g} msg/s), counterpart events "
          f"{a.events_hz:g}/s, {a.seconds:g} s per unit, {os.cpu_count()} cores")  # fmt: skip
    print(f"{'driver':24} {'msg/s':>7} {'model':>7} {'ratio':>6}  {'events/s':>8}  "
          f"{'CPU %':>6} {'model':>6} {'ratio':>6}  {'CPU/msg ratio':>13}")  # fmt: skip
    for name, (m_rate, _, m_cpu), (d_rate, d_events, d_cpu) in rows:
        per_msg = (
            (d_cpu / d_rate) / (m_cpu / m_rate) if d_rate and m_rate and m_cpu else float("nan")
        )
        events = f"{d_events:8.1f}" if d_events else f"{'-':>8}"
        print(f"{name:24} {d_rate:7.1f} {m_rate:7.1f} {d_rate / m_rate:6.2f}  {events}  "
              f"{100 * d_cpu:6.1f} {100 * m_cpu:6.1f} {d_cpu / m_cpu:6.2f}  {per_msg:13.2f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    with docpage.recorded("device_drivers"):  # --docs: its page of the site too
        sys.exit(main())
