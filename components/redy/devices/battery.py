"""A home battery (Powerwall 2 class by default: 13.5 kWh, 5 kW, ~90 % round trip)."""

from __future__ import annotations

import math

from redy.devices.base import Applied, Device, Limits, Reading, clamp
from redy.errors import DeviceError


class Battery(Device):
    """Storage. Setpoint is signed: + discharges into the grid, - charges. The round-trip
    efficiency is split evenly between charge and discharge (sqrt each way).

    Its price policy: stored energy is worth `value_eur_mwh` at half charge, `value_swing_eur_mwh`
    less when full and as much more when empty. It discharges when the price beats that value
    plus its wear cost (`marginal_cost_eur_mwh`), and charges when the energy bought, after the
    round-trip loss and wear, is worth more than it costs."""

    kind = "battery"
    quantity = "storage"
    actuatable = True

    def __init__(
        self,
        *,
        capacity_kwh: float = 13.5,
        power_kw: float = 5.0,
        round_trip_efficiency: float = 0.9,
        soc: float = 0.5,
        soc_min: float = 0.05,
        soc_max: float = 1.0,
        marginal_cost_eur_mwh: float = 20.0,
        value_eur_mwh: float = 85.0,
        value_swing_eur_mwh: float = 30.0,
        seed: int = 0,
    ) -> None:
        super().__init__(power_kw)
        if capacity_kwh <= 0 or not 0 < round_trip_efficiency <= 1:
            raise DeviceError("battery: expected capacity_kwh > 0 and 0 < efficiency <= 1")
        if not 0 <= soc_min <= soc <= soc_max <= 1:
            raise DeviceError("battery: expected 0 <= soc_min <= soc <= soc_max <= 1")
        self.capacity_kwh = float(capacity_kwh)
        self.eta = math.sqrt(round_trip_efficiency)
        self.soc = float(soc)
        self.soc_min = float(soc_min)
        self.soc_max = float(soc_max)
        if marginal_cost_eur_mwh < 0 or value_swing_eur_mwh < 0:
            raise DeviceError("battery: expected marginal_cost_eur_mwh >= 0, value_swing >= 0")
        self.marginal_cost_eur_mwh = float(marginal_cost_eur_mwh)  # wear per MWh cycled
        self.round_trip_efficiency = float(round_trip_efficiency)
        self.value_eur_mwh = float(value_eur_mwh)
        self.value_swing_eur_mwh = float(value_swing_eur_mwh)
        self.setpoint_kw = 0.0
        self.stored_in_kwh = 0.0  # energy into the cells (after losses)
        self.stored_out_kwh = 0.0  # energy out of the cells (before losses)

    def _bounds(self, dt_s: float) -> tuple[float, float]:
        h = dt_s / 3600.0
        can_discharge = (self.soc - self.soc_min) * self.capacity_kwh * self.eta / h
        can_charge = (self.soc_max - self.soc) * self.capacity_kwh / self.eta / h
        return -min(self.rated_kw, can_charge), min(self.rated_kw, can_discharge)

    def _advance(self, dt_s: float) -> float:
        lo, hi = self._bounds(dt_s)
        p = clamp(self.setpoint_kw or 0.0, lo, hi) if self.on else 0.0
        h = dt_s / 3600.0
        if p >= 0:
            out = p * h / self.eta
            self.stored_out_kwh += out
            self.soc -= out / self.capacity_kwh
        else:
            into = -p * h * self.eta
            self.stored_in_kwh += into
            self.soc += into / self.capacity_kwh
        self.soc = clamp(self.soc, self.soc_min, self.soc_max)
        return p

    def storage_prices(self) -> tuple[float, float]:
        """(charge below, discharge above) in EUR/MWh, both falling as the battery fills."""
        span = self.soc_max - self.soc_min
        fill = (self.soc - self.soc_min) / span if span > 0 else 0.5
        value = self.value_eur_mwh + self.value_swing_eur_mwh * (1.0 - 2.0 * fill)
        wear = self.marginal_cost_eur_mwh or 0.0
        discharge_above = value + wear
        return min(value * self.round_trip_efficiency - wear, discharge_above), discharge_above

    def soc_range(self) -> tuple[float, float]:
        return self.soc_min, self.soc_max

    @property
    def capacity_kwh_or_none(self) -> float | None:
        return self.capacity_kwh

    def reading(self) -> Reading:
        return Reading(power_kw=self.power_kw, energy_kwh=self.energy_kwh, soc=self.soc)

    def limits(self, interval_s: float = 60.0) -> Limits:
        lo, hi = self._bounds(max(interval_s, 1.0))
        return Limits(lo, hi)

    def apply(self, setpoint_kw: float | None = None, on: bool | None = None) -> Applied:
        return self._apply_within(setpoint_kw, on, -self.rated_kw, self.rated_kw)
