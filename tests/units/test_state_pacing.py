"""The governance's state timing (redy.units.state_pacing) on a fake clock: a state every
period, at once on a change, a whole period after an epoch's first price, and to the
neighbours less often and never while a push is under way."""

from __future__ import annotations

import pytest

from redy.units.state_pacing import StatePacing

pytestmark = pytest.mark.pure


def test_a_state_every_period_and_at_once_on_a_change() -> None:
    p = StatePacing(period_s=1.0, neighbour_period_s=5.0)
    p.start(100.0)
    assert p.wait_s(100.0) == 1.0
    assert not p.due(100.5, dirty=False)
    assert p.due(101.0, dirty=False) and p.wait_s(101.0) == 1.0  # the period
    assert p.due(101.3, dirty=True)  # a unit came: at once
    assert p.next_at == pytest.approx(102.3)  # and the next a period after that one


def test_an_epochs_first_price_moves_the_next_state_a_period_on() -> None:
    p = StatePacing(period_s=1.0, neighbour_period_s=5.0)
    p.start(0.0)
    p.published_early(0.7)  # the state with the first price went out of band
    assert not p.due(1.0, dirty=False)  # not 0.3 s after it
    assert p.wait_s(1.0) == pytest.approx(0.7)
    assert p.due(1.7, dirty=False)


def test_the_neighbours_get_a_state_every_neighbour_period_never_two_pushes_at_once() -> None:
    p = StatePacing(period_s=1.0, neighbour_period_s=5.0)
    pushed = [t for t in range(0, 12) if p.push_neighbours(float(t), pushing=False)]
    assert pushed == [0, 5, 10]
    p2 = StatePacing(period_s=1.0, neighbour_period_s=5.0)
    assert not p2.push_neighbours(0.0, pushing=True)  # the last push still under way
    assert p2.push_neighbours(1.0, pushing=False)  # it goes with the next state
