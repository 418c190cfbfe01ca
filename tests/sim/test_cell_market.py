"""`redy sim balance --market cells`: the price is the reference optimum's in every epoch, an offer
is seen by its cell only, and a coalition moves the price no further than honest members of the
same certified limits could; a coalition that holds a third of a cell stops the epoch (said, not
hidden)."""

from __future__ import annotations

import json

from click.testing import CliRunner

from redy.balancing import cells
from redy.cli import cli
from redy.sim.balance import simulate_balance


def test_price_is_the_optimum_and_an_offer_is_seen_by_its_cell() -> None:
    result = simulate_balance(nodes=3000, epochs=3, market="cells", seed=3)
    assert result["parameters"]["cells"] == 32  # 2^round(log2(3000 / 128))
    for e in result["epochs"]:
        assert e["status"] == e["status_optimal"]
        assert e["price_error"] <= 1e-6
        assert e["every_honest_node_same_price"]
        per = e["per_node"]
        assert per["offer_seen_by"]["max"] < 300  # its cell-mates, not 2,999 members
        assert 0 < per["bytes_received"]["mean"] < 2e6
        assert 0 < per["signature_checks"]["mean"] < 5000


def test_a_coalition_of_a_tenth_moves_the_price_only_inside_its_band() -> None:
    """300 members of 3,000, each running one attack in turn (lying to its certified limits
    either way, two-faced, withholding, late, replaying, early, forging its cell's sums)."""
    result = simulate_balance(nodes=3000, epochs=3, market="cells", seed=5, adversaries=0.1)
    assert result["cells"]["unsafe"] == 0
    assert result["adversaries"]["members"] == 300
    for e in result["epochs"]:
        assert e["inside_band"], (e["price"], e["band"])
        assert e["price_error"] <= 1e-6  # the optimum of the offers the cells agreed on
        assert e["every_honest_node_same_price"]
    assert result["adversaries"]["epochs_inside_band"] == 3
    # Withholding and two-faced members and hostile leaders cost their cells view changes;
    # every cell decided (the next honest leader's proposal passes).
    assert any(e["cells_with_view_changes"] for e in result["epochs"])
    assert all(e["views_max"] < cells.MAX_VIEWS for e in result["epochs"])


def test_a_coalition_that_holds_a_third_of_a_cell_stops_the_epoch() -> None:
    """Cells of 8 and 30 % members: some cell is a third hostile, its agreement cannot reach
    two thirds, and with it every cell's total: the epoch reports no price (the note and the
    README say so), the run goes on."""
    result = simulate_balance(
        nodes=400, epochs=2, market="cells", seed=2, adversaries=0.3, cell_size=8
    )
    assert result["cells"]["unsafe"] > 0
    assert result["cells"]["third_hostile_chance"] > 0.1
    assert [e["status"] for e in result["epochs"]] == ["stalled", "stalled"]
    assert all(e["price"] is None for e in result["epochs"])


def test_cli_runs_the_cell_market_and_refuses_misplaced_options() -> None:
    runner = CliRunner()
    ok = runner.invoke(
        cli, ["sim", "balance", "--nodes", "300", "--epochs", "1", "--market", "cells", "--json"]
    )
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.output)["epochs"][0]["price_error"] <= 1e-6
    bad = runner.invoke(
        cli, ["sim", "balance", "--nodes", "300", "--market", "offers", "--cell-size", "64"]
    )
    assert bad.exit_code != 0
    assert "--cell-size is an option of --market cells" in bad.output
    attack = runner.invoke(
        cli,
        [
            "sim",
            "balance",
            "--nodes",
            "300",
            "--market",
            "cells",
            "--adversaries",
            "0.1",
            "--attack",
            "bribe",
        ],
    )
    assert attack.exit_code != 0
    assert "expected mix or some of" in attack.output
