"""Weather-driven producers: PV (pvlib clear sky x clouds) and wind (windpowerlib power curve).

Both inject what the weather gives unless curtailed by a setpoint (the setpoint caps output).
"""

from __future__ import annotations

import math
import random

from redy.devices import profiles
from redy.devices.base import Applied, Device, Limits, Reading, clamp
from redy.errors import DeviceError


class _Curtailable(Device):
    quantity = "production"
    actuatable = True

    def available_kw(self, t_s: float) -> float:
        raise NotImplementedError

    def _advance(self, dt_s: float) -> float:
        available = self.available_kw(self.t_s + dt_s)
        cap = self.rated_kw if self.setpoint_kw is None else self.setpoint_kw
        return clamp(min(available, cap), 0.0, self.rated_kw) if self.on else 0.0

    def reading(self) -> Reading:
        t = self.t_s
        forecast = tuple(self.available_kw(t + 3600.0 * (h + 1)) for h in range(6))
        return Reading(
            power_kw=self.power_kw,
            energy_kwh=self.energy_kwh,
            available_kw=self.available_kw(t),
            forecast_kw=forecast,
        )

    def limits(self, interval_s: float = 60.0) -> Limits:
        return Limits(0.0, self.available_kw(self.t_s) if self.on else 0.0)

    def apply(self, setpoint_kw: float | None = None, on: bool | None = None) -> Applied:
        return self._apply_within(setpoint_kw, on, 0.0, self.rated_kw)


class PV(_Curtailable):
    """Rooftop or field PV: kWp x clear-sky GHI / 1000 W/m2 x performance ratio x cloud factor.

    The cloud factor is a seeded random walk in [cloud_min, 1] (1 = clear sky).
    """

    kind = "pv"
    marginal_cost_eur_mwh = 0.0

    def __init__(
        self,
        *,
        kwp: float = 6.0,
        latitude: float = 43.6,
        longitude: float = 3.9,
        altitude_m: float = 30.0,
        tz: str = "Europe/Paris",
        date: str = "2026-06-21",
        performance_ratio: float = 0.85,
        cloud_min: float = 0.3,
        seed: int = 0,
    ) -> None:
        super().__init__(kwp)
        if not 0 < performance_ratio <= 1 or not 0 <= cloud_min <= 1:
            raise DeviceError("pv: expected 0 < performance_ratio <= 1 and 0 <= cloud_min <= 1")
        self.ghi = profiles.clear_sky(latitude, longitude, altitude_m, tz, date)["ghi"]
        self.performance_ratio = performance_ratio
        rng = random.Random(seed)
        cloud, walk = 1.0, []
        for _ in range(profiles.STEPS_PER_DAY):
            cloud = clamp(cloud + rng.gauss(0.0, 0.08), cloud_min, 1.0)
            walk.append(cloud)
        self.cloud = walk

    def available_kw(self, t_s: float) -> float:
        ghi = profiles.at(self.ghi, t_s)
        return self.rated_kw * ghi / 1000.0 * self.performance_ratio * profiles.at(self.cloud, t_s)


class Wind(_Curtailable):
    """A wind farm of `turbines` identical turbines (windpowerlib type, e.g. E-126/4200).

    Hub-height wind speed: a seeded mean-reverting random walk around `mean_wind_ms`, one value
    per 15 minutes, interpolated between.
    """

    kind = "wind"
    marginal_cost_eur_mwh = 0.0

    def __init__(
        self,
        *,
        turbine_type: str = "E-126/4200",
        turbines: int = 5,
        hub_height_m: float = 135.0,
        mean_wind_ms: float = 8.0,
        seed: int = 0,
    ) -> None:
        try:
            curve = profiles.power_curve(turbine_type, hub_height_m)
        except (ValueError, KeyError) as exc:
            raise DeviceError(f"wind: unknown turbine_type {turbine_type!r} ({exc})") from None
        if turbines < 1:
            raise DeviceError("wind: turbines must be >= 1")
        super().__init__(curve["nominal_kw"][0] * turbines)
        self.speeds = curve["wind_speed_ms"]
        self.curve_kw = curve["power_kw"]
        self.turbines = turbines
        rng = random.Random(seed)
        v, series = mean_wind_ms, []
        for _ in range(profiles.STEPS_PER_DAY):
            v = max(0.0, v + 0.3 * (mean_wind_ms - v) + rng.gauss(0.0, 1.2))
            series.append(v)
        self.wind_ms = series

    def turbine_kw(self, v: float) -> float:
        """One turbine's power at hub wind speed `v` (0 below cut-in and above cut-out)."""
        s, p = self.speeds, self.curve_kw
        if v < s[0] or v > s[-1]:
            return 0.0
        for i in range(1, len(s)):
            if v <= s[i]:
                f = (v - s[i - 1]) / (s[i] - s[i - 1])
                return p[i - 1] + f * (p[i] - p[i - 1])
        return p[-1]

    def available_kw(self, t_s: float) -> float:
        return self.turbines * self.turbine_kw(profiles.at(self.wind_ms, t_s))


class CSP(Device):
    """A concentrated solar power plant with thermal storage.

    The solar field collects DNI x field area x optical efficiency into the storage (kWh_th,
    with a standing loss); the power block converts stored heat to electricity at
    `block_efficiency` and is dispatchable between 0 and p_max_kw while heat lasts.
    """

    kind = "csp"
    quantity = "production"
    actuatable = True

    def __init__(
        self,
        *,
        p_max_kw: float = 20_000.0,
        field_m2: float = 150_000.0,
        optical_efficiency: float = 0.55,
        storage_kwh_th: float = 300_000.0,
        stored_kwh_th: float = 100_000.0,
        loss_per_h: float = 0.001,
        block_efficiency: float = 0.38,
        marginal_cost_eur_mwh: float = 15.0,
        latitude: float = 37.2,
        longitude: float = -5.9,
        altitude_m: float = 50.0,
        tz: str = "Europe/Madrid",
        date: str = "2026-06-21",
        seed: int = 0,
    ) -> None:
        super().__init__(p_max_kw)
        if not 0 <= stored_kwh_th <= storage_kwh_th:
            raise DeviceError("csp: expected 0 <= stored_kwh_th <= storage_kwh_th")
        self.dni = profiles.clear_sky(latitude, longitude, altitude_m, tz, date)["dni"]
        self.field_m2 = field_m2
        self.optical_efficiency = optical_efficiency
        self.storage_kwh_th = storage_kwh_th
        self.stored_kwh_th = stored_kwh_th
        self.loss_per_h = loss_per_h
        self.block_efficiency = block_efficiency
        self.marginal_cost_eur_mwh = marginal_cost_eur_mwh
        self.setpoint_kw = p_max_kw / 2
        self.collected_kwh_th = 0.0
        self.lost_kwh_th = 0.0
        self.spilled_kwh_th = 0.0

    @property
    def capacity_kwh_or_none(self) -> float | None:
        return self.storage_kwh_th * self.block_efficiency

    def thermal_input_kw(self, t_s: float) -> float:
        return profiles.at(self.dni, t_s) / 1000.0 * self.field_m2 * self.optical_efficiency

    def _advance(self, dt_s: float) -> float:
        h = dt_s / 3600.0
        heat_in = self.thermal_input_kw(self.t_s) * h
        loss = self.stored_kwh_th * (1.0 - math.exp(-self.loss_per_h * h))
        self.collected_kwh_th += heat_in
        self.lost_kwh_th += loss
        self.stored_kwh_th += heat_in - loss
        if self.stored_kwh_th > self.storage_kwh_th:
            self.spilled_kwh_th += self.stored_kwh_th - self.storage_kwh_th
            self.stored_kwh_th = self.storage_kwh_th
        wanted = clamp(self.setpoint_kw or 0.0, 0.0, self.rated_kw) if self.on else 0.0
        possible = self.stored_kwh_th * self.block_efficiency / h
        p = min(wanted, possible)
        self.stored_kwh_th -= p * h / self.block_efficiency
        return p

    def reading(self) -> Reading:
        return Reading(
            power_kw=self.power_kw,
            energy_kwh=self.energy_kwh,
            soc=self.stored_kwh_th / self.storage_kwh_th,
        )

    def limits(self, interval_s: float = 60.0) -> Limits:
        h = max(interval_s, 1.0) / 3600.0
        return Limits(0.0, min(self.rated_kw, self.stored_kwh_th * self.block_efficiency / h))

    def apply(self, setpoint_kw: float | None = None, on: bool | None = None) -> Applied:
        return self._apply_within(setpoint_kw, on, 0.0, self.rated_kw)
