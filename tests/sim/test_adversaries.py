"""`--adversaries F` in the simulators (issue 10): hostile members attack the same cores the
processes run, and the report says what they achieved, against what honest members could."""

from __future__ import annotations

import orjson
import pytest
from click.testing import CliRunner

from redy.cli import cli
from redy.errors import SimulationError
from redy.sim import adversaries
from redy.sim.balance import simulate_balance
from redy.sim.membership import simulate_membership


def _membership(fraction: float, nodes: int = 400) -> dict:
    return simulate_membership(
        nodes=nodes,
        view_size=12,
        shuffle_length=2,
        cycles=30,
        bootstrap="random",
        detector="verify",
        adversaries=fraction,
        seed=3,
    )


def test_one_eclipsing_member_holds_at_most_a_quarter_of_any_honest_view() -> None:
    """The issue's eclipse target, on 400 simulated nodes: one member sending 4 poisoned
    requests per period and poisoning every answer never holds more than a quarter of an honest
    view, and the honest nodes' overlay stays connected."""
    r = _membership(1 / 400)
    a = r["adversaries"]
    assert a["members"] == 1
    assert len(a["max_attacker_share_per_cycle"]) == 30
    assert a["max_attacker_share"] <= 0.25, a["max_attacker_share_per_cycle"]
    assert a["honest_largest_component_fraction"] == 1.0
    assert r["parameters"]["engine"] == "core"


def test_the_eclipse_report_counts_members_invented_nodes_and_forged_addresses() -> None:
    """The share counts every kind of poison the members spread: with 5 % of the nodes hostile
    the honest views hold more of them than the members' own 5 %; a view of the members'
    entries only would read 1.0."""
    a = _membership(0.05)["adversaries"]
    assert a["members"] == 20
    assert a["mean_attacker_share"] > a["attacker_share_if_honest"]
    assert 0.0 < a["mean_attacker_share"] <= a["max_attacker_share"] <= 1.0


def test_adversaries_need_the_core_engine_and_say_so_in_one_line() -> None:
    with pytest.raises(SimulationError, match="core engine"):
        simulate_membership(
            nodes=50, view_size=8, shuffle_length=2, cycles=2, adversaries=0.1, engine="fast"
        )
    result = CliRunner().invoke(
        cli, ["sim", "balance", "--nodes", "50", "--adversaries", "0.1", "--engine", "fast"]
    )
    assert result.exit_code == 2
    assert "core engine" in result.output and len(result.output.strip().splitlines()) == 1


def _steered(capacity_kw: float = 5000.0) -> dict:
    return simulate_balance(
        nodes=120,
        epochs=2,
        rounds=30,
        view_size=12,
        shuffle_length=2,
        adversaries=1 / 120,
        capacity_kw=capacity_kw,
        seed=2,
    )


def test_price_steering_is_measured_against_an_honest_member_of_the_same_capacity() -> None:
    """One member pushes the most mass the bounds let through. Its pushes pass the bounds (they
    are legal), the honest nodes still all clear, and the report puts how far their price moved
    beside how far an honest member of the same capacity bidding its full range at the member's
    price would move the optimum (the reference solver, not the gossip)."""
    r = _steered()
    a = r["adversaries"]
    assert a["members"] == 1 and a["forged_pushes"] > 0 and a["dropped_by_bounds"] == 0
    assert all(e["statuses"] == {"cleared": e["nodes"]} for e in r["epochs"])
    for e, moved, honest in zip(
        r["epochs"], a["price_moved_eur_mwh"], a["honest_members_could_move_eur_mwh"], strict=True
    ):
        assert moved == pytest.approx(e["price"] - e["price_optimal"])
        assert 0.0 <= honest <= adversaries.STEER_TO_EUR_MWH - e["price_optimal"] + 1e-6


def test_weightless_mass_is_dropped_by_every_honest_node_and_moves_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The attack as first found (weight 0): the simulated nodes hold it to the same bounds as
    MarketCore does, so every forged push is dropped and the price is the honest optimum."""
    monkeypatch.setattr(adversaries, "PUSH_WEIGHT", 0.0)
    r = _steered()
    a = r["adversaries"]
    assert a["forged_pushes"] > 0 and a["dropped_by_bounds"] == a["forged_pushes"]
    assert max(a["largest_price_error_eur_mwh"]) < 0.05


def test_the_cli_reports_the_adversaries() -> None:
    result = CliRunner().invoke(
        cli,
        ["sim", "membership", "--nodes", "60", "--view", "8", "--shuffle", "2", "--cycles", "5",
         "--adversaries", "0.05", "--json"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    out = orjson.loads(result.output)
    assert out["parameters"]["adversaries"] == 0.05
    assert out["adversaries"]["members"] == 3
