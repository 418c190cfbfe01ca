"""What every real-device driver offers, and the checks of its launch parameters.

A driver is the real-device counterpart of a model (redy.devices.base.Device): same signed power
(+ = injection into the grid), but in wall-clock time, with the device's own timestamps, and with
failures that are results: a device that does not answer raises DeviceUnavailable, one that
answers with an error or an impossible value raises DeviceFault. The unit turns both into its
`offline` state and one log line, never into a published number.

Constructors only check their parameters (no I/O), so `redy launch --check` can build a driver to
validate a launch file; `open()` starts talking to the device.
"""

from __future__ import annotations

import ipaddress
import math
import re
from typing import Any

import attrs

from redy.devices.base import Applied, Limits
from redy.errors import DeviceError, DeviceFault

QUANTITIES = ("production", "consumption", "mixed")


@attrs.frozen
class Sample:
    """One reading of a real device, stamped with the device's own time (UNIX seconds)."""

    ts_s: float
    power_kw: float
    energy_kwh: float
    on: bool = True
    setpoint_kw: float | None = None


class Driver:
    """Base of the real-device drivers. Subclasses set `kind` and implement `read()`;
    actuatable ones set `actuatable = True` and implement `apply()` and `limits()`."""

    kind = "driver"
    actuatable = False
    wall_clock = True  # the unit runs in wall-clock time (a launch's clock must say speed 1)
    listens_on: str | None = None  # the parameter naming a TCP port the driver binds, if any

    def __init__(
        self, *, rated_kw: float, quantity: str, marginal_cost_eur_mwh: float | None = None
    ) -> None:
        self.rated_kw = check_positive(rated_kw, "rated_kw")
        if quantity not in QUANTITIES:
            raise DeviceError(f"quantity must be one of {list(QUANTITIES)}, got {quantity!r}")
        self.quantity = quantity
        self.marginal_cost_eur_mwh = marginal_cost_eur_mwh
        self.capacity_kwh_or_none: float | None = None

    def open(self) -> None:
        """Start the connection (not reaching the device yet is no error: read() says so)."""

    def close(self) -> None:
        """Stop talking to the device; idempotent."""

    def read(self, now_unix: float) -> Sample:
        """The device's latest sample; DeviceUnavailable or DeviceFault when there is none."""
        raise NotImplementedError

    def apply(self, setpoint_kw: float | None = None, on: bool | None = None) -> Applied:
        raise DeviceError(f"{self.kind} cannot be commanded: it has no actuator")

    def limits(self, sample: Sample) -> Limits:
        """Signed power reachable within the next period, given the latest sample."""
        return Limits(sample.power_kw, sample.power_kw)

    def bid_eur_mwh(self) -> float | None:
        return self.marginal_cost_eur_mwh

    def storage_prices(self) -> tuple[float, float] | None:
        """Storage: (charge below, discharge above) in EUR/MWh; no driver states them yet."""
        return None

    def soc_now(self) -> float | None:
        """Storage: the state of charge now (0..1); no driver states it yet."""
        return None

    def soc_range(self) -> tuple[float, float] | None:
        """Storage: the states of charge (0..1) it keeps between; None when it states none."""
        return None

    def due(self) -> tuple[float, float] | None:
        """A deferrable load: (kWh still to draw, seconds to its deadline); none stated yet."""
        return None

    def check_power(self, power_kw: float, what: str) -> float:
        """`power_kw` if a device of this rating can show it; DeviceFault otherwise (a meter
        reading five times its rating is a broken register, not a measurement)."""
        bound = 1.5 * self.rated_kw
        if not math.isfinite(power_kw) or abs(power_kw) > bound:
            raise DeviceFault(
                f"{self.kind}: {what} {power_kw:g} kW is out of range "
                f"(expected within ±{bound:g} kW, 1.5 x rated_kw)"
            )
        return power_kw


# --- parameter checks (no I/O) -----------------------------------------------------------------

_HOSTNAME = re.compile(
    r"^(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$"
)
_CP_ID = re.compile(r"^[A-Za-z0-9._*~-]{1,48}$")


def check_host(value: Any, name: str = "host") -> str:
    """An IPv4/IPv6 address or an RFC 1123 host name."""
    if isinstance(value, str):
        try:
            return str(ipaddress.ip_address(value))
        except ValueError:
            if _HOSTNAME.fullmatch(value) and not value.replace(".", "").isdigit():
                return value
    raise DeviceError(f"{name} must be an IP address or a host name, got {value!r}")


def check_port(value: Any, name: str = "port") -> int:
    if isinstance(value, int) and not isinstance(value, bool) and 0 < value < 65536:
        return value
    raise DeviceError(f"{name} must be a TCP port 1-65535, got {value!r}")


def check_modbus_unit_id(value: Any) -> int:
    """Modbus unit id: 1-247 (serial addresses behind a gateway) or 255 (a TCP device itself)."""
    if (
        isinstance(value, int)
        and not isinstance(value, bool)
        and (1 <= value <= 247 or value == 255)
    ):
        return value
    raise DeviceError(f"unit_id must be a Modbus unit id 1-247 or 255, got {value!r}")


def check_positive(value: Any, name: str) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool) and 0 < value < math.inf:
        return float(value)
    raise DeviceError(f"{name} must be a number > 0, got {value!r}")


def check_mqtt_name(value: Any, name: str = "name") -> str:
    """One Zigbee2MQTT friendly name: topic levels without wildcards, not ending in a command."""
    ok = (
        isinstance(value, str)
        and 0 < len(value) <= 128
        and not set(value) & {"#", "+", "\0"}
        and not value.startswith("/")
        and not value.endswith("/")
        and "//" not in value
        and value.rsplit("/", 1)[-1] not in ("set", "get", "availability")
    )
    if ok:
        return str(value)
    raise DeviceError(
        f"{name} must be a Zigbee2MQTT friendly name (no '#', '+', leading or trailing '/', "
        f"not ending in /set, /get or /availability), got {value!r}"
    )


def check_charge_point_id(value: Any) -> str:
    """An OCPP charge point identity: 1-48 characters of the URL-safe set OCPP-J allows."""
    if isinstance(value, str) and _CP_ID.fullmatch(value):
        return value
    raise DeviceError(
        f"charge_point_id must be 1-48 characters of letters, digits and . _ * ~ -, got {value!r}"
    )
