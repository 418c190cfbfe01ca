"""The signed shuffle's sans-IO membership (redy.membership.secure_overlay) of seven nodes with
real keys of a real grid CA, over in-memory links and a fake clock: they join through one
introducer and fill their views with signed descriptors; a member with a valid certificate that
forges a token is named in the log of the node it tried it on."""

from __future__ import annotations

import logging
import random
from pathlib import Path

import pytest

from redy import messages, pki
from redy.membership.overlay import Send
from redy.membership.secure import Descriptor
from redy.membership.secure_overlay import SecureOverlay, to_wire

pytestmark = pytest.mark.pure

NODES = [f"n{i}" for i in range(7)]
PERIOD_S = 2.0


def _uri(node: str) -> str:
    return f"mqtts://{node}.test:8883"


class Grid:
    def __init__(self, state: Path) -> None:
        self.now = 1000 * PERIOD_S
        self.nodes = {
            n: SecureOverlay(
                identity=pki.identity(state, n),
                grid_uri=_uri(n),
                view_size=4,
                shuffle_length=2,
                rng=random.Random(k),
                timeout_s=1.0,
                period_s=PERIOD_S,
                wall=lambda: self.now,
            )
            for k, n in enumerate(NODES)
        }
        for n in NODES[1:]:
            self.join(n)

    def join(self, node: str) -> None:
        """What the driver does when alone: read the introducer's descriptor and view."""
        intro = NODES[0]
        desc = messages.NodeDescriptor(
            node=intro, kind="generic", broker=_uri(intro), capabilities=(), ts_s=0.0
        )
        view = messages.View(node=intro, ts_s=0.0, entries=self.nodes[intro].view)
        self.nodes[node].seed(desc, view)

    def deliver(self, src: str, send: Send) -> None:
        self.nodes[src].sent(send, self.now)
        target = self.nodes[send.node]
        assert isinstance(send.message, messages.ShuffleRequest)
        answer = target.on_request(send.message)
        assert isinstance(answer.message, messages.ShuffleReply)
        self.nodes[src].on_reply(answer.message)

    def run(self, periods: int) -> None:
        for _ in range(periods):
            self.now += PERIOD_S
            for n in NODES:
                if self.nodes[n].alone and n != NODES[0]:
                    self.join(n)
                for send in self.nodes[n].tick(self.now):
                    self.deliver(n, send)
                self.nodes[n].core.take_admitted()


@pytest.fixture(scope="module")
def state(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("pki")
    for name in [*NODES, "evil"]:
        pki.issue(d, name, ["127.0.0.1"])
    return d


def _connected(views: dict[str, set[str]]) -> bool:
    seen, todo = {NODES[0]}, [NODES[0]]
    while todo:
        u = todo.pop()
        for v in views[u] | {w for w, vs in views.items() if u in vs}:
            if v not in seen:
                seen.add(v)
                todo.append(v)
    return seen == set(NODES)


def test_seven_nodes_join_and_fill_their_views_with_signed_descriptors(state: Path) -> None:
    g = Grid(state)
    g.run(30)
    views = {n: {e.node for e in ov.view} for n, ov in g.nodes.items()}
    assert all(views.values()), views
    assert _connected(views), views
    for ov in g.nodes.values():
        for d in ov.core.descriptors:
            assert ov.shuffle.check.check(d).valid  # every hop signed by its node
        assert ov.core.convicted == {}


def test_a_member_forging_a_token_is_named_in_the_log(
    state: Path, caplog: pytest.LogCaptureFixture
) -> None:
    g = Grid(state)
    g.run(10)
    victim = g.nodes[NODES[3]]
    p = victim.period
    forged = Descriptor(NODES[3], _uri(NODES[3]), p - 1, (NODES[3], "evil"), sigs=("A" * 96,))
    request = messages.ShuffleRequest(
        sender="evil",
        broker="mqtts://127.0.0.1:9",
        nonce=5,
        token=to_wire(forged),
        signed=(),
    )
    with caplog.at_level(logging.WARNING, "redy.membership.signatures"):
        answer = victim.on_request(request)
    assert isinstance(answer.message, messages.ShuffleReply) and answer.message.refused
    assert f"node={NODES[3]} convicted evil: presented a token that is not one of ours" in (
        caplog.text
    )
    g.run(5)
    assert all("evil" not in {e.node for e in ov.view} for ov in g.nodes.values())
