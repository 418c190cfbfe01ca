"""The signed shuffle's sans-IO membership (redy.membership.secure_overlay) of seven nodes with
real keys of a real grid CA, over in-memory links and a fake clock: they join through one
introducer and fill their views with signed descriptors; a member with a valid certificate that
forges a token is named in the log of the node it tried it on; one that hands its descriptor on
twice is named by every node, on the proof the node that found it passes on; evidence that does
not prove is dropped and its sender named, and a flood of it costs a few checks a period."""

from __future__ import annotations

import logging
import random
from pathlib import Path

import pytest

from redy import messages, pki
from redy.membership.overlay import Send
from redy.membership.secure import Descriptor
from redy.membership.secure_overlay import SecureOverlay, to_wire
from redy.membership.signatures import ChainKeys

pytestmark = pytest.mark.pure

NODES = [f"n{i}" for i in range(7)]
PERIOD_S = 2.0


def _uri(node: str) -> str:
    return f"mqtts://{node}.test:8883"


class Grid:
    def __init__(self, state: Path, periods: int = 0) -> None:
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
        self.run(periods)

    def join(self, node: str) -> None:
        """What the driver does when alone: read the introducer's descriptor and view."""
        intro = NODES[0]
        desc = messages.NodeDescriptor(
            node=intro, kind="generic", broker=_uri(intro), capabilities=(), ts_s=0.0
        )
        view = messages.View(node=intro, ts_s=0.0, entries=self.nodes[intro].view)
        self.nodes[node].seed(desc, view)

    def deliver(self, src: str, send: Send) -> None:
        if isinstance(send.message, messages.Evidence):
            _spread(self, [send])
            return
        if send.node not in self.nodes:  # a member's broker that nobody answers at
            self.nodes[src].failed(send, "connection refused")
            return
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
    for name in [*NODES, "evil", "evil2"]:
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


def _spread(g: Grid, sends: list[Send]) -> None:
    """Deliver evidence, and what its receivers send on, until none is left."""
    while sends:
        send = sends.pop(0)
        assert isinstance(send.message, messages.Evidence)
        if send.node in g.nodes:  # not to the members in views
            sends += g.nodes[send.node].on_evidence(send.message)


def test_a_fork_found_by_one_node_is_proved_to_every_node(
    state: Path, caplog: pytest.LogCaptureFixture
) -> None:
    g = Grid(state, 10)
    evil, evil2 = (ChainKeys(pki.identity(state, m)) for m in ("evil", "evil2"))
    finder = g.nodes[NODES[3]]
    p = finder.period
    nowhere = "mqtts://127.0.0.1:9"
    # evil handed its descriptor of period p to evil2, who hands it on to n3; evil hands it to
    # n3 itself as well: two chains of one descriptor that part at evil.
    via = evil2.seal(
        evil.seal(Descriptor("evil", nowhere, p, ("evil", "evil2")))._replace(
            chain=("evil", "evil2", NODES[3])
        )
    )
    own2 = evil2.seal(Descriptor("evil2", nowhere, p, ("evil2", NODES[3])))
    own = evil.seal(Descriptor("evil", nowhere, p, ("evil", NODES[3])))
    with caplog.at_level(logging.WARNING, "redy.membership"):
        for sender, signed in (("evil2", (via, own2)), ("evil", (own,))):
            request = messages.ShuffleRequest(
                sender=sender,
                broker=nowhere,
                nonce=7,
                signed=tuple(to_wire(d) for d in signed),
                certs=_member_certs(state, "evil", "evil2"),  # n3 holds none of theirs
            )
            finder.on_request(request)
        sends = finder.take_evidence()
        assert sends and {s.node for s in sends} == {e.node for e in finder.view}
        _spread(g, sends)
        g.run(10)  # views are directed: the rest learn it as they enter a told node's view
    for n, ov in g.nodes.items():
        assert "evil" in ov.core.convicted, n
        assert "evil2" not in ov.core.convicted, n  # nothing proves anything against evil2
    assert f"node={NODES[3]} convicted evil: handed the descriptor evil/{p} on twice" in (
        caplog.text
    )
    learnt = [n for n in NODES if f"node={n} convicted evil on evidence from" in caplog.text]
    assert sorted(learnt) == sorted(set(NODES) - {NODES[3]})
    assert caplog.text.count("convicted evil") == len(NODES)  # one line each
    assert all("evil" not in {e.node for e in ov.view} for ov in g.nodes.values())


def _member_certs(state: Path, *names: str) -> tuple[str, ...]:
    import base64

    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    out = []
    for name in names:
        cert = x509.load_pem_x509_certificate(pki.identity(state, name).cert.read_bytes())
        out.append(base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode())
    return tuple(out)


def test_evidence_that_does_not_prove_is_dropped_and_its_sender_named(
    state: Path, caplog: pytest.LogCaptureFixture
) -> None:
    g = Grid(state, 10)
    victim, judge = NODES[4], g.nodes[NODES[5]]
    p = judge.period
    keys = {n: g.nodes[n].shuffle.keys for n in NODES}
    # Two honest copies of n4's descriptor: n4 handed it to n1, n1 on to n2 (one path).
    first = keys[victim].seal(Descriptor(victim, _uri(victim), p, (victim, NODES[1])))
    longer = keys[NODES[1]].seal(first._replace(chain=(victim, NODES[1], NODES[2])))
    # A copy whose last hop the accuser made up (no valid signature of n1's).
    made_up = first._replace(chain=(victim, NODES[1], NODES[6]), sigs=(*first.sigs, "A" * 96))
    evil = ChainKeys(pki.identity(state, "evil"))
    # ...and one sealed by evil in n1's place.
    sealed_by_evil = evil.seal(first._replace(chain=(victim, "evil", NODES[6])))
    certs = _member_certs(state, victim, NODES[1], "evil")
    with caplog.at_level(logging.WARNING, "redy.membership"):
        for copies, culprit in (
            ((first, longer), victim),  # one path seen at two moments: no fork
            ((first, longer), NODES[1]),
            ((longer, made_up), NODES[1]),  # a forged signature
            ((first, sealed_by_evil), victim),  # parts at n4, but n4 signed only one
            ((first,), victim),
        ):
            msg = messages.Evidence(
                sender="evil",
                culprit=culprit,
                copies=tuple(to_wire(d) for d in copies),
                certs=certs,
            )
            assert judge.on_evidence(msg) == []
            g.now += PERIOD_S  # within evil's budget of checks
    assert judge.core.convicted == {}
    assert judge.evidence_refused == 5
    lines = [ln for ln in caplog.text.splitlines() if "dropped evidence from evil" in ln]
    assert len(lines) == 5


def test_a_flood_of_evidence_costs_a_few_checks_a_period(
    state: Path, caplog: pytest.LogCaptureFixture
) -> None:
    g = Grid(state, 3)
    honest = g.nodes[NODES[0]]
    a = honest.shuffle.keys.seal(
        Descriptor(NODES[0], _uri(NODES[0]), honest.period, (NODES[0], NODES[1]))
    )
    judge = g.nodes[NODES[2]]
    msg = messages.Evidence(
        sender="evil", culprit=NODES[0], copies=(to_wire(a), to_wire(a)),
        certs=_member_certs(state, NODES[0]),
    )  # fmt: skip
    before = judge.shuffle.check.checked
    with caplog.at_level(logging.WARNING, "redy.membership"):
        for _ in range(1000):
            judge.on_evidence(msg)
    # Each proof checked costs at most its copies' signatures: 4 proofs of 2 x 1.
    assert judge.shuffle.check.checked - before <= 4 * 2
    assert judge.evidence_dropped == 996
    assert caplog.text.count("sends more evidence than we check") == 1
    # The next period, the budget is back (an honest sender is not shut out for good).
    g.now += PERIOD_S
    judge.on_evidence(msg)
    assert judge.evidence_dropped == 996 and judge.evidence_refused == 5
