"""Loads: standard profiles (demandlib BDEW), flexible industrial loads, EV chargers, water
heaters. Power is signed: a load's power is negative."""

from __future__ import annotations

from redy.devices import profiles
from redy.devices.base import Applied, Device, Limits, Reading, clamp
from redy.devices.urgency import band_urgency, ev_urgency, willingness_to_pay
from redy.errors import DeviceError

# Annual energy in kWh per standard profile, when none is given.
_DEFAULT_ANNUAL_KWH = {"h0": 4_000.0, "g1": 2_000_000.0, "g0": 500_000.0, "l0": 20_000.0}


class StandardLoad(Device):
    """A fixed load following a BDEW standard load profile from demandlib ('h0' household,
    'g1' commercial weekdays 8-18 h, ...), scaled to `annual_kwh`, times `scale`."""

    kind = "standard_load"

    def __init__(
        self,
        *,
        profile: str = "h0",
        annual_kwh: float | None = None,
        date: str = "2026-06-21",
        scale: float = 1.0,
        seed: int = 0,
    ) -> None:
        annual = annual_kwh if annual_kwh is not None else _DEFAULT_ANNUAL_KWH.get(profile, 4000.0)
        try:
            values = profiles.standard_load(profile, annual, date)
        except (KeyError, ValueError) as exc:
            raise DeviceError(f"standard load: unknown BDEW profile {profile!r} ({exc})") from None
        self.profile_kw = [v * scale for v in values]
        super().__init__(max(max(self.profile_kw), 1e-6))

    def demand_kw(self, t_s: float) -> float:
        return profiles.at(self.profile_kw, t_s)

    def _advance(self, dt_s: float) -> float:
        return -self.demand_kw(self.t_s + dt_s)

    def reading(self) -> Reading:
        forecast = tuple(-self.demand_kw(self.t_s + 3600.0 * (h + 1)) for h in range(6))
        return Reading(power_kw=self.power_kw, energy_kwh=self.energy_kwh, forecast_kw=forecast)


class FlexibleLoad(Device):
    """A flexible industrial load (furnace, compressor, pump): consumes between `min_kw` and
    `max_kw` when on, follows a setpoint (magnitude of consumption or signed negative), and
    can be switched off. `value_eur_mwh` is its willingness to pay."""

    kind = "flexible_load"
    actuatable = True

    def __init__(
        self,
        *,
        max_kw: float = 2_000.0,
        min_kw: float = 0.0,
        value_eur_mwh: float = 150.0,
        on: bool = True,
        seed: int = 0,
    ) -> None:
        super().__init__(max_kw)
        if not 0 <= min_kw <= max_kw:
            raise DeviceError("flexible load: expected 0 <= min_kw <= max_kw")
        self.min_kw = float(min_kw)
        self.value_eur_mwh = float(value_eur_mwh)
        # Reported as the actuator's marginal value: what the load is willing to pay.
        self.marginal_cost_eur_mwh = float(value_eur_mwh)
        self.on = on
        self.setpoint_kw = -self.rated_kw

    def _advance(self, dt_s: float) -> float:
        if not self.on:
            return 0.0
        return clamp(self.setpoint_kw or 0.0, -self.rated_kw, -self.min_kw)

    def limits(self, interval_s: float = 60.0) -> Limits:
        return Limits(-self.rated_kw, 0.0)

    def apply(self, setpoint_kw: float | None = None, on: bool | None = None) -> Applied:
        if on is not None:
            self.on = on
        note = None
        if setpoint_kw is not None:
            # Loads accept a consumption magnitude (+) or a signed injection (-): both mean draw.
            signed = -abs(setpoint_kw)
            bounded = clamp(signed, -self.rated_kw, -self.min_kw)
            if bounded != signed:
                note = f"setpoint {setpoint_kw:g} kW clamped to [{-self.rated_kw:g}, {-self.min_kw:g}] kW"
            self.setpoint_kw = bounded
            if bounded == 0.0 and self.min_kw > 0:
                self.on = False
        return Applied(self.setpoint_kw, self.on, note)


class EVCharger(Device):
    """An EV charging point (3.7, 7.4, 11 or 22 kW): charges `energy_needed_kwh` by
    `deadline_s` (simulated seconds from the start); never above its power, never past need.
    It bids from `wtp_min_eur_mwh` (time to spare) up to `wtp_max_eur_mwh` (must charge now)."""

    kind = "ev_charger"
    actuatable = True

    def __init__(
        self,
        *,
        power_kw: float = 11.0,
        energy_needed_kwh: float = 30.0,
        deadline_s: float = 8 * 3600.0,
        efficiency: float = 0.92,
        wtp_min_eur_mwh: float = 30.0,
        wtp_max_eur_mwh: float = 400.0,
        seed: int = 0,
    ) -> None:
        super().__init__(power_kw)
        if energy_needed_kwh < 0 or deadline_s <= 0 or not 0 < efficiency <= 1:
            raise DeviceError("ev_charger: expected energy_needed_kwh >= 0, deadline_s > 0")
        if not wtp_min_eur_mwh <= wtp_max_eur_mwh:
            raise DeviceError("ev_charger: expected wtp_min_eur_mwh <= wtp_max_eur_mwh")
        self.wtp_range = (float(wtp_min_eur_mwh), float(wtp_max_eur_mwh))
        self.energy_needed_kwh = float(energy_needed_kwh)
        self.deadline_s = float(deadline_s)
        self.efficiency = efficiency
        self.delivered_kwh = 0.0  # into the car's battery
        self.setpoint_kw = -self.rated_kw

    @property
    def remaining_kwh(self) -> float:
        return max(0.0, self.energy_needed_kwh - self.delivered_kwh)

    def urgency(self) -> float:
        """Time needed at full power / time left, in [0, inf): 1 means it must charge now."""
        power_kw = self.rated_kw * self.efficiency
        return ev_urgency(self.remaining_kwh, power_kw, self.deadline_s - self.t_s)

    def bid_eur_mwh(self) -> float:
        """Willingness to pay, rising with urgency to the top of its range at urgency 1."""
        return willingness_to_pay(self.urgency(), *self.wtp_range)

    def _max_draw_kw(self, dt_s: float) -> float:
        return min(self.rated_kw, self.remaining_kwh / self.efficiency / (dt_s / 3600.0))

    def _advance(self, dt_s: float) -> float:
        if not self.on:
            return 0.0
        draw = clamp(-(self.setpoint_kw or 0.0), 0.0, self._max_draw_kw(dt_s))
        self.delivered_kwh += draw * dt_s / 3600.0 * self.efficiency
        return -draw

    def due(self) -> tuple[float, float] | None:
        return self.remaining_kwh / self.efficiency, max(self.deadline_s - self.t_s, 0.0)

    def reading(self) -> Reading:
        soc = self.delivered_kwh / self.energy_needed_kwh if self.energy_needed_kwh else 1.0
        return Reading(power_kw=self.power_kw, energy_kwh=self.energy_kwh, soc=min(1.0, soc))

    def limits(self, interval_s: float = 60.0) -> Limits:
        return Limits(-self._max_draw_kw(max(interval_s, 1.0)), 0.0)

    def apply(self, setpoint_kw: float | None = None, on: bool | None = None) -> Applied:
        if on is not None:
            self.on = on
        note = None
        if setpoint_kw is not None:
            signed = -abs(setpoint_kw)
            bounded = clamp(signed, -self.rated_kw, 0.0)
            if bounded != signed:
                note = f"setpoint {setpoint_kw:g} kW clamped to {bounded:g} kW"
            self.setpoint_kw = bounded
        return Applied(self.setpoint_kw, self.on, note)


class WaterHeater(Device):
    """An electric water heater (2-3 kW) with a thermal band: it may be switched on or off
    freely inside [t_min_c, t_max_c]; below the band its thermostat forces heating, above it
    forces stop. Tank: volume x 1.163 Wh/(l K); hot-water draw and standing loss cool it.
    It bids from `wtp_min_eur_mwh` (tank at the top of the band) up to `wtp_max_eur_mwh`
    (at the bottom)."""

    kind = "water_heater"
    actuatable = True

    def __init__(
        self,
        *,
        power_kw: float = 2.5,
        volume_l: float = 200.0,
        t_min_c: float = 50.0,
        t_max_c: float = 60.0,
        t_c: float = 55.0,
        draw_kw: float = 0.4,
        loss_kw_per_k: float = 0.002,
        ambient_c: float = 20.0,
        wtp_min_eur_mwh: float = 40.0,
        wtp_max_eur_mwh: float = 300.0,
        seed: int = 0,
    ) -> None:
        super().__init__(power_kw)
        if not t_min_c < t_max_c:
            raise DeviceError("water_heater: expected t_min_c < t_max_c")
        if not wtp_min_eur_mwh <= wtp_max_eur_mwh:
            raise DeviceError("water_heater: expected wtp_min_eur_mwh <= wtp_max_eur_mwh")
        self.wtp_range = (float(wtp_min_eur_mwh), float(wtp_max_eur_mwh))
        self.capacity_kwh_per_k = volume_l * 1.163 / 1000.0
        self.t_min_c = t_min_c
        self.t_max_c = t_max_c
        self.t_c = float(t_c)
        self.draw_kw = draw_kw
        self.loss_kw_per_k = loss_kw_per_k
        self.ambient_c = ambient_c
        self.on = False
        self.heat_in_kwh = 0.0
        self.heat_out_kwh = 0.0
        self._interval_s = 60.0  # the interval of the last limits() asked (simulated s)

    def bid_eur_mwh(self) -> float:
        """Willingness to pay: the low end of its range with a full tank, the top at the bottom
        of the band."""
        return willingness_to_pay(
            band_urgency(self.t_c, self.t_min_c, self.t_max_c), *self.wtp_range
        )

    def _heating(self) -> bool:
        if self.t_c <= self.t_min_c:
            return True  # thermostat override: never below the band
        if self.t_c >= self.t_max_c:
            return False
        return self.on

    def _advance(self, dt_s: float) -> float:
        h = dt_s / 3600.0
        heating = self._heating()
        p_in = self.rated_kw if heating else 0.0
        p_out = self.draw_kw + self.loss_kw_per_k * (self.t_c - self.ambient_c)
        # Do not overshoot the top of the band within one step.
        room_kwh = (self.t_max_c - self.t_c) * self.capacity_kwh_per_k + p_out * h
        heat_in = clamp(p_in * h, 0.0, max(0.0, room_kwh))
        self.heat_in_kwh += heat_in
        self.heat_out_kwh += p_out * h
        self.t_c += (heat_in - p_out * h) / self.capacity_kwh_per_k
        return -heat_in / h

    def reading(self) -> Reading:
        soc = clamp((self.t_c - self.t_min_c) / (self.t_max_c - self.t_min_c), 0.0, 1.0)
        return Reading(power_kw=self.power_kw, energy_kwh=self.energy_kwh, soc=soc)

    def _reach_kw(self, interval_s: float) -> float:
        """The mean power (kW) it draws over `interval_s` (simulated) if on: its rating, less
        once the tank would reach the top of the band within the interval (the thermostat
        stops it there)."""
        h = max(interval_s, 1.0) / 3600.0
        p_out = self.draw_kw + self.loss_kw_per_k * (self.t_c - self.ambient_c)
        room_kwh = (self.t_max_c - self.t_c) * self.capacity_kwh_per_k + p_out * h
        return clamp(room_kwh / h, 0.0, self.rated_kw)

    def limits(self, interval_s: float = 60.0) -> Limits:
        # The interval the unit reports over: a setpoint is read against what it can draw in it.
        self._interval_s = interval_s
        if self.t_c <= self.t_min_c:
            return Limits(-self.rated_kw, -self.rated_kw)
        if self.t_c >= self.t_max_c:
            return Limits(0.0, 0.0)
        # Near the top of the band a full tank draws its rating for part of the interval only:
        # stating the rating there promised the market kW it did not draw (grid12's balance
        # 2 % off from late morning on, every heater dispatched on and drawing under half).
        return Limits(-self._reach_kw(interval_s), 0.0)

    def apply(self, setpoint_kw: float | None = None, on: bool | None = None) -> Applied:
        if setpoint_kw is not None and on is None:
            # An on/off device: the nearer of off and what it draws on over the interval.
            reach = self._reach_kw(self._interval_s) if self.t_c > self.t_min_c else self.rated_kw
            on = reach > 0 and abs(setpoint_kw) >= reach / 2
        if on is not None:
            self.on = on
        note = None
        if self.on != self._heating():
            note = f"thermostat override at {self.t_c:.1f} C (band {self.t_min_c}-{self.t_max_c} C)"
        return Applied(-self.rated_kw if self.on else 0.0, self.on, note)
