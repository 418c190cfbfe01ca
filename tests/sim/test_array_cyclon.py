"""The compiled engine (`--engine fast`) against the core-driven one (`--engine core`).

The two cannot share random streams, so each scenario runs both on the same seeds and asks that
every metric's mean over the seeds differ by less than twice its seed-to-seed spread. A last
test holds the fast engine at 10,000 nodes to PeerSim's CYCLON figures (REFERENCE.md), which
were measured independently of this code.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from typing import Any

import pytest

from redy.errors import SimulationError
from redy.sim.membership import simulate_membership

pytestmark = pytest.mark.pure

_SEEDS = range(1, 6)
_BASE = {"nodes": 400, "view_size": 10, "shuffle_length": 4, "cycles": 40, "bootstrap": "star"}

Metric = Callable[[dict[str, Any]], float]


def _first_clean(r: dict[str, Any]) -> float:
    """Cycles after the crash until no live view holds a dead node."""
    return float(next((k for k, d in enumerate(r["dead_links"]) if d == 0), len(r["dead_links"])))


_SHAPE: dict[str, Metric] = {
    "in-degree std": lambda r: r["in_degree"]["std"],
    "in-degree max": lambda r: r["in_degree"]["max"],
    "clustering": lambda r: r["clustering"],
    "path length": lambda r: r["avg_path_length"],
    "largest component": lambda r: r["largest_component_fraction"],
}
_HEALING: dict[str, Metric] = {
    "dead links, total": lambda r: sum(r["dead_links"]),
    "dead links, first cycle": lambda r: r["dead_links"][0],
    "cycles until no dead link": _first_clean,
}
_LOSS: dict[str, Metric] = {"mean view size": lambda r: r["mean_view_size"]}


def _assert_same_within_spread(scenario: dict[str, Any], metrics: dict[str, Metric]) -> None:
    runs = {
        engine: [simulate_membership(**scenario, seed=s, engine=engine) for s in _SEEDS]
        for engine in ("core", "fast")
    }
    for name, metric in metrics.items():
        core = [metric(r) for r in runs["core"]]
        fast = [metric(r) for r in runs["fast"]]
        spread = max(statistics.stdev(core), statistics.stdev(fast))
        gap = abs(statistics.mean(core) - statistics.mean(fast))
        assert gap <= 2 * spread + 1e-12, f"{name}: core {core} fast {fast}"


def test_fast_engine_matches_the_core_on_the_overlay_it_builds() -> None:
    _assert_same_within_spread(_BASE, _SHAPE)


@pytest.mark.parametrize("detector", ["cyclon", "redy"])
def test_fast_engine_matches_the_core_healing_after_half_the_nodes_crash(detector: str) -> None:
    scenario = {**_BASE, "crash": 0.5, "crash_at": 15, "detector": detector}
    _assert_same_within_spread(scenario, {**_SHAPE, **_HEALING})


@pytest.mark.parametrize("detector", ["cyclon", "redy"])
def test_fast_engine_matches_the_core_under_message_loss(detector: str) -> None:
    scenario = {**_BASE, "loss": 0.1, "detector": detector}
    _assert_same_within_spread(scenario, {**_SHAPE, **_LOSS})


def test_fast_engine_matches_the_core_when_nodes_join_through_one_introducer() -> None:
    scenario = {**_BASE, "join_count": 100, "join_at": 20}
    _assert_same_within_spread(scenario, _SHAPE)


def test_fast_engine_meets_peersims_cyclon_figures_at_ten_thousand_nodes() -> None:
    # PeerSim's CYCLON with its protocol bugs fixed, c = 20, SL = 8, star bootstrap, 50 % crash
    # at cycle 50 (REFERENCE.md): in-degree std 1.63, clustering 0.0076, path 2.718, dead
    # links gone 38 cycles after the crash.
    r = simulate_membership(
        nodes=10_000,
        view_size=20,
        shuffle_length=8,
        cycles=100,
        crash=0.5,
        crash_at=50,
        detector="cyclon",
        seed=7,
    )
    assert r["nodes"] == 5_000
    assert r["in_degree"]["std"] == pytest.approx(1.63, abs=0.1)
    assert r["clustering"] == pytest.approx(0.0076, rel=0.1)
    assert r["avg_path_length"] == pytest.approx(2.718, abs=0.03)
    assert _first_clean(r) == pytest.approx(38, abs=3)
    assert r["largest_component_fraction"] == 1.0


def test_both_engines_report_the_same_keys() -> None:
    core = simulate_membership(**_BASE, loss=0.1, crash=0.2, crash_at=5, engine="core")
    fast = simulate_membership(**_BASE, loss=0.1, crash=0.2, crash_at=5, engine="fast")
    assert core.keys() == fast.keys()
    assert core["in_degree"].keys() == fast["in_degree"].keys()
    assert len(core["dead_links"]) == len(fast["dead_links"])


def test_an_unknown_engine_is_refused_with_the_choices() -> None:
    with pytest.raises(SimulationError, match="expected one of fast, core"):
        simulate_membership(**_BASE, engine="gpu")
