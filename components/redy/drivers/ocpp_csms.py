"""EV chargers over OCPP 1.6J or 2.0.1: the unit is the charging station management system (CSMS).

The unit listens for its one charge point's websocket (`ws://HOST:PORT/<charge_point_id>`,
subprotocol `ocpp1.6` or `ocpp2.0.1`), accepts its BootNotification, follows its transactions
(1.6: Start/StopTransaction; 2.0.1: TransactionEvent) and meter values
(`Energy.Active.Import.Register`, `Power.Active.Import`, with the charge point's own timestamps),
asks for a meter reading after boot (TriggerMessage), and applies the market's dispatch with
SetChargingProfile: a TxProfile on the running transaction, else a TxDefaultProfile for the next
one, in W. `connector_id` is the connector (1.6) or the EVSE (2.0.1) the unit drives.

What the EV states reaches the plan: its state of charge from the `SoC` measurand of its meter
values (both versions, in Percent), and in 2.0.1 its charging needs (NotifyEVChargingNeeds:
`energyAmount` in Wh of the AC or DC charging parameters, `departureTime`): the energy still due
is that amount less what the meter has counted since, the deadline its departure. A charge point
that states no departure gives no deadline, and none is invented; the needs end with the
transaction.

The CSMS runs in its own asyncio loop on a thread; the unit's loop calls read() and apply(),
which hand work to that loop and wait with a timeout.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import math
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from redy.devices.base import Applied, Limits, clamp
from redy.drivers.base import (
    Driver,
    Sample,
    check_charge_point_id,
    check_host,
    check_port,
    check_positive,
)
from redy.errors import DeviceError, DeviceFault, DeviceUnavailable

_log = logging.getLogger(__name__)
logging.getLogger("ocpp").setLevel(logging.WARNING)  # it logs every frame at INFO
logging.getLogger("websockets").setLevel(logging.WARNING)

ENERGY = "Energy.Active.Import.Register"
POWER = "Power.Active.Import"
SOC = "SoC"
MAX_DEPARTURE_S = 7 * 86400.0  # a departure further ahead is no plan's business (nor a date)
_SCALE = {"Wh": 1.0, "kWh": 1000.0, "W": 1.0, "kW": 1000.0}
PROFILE_ID = 7301  # ours; a SetChargingProfile with the same id replaces the previous one
PROTOCOLS = ("ocpp1.6", "ocpp2.0.1")


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
    """[(timestamp, energy register Wh or None, power W or None)] of a `meter_value` list (snake
    case keys, as the ocpp package gives them; 1.6 `unit` and text values, or 2.0.1
    `unit_of_measure` with a multiplier and numbers); DeviceFault on a value that is not a
    finite non-negative number in a known unit."""
    if not isinstance(meter_value, list):
        raise DeviceFault("meterValue must be a list")
    out = []
    for mv in meter_value:
        ts = _timestamp(mv.get("timestamp"))
        energy = power = None
        for sv in mv.get("sampled_value", []):
            measurand = sv.get("measurand", ENERGY)  # the default measurand of both versions
            if measurand not in (ENERGY, POWER) or sv.get("phase"):
                continue  # other quantities and per-phase values are not ours
            value = _scaled(sv, measurand)
            if measurand == ENERGY:
                energy = value
            else:
                power = value
        out.append((ts, energy, power))
    return out


def _scaled(sv: dict[str, Any], measurand: str) -> float:
    """One sampled value in Wh or W."""
    default = "Wh" if measurand == ENERGY else "W"
    measure = sv.get("unit_of_measure") or {}
    unit = sv.get("unit") or measure.get("unit") or default
    multiplier = measure.get("multiplier", 0)
    if unit not in _SCALE or (measurand == ENERGY) != unit.endswith("h"):
        raise DeviceFault(f"{measurand} in unknown unit {unit!r}")
    if not isinstance(multiplier, int) or not -3 <= multiplier <= 3:
        raise DeviceFault(f"{measurand} has an unknown multiplier {multiplier!r}")
    raw = sv.get("value")
    try:
        if isinstance(raw, bool) or not isinstance(raw, int | float | str):
            raise ValueError
        value = float(raw) * _SCALE[unit] * 10.0**multiplier
    except ValueError:
        raise DeviceFault(f"{measurand} is not a number: {raw!r}") from None
    if not math.isfinite(value) or value < 0:
        raise DeviceFault(f"{measurand} {value:g} is out of range (expected >= 0)")
    return value


def parse_ev_soc(meter_value: Any) -> float | None:
    """The EV's last state of charge (0..1) in a `meter_value` list, from its `SoC` measurand
    (Percent; 1.6 text or 2.0.1 numbers with a multiplier); None when there is none; ValueError
    naming what was expected when it is not a percentage 0..100."""
    soc = None
    for mv in meter_value if isinstance(meter_value, list) else []:
        for sv in mv.get("sampled_value", []) if isinstance(mv, dict) else []:
            if sv.get("measurand") != SOC:
                continue
            measure = sv.get("unit_of_measure") or {}
            unit = sv.get("unit") or measure.get("unit") or "Percent"
            multiplier = measure.get("multiplier", 0)
            raw = sv.get("value")
            try:
                if (
                    unit != "Percent"
                    or not isinstance(multiplier, int)
                    or not -3 <= multiplier <= 3
                    or isinstance(raw, bool)
                ):
                    raise ValueError
                value = float(raw) * 10.0**multiplier
            except (TypeError, ValueError):
                value = math.nan
            if not 0.0 <= value <= 100.0:  # NaN too
                raise ValueError(
                    f"{SOC} {raw!r} {unit} is not a state of charge (expected 0..100 Percent)"
                )
            soc = value / 100.0
    return soc


def parse_charging_needs(needs: Any, now_unix: float) -> tuple[float | None, float | None]:
    """(energy Wh the EV asks for or None, departure UNIX s or None) of a 2.0.1 `charging_needs`
    (snake case, as the ocpp package gives it) received at `now_unix`; ValueError naming what
    was expected (a departure at most MAX_DEPARTURE_S ahead)."""
    if not isinstance(needs, dict):
        raise ValueError("chargingNeeds is not an object")
    energy = None
    for key in ("ac_charging_parameters", "dc_charging_parameters"):
        params = needs.get(key)
        if isinstance(params, dict) and params.get("energy_amount") is not None:
            raw = params["energy_amount"]
            if isinstance(raw, bool) or not isinstance(raw, int | float) or not 0 <= raw <= 1.0e9:
                raise ValueError(f"energyAmount {raw!r} is not an energy (expected 0..1e9 Wh)")
            energy = float(raw)
    departure = needs.get("departure_time")
    try:
        when = None if departure is None else _timestamp(departure)
    except DeviceFault as exc:
        raise ValueError(f"departureTime: {exc}") from None
    if when is not None and when - now_unix > MAX_DEPARTURE_S:
        raise ValueError(
            f"departureTime {departure} is more than {MAX_DEPARTURE_S / 86400:g} days ahead "
            "(expected the EV's departure from this charge)"
        )
    return energy, when


class OcppCharger(Driver):
    """One OCPP charge point (one connector or EVSE) under an EV station's action unit."""

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
        protocol: str = "ocpp1.6",
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
        if protocol not in PROTOCOLS:
            raise DeviceError(f"protocol must be one of {list(PROTOCOLS)}, got {protocol!r}")
        self.protocol = protocol
        self._timeout_s = check_positive(timeout_s, "timeout_s")
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._cp: Any = None  # the connected charge point's session
        self._booted = False
        self.transaction_id: int | str | None = None  # 2.0.1 names it with text
        self.status: str | None = None
        self._energy_wh: float | None = None
        self._power_w = 0.0
        self._ts: float | None = None
        self._fault: str | None = None
        self._limit_w: float | None = None
        self._next_tx = 1
        self._ev_soc: float | None = None
        self._need_wh: float | None = None  # NotifyEVChargingNeeds: energy asked for
        self._need_from_wh: float | None = None  # the meter's register when it asked
        self._departure_s: float | None = None
        self._now_s = 0.0  # the unit's clock at the last read
        self._ev_problem: str | None = None

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
            subprotocols=[self.protocol],  # type: ignore[list-item]
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
        if path != self.charge_point_id or ws.subprotocol != self.protocol:
            _log.warning(
                "%s: refused a charge point at %r (subprotocol %s); expected /%s with %s",
                self.kind,
                ws.request.path,
                ws.subprotocol,
                self.charge_point_id,
                self.protocol,
            )
            await ws.close(1008, "unknown charge point")
            return
        session = _session_class(self.protocol)(
            self.charge_point_id, ws, response_timeout=self._timeout_s
        )
        session.driver = self
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
                if self._need_wh is not None and self._need_from_wh is None:
                    self._need_from_wh = energy_wh  # the needs came before the first reading
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

    def on_ev(self, soc: float | None = None, problem: str | None = None) -> None:
        """What the EV stated of its charge: a state of charge, or one that is not reported
        (one log line per new problem; the meter's numbers stand)."""
        with self._lock:
            if problem is not None:
                if problem != self._ev_problem:
                    _log.warning(
                        "%s %s: not reported: %s", self.kind, self.charge_point_id, problem
                    )
                self._ev_problem = problem
                return
            if soc is not None:
                self._ev_soc, self._ev_problem = soc, None

    def on_needs(self, energy_wh: float | None, departure_s: float | None) -> None:
        """NotifyEVChargingNeeds: the energy the EV asks for and when it leaves."""
        with self._lock:
            self._need_wh, self._departure_s = energy_wh, departure_s
            self._need_from_wh = self._energy_wh

    def on_transaction(
        self, transaction_id: int | str | None, meter_wh: float | None, ts: float
    ) -> None:
        with self._lock:
            self.transaction_id = transaction_id
            if transaction_id is None:  # the EV has gone: what it stated goes with it
                self._power_w = 0.0
                self._ev_soc = self._need_wh = self._departure_s = None
        self.on_meter(meter_wh, None, ts)

    def new_transaction_id(self) -> int:
        with self._lock:
            self._next_tx += 1
            return self._next_tx - 1

    # -- the unit side --------------------------------------------------------------------------

    def soc_now(self) -> float | None:
        """The EV's state of charge as it last stated it (0..1), None when it states none."""
        with self._lock:
            return self._ev_soc

    def due(self) -> tuple[float, float] | None:
        """(kWh still due, s to departure) from the EV's charging needs (OCPP 2.0.1), the energy
        counted since it asked taken off; None unless it stated both."""
        with self._lock:
            if self._need_wh is None or self._departure_s is None or self._now_s <= 0:
                return None  # (before the first read, no clock to count the time left by)
            drawn_wh = 0.0
            if self._energy_wh is not None and self._need_from_wh is not None:
                drawn_wh = max(self._energy_wh - self._need_from_wh, 0.0)
            left_kwh = max(self._need_wh - drawn_wh, 0.0) / 1000.0
            return left_kwh, max(self._departure_s - self._now_s, 0.0)

    def read(self, now_unix: float) -> Sample:
        with self._lock:
            self._now_s = now_unix
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
            session.set_limit(self.connector_id, tx, limit_kw * 1000.0), loop
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


def _now_iso() -> str:
    return dt.datetime.now(dt.UTC).isoformat().replace("+00:00", "Z")


def _profile(tx: int | str | None, limit_w: float) -> dict[str, Any]:
    """Our charging profile (snake_case, as the ocpp package takes it): one period from now."""
    out: dict[str, Any] = {
        "stack_level": 0,
        "charging_profile_purpose": "TxProfile" if tx is not None else "TxDefaultProfile",
        "charging_profile_kind": "Relative",
    }
    if tx is not None:
        out["transaction_id"] = tx
    return out | {"schedule": {
        "charging_rate_unit": "W",
        "charging_schedule_period": [{"start_period": 0, "limit": round(limit_w, 1)}],
    }}  # fmt: skip


_SESSIONS: dict[str, Any] = {}


def _session_class(protocol: str) -> Any:
    """The ocpp package's ChargePoint class of `protocol` with our CSMS handlers (built on first
    use, so importing this module does not import ocpp)."""
    if protocol not in _SESSIONS:
        _SESSIONS[protocol] = _v16() if protocol == "ocpp1.6" else _v201()
    return _SESSIONS[protocol]


class _Handlers:
    """What both versions' sessions share: the driver they report to, and meter bookkeeping."""

    driver: OcppCharger
    id: str

    def _meter(self, fn: Any) -> None:
        try:
            fn()
        except DeviceFault as exc:
            self.driver.on_fault(str(exc))

    def _take(self, meter_value: Any) -> None:
        try:
            self.driver.on_ev(soc=parse_ev_soc(meter_value))
        except ValueError as exc:
            self.driver.on_ev(problem=str(exc))
        for ts, energy, power in parse_meter_values(meter_value):
            self.driver.on_meter(energy, power, ts)

    def trigger_reading(self) -> Any:
        """This version's TriggerMessage asking for MeterValues."""
        raise NotImplementedError

    def _after_boot(self) -> None:
        """Ask for a reading now, not at the next transaction (optional for a charge point)."""

        async def ask() -> None:
            try:
                await self.call(self.trigger_reading())  # type: ignore[attr-defined]
            except Exception as exc:
                _log.info("charge point %s: TriggerMessage not answered (%s)", self.id, exc)

        self.driver.on_boot()
        asyncio.get_running_loop().call_soon(lambda: asyncio.ensure_future(ask()))


_Handler = TypeVar("_Handler", bound=Callable[..., Any])


class _Route(Protocol):
    """ocpp.routing.on, typed (ocpp ships no types): it marks a handler and returns it as is."""

    def __call__(self, action: Any) -> Callable[[_Handler], _Handler]: ...


def _common(on: _Route, action: Any, call_result: Any) -> type[_Handlers]:
    """The handlers both versions answer alike, routed with that version's enums and results."""

    class Common(_Handlers):
        @on(action.boot_notification)
        async def on_boot(self, **_kw: Any) -> Any:
            self._after_boot()
            return call_result.BootNotification(
                current_time=_now_iso(), interval=30, status="Accepted"
            )

        @on(action.heartbeat)
        async def on_heartbeat(self, **_kw: Any) -> Any:
            return call_result.Heartbeat(current_time=_now_iso())

    return Common


def _v16() -> Any:
    from ocpp import routing
    from ocpp.v16 import ChargePoint, call, call_result
    from ocpp.v16.enums import Action

    on: _Route = routing.on

    class Session(_common(on, Action, call_result), ChargePoint):  # type: ignore[misc]
        async def set_limit(self, connector_id: int, tx: int | str | None, limit_w: float) -> str:
            profile = _profile(tx, limit_w)
            profile["charging_schedule"] = profile.pop("schedule")
            profile["charging_profile_id"] = PROFILE_ID
            result = await self.call(
                call.SetChargingProfile(connector_id=connector_id, cs_charging_profiles=profile)
            )
            return str(result.status)

        def trigger_reading(self) -> Any:
            return call.TriggerMessage(
                requested_message="MeterValues", connector_id=self.driver.connector_id
            )

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
                self._meter(lambda: self._take(meter_value))
            return call_result.MeterValues()

    return Session


def _v201() -> Any:
    from ocpp import routing
    from ocpp.v201 import ChargePoint, call, call_result
    from ocpp.v201.enums import Action

    on: _Route = routing.on

    class Session(_common(on, Action, call_result), ChargePoint):  # type: ignore[misc]
        async def set_limit(self, evse_id: int, tx: int | str | None, limit_w: float) -> str:
            profile = _profile(None if tx is None else str(tx), limit_w)
            profile["charging_schedule"] = [{"id": 1, **profile.pop("schedule")}]
            profile["id"] = PROFILE_ID
            result = await self.call(
                call.SetChargingProfile(evse_id=evse_id, charging_profile=profile)
            )
            return str(result.status)

        def trigger_reading(self) -> Any:
            return call.TriggerMessage(
                requested_message="MeterValues", evse={"id": self.driver.connector_id}
            )

        @on(Action.status_notification)
        async def on_status(self, evse_id: int, connector_status: str, **_kw: Any) -> Any:
            if evse_id == self.driver.connector_id:
                self.driver.status = connector_status
            return call_result.StatusNotification()

        @on(Action.authorize)
        async def on_authorize(self, **_kw: Any) -> Any:
            return call_result.Authorize(id_token_info={"status": "Accepted"})

        @on(Action.transaction_event)
        async def on_transaction_event(
            self,
            event_type: str,
            timestamp: str,
            transaction_info: dict[str, Any],
            meter_value: Any = None,
            evse: dict[str, Any] | None = None,
            **_kw: Any,
        ) -> Any:
            if evse is None or evse.get("id") == self.driver.connector_id:
                tx = None if event_type == "Ended" else transaction_info.get("transaction_id")

                def take() -> None:
                    if tx is None:  # the last reading belongs to the ending transaction
                        self._take(meter_value or [])
                    self.driver.on_transaction(tx, None, _timestamp(timestamp))
                    if tx is not None:
                        self._take(meter_value or [])

                self._meter(take)
            return call_result.TransactionEvent()

        @on(Action.meter_values)
        async def on_meter_values(self, evse_id: int, meter_value: Any, **_kw: Any) -> Any:
            if evse_id == self.driver.connector_id:
                self._meter(lambda: self._take(meter_value))
            return call_result.MeterValues()

        @on(Action.notify_ev_charging_needs)
        async def on_charging_needs(self, charging_needs: Any, evse_id: int, **_kw: Any) -> Any:
            if evse_id != self.driver.connector_id:
                return call_result.NotifyEVChargingNeeds(status="Rejected")
            try:
                energy_wh, departure_s = parse_charging_needs(charging_needs, time.time())
            except ValueError as exc:
                self.driver.on_ev(problem=f"NotifyEVChargingNeeds: {exc}")
                return call_result.NotifyEVChargingNeeds(status="Rejected")
            self.driver.on_needs(energy_wh, departure_s)
            return call_result.NotifyEVChargingNeeds(status="Accepted")

    return Session
