"""The compiled engine (`--engine fast`) against the core-driven one (`--engine core`).

The two cannot share random streams, so each scenario runs both on the same seeds and asks that
every metric's mean over the seeds differ by less than twice its seed-to-seed spread. A last
test holds the fast engine at 10,000 nodes to PeerSim's CYCLON figures (REFERENCE.md), which
were measured independently of this code.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from engine_spread import assert_same_within_spread
from hypothesis import given, settings
from hypothesis import strategies as st

from redy.errors import SimulationError
from redy.membership.cyclon import Cyclon, Neighbour
from redy.sim.array_cyclon import ArrayOverlay, _merge
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
    assert_same_within_spread(runs["core"], runs["fast"], metrics)


def test_fast_engine_matches_the_core_on_the_overlay_it_builds() -> None:
    _assert_same_within_spread(_BASE, _SHAPE)


@pytest.mark.parametrize("detector", ["cyclon", "redy", "verify"])
def test_fast_engine_matches_the_core_healing_after_half_the_nodes_crash(detector: str) -> None:
    scenario = {**_BASE, "crash": 0.5, "crash_at": 15, "detector": detector}
    _assert_same_within_spread(scenario, {**_SHAPE, **_HEALING})


@pytest.mark.parametrize("detector", ["cyclon", "redy", "verify"])
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


@st.composite
def _merge_case(draw: st.DrawFn) -> dict[str, Any]:
    c = draw(st.integers(2, 8))
    now = draw(st.integers(1, 60))
    view = draw(st.dictionaries(st.integers(1, 30), st.integers(0, now), max_size=c))
    entries = draw(st.lists(st.tuples(st.integers(0, 30), st.integers(-1, 40)), max_size=c + 1))
    sent = draw(st.lists(st.integers(1, 30), unique=True, max_size=c))
    tombs = draw(st.dictionaries(st.integers(1, 30), st.integers(0, now), max_size=4))
    tombs = {n: t for n, t in tombs.items() if n not in view}  # evidence took it out of the view
    return {"c": c, "now": now, "view": view, "entries": entries, "sent": sent, "tombs": tombs}


@settings(max_examples=200, deadline=None)
@given(_merge_case())
def test_fast_merge_leaves_the_same_view_as_the_core_merge(case: dict[str, Any]) -> None:
    """Merging is deterministic, so here the two must agree exactly: self, duplicates, empty
    slots, replacing what was sent (newest of it first), tombstones, their expiry and lifting."""
    c, me, now = case["c"], 0, case["now"]
    core = Cyclon(me, "sim://0", c, 1, random.Random(0))
    # node -> (tick of the evidence, any broker: the simulator's nodes have one address)
    core._tombstones.update({n: (t, None) for n, t in case["tombs"].items()})
    core._tick = now - now % 8
    core._expire_tombstones()  # as the core's last sweep, at the last multiple of 8, left them
    core._tick = now
    fast = ArrayOverlay(31, 31, c, 1, "redy", 0)
    fast.tick[me] = now
    for s, (node, age) in enumerate(case["view"].items()):
        core._base[node] = fast.base[me, s] = now - age
        core._broker[node] = ""
        fast.ids[me, s] = node
    fast.length[me] = len(case["view"])
    for s, (node, died) in enumerate(case["tombs"].items()):
        fast.tomb_id[me, s], fast.tomb_t[me, s] = node, died

    core._merge([Neighbour(n, "", age) for n, age in case["entries"]], case["sent"])
    e_ids = np.array([n for n, _ in case["entries"]] or [0], dtype=np.int32)
    e_ages = np.array([a for _, a in case["entries"]] or [0], dtype=np.int32)
    sent = np.array(case["sent"] or [0], dtype=np.int32)
    scratch = np.empty((3, c + 2), dtype=np.int32)
    _merge(
        fast._state(),
        me,
        e_ids,
        e_ages,
        len(case["entries"]),
        sent,
        len(case["sent"]),
        c,
        True,
        fast.ttl,
        scratch,
    )
    after = {int(fast.ids[me, s]): now - int(fast.base[me, s]) for s in range(fast.length[me])}
    assert after == {e.node: e.age for e in core.view}


def test_the_command_line_picks_the_engine_and_refuses_an_unknown_one() -> None:
    redy = [sys.executable, "-m", "redy", "sim", "membership", "--nodes", "60", "--view", "6"]
    args = [*redy, "--shuffle", "3", "--cycles", "3"]
    for engine in ("core", "fast"):
        done = subprocess.run([*args, "--engine", engine, "--json"], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["parameters"]["engine"] == engine
    done = subprocess.run([*args, "--engine", "gpu"], capture_output=True, text=True)
    assert done.returncode == 2
    assert "'gpu' is not one of 'fast', 'core'" in done.stderr
