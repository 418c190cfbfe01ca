"""Device models: energy is conserved and limits are never exceeded, whatever the commands."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from redy.devices import MODELS, make_model
from redy.devices.battery import Battery
from redy.devices.gas_plant import GasPlant
from redy.devices.loads import EVCharger, WaterHeater
from redy.devices.renewables import PV, Wind
from redy.errors import DeviceError

pytestmark = pytest.mark.pure

_commands = st.lists(
    st.tuples(
        st.one_of(st.none(), st.floats(-1e5, 1e5, allow_nan=False)),
        st.one_of(st.none(), st.booleans()),
        st.floats(1.0, 900.0),
    ),
    min_size=1,
    max_size=40,
)


@pytest.mark.parametrize("name", MODELS)
def test_every_model_integrates_its_power_into_its_energy(name: str) -> None:
    device = make_model(name)
    energy = 0.0
    for _ in range(200):
        device.step(300.0)
        energy += device.power_kw * 300.0 / 3600.0
    assert device.energy_kwh == pytest.approx(energy)


def test_unknown_model_and_bad_parameter_say_what_was_expected() -> None:
    with pytest.raises(DeviceError, match="expected one of"):
        make_model("fusion_reactor")
    with pytest.raises(DeviceError, match="unknown parameter 'colour'; expected one of"):
        make_model("battery", colour="red")
    with pytest.raises(DeviceError, match="'capacity_kwh' expected a number, got 'big'"):
        make_model("battery", capacity_kwh="big")
    with pytest.raises(DeviceError, match="expected capacity_kwh > 0"):
        make_model("battery", capacity_kwh=-1)


@given(_commands)
@settings(max_examples=80)
def test_gas_plant_respects_min_max_and_ramp(commands: list) -> None:
    g = GasPlant(
        p_max_kw=1000, p_min_kw=300, ramp_pct_per_min=20, min_on_s=0, min_off_s=0, startup_time_s=0
    )
    for setpoint, on, dt in commands:
        before = g.power_kw
        g.apply(setpoint, on)
        g.step(dt)
        assert 0.0 <= g.power_kw <= 1000.0
        if g.on and before >= 300.0:
            assert abs(g.power_kw - before) <= g.ramp_kw_per_s * dt + 1e-6
            assert g.power_kw >= 300.0 - 1e-9


def test_gas_plant_refuses_to_restart_within_its_min_off_time() -> None:
    g = GasPlant(min_on_s=0, min_off_s=1800)
    g.apply(on=False)
    g.step(60)
    applied = g.apply(on=True)
    assert not applied.on and applied.note and "min off time" in applied.note


@given(_commands)
@settings(max_examples=80)
def test_battery_conserves_energy_and_stays_in_limits(commands: list) -> None:
    b = Battery(capacity_kwh=13.5, power_kw=5, round_trip_efficiency=0.9, soc=0.5)
    soc0 = b.soc
    for setpoint, on, dt in commands:
        b.apply(setpoint, on)
        b.step(dt)
        assert b.soc_min - 1e-9 <= b.soc <= b.soc_max + 1e-9
        assert -5.0 - 1e-9 <= b.power_kw <= 5.0 + 1e-9
    cells = (b.stored_in_kwh - b.stored_out_kwh) / b.capacity_kwh
    assert b.soc - soc0 == pytest.approx(cells, abs=1e-9)
    # Grid side: what went in minus losses is what the cells hold.
    charged_grid = b.stored_in_kwh / b.eta
    discharged_grid = b.stored_out_kwh * b.eta
    assert b.energy_kwh == pytest.approx(discharged_grid - charged_grid, abs=1e-6)


@given(_commands)
@settings(max_examples=80)
def test_ev_never_charges_past_its_need_or_above_its_power(commands: list) -> None:
    ev = EVCharger(power_kw=11, energy_needed_kwh=5, deadline_s=3600)
    for setpoint, on, dt in commands:
        ev.apply(setpoint, on)
        ev.step(dt)
        assert -11.0 - 1e-9 <= ev.power_kw <= 0.0
        assert ev.delivered_kwh <= 5.0 + 1e-9


def test_ev_urgency_rises_as_the_deadline_nears() -> None:
    ev = EVCharger(power_kw=11, energy_needed_kwh=30, deadline_s=8 * 3600)
    ev.apply(on=False)
    early = ev.urgency()
    ev.step(6 * 3600)
    assert ev.urgency() > early > 0


def test_battery_prices_fall_as_it_fills_and_a_cycle_pays_for_losses_and_wear() -> None:
    b = Battery(capacity_kwh=10, power_kw=5, round_trip_efficiency=0.9, soc=0.1)
    b.apply(-5.0)  # charge
    prices = [b.storage_prices()]
    for _ in range(3):
        b.step(1800)
        prices.append(b.storage_prices())
    assert b.soc > 0.7
    for (c0, d0), (c1, d1) in itertools.pairwise(prices):
        assert c1 < c0 and d1 < d0
    for charge_below, discharge_above in prices:
        # Energy bought just under charge_below and sold just over discharge_above, after the
        # round-trip loss, earns at least the wear cost per MWh.
        margin = discharge_above * 0.9 - charge_below
        assert margin >= b.marginal_cost_eur_mwh


def test_ev_bid_rises_with_urgency_to_the_top_of_its_range() -> None:
    ev = EVCharger(power_kw=11, energy_needed_kwh=30, deadline_s=8 * 3600)
    ev.apply(on=False)  # it waits: the urgency grows
    bids = [ev.bid_eur_mwh()]
    for _ in range(6):
        ev.step(3600)
        bids.append(ev.bid_eur_mwh())
    assert bids == sorted(bids) and bids[0] < bids[-1]
    assert bids[0] >= 30.0 and bids[-1] == 400.0  # 30 kWh no longer fits in the time left


def test_water_heater_bid_rises_as_the_tank_cools() -> None:
    w = WaterHeater(t_c=59.5, draw_kw=1.0)
    w.apply(on=False)
    warm = w.bid_eur_mwh()
    w.step(4 * 3600)
    assert w.t_c < 59.5 and 40.0 <= warm < w.bid_eur_mwh() <= 300.0


@given(_commands)
@settings(max_examples=80)
def test_water_heater_stays_in_its_band_when_it_can(commands: list) -> None:
    w = WaterHeater(power_kw=3.0, draw_kw=0.5, t_c=55.0)
    for _setpoint, on, dt in commands:
        w.apply(None, on)
        w.step(dt)
        # The heater outruns the draw, so the thermostat keeps it within one step of the band.
        assert w.t_min_c - 0.5 * dt / 3600 / w.capacity_kwh_per_k <= w.t_c <= w.t_max_c + 1e-9
    stored = (w.t_c - 55.0) * w.capacity_kwh_per_k
    assert stored == pytest.approx(w.heat_in_kwh - w.heat_out_kwh, abs=1e-9)
    assert -w.energy_kwh == pytest.approx(w.heat_in_kwh, abs=1e-9)


def test_pv_is_dark_at_night_and_peaks_near_solar_noon() -> None:
    pv = PV(kwp=10, cloud_min=1.0)  # no clouds
    assert pv.available_kw(2 * 3600) == 0.0
    by_hour = {h: pv.available_kw(h * 3600) for h in range(24)}
    peak = max(by_hour, key=lambda h: by_hour[h])
    assert 12 <= peak <= 15  # Montpellier, CEST: solar noon near 13:45
    assert 0 < by_hour[peak] <= 10


def test_pv_curtailment_caps_its_output() -> None:
    pv = PV(kwp=10, cloud_min=1.0)
    pv.step(13 * 3600)
    pv.apply(setpoint_kw=1.0)
    pv.step(60)
    assert pv.power_kw == pytest.approx(1.0)


def test_wind_power_is_zero_below_cut_in_and_rated_above_rated_speed() -> None:
    w = Wind(turbine_type="E-126/4200", turbines=2)
    assert w.turbine_kw(1.0) == 0.0
    assert w.turbine_kw(16.0) == pytest.approx(4200.0, rel=0.02)
    assert w.turbine_kw(40.0) == 0.0  # beyond cut-out


def test_csp_heat_balance_holds() -> None:
    csp = make_model("csp")
    stored0 = csp.stored_kwh_th  # type: ignore[attr-defined]
    for _ in range(96):
        csp.step(900)
    c = csp
    balance = (
        stored0
        + c.collected_kwh_th
        - c.lost_kwh_th
        - c.spilled_kwh_th  # type: ignore[attr-defined]
        - c.energy_kwh / c.block_efficiency  # type: ignore[attr-defined]
    )
    assert c.stored_kwh_th == pytest.approx(balance, rel=1e-9)  # type: ignore[attr-defined]


def test_water_heater_near_the_top_of_its_band_states_what_it_draws() -> None:
    # 0.1 K under the top: on, it reaches the top within the minute and the thermostat stops it.
    w = WaterHeater(power_kw=2.5, draw_kw=0.4, t_c=59.9)
    lim = w.limits(60.0)
    assert -2.5 < lim.min_kw < -0.5 and lim.max_kw == 0.0
    w.apply(lim.min_kw / 4)  # nearer off than on
    assert not w.on
    w.apply(lim.min_kw)  # the market dispatches all it states
    w.step(60.0)
    assert w.on and w.power_kw == pytest.approx(lim.min_kw)
    # In the middle of the band it states its rating, as before.
    assert WaterHeater(power_kw=2.5, t_c=55.0).limits(60.0).min_kw == -2.5
