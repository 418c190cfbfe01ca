"""The signed shuffle on the compiled engine (`redy sim membership --secure --engine fast`)
against the core-driven one, which runs redy.membership.secure.SecureCyclon itself.

The engines cannot share random streams, so each scenario runs both on the same seeds: the
overlay's shape must agree within the seed-to-seed spread, healing must be as complete, and a
coalition must hold no more of the honest views on the fast engine than on the core one.
"""

from __future__ import annotations

from typing import Any

import pytest
from engine_spread import assert_same_within_spread

from redy.sim.membership import simulate_membership

pytestmark = pytest.mark.pure

_SEEDS = (1, 2, 3)
_BASE = {
    "nodes": 300,
    "view_size": 12,
    "shuffle_length": 2,
    "cycles": 25,
    "bootstrap": "random",
    "detector": "verify",
    "secure": True,
}


def _both(**kw: Any) -> dict[str, list[dict[str, Any]]]:
    scenario = {**_BASE, **kw}
    return {
        engine: [simulate_membership(**scenario, seed=s, engine=engine) for s in _SEEDS]
        for engine in ("core", "fast")
    }


def test_the_fast_engine_builds_the_overlay_the_core_builds() -> None:
    runs = _both()
    metrics = {
        "in-degree std": lambda r: r["in_degree"]["std"],
        "clustering": lambda r: r["clustering"],
        "path length": lambda r: r["avg_path_length"],
    }
    assert_same_within_spread(runs["core"], runs["fast"], metrics)
    assert all(r["largest_component_fraction"] == 1.0 for r in runs["fast"])


def test_the_fast_engine_heals_half_the_nodes_crashing_within_a_period() -> None:
    runs = _both(crash=0.5, crash_at=10, cycles=14)
    for r in runs["core"] + runs["fast"]:
        assert r["dead_links"][1:] == [0, 0, 0, 0], r["parameters"]["engine"]
        assert r["largest_component_fraction"] == 1.0


def test_a_coalition_holds_no_more_of_the_honest_views_than_on_the_core() -> None:
    """`hoard` breaks no rule: its share on both engines is about its number, the fast one no
    higher than the core's by more than the seeds' spread; `mix` copies and forges: convicted
    on both, and no verdict ever names an honest node."""
    hoard = _both(adversaries=0.1, strategy="hoard")
    share = {e: [r["adversaries"]["final_share_ratio"] for r in rs] for e, rs in hoard.items()}
    assert max(share["fast"]) <= 1.2, share
    assert sum(share["fast"]) / 3 <= sum(share["core"]) / 3 + 0.15, share
    worst = {e: max(r["adversaries"]["max_share_final"] for r in rs) for e, rs in hoard.items()}
    assert worst["fast"] <= max(0.5, worst["core"]), worst
    mix = simulate_membership(**_BASE, adversaries=0.1, strategy="mix", seed=1, engine="fast")
    a = mix["adversaries"]
    assert a["honest_verdicts"] == 0
    assert a["members_convicted_somewhere"] >= a["members"] // 2
    assert a["final_share_ratio"] < 0.5
    assert a["honest_largest_component_fraction"] == 1.0
