"""The cell market as a governance unit runs it (redy.balancing.cell_roster), without brokers:
members' signed cards flood a ring of neighbours, every node places the same members in the
same cells, and every node clears the reference solver's price on the honest bids, the same
float everywhere, with real grid-CA certificates and ECDSA keys. Cards that are not a member's
own are refused with one `Dropped` naming the sender; bad protocol messages never raise."""

from __future__ import annotations

import base64
import heapq
import math
import random
from pathlib import Path

import attrs
import pytest

from redy import pki, signing
from redy.balancing import cell_node
from redy.balancing.cell_roster import (
    CARD_GAP_S,
    CARD_TTL_S,
    SETTLE_S,
    BodyIn,
    CardsIn,
    CellMarket,
    SendCards,
    place,
)
from redy.balancing.curves import Bid, Dispatchable, Fixed
from redy.balancing.events import Cleared, Dropped, Tick
from redy.balancing.reference import solve
from redy.errors import RedyError
from redy.units.market import cell_timing

pytestmark = pytest.mark.pure

EPOCH_S = 1.0
N = 8
CELL_SIZE = 4  # 8 members: 2 cells of 4
START = 1_000_000.0  # the bus's clock (s): any time; cards are signed on it


def _bids(i: int) -> list[Bid]:
    return [Fixed(-10.0 - i), Dispatchable(0.0, 12.0 + i, 40.0 + 7.0 * i)]


class Bus:
    """CellMarkets on an in-memory bus: 2 ms links, each node woken at its next deadline."""

    def __init__(self, tmp: Path, n: int = N) -> None:
        pki.ensure_ca(tmp)
        self.names = [f"n{i}" for i in range(n)]
        self.ca = tmp / "pki" / "ca.crt"
        self.ca_der = signing.Verifier(self.ca).ca_der
        self.markets: dict[str, CellMarket] = {}
        self.signers: dict[str, signing.Signer] = {}
        for i, name in enumerate(self.names):
            ident = pki.issue(tmp, name, ["127.0.0.1"], pki.Grant("node", 100.0, 100.0))
            self.signers[name] = signing.Signer(ident, session=1)
            self.markets[name] = self.start(i)
        self.heap: list[tuple[float, int, str, object]] = []
        self.seq = 0
        self.cleared: dict[str, dict[int, Cleared]] = {n: {} for n in self.names}
        self.dropped: dict[str, list[Dropped]] = {n: [] for n in self.names}

    def start(self, i: int) -> CellMarket:
        """Node i's market as its governance starts it (again: it holds no card but its own)."""
        name, n = self.names[i], len(self.names)
        signer = self.signers[name]
        verifier = signing.Verifier(self.ca, 1000.0)
        ring = [self.names[(i - 1) % n], self.names[(i + 1) % n]]
        return CellMarket(
            name,
            card=lambda now: signer.card(f"mqtts://127.0.0.1:{9000 + i}", now),
            card_refusal=verifier.card_refusal,
            key_of=signing.public_key_bytes,
            keys_for=lambda certs: signing.CellKeys(signer, verifier, certs),
            bids=lambda: _bids(i),
            neighbours=lambda: ring,
            timing=cell_timing(EPOCH_S),
            cell_size=CELL_SIZE,
            ca_der=self.ca_der,
            capacity_kw=1000.0,
            bounds_kw=signer.grant.bounds_kw(1000.0),
        )

    def _push(self, at: float, target: str, event: object) -> None:
        self.seq += 1
        heapq.heappush(self.heap, (at, self.seq, target, event))

    def act(self, name: str, now: float, actions: list[object]) -> None:
        for a in actions:
            if isinstance(a, SendCards):
                self._push(now + 0.002, a.target, CardsIn(name, a.cards, a.held))
            elif isinstance(a, cell_node.Send):
                self._push(now + 0.002, a.target, BodyIn(name, a.data))
            elif isinstance(a, Cleared):
                self.cleared[name][a.epoch] = a
            elif isinstance(a, Dropped):
                self.dropped[name].append(a)
        t = self.markets[name].next_deadline()
        if t < math.inf:
            self._push(max(t, now), name, Tick())

    def run(self, until: float, start: float = START) -> None:
        for name, m in self.markets.items():
            self.act(name, start, m.handle(start, Tick()))
        self.go(until)

    def go(self, until: float) -> None:
        while self.heap and self.heap[0][0] < until:
            now, _, target, event = heapq.heappop(self.heap)
            m = self.markets[target]
            if isinstance(event, Tick) and m.next_deadline() > now:
                continue
            self.act(target, now, m.handle(now, event))  # type: ignore[arg-type]


def test_cards_flood_and_every_node_clears_the_reference_price(tmp_path: Path) -> None:
    bus = Bus(tmp_path)
    bus.run(START + SETTLE_S + 6 * EPOCH_S)
    dirs = {n: m.directory for n, m in bus.markets.items()}
    first = dirs["n0"]
    assert first is not None and first.cells >= 2, first
    assert all(d == first for d in dirs.values()), "every node places the members alike"
    assert sorted(x for r in first.rosters.values() for x in r) == bus.names
    ref = solve([_bids(i) for i in range(N)]).price_eur_mwh
    last = math.floor((START + SETTLE_S + 6 * EPOCH_S) / EPOCH_S) - 1
    for epoch in range(last - 2, last + 1):
        prices = {n: bus.cleared[n][epoch].result.price_eur_mwh for n in bus.names}
        assert all(p == pytest.approx(ref, abs=1e-6) for p in prices.values()), (epoch, prices)
        assert len(set(prices.values())) == 1, "the same float on every node"
        heard = {bus.cleared[n][epoch].heard for n in bus.names}
        assert heard == {N - 1}, heard
    assert not any(bus.dropped.values()), bus.dropped


def test_a_restarted_member_gets_the_cards_again_and_clears_with_the_others(
    tmp_path: Path,
) -> None:
    bus = Bus(tmp_path)
    bus.run(START + SETTLE_S + 4 * EPOCH_S)
    before = bus.markets["n0"].directory
    restart = START + SETTLE_S + 4 * EPOCH_S + 0.2  # respawned within the card period
    bus.markets["n3"] = bus.start(3)
    bus.act("n3", restart, bus.markets["n3"].handle(restart, Tick()))
    bus.go(START + SETTLE_S + 10 * EPOCH_S)
    assert bus.markets["n3"].directory == before
    ref = solve([_bids(i) for i in range(N)]).price_eur_mwh
    last = math.floor((START + SETTLE_S + 10 * EPOCH_S) / EPOCH_S) - 1
    for epoch in (last - 1, last):
        prices = {bus.cleared[n][epoch].result.price_eur_mwh for n in bus.names}
        assert len(prices) == 1 and prices.pop() == pytest.approx(ref, abs=1e-6), epoch


def test_a_members_cards_flood_no_faster_than_the_gap(tmp_path: Path) -> None:
    bus = Bus(tmp_path, n=4)  # n0's neighbours: n3 and n1
    m = bus.markets["n0"]
    m.handle(START, Tick())
    signer = bus.signers["n2"]
    first = signer.card("mqtts://127.0.0.1:9002", START)
    out = m.handle(START, CardsIn("n1", (first,)))
    assert [a.target for a in out if isinstance(a, SendCards) and first in a.cards] == ["n3"]
    again = signer.card("mqtts://127.0.0.1:9002", START + 1)  # the same, re-signed
    moved = signer.card("mqtts://127.0.0.1:9102", START + 2)  # another broker, too soon
    later = signer.card("mqtts://127.0.0.1:9102", START + CARD_GAP_S)
    for card in (again, moved):
        out = m.handle(START + 2, CardsIn("n1", (card,)))
        assert not [a for a in out if isinstance(a, SendCards | Dropped)], card
    out = m.handle(START + CARD_GAP_S, CardsIn("n1", (later,)))
    assert [a.target for a in out if isinstance(a, SendCards) and later in a.cards] == ["n3"]
    assert m.broker_of("n2") == "mqtts://127.0.0.1:9102"
    # A neighbour's own card with a lower count gets every card held (once per 10 s), if it
    # checks; one that holds as many gets nothing.
    mine = bus.signers["n1"].card("mqtts://127.0.0.1:9001", START)
    out = m.handle(START + 31, CardsIn("n1", (mine,), held=1))
    assert {
        c.node for a in out if isinstance(a, SendCards) and a.target == "n1" for c in a.cards
    } == {"n0", "n2"}

    def store(out: list[object]) -> list[object]:  # every card held (its own card: no count)
        return [a for a in out if isinstance(a, SendCards) and a.held is None and a.target == "n1"]

    assert not store(m.handle(START + 32, CardsIn("n1", (mine,), held=1)))
    assert not store(m.handle(START + 45, CardsIn("n1", (mine,), held=3)))
    forged = attrs.evolve(mine, ts_s=START + 20)  # re-dated: its signature no longer holds
    assert not store(m.handle(START + 45, CardsIn("n1", (forged,), held=0)))


def test_a_card_not_its_members_own_is_refused_naming_the_sender(tmp_path: Path) -> None:
    bus = Bus(tmp_path, n=3)
    m = bus.markets["n0"]
    m.handle(START, Tick())
    evil = bus.signers["n2"]
    own = evil.card("mqtts://127.0.0.1:9999", START)
    forged = attrs.evolve(own, node="n1")  # n2's certificate in n1's name
    moved = attrs.evolve(own, broker="mqtts://10.0.0.1:1")  # the signature no longer holds
    ahead = evil.card("mqtts://127.0.0.1:9999", START + 3600)
    out = m.handle(START, CardsIn("n2", (forged, moved, ahead)))
    reasons = [a.reason for a in out if isinstance(a, Dropped) and a.sender == "n2"]
    assert any("card of n1 signed by n2's certificate" in r for r in reasons), reasons
    assert any("card of n2 with a signature that does not match it" in r for r in reasons)
    assert any("ahead of this clock" in r for r in reasons), reasons
    assert set(m.roster.cards) == {"n0"}
    # An expired card is no news; a valid one is held and passed on to the other neighbours.
    old = evil.card("mqtts://127.0.0.1:9999", START - CARD_TTL_S - 1)
    assert not [a for a in m.handle(START, CardsIn("n2", (old,))) if isinstance(a, Dropped)]
    out = m.handle(START, CardsIn("n2", (own,)))
    assert "n2" in m.roster.cards
    assert [a.target for a in out if isinstance(a, SendCards) and own in a.cards] == ["n1"]


def test_bad_cell_messages_are_refused_never_raised(tmp_path: Path) -> None:
    bus = Bus(tmp_path, n=4)
    bus.run(START + 3 * EPOCH_S)
    m = bus.markets["n0"]
    now = START + 3 * EPOCH_S + 0.01
    for data in (b"", b"{", b"[]", b'{"t":"propose","e":"x"}', b'{"t":"nope","e":1}', b"\xff"):
        out = m.handle(now, BodyIn("n1", data))
        assert any(isinstance(a, Dropped) and a.sender == "n1" for a in out), data
    stranger = m.handle(now, BodyIn("zz", b'{"t":"offers","e":1,"o":[]}'))
    assert any(isinstance(a, Dropped) and a.sender == "zz" for a in stranger)


def test_placement_is_deterministic_and_leaves_no_cell_small() -> None:
    keys = {f"n{i}": bytes([i]) * 32 for i in range(8)}
    a = place(b"seed", keys, 3)
    assert a == place(b"seed", dict(reversed(list(keys.items()))), 3)
    assert a.cells == 2 and sorted(len(r) for r in a.rosters.values()) == [4, 4]
    big = place(b"seed", {f"n{i}": bytes([i % 256, i // 256]) * 16 for i in range(200)}, 16)
    assert big.cells == 16 and min(len(r) for r in big.rosters.values()) >= 4
    # Cells of one would check no offer, cells of three stop at one silent member: never.
    assert place(b"seed", keys, 1).cells == 2
    six = {n: k for n, k in keys.items() if n < "n6"}
    assert place(b"seed", six, 3).cells == 1
    assert place(b"seed", {"n0": b"k"}, 3).cells == 1
    with pytest.raises(RedyError):
        place(b"seed", {}, 3)


def test_deadlines_move_on_at_the_magnitude_of_a_real_clock(tmp_path: Path) -> None:
    """Woken at each deadline, a lone node's market moves on (a deadline that stays behind
    would turn its driver's loop without end): about 3 wakes a second, whatever the clock."""
    m = Bus(tmp_path, n=1).markets["n0"]
    now = start = 1_765_432_109.87  # UNIX time: a float's step here is 2.4e-7 s
    wakes = 0
    while now < start + 30 and wakes < 1000:
        m.handle(now, Tick())
        now = max(now, m.next_deadline())
        wakes += 1
    assert now >= start + 30 and wakes < 200, wakes


def test_mangled_cards_are_refused_in_one_line_never_raised(tmp_path: Path) -> None:
    bus = Bus(tmp_path, n=3)
    m = bus.markets["n0"]
    m.handle(START, Tick())
    good = bus.signers["n2"].card("mqtts://127.0.0.1:9002", START)
    rng = random.Random(25)
    junk = [
        "",
        "not base64!",
        base64.b64encode(rng.randbytes(700)).decode(),
        good.cert[:-8],
        good.cert[::-1],
        good.sig,
    ]
    refused = 0
    for i in range(300):
        field = rng.choice(["cert", "sig", "node", "ts_s"])
        if field == "ts_s":
            value: object = rng.choice([0.0, START - CARD_TTL_S, START + 1e9, START + i])
        elif field == "node":
            value = rng.choice(["n1", "n0", "zz", "n2"])
        else:
            value = rng.choice(junk)
        card = attrs.evolve(good, **{field: value})
        sender = rng.choice(["n1", "n2"])
        out = m.handle(START + 1, CardsIn(sender, (card,)))
        drops = [a for a in out if isinstance(a, Dropped)]
        assert all(d.sender == sender and "\n" not in d.reason for d in drops)
        refused += len(drops)
    assert refused > 30  # the rest is no news (a card of a held member, no later): unchecked
    assert set(m.roster.cards) <= {"n0", "n2"}
