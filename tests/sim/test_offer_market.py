"""`redy sim balance --market offers`: the governance's OfferCore for every simulated node,
against the reference optimum, and hostile members against it (redy.sim.adversaries)."""

from __future__ import annotations

import functools
from typing import Any

import attrs
import orjson
import pytest
from click.testing import CliRunner

from redy import messages
from redy.balancing.offers import cert_missing
from redy.cli import cli
from redy.errors import SimulationError
from redy.sim.adversaries import OFFER_ATTACKS
from redy.sim.balance import simulate_balance
from redy.sim.offer_market import SimKeys, SimVerifier, _gossip, _Sizes

pytestmark = pytest.mark.pure

NODES = 100
MEMBERS = {"mix": 7}  # every strategy once; 3 members of one strategy otherwise


@functools.cache
def _run(attack: str | None, nodes: int = NODES) -> dict[str, Any]:
    return simulate_balance(
        nodes=nodes,
        epochs=2,
        view_size=8,
        shuffle_length=4,
        seed=5,
        market="offers",
        adversaries=MEMBERS.get(attack, 3) / nodes if attack else 0.0,
        attack=attack,
    )


def test_every_node_clears_at_the_reference_price_checking_each_offer_once() -> None:
    r = _run(None, 150)
    assert r["parameters"]["market"] == "offers"
    for e in r["epochs"]:
        assert e["statuses"] == {"cleared": 150}
        assert e["price_error"] <= 1e-6, e
        assert e["price_spread"] == 0.0
        assert e["cleared_with_every_honest_offer"] == 1.0
        assert e["early_starts"] == 0
        assert e["imbalance_ratio"] < 1e-9  # every node dispatched at the one exact price
        # Each peer's offer is verified once, its certificate once in the first epoch only.
        assert e["per_node"]["signature_checks"] == {"mean": 149.0, "max": 149.0}
        first = e["epoch"] == 1
        assert e["per_node"]["certificate_checks"]["max"] == (149.0 if first else 0.0)
        assert e["per_node"]["bytes_received"]["mean"] > 149 * 200
    assert r["dropped"] == 0


@pytest.mark.parametrize("attack", [*OFFER_ATTACKS, "mix"])
def test_members_move_the_honest_price_no_further_than_honest_members_of_their_limits(
    attack: str,
) -> None:
    r = _run(attack)
    a = r["adversaries"]
    members = MEMBERS.get(attack, 3)
    assert a["members"] == members
    assert a["attack"] == ({s: 1 for s in OFFER_ATTACKS} if attack == "mix" else {attack: 3})
    for k, e in enumerate(r["epochs"]):
        low, high = a["price_band_eur_mwh"][k]
        assert e["statuses"] == {"cleared": NODES - members}, e
        assert e["price_spread"] <= 1e-9, e  # every honest node on one price
        assert a["outside_band_eur_mwh"][k] <= 1e-6, (low, high, e["price_range"])
        assert e["cleared_with_every_honest_offer"] == 1.0
        assert e["early_starts"] == 0
        # Exactly what honest members of the same limits could do, no more.
        if attack == "sell-floor":
            assert e["price"] == pytest.approx(low, abs=1e-6)
        elif attack == "buy-cap":
            assert e["price"] == pytest.approx(high, abs=1e-6)
        elif attack == "two-faced":  # both offers reach everyone: the members are left out
            assert e["price_error"] <= 1e-6


def test_a_message_of_the_next_epoch_with_a_forged_offer_ends_no_epoch() -> None:
    """An early member's messages of the next epoch, in the last quarter of each epoch, start
    no honest node's next epoch before its time (its bids would be the last epoch's)."""
    r = _run("early")
    assert r["adversaries"]["forged_messages"] > 0
    assert [e["early_starts"] for e in r["epochs"]] == [0, 0]
    # The forged offers were checked and refused: more checks than peers' offers, somewhere.
    assert max(e["per_node"]["signature_checks"]["max"] for e in r["epochs"]) > NODES - 1


def test_replayed_offers_of_the_last_epoch_count_nowhere_and_cost_one_check_each() -> None:
    """Replays count nowhere (the attack test above); each distinct offer replayed with this
    epoch's stamp costs its receiver one signature check, however often it comes again (a
    refused offer is not checked twice in an epoch): at most one per honest offer replayed on
    top of the N - 1 honest ones (before, up to five times that)."""
    r = _run("replay")
    assert r["adversaries"]["forged_messages"] > 0
    checks = r["epochs"][1]["per_node"]["signature_checks"]["max"]
    assert NODES - 1 < checks <= 2 * (NODES - 1)
    assert r["dropped"] > 0


def test_the_message_sizes_are_the_codecs() -> None:
    keys = SimKeys(1, {"a-1": (5.0, 3.0), "b-2": (1.0, 0.0)}, 1e5)
    offers = (
        keys.sign("a-1", 7, (-2.0, 4.5, 40.0, 300.0)),
        attrs.evolve(keys.sign("b-2", 7, (-1.0,)), cert=None),
    )
    sizes = _Sizes()
    for batch in (offers[:1], offers[1:], offers):
        payload = messages.encode_with(
            _gossip("a-1", 7), "offers", [messages.encode(o) for o in batch]
        )
        assert sizes.message("a-1", 7, batch) == len(payload)
        assert messages.decode_as("Gossip", payload).offers == batch


def test_the_stand_in_verifier_refuses_as_the_real_one_and_counts_its_checks() -> None:
    keys = SimKeys(1, {"a-1": (5.0, 3.0), "b-2": (1.0, 0.0)}, 1e5)
    v = SimVerifier(keys)
    good = keys.sign("a-1", 7, (-2.0, 4.5, 40.0, 300.0))
    bare = attrs.evolve(keys.sign("b-2", 7, (-1.0,)), cert=None)
    assert v.refusal(bare) == cert_missing  # no certificate held for b-2 yet
    assert v.refusal(good) is None
    assert (v.checked, v.cert_checks, v.cert_of("a-1")) == (1, 1, good.cert)
    assert "does not match" in (v.refusal(attrs.evolve(good, values=(-5.0,))) or "")
    assert "signed by a-1" in (v.refusal(attrs.evolve(good, node="b-2")) or "")
    assert "did not issue" in (v.refusal(attrs.evolve(good, cert="x" * 700)) or "")
    beyond = keys.sign("a-1", 7, (-6.0,))  # imports 6 kW, certified for 5
    assert "beyond its certified limits" in (v.refusal(beyond) or "")
    assert v.refusal(attrs.evolve(keys.sign("a-1", 8, (-1.0,)), cert=None)) is None
    assert (v.checked, v.cert_checks) == (4, 2)  # a forged certificate or name: no verify


def test_the_cli_runs_the_offer_market_and_refuses_what_it_does_not_simulate() -> None:
    out = CliRunner().invoke(
        cli, ["sim", "balance", "--market", "offers", "--nodes", "30", "--epochs", "1", "--json"]
    )
    assert out.exit_code == 0, out.output
    r = orjson.loads(out.output)
    assert r["epochs"][0]["price_error"] <= 1e-6
    with pytest.raises(SimulationError, match="--market offers"):
        simulate_balance(nodes=30, epochs=1, attack="late")
    with pytest.raises(SimulationError, match="--attack"):
        simulate_balance(nodes=30, epochs=1, market="offers", adversaries=0.1, attack="bribe")
