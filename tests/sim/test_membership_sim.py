"""The membership simulator on a few hundred nodes: convergence, healing, loss."""

from __future__ import annotations

import pytest

from redy.errors import SimulationError
from redy.sim.membership import simulate_membership

pytestmark = pytest.mark.pure

_BASE = {"nodes": 300, "view_size": 10, "shuffle_length": 4, "cycles": 40, "seed": 3}


def test_star_bootstrap_converges_to_a_connected_overlay_with_full_views() -> None:
    r = simulate_membership(**_BASE)
    assert r["largest_component_fraction"] == 1.0
    assert r["in_degree"]["mean"] == pytest.approx(10.0, abs=0.2)
    assert r["cycles_to_converge"] is not None and r["cycles_to_converge"] < 40


def test_redy_detector_clears_dead_links_faster_than_cyclon_after_a_crash() -> None:
    crash = {**_BASE, "crash": 0.5, "crash_at": 20}
    redy = simulate_membership(**crash, detector="redy")["dead_links"]
    cyclon = simulate_membership(**crash, detector="cyclon")["dead_links"]
    assert redy[5] == 0
    assert cyclon[5] > 0
    assert sum(redy) < sum(cyclon) / 3


def test_redy_detector_keeps_live_views_full_under_message_loss() -> None:
    lossy = {**_BASE, "loss": 0.1, "cycles": 60}
    redy = simulate_membership(**lossy, detector="redy")
    cyclon = simulate_membership(**lossy, detector="cyclon")
    assert redy["mean_view_size"] > 9.5
    assert redy["mean_view_size"] > cyclon["mean_view_size"]
    assert redy["largest_component_fraction"] == 1.0


def test_joining_nodes_enter_through_one_introducer() -> None:
    r = simulate_membership(**{**_BASE, "join_count": 50, "join_at": 20})
    assert r["nodes"] == 350
    assert r["largest_component_fraction"] == 1.0
    assert r["in_degree"]["min"] > 0


def test_remove_sweep_reports_every_five_percent() -> None:
    r = simulate_membership(**_BASE, remove_sweep=True)
    fractions = [s["removed_fraction"] for s in r["remove_sweep"]]
    assert fractions[0] == 0.05 and fractions[-1] == 0.95
    assert r["remove_sweep"][0]["largest_component_fraction"] > 0.99


def test_impossible_parameters_are_refused() -> None:
    with pytest.raises(SimulationError):
        simulate_membership(**{**_BASE, "shuffle_length": 10})
