"""How a governance unit turns its units' reports into bids (pure)."""

from __future__ import annotations

import pytest

from redy import messages
from redy.balancing.curves import Dispatchable, Fixed, FlexibleLoad, Storage
from redy.units.market import STORAGE_CHARGE_BELOW, STORAGE_DISCHARGE_ABOVE, node_bids
from redy.units.node_state import NodeState

pytestmark = pytest.mark.pure


def _unit(state: NodeState, name: str, role: str, quantity: str, report: object) -> None:
    meta = messages.UnitMeta(
        unit=name,
        role=role,
        device="x",
        quantity=quantity,
        rated_power_kw=1000,  # above every range below: these units tell the truth
        period_s=1,
        bd_seq=1,
        ts_s=0,
    )
    state.on_message(f"redy/n/units/{name}/meta", meta)
    state.on_message(f"redy/n/units/{name}/state", messages.UnitState(state="online", bd_seq=1))
    kind = "action" if role == "action" else "detection"
    leaf = "status" if role == "action" else "measurement"
    state.on_message(f"redy/n/{kind}/{name}/{leaf}", report)


def _status(lo: float, hi: float, cost: float | None) -> messages.ActuatorStatus:
    return messages.ActuatorStatus(
        seq=1, ts_s=0, power_kw=0, on=True, min_kw=lo, max_kw=hi, marginal_cost_eur_mwh=cost
    )


def test_each_online_unit_becomes_the_bid_its_range_says() -> None:
    s = NodeState("n")
    _unit(s, "turbine", "action", "production", _status(100, 800, 95))
    _unit(s, "furnace", "action", "consumption", _status(-300, 0, 140))
    _unit(s, "battery", "action", "storage", _status(-5, 5, 20))
    _unit(
        s,
        "meter",
        "detection",
        "consumption",
        messages.Measurement(seq=1, ts_s=0, power_kw=-40, energy_kwh=0),
    )
    bids = node_bids(s)
    assert bids["turbine"] == Dispatchable(100, 800, 95)
    assert bids["furnace"] == FlexibleLoad(300, 140)
    assert isinstance(bids["battery"], Storage) and bids["battery"].discharge_kw == 5
    assert bids["meter"] == Fixed(-40)


def test_storage_bids_at_the_prices_it_states_and_at_defaults_otherwise() -> None:
    s = NodeState("n")
    stated = messages.ActuatorStatus(
        seq=1,
        ts_s=0,
        power_kw=0,
        on=True,
        min_kw=-5,
        max_kw=4,
        charge_below_eur_mwh=41.0,
        discharge_above_eur_mwh=88.0,
    )
    _unit(s, "battery", "action", "storage", stated)
    _unit(s, "old-battery", "action", "storage", _status(-5, 5, 20))
    bids = node_bids(s)
    assert bids["battery"] == Storage(5, 4, 41.0, 88.0)
    assert bids["old-battery"] == Storage(5, 5, STORAGE_CHARGE_BELOW, STORAGE_DISCHARGE_ABOVE)


def test_offline_units_do_not_bid() -> None:
    s = NodeState("n")
    _unit(s, "turbine", "action", "production", _status(100, 800, 95))
    s.on_message("redy/n/units/turbine/state", messages.UnitState(state="offline", bd_seq=1))
    assert node_bids(s) == {}


def test_a_stated_rising_marginal_cost_becomes_a_ramped_bid() -> None:
    s = NodeState("n")
    _unit(s, "turbine", "action", "production", _status(100, 800, (60.0, 95.0)))  # type: ignore[arg-type]
    _unit(s, "furnace", "action", "consumption", _status(-300, -50, (90.0, 140.0)))  # type: ignore[arg-type]
    _unit(s, "battery", "action", "storage", _status(-5, 5, (40.0, 120.0)))  # type: ignore[arg-type]
    bids = node_bids(s)
    assert bids["turbine"] == Dispatchable(100, 800, 60.0, cost_max_eur_mwh=95.0)
    assert bids["furnace"] == FlexibleLoad(250, 90.0, 140.0)
    assert bids["furnace.base"] == Fixed(-50)
    assert bids["battery"] == Dispatchable(-5, 5, 40.0, cost_max_eur_mwh=120.0)
    assert bids["turbine"].injection_kw(77.5) == pytest.approx(450.0)
    # The node's running cost counts the ramp's exact integral: 100 kW at 60, then 60 -> 77.5.
    s.on_message(
        "redy/n/action/turbine/status",
        messages.ActuatorStatus(
            seq=2,
            ts_s=1,
            power_kw=450,
            on=True,
            min_kw=100,
            max_kw=800,
            marginal_cost_eur_mwh=(60.0, 95.0),
        ),
    )
    cost = s.energy_state(1.0).cost_eur_h
    assert cost == pytest.approx((100 * 60 + 350 * (60 + 77.5) / 2) / 1000)
