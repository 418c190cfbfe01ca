"""The community's LP: its prices, its plans, and its optimum against the independent
reference (linopy, interior point)."""

from __future__ import annotations

import pytest

from redy.planning.offer import Block, Deferrable, HorizonOffer, Storage
from redy.planning.problem import Boundary, solve
from redy.planning.reference import solve_reference

pytestmark = pytest.mark.pure

H = 8
DA = [50.0, 60.0, 80.0, 120.0, 150.0, 100.0, 70.0, 40.0]


def _boundary(import_kw: float = 6.0) -> Boundary:
    return Boundary(DA, [p - 20 for p in DA], [import_kw] * H, [6.0] * H)


def _offers(extra_load_kw: float = 0.0, at: int = 0) -> list[HorizonOffer]:
    base = [-2.0, -2.0, -1.0, 0.5, 1.0, -1.5, -2.5, -2.0]
    base[at] -= extra_load_kw
    return [
        HorizonOffer("h1", 0, base, storage=(Storage(10, 5, 3, 3, 0.95, 0.9, 0.05, 10),)),
        HorizonOffer(
            "gas",
            0,
            [0.0] * H,
            blocks=(Block([4] * H, [90] * H), Block([4] * H, [130] * H)),
            ramp_kw=2.0,
        ),
        HorizonOffer("ev", 0, [-0.5] * H, deferrable=(Deferrable(5.0, 1, 7, 3.7),)),
    ]


def _marginals(boundary: Boundary) -> list[tuple[float, float]]:
    """Per interval, the cost of one kW less and one kW more of load (EUR/MWh), by finite
    differences: the price lies between them (they differ where a block ends exactly there)."""
    eps = 1e-3
    at = solve(_offers(), boundary).objective_eur
    out = []
    for t in range(H):
        up = solve(_offers(eps, t), boundary).objective_eur
        down = solve(_offers(-eps, t), boundary).objective_eur
        out.append(((at - down) / (eps * 0.25) * 1000.0, (up - at) / (eps * 0.25) * 1000.0))
    return out


def test_the_price_is_the_cost_of_one_more_kw_of_load_in_eur_per_mwh() -> None:
    for boundary in (_boundary(), _boundary(import_kw=1.0)):
        plan = solve(_offers(), boundary)
        for price, (less, more) in zip(plan.price_eur_mwh, _marginals(boundary), strict=True):
            assert less - 1e-3 <= price <= more + 1e-3


def test_the_plan_balances_and_keeps_every_limit() -> None:
    plan = solve(_offers(), _boundary())
    for t in range(H):
        total = sum(p.injection_kw[t] for p in plan.plans.values())
        flows = plan.import_kw[t] - plan.export_kw[t] + plan.unserved_kw[t] - plan.excess_kw[t]
        assert total + flows == pytest.approx(0.0, abs=1e-7)
    gas = plan.plans["gas"].blocks_kw
    assert all(abs(b - a) <= 2.0 + 1e-9 for a, b in zip((0.0, *gas), gas, strict=False))
    soc = plan.plans["h1"].soc_kwh[0]
    assert all(-1e-9 <= e <= 10 + 1e-9 for e in soc)
    assert set(plan.status) == {"cleared"}


def test_an_ev_gets_its_energy_by_its_deadline_where_its_limits_allow() -> None:
    plan = solve(_offers(), _boundary())
    ev = plan.plans["ev"]
    assert sum(ev.deferrable_kw[0]) * 0.25 == pytest.approx(5.0, abs=1e-7)
    assert ev.shortfall_kwh[0] == pytest.approx(0.0, abs=1e-9)
    assert ev.deferrable_kw[0][0] == 0.0 and ev.deferrable_kw[0][7] == 0.0  # outside its window
    # Beyond its limits (6 intervals of 3.7 kW give 5.55 kWh): all it can, the rest is short.
    short = [
        *_offers()[:2],
        HorizonOffer("ev", 0, [-0.5] * H, deferrable=(Deferrable(9, 1, 7, 3.7),)),
    ]
    ev = solve(short, _boundary()).plans["ev"]
    assert ev.shortfall_kwh[0] == pytest.approx(9 - 5.55, abs=1e-7)


def test_a_short_boundary_is_a_shortage_at_the_cap_never_a_silent_clamp() -> None:
    plan = solve(_offers(20.0, 3), _boundary(import_kw=0.0))
    assert "shortage" in plan.status
    t = plan.status.index("shortage")
    assert t == 3
    assert plan.price_eur_mwh[t] == pytest.approx(4000.0)
    assert plan.unserved_kw[t] > 0


def test_the_optimum_equals_the_independent_reference() -> None:
    for boundary in (_boundary(), _boundary(import_kw=1.0)):
        plan = solve(_offers(), boundary)
        ref = solve_reference(_offers(), boundary)
        assert plan.objective_eur == pytest.approx(ref.objective_eur, rel=1e-6)
        # Where a block ends exactly at the balance the dual is not unique: both are valid.
        for price, (less, more) in zip(ref.price_eur_mwh, _marginals(boundary), strict=True):
            assert less - 1e-3 <= price <= more + 1e-3


def test_where_intervals_cost_the_same_stores_and_evs_act_earliest() -> None:
    # Flat prices (an island whose gas plant sets every interval's price): the optimum leaves
    # the EV's hours and the store's charge open; the plan takes the earliest, whatever the
    # load's small changes from one solve to the next.
    flat = Boundary([100.0] * H, [50.0] * H, [0.0] * H, [0.0] * H)
    for wiggle in (0.0, 0.013, -0.021):
        offers = [
            HorizonOffer("gas", 0, [0.0] * H, blocks=(Block([50] * H, [90] * H),)),
            HorizonOffer("h1", 0, [-2.0 + wiggle * t for t in range(H)]),
            HorizonOffer("ev", 0, [0.0] * H, deferrable=(Deferrable(2.0, 1, 7, 3.7),)),
            HorizonOffer("st", 0, [0.0] * H, storage=(Storage(2.0, 0.0, 4.0, 4.0, 1.0, 1.0, 0.5),)),
        ]
        plan = solve(offers, flat)
        ev = plan.plans["ev"].deferrable_kw[0]
        assert ev[1] == ev[2] == pytest.approx(3.7) and ev[3] == pytest.approx(8 - 7.4)
        assert not any(ev[4:]) and ev[0] == 0.0
        charge = plan.plans["st"].charge_kw[0]
        assert charge[:2] == pytest.approx((4.0, 4.0)) and not any(charge[2:])
        assert plan.price_eur_mwh == pytest.approx((90.0,) * H)
