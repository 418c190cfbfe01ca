"""Real counterparts of the drivers, shared by tests/drivers and bench/device_drivers.py: pymodbus's
own Modbus TCP server holding SunSpec register maps (and the builder of those maps), an OCPP 1.6J
charge point simulated with the ocpp package, and a plain Mosquitto playing a Zigbee2MQTT broker.

The register offsets here come from the SunSpec model definitions (sunspec/models,
json/model_*.json) and are written independently of redy.drivers.sunspec, so that a wrong
offset there fails here.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from ocpp import v201
from ocpp.routing import on
from ocpp.v16 import ChargePoint, call, call_result
from ocpp.v16.enums import Action

BASE = 40000

# Offsets from the first register after a model's ID and L.
M203 = {"len": 105, "W": 16, "W_SF": 20, "TotWhExp": 36, "TotWhImp": 44, "TotWh_SF": 52}
M701 = {"len": 153, "W": 8, "TotWhInj": 17, "TotWhAbs": 21, "W_SF": 114, "TotWh_SF": 118}
M704 = {"len": 57, "WMaxLimPctEna": 12, "WMaxLimPct": 13, "WMaxLimPct_SF": 52}
M103 = {"len": 50, "W": 12, "W_SF": 13, "WH": 22, "WH_SF": 24}
M123 = {"len": 24, "Conn": 2, "WMaxLimPct": 3, "WMaxLim_Ena": 7, "WMaxLimPct_SF": 21}
# sunspec/models json/model_124.json and model_802.json (data offsets).
M124 = {"len": 24, "StorCtl_Mod": 3, "MinRsvPct": 5, "ChaState": 6, "OutWRte": 10,
        "InWRte": 11, "MinRsvPct_SF": 19, "ChaState_SF": 20, "InOutWRte_SF": 23}  # fmt: skip
M802 = {"len": 62, "WHRtg": 1, "SoCMax": 5, "SoCMin": 6, "SocRsvMax": 7, "SoCRsvMin": 8,
        "SoC": 9, "SoC_SF": 54}  # fmt: skip


def words(value: int, n: int) -> list[int]:
    """A big-endian unsigned value over n registers (acc32: 2, uint64: 4)."""
    return [(value >> (16 * (n - 1 - i))) & 0xFFFF for i in range(n)]


def sunspec_map(
    *models: tuple[int, dict[str, int], dict[int, int]],
) -> tuple[list[int], dict[int, int]]:
    """Registers from BASE: 'SunS', common model 1, each (id, layout, {offset: raw}), the end
    marker; and the address of each model's first data register."""
    regs = [0x5375, 0x6E53]
    where: dict[int, int] = {}
    for model, layout, values in ((1, {"len": 66}, {}), *models):
        regs += [model, layout["len"]]
        where[model] = BASE + len(regs)
        block = [0] * layout["len"]
        for offset, raw in values.items():
            block[offset] = raw & 0xFFFF
        regs += block
    return [*regs, 0xFFFF, 0], where


def spread(layout: dict[str, int], **points: Any) -> dict[int, int]:
    """{offset: raw} of named points; a list value fills consecutive registers."""
    out: dict[int, int] = {}
    for name, value in points.items():
        for i, raw in enumerate(value if isinstance(value, list) else [value]):
            out[layout[name] + i] = raw
    return out


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
        """Stop listening and close every connection (idempotent)."""
        if not self._thread.is_alive():
            return
        if self._server is not None:
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(self._server.shutdown(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        if not self._thread.is_alive():
            self._loop.close()


# --- OCPP 1.6J ---------------------------------------------------------------------------------

CP_ID = "CP-1"
T1 = "2026-03-01T12:00:00Z"


class SimulatedChargePoint(ChargePoint):
    """A charge point as the ocpp package models one, answering the CSMS's requests."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.profiles: list[dict[str, Any]] = []
        self.profile_answer = "Accepted"
        self.energy_wh = 1000

    @on(Action.set_charging_profile)
    async def on_set_charging_profile(
        self, connector_id: int, cs_charging_profiles: dict[str, Any], **_kw: Any
    ) -> Any:
        self.profiles.append({"connector_id": connector_id, **cs_charging_profiles})
        return call_result.SetChargingProfile(status=self.profile_answer)

    @on(Action.trigger_message)
    async def on_trigger_message(self, requested_message: str, **_kw: Any) -> Any:
        if requested_message == "MeterValues":
            asyncio.get_running_loop().call_soon(
                lambda: asyncio.ensure_future(self.meter(T1, energy_wh=self.energy_wh))
            )
        return call_result.TriggerMessage(status="Accepted")

    async def meter(self, ts: str, energy_wh: Any = None, power_w: Any = None) -> None:
        values = []
        if energy_wh is not None:
            values.append(
                {
                    "value": str(energy_wh),
                    "measurand": "Energy.Active.Import.Register",
                    "unit": "Wh",
                }
            )
        if power_w is not None:
            values.append({"value": str(power_w), "measurand": "Power.Active.Import", "unit": "W"})
        await self.call(
            call.MeterValues(connector_id=1, meter_value=[{"timestamp": ts, "sampled_value": values}])
        )  # fmt: skip


class SimulatedChargingStation(v201.ChargePoint):
    """An OCPP 2.0.1 charging station as the ocpp package models one (EVSE 1)."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.profiles: list[dict[str, Any]] = []
        self.profile_answer = "Accepted"

    @on(v201.enums.Action.set_charging_profile)
    async def on_set_charging_profile(
        self, evse_id: int, charging_profile: dict[str, Any], **_kw: Any
    ) -> Any:
        self.profiles.append({"evse_id": evse_id, **charging_profile})
        return v201.call_result.SetChargingProfile(status=self.profile_answer)

    @on(v201.enums.Action.trigger_message)
    async def on_trigger_message(self, requested_message: str, **_kw: Any) -> Any:
        if requested_message == "MeterValues":
            reading = [{"timestamp": T1, "sampled_value": [{"value": 1000.0}]}]  # Wh by default
            asyncio.get_running_loop().call_soon(
                lambda: asyncio.ensure_future(
                    self.call(v201.call.MeterValues(evse_id=1, meter_value=reading))
                )
            )
        return v201.call_result.TriggerMessage(status="Accepted")


class ChargePointRunner:
    """Runs one simulated charge point on its own event loop thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.cp: Any = None
        self.ws: Any = None
        self.tasks: list[asyncio.Task[None]] = []

    def run(self, coro: Any, timeout_s: float = 10.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout_s)

    def connect(self, port: int, protocol: str = "ocpp1.6") -> Any:
        """A charge point of `protocol` ("ocpp1.6" or "ocpp2.0.1") connected and booted."""
        from websockets.asyncio.client import connect

        async def go() -> Any:
            self.ws = await connect(f"ws://127.0.0.1:{port}/{CP_ID}", subprotocols=[protocol])  # type: ignore[list-item]
            v16 = protocol == "ocpp1.6"
            cp = (SimulatedChargePoint if v16 else SimulatedChargingStation)(CP_ID, self.ws)

            async def serve() -> None:
                with contextlib.suppress(Exception):  # the websocket closing ends it
                    await cp.start()

            self.tasks.append(self.loop.create_task(serve()))
            await cp.call(
                call.BootNotification(charge_point_model="Sim", charge_point_vendor="redy-test")
                if v16
                else v201.call.BootNotification(
                    charging_station={"model": "Sim", "vendor_name": "redy-test"},
                    reason="PowerUp",
                )
            )
            return cp

        def attempt() -> Any:
            try:
                return self.run(go())
            except OSError:
                return None  # the CSMS is not listening yet

        deadline = time.monotonic() + 10.0
        while (cp := attempt()) is None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"no CSMS accepting charge points on port {port}")
            time.sleep(0.05)
        self.cp = cp
        return cp

    def close(self) -> None:
        if self.ws is not None:
            self.run(self.ws.close())
        for task in self.tasks:
            self.loop.call_soon_threadsafe(task.cancel)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        if not self.thread.is_alive():
            self.loop.close()


# --- Zigbee2MQTT's broker ----------------------------------------------------------------------


def start_plain_mosquitto(port: int, folder: Path) -> subprocess.Popen[bytes]:
    """A Mosquitto on 127.0.0.1:`port` configured like a typical Zigbee2MQTT set-up (anonymous,
    one listener), accepting connections when this returns."""
    conf = folder / "z2m-mosquitto.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nlog_dest stderr\n"
    )
    exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    with open(folder / "z2m-mosquitto.log", "wb") as log:
        proc = subprocess.Popen([exe, "-c", str(conf)], stdout=log, stderr=log)
    deadline = time.monotonic() + 10.0
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return proc
        time.sleep(0.05)
    proc.kill()
    raise TimeoutError(f"mosquitto did not listen on {port}")
