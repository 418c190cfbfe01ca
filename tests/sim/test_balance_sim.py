"""The balancing simulator on a few hundred nodes meets the issue's bounds."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from redy.sim.balance import simulate_balance

pytestmark = pytest.mark.pure


def test_push_sum_balances_within_bounds_and_recovers_the_epoch_after_a_crash(
    tmp_path: Path,
) -> None:
    dump = tmp_path / "curves.json"
    r = simulate_balance(
        nodes=400, epochs=4, rounds=30, crash=0.3, crash_at=2, seed=5, dump_curves=str(dump)
    )
    for e in r["epochs"]:
        if e["epoch"] == 2:
            continue  # the crash epoch: the dead took their mass
        assert abs(e["imbalance_kw"]) < 0.005 * e["load_kw"]
        assert abs(e["cost"] - e["cost_optimal"]) <= 0.001 * e["cost_optimal"]
    data = json.loads(dump.read_text())
    assert len(data["prices"]) == len(data["nodes"][0]["curve"])
    assert len(data["nodes"]) == r["epochs"][-1]["nodes"]


def test_flow_updating_runs_and_reports_every_epoch() -> None:
    r = simulate_balance(nodes=100, epochs=2, rounds=20, aggregation="flow", seed=2)
    assert [e["epoch"] for e in r["epochs"]] == [1, 2]
    assert r["parameters"]["aggregation"] == "flow"
