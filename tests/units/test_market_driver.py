"""The governance's market driver around its core, without brokers (pure): what it takes from a
neighbour's gossip, what it reports in the node's state, and the honesty of its status."""

from __future__ import annotations

import asyncio
import logging
import random

import pytest

from redy import messages
from redy.balancing.curves import Dispatchable, PriceGrid
from redy.balancing.discovery import MarketResult
from redy.balancing.epochs import Cleared, Received
from redy.units.market import MarketDriver
from redy.units.node_state import NodeState

pytestmark = pytest.mark.pure


def _driver(now: float = 1000.0) -> MarketDriver:
    return MarketDriver(
        node="n1",
        state=NodeState("n1"),
        links=None,  # type: ignore[arg-type]  # nothing is sent in these tests
        neighbours=lambda: [],
        command=lambda _u, _kw: None,  # type: ignore[arg-type,return-value]
        epoch_s=4.0,
        rounds=10,
        rng=random.Random(1),
        clock=lambda: now,
    )


def _gossip(**kw: object) -> messages.Gossip:
    fields: dict[str, object] = {
        "sender": "n2",
        "epoch": 250,
        "round": 1,
        "algorithm": "pushsum",
        "weight": 0.5,
        "values": tuple([1.0] * 203),
        "ts_s": 999.2,
        "phase": 1,
        "floor_eur_mwh": -500.0,
        "cap_eur_mwh": 4000.0,
    }
    fields.update(kw)
    return messages.Gossip(**fields)  # type: ignore[arg-type]


def test_a_neighbours_phase_gossip_is_queued_for_the_core_and_dates_its_clock() -> None:
    d = _driver()
    d.on_gossip(_gossip())
    event = d._events.get_nowait()
    assert isinstance(event, Received)
    assert (event.msg.phase, event.msg.floor_eur_mwh, event.msg.cap_eur_mwh) == (1, -500, 4000)
    assert event.msg.msg.values.shape == (203,)
    assert d.offsets.offset_s() == pytest.approx(0.8)  # we read 1000.0, it wrote 999.2
    assert d.now() == pytest.approx(999.2)  # within the tolerance: on the neighbours' time
    assert d.pacing.rounds >= 60  # a launch file's rounds: 10 cannot make it imprecise


@pytest.mark.parametrize(
    "bad",
    [
        {"phase": None},  # an old node's whole-epoch push-sum
        {"values": (1.0,) * 201},  # phase 1 carries 2 more: the load at the cap, run at floor
        {"phase": 2, "values": (1.0,) * 203},
        {"algorithm": "flow"},
        {"floor_eur_mwh": None},
    ],
)
def test_gossip_that_is_not_this_markets_is_dropped_with_a_line_saying_why(
    bad: dict[str, object], caplog: pytest.LogCaptureFixture
) -> None:
    d = _driver()
    with caplog.at_level(logging.WARNING):
        d.on_gossip(_gossip(**bad))
    assert d._events.empty()
    assert "dropped gossip from n2: expected pushsum with a phase" in caplog.text


def _cleared(status: str, heard: int, **kw: float) -> Cleared:
    result = MarketResult(4000.0, status, PriceGrid(-500, 4000, 201), 1, **kw)
    return Cleared(250, result, (Dispatchable(0, 10, 50.0),), 0.4, heard)


def _clear(d: MarketDriver, c: Cleared) -> None:
    async def go() -> None:
        d._cleared(c)  # spawns the (here empty) dispatch of the units

    asyncio.run(go())


def test_state_fields_report_the_unserved_share_of_a_shortage() -> None:
    d = _driver()
    _clear(d, _cleared("shortage", heard=12, unserved_kw=35.25))
    fields = d.state_fields()
    assert fields["status"] == "shortage"
    assert fields["unserved_kw"] == pytest.approx(35.25)
    assert fields["price_eur_mwh"] == 4000.0 and fields["epoch"] == 250
    assert "excess_kw" not in fields
    state = d.state.energy_state(0.0, **fields)
    assert messages.decode("redy/n1/governance/state", messages.encode(state)).unserved_kw == 35.25


def test_a_node_that_heard_no_one_or_whose_clock_is_off_never_says_cleared() -> None:
    d = _driver()
    _clear(d, _cleared("cleared", heard=0))
    assert d.state_fields()["status"] == "isolated"
    d.offsets.sample("n2", sent_s=996.0, received_s=1000.0)  # 4 s ahead of its neighbour
    _clear(d, _cleared("cleared", heard=40))
    assert d.state_fields()["status"] == "skewed"
    assert d.now() == 1000.0  # beyond the tolerance it keeps its own clock


async def test_a_later_clearing_outranks_a_dispatch_still_in_flight() -> None:
    """Commands are numbered when sent and a unit keeps the highest number. The first price's
    dispatch is slow on its first command (a PUBACK late); a later price of the epoch dispatches
    meanwhile. Every unit must end at the later price's setpoint, not at the stale one sent
    after it (issue 27: each clearing spawned its own dispatch)."""
    seq = iter(range(1, 100))
    delays = iter([0.05] + [0.005] * 20)
    sent: list[tuple[int, str, float]] = []

    async def command(unit: str, kw: float) -> None:
        n = next(seq)  # the governance numbers a command as it sends it
        await asyncio.sleep(next(delays))
        sent.append((n, unit, kw))

    d = _driver()
    d._command = command  # type: ignore[method-assign]
    async with asyncio.TaskGroup() as group:
        d.tasks.bind(group)
        d._dispatch_latest([("a", 1.0), ("b", 1.0), ("c", 1.0)])
        await asyncio.sleep(0.01)
        d._dispatch_latest([("a", 2.0), ("b", 2.0), ("c", 2.0)])
    kept = {unit: kw for _, unit, kw in sorted(sent)}  # the highest number wins at the unit
    assert kept == {"a": 2.0, "b": 2.0, "c": 2.0}
