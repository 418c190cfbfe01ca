"""Descriptors signed with the grid's keys (redy.membership.signatures, issue 26): a member with a
valid certificate forges and forks; the evidence is two of its own signatures, and the honest
node that finds it logs its name. Real ECDSA keys of a real grid CA, no brokers."""

from __future__ import annotations

import logging
import random
from pathlib import Path

import pytest

from redy import pki
from redy.membership.secure import Descriptor
from redy.membership.signatures import ChainCheck, ChainKeys, SignedShuffle

pytestmark = pytest.mark.pure

HONEST = [f"h{i}" for i in range(6)]


def _uri(node: str) -> str:
    return f"mqtts://{node}.test:8883"


@pytest.fixture(scope="module")
def state(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("pki")
    for name in [*HONEST, "evil"]:
        pki.issue(d, name, ["127.0.0.1"])
    return d


def _cert_of(state: Path):  # type: ignore[no-untyped-def]
    def cert_of(node: str) -> bytes | None:
        path = pki.identity(state, node).cert
        return path.read_bytes() if path.exists() else None

    return cert_of


def _grid(state: Path) -> tuple[dict[str, SignedShuffle], dict[str, ChainKeys]]:
    nodes = {
        n: SignedShuffle(pki.identity(state, n), _uri(n), 4, 2, random.Random(k), _cert_of(state))
        for k, n in enumerate(HONEST)
    }
    keys = {n: nodes[n].keys for n in HONEST}
    keys["evil"] = ChainKeys(pki.identity(state, "evil"))
    return nodes, keys


def _issued(keys: dict[str, ChainKeys], owner: str, to: str, born: int) -> Descriptor:
    return keys[owner].seal(Descriptor(owner, _uri(owner), born, (owner, to)))


def test_a_chain_verifies_hop_by_hop_and_a_changed_byte_breaks_it(state: Path) -> None:
    nodes, keys = _grid(state)
    d = _issued(keys, "h1", "h2", 3)
    d = keys["h2"].seal(d._replace(chain=(*d.chain, "h3")))
    check = nodes["h0"].check
    assert check.check(d).valid
    assert not check.check(d._replace(broker="mqtts://elsewhere:1")).valid
    assert not check.check(d._replace(chain=("h1", "h2", "h4"))).valid
    assert not check.check(d._replace(sigs=d.sigs[:1])).valid


def test_a_member_forging_a_descriptor_is_named_by_the_node_it_sends_it_to(
    state: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """evil signs a descriptor of a node that has no certificate, and one of an honest node
    at its own address: both are its own signatures over descriptors that do not verify."""
    nodes, keys = _grid(state)
    h0 = nodes["h0"]
    h0.core.seed([], 5)
    token = _issued(keys, "h0", "evil", 4)
    for forged in (
        Descriptor("ghost", _uri("ghost"), 5, ("ghost", "evil", "h0")),
        Descriptor("h1", "mqtts://127.0.0.1:9", 5, ("h1", "evil", "h0")),
    ):
        sigs = ("A" * 96, *keys["evil"].seal(forged._replace(sigs=("",))).sigs[1:])
        own = _issued(keys, "evil", "h0", 5)
        with caplog.at_level(logging.WARNING, "redy.membership.signatures"):
            assert h0.on_request("evil", token, [forged._replace(sigs=sigs), own], 5) is None
    assert "node=h0 convicted evil: sent a descriptor that does not verify" in caplog.text


def test_a_member_handing_one_descriptor_to_two_nodes_is_named_by_its_owner(
    state: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """evil got h1's descriptor once and hands it to h2 and h3 (two signatures of its own);
    both use it to contact h1: h1 sees the two chains part at evil, and checks the proof."""
    nodes, keys = _grid(state)
    for n in HONEST:
        nodes[n].core.seed([], 10)
    d = _issued(keys, "h1", "evil", 5)
    for holder in ("h2", "h3"):
        token = _issued(keys, holder, "evil", 9)
        copy = keys["evil"].seal(d._replace(chain=(*d.chain, holder)))
        own = _issued(keys, "evil", holder, 10)
        reply = nodes[holder].on_request("evil", token, [copy, own], 10)
        assert reply is not None and "h1" in nodes[holder].core.neighbours()
        nodes[holder].core.discard("evil")  # its broker did not answer: h1's is left to contact
    first = nodes["h2"].tick(11)
    second = nodes["h3"].tick(11)
    assert first is not None and second is not None
    assert first.token is not None and second.token is not None
    assert first.token.owner == second.token.owner == "h1"
    with caplog.at_level(logging.WARNING, "redy.membership.signatures"):
        assert nodes["h1"].on_request("h2", first.token, first.entries, 11) is not None
        assert nodes["h1"].on_request("h3", second.token, second.entries, 11) is None
    assert "node=h1 convicted evil: handed our descriptor 5 on twice" in caplog.text
    assert nodes["h0"].check.proves(first.token, second.token, "evil")
    assert not nodes["h0"].check.proves(first.token, second.token, "h2")


def test_a_forged_hop_cannot_frame_an_honest_node(state: Path) -> None:
    """A fork 'at h4' made with a signature h4 never gave (evil's key, h4's name) proves
    nothing; the same fork with h4's own two signatures would."""
    nodes, keys = _grid(state)
    d = _issued(keys, "h1", "h4", 2)
    impostor = ChainKeys(pki.identity(state, "evil"))
    impostor.node = "h4"
    forged = impostor.seal(d._replace(chain=(*d.chain, "evil")))
    real = keys["h4"].seal(d._replace(chain=(*d.chain, "h2")))
    check: ChainCheck = nodes["h0"].check
    assert not check.proves(forged, real, "h4")
    other = keys["h4"].seal(d._replace(chain=(*d.chain, "h3")))
    assert check.proves(other, real, "h4")
