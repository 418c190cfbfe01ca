"""Bid curves, clearing, and gossip averaging (pure)."""

from __future__ import annotations

import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from redy.balancing.aggregation import FlowUpdating, GossipOut, PushSum
from redy.balancing.clearing import clear
from redy.balancing.curves import (
    Dispatchable,
    Fixed,
    FlexibleLoad,
    PriceGrid,
    Renewable,
    Storage,
    curve,
    dispatch_kw,
    sample,
)
from redy.devices.urgency import ev_urgency, willingness_to_pay

pytestmark = pytest.mark.pure

GRID = PriceGrid(-100.0, 500.0, 61)
_kw = st.floats(0.0, 1000.0)
_price = st.floats(-100.0, 500.0)

bids = st.one_of(
    st.builds(
        lambda lo, span, c, on: Dispatchable(lo, lo + span, c, on), _kw, _kw, _price, st.booleans()
    ),
    st.builds(Renewable, _kw, _price),
    st.builds(FlexibleLoad, _kw, _price),
    st.builds(
        lambda a, b, lo, span: Storage(a, b, lo, lo + span), _kw, _kw, _price, st.floats(0, 200)
    ),
    st.builds(Fixed, st.floats(-1000.0, 1000.0)),
)


@given(bids)
@settings(max_examples=200)
def test_every_bid_curve_is_non_decreasing(bid: object) -> None:
    c = sample(bid, GRID)  # type: ignore[arg-type]
    assert np.all(np.diff(c) >= -1e-9)


@given(bids, _price)
@settings(max_examples=200)
def test_dispatch_equals_the_curve_and_stays_within_the_bids_limits(
    bid: object, price: float
) -> None:
    c = sample(bid, GRID)  # type: ignore[arg-type]
    p = dispatch_kw(bid, GRID, price)  # type: ignore[arg-type]
    assert p == pytest.approx(float(np.interp(price, GRID.prices, c)))
    assert c.min() - 1e-9 <= p <= c.max() + 1e-9
    if isinstance(bid, Dispatchable) and bid.on:
        assert bid.p_min_kw - 1e-9 <= p <= bid.p_max_kw + 1e-9


def test_the_sum_of_dispatches_at_the_clearing_price_is_zero() -> None:
    node_bids = [
        [Dispatchable(100, 800, 90)],
        [Renewable(300, 0)],
        [Fixed(-500), FlexibleLoad(200, 150)],
        [Storage(50, 50, 40, 120)],
    ]
    curves = np.array([curve(b, GRID) for b in node_bids])
    c = clear(curves.sum(axis=0), GRID)
    assert c.status == "cleared"
    total = sum(dispatch_kw(b, GRID, c.price_eur_mwh) for bs in node_bids for b in bs)
    assert total == pytest.approx(0.0, abs=1e-6)


def test_no_crossing_reports_shortage_at_the_cap_and_surplus_at_the_floor() -> None:
    short = clear(curve([Fixed(-100), Renewable(50)], GRID), GRID)
    assert (short.status, short.price_eur_mwh) == ("shortage", 500.0)
    surplus = clear(curve([Fixed(100), FlexibleLoad(20, 50)], GRID), GRID)
    assert (surplus.status, surplus.price_eur_mwh) == ("surplus", -100.0)


def test_flat_segment_at_zero_clears_at_its_lowest_price_and_exact_zero_clears() -> None:
    c = clear(curve([Renewable(100, 50), Fixed(-100)], GRID), GRID)
    assert c.status == "cleared" and 40.0 <= c.price_eur_mwh <= 50.0
    zero = clear(np.zeros(GRID.k), GRID)
    assert (zero.status, zero.price_eur_mwh) == ("cleared", -100.0)


def test_urgency_raises_willingness_to_pay() -> None:
    early = willingness_to_pay(ev_urgency(20, 11, 8 * 3600), 30, 400)
    late = willingness_to_pay(ev_urgency(20, 11, 2 * 3600), 30, 400)
    assert 30 <= early < late <= 400


def _run(cls: type, adj: dict[int, list[int]], vals: list[np.ndarray], rounds: int) -> list:
    nodes = [cls(i, random.Random(i)) for i in adj]
    for i in adj:
        nodes[i].start_epoch(1, vals[i])
    order = random.Random(9)
    for _ in range(rounds):
        ids = list(adj)
        order.shuffle(ids)
        for i in ids:
            for m in nodes[i].round(adj[i]):
                nodes[m.target].on_message(m)
    return nodes


def _ring_with_chords(n: int) -> dict[int, list[int]]:
    adj = {i: {(i + 1) % n, (i - 1) % n, (i + n // 2) % n} for i in range(n)}
    return {i: sorted(v) for i, v in adj.items()}


@pytest.mark.parametrize("cls", [PushSum, FlowUpdating])
def test_gossip_converges_to_the_true_average(cls: type) -> None:
    adj = _ring_with_chords(20)
    vals = [np.array([float(i), float(i * i)]) for i in range(20)]
    nodes = _run(cls, adj, vals, 80)
    truth = np.mean(vals, axis=0)
    for n in nodes:
        assert np.allclose(n.estimate(), truth, rtol=1e-3)


def test_push_sum_conserves_mass_without_loss() -> None:
    adj = _ring_with_chords(10)
    vals = [np.array([float(i)]) for i in range(10)]
    nodes = _run(PushSum, adj, vals, 7)
    assert sum(n._s[0] for n in nodes) == pytest.approx(45.0)
    assert sum(n._w for n in nodes) == pytest.approx(10.0)


def test_duplicate_old_epoch_and_late_messages_are_ignored() -> None:
    p = PushSum("a", random.Random(1))
    p.start_epoch(5, np.array([1.0]))
    msg = GossipOut("a", "b", 5, 1, 0.5, np.array([2.0]))
    assert p.on_message(msg)
    assert not p.on_message(msg)  # duplicate
    assert not p.on_message(GossipOut("a", "b", 4, 2, 0.5, np.array([9.0])))  # old epoch
    f = FlowUpdating("a", random.Random(1))
    f.start_epoch(5, np.array([1.0]))
    assert f.on_message(GossipOut("a", "b", 5, 3, 0.0, np.array([1.0]), np.array([1.0])))
    assert not f.on_message(GossipOut("a", "b", 5, 2, 0.0, np.array([7.0]), np.array([7.0])))


def test_a_curve_of_another_length_or_negative_mass_is_refused() -> None:
    p = PushSum("a", random.Random(1))
    p.start_epoch(5, np.array([1.0, 2.0, 3.0]))
    assert not p.on_message(GossipOut("a", "b", 5, 1, 0.5, np.array([9.0])))  # would broadcast
    assert not p.on_message(GossipOut("a", "c", 5, 1, -0.5, np.array([1.0, 1.0, 1.0])))
    assert np.allclose(p.estimate(), [1.0, 2.0, 3.0])
    f = FlowUpdating("a", random.Random(1))
    f.start_epoch(5, np.array([1.0, 2.0]))
    assert not f.on_message(GossipOut("a", "b", 5, 1, 0.0, np.array([1.0]), np.array([1.0])))


def test_refused_push_keeps_the_mass() -> None:
    p = PushSum("a", random.Random(1))
    p.start_epoch(1, np.array([4.0]))
    (m,) = p.round(["dead"])
    p.on_undeliverable(m)
    assert p.estimate() == pytest.approx(np.array([4.0]))
    assert p._w == pytest.approx(1.0)
