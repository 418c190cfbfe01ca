"""SunSpec meters and inverters over Modbus TCP (pymodbus).

The SunSpec map starts with the marker 'SunS' at a base address (40000 by default), followed by
models, each `[ID, L, L registers]`, up to ID 0xFFFF. Values are integers with a scale factor
register: value = raw x 10^SF. Register offsets are those of the SunSpec model definitions
(sunspec/models json/model_*.json), counted from the first register after ID and L:

- meters 201-204: W 16 (int16), W_SF 20, TotWhExp 36 and TotWhImp 44 (acc32), TotWh_SF 52;
- inverters 101-103: W 12 (int16), W_SF 13, WH 22 (acc32), WH_SF 24;
- DER AC measurement 701: W 8 (int16), TotWhInj 17 and TotWhAbs 21 (uint64), W_SF 114,
  TotWh_SF 118;
- immediate controls 123: WMaxLimPct 3 (uint16, % of WMax), WMaxLim_Ena 7, WMaxLimPct_SF 21;
- DER controls 704: WMaxLimPctEna 12, WMaxLimPct 13, WMaxLimPct_SF 52;
- storage 124: StorCtl_Mod 3 (bit 0: the charge limit InWRte applies, bit 1: the discharge
  limit OutWRte), MinRsvPct 5 (the reserve, % of capacity), ChaState 6 (state of charge, % of
  capacity), OutWRte 10 and InWRte 11 (int16, %), MinRsvPct_SF 19, ChaState_SF 20,
  InOutWRte_SF 23;
- battery 802: SoCMax 5, SoCMin 6 (the manufacturer's bounds), SocRsvMax 7, SoCRsvMin 8 (the
  reserve the owner set), SoC 9, all % of WHRtg with SoC_SF 54.

Unimplemented values (int16 0x8000, uint16 0xFFFF, sunssf 0x8000), scale factors outside
-10..10 and powers beyond 1.5 x rated_kw are DeviceFault: the unit publishes nothing from them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import attrs

from redy.devices.base import Applied, Limits, clamp
from redy.drivers.base import (
    Driver,
    Sample,
    check_host,
    check_modbus_unit_id,
    check_port,
    check_positive,
)
from redy.errors import DeviceError, DeviceFault, DeviceUnavailable

_log = logging.getLogger(__name__)
# pymodbus logs every timeout as an ERROR of its own; the unit says it once, in one line.
logging.getLogger("pymodbus").setLevel(logging.CRITICAL)

MARKER = (0x5375, 0x6E53)  # 'SunS'
END = 0xFFFF
METERS = (201, 202, 203, 204)
INVERTERS = (101, 102, 103)
DER_MEASUREMENT = 701
CONTROLS = (704, 123)  # preferred first
STORAGE_CONTROLS = 124
BATTERY = 802
_MAX_MODELS = 64

Reader = Callable[[int, int], list[int]]


@attrs.frozen
class Block:
    """One model in a device's map: its id, the address of its first data register, its length."""

    model: int
    address: int
    length: int


def discover(read: Reader, base: int) -> dict[int, Block]:
    """Walk a device's SunSpec map from `base`: {model id: Block} (the first of each id)."""
    if tuple(read(base, 2)) != MARKER:
        raise DeviceFault(f"no SunSpec marker 'SunS' at register {base}")
    found: dict[int, Block] = {}
    address = base + 2
    for _ in range(_MAX_MODELS):
        model, length = read(address, 2)
        if model == END:
            return found
        found.setdefault(model, Block(model, address + 2, length))
        address += 2 + length
    raise DeviceFault(f"SunSpec map at {base} has no end marker within {_MAX_MODELS} models")


def int16(raw: int, name: str) -> int:
    if raw == 0x8000:
        raise DeviceFault(f"{name} is not implemented (0x8000)")
    return raw - 0x10000 if raw & 0x8000 else raw


def uint16(raw: int, name: str) -> int:
    if raw == 0xFFFF:
        raise DeviceFault(f"{name} is not implemented (0xFFFF)")
    return raw


def scale_factor(raw: int, name: str) -> int:
    sf = int16(raw, name)
    if not -10 <= sf <= 10:
        raise DeviceFault(f"scale factor {name} = {sf} is out of range (expected -10..10)")
    return sf


def unsigned(regs: list[int], name: str) -> int:
    """A big-endian acc32/uint32/uint64 of 2 or 4 registers; all ones is 'not implemented'."""
    value = 0
    for r in regs:
        value = (value << 16) | r
    if len(regs) == 4 and value == (1 << 64) - 1:
        raise DeviceFault(f"{name} is not implemented (all ones)")
    return value


def _check_length(block: Block, need: int) -> None:
    if block.length < need:
        raise DeviceFault(
            f"SunSpec model {block.model} is {block.length} registers long, expected >= {need}"
        )


def decode_power_energy(block: Block, regs: list[int]) -> tuple[float, float]:
    """(signed W, signed Wh) of a meter, inverter or 701 block, read from its first register;
    for a meter W and Wh as the meter signs them (import +), for the others output +."""
    if block.model in METERS:
        w = int16(regs[16], "W") * 10.0 ** scale_factor(regs[20], "W_SF")
        sf = 10.0 ** scale_factor(regs[52], "TotWh_SF")
        exported = unsigned(regs[36:38], "TotWhExp") * sf
        imported = unsigned(regs[44:46], "TotWhImp") * sf
        return w, imported - exported
    if block.model in INVERTERS:
        w = int16(regs[12], "W") * 10.0 ** scale_factor(regs[13], "W_SF")
        return w, unsigned(regs[22:24], "WH") * 10.0 ** scale_factor(regs[24], "WH_SF")
    w = int16(regs[8], "W") * 10.0 ** scale_factor(regs[114], "W_SF")
    sf = 10.0 ** scale_factor(regs[118], "TotWh_SF")
    injected = unsigned(regs[17:21], "TotWhInj") * sf
    absorbed = unsigned(regs[21:25], "TotWhAbs") * sf
    return w, injected - absorbed


@attrs.frozen
class ChargeState:
    """A store's state of charge now and the range it keeps between (fractions 0..1); the range
    is None where the device states no bound."""

    soc: float
    soc_min: float | None = None
    soc_max: float | None = None


def _percent(raw: int, sf_raw: int, name: str, sf_name: str) -> float:
    value = uint16(raw, name) * 10.0 ** scale_factor(sf_raw, sf_name)
    if not 0.0 <= value <= 100.0:
        raise DeviceFault(f"{name} {value:g} % is out of range (expected 0..100 %)")
    return value / 100.0


def _optional_percent(raw: int, sf_raw: int, name: str, sf_name: str) -> float | None:
    """An optional point: None when not implemented (0xFFFF)."""
    return None if raw == 0xFFFF else _percent(raw, sf_raw, name, sf_name)


def decode_charge(model: int, regs: list[int]) -> ChargeState:
    """The state of charge of a battery 802 block (SoC; the reserve SoCRsvMin..SocRsvMax, else
    the manufacturer's SoCMin..SoCMax) or a storage 124 block (ChaState; the reserve
    MinRsvPct), read from its first register; DeviceFault when the device states no valid one."""
    if model == BATTERY:
        soc = _percent(regs[9], regs[54], "SoC", "SoC_SF")
        lo = _optional_percent(regs[8], regs[54], "SoCRsvMin", "SoC_SF")
        if lo is None:
            lo = _optional_percent(regs[6], regs[54], "SoCMin", "SoC_SF")
        hi = _optional_percent(regs[7], regs[54], "SocRsvMax", "SoC_SF")
        if hi is None:
            hi = _optional_percent(regs[5], regs[54], "SoCMax", "SoC_SF")
    else:
        soc = _percent(regs[6], regs[20], "ChaState", "ChaState_SF")
        lo = (
            None
            if regs[19] == 0x8000
            else _optional_percent(regs[5], regs[19], "MinRsvPct", "MinRsvPct_SF")
        )
        hi = None
    if lo is not None and hi is not None and lo > hi:
        raise DeviceFault(f"reserve {lo:.0%}..{hi:.0%} is empty (expected min <= max)")
    return ChargeState(soc, lo, hi)


_CHARGE_LENGTH = {BATTERY: 55, STORAGE_CONTROLS: 24}
_READ_LENGTH = {**dict.fromkeys(METERS, 53), **dict.fromkeys(INVERTERS, 25), DER_MEASUREMENT: 119}
# controls model -> (enable offset, limit offset, scale factor offset)
_CONTROL_OFFSETS = {123: (7, 3, 21), 704: (12, 13, 52)}


class _ModbusLink:
    """One Modbus TCP connection to one unit id; every failure becomes a DeviceError."""

    def __init__(self, host: str, port: int, unit_id: int, timeout_s: float) -> None:
        self.where = f"{host}:{port} unit {unit_id}"
        self._host, self._port, self._unit_id, self._timeout_s = host, port, unit_id, timeout_s
        self._client: Any = None

    def _connected(self) -> Any:
        from pymodbus.client import ModbusTcpClient

        if self._client is None:
            self._client = ModbusTcpClient(
                self._host, port=self._port, timeout=self._timeout_s, retries=0
            )
        if not self._client.connected and not self._client.connect():
            self.close()
            raise DeviceUnavailable(f"Modbus device {self.where} refuses connections")
        return self._client

    def _call(self, what: str, fn: Callable[[Any], Any]) -> Any:
        from pymodbus.exceptions import ConnectionException, ModbusException

        client = self._connected()
        try:
            response = fn(client)
        except (ModbusException, OSError) as exc:
            self.close()  # a late answer must not be taken for the next request's
            lost = isinstance(exc, ConnectionException | OSError)
            raise DeviceUnavailable(
                f"Modbus device {self.where} "
                + (f"closed the connection during {what}" if lost else f"did not answer {what}")
                + f" ({type(exc).__name__})"
            ) from None
        if response.isError():
            code = int(getattr(response, "exception_code", 0) or 0)
            raise DeviceFault(
                f"Modbus device {self.where} answered {what} with exception code {code}"
                f"{_EXCEPTION_NAMES.get(code, '')}"
            )
        return response

    def read(self, address: int, count: int) -> list[int]:
        response = self._call(
            f"a read of {count} registers at {address}",
            lambda c: c.read_holding_registers(address, count=count, device_id=self._unit_id),
        )
        regs = list(response.registers)
        if len(regs) != count:
            raise DeviceFault(
                f"Modbus device {self.where} returned {len(regs)} registers, asked {count}"
            )
        return regs

    def write(self, address: int, value: int) -> None:
        self._call(
            f"a write at {address}",
            lambda c: c.write_register(address, value, device_id=self._unit_id),
        )

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


_EXCEPTION_NAMES = {
    1: " (illegal function)",
    2: " (illegal data address)",
    3: " (illegal data value)",
    4: " (server device failure)",
    6: " (server device busy)",
    10: " (gateway path unavailable)",
    11: " (gateway target failed to respond)",
}


class _SunSpecDevice(Driver):
    """A SunSpec device on Modbus TCP: discovery, then one block read per poll."""

    measuring: tuple[int, ...] = ()

    def __init__(
        self,
        *,
        host: str,
        rated_kw: float,
        port: int = 502,
        unit_id: int = 1,
        base_address: int = 40000,
        timeout_s: float = 1.0,
        quantity: str,
        marginal_cost_eur_mwh: float | None = None,
    ) -> None:
        super().__init__(
            rated_kw=rated_kw, quantity=quantity, marginal_cost_eur_mwh=marginal_cost_eur_mwh
        )
        host = check_host(host)
        port = check_port(port)
        unit_id = check_modbus_unit_id(unit_id)
        if base_address not in (0, 40000, 50000):
            raise DeviceError(f"base_address must be 0, 40000 or 50000, got {base_address!r}")
        self._base = int(base_address)
        self._link = _ModbusLink(host, port, unit_id, check_positive(timeout_s, "timeout_s"))
        self._blocks: dict[int, Block] | None = None

    def _map(self) -> dict[int, Block]:
        if self._blocks is None:
            blocks = discover(self._link.read, self._base)
            if not any(m in blocks for m in self.measuring):
                raise DeviceFault(
                    f"{self.kind} at {self._link.where}: none of SunSpec models "
                    f"{list(self.measuring)} (found {sorted(blocks)})"
                )
            self._blocks = blocks
            _log.info("%s at %s: SunSpec models %s", self.kind, self._link.where, sorted(blocks))
        return self._blocks

    def _measure(self) -> tuple[float, float]:
        """(signed W, signed Wh) as the device signs them."""
        blocks = self._map()
        block = next(blocks[m] for m in self.measuring if m in blocks)
        need = _READ_LENGTH[block.model]
        _check_length(block, need)
        try:
            regs = self._link.read(block.address, need)
        except DeviceUnavailable:
            self._blocks = None  # rediscover: the device may have restarted with another map
            raise
        try:
            return decode_power_energy(block, regs)
        except DeviceFault as exc:
            raise DeviceFault(f"{self.kind} at {self._link.where}: {exc}") from None

    def close(self) -> None:
        self._link.close()


class SunSpecMeter(_SunSpecDevice):
    """A SunSpec meter (model 201-204). SunSpec meters count import as positive W; the unit
    reports injection (+) so it turns the sign, unless `export_positive` says the meter is
    wired the other way."""

    kind = "sunspec_meter"
    measuring = METERS

    def __init__(
        self,
        *,
        host: str,
        rated_kw: float,
        port: int = 502,
        unit_id: int = 1,
        base_address: int = 40000,
        timeout_s: float = 1.0,
        quantity: str = "mixed",
        export_positive: bool = False,
    ) -> None:
        super().__init__(
            host=host,
            rated_kw=rated_kw,
            port=port,
            unit_id=unit_id,
            base_address=base_address,
            timeout_s=timeout_s,
            quantity=quantity,
        )
        if not isinstance(export_positive, bool):
            raise DeviceFault(f"export_positive must be true or false, got {export_positive!r}")
        self._sign = 1.0 if export_positive else -1.0

    def read(self, now_unix: float) -> Sample:
        w, wh = self._measure()
        power_kw = self.check_power(self._sign * w / 1000.0, "power")
        return Sample(ts_s=now_unix, power_kw=power_kw, energy_kwh=self._sign * wh / 1000.0)


class SunSpecInverter(_SunSpecDevice):
    """A SunSpec inverter (model 701, else 101-103) whose output an action unit limits through
    its controls model (704, else 123): WMaxLimPct = setpoint / rated_kw."""

    kind = "sunspec_inverter"
    actuatable = True
    measuring = (DER_MEASUREMENT, *INVERTERS)

    def __init__(
        self,
        *,
        host: str,
        rated_kw: float,
        port: int = 502,
        unit_id: int = 1,
        base_address: int = 40000,
        timeout_s: float = 1.0,
        marginal_cost_eur_mwh: float = 0.0,
    ) -> None:
        super().__init__(
            host=host,
            rated_kw=rated_kw,
            port=port,
            unit_id=unit_id,
            base_address=base_address,
            timeout_s=timeout_s,
            quantity="production",
            marginal_cost_eur_mwh=marginal_cost_eur_mwh,
        )
        self._unlimited_kw = 0.0  # the last output seen with no limit: what the sun gives

    def _controls(self) -> tuple[Block, tuple[int, int, int]]:
        blocks = self._map()
        for m in CONTROLS:
            if m in blocks:
                offsets = _CONTROL_OFFSETS[m]
                _check_length(blocks[m], offsets[2] + 1)
                return blocks[m], offsets
        raise DeviceFault(
            f"{self.kind} at {self._link.where}: no controls model 704 or 123 to limit it "
            f"(found {sorted(blocks)})"
        )

    def _limit_pct(self) -> float | None:
        """The output limit in force (% of WMax), None when disabled."""
        block, (ena, pct, sf) = self._controls()
        regs = self._link.read(block.address, sf + 1)
        if regs[ena] != 1:
            return None
        value = uint16(regs[pct], "WMaxLimPct") * 10.0 ** scale_factor(regs[sf], "WMaxLimPct_SF")
        if not 0.0 <= value <= 100.0:
            raise DeviceFault(f"WMaxLimPct {value:g} % is out of range 0..100")
        return value

    def read(self, now_unix: float) -> Sample:
        w, wh = self._measure()
        power_kw = self.check_power(w / 1000.0, "output")
        pct = self._limit_pct()
        setpoint = None if pct is None else pct / 100.0 * self.rated_kw
        if pct is None or pct >= 100.0:
            self._unlimited_kw = max(power_kw, 0.0)
        return Sample(
            ts_s=now_unix,
            power_kw=power_kw,
            energy_kwh=wh / 1000.0,
            on=pct is None or pct > 0.0,
            setpoint_kw=setpoint,
        )

    def apply(self, setpoint_kw: float | None = None, on: bool | None = None) -> Applied:
        """Limit the output: `setpoint_kw` (clamped to 0..rated_kw); `on=False` limits it to 0."""
        note = None
        if on is False:
            target = 0.0
        elif setpoint_kw is not None:
            target = clamp(setpoint_kw, 0.0, self.rated_kw)
            if target != setpoint_kw:
                note = f"setpoint {setpoint_kw:g} kW clamped to [0, {self.rated_kw:g}] kW"
        else:
            target = self.rated_kw  # on=True alone: lift the limit
        block, (ena, pct, sf) = self._controls()
        scale = 10.0 ** scale_factor(self._link.read(block.address + sf, 1)[0], "WMaxLimPct_SF")
        self._link.write(block.address + pct, round(target / self.rated_kw * 100.0 / scale))
        self._link.write(block.address + ena, 1)
        return Applied(target, target > 0.0, note)

    def limits(self, sample: Sample) -> Limits:
        return Limits(0.0, max(sample.power_kw, min(self._unlimited_kw, self.rated_kw)))


class SunSpecStorage(_SunSpecDevice):
    """A battery behind a SunSpec inverter: its AC power from model 701 (else 101-103; + is
    discharge, injection), its state of charge and reserve from model 802 (else 124), its
    charge and discharge limited through model 124: a setpoint of x kW in discharge sets
    OutWRte to x / rated_kw and InWRte to 0 with both limits on (StorCtl_Mod 3), a charge the
    other way round, 0 or off both to 0; `on=True` alone lifts both (StorCtl_Mod 0). These are
    limits the battery's own controller keeps under, as the inverter's WMaxLimPct is: rated_kw
    should be the device's WChaMax. `capacity_kwh`: its usable energy (WHRtg of model 802)."""

    kind = "sunspec_storage"
    actuatable = True
    measuring = (DER_MEASUREMENT, *INVERTERS)

    def __init__(
        self,
        *,
        host: str,
        rated_kw: float,
        capacity_kwh: float,
        port: int = 502,
        unit_id: int = 1,
        base_address: int = 40000,
        timeout_s: float = 1.0,
    ) -> None:
        super().__init__(
            host=host,
            rated_kw=rated_kw,
            port=port,
            unit_id=unit_id,
            base_address=base_address,
            timeout_s=timeout_s,
            quantity="mixed",
        )
        self.quantity = "storage"
        self.capacity_kwh_or_none = check_positive(capacity_kwh, "capacity_kwh")
        self._charge: ChargeState | None = None
        self._charge_problem: str | None = None

    def _read_charge(self) -> ChargeState | None:
        """The state of charge the device states now; None (and one log line when the reason
        changes) when it states none or an invalid one: the unit still reports its power."""
        blocks = self._map()
        block = next((blocks[m] for m in (BATTERY, STORAGE_CONTROLS) if m in blocks), None)
        problem = None
        charge = None
        if block is None:
            problem = f"no model 802 or 124 (found {sorted(blocks)})"
        else:
            try:
                _check_length(block, _CHARGE_LENGTH[block.model])
                regs = self._link.read(block.address, _CHARGE_LENGTH[block.model])
                charge = decode_charge(block.model, regs)
            except DeviceFault as exc:
                problem = f"model {block.model}: {exc}"
        if problem != self._charge_problem:
            where = f"{self.kind} at {self._link.where}"
            if problem is not None:
                _log.warning(
                    "%s: state of charge not reported: %s (expected SoC or ChaState 0..100 %% "
                    "with a scale factor -10..10)",
                    where,
                    problem,
                )
            else:
                _log.info("%s: state of charge reported again", where)
            self._charge_problem = problem
        return charge

    def read(self, now_unix: float) -> Sample:
        w, wh = self._measure()
        power_kw = self.check_power(w / 1000.0, "power")
        self._charge = self._read_charge()
        return Sample(ts_s=now_unix, power_kw=power_kw, energy_kwh=wh / 1000.0)

    def soc_now(self) -> float | None:
        return None if self._charge is None else self._charge.soc

    def soc_range(self) -> tuple[float, float] | None:
        c = self._charge
        if c is None or (c.soc_min is None and c.soc_max is None):
            return None
        return (
            0.0 if c.soc_min is None else c.soc_min,
            1.0 if c.soc_max is None else c.soc_max,
        )

    def limits(self, sample: Sample) -> Limits:
        """Its rated power both ways, but no charge when full and no discharge at its floor."""
        lo, hi = -self.rated_kw, self.rated_kw
        c, bounds = self._charge, self.soc_range() or (0.0, 1.0)
        if c is not None and c.soc >= bounds[1]:
            lo = 0.0
        if c is not None and c.soc <= bounds[0]:
            hi = 0.0
        return Limits(min(lo, sample.power_kw), max(hi, sample.power_kw))

    def apply(self, setpoint_kw: float | None = None, on: bool | None = None) -> Applied:
        """Limit charge and discharge: `setpoint_kw` (+ discharge, clamped to ±rated_kw);
        `on=False` holds (both limits 0); `on=True` alone lifts both limits."""
        blocks = self._map()
        if STORAGE_CONTROLS not in blocks:
            raise DeviceFault(
                f"{self.kind} at {self._link.where}: no storage controls model 124 "
                f"(found {sorted(blocks)})"
            )
        block = blocks[STORAGE_CONTROLS]
        _check_length(block, 24)
        note = None
        if on is True and setpoint_kw is None:
            self._link.write(block.address + 3, 0)  # StorCtl_Mod: no limit
            return Applied(self.rated_kw, True, None)
        target = 0.0
        if on is not False and setpoint_kw is not None:
            target = clamp(setpoint_kw, -self.rated_kw, self.rated_kw)
            if target != setpoint_kw:
                note = f"setpoint {setpoint_kw:g} kW clamped to ±{self.rated_kw:g} kW"
        sf = scale_factor(self._link.read(block.address + 23, 1)[0], "InOutWRte_SF")
        raw = round(abs(target) / self.rated_kw * 100.0 / 10.0**sf)
        self._link.write(block.address + 10, raw if target > 0 else 0)  # OutWRte
        self._link.write(block.address + 11, raw if target < 0 else 0)  # InWRte
        self._link.write(block.address + 3, 3)  # StorCtl_Mod: both limits in force
        return Applied(target, target != 0.0, note)
