"""A gas-fired plant: min/max output, ramp limit, marginal cost, start-up time and cost,
minimum on and off times."""

from __future__ import annotations

from redy.devices.base import Applied, Device, Limits, clamp
from redy.errors import DeviceError


class GasPlant(Device):
    """Dispatchable producer. Ramp in % of max power per minute (REFERENCE: combined cycle
    ~10 %/min, frame gas turbine ~20, aeroderivative ~50, gas engines >100)."""

    kind = "gas_plant"
    quantity = "production"
    actuatable = True

    def __init__(
        self,
        *,
        p_max_kw: float = 50_000.0,
        p_min_kw: float = 20_000.0,
        ramp_pct_per_min: float = 10.0,
        marginal_cost_eur_mwh: float = 90.0,
        startup_cost_eur: float = 5_000.0,
        startup_time_s: float = 600.0,
        min_on_s: float = 3600.0,
        min_off_s: float = 1800.0,
        on: bool = True,
        seed: int = 0,
    ) -> None:
        super().__init__(p_max_kw)
        if not 0 <= p_min_kw <= p_max_kw:
            raise DeviceError(f"gas_plant: expected 0 <= p_min_kw <= p_max_kw, got {p_min_kw}")
        if ramp_pct_per_min <= 0:
            raise DeviceError("gas_plant: ramp_pct_per_min must be > 0")
        self.p_min_kw = float(p_min_kw)
        self.ramp_kw_per_s = ramp_pct_per_min / 100.0 * p_max_kw / 60.0
        self.marginal_cost_eur_mwh = float(marginal_cost_eur_mwh)
        self.startup_cost_eur = float(startup_cost_eur)
        self.startup_time_s = float(startup_time_s)
        self.min_on_s = float(min_on_s)
        self.min_off_s = float(min_off_s)
        self.on = on
        self.power_kw = self.p_min_kw if on else 0.0
        self.setpoint_kw = self.power_kw
        self._since_switch_s = max(min_on_s, min_off_s)  # free to switch at the start
        self._starting_s = 0.0
        self.startups = 0

    def _advance(self, dt_s: float) -> float:
        self._since_switch_s += dt_s
        if self.on and self._starting_s > 0:
            self._starting_s = max(0.0, self._starting_s - dt_s)
            return 0.0 if self._starting_s > 0 else self.p_min_kw
        target = clamp(self.setpoint_kw or 0.0, self.p_min_kw, self.rated_kw) if self.on else 0.0
        step = self.ramp_kw_per_s * dt_s
        if self.on and self.power_kw < self.p_min_kw:
            return self.p_min_kw  # synchronised: the unit runs at least at its minimum
        return clamp(target, self.power_kw - step, self.power_kw + step)

    def limits(self, interval_s: float = 60.0) -> Limits:
        if not self.on or self._starting_s > 0:
            return Limits(self.power_kw, self.power_kw)
        step = self.ramp_kw_per_s * interval_s
        return Limits(
            max(self.p_min_kw, self.power_kw - step), min(self.rated_kw, self.power_kw + step)
        )

    def apply(self, setpoint_kw: float | None = None, on: bool | None = None) -> Applied:
        notes = []
        if on is not None and on != self.on:
            need = self.min_off_s if on else self.min_on_s
            if self._since_switch_s < need:
                notes.append(
                    f"{'start' if on else 'stop'} refused: min {'off' if on else 'on'} time "
                    f"{need:g} s not over ({self._since_switch_s:g} s)"
                )
            else:
                self.on = on
                self._since_switch_s = 0.0
                if on:
                    self._starting_s = self.startup_time_s
                    self.startups += 1
        if setpoint_kw is not None:
            bounded = clamp(setpoint_kw, self.p_min_kw, self.rated_kw)
            if bounded != setpoint_kw:
                notes.append(f"setpoint {setpoint_kw:g} kW clamped to {bounded:g} kW")
            self.setpoint_kw = bounded
        return Applied(self.setpoint_kw, self.on, "; ".join(notes) or None)
