"""`redy sim balance --market cells --engine core`: every node a CellNode, message by message
(redy.sim.cell_protocol); the price is the reference optimum on every node, and what the
protocol costs per node stays near what the model (redy.sim.cell_market) counts."""

from __future__ import annotations

import pytest

from redy.sim.balance import simulate_balance

pytestmark = pytest.mark.pure


def test_the_protocol_run_clears_the_reference_price_near_the_models_cost() -> None:
    result = simulate_balance(
        nodes=160, epochs=2, market="cells", engine="core", cell_size=16, seed=4
    )
    p = result["parameters"]
    assert p["engine"] == "core" and p["cells"] == 8
    for e in result["epochs"]:
        assert e["every_honest_node_same_price"] and e["cleared"] == 160, e["failed"]
        assert e["price_error"] <= 1e-6
        assert e["refusals"] == 0
        ratio = e["protocol_over_model"]
        assert 0.6 <= ratio["bytes_received"] <= 1.4
        assert 0.8 <= ratio["signature_checks"] <= 1.4


def test_hostile_members_move_the_protocols_price_only_inside_their_band() -> None:
    """A tenth of the members, each one attack in turn (lying to its limits either way,
    two-faced, withholding, late, replaying, early, forging sums): every honest node clears
    the optimum of the offers its cells counted, inside the band honest members of the same
    certified sizes could reach, and the cost stays near the model's for the same members."""
    result = simulate_balance(
        nodes=160, epochs=2, market="cells", engine="core", cell_size=16, seed=4, adversaries=0.1
    )
    assert result["adversaries"]["members"] == 16
    assert len(result["adversaries"]["strategies"]) == 8
    for e in result["epochs"]:
        assert e["every_honest_node_same_price"], e["failed"]
        assert e["price_error"] <= 1e-6 and e["inside_band"]
        ratio = e["protocol_over_model"]
        assert 0.6 <= ratio["bytes_received"] <= 1.6
        assert 0.8 <= ratio["signature_checks"] <= 1.4
