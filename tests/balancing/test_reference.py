"""The reference optimum against analytic merit orders, scipy's solvers and a published case."""

from __future__ import annotations

import random

import numpy as np
import pytest
from scipy.optimize import linprog, minimize

from redy.balancing.curves import (
    Bid,
    Dispatchable,
    Fixed,
    FlexibleLoad,
    Renewable,
    Storage,
)
from redy.balancing.reference import solve

pytestmark = pytest.mark.pure


def test_the_marginal_step_producer_sets_the_price_and_runs_in_part() -> None:
    ref = solve([[Dispatchable(0, 1000, 60)], [Dispatchable(0, 1000, 120)], [Fixed(-1500)]])
    assert (ref.status, ref.price_eur_mwh) == ("cleared", 120.0)
    assert ref.dispatch_kw == ((1000.0,), (500.0,), (-1500.0,))
    assert ref.cost_eur_h == pytest.approx((1000 * 60 + 500 * 120) / 1000)


def test_two_ramps_clear_where_their_marginal_costs_meet_the_load() -> None:
    # Supply of a: 100 + 900 (λ-20)/80 on 20..100; of b: 500 (λ-40)/60 on 40..100.
    # 100 + 11.25 (λ-20) + 8.333 (λ-40) = 800  =>  λ = (700 + 225 + 333.33) / 19.583
    ref = solve(
        [
            [Dispatchable(100, 1000, 20, cost_max_eur_mwh=100)],
            [Dispatchable(0, 500, 40, cost_max_eur_mwh=100)],
            [Fixed(-800)],
        ]
    )
    lam = (700 + 225 + 1000 / 3) / (11.25 + 500 / 60)
    assert ref.price_eur_mwh == pytest.approx(lam, rel=1e-12)
    a, b = ref.dispatch_kw[0][0], ref.dispatch_kw[1][0]
    assert a == pytest.approx(100 + 11.25 * (lam - 20))
    assert a + b == pytest.approx(800)
    # Exact integral: the must-run 100 kW at 20, then the ramp's trapezoids.
    expected = 100 * 20 + (a - 100) * (20 + lam) / 2 + b * (40 + lam) / 2
    assert ref.cost_eur_h == pytest.approx(expected / 1000)


def test_no_crossing_is_a_shortage_or_surplus_with_the_missing_kw() -> None:
    short = solve([[Fixed(-100)], [Renewable(30), Dispatchable(0, 20, 3000)]], -500, 4000)
    assert (short.status, short.price_eur_mwh, short.unserved_kw) == ("shortage", 4000.0, 50.0)
    glut = solve([[Fixed(300)], [FlexibleLoad(100, 20)]], -500, 4000)
    assert (glut.status, glut.price_eur_mwh, glut.excess_kw) == ("surplus", -500.0, 200.0)
    # The same bids clear once the cap is above the last producer's cost.
    assert solve([[Fixed(-100)], [Dispatchable(0, 200, 732)]], -500, 4000).price_eur_mwh == 732


def test_wood_wollenberg_example_3a() -> None:
    """Wood, Wollenberg & Sheblé, Power Generation, Operation and Control (2nd ed. 1996),
    Example 3A: three thermal units with quadratic costs F_i = a + b P + c P^2 ($/h, P in MW),
    unit 1's fuel at 1.1 $/MBtu; load 850 MW. The book's lambda-iteration optimum:
    lambda = 9.148 $/MWh, P = 393.2, 334.6, 122.2 MW."""
    units = [  # (b, c, P_min, P_max)
        (7.92, 0.001562, 150, 600),
        (7.85, 0.00194, 100, 400),
        (7.97, 0.00482, 50, 200),
    ]
    bids: list[list[Bid]] = [
        [Dispatchable(lo * 1e3, hi * 1e3, b + 2 * c * lo, cost_max_eur_mwh=b + 2 * c * hi)]
        for b, c, lo, hi in units
    ]
    ref = solve([*bids, [Fixed(-850e3)]])
    assert ref.price_eur_mwh == pytest.approx(9.148, abs=5e-4)
    got = [ref.dispatch_kw[i][0] / 1e3 for i in range(3)]
    assert got == pytest.approx([393.2, 334.6, 122.2], abs=0.1)
    # The cost above the minimum outputs is the book's F(P) - F(P_min) for every unit.
    above_min = sum(
        b * (p - lo) + c * (p * p - lo * lo) for (b, c, lo, _), p in zip(units, got, strict=True)
    )
    base = sum(lo * (b + 2 * c * lo) for b, c, lo, _ in units)
    assert ref.cost_eur_h == pytest.approx(base + above_min, rel=1e-5)


def _random_bids(rng: random.Random, ramps: bool) -> list[list[Bid]]:
    nodes: list[list[Bid]] = []
    for _ in range(rng.randint(3, 12)):
        c = rng.uniform(-50, 300)
        top = c + rng.uniform(0, 80) if ramps else None
        kind = rng.randrange(5)
        if kind == 0:
            lo = rng.uniform(0, 200)
            nodes.append([Dispatchable(lo, lo + rng.uniform(0, 800), c, cost_max_eur_mwh=top)])
        elif kind == 1:
            nodes.append([FlexibleLoad(rng.uniform(0, 400), c, top), Fixed(-rng.uniform(0, 500))])
        elif kind == 2:
            nodes.append([Storage(rng.uniform(0, 90), rng.uniform(0, 90), c, c + 40)])
        elif kind == 3:
            nodes.append([Renewable(rng.uniform(0, 300), rng.uniform(-20, 20))])
        else:
            nodes.append([Fixed(-rng.uniform(0, 600))])
    return nodes


def _scipy_optimum(nodes: list[list[Bid]], ramps: bool) -> tuple[float, float] | None:
    """(cost EUR/h, price) from scipy on the blocks: linprog for steps (its equality dual is
    the price), SLSQP on the quadratic cost for ramps; None when no dispatch balances."""
    offers = [b.offer() for bids in nodes for b in bids]
    base = sum(o.base_kw for o in offers)
    base_cost = sum(o.base_cost_eur_h for o in offers)
    blocks = [blk for o in offers for blk in o.blocks]
    kw = np.array([b.kw for b in blocks])
    lo = np.array([b.cost_lo_eur_mwh for b in blocks])
    hi = np.array([b.cost_hi_eur_mwh for b in blocks])
    if not 0 <= -base <= kw.sum():
        return None
    if not ramps:
        res = linprog(
            lo / 1000,
            A_eq=np.ones((1, len(kw))),
            b_eq=[-base],
            bounds=list(zip(np.zeros_like(kw), kw, strict=True)),
            method="highs",
        )
        assert res.success
        return base_cost + res.fun, float(res.eqlin.marginals[0]) * 1000
    slope = np.where(kw > 0, (hi - lo) / np.where(kw > 0, kw, 1), 0.0)

    def cost(x: np.ndarray) -> float:
        return float(np.sum(lo * x + slope * x * x / 2) / 1000)

    res = minimize(
        cost,
        np.clip(np.full(len(kw), -base / len(kw)), 0, kw),
        jac=lambda x: (lo + slope * x) / 1000,
        bounds=list(zip(np.zeros_like(kw), kw, strict=True)),
        constraints=[
            {"type": "eq", "fun": lambda x: np.sum(x) + base, "jac": lambda x: np.ones_like(x)}
        ],
        method="SLSQP",
        options={"ftol": 1e-12, "maxiter": 500},
    )
    assert res.success, res.message
    return base_cost + res.fun, float("nan")


@pytest.mark.parametrize("ramps", [False, True])
def test_the_merit_order_solve_matches_scipy_on_random_grids(ramps: bool) -> None:
    rng = random.Random(11)
    checked = 0
    for _ in range(60):
        nodes = _random_bids(rng, ramps)
        truth = _scipy_optimum(nodes, ramps)
        ref = solve(nodes, -1000, 5000)
        if truth is None:
            assert ref.status in ("shortage", "surplus")
            continue
        checked += 1
        assert ref.status == "cleared"
        assert sum(sum(p) for p in ref.dispatch_kw) == pytest.approx(0.0, abs=1e-6)
        assert ref.cost_eur_h == pytest.approx(truth[0], rel=1e-6, abs=1e-6)
        if not ramps and not np.isnan(truth[1]):
            # The LP's price is one of the optimal duals; ours is the lowest: both within the
            # marginal cost interval that balances, so they agree unless the crossing is flat.
            assert ref.price_eur_mwh <= truth[1] + 1e-6
    assert checked >= 20
