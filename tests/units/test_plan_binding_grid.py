"""The current interval's plan binds, in real processes: a launched grid of two nodes (a gas plant
at 70 EUR/MWh with a meter, a house with a load meter and a battery) plans in 5-second intervals
with no supplier to trade with, so the plan charges the battery from the gas plant in every
interval (its energy is worth more at the horizon's end than the gas costs now). The battery
states a low value of its own: at the market's 70 EUR/MWh the instant alone would discharge
it. During every interval the plan binds, it charges at its planned setpoint all the same; the
governance logs the binding, and /metrics (`redy launch --metrics`) says the interval binds and
counts the plans solved."""

from __future__ import annotations

import math
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from netports import node_block
from polling import until
from test_planning_grid import Grid, gas_plant

from redy import messages
from redy.balancing.curves import Storage
from redy.topics import render

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

NODES = ("gas-1", "house-1")
SPEED = 180.0  # a 15-minute interval lasts 5 s
INTERVAL_S = 15 * 60 / SPEED
HORIZON = 4
JUDGED = 3  # intervals in which the battery must be seen at its planned setpoint


def _grid_file(tmp: Path, port: int) -> Path:
    common = (
        f"epoch_s: 1, market: offers, plan_intervals: {HORIZON}, plan_import_kw: 0,"
        " plan_export_kw: 0, period_s: 0.5, shuffle_period_s: 0.5, shuffle_timeout_s: 0.4,"
        " view_size: 4, shuffle_length: 2"
    )
    # Midnight: no sun. The battery's own policy (value 40 EUR/MWh, wear 20) discharges above
    # 60 EUR/MWh and charges below 16.
    text = f"""\
launch:
  - clock: {{speed: {SPEED:g}, start_s: 0}}
{gas_plant(port, common)}
  - broker: {{node: house-1, port: {port + 1}}}
  - governance: {{node: house-1, kind: eco_house, introducer: gas-1, {common}}}
  - detection: {{node: house-1, name: load-meter, device: household_load, period_s: 0.5,
      params: {{annual_kwh: 4000}}}}
  - action: {{node: house-1, name: battery, device: battery, period_s: 0.5,
      params: {{capacity_kwh: 13.5, power_kw: 5, round_trip_efficiency: 0.9, soc: 0.3,
        value_eur_mwh: 40, value_swing_eur_mwh: 0, marginal_cost_eur_mwh: 20}}}}
"""
    path = tmp / "binding-grid.yaml"
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def grid(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Grid, int]]:
    metrics = node_block()
    g = Grid(
        tmp_path_factory.mktemp("binding-grid"),
        NODES,
        _grid_file,
        ("--metrics", str(metrics)),
    )
    try:
        g.start()
        yield g, metrics
    finally:
        g.stop()


def _plan_series(port: int) -> dict[str, list[Any]]:
    """/metrics parsed by prometheus_client's parser: the plan's samples, by name."""
    from prometheus_client.parser import text_string_to_metric_families

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            text = r.read().decode()
    except OSError:
        return {}
    out: dict[str, list[Any]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name.startswith("redy_plan_"):
                out.setdefault(s.name, []).append(s)
    return out


def test_the_battery_follows_its_planned_setpoint_where_the_instant_would_not(
    grid: tuple[Grid, int], mqtt_client: Any
) -> None:
    g, metrics = grid
    house = mqtt_client(g.local("house-1"), "operator", g.password("house-1"))
    for topic in (
        render("plan", node="house-1"),
        render("node_state", node="house-1"),
        render("actuator_status", node="house-1", unit="battery"),
    ):
        house.subscribe(topic)
    latest: dict[str, Any] = {}
    judged: dict[int, list[tuple[float, float, float]]] = {}  # interval -> (plan, at, alone)

    def sample() -> bool:
        for m in house.drain():
            latest[m.topic.rsplit("/", 1)[-1]] = messages.decode(m.topic, m.payload)
        plan, state, status = (latest.get(k) for k in ("plan", "state", "status"))
        now = time.time()
        k = math.floor(now / INTERVAL_S)
        phase = now / INTERVAL_S - k
        if plan is None or state is None or status is None or state.price_eur_mwh is None:
            return False
        # Judged late in an interval whose own plan was solved a few epochs ago, both nodes in
        # it: the market has dispatched the binding since.
        if plan.start != k or plan.offers != 2 or now - plan.ts_s < 2.0 or not 0.5 < phase < 0.95:
            return False
        planned = min(max(plan.storage_kw[0], status.min_kw), status.max_kw)
        alone = Storage(
            -status.min_kw,
            status.max_kw,
            status.charge_below_eur_mwh,
            status.discharge_above_eur_mwh,
        ).injection_kw(state.price_eur_mwh)
        assert status.setpoint_kw is not None
        judged.setdefault(k, []).append((planned, status.setpoint_kw, alone))
        return len(judged) >= JUDGED

    until(sample, 120, f"{JUDGED} bound intervals judged", seen=lambda: latest)
    for k, rows in judged.items():
        for planned, at, alone in rows:
            # The plan charges it (the gas costs less than its energy is worth at the end) and
            # it charges at the plan's setpoint, where the instant's price would discharge it.
            assert planned < -1.0, (k, rows)
            assert at == pytest.approx(planned, abs=0.05), (k, rows)
            assert alone > 0.0, (k, rows)
    logs = g.logs()
    assert any(
        f"node=house-1 interval {k} binds the plan solved for interval {k}: battery -" in logs
        for k in judged
    ), logs[-3000:]
    # /metrics: the interval binds at the house (the gas plant has nothing to bind), plans are
    # solved and counted, the peers' offers taken in.
    series = until(
        lambda: (lambda s: s if "redy_plan_binding" in s else None)(_plan_series(metrics)),
        30,
        "the plan's series on /metrics",
    )
    by_node = {n: {name: [x for x in v if x.labels["node"] == n] for name, v in series.items()}
               for n in NODES}  # fmt: skip
    assert by_node["house-1"]["redy_plan_binding"][0].value == 1.0
    assert by_node["gas-1"]["redy_plan_binding"][0].value == 0.0
    for n in NODES:
        assert by_node[n]["redy_plan_solved_total"][0].value >= 1
        assert by_node[n]["redy_plan_offers_admitted_total"][0].value >= 1
        assert by_node[n]["redy_plan_interval"][0].value >= min(judged)
        assert 0 < by_node[n]["redy_plan_solve_seconds"][0].value < INTERVAL_S
