"""EV chargers over OCPP 1.6J: the unit is the charging station management system (CSMS).

The unit listens for its one charge point's websocket (`ws://HOST:PORT/<charge_point_id>`,
subprotocol `ocpp1.6`), accepts its BootNotification, follows StatusNotification, Start- and
StopTransaction and MeterValues (`Energy.Active.Import.Register`, `Power.Active.Import`, with the
charge point's own timestamps), asks for a meter reading after boot (TriggerMessage), and applies
the market's dispatch with SetChargingProfile: a TxProfile on the running transaction, else a
TxDefaultProfile for the next one, in W.

The CSMS runs in its own asyncio loop on a thread; the unit's loop calls read() and apply(),
which hand work to that loop and wait with a timeout.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import math
import threading
from typing import Any

from redy.devices.base import Applied, DeviceError, Limits, clamp
from redy.drivers.base import (
    DeviceFault,
    DeviceUnavailable,
    Driver,
    Sample,
    check_charge_point_id,
    check_host,
    check_port,
    check_positive,
)

_log = logging.getLogger(__name__)
logging.getLogger("ocpp").setLevel(logging.WARNING)  # it logs every frame at INFO
logging.getLogger("websockets").setLevel(logging.WARNING)

ENERGY = "Energy.Active.Import.Register"
POWER = "Power.Active.Import"
_SCALE = {"Wh": 1.0, "kWh": 1000.0, "W": 1.0, "kW": 1000.0}
PROFILE_ID = 7301  # ours; a SetChargingProfile with the same id replaces the previous one


def _timestamp(value: Any) -> float:
    if not isinstance(value, str):
        raise DeviceFault(f"timestamp must be ISO 8601 text, got {value!r}")
    try:
        stamp = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise DeviceFault(f"timestamp is not ISO 8601: {value!r}") from None
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=dt.UTC)
    return stamp.timestamp()


def parse_meter_values(meter_value: Any) -> list[tuple[float, float | None, float | None]]:
    """[(timestamp, energy register Wh or None, power W or None)] of a MeterValues.req's
    `meter_value` list (snake_case keys as the ocpp package gives them); DeviceFault on a value
    that is not a finite non-negative number in a known unit."""
    if not isinstance(meter_value, list):
        raise DeviceFault("meterValue must be a list")
    out = []
    for mv in meter_value:
        ts = _timestamp(mv.get("timestamp"))
        energy = power = None
        for sv in mv.get("sampled_value", []):
            measurand = sv.get("measurand", ENERGY)  # OCPP 1.6: the default measurand
            if measurand not in (ENERGY, POWER) or sv.get("phase"):
                continue  # other quantities and per-phase values are not ours
            unit = sv.get("unit", "Wh" if measurand == ENERGY else "W")
            if unit not in _SCALE or (measurand == ENERGY) != unit.endswith("h"):
                raise DeviceFault(f"{measurand} in unknown unit {unit!r}")
            try:
                value = float(sv.get("value")) * _SCALE[unit]
            except (TypeError, ValueError):
                raise DeviceFault(f"{measurand} is not a number: {sv.get('value')!r}") from None
            if not math.isfinite(value) or value < 0:
                raise DeviceFault(f"{measurand} {value:g} is out of range (expected >= 0)")
            if measurand == ENERGY:
                energy = value
            else:
                power = value
        out.append((ts, energy, power))
    return out


class OcppCharger(Driver):
    """One OCPP 1.6J charge point (one connector) under an EV station's action unit."""

    kind = "ocpp_charger"
    actuatable = True
    listens_on = "port"

    def __init__(
        self,
        *,
        port: int,
        charge_point_id: str,
        host: str = "127.0.0.1",
        connector_id: int = 1,
        rated_kw: float = 22.0,
        willingness_eur_mwh: float = 150.0,
        timeout_s: float = 5.0,
    ) -> None:
        super().__init__(
            rated_kw=rated_kw, quantity="consumption", marginal_cost_eur_mwh=willingness_eur_mwh
        )
        self._host = check_host(host)
        self._port = check_port(port)
        self.charge_point_id = check_charge_point_id(charge_point_id)
        if not (isinstance(connector_id, int) and not isinstance(connector_id, bool)) or not (
            1 <= connector_id <= 32
        ):
            raise DeviceError(f"connector_id must be a connector number 1-32, got {connector_id!r}")
        self.connector_id = connector_id
        self._timeout_s = check_positive(timeout_s, "timeout_s")
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._cp: Any = None  # the connected charge point's session
        self._booted = False
        self.transaction_id: int | None = None
        self.status: str | None = None
        self._energy_wh: float | None = None
        self._power_w = 0.0
        self._ts: float | None = None
        self._fault: str | None = None
        self._limit_w: float | None = None
        self._next_tx = 1

    # -- the CSMS (its own loop and thread) -----------------------------------------------------

    def open(self) -> None:
        self._thread = threading.Thread(target=self._serve_forever, name="ocpp-csms", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise DeviceUnavailable(f"{self.kind}: CSMS did not start")
        if self._loop is None:
            raise DeviceError(
                f"{self.kind}: cannot listen on {self._host}:{self._port} (port in use?)"
            )

    def close(self) -> None:
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None:
            loop.call_soon_threadsafe(stop.set)
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    def _serve_forever(self) -> None:
        try:
            asyncio.run(self._serve())
        except OSError as exc:
            _log.error("%s: cannot listen on %s:%s: %s", self.kind, self._host, self._port, exc)
        finally:
            self._ready.set()

    async def _serve(self) -> None:
        from websockets.asyncio.server import serve

        self._stop = asyncio.Event()
        async with serve(
            self._on_connection,
            self._host,
            self._port,
            subprotocols=["ocpp1.6"],  # type: ignore[list-item]
        ):
            self._loop = asyncio.get_running_loop()
            self._ready.set()
            _log.info(
                "%s: CSMS listening on ws://%s:%d/%s",
                self.kind,
                self._host,
                self._port,
                self.charge_point_id,
            )
            await self._stop.wait()

    async def _on_connection(self, ws: Any) -> None:
        path = ws.request.path.rstrip("/").rsplit("/", 1)[-1]
        if path != self.charge_point_id or ws.subprotocol != "ocpp1.6":
            _log.warning(
                "%s: refused a charge point at %r (subprotocol %s); expected /%s with ocpp1.6",
                self.kind,
                ws.request.path,
                ws.subprotocol,
                self.charge_point_id,
            )
            await ws.close(1008, "unknown charge point")
            return
        session = _csms_session(self)(self.charge_point_id, ws, response_timeout=self._timeout_s)
        with self._lock:
            self._cp, self._booted = session, False
        _log.info("%s: charge point %s connected", self.kind, self.charge_point_id)
        try:
            await session.start()
        except Exception as exc:  # the websocket closed: that ends the session, not the unit
            _log.info("%s: charge point %s gone (%s)", self.kind, self.charge_point_id, exc)
        finally:
            with self._lock:
                if self._cp is session:
                    self._cp, self._booted = None, False

    # -- what the charge point tells (called on the CSMS loop) ---------------------------------

    def on_boot(self) -> None:
        with self._lock:
            self._booted = True

    def on_meter(self, energy_wh: float | None, power_w: float | None, ts: float) -> None:
        with self._lock:
            if energy_wh is not None:
                if self._energy_wh is not None and energy_wh + 1.0 < self._energy_wh:
                    self._fault = (
                        f"energy register went back from {self._energy_wh:g} to {energy_wh:g} Wh"
                    )
                    return
                self._energy_wh = energy_wh
            if power_w is not None:
                if power_w > 1.5 * self.rated_kw * 1000.0:
                    self._fault = (
                        f"{POWER} {power_w:g} W is out of range (expected <= "
                        f"{1.5 * self.rated_kw * 1000.0:g} W, 1.5 x rated_kw)"
                    )
                    return
                self._power_w = power_w
            self._ts = ts
            self._fault = None

    def on_fault(self, problem: str) -> None:
        with self._lock:
            self._fault = problem

    def on_transaction(self, transaction_id: int | None, meter_wh: float, ts: float) -> None:
        with self._lock:
            self.transaction_id = transaction_id
            if transaction_id is None:
                self._power_w = 0.0
        self.on_meter(meter_wh, None, ts)

    def new_transaction_id(self) -> int:
        with self._lock:
            self._next_tx += 1
            return self._next_tx - 1

    # -- the unit side --------------------------------------------------------------------------

    def read(self, now_unix: float) -> Sample:
        with self._lock:
            where = f"{self.kind} {self.charge_point_id}"
            if self._cp is None or not self._booted:
                raise DeviceUnavailable(f"{where}: charge point not connected")
            if self._fault is not None:
                raise DeviceFault(f"{where}: {self._fault}")
            if self._energy_wh is None or self._ts is None:
                raise DeviceUnavailable(f"{where}: no meter reading yet")
            power_w = self._power_w if self.transaction_id is not None else 0.0
            return Sample(
                ts_s=self._ts,
                power_kw=-power_w / 1000.0,
                energy_kwh=-self._energy_wh / 1000.0,
                on=self._limit_w is None or self._limit_w > 0,
                setpoint_kw=None if self._limit_w is None else -self._limit_w / 1000.0,
            )

    def apply(self, setpoint_kw: float | None = None, on: bool | None = None) -> Applied:
        """Limit the charging power to -setpoint_kw (a consumption is negative), 0 when off."""
        note = None
        if on is False:
            limit_kw = 0.0
        elif setpoint_kw is not None:
            limit_kw = clamp(-setpoint_kw, 0.0, self.rated_kw)
            if limit_kw != -setpoint_kw:
                note = f"setpoint {setpoint_kw:g} kW clamped to [{-self.rated_kw:g}, 0] kW"
        else:
            limit_kw = self.rated_kw
        with self._lock:
            session, tx, loop = self._cp, self.transaction_id, self._loop
        if session is None or loop is None:
            raise DeviceUnavailable(f"{self.kind} {self.charge_point_id}: not connected")
        future = asyncio.run_coroutine_threadsafe(
            _set_profile(session, self.connector_id, tx, limit_kw * 1000.0), loop
        )
        try:
            status = future.result(self._timeout_s + 1.0)
        except Exception as exc:
            future.cancel()
            raise DeviceUnavailable(
                f"{self.kind} {self.charge_point_id}: SetChargingProfile not answered "
                f"({type(exc).__name__})"
            ) from None
        if status != "Accepted":
            raise DeviceFault(
                f"{self.kind} {self.charge_point_id}: SetChargingProfile {status.lower()}"
            )
        with self._lock:
            self._limit_w = limit_kw * 1000.0
        return Applied(-limit_kw, limit_kw > 0, note)

    def limits(self, sample: Sample) -> Limits:
        with self._lock:
            charging = self.transaction_id is not None
        return Limits(-self.rated_kw if charging else 0.0, 0.0)


async def _set_profile(session: Any, connector_id: int, tx: int | None, limit_w: float) -> str:
    from ocpp.v16 import call

    profile: dict[str, Any] = {
        "charging_profile_id": PROFILE_ID,
        "stack_level": 0,
        "charging_profile_purpose": "TxProfile" if tx is not None else "TxDefaultProfile",
        "charging_profile_kind": "Relative",
        "charging_schedule": {
            "charging_rate_unit": "W",
            "charging_schedule_period": [{"start_period": 0, "limit": round(limit_w, 1)}],
        },
    }
    if tx is not None:
        profile["transaction_id"] = tx
    result = await session.call(
        call.SetChargingProfile(connector_id=connector_id, cs_charging_profiles=profile)
    )
    return str(result.status)


_SESSION_CLASS: Any = None


def _csms_session(driver: OcppCharger) -> Any:
    """The ocpp package's ChargePoint class with our CSMS handlers (built once, on first use,
    so importing this module does not import ocpp)."""
    global _SESSION_CLASS
    if _SESSION_CLASS is not None:
        return _bind(_SESSION_CLASS, driver)
    from ocpp.routing import on
    from ocpp.v16 import ChargePoint, call, call_result
    from ocpp.v16.enums import Action

    def now_iso() -> str:
        return dt.datetime.now(dt.UTC).isoformat().replace("+00:00", "Z")

    class Session(ChargePoint):
        driver: OcppCharger

        @on(Action.boot_notification)
        async def on_boot(self, **_kw: Any) -> Any:
            self.driver.on_boot()
            asyncio.get_running_loop().call_later(0.0, lambda: asyncio.ensure_future(self._ask()))
            return call_result.BootNotification(
                current_time=now_iso(), interval=30, status="Accepted"
            )

        async def _ask(self) -> None:
            try:  # a reading now, not at the next transaction; optional in OCPP 1.6
                await self.call(
                    call.TriggerMessage(
                        requested_message="MeterValues", connector_id=self.driver.connector_id
                    )
                )
            except Exception as exc:
                _log.info("charge point %s: TriggerMessage not answered (%s)", self.id, exc)

        @on(Action.heartbeat)
        async def on_heartbeat(self, **_kw: Any) -> Any:
            return call_result.Heartbeat(current_time=now_iso())

        @on(Action.status_notification)
        async def on_status(self, connector_id: int, status: str, **_kw: Any) -> Any:
            if connector_id == self.driver.connector_id:
                self.driver.status = status
            return call_result.StatusNotification()

        @on(Action.authorize)
        async def on_authorize(self, **_kw: Any) -> Any:
            return call_result.Authorize(id_tag_info={"status": "Accepted"})

        @on(Action.start_transaction)
        async def on_start(
            self, connector_id: int, meter_start: int, timestamp: str, **_kw: Any
        ) -> Any:
            tx = self.driver.new_transaction_id()
            if connector_id == self.driver.connector_id:
                self._meter(
                    lambda: self.driver.on_transaction(tx, meter_start, _timestamp(timestamp))
                )
            return call_result.StartTransaction(
                transaction_id=tx, id_tag_info={"status": "Accepted"}
            )

        @on(Action.stop_transaction)
        async def on_stop(self, meter_stop: int, timestamp: str, **_kw: Any) -> Any:
            self._meter(lambda: self.driver.on_transaction(None, meter_stop, _timestamp(timestamp)))
            return call_result.StopTransaction(id_tag_info={"status": "Accepted"})

        @on(Action.meter_values)
        async def on_meter_values(self, connector_id: int, meter_value: Any, **_kw: Any) -> Any:
            if connector_id == self.driver.connector_id:

                def take() -> None:
                    for ts, energy, power in parse_meter_values(meter_value):
                        self.driver.on_meter(energy, power, ts)

                self._meter(take)
            return call_result.MeterValues()

        def _meter(self, fn: Any) -> None:
            try:
                fn()
            except DeviceFault as exc:
                self.driver.on_fault(str(exc))

    _SESSION_CLASS = Session
    return _bind(Session, driver)


def _bind(cls: Any, driver: OcppCharger) -> Any:
    def make(*args: Any, **kw: Any) -> Any:
        session = cls(*args, **kw)
        session.driver = driver
        return session

    return make
