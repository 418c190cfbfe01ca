"""Price discovery by successive refinement, bids with rising marginal cost (pure)."""

from __future__ import annotations

import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from redy.balancing.aggregation import PushSum
from redy.balancing.curves import (
    Bid,
    Dispatchable,
    Fixed,
    FlexibleLoad,
    PriceGrid,
    Renewable,
    Storage,
    curve,
    running_cost_eur_h,
    sample,
)
from redy.balancing.discovery import PhaseGossip, PriceDiscovery, PriceSearch
from redy.balancing.reference import solve
from redy.errors import RedyError

pytestmark = pytest.mark.pure


def _views(n: int) -> dict[int, list[int]]:
    """A ring (so the overlay is connected) plus five random neighbours each, like a view."""
    rng = random.Random(n)
    return {
        i: sorted({(i + 1) % n, *rng.sample([j for j in range(n) if j != i], min(5, n - 1))})
        for i in range(n)
    }


def _market(
    bids: list[list[Bid]], search: PriceSearch, rounds: int = 60, seed: int = 3
) -> list[PriceDiscovery]:
    """Every node runs the phases over a fixed overlay; messages arrive before the next acts."""
    adj = _views(len(bids))
    nodes = [PriceDiscovery(PushSum(i, random.Random(seed + i)), search) for i in adj]
    for i, n in enumerate(nodes):
        n.start_epoch(1, bids[i])
    order = random.Random(seed)
    for _ in range(search.phases):
        for _ in range(rounds):
            ids = list(adj)
            order.shuffle(ids)
            for i in ids:
                for m in nodes[i].round(adj[i]):
                    nodes[m.target].on_message(m)
        for n in nodes:
            n.end_phase()
    return nodes


def _steps(n: int, seed: int) -> list[list[Bid]]:
    rng = random.Random(seed)
    out: list[list[Bid]] = []
    for i in range(n):
        if i % 3 == 0:
            out.append([Dispatchable(0, rng.uniform(100, 600), rng.uniform(20, 300))])
        elif i % 3 == 1:
            out.append([Fixed(-rng.uniform(50, 250)), FlexibleLoad(50, rng.uniform(10, 400))])
        else:
            out.append([Renewable(rng.uniform(0, 80), 0.0), Fixed(-rng.uniform(20, 60))])
    return out


def test_the_default_search_reaches_a_hundredth_of_a_euro_whatever_the_range() -> None:
    assert PriceSearch().phases == 3 and PriceSearch().step_eur_mwh() <= 0.01
    wide = PriceSearch(-500, 40_000)
    assert wide.step_eur_mwh() <= 0.01 and wide.phases == 4
    with pytest.raises(RedyError, match="floor < cap"):
        PriceSearch(100, 100)


@pytest.mark.parametrize("floor,cap", [(-500.0, 4000.0), (-3000.0, 30_000.0)])
def test_every_node_finds_the_true_optimal_price_to_a_hundredth(floor: float, cap: float) -> None:
    bids = _steps(30, seed=4)
    search = PriceSearch(floor, cap)
    ref = solve(bids, floor, cap)
    nodes = _market(bids, search)
    assert ref.status == "cleared"
    for n in nodes:
        assert n.result is not None and n.result.status == "cleared"
        assert n.result.phases == search.phases
        assert abs(n.result.price_eur_mwh - ref.price_eur_mwh) <= 0.01
    # Merit order: every block under the price runs in full, every block over it not at all,
    # up to the last step's width, and the dispatch balances.
    price = nodes[0].result.price_eur_mwh  # type: ignore[union-attr]
    total = 0.0
    for n, node_bids in zip(nodes, bids, strict=True):
        for b in node_bids:
            p = n.result.dispatch_kw(b)  # type: ignore[union-attr]
            total += p
            if isinstance(b, Dispatchable) and abs(b.cost_eur_mwh - price) > search.step_eur_mwh():
                assert p == pytest.approx(b.p_max_kw if b.cost_eur_mwh < price else b.p_min_kw)
    assert abs(total) < 1e-3


def test_ramped_producers_meet_at_the_price_where_their_marginal_costs_are_equal() -> None:
    bids: list[list[Bid]] = [
        [Dispatchable(1000, 9000, 40.0, cost_max_eur_mwh=90.0)],
        [Dispatchable(0, 5000, 55.0, cost_max_eur_mwh=70.0)],
        *[[Fixed(-1000.0)] for _ in range(10)],
    ]
    ref = solve(bids)
    nodes = _market(bids, PriceSearch())
    for n in nodes:
        assert abs(n.result.price_eur_mwh - ref.price_eur_mwh) <= 0.01  # type: ignore[union-attr]
    a = nodes[0].result.dispatch_kw(bids[0][0])  # type: ignore[union-attr]
    assert a == pytest.approx(ref.dispatch_kw[0][0], rel=1e-4)


def test_no_crossing_is_reported_with_shares_that_add_up_to_the_missing_kw() -> None:
    short: list[list[Bid]] = [[Fixed(-100.0 - i)] for i in range(10)] + [
        [Dispatchable(0, 600, 732.0)] for _ in range(2)
    ]
    ref = solve(short, -500, 500)
    nodes = _market(short, PriceSearch(-500, 500))
    assert ref.status == "shortage" and ref.unserved_kw == pytest.approx(1045.0)
    for n in nodes:
        assert n.result is not None and n.result.status == "shortage"
        assert n.result.price_eur_mwh == 500.0
    assert sum(n.result.unserved_kw for n in nodes) == pytest.approx(1045.0, rel=1e-3)  # type: ignore[union-attr]
    # The same bids with the European cap clear at the producer's cost.
    nodes = _market(short, PriceSearch())
    assert nodes[0].result.price_eur_mwh == pytest.approx(732.0, abs=0.01)  # type: ignore[union-attr]
    glut: list[list[Bid]] = [[Fixed(50.0)] for _ in range(8)] + [[FlexibleLoad(100, 30)]]
    nodes = _market(glut, PriceSearch())
    assert {n.result.status for n in nodes} == {"surplus"}  # type: ignore[union-attr]
    # 400 kW of must-run output, 100 kW of it taken by the load even at the floor.
    assert solve(glut).excess_kw == pytest.approx(300.0)
    assert sum(n.result.excess_kw for n in nodes) == pytest.approx(300.0, rel=1e-3)  # type: ignore[union-attr]


def test_nodes_on_different_windows_all_move_to_the_lowest_and_keep_the_sum() -> None:
    bids = _steps(20, seed=9)
    search = PriceSearch()
    adj = _views(20)
    nodes = [PriceDiscovery(PushSum(i, random.Random(i)), search) for i in adj]
    low, high = PriceGrid(40.0, 107.5, search.k), PriceGrid(62.5, 130.0, search.k)
    for i, n in enumerate(nodes):
        n.start_epoch(1, bids[i])
        n.phase, n._parent = 2, search.coarse()  # as if phase 1 had ended on two sides
        n._start(low if i in (0, 7) else high)  # of a cell edge
    order = random.Random(1)
    for _ in range(60):
        ids = list(adj)
        order.shuffle(ids)
        for i in ids:
            for m in nodes[i].round(adj[i]):
                nodes[m.target].on_message(m)
    truth = np.mean([curve(b, low) for b in bids], axis=0)
    assert {(n.grid.floor_eur_mwh, n.grid.cap_eur_mwh) for n in nodes} == {(40.0, 107.5)}
    for n in nodes:
        assert np.allclose(n.agg.estimate(), truth, atol=1e-6 * np.abs(truth).max())


@st.composite
def _ramps(draw: st.DrawFn) -> Bid:
    lo = draw(st.floats(-400, 3000))
    hi = lo + draw(st.floats(0, 500))
    kw = draw(st.floats(0, 1000))
    if draw(st.booleans()):
        base = draw(st.floats(0, 1000))
        return Dispatchable(base, base + kw, lo, cost_max_eur_mwh=hi)
    return FlexibleLoad(kw, lo, hi)


@given(_ramps())
@settings(max_examples=200)
def test_a_ramped_bid_is_non_decreasing_and_its_cost_is_the_integral_of_its_price(
    bid: Bid,
) -> None:
    grid = PriceGrid(-500, 4000, 401)
    c = sample(bid, grid)
    assert np.all(np.diff(c) >= -1e-9)
    # The cost between two outputs is the area under the marginal cost: the integral of the
    # injection's inverse, measured here on a fine price grid (trapezoids of price x dP).
    offer = bid.offer()
    fine = PriceGrid(-500, 4000, 200_001).prices
    p = bid.curve_kw(fine)
    area = float(np.sum((fine[1:] + fine[:-1]) / 2 * np.diff(p))) / 1000
    step = fine[1] - fine[0]  # a step's price is known to one fine step
    tol = (abs(p[-1] - p[0]) * step + 1e-6) / 1000
    assert offer.cost_eur_h(p[-1]) - offer.cost_eur_h(p[0]) == pytest.approx(area, abs=tol)


def test_a_falling_marginal_cost_is_refused() -> None:
    with pytest.raises(RedyError, match="rises"):
        Dispatchable(0, 10, 50.0, cost_max_eur_mwh=40.0)
    with pytest.raises(RedyError, match="rises"):
        FlexibleLoad(10, 50.0, 40.0)


def test_running_cost_integrates_a_ramp_and_multiplies_a_step() -> None:
    assert running_cost_eur_h(500, 0, 1000, 80.0) == pytest.approx(40.0)
    # 100 kW must-run at 40, then 40 -> 60 over 100..500 kW: 200 kW at an average of 45.
    assert running_cost_eur_h(300, 100, 500, (40.0, 60.0)) == pytest.approx(
        (100 * 40 + 200 * 45) / 1000
    )


def test_storage_offer_charges_when_cheap_and_costs_nothing_idle() -> None:
    o = Storage(10, 20, 40, 120).offer()
    assert o.cost_eur_h(0.0) == pytest.approx(0.0)
    assert o.cost_eur_h(-10.0) == pytest.approx(-0.4)
    assert o.cost_eur_h(20.0) == pytest.approx(2.4)


def test_a_window_no_honest_node_could_choose_is_refused() -> None:
    search = PriceSearch()
    a = PriceDiscovery(PushSum("a", random.Random(1)), search)
    b = PriceDiscovery(PushSum("b", random.Random(2)), search)
    for n in (a, b):
        n.start_epoch(1, [Fixed(-10.0), Dispatchable(0, 50, 80.0)])
        n.end_phase()  # alone: each clears its own curve at 80 and refines around it
    (m,) = b.round(["a"])
    grid = a.grid
    forged = [
        (-1e6, grid.cap_eur_mwh),  # far below the range
        (grid.floor_eur_mwh - 1.0, grid.cap_eur_mwh - 1.0),  # off the coarse grid
        (grid.floor_eur_mwh - 22.5, grid.cap_eur_mwh),  # four cells wide
    ]
    for floor, cap in forged:
        bad = PhaseGossip(m.phase, floor, cap, m.msg)
        assert not a.on_message(bad)
        assert (a.grid.floor_eur_mwh, a.grid.cap_eur_mwh) == (grid.floor_eur_mwh, grid.cap_eur_mwh)
    lower = PhaseGossip(m.phase, grid.floor_eur_mwh - 22.5, grid.cap_eur_mwh - 22.5, m.msg)
    assert a.on_message(lower) and a.grid.floor_eur_mwh == grid.floor_eur_mwh - 22.5
