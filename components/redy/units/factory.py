"""The unit a unit's configuration names: a device model in simulated time (DeviceUnit) or a
real device's driver (DriverUnit), the one place that knows both."""

from __future__ import annotations

from redy.devices import is_driver
from redy.units.config import UnitConfig
from redy.units.device_unit import DeviceUnit
from redy.units.driver_unit import DriverUnit


def make_unit(config: UnitConfig) -> DeviceUnit:
    """The unit of `config`: a model in simulated time, or a real device's driver."""
    if is_driver(config.device):
        return DriverUnit(config)
    return DeviceUnit(config)
