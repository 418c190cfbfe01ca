"""Physical models of producers, loads and storage (pure: no I/O but a profile cache), and the
registry of every device a unit can drive: these models and the drivers of real devices
(redy.drivers), found by name in the `redy.devices` entry-point group.

`make_model(name, **params)` builds a model, `make_driver(name, **params)` a driver (not yet
connected), from a launch file's device name and parameters; `check_params` validates both.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from redy.devices.base import Applied, Device, Limits, Reading
from redy.errors import DeviceError

if TYPE_CHECKING:
    from redy.drivers.base import Driver

# name -> "module:class", imported on use so a unit loads only its own device's dependencies.
# The same table is declared as the `redy.devices` entry points in pyproject.toml (a test checks
# they agree); other installed packages add devices to that group and are found the same way.
ENTRY_POINT_GROUP = "redy.devices"
_BUILTIN_MODELS: dict[str, str] = {
    "gas_plant": "redy.devices.gas_plant:GasPlant",
    "pv": "redy.devices.renewables:PV",
    "wind": "redy.devices.renewables:Wind",
    "csp": "redy.devices.renewables:CSP",
    "household_load": "redy.devices.loads:StandardLoad",
    "factory_load": "redy.devices.loads:StandardLoad",
    "fixed_load": "redy.devices.loads:StandardLoad",
    "flexible_load": "redy.devices.loads:FlexibleLoad",
    "ev_charger": "redy.devices.loads:EVCharger",
    "water_heater": "redy.devices.loads:WaterHeater",
    "battery": "redy.devices.battery:Battery",
}
# Drivers of real devices (redy.drivers): wall-clock time, the device's own timestamps.
_BUILTIN_DRIVERS: dict[str, str] = {
    "sunspec_meter": "redy.drivers.sunspec:SunSpecMeter",
    "sunspec_inverter": "redy.drivers.sunspec:SunSpecInverter",
    "sunspec_storage": "redy.drivers.sunspec:SunSpecStorage",
    "ocpp_charger": "redy.drivers.ocpp_csms:OcppCharger",
    "z2m_plug": "redy.drivers.zigbee2mqtt:Zigbee2MqttPlug",
}
BUILTIN: dict[str, str] = {**_BUILTIN_MODELS, **_BUILTIN_DRIVERS}


def _registry() -> dict[str, str]:
    from importlib.metadata import entry_points

    found = dict(BUILTIN)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        found[ep.name] = ep.value
    return found


_REGISTRY = _registry()
# Every device name a unit accepts: models and drivers, built in or installed.
DEVICES: tuple[str, ...] = tuple(sorted(_REGISTRY))

# Defaults that make one class serve several model names.
_PRESETS: dict[str, dict[str, Any]] = {
    "household_load": {"profile": "h0"},
    "factory_load": {"profile": "g1"},
    "fixed_load": {"profile": "g0", "annual_kwh": 100_000.0},
}


def __getattr__(attr: str) -> Any:
    # MODELS (simulated devices only) is worked out on first use: an installed package's entry
    # is a model unless its class says wall_clock, and finding out means importing it.
    if attr == "MODELS":
        models = tuple(n for n in DEVICES if n not in _BUILTIN_DRIVERS and not _is_driver(n))
        globals()["MODELS"] = models
        return models
    raise AttributeError(f"module {__name__!r} has no attribute {attr!r}")


def _is_driver(name: str) -> bool:
    if name in _BUILTIN_MODELS and _REGISTRY[name] == _BUILTIN_MODELS[name]:
        return False
    return bool(getattr(model_class(name), "wall_clock", False))


def model_class(name: str) -> Callable[..., Any]:
    """The class (or factory) of a device name: a model (Device) or a driver (wall_clock)."""
    import importlib

    try:
        module, _, attr = _REGISTRY[name].partition(":")
    except KeyError:
        raise DeviceError(
            f"unknown device model {name!r}; expected one of {list(DEVICES)}"
        ) from None
    try:
        factory: Callable[..., Any] = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise DeviceError(f"device {name!r}: cannot load {_REGISTRY[name]} ({exc})") from None
    return factory


def is_driver(name: str) -> bool:
    """True if `name` drives a real device (wall-clock time) rather than a model."""
    return _is_driver(name)


def check_params(name: str, params: dict[str, Any]) -> None:
    """Refuse unknown parameter names, missing ones and non-numbers where a number is expected
    (DeviceError), without building a model; a driver is built (its constructor checks
    addresses, ports, unit ids and names, and does no I/O) and dropped."""
    cls = model_class(name)
    _check_params(name, cls, params)
    if getattr(cls, "wall_clock", False):
        make_driver(name, **params)  # the name is positional-only: a driver may take `name`


def _check_params(name: str, cls: Callable[..., Device], params: dict[str, Any]) -> None:
    accepted = {
        p.name: p.default
        for p in inspect.signature(cls).parameters.values()
        if p.kind is inspect.Parameter.KEYWORD_ONLY
    }
    missing = sorted(k for k, d in accepted.items() if d is inspect.Parameter.empty)
    missing = [k for k in missing if k not in params]
    if missing:
        raise DeviceError(f"device {name!r}: missing parameter(s) {missing}")
    for key, value in params.items():
        if key not in accepted:
            raise DeviceError(
                f"device model {name!r}: unknown parameter {key!r}; expected one of {sorted(accepted)}"
            )
        default = accepted[key]
        numeric = isinstance(default, int | float) and not isinstance(default, bool)
        if numeric and (isinstance(value, bool) or not isinstance(value, int | float)):
            raise DeviceError(
                f"device model {name!r}: parameter {key!r} expected a number, got {value!r}"
            )


def make_driver(name: str, /, **params: Any) -> Driver:
    """A real-device driver by launch-file name (not yet connected); DeviceError names a bad
    parameter."""
    cls = model_class(name)
    _check_params(name, cls, params)
    try:
        driver: Driver = cls(**params)
    except DeviceError as exc:
        raise DeviceError(f"device {name!r}: {exc}") from None
    except (TypeError, ValueError) as exc:
        raise DeviceError(f"device {name!r}: bad parameters ({exc})") from None
    return driver


# A reading may exceed its rating a little (overshoot, meter tolerance), never by more: a
# governance ignores readings beyond this, and a node's certified limits allow for it.
RATED_MARGIN = 1.1
RATED_SLACK_KW = 0.1


def reading_limit_kw(rated_kw: float) -> float:
    """The largest power (kW) a unit of this rating may report."""
    return rated_kw * RATED_MARGIN + RATED_SLACK_KW


def rating(name: str, params: dict[str, Any]) -> tuple[str, float]:
    """A device's quantity ('production', 'consumption', 'storage', 'mixed') and rated power
    (kW), as its unit will state them in its birth; DeviceError names a bad parameter."""
    dev: Any = make_driver(name, **params) if is_driver(name) else make_model(name, **params)
    return str(dev.quantity), float(dev.rated_kw)


def make_model(name: str, **params: Any) -> Device:
    """A device model by launch-file name; DeviceError names a bad parameter."""
    cls = model_class(name)
    merged = {**_PRESETS.get(name, {}), **params}
    _check_params(name, cls, merged)
    try:
        model: Device = cls(**merged)
    except (TypeError, ValueError) as exc:
        raise DeviceError(f"device model {name!r}: bad parameters ({exc})") from None
    return model


__all__ = [
    "DEVICES",
    "MODELS",
    "Applied",
    "Device",
    "Limits",
    "Reading",
    "check_params",
    "is_driver",
    "make_driver",
    "make_model",
    "rating",
    "reading_limit_kw",
]
