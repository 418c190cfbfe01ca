"""A member with a valid certificate of its own attacks a grid of six honest nodes (real
brokers, governance units, meters and gas plants: tests/faults/faultgrid.py): it tries to set
everyone's price, and to eclipse the honest nodes' views with entries it invented. Each test
asserts the target and that the offender is named in the honest nodes' logs, and prints one
`ATTACK <name>: ...` line with the figures (`pytest -s tests/adversarial/test_attacks.py`)."""

from __future__ import annotations

import random
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from graphs import connected
from members import member

from redy import messages
from redy.topics import render

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "faults"))
from faultgrid import COSTS, EPOCH_S, FaultGrid, running

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

HONEST = 6
STARTUP_S = 40.0
STEER_TO = 400.0  # EUR/MWh: far above every honest gas plant's cost (50..120)


@pytest.fixture
def grid(tmp_path: Path) -> Iterator[FaultGrid]:
    with running(tmp_path, HONEST, STARTUP_S) as g:
        yield g


def _evil_clients(g: FaultGrid, mqtt_client: Any) -> list[Any]:
    """evil's sessions on every honest node's grid listener, with its own valid certificate."""
    ident = member(g.state, "evil")
    return [mqtt_client(ports[1], None, None, "evil", ident) for ports in g.ports]


def _governance_logs(g: FaultGrid) -> str:
    return "\n".join(f.read_text() for f in sorted((g.state / "logs").glob("*.governance.log")))


def test_a_member_cannot_set_everyones_price(grid: FaultGrid, mqtt_client: Any) -> None:
    """The attack of issue 10: gossip of weight 0 and +-1e12 kW crossing at 400 EUR/MWh, every
    round, to every node, for four epochs. It used to make every node clear at 400."""
    clients = _evil_clients(grid, mqtt_client)
    prices = np.linspace(-500.0, 4000.0, 201)
    values = (*np.where(prices >= STEER_TO, 1e12, -1e12).tolist(), 0.0, 0.0)
    t0 = time.time()
    sent = 0
    while time.time() - t0 < 4 * EPOCH_S:
        epoch = int(time.time() // EPOCH_S)
        for c, node in zip(clients, grid.nodes, strict=True):
            topic = render("gossip", node=node, peer="evil")
            for r in range(1, 31):
                msg = messages.Gossip(
                    sender="evil", epoch=epoch, round=r, algorithm="pushsum", weight=0.0,
                    values=values, ts_s=time.time(), phase=1, floor_eur_mwh=-500.0,
                    cap_eur_mwh=4000.0,
                )  # fmt: skip
                c.c.publish(topic, messages.encode(msg), qos=0)
                sent += 1
        time.sleep(0.3)
    first, last, cleared = grid.cleared_prices(t0, time.time())
    assert cleared, f"no node cleared during the attack\n{grid.describe()}"
    worst = max(abs(p - STEER_TO) for p in cleared)
    highest = max(cleared)
    print(
        f"ATTACK price steering: {sent} messages over epochs {first}..{last}; honest prices"
        f" {min(cleared):.1f}..{highest:.1f} EUR/MWh (target of the attacker {STEER_TO:.0f})"
    )
    assert highest <= max(COSTS) + 1.0, f"the attacker moved the price\n{grid.describe()}"
    assert worst > 200.0
    assert all(grid.governance_alive().values())
    assert "dropped gossip from evil: weight 0, expected in (0, 4]" in _governance_logs(grid)


def test_a_member_cannot_eclipse_the_honest_views(grid: FaultGrid, mqtt_client: Any) -> None:
    """Four shuffle requests a second to every node, each listing invented nodes (at closed
    ports, at honest nodes' addresses, and at evil's own address) and evil itself: no honest
    view ever holds more than a quarter of attacker entries, and the honest overlay stays
    connected."""
    clients = _evil_clients(grid, mqtt_client)
    honest = set(grid.nodes)
    rng = random.Random(7)
    evil_broker = "mqtts://127.0.0.1:9"  # evil's claimed broker: nothing listens there
    addresses = [grid.grid_uri(i) for i in range(HONEST)]
    t0 = time.time()
    sent = 0
    while time.time() - t0 < 20.0:
        for c, node in zip(clients, grid.nodes, strict=True):
            entries = (
                messages.ViewEntry(node="evil", broker=evil_broker, age=0),
                *(
                    messages.ViewEntry(
                        node=f"ghost-{rng.randrange(10**6)}",
                        broker=rng.choice([*addresses, evil_broker, "mqtts://127.0.0.1:7"]),
                        age=0,
                    )
                    for _ in range(6)
                ),
            )
            request = messages.ShuffleRequest(
                sender="evil", broker=evil_broker, nonce=rng.randrange(2**40), entries=entries
            )
            c.c.publish(render("shuffle", node=node, peer="evil"), messages.encode(request))
            sent += 1
        time.sleep(0.25)
    time.sleep(1.0)
    view_size = 4  # faultgrid's
    worst_count, worst_share, views_seen = 0, 0.0, 0
    for node in grid.nodes:
        for t, view in grid.views(node):
            if t < t0:
                continue
            views_seen += 1
            bad = [n for n in view if n not in honest]
            worst_count = max(worst_count, len(bad))
            if view:
                worst_share = max(worst_share, len(bad) / len(view))
    final = {n: set(grid.views(n)[-1][1]) & honest for n in grid.nodes}
    print(
        f"ATTACK eclipse: {sent} requests in 20 s; {views_seen} honest views published, at most"
        f" {worst_count} attacker entries of {view_size} (share of the entries held at most"
        f" {worst_share:.0%}); honest overlay connected: {connected(final)}"
    )
    assert views_seen > 0
    assert worst_count <= view_size // 4, f"an honest view held {worst_count} attacker entries"
    assert connected(final), f"the honest overlay split: {final}"
    assert all(grid.governance_alive().values())
    # evil's own entry got in (its quarter of the view) and was found dead at its claimed broker
    assert "neighbour evil unreachable" in _governance_logs(grid)
