"""What a governance unit does with its plan's binding (pure, no broker): `plan_dispatch: binds`
passes it to the market, `advises` passes nothing; with no market the governance commands the
planned units itself and leaves them out of its node setpoint rule."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from redy.planning.binding import Binding
from redy.units.config import GovernanceConfig
from redy.units.governance import Governance
from redy.units.node_state import NodeState, Order

pytestmark = pytest.mark.pure

BOUND = Binding(7, 7, {"battery": -5.0, "ev": -3.7})


class _Planner:
    def binding(self) -> Binding | None:
        return BOUND


class _State(NodeState):
    def follow_setpoint(self, target_net_kw: float) -> list[Order]:
        return [Order("battery", 1.0), Order("gen", target_net_kw)]


def _governance(dispatch: str, setpoint_kw: float | None = None) -> tuple[Governance, list[Any]]:
    """A governance with only what `_planned` and `_dispatch` read (no broker, no files)."""
    g = Governance.__new__(Governance)
    g.config = GovernanceConfig(
        node="n", broker="mqtt://127.0.0.1:1", credentials=Path("-"), plan_dispatch=dispatch
    )
    g.planner = _Planner()
    g.state = _State("n")
    g.target_net_kw = setpoint_kw
    sent: list[Any] = []

    async def command(unit: str, kw: float | None, on: bool | None = None) -> None:
        sent.append((unit, kw))

    g.command = command  # type: ignore[method-assign,assignment]
    return g, sent


def test_a_binding_plan_reaches_the_market_an_advising_one_does_not() -> None:
    binds, _ = _governance("binds")
    assert binds._planned() is BOUND
    advises, _ = _governance("advises")
    assert advises._planned() is None
    advises.planner = None
    assert advises._planned() is None


def test_with_no_market_planned_units_get_their_setpoints_the_rest_the_rule() -> None:
    g, sent = _governance("binds", setpoint_kw=12.0)
    asyncio.run(g._dispatch())
    # The battery and the EV at their planned setpoints; the rule's order for the battery is
    # left out, the generator's goes.
    assert sent == [("battery", -5.0), ("ev", -3.7), ("gen", 12.0)]
    g, sent = _governance("advises", setpoint_kw=12.0)
    asyncio.run(g._dispatch())
    assert sent == [("battery", 1.0), ("gen", 12.0)]  # as without plans
