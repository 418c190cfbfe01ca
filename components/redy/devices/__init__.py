"""Physical models of producers, loads and storage (pure: no I/O but a profile cache).

`make_model(name, **params)` builds a model from a launch file's device name and parameters.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from redy.devices.base import Applied, Device, DeviceError, Limits, Reading

# name -> (module, class); imported on use so a unit loads only its own model's dependencies.
_REGISTRY: dict[str, tuple[str, str]] = {
    "gas_plant": ("redy.devices.gas_plant", "GasPlant"),
    "pv": ("redy.devices.renewables", "PV"),
    "wind": ("redy.devices.renewables", "Wind"),
    "csp": ("redy.devices.renewables", "CSP"),
    "household_load": ("redy.devices.loads", "StandardLoad"),
    "factory_load": ("redy.devices.loads", "StandardLoad"),
    "fixed_load": ("redy.devices.loads", "StandardLoad"),
    "flexible_load": ("redy.devices.loads", "FlexibleLoad"),
    "ev_charger": ("redy.devices.loads", "EVCharger"),
    "water_heater": ("redy.devices.loads", "WaterHeater"),
    "battery": ("redy.devices.battery", "Battery"),
}
# Defaults that make one class serve several model names.
_PRESETS: dict[str, dict[str, Any]] = {
    "household_load": {"profile": "h0"},
    "factory_load": {"profile": "g1"},
    "fixed_load": {"profile": "g0", "annual_kwh": 100_000.0},
}

MODELS: tuple[str, ...] = tuple(sorted(_REGISTRY))


def model_class(name: str) -> Callable[..., Device]:
    import importlib

    try:
        module, cls = _REGISTRY[name]
    except KeyError:
        raise DeviceError(
            f"unknown device model {name!r}; expected one of {list(MODELS)}"
        ) from None
    factory: Callable[..., Device] = getattr(importlib.import_module(module), cls)
    return factory


def check_params(name: str, params: dict[str, Any]) -> None:
    """Refuse unknown parameter names and non-numbers where a number is expected (DeviceError),
    without building the model."""
    _check_params(name, model_class(name), params)


def _check_params(name: str, cls: Callable[..., Device], params: dict[str, Any]) -> None:
    accepted = {
        p.name: p.default
        for p in inspect.signature(cls).parameters.values()
        if p.kind is inspect.Parameter.KEYWORD_ONLY
    }
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


def make_model(name: str, **params: Any) -> Device:
    """A device model by launch-file name; DeviceError names a bad parameter."""
    cls = model_class(name)
    merged = {**_PRESETS.get(name, {}), **params}
    _check_params(name, cls, merged)
    try:
        return cls(**merged)
    except (TypeError, ValueError) as exc:
        raise DeviceError(f"device model {name!r}: bad parameters ({exc})") from None


__all__ = [
    "MODELS",
    "Applied",
    "Device",
    "DeviceError",
    "Limits",
    "Reading",
    "check_params",
    "make_model",
]
