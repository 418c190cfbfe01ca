"""The simulator's market against the true optimum; scenario files with explicit nodes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from redy.balancing.curves import Dispatchable
from redy.errors import SimulationError
from redy.sim.balance import DEFAULT_MIX, simulate_balance
from redy.sim.scenario import load_scenario

pytestmark = pytest.mark.pure

SCENARIOS = Path(__file__).with_name("scenarios")


def test_the_dispatch_costs_within_a_hundredth_of_a_percent_of_the_true_optimum() -> None:
    r = simulate_balance(nodes=300, epochs=3, rounds=40, seed=7)
    for e in r["epochs"]:
        assert e["status_optimal"] == "cleared" and e["statuses"] == {"cleared": 300}
        assert abs(e["cost_gap_ratio"]) < 1e-4
        assert 0 <= e["cost_gap_settled_ratio"] < 1e-4
        assert e["price_error"] <= 0.01
    assert r["parameters"]["price_grid"] == [-500.0, 4000.0, 201]
    assert r["parameters"]["price_step_eur_mwh"] <= 0.01


def test_wood_wollenberg_3a_clears_at_the_books_lambda_and_dumps_the_dispatch(
    tmp_path: Path,
) -> None:
    out = tmp_path / "dispatch.json"
    r = simulate_balance(
        nodes=1000,  # ignored: the scenario lists its nodes and no mix
        scenario=str(SCENARIOS / "wood_wollenberg_3a.yaml"),
        epochs=2,
        dump_dispatch=str(out),
    )
    assert r["parameters"]["nodes"] == 4
    for e in r["epochs"]:
        assert e["price_optimal"] == pytest.approx(9.148, abs=5e-4)
        assert e["price"] == pytest.approx(9.148, abs=5e-4)
    data = json.loads(out.read_text())
    assert [e["epoch"] for e in data["epochs"]] == [1, 2]
    got = {n["node"]: n["dispatch_kw"] for n in data["epochs"][0]["nodes"]}
    assert got["town"] == [-850000.0]
    assert [got[f"unit-{i}"][0] / 1000 for i in (1, 2, 3)] == pytest.approx(
        [393.2, 334.6, 122.2], abs=0.1
    )


def test_a_shortage_is_reported_by_every_node_and_the_epoch_with_the_unserved_kw(
    tmp_path: Path,
) -> None:
    f = tmp_path / "short.yaml"
    f.write_text(
        "nodes:\n"
        "  - id: peaker\n"
        "    bids: [{type: dispatchable, p_max_kw: 600, marginal_cost_eur_mwh: 732}]\n"
        + "".join(f"  - id: town-{i}\n    bids: [{{type: fixed, p_kw: -400}}]\n" for i in range(3))
    )
    capped = simulate_balance(nodes=2, scenario=str(f), epochs=1, price_cap=500.0)
    e = capped["epochs"][0]
    assert (e["status_optimal"], e["statuses"]) == ("shortage", {"shortage": 4})
    assert e["unserved_kw_optimal"] == pytest.approx(1200.0)
    assert e["unserved_kw"] == pytest.approx(1200.0, rel=1e-3)
    assert e["price"] == 500.0
    e = simulate_balance(nodes=2, scenario=str(f), epochs=1)["epochs"][0]
    assert (e["status_optimal"], e["statuses"]) == ("shortage", {"shortage": 4})
    assert e["unserved_kw_optimal"] == pytest.approx(600.0)


def test_explicit_nodes_and_a_mix_fill_the_grid_together(tmp_path: Path) -> None:
    f = tmp_path / "both.yaml"
    f.write_text(
        "mix: {eco_house: 0.8, gas_plant: 0.2}\n"
        "nodes:\n"
        "  - id: big-gen\n"
        "    bids:\n"
        "      - {type: dispatchable, p_min_kw: 50, p_max_kw: 500, marginal_cost_eur_mwh: [42.0, 61.5]}\n"
        "      - {type: storage, charge_kw: 10, discharge_kw: 10, charge_below_eur_mwh: 30,"
        " discharge_above_eur_mwh: 90}\n"
        "      - {type: renewable, available_kw: 20}\n"
        "      - {type: flexible_load, power_kw: 30, wtp_eur_mwh: [50, 80]}\n"
        "  - id: battery\n"
        "    bids: [{type: storage, charge_kw: 5, discharge_kw: 5, marginal_cost_eur_mwh: [40, 120]}]\n"
    )
    out = tmp_path / "d.json"
    r = simulate_balance(nodes=50, scenario=str(f), epochs=1, dump_dispatch=str(out))
    assert r["parameters"]["nodes"] == 50
    nodes = json.loads(out.read_text())["epochs"][0]["nodes"]
    assert nodes[0]["node"] == "big-gen" and len(nodes[0]["dispatch_kw"]) == 4
    assert nodes[1]["node"] == "battery" and -5 <= nodes[1]["dispatch_kw"][0] <= 5
    assert len(nodes) == 50
    plan = load_scenario(str(f), DEFAULT_MIX)
    assert plan.nodes[1].bids == (Dispatchable(-5, 5, 40.0, cost_max_eur_mwh=120.0),)


@pytest.mark.parametrize(
    "text,line,words",
    [
        ("nodes:\n  - id: a\n    bids: []\n    colour: red\n", 4, "unknown key 'colour'"),
        ("mix: {eco_house: 1}\nnode: []\n", 2, "unknown key 'node'"),
        (
            "nodes:\n  - id: a\n    bids:\n      - {type: nuclear, p_kw: 3}\n",
            4,
            "unknown bid type 'nuclear'",
        ),
        (
            "nodes:\n  - id: a\n    bids:\n      - type: fixed\n        p_kw: 3\n        pkw: 4\n",
            6,
            "unknown key 'pkw'",
        ),
        (
            "nodes:\n  - id: a\n    bids:\n      - {type: dispatchable, p_max_kw: 9,"
            " marginal_cost_eur_mwh: [60, 40]}\n",
            4,
            "at_min <= at_max",
        ),
        ("nodes:\n  - id: a\n    bids:\n      - {type: fixed}\n", 4, "needs ['p_kw']"),
        ("mix:\n  eco_house: 1\n  nuclear: 2\n", 3, "unknown node kind 'nuclear'"),
        (
            "nodes:\n  - id: a\n    bids:\n      - {type: storage, charge_kw: 1, discharge_kw: 1,"
            " charge_below_eur_mwh: 30}\n",
            4,
            "or marginal_cost_eur_mwh alone",
        ),
    ],
)
def test_a_bad_scenario_is_refused_with_its_file_and_line(
    tmp_path: Path, text: str, line: int, words: str
) -> None:
    f = tmp_path / "bad.yaml"
    f.write_text(text)
    with pytest.raises(SimulationError) as err:
        load_scenario(str(f), DEFAULT_MIX)
    msg = str(err.value)
    assert msg.startswith(f"{f}:{line}:") and words in msg and "\n" not in msg
