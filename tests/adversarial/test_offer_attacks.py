"""A member with a valid certificate of its own attacks six honest nodes that clear by the offer
market (real brokers, governance units, meters and gas plants: tests/faults/faultgrid.py with
`market: offers`). It passes on offers it forged in another node's name, offers of members it
invented, an offer beyond the grid's capacity bound and two different offers of its own for the
same epoch. A household whose certificate states 20 kW of import and 10 kW of export signs
9 MW at the price floor and 9 MW of load at the cap, and passes on an operator's signed offer;
the operator writes its own. The honest nodes keep clearing at the honest optimum (the
reference solver on the honest offers of each epoch), name the liars in their logs, and stay up.
One `ATTACK <name>: ...` line with the figures
(`pytest -s tests/adversarial/test_offer_attacks.py`)."""

from __future__ import annotations

import contextlib
import json
import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import orjson
import pytest
from members import member

from redy import messages, pki
from redy.balancing import reference
from redy.balancing.curves import Bid, Dispatchable, Fixed
from redy.errors import InvalidMessage
from redy.signing import Signer
from redy.topics import render

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "faults"))
from faultgrid import CLEARED, COSTS, EPOCH_S, FaultGrid, running

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

HONEST = 6
STARTUP_S = 40.0


@pytest.fixture(scope="module")
def grid(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaultGrid]:
    with running(tmp_path_factory.mktemp("grid"), HONEST, STARTUP_S, market="offers") as g:
        yield g


def test_a_member_cannot_speak_for_others_or_beyond_its_capacity(
    grid: FaultGrid, mqtt_client: Any, tmp_path: Path
) -> None:
    ident = member(grid.state, "evil")
    evil = Signer(ident)
    other_ca = tmp_path / "other-ca"
    pki.ensure_ca(other_ca)
    ghost = Signer(pki.issue(other_ca, "ghost", ["127.0.0.1"]))
    clients = [mqtt_client(ports[1], None, None, "evil", ident) for ports in grid.ports]
    t0 = time.time()
    sent = 0
    while time.time() - t0 < 4 * EPOCH_S:
        epoch = int(time.time() // EPOCH_S)
        # n1 selling 1 MW at -500 EUR/MWh (signed by evil), a ghost load of 1 GW, evil beyond
        # the bound, and evil two-faced: a cheap offer to half the nodes, a dear one to the rest.
        forged = attrs.evolve(evil.sign(epoch, (0.0, 1000.0, -500.0, -500.0)), node="n1")
        invented = ghost.sign(epoch, (-1e6,))
        beyond = evil.sign(epoch, (-1e9,))
        cheap = evil.sign(epoch, (0.0, 1000.0, -500.0, -500.0))
        dear = evil.sign(epoch, (-1000.0,))
        for i, (c, node) in enumerate(zip(clients, grid.nodes, strict=True)):
            two_faced = cheap if i % 2 else dear
            msg = messages.Gossip(
                sender="evil", epoch=epoch, round=0, algorithm="offers", weight=0.0, values=(),
                ts_s=time.time(), offers=(forged, invented, beyond, two_faced),
            )  # fmt: skip
            c.c.publish(render("gossip", node=node, peer="evil"), messages.encode(msg), qos=0)
            sent += 1
        time.sleep(0.3)
    first, last, cleared = grid.cleared_prices(t0, time.time())
    assert cleared, f"no node cleared during the attack\n{grid.describe()}"
    print(
        f"ATTACK offers: {sent} messages of 4 offers over epochs {first}..{last}; honest prices"
        f" {min(cleared):.3f}..{max(cleared):.3f} EUR/MWh"
    )
    # Every honest price is a gas plant's cost: the attacker's -500 and its loads never counted.
    assert all(min(COSTS) - 1e-6 <= p <= max(COSTS) + 1e-6 for p in cleared), grid.describe()
    assert all(grid.governance_alive().values())
    logs = "\n".join(f.read_text() for f in sorted((grid.state / "logs").glob("*.log")))
    assert "offer of n1 signed by evil's certificate" in logs
    assert "offer of ghost with a certificate the grid CA did not issue" in logs
    assert "beyond the grid's bound" in logs


def _as_bids(values: tuple[float, ...]) -> list[Bid]:
    """An offer's values as the reference solver's bids: its base, then one bid per block."""
    out: list[Bid] = [Fixed(values[0])]
    for kw, lo, hi in zip(values[1::3], values[2::3], values[3::3], strict=True):
        out.append(Dispatchable(0.0, kw, lo, cost_max_eur_mwh=hi if hi > lo else None))
    return out


def test_a_household_is_held_to_its_certified_size_and_an_operator_is_no_member(
    grid: FaultGrid, mqtt_client: Any, tmp_path: Path
) -> None:
    house = pki.issue(grid.state, "house-x", ["127.0.0.1"], pki.Grant("node", 20.0, 10.0))
    liar = Signer(house)
    op_ident = pki.issue_operator(grid.state, "mallory")  # CN operator.mallory
    operator = Signer(op_ident)
    # An operator's certificate under a plain name (as another tool might issue): the codec
    # takes its offers, the role in its certificate makes them no member's.
    plain = Signer(pki._issue(grid.state, "mallory", [], pki.Grant("operator")))
    houses = [mqtt_client(ports[1], None, None, "house-x", house) for ports in grid.ports]
    ops = [mqtt_client(ports[1], None, None, "operator.mallory", op_ident) for ports in grid.ports]
    assert all(c.refused is None for c in houses + ops)
    # Every honest offer, as n0 and n1 receive them (n0's own comes to n1).
    watches = []
    for i in (0, 1):
        creds = grid.state / grid.nodes[i] / "credentials.json"
        password = json.loads(creds.read_text())["users"]["operator"]
        w = mqtt_client(grid.ports[i][0], "operator", password)
        w.subscribe(f"redy/{grid.nodes[i]}/grid/gossip/+", qos=0)
        watches.append(w)
    t0 = time.time()
    sent = 0
    while time.time() - t0 < 5 * EPOCH_S:
        epoch = int(time.time() // EPOCH_S)
        lie = (0.0, 9000.0, -500.0, -500.0) if epoch % 2 else (-9000.0,)
        op_offer = operator.sign(epoch, (-5000.0,))
        for c, node in zip(houses, grid.nodes, strict=True):
            for offer in (liar.sign(epoch, lie), plain.sign(epoch, (-5000.0,))):
                msg = messages.Gossip(
                    sender="house-x", epoch=epoch, round=0, algorithm="offers", weight=0.0,
                    values=(), ts_s=time.time(), offers=(offer,),
                )  # fmt: skip
                topic = render("gossip", node=node, peer="house-x")
                c.c.publish(topic, messages.encode(msg), qos=0)
        for c, node in zip(ops, grid.nodes, strict=True):
            # Its own message: the codec would refuse its name as a sender, so by hand.
            body = (
                b'{"sender":"operator.mallory","epoch":%d,"round":0,"algorithm":"offers",'
                b'"weight":0.0,"values":[],"offers":[%s]}'
                % (epoch, orjson.dumps(attrs.asdict(op_offer)))
            )
            c.c.publish(f"redy/{node}/grid/gossip/operator.mallory", body, qos=0)
            sent += 1
        time.sleep(0.3)
    first, last, cleared = grid.cleared_prices(t0, time.time())
    assert cleared, f"no node cleared during the attack\n{grid.describe()}"
    honest: dict[int, dict[str, tuple[float, ...]]] = {}
    for w in watches:
        for m in w.drain():
            with contextlib.suppress(InvalidMessage):
                g = messages.decode(m.topic, m.payload)
                for o in g.offers or ():
                    if o.node in grid.nodes and o.epoch == g.epoch:
                        honest.setdefault(o.epoch, {})[o.node] = o.values
    table = grid.by_epoch()
    checked = []
    for epoch in range(first, last + 1):
        offers = honest.get(epoch, {})
        if len(offers) < HONEST:
            continue  # n0 and n1 did not both hear every honest node this epoch
        ref = reference.solve([_as_bids(offers[n]) for n in sorted(offers)])
        prices = [p for p, status in table.get(epoch, {}).values() if status in CLEARED]
        assert len(prices) == HONEST, grid.describe()
        for p in prices:
            assert p == pytest.approx(ref.price_eur_mwh, abs=1e-6), (epoch, p, ref, offers)
        checked.append((epoch, ref.price_eur_mwh))
    assert len(checked) >= 2, f"too few epochs with every honest offer seen: {grid.describe()}"
    print(
        f"ATTACK certified size: {sent} messages over epochs {first}..{last}; every honest price"
        f" the honest optimum in {len(checked)} epochs ({', '.join(f'{p:g}' for _, p in checked)}"
        " EUR/MWh); the liar's 9 MW would have set -500 or 4000"
    )
    assert all(grid.governance_alive().values())
    logs = "\n".join(f.read_text() for f in sorted((grid.state / "logs").glob("*.log")))
    # Drops are logged at a sender's 1st, 2nd, 4th, 8th... drop: some of each liar's show.
    assert re.search(
        r"dropped gossip from house-x: offer of house-x: net injection from (0|-9000) to -?9000 kW,"
        r" beyond its certified limits of -20\.\.10 kW",
        logs,
    )
    assert "offer of mallory with a certificate of role operator, not a node" in logs
    assert "grid/gossip/operator.mallory' is not in the ReDy tree" in logs
