"""What every device model offers. Signed power: + = injection into the grid, - = consumption.

Models are pure: they advance only when told (`step(dt_s)`, simulated seconds), read no clock,
and take their randomness from an injected seed, so a run can go faster than real time and be
replayed.
"""

from __future__ import annotations

import attrs

from redy.errors import DeviceError


@attrs.frozen
class Reading:
    """What a meter on the device sees now."""

    power_kw: float
    energy_kwh: float
    soc: float | None = None
    available_kw: float | None = None
    forecast_kw: tuple[float, ...] = ()


@attrs.frozen
class Limits:
    """Signed power reachable within the next interval (ramp, state of charge, thermal band)."""

    min_kw: float
    max_kw: float


@attrs.frozen
class Applied:
    """What a command did: the setpoint and on/off state now in force, and why it differs."""

    setpoint_kw: float | None
    on: bool
    note: str | None = None


class Device:
    """Base of all models: integrates energy, keeps simulated time.

    Subclasses set `kind`, `quantity` ('production' | 'consumption' | 'storage'), `rated_kw`, and
    implement `_advance(dt_s) -> power_kw` (mean power over the step).
    """

    kind = "device"
    quantity = "consumption"
    actuatable = False
    marginal_cost_eur_mwh: float | None = None

    def __init__(self, rated_kw: float) -> None:
        if not rated_kw > 0:
            raise DeviceError(f"{self.kind}: rated power must be > 0 kW, got {rated_kw}")
        self.rated_kw = float(rated_kw)
        self.t_s = 0.0
        self.energy_kwh = 0.0
        self.power_kw = 0.0
        self.on = True
        self.setpoint_kw: float | None = None

    @property
    def capacity_kwh_or_none(self) -> float | None:
        """Usable stored energy (electric kWh) of a storage device; None for others."""
        return None

    def step(self, dt_s: float) -> None:
        """Advance `dt_s` simulated seconds; energy is the integral of the step's power."""
        if dt_s <= 0:
            return
        self.power_kw = self._advance(dt_s)
        self.energy_kwh += self.power_kw * dt_s / 3600.0
        self.t_s += dt_s

    def _advance(self, dt_s: float) -> float:
        raise NotImplementedError

    def bid_eur_mwh(self) -> float | None:
        """The price this device bids at now: a producer's marginal cost, a flexible load's
        willingness to pay (EUR/MWh); None when it has none."""
        return self.marginal_cost_eur_mwh

    def storage_prices(self) -> tuple[float, float] | None:
        """Storage: (charge below, discharge above) in EUR/MWh; None for other devices."""
        return None

    def soc_now(self) -> float | None:
        """Storage: the state of charge now (0..1); None for other devices."""
        return self.reading().soc if self.quantity == "storage" else None

    def soc_range(self) -> tuple[float, float] | None:
        """Storage: the states of charge (0..1) it keeps between; None for other devices (and
        for storage that goes from empty to full)."""
        return None

    def due(self) -> tuple[float, float] | None:
        """A deferrable load: (kWh it still has to draw at the meter, simulated seconds left to
        its deadline); None for other devices."""
        return None

    def reading(self) -> Reading:
        return Reading(power_kw=self.power_kw, energy_kwh=self.energy_kwh)

    def limits(self, interval_s: float = 60.0) -> Limits:
        """Signed power reachable within `interval_s` (non-actuatable: what it does now)."""
        return Limits(self.power_kw, self.power_kw)

    def apply(self, setpoint_kw: float | None = None, on: bool | None = None) -> Applied:
        raise DeviceError(f"{self.kind} cannot be commanded: it has no actuator")

    def _apply_within(
        self, setpoint_kw: float | None, on: bool | None, lo_kw: float, hi_kw: float
    ) -> Applied:
        """Switch on/off and take a signed setpoint clamped to [lo_kw, hi_kw], saying so."""
        if on is not None:
            self.on = on
        note = None
        if setpoint_kw is not None:
            bounded = clamp(setpoint_kw, lo_kw, hi_kw)
            if bounded != setpoint_kw:
                note = f"setpoint {setpoint_kw:g} kW clamped to [{lo_kw:g}, {hi_kw:g}] kW"
            self.setpoint_kw = bounded
        return Applied(self.setpoint_kw, self.on, note)


def clamp(x: float, lo: float, hi: float) -> float:
    return lo if x < lo else hi if x > hi else x
