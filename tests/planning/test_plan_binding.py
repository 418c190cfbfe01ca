"""The current interval's plan binds (redy.planning.binding, pure): the setpoints a node's own
solve gives its stores and deferrable loads in the interval it is in, held to what each unit can
reach now; the previous interval's solve until the new one comes, nothing older; and the market
fixes the planned units at those setpoints, commands them there and clears the rest around
them (redy.units.market)."""

from __future__ import annotations

import asyncio
import random

import attrs
import pytest
from test_plan_flood import _unit

from redy import messages
from redy.balancing.curves import Dispatchable, Fixed, PriceGrid, Storage
from redy.balancing.discovery import MarketResult
from redy.balancing.epochs import Cleared
from redy.devices.battery import Battery
from redy.planning.binding import MAX_AGE, Binding, OwnUnits, binding
from redy.planning.problem import Boundary, Schedule, solve
from redy.units.market import MarketDriver, node_bids
from redy.units.node_state import NodeState
from redy.units.planner import horizon_offer

pytestmark = pytest.mark.pure

START = 5000
H = 4


def _house() -> NodeState:
    """A load, a battery at 20 % (thresholds that would leave it idle at 100 EUR/MWh) and an
    EV that needs 2 kWh within the hour."""
    state = NodeState("n")
    _unit(state, "load", "detection", "consumption", 3.0, power_kw=-1.0)
    _unit(state, "bat", "action", "storage", 5.0, min_kw=-5.0, max_kw=5.0, capacity_kwh=10.0,
          soc=0.2, charge_below_eur_mwh=30.0, discharge_above_eur_mwh=150.0)  # fmt: skip
    _unit(state, "ev", "action", "consumption", 7.4, min_kw=-7.4, max_kw=0.0,
          energy_due_kwh=2.0, due_in_s=3600.0, marginal_cost_eur_mwh=60.0)  # fmt: skip
    return state


# The supplier: cheap in the first interval, dear after it.
BOUNDARY = Boundary((40.0, 200.0, 200.0, 200.0), (10.0, 170.0, 170.0, 170.0), (100.0,) * H,
                    (100.0,) * H)  # fmt: skip


def _planned() -> tuple[Schedule, OwnUnits, NodeState]:
    state = _house()
    offer, units = horizon_offer(state, START, H, 15.0, (-20.0, 20.0))
    return solve([offer], BOUNDARY), units, state


def _statuses(state: NodeState) -> dict[str, messages.ActuatorStatus]:
    return {n: u.status for n, u in state.units.items() if u.status is not None}


def test_a_battery_charges_and_an_ev_draws_in_the_cheap_interval_the_plan_gives_them() -> None:
    sched, units, state = _planned()
    assert units == OwnUnits(("bat",), ("ev",))
    now = binding(sched, "n", units, START, _statuses(state))
    assert now is not None and now.solved_for == START
    # Interval 0 is cheap: the battery charges at its full 5 kW, the EV draws at its full 7.4.
    assert now.setpoints_kw == {"bat": pytest.approx(-5.0), "ev": pytest.approx(-7.4)}
    plan = sched.plans["n"]
    assert now.setpoints_kw["bat"] == plan.discharge_kw[0][0] - plan.charge_kw[0][0]
    # The next interval is dear: the battery discharges, and the same solve binds it until the
    # next one comes (the rolling horizon's previous solve).
    nxt = binding(sched, "n", units, START + 1, _statuses(state))
    assert nxt is not None and nxt.setpoints_kw["bat"] > 0 and nxt.solved_for == START
    assert nxt.setpoints_kw["bat"] == plan.discharge_kw[0][1] - plan.charge_kw[0][1]


def test_nothing_binds_without_a_fresh_own_plan_naming_the_units() -> None:
    sched, units, state = _planned()
    statuses = _statuses(state)
    assert binding(None, "n", units, START, statuses) is None  # no plan (plans off, not solved)
    assert binding(sched, "n", None, START, statuses) is None
    assert binding(sched, "n", units, START + MAX_AGE + 1, statuses) is None  # stale
    assert binding(sched, "n", units, START - 1, statuses) is None  # not begun
    assert binding(sched, "m", units, START, statuses) is None  # this node not in the plan
    # Names that do not describe the node's offer in this plan (another interval's offer).
    assert binding(sched, "n", OwnUnits(("bat", "bat2"), ("ev",)), START, statuses) is None
    # A unit offline (no status) is left to the market; none online: nothing binds.
    only_ev = binding(sched, "n", units, START, {"ev": statuses["ev"]})
    assert only_ev is not None and set(only_ev.setpoints_kw) == {"ev"}
    assert binding(sched, "n", units, START, {}) is None


def test_a_setpoint_is_held_to_what_the_unit_can_reach_now() -> None:
    sched, units, state = _planned()
    statuses = _statuses(state)
    fuller = attrs.evolve(statuses["bat"], min_kw=-2.0)  # fuller than the plan assumed
    got = binding(sched, "n", units, START, {**statuses, "bat": fuller})
    assert got is not None and got.setpoints_kw["bat"] == -2.0


def test_the_market_fixes_planned_units_at_their_setpoints_and_clears_the_rest() -> None:
    state = _house()
    _unit(state, "gen", "action", "production", 10.0, min_kw=0.0, max_kw=10.0,
          marginal_cost_eur_mwh=70.0)  # fmt: skip
    plain = node_bids(state)
    assert isinstance(plain["bat"], Storage) and isinstance(plain["gen"], Dispatchable)
    bound = node_bids(state, Binding(START, START, {"bat": -5.0}))
    assert bound["bat"] == Fixed(-5.0) and bound["gen"] == plain["gen"]
    assert bound["ev"] == plain["ev"]  # not planned: the market's, as without a plan
    assert set(bound) == set(plain)

    sent: list[tuple[str, float]] = []

    async def command(unit: str, kw: float) -> None:
        sent.append((unit, kw))

    def dispatched(planned: Binding | None) -> dict[str, float]:
        sent.clear()
        d = MarketDriver(
            node="n",
            state=state,
            links=None,  # type: ignore[arg-type]  # nothing is sent
            neighbours=lambda: [],
            command=command,
            epoch_s=1.0,
            rounds=10,
            rng=random.Random(1),
            clock=lambda: 1000.0,
            planned=lambda: planned,
        )

        async def go() -> None:
            async with asyncio.TaskGroup() as group:
                d.tasks.bind(group)
                bids = d._bids()
                result = MarketResult(100.0, "cleared", PriceGrid(-500, 4000, 4501), 1)
                d._cleared(Cleared(7, result, tuple(bids), 0.4, 2))

        asyncio.run(go())
        return dict(sent)

    # At 100 EUR/MWh the battery alone would idle (it charges below 30); its plan charges it.
    assert dispatched(None)["bat"] == pytest.approx(0.0)
    with_plan = dispatched(Binding(START, START, {"bat": -5.0}))
    assert with_plan["bat"] == -5.0
    assert with_plan["gen"] == pytest.approx(10.0)
    assert "load" not in with_plan  # a meter


def test_a_store_is_planned_within_the_charge_it_keeps() -> None:
    """A battery keeps 5 % (its status states soc_min): the plan counts on no energy below it,
    so it never commands a discharge the battery would stop short of."""
    assert Battery(soc_min=0.05, soc_max=0.95, soc=0.5).soc_range() == (0.05, 0.95)
    state = NodeState("n")
    _unit(state, "bat", "action", "storage", 5.0, min_kw=-5.0, max_kw=5.0, capacity_kwh=10.0,
          soc=0.02, soc_min=0.05, soc_max=0.95)  # fmt: skip
    offer, _ = horizon_offer(state, START, H, 15.0, (-20.0, 20.0))
    [store] = offer.storage
    assert (store.soc_min_kwh, store.soc_kwh, store.capacity_kwh) == pytest.approx((0.5, 0.5, 9.5))
    sched = solve([offer], BOUNDARY)
    assert min(sched.plans["n"].soc_kwh[0]) >= 0.5 - 1e-9  # at its floor: nothing to give
