"""`redy sim membership --secure --adversaries F` (issue 26): a coalition against the signed
shuffle, on the same cores the processes run."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from click.testing import CliRunner

from redy.cli import cli
from redy.errors import SimulationError
from redy.sim.coalition import strategies
from redy.sim.membership import simulate_membership


def _run(fraction: float, strategy: str, nodes: int = 300, **kw: Any) -> dict[str, Any]:
    return simulate_membership(
        nodes=nodes,
        view_size=12,
        shuffle_length=2,
        cycles=25,
        bootstrap="random",
        detector="verify",
        adversaries=fraction,
        secure=True,
        strategy=strategy,
        seed=4,
        **kw,
    )


def test_members_that_break_no_rule_hold_about_their_share() -> None:
    """`hoard` (one request a period, only coalition entries handed out, every honest one kept)
    is the strongest attack that leaves no evidence: 10 % of the nodes end with at most 1.2
    times their share of the honest entries, and the honest overlay stays connected."""
    a = _run(0.1, "hoard")["adversaries"]
    assert a["members"] == 30
    assert a["final_share_ratio"] <= 1.2, a["mean_attacker_share_per_cycle"]
    assert a["honest_largest_component_fraction"] == 1.0
    assert a["members_convicted_somewhere"] == 0  # nothing they did is provable


def test_a_hoarding_third_of_the_nodes_holds_at_most_1_2_times_its_share() -> None:
    """30 % `hoard` members hand out only their freshest descriptors; an honest node contacts
    the entry it has held longest, whatever age the descriptor shows, so they gain nothing by it
    (contacting the oldest descriptor, as CYCLON does, they held 1.17 to 1.30 times their share
    here, seeds 1-8; now 1.07 to 1.18)."""
    a = _run(0.3, "hoard")["adversaries"]
    assert a["final_share_ratio"] <= 1.2, a["mean_attacker_share_per_cycle"]
    assert a["honest_largest_component_fraction"] == 1.0


def test_members_that_copy_replay_or_forge_are_convicted_and_dropped() -> None:
    """Every other strategy hands something on twice, or forges: the honest nodes prove it,
    tell each other, and the members' share falls far below their number."""
    a = _run(0.1, "rate,replay,pairs,poison")["adversaries"]
    assert a["members_convicted_somewhere"] == a["members"]
    assert a["members_known_to_all"] >= a["members"] // 3
    assert a["final_share_ratio"] < 0.5
    assert a["honest_largest_component_fraction"] == 1.0


def test_without_members_the_signed_shuffle_keeps_healing_a_crash() -> None:
    """Half the nodes crash: with `verify` no honest view holds a dead entry one period later,
    as with the plain shuffle."""
    r = simulate_membership(
        nodes=300,
        view_size=12,
        shuffle_length=2,
        cycles=15,
        bootstrap="random",
        detector="verify",
        crash=0.5,
        crash_at=10,
        secure=True,
        seed=2,
    )
    assert r["dead_links"][1:] == [0] * (len(r["dead_links"]) - 1)
    assert r["largest_component_fraction"] == 1.0


def test_strategies_are_named_and_the_cli_runs_them() -> None:
    assert strategies("mix") == ("hoard", "focus", "rate", "replay", "pairs", "poison")
    with pytest.raises(SimulationError, match="--strategy"):
        strategies("bribe")
    result = CliRunner().invoke(
        cli,
        [
            *("sim", "membership", "--nodes", "60", "--view", "8", "--shuffle", "2"),
            *("--cycles", "5", "--bootstrap", "random", "--detector", "verify"),
            *("--adversaries", "0.1", "--secure", "--strategy", "hoard", "--json"),
        ],
    )
    assert result.exit_code == 0, result.output
    out = orjson.loads(result.output)
    assert out["adversaries"]["attack"] == {"hoard": 6}
    assert out["parameters"]["secure"] is True
