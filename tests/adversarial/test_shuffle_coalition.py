"""A coalition of two members with valid certificates against six honest nodes running the
signed shuffle (`shuffle: signed`, issue 26; real brokers and processes: tests/faults/faultgrid.py).
`evil` floods every node with requests whose token is one of the target's descriptors it forged;
`evil2` with its own descriptors dated in the future (to look younger than any honest one) and
vouches for `evil`. Every honest node they reach names them in its log, none of their entries
enters an honest view, and the honest overlay stays connected. Prints one `ATTACK ...` line."""

from __future__ import annotations

import random
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from graphs import connected
from members import member

from redy import messages
from redy.membership.secure import Descriptor
from redy.membership.secure_overlay import to_wire
from redy.membership.signatures import ChainKeys
from redy.topics import render

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "faults"))
from faultgrid import PERIOD_S, FaultGrid, running

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

HONEST = 6
STARTUP_S = 40.0
ATTACK_S = 12.0


@pytest.fixture
def grid(tmp_path: Path) -> Iterator[FaultGrid]:
    with running(tmp_path, HONEST, STARTUP_S, shuffle="signed") as g:
        yield g


def _logs(g: FaultGrid) -> str:
    return "\n".join(f.read_text() for f in sorted((g.state / "logs").glob("*.governance.log")))


def test_a_coalition_is_named_and_kept_out_of_the_signed_views(
    grid: FaultGrid, mqtt_client: Any
) -> None:
    members = ("evil", "evil2")
    keys = {m: ChainKeys(member(grid.state, m)) for m in members}
    clients = {
        m: [mqtt_client(ports[1], None, None, m, member(grid.state, m)) for ports in grid.ports]
        for m in members
    }
    rng = random.Random(3)
    nowhere = "mqtts://127.0.0.1:9"
    t0 = time.time()
    sent = 0
    while time.time() - t0 < ATTACK_S:
        period = int(time.time() // PERIOD_S)
        for i, node in enumerate(grid.nodes):
            # evil: a token of the target it never got (the signature is its own, not node's)
            forged = Descriptor(
                node, grid.grid_uri(i), period - 1, (node, "evil"), sigs=("A" * 96,)
            )
            own = keys["evil"].seal(Descriptor("evil", nowhere, period, ("evil", node)))
            request = messages.ShuffleRequest(
                sender="evil", broker=nowhere, nonce=rng.randrange(2**40),
                token=to_wire(forged), signed=(to_wire(own),),
            )  # fmt: skip
            clients["evil"][i].c.publish(
                render("shuffle", node=node, peer="evil"), messages.encode(request)
            )
            # evil2: no token, its own descriptor from ten periods ahead, and evil's
            late = keys["evil2"].seal(Descriptor("evil2", nowhere, period + 10, ("evil2", node)))
            vouched = keys["evil2"].seal(
                keys["evil"].seal(Descriptor("evil", nowhere, period, ("evil", "evil2")))
                ._replace(chain=("evil", "evil2", node))
            )  # fmt: skip
            request = messages.ShuffleRequest(
                sender="evil2", broker=nowhere, nonce=rng.randrange(2**40),
                signed=(to_wire(vouched), to_wire(late)),
            )  # fmt: skip
            clients["evil2"][i].c.publish(
                render("shuffle", node=node, peer="evil2"), messages.encode(request)
            )
            sent += 2
        time.sleep(0.25)
    time.sleep(2 * PERIOD_S)
    logs = _logs(grid)
    named = {m: sum(f"{n} convicted {m}:" in logs for n in grid.nodes) for m in members}
    honest = set(grid.nodes)
    held = 0
    views_seen = 0
    for node in grid.nodes:
        for t, view in grid.views(node):
            if t >= t0:
                views_seen += 1
                held += sum(1 for n in view if n in members)
    final = {n: set(grid.views(n)[-1][1]) & honest for n in grid.nodes}
    print(
        f"ATTACK signed-shuffle coalition: {sent} requests in {ATTACK_S:.0f} s; honest nodes"
        f" naming evil {named['evil']}/{HONEST}, evil2 {named['evil2']}/{HONEST}; member entries"
        f" in {views_seen} honest views: {held}; honest overlay connected: {connected(final)}"
    )
    assert views_seen > 0
    assert named == {"evil": HONEST, "evil2": HONEST}, logs[-3000:]
    assert held == 0
    assert connected(final), final
    assert all(grid.governance_alive().values())
