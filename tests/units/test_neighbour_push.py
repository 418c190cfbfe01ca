"""How often a governance unit's energy state goes to its neighbours' brokers."""

from __future__ import annotations

from redy.units.config import GovernanceConfig
from redy.units.state_pacing import NeighbourPush


def test_the_state_goes_to_the_neighbours_at_once_then_every_period() -> None:
    push = NeighbourPush(period_s=5.0)
    sent = [t for t in (0.0, 1.0, 2.0, 4.9, 5.0, 6.0, 9.9, 10.0) if push.due(t)]
    assert sent == [0.0, 5.0, 10.0]  # the first state at once, then one per period
    assert not push.due(14.9) and push.due(16.0)  # a late state: the period counts from it
    assert not push.due(20.9) and push.due(21.0)


def test_by_default_the_neighbours_get_a_fifth_of_the_local_states() -> None:
    cfg = GovernanceConfig(node="n", broker="mqtt://127.0.0.1:1", credentials="-")
    assert cfg.neighbour_period_s == 5 * cfg.period_s
