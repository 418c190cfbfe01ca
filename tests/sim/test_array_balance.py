"""The compiled market (`redy sim balance --engine fast`) against the core-driven one.

The two engines draw the same bids from the same seed (so the same optimum) but cannot share
random streams for the gossip, so each scenario runs both on the same seeds and asks that every
metric's mean over the seeds differ by less than twice its seed-to-seed spread. Where the fast
engine has two ways to the same numbers (push-sum on a band of columns or on the whole grid;
Flow Updating with or without per-link state), they must agree exactly, or to rounding.
"""

from __future__ import annotations

import itertools
import json
import math
import random
import statistics
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from engine_spread import Metric, assert_same_within_spread

from redy.balancing.discovery import PriceSearch
from redy.errors import SimulationError
from redy.sim.array_balance import FastMarket
from redy.sim.array_balance import market as array_balance
from redy.sim.balance import simulate_balance

pytestmark = pytest.mark.pure

_SEEDS = range(1, 6)
_PUSHSUM = {"nodes": 400, "epochs": 3, "aggregation": "pushsum"}
_FLOW = {"nodes": 120, "epochs": 2, "aggregation": "flow"}


def _mean_log(key: str, floor: float) -> Metric:
    """The mean over epochs of log10(|value| + floor): errors span orders of magnitude."""
    return lambda r: statistics.mean(math.log10(abs(e[key]) + floor) for e in r["epochs"])


_METRICS: dict[str, Metric] = {
    "price error": _mean_log("price_error", 1e-4),
    "price spread": _mean_log("price_spread", 1e-7),
    "imbalance": _mean_log("imbalance_ratio", 1e-7),
    "cost gap": _mean_log("cost_gap_ratio", 1e-7),
    "cleared share": lambda r: statistics.mean(
        e["statuses"].get("cleared", 0) / e["nodes"] for e in r["epochs"]
    ),
    "messages": lambda r: r["messages"],
    "live nodes at the end": lambda r: r["epochs"][-1]["nodes"],
}


def _assert_same_within_spread(scenario: dict[str, Any]) -> None:
    runs = {
        engine: [simulate_balance(**scenario, seed=s, engine=engine) for s in _SEEDS]
        for engine in ("core", "fast")
    }
    assert_same_within_spread(runs["core"], runs["fast"], _METRICS)
    if not scenario.get("crash"):  # the same live nodes, the same bids: the same optimum
        for core, fast in zip(runs["core"], runs["fast"], strict=True):
            assert [e["cost_optimal"] for e in core["epochs"]] == [
                e["cost_optimal"] for e in fast["epochs"]
            ]


def test_fast_push_sum_matches_the_core() -> None:
    _assert_same_within_spread(_PUSHSUM)


def test_fast_push_sum_matches_the_core_through_a_crash_and_message_loss() -> None:
    _assert_same_within_spread({**_PUSHSUM, "crash": 0.3, "crash_at": 2, "loss": 0.05})


def test_fast_flow_updating_matches_the_core() -> None:
    _assert_same_within_spread(_FLOW)


def test_fast_flow_updating_matches_the_core_through_a_crash() -> None:
    _assert_same_within_spread({**_FLOW, "epochs": 3, "crash": 0.3, "crash_at": 2})


def test_fast_flow_updating_matches_the_core_under_message_loss() -> None:
    _assert_same_within_spread({**_FLOW, "loss": 0.05})


@pytest.fixture
def knobs() -> Iterator[None]:
    yield
    FastMarket.push_sum_band = True
    FastMarket.per_link_flows = False
    FastMarket.flow_estimate_dtype = np.float32
    FastMarket.flow_heard_lists = True


@pytest.mark.parametrize(
    "scenario",
    [
        {"nodes": 400, "epochs": 3},
        {"nodes": 400, "epochs": 3, "crash": 0.3, "crash_at": 2, "loss": 0.05},
        # Ten rounds and half the nodes gone: crossings fall outside the band, the phase runs
        # again on the whole grid.
        {"nodes": 300, "epochs": 2, "crash": 0.5, "crash_at": 1, "rounds": 10},
    ],
)
def test_push_sum_on_a_band_finds_the_very_prices_of_the_whole_grid(
    scenario: dict[str, Any], knobs: None
) -> None:
    banded = simulate_balance(**scenario, seed=4, engine="fast")
    FastMarket.push_sum_band = False
    whole = simulate_balance(**scenario, seed=4, engine="fast")
    assert banded["epochs"] == whole["epochs"]
    assert banded["messages"] == whole["messages"]


def _gossiped_widths(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The number of columns each phase's gossip starts on, appended as the engine runs."""
    widths: list[int] = []
    start = FastMarket._start

    def recording(self: FastMarket, algorithm: str, values: Any, *rest: Any) -> Any:
        widths.append(values.shape[1])
        return start(self, algorithm, values, *rest)

    monkeypatch.setattr(FastMarket, "_start", recording)
    return widths


def test_the_band_falls_back_to_the_whole_grid_when_a_crossing_lies_outside(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    widths = _gossiped_widths(monkeypatch)
    # A seed whose crash leaves some node's crossing outside its band (seeds 3, 4 and 10 do).
    simulate_balance(nodes=300, epochs=2, crash=0.5, crash_at=1, rounds=10, seed=3, engine="fast")
    assert min(widths) < 201 and 203 in widths  # banded phases, and one rerun on the grid


@pytest.mark.parametrize("epochs,crash_at", [(2, None), (3, 2)])
def test_flow_updating_without_per_link_state_agrees_with_the_per_link_kernel(
    epochs: int, crash_at: int | None, knobs: None
) -> None:
    scenario = {"nodes": 150, "epochs": epochs, "aggregation": "flow", "seed": 3}
    if crash_at:  # a crash in epoch 2: dead links in the views of epoch 3
        scenario |= {"crash": 0.3, "crash_at": crash_at}
    FastMarket.flow_estimate_dtype = np.float64  # as the per-link kernel keeps them
    pulled = simulate_balance(**scenario, engine="fast")
    FastMarket.per_link_flows = True
    linked = simulate_balance(**scenario, engine="fast")
    assert pulled["messages"] == linked["messages"]
    for a, b in zip(pulled["epochs"], linked["epochs"], strict=True):
        assert a["statuses"] == b["statuses"]
        for key in ("price", "price_spread", "imbalance_kw", "cost"):
            assert a[key] == pytest.approx(b[key], rel=1e-9, abs=1e-9), key


_HEARD_SCENARIOS = [
    {"nodes": 300, "epochs": 2},
    # dead links in the views of epoch 3, gone at the nodes' first rounds
    {"nodes": 300, "epochs": 3, "crash": 0.3, "crash_at": 2},
    # a cap below the crossing: nodes done after phase 1 stay in their neighbours' links
    {"nodes": 300, "epochs": 2, "price_cap": 40.0},
]


@pytest.mark.parametrize("scenario", _HEARD_SCENARIOS)
def test_flow_updating_from_the_heard_lists_agrees_with_rounds_as_they_come(
    scenario: dict[str, Any], knobs: None
) -> None:
    FastMarket.flow_estimate_dtype = np.float64
    heard = simulate_balance(**scenario, aggregation="flow", seed=7, engine="fast")
    FastMarket.flow_heard_lists = False
    as_they_come = simulate_balance(**scenario, aggregation="flow", seed=7, engine="fast")
    assert heard["messages"] == as_they_come["messages"]
    for a, b in zip(heard["epochs"], as_they_come["epochs"], strict=True):
        assert a["statuses"] == b["statuses"]
        for key in ("price", "price_spread", "imbalance_kw", "cost", "unserved_kw"):
            assert a[key] == pytest.approx(b[key], rel=1e-9, abs=1e-9), key


@pytest.mark.parametrize("scenario", _HEARD_SCENARIOS)
def test_flow_updating_in_single_precision_finds_the_prices_of_double_precision(
    scenario: dict[str, Any], knobs: None
) -> None:
    single = simulate_balance(**scenario, aggregation="flow", seed=7, engine="fast")
    FastMarket.flow_estimate_dtype = np.float64
    double = simulate_balance(**scenario, aggregation="flow", seed=7, engine="fast")
    assert single["messages"] == double["messages"]
    for a, b in zip(single["epochs"], double["epochs"], strict=True):
        assert a["statuses"] == b["statuses"]
        assert a["price"] == pytest.approx(b["price"], abs=1e-6)  # EUR/MWh; 0.01 is asked
        for key in ("imbalance_kw", "cost", "unserved_kw"):
            assert a[key] == pytest.approx(b[key], rel=1e-6, abs=1e-3), key


def test_both_engines_report_the_same_keys_and_name_the_engine() -> None:
    scenario = {"nodes": 150, "epochs": 2, "crash": 0.2, "crash_at": 1, "loss": 0.05}
    core = simulate_balance(**scenario, engine="core")
    fast = simulate_balance(**scenario, engine="fast")
    assert core.keys() == fast.keys()
    assert core["parameters"].keys() == fast["parameters"].keys()
    assert [e.keys() for e in core["epochs"]] == [e.keys() for e in fast["epochs"]]
    assert (core["parameters"]["engine"], fast["parameters"]["engine"]) == ("core", "fast")
    assert simulate_balance(nodes=30, epochs=1)["parameters"]["engine"] == "core"
    assert simulate_balance(nodes=150, epochs=1)["parameters"]["engine"] == "fast"


def test_an_unknown_engine_is_refused_with_the_choices() -> None:
    with pytest.raises(SimulationError, match="expected one of auto, fast, core"):
        simulate_balance(nodes=50, epochs=1, engine="gpu")


def test_flow_updating_with_loss_too_large_for_per_link_state_is_refused_clearly(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(array_balance, "_EXACT_FLOW_LIMIT_BYTES", 1024)
    with pytest.raises(SimulationError) as err:
        simulate_balance(nodes=150, epochs=1, aggregation="flow", loss=0.1, engine="fast")
    assert "keeps a flow per link" in str(err.value) and "--engine core" in str(err.value)
    assert "\n" not in str(err.value)


def test_the_command_line_picks_the_engine_and_refuses_an_unknown_one() -> None:
    args = [sys.executable, "-m", "redy", "sim", "balance", "--nodes", "120", "--epochs", "1"]
    for engine in ("core", "fast"):
        done = subprocess.run([*args, "--engine", engine, "--json"], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["parameters"]["engine"] == engine
    done = subprocess.run([*args, "--engine", "gpu"], capture_output=True, text=True)
    assert done.returncode == 2
    assert "'gpu' is not one of 'auto', 'fast', 'core'" in done.stderr


def _flow_runs(
    scenario: dict[str, Any], monkeypatch: pytest.MonkeyPatch, *knobs: tuple[bool, int, bool]
) -> Iterator[dict[str, Any]]:
    """The fast engine's Flow Updating on `scenario` (seed 5) with each setting of (equal
    columns once, column blocks, the columns up to above the crossing first)."""
    monkeypatch.setattr(array_balance, "_MIN_BLOCK", 1)
    for distinct, blocks, below in knobs:
        monkeypatch.setattr(FastMarket, "flow_distinct_columns", distinct)
        monkeypatch.setattr(FastMarket, "flow_column_blocks", blocks)
        monkeypatch.setattr(FastMarket, "flow_below_crossing", below)
        run = simulate_balance(**scenario, aggregation="flow", seed=5, engine="fast")
        del run["elapsed_s"]
        yield run


@pytest.mark.parametrize(
    "scenario",
    [
        {"nodes": 300, "epochs": 2},
        # A crash in epoch 2 (the per-link kernel); in epoch 3 the views still name the dead,
        # whose links go at the nodes' first rounds (the views hear of it once, whatever the
        # blocks).
        {"nodes": 300, "epochs": 3, "crash": 0.3, "crash_at": 2},
        {"nodes": 300, "epochs": 2, "loss": 0.05},
        # Six rounds: in epoch 2 some node's crossing lies above the first columns, the phase
        # runs again on the whole grid.
        {"nodes": 300, "epochs": 2, "rounds": 6},
    ],
)
def test_flow_updating_on_fewer_columns_finds_the_very_numbers_of_the_whole_grid(
    scenario: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    whole, *fewer = _flow_runs(
        scenario,
        monkeypatch,
        (False, 1, False),  # every column, all at once
        (True, 1, False),  # each run of equal columns once
        (False, 3, False),  # three blocks, the last one narrower
        (False, 1, True),  # the columns up to above the crossing first
        (True, 2, True),  # all three, as by default
    )
    for run in fewer:
        assert run == whole


def test_flow_updating_runs_a_phase_again_on_the_whole_grid_when_a_crossing_lies_above(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    widths = _gossiped_widths(monkeypatch)
    next(_flow_runs({"nodes": 300, "epochs": 2, "rounds": 6}, monkeypatch, (False, 2, True)))
    # Phase 1 of epoch 2 on fewer columns, then again on all 203.
    assert any(a < 203 and b == 203 for a, b in itertools.pairwise(widths[1:])), widths


def test_the_links_are_the_live_views_made_undirected() -> None:
    market = FastMarket(300, 20, 8, PriceSearch(-500.0, 4000.0, 201, 0), seed=2)
    overlay = market.overlay
    overlay.crash(0.2, random.Random(3))  # the views still name the crashed
    live = overlay.live()
    indptr, idx, rev = market._links(live)
    expected: dict[int, set[int]] = {i: set() for i in range(300)}
    for i in live.tolist():
        for j in overlay.ids[i, : overlay.length[i]].tolist():
            expected[i].add(j)
            if overlay.alive[j]:
                expected[j].add(i)
    assert any(not overlay.alive[j] for i in live for j in expected[int(i)])
    for i in range(300):
        assert idx[indptr[i] : indptr[i + 1]].tolist() == sorted(expected[i])
        for a in range(indptr[i], indptr[i + 1]):
            j, back = int(idx[a]), int(rev[a])
            if i in expected[j]:
                assert indptr[j] <= back < indptr[j + 1] and idx[back] == i
            else:
                assert back == -1
