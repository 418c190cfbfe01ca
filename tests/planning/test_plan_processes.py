"""Plans run whole: five separate processes solve the same offers and get the same schedule, bit
for bit; the rolling simulator against perfect foresight; `redy sim plan` (these read the
profile cache and run for seconds: not pure)."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from redy.planning.offer import from_json
from redy.planning.problem import solve
from redy.sim.plan import day_offers, simulate_plan

# Each process reads the offers (one JSON line each) and the boundary, shuffles the offers
# (the problem puts them in canonical order itself), solves, and prints a digest of the
# schedule's JSON (orjson writes every float so that it reads back to the same bits).
_SOLVE = """
import hashlib, random, sys, orjson
from redy.planning.offer import from_json
from redy.planning.problem import Boundary, solve
lines = open(sys.argv[1], 'rb').read().splitlines()
offers = [from_json(x) for x in lines[1:]]
random.Random(int(sys.argv[2])).shuffle(offers)
plan = solve(offers, Boundary(*orjson.loads(lines[0])))
print(hashlib.sha256(orjson.dumps(plan.to_json_dict())).hexdigest())
"""


def _digest(offers_file: Path) -> str:
    lines = offers_file.read_bytes().splitlines()
    from redy.planning.problem import Boundary

    plan = solve([from_json(x) for x in lines[1:]], Boundary(*orjson.loads(lines[0])))
    return hashlib.sha256(orjson.dumps(plan.to_json_dict())).hexdigest()


@pytest.mark.e2e
def test_five_processes_get_the_same_schedule_bit_for_bit(tmp_path: Path) -> None:
    offers, boundary = day_offers(60, seed=5)
    path = tmp_path / "offers.jsonl"
    head = orjson.dumps(
        [boundary.import_eur_mwh, boundary.export_eur_mwh, boundary.import_kw, boundary.export_kw]
    )
    path.write_bytes(b"\n".join([head, *(o.to_json() for o in offers)]))
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _SOLVE, str(path), str(seed)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for seed in range(5)
    ]
    digests = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err.decode()
        digests.append(out.decode().strip())
    assert len(set(digests)) == 1 and len(digests[0]) == 64
    assert digests[0] == _digest(path)  # and this process too


def test_redy_sim_plan_prints_one_json_line_with_an_entry_per_day() -> None:
    from click.testing import CliRunner

    from redy.cli import cli

    result = CliRunner().invoke(
        cli, ["sim", "plan", "--nodes", "6", "--days", "2", "--forecast", "model", "--json"]
    )
    assert result.exit_code == 0, result.output
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1
    out = orjson.loads(lines[0])
    assert [d["day"] for d in out["days"]] == [0, 1]
    for day in out["days"]:
        assert {"cost_eur", "cost_perfect_eur", "cost_single_interval_eur"} <= set(day)
        assert day["cost_eur"] >= day["cost_perfect_eur"] - 1e-6


def test_rolling_plans_with_perfect_forecasts_cost_the_perfect_foresight_optimum() -> None:
    out = simulate_plan(nodes=12, days=2, forecast="perfect", seed=3)
    assert out["batteries"] > 0 and out["evs"] > 0
    for day in out["days"]:
        assert day["cost_eur"] == pytest.approx(day["cost_perfect_eur"], rel=1e-6, abs=1e-6)
        assert day["ev_delivered_kwh"] == pytest.approx(day["ev_need_kwh"], rel=1e-9)
        assert day["unserved_kwh"] == pytest.approx(0.0, abs=1e-6)


def test_with_forecast_errors_the_plan_costs_more_than_perfect_foresight_never_less() -> None:
    out = simulate_plan(nodes=12, days=1, forecast="model", seed=4)
    day = out["days"][0]
    assert day["cost_eur"] >= day["cost_perfect_eur"] - 1e-6
    assert day["offers_dropped"] == 0
    assert day["ev_delivered_kwh"] == pytest.approx(day["ev_need_kwh"], rel=1e-9)
