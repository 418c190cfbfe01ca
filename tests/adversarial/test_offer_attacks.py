"""A member with a valid certificate of its own attacks six honest nodes that clear by the offer
market (real brokers, governance units, meters and gas plants: tests/faults/faultgrid.py with
`market: offers`). It passes on offers it forged in another node's name, offers of members it
invented, an offer beyond the grid's capacity bound and two different offers of its own for the
same epoch. The honest nodes keep clearing at the honest optimum without it, name it in their
logs, and stay up. One `ATTACK <name>: ...` line with the figures
(`pytest -s tests/adversarial/test_offer_attacks.py`)."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
from members import member

from redy import messages, pki
from redy.balancing.offers import Signer
from redy.topics import render

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "faults"))
from faultgrid import COSTS, EPOCH_S, FaultGrid, running

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

HONEST = 6
STARTUP_S = 40.0


@pytest.fixture
def grid(tmp_path: Path) -> Iterator[FaultGrid]:
    with running(tmp_path, HONEST, STARTUP_S, market="offers") as g:
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
