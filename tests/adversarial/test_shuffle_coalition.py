"""A coalition of two members with valid certificates against six honest nodes running the
signed shuffle (`shuffle: signed`, issue 26; real brokers and processes: tests/faults/faultgrid.py).
It reaches three of them. At n2 it tries what convicts only where it lands: `evil` presents a
token of n2's it forged, `evil2` its own descriptor dated ten periods ahead. At n0 and n1 it hands
descriptors on twice: `evil` its descriptor of a period to `evil2`, who passes it to n0, and to
n0 itself (the two copies part at evil); `evil2` likewise through `evil` to n1 and to n1 itself.
n0 and n1 find the forks and pass the two signed copies on; every honest node, the three it
never contacted too, checks them and names both members in its log. `evil` also sends n5 a proof
against honest n4 that does not hold: n5 names evil as its sender and nobody convicts n4. None of
the members' entries enters an honest view, and the honest overlay stays connected. Prints one
`ATTACK ...` line."""

from __future__ import annotations

import base64
import random
import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
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


@pytest.fixture
def grid(tmp_path: Path) -> Iterator[FaultGrid]:
    with running(tmp_path, HONEST, STARTUP_S, shuffle="signed") as g:
        yield g


def _names(logs: str, node: str, culprit: str) -> bool:
    """Whether `node` logged a conviction of `culprit` (found, or on a neighbour's evidence)."""
    return re.search(rf"node={node} convicted {re.escape(culprit)}\b", logs) is not None


def _logs(g: FaultGrid) -> str:
    return "\n".join(f.read_text() for f in sorted((g.state / "logs").glob("*.governance.log")))


def _cert(identity: Any) -> str:
    pem = x509.load_pem_x509_certificate(identity.cert.read_bytes())
    return base64.b64encode(pem.public_bytes(serialization.Encoding.DER)).decode()


def test_a_coalition_is_named_by_every_node_and_kept_out_of_the_signed_views(
    grid: FaultGrid, mqtt_client: Any
) -> None:
    members = ("evil", "evil2")
    ids = {m: member(grid.state, m) for m in members}
    keys = {m: ChainKeys(ids[m]) for m in members}
    certs = tuple(_cert(ids[m]) for m in members)
    n = list(grid.nodes)
    clients = {m: [mqtt_client(p[1], None, None, m, ids[m]) for p in grid.ports] for m in members}
    rng = random.Random(3)
    nowhere = "mqtts://127.0.0.1:9"
    sent = 0

    def issue(owner: str, born: int, *chain: str) -> Descriptor:
        """`owner`'s descriptor of `born`, handed along `chain` (members' hops only)."""
        d = keys[owner].seal(Descriptor(owner, nowhere, born, (owner, chain[0])))
        for k in range(1, len(chain)):
            d = keys[chain[k - 1]].seal(d._replace(chain=(*d.chain, chain[k])))
        return d

    def request(sender: str, i: int, *signed: Descriptor, token: Descriptor | None = None) -> None:
        nonlocal sent
        msg = messages.ShuffleRequest(
            sender=sender, broker=nowhere, nonce=rng.randrange(2**40),
            token=None if token is None else to_wire(token),
            signed=tuple(to_wire(d) for d in signed), certs=certs,
        )  # fmt: skip
        clients[sender][i].c.publish(
            render("shuffle", node=n[i], peer=sender), messages.encode(msg)
        )
        sent += 1

    t0 = time.time()
    # n5: a "proof" against honest n4 that n4 never signed.
    p = int(time.time() // PERIOD_S)
    first = issue("evil", p, n[1])._replace(owner=n[4], broker=grid.grid_uri(4), chain=(n[4], n[1]))
    made_up = first._replace(chain=(n[4], n[0]), sigs=("A" * 96,))
    lie = messages.Evidence(
        sender="evil", culprit=n[4], copies=(to_wire(first), to_wire(made_up)), certs=certs
    )
    clients["evil"][5].c.publish(render("evidence", node=n[5], peer="evil"), messages.encode(lie))
    for _ in range(3):
        # n2: convictions that only n2 can see (no signature of the member says it sent them).
        p = int(time.time() // PERIOD_S)
        forged = Descriptor(n[2], grid.grid_uri(2), p - 1, (n[2], "evil"), sigs=("A" * 96,))
        request("evil", 2, issue("evil", p, n[2]), token=forged)
        request("evil2", 2, issue("evil2", p + 10, n[2]))
        time.sleep(0.5)
    for _ in range(2):
        # Each member passes on the other's descriptor of a period (first contacts place only
        # the sender's own, but what else they carry is checked and kept in mind), twice: a
        # first contact that meets a receiver's budget of SL a period is refused...
        periods = []
        for _ in range(2):
            p = int(time.time() // PERIOD_S)
            periods.append(p)
            request("evil2", 0, issue("evil", p, "evil2", n[0]), issue("evil2", p, n[0]))
            request("evil", 1, issue("evil2", p, "evil", n[1]), issue("evil", p, n[1]))
            time.sleep(0.6)
        # ...and then hands its own of those periods to the same node itself: a fork at evil
        # found by n0, one at evil2 found by n1.
        request("evil", 0, *(issue("evil", p, n[0]) for p in periods))
        request("evil2", 1, *(issue("evil2", p, n[1]) for p in periods))
        time.sleep(1.0)
    time.sleep(2 * PERIOD_S)
    logs = _logs(grid)
    named = {m: sum(_names(logs, h, m) for h in n) for m in members}
    told = {
        m: [h for h in n[3:] if f"node={h} convicted {m} on evidence from " in logs]
        for m in members
    }
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
        f"ATTACK signed-shuffle coalition: {sent} requests to 3 of {HONEST} honest nodes in"
        f" {time.time() - t0:.0f} s; honest nodes naming evil {named['evil']}/{HONEST}, evil2"
        f" {named['evil2']}/{HONEST}, of the 3 never contacted on evidence: evil"
        f" {len(told['evil'])}, evil2 {len(told['evil2'])}; member entries in {views_seen} honest"
        f" views: {held}; honest overlay connected: {connected(final)}"
    )
    assert views_seen > 0
    assert named == {"evil": HONEST, "evil2": HONEST}, logs[-3000:]
    assert told == {m: list(n[3:]) for m in members}, logs[-3000:]
    assert f"node={n[5]} dropped evidence from evil against {n[4]}" in logs
    assert not any(_names(logs, h, n[4]) for h in n)
    assert held == 0
    assert connected(final), final
    assert all(grid.governance_alive().values())
