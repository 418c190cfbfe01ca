"""The offer market (redy.balancing.offers): exact clearing against the reference solver, the
epoch core over in-memory links with a fake clock and real grid certificates, and what a hostile
member tries: forged, invented, oversized and two-faced offers."""

from __future__ import annotations

import heapq
import itertools
import math
import random
from pathlib import Path

import attrs
import pytest

from redy import messages, pki
from redy.balancing import reference
from redy.balancing.curves import Bid, Dispatchable, Fixed, FlexibleLoad, Storage
from redy.balancing.offers import (
    BACK_LINKS,
    FRESH_EPOCHS,
    Action,
    Cleared,
    Dropped,
    Event,
    OfferCore,
    Received,
    Refused,
    Send,
    Tick,
    Timing,
    clear,
    offer_refusal,
    offer_values,
)
from redy.signing import Signer, Verifier

CAPACITY_KW = 10_000.0


def _bids(rng: random.Random) -> list[Bid]:
    out: list[Bid] = []
    for _ in range(rng.randint(1, 4)):
        k = rng.random()
        if k < 0.3:
            lo = rng.uniform(0, 200)
            hi = lo + rng.uniform(0, 80) if rng.random() < 0.5 else None
            p_min = rng.uniform(0, 50)
            out.append(Dispatchable(p_min, p_min + rng.uniform(1, 500), lo, cost_max_eur_mwh=hi))
        elif k < 0.6:
            out.append(Fixed(-rng.uniform(0, 300)))
        elif k < 0.8:
            out.append(FlexibleLoad(rng.uniform(1, 100), rng.uniform(20, 300)))
        else:
            cb = rng.uniform(20, 100)
            out.append(Storage(rng.uniform(1, 50), rng.uniform(1, 50), cb, cb + rng.uniform(0, 80)))
    return out


def test_clearing_matches_the_reference_solver() -> None:
    """The crossing of the exact sum, found on the line between two blocks' costs (not the
    reference's prefix sums): the same price to 1e-6 EUR/MWh and every bid's dispatch to 1e-6
    kW, shortages and surpluses included."""
    rng = random.Random(7)
    statuses = set()
    for _ in range(200):
        nodes = [_bids(rng) for _ in range(rng.randint(1, 25))]
        ref = reference.solve(nodes)
        offers = [offer_values(b) for b in nodes]
        got = clear(offers, offers[0])
        statuses.add(ref.status)
        assert got.status == ref.status
        assert got.price_eur_mwh == pytest.approx(ref.price_eur_mwh, abs=1e-6)
        for bids, want in zip(nodes, ref.dispatch_kw, strict=True):
            for b, kw in zip(bids, want, strict=True):
                assert got.dispatch_kw(b) == pytest.approx(kw, abs=1e-6)
    assert "cleared" in statuses


def test_a_shortage_says_how_much_load_is_not_served() -> None:
    nodes: list[list[Bid]] = [[Dispatchable(0, 100, 50.0)], [Fixed(-300.0)], [Fixed(-100.0)]]
    offers = [offer_values(b) for b in nodes]
    got = clear(offers, offers[1])
    assert got.status == "shortage" and got.price_eur_mwh == 4000.0
    assert got.unserved_kw == pytest.approx(300 * 300 / 400)  # its share of the 300 kW short


# --- the core over in-memory links ------------------------------------------------------------


@pytest.fixture(scope="module")
def grid_pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("pki")
    pki.ensure_ca(d)
    return d


def _identity(d: Path, name: str) -> pki.Identity:
    return pki.issue(d, name, ["127.0.0.1"])


class Net:
    """Every message arrives `latency_s` later, plus up to `jitter_s` (queueing on a loaded
    host, at random); sends to `dead` nodes are refused at once."""

    def __init__(
        self, views: dict[str, list[str]], latency_s: float = 0.002, jitter_s: float = 0.0
    ) -> None:
        self.views = views
        self.latency_s = latency_s
        self.jitter_s = jitter_s
        self._rng = random.Random(11)
        self.dead: set[str] = set()
        self.cleared: dict[str, list[Cleared]] = {}
        self.dropped: list[tuple[str, Dropped]] = []
        self.sent = 0
        self.offers = 0  # offers carried
        self._q: list[tuple[float, int, str, Event]] = []
        self._seq = itertools.count()

    def deliver(self, at: float, to: str, event: Event) -> None:
        heapq.heappush(self._q, (at, next(self._seq), to, event))

    def run(self, cores: dict[str, OfferCore], start: float, until: float) -> None:
        now = start
        for n, c in cores.items():
            self._act(n, now, c.handle(now, Tick()))
        while now < until:
            deadline, n = min((c.next_deadline(), n) for n, c in cores.items())
            event: Event
            if self._q and self._q[0][0] <= deadline:
                now, _, n, event = heapq.heappop(self._q)
                if n not in cores:
                    continue
            else:
                now, event = deadline, Tick()
            self._act(n, now, cores[n].handle(now, event))

    def _act(self, node: str, now: float, actions: list[Action]) -> None:
        for a in actions:
            if isinstance(a, Cleared):
                self.cleared.setdefault(node, []).append(a)
            elif isinstance(a, Dropped):
                self.dropped.append((node, a))
            elif isinstance(a, Send):
                self.sent += 1
                self.offers += len(a.offers)
                if a.target in self.dead:
                    self.deliver(now, node, Refused(a.target, a.epoch, a.offers))
                else:
                    got = Received(node, a.epoch, a.offers)
                    delay = self.latency_s + self._rng.uniform(0.0, self.jitter_s)
                    self.deliver(now + delay, a.target, got)


def _grid(
    d: Path, n: int, seed: int = 1, c: int = 5
) -> tuple[dict[str, list[Bid]], dict[str, list[str]], dict[str, Signer], Verifier]:
    rng = random.Random(seed)
    names = [f"n{i}" for i in range(n)]
    bids = {name: _bids(rng) for name in names}
    bids["n0"] = [Dispatchable(0, 5000, 40.0, cost_max_eur_mwh=90.0)]  # always a crossing
    views = {
        name: sorted({names[(i + 1) % n], *rng.sample([m for m in names if m != name], c)})
        for i, name in enumerate(names)
    }
    signers = {name: Signer(_identity(d, name)) for name in names}
    return bids, views, signers, Verifier(pki.pki_dir(d) / "ca.crt")


def _cores(
    bids: dict[str, list[Bid]],
    views: dict[str, list[str]],
    signers: dict[str, Signer],
    verifier: Verifier,
    timing: Timing | None = None,
) -> dict[str, OfferCore]:
    return {
        name: OfferCore(
            name,
            timing or Timing(epoch_s=4.0),
            lambda b=b: b,  # type: ignore[misc]
            lambda v=views[name]: v,  # type: ignore[misc]
            signers[name].sign,
            verifier.refusal,
            CAPACITY_KW,
        )
        for name, b in bids.items()
    }


def _own_core(
    name: str, bids: list[Bid], view: list[str], signer: Signer, ca: Path
) -> tuple[OfferCore, Verifier]:
    """A node as the governance builds it: its own verifier, certificates sent once per
    neighbour, its own offer held to its certified limits."""
    verifier = Verifier(ca, CAPACITY_KW)
    core = OfferCore(
        name,
        Timing(epoch_s=4.0),
        lambda: bids,
        lambda: view,
        signer.sign,
        verifier.refusal,
        CAPACITY_KW,
        bounds_kw=signer.grant.bounds_kw(CAPACITY_KW),
        cert_of=verifier.cert_of,
    )
    return core, verifier


def test_every_node_clears_the_exact_price_in_a_few_hops(grid_pki: Path) -> None:
    bids, views, signers, verifier = _grid(grid_pki, 30)
    net = Net(views)
    net.run(_cores(bids, views, signers, verifier), 399.0, 401.0)
    names = sorted(bids)
    ref = reference.solve([bids[n] for n in names])
    assert ref.status == "cleared"
    for name, want in zip(names, ref.dispatch_kw, strict=True):
        last = net.cleared[name][-1]
        assert last.epoch == 100 and last.heard == 29
        assert last.result.price_eur_mwh == pytest.approx(ref.price_eur_mwh, abs=1e-6)
        for b, kw in zip(bids[name], want, strict=True):
            assert last.result.dispatch_kw(b) == pytest.approx(kw, abs=1e-6)
        # A few waves of 80 ms, then the settling time: well within the epoch.
        assert last.elapsed_s < 0.4
    assert not net.dropped
    # Each offer crosses each link at most once; in waves, a node sends a few messages per
    # neighbour in the epoch, not one per offer.
    links = sum(len(v) for v in views.values())
    assert net.offers <= 30 * links
    assert net.sent <= 4 * links


def test_a_node_in_no_ones_view_still_hears_every_offer(grid_pki: Path) -> None:
    """Views are directed: in a grid of three, a shuffle can leave house in no one's view while
    it still has both others in its own. Those it sends its offer to send theirs back (a few
    senders outside the view, BACK_LINKS), so it clears with both, at the exact price. A
    sender that cannot be reached back is not tried again in the epoch."""
    bids, _, signers, verifier = _grid(grid_pki, 3, seed=3, c=1)
    gas, factory, house = sorted(bids)
    views = {gas: [factory], factory: [gas], house: [gas, factory]}
    net = Net(views)
    net.run(_cores(bids, views, signers, verifier), 399.0, 401.0)
    ref = reference.solve([bids[n] for n in sorted(bids)])
    for name in bids:
        last = net.cleared[name][-1]
        assert last.epoch == 100 and last.heard == 2, name
        assert last.result.price_eur_mwh == pytest.approx(ref.price_eur_mwh, abs=1e-6)

    back: list[str] = []
    act = net._act

    def watch(node: str, now: float, actions: list[Action]) -> None:
        back.extend(node for a in actions if isinstance(a, Send) and a.target == house)
        act(node, now, actions)

    net._act = watch  # type: ignore[method-assign]
    net.dead = {house}  # its broker is gone; its governance still writes to the others
    net.run(_cores(bids, views, signers, verifier), 403.9, 405.0)
    assert sorted(back) == [gas, factory]  # one try each, though the epoch went on


@pytest.mark.parametrize("settle_s", [0.1, 0.5])  # shorter and longer than three waves
def test_from_the_second_epoch_a_node_clears_once_every_peer_of_the_last_is_in(
    grid_pki: Path, settle_s: float
) -> None:
    """No settling wait once the membership is known: each node clears when the last of the
    previous epoch's peers' offers arrives. The first epoch (no membership yet) settles."""
    bids, views, signers, verifier = _grid(grid_pki, 20, seed=5)
    net = Net(views, latency_s=0.01)
    timing = Timing(epoch_s=4.0, settle_s=settle_s)
    settle = timing.settle_s
    net.run(_cores(bids, views, signers, verifier, timing), 399.0, 405.0)
    ref = reference.solve([bids[n] for n in sorted(bids)])
    for name in bids:
        first = [c for c in net.cleared[name] if c.epoch == 100][-1]
        (second,) = [c for c in net.cleared[name] if c.epoch == 101]  # one clearing, complete
        assert first.heard == second.heard == 19
        assert first.elapsed_s >= settle  # epoch 100: it waited for the settling time
        # Epoch 101: at the last offer's arrival (the same hops as in epoch 100), no wait.
        assert second.elapsed_s <= first.elapsed_s - settle + 1e-9
        assert second.result.price_eur_mwh == pytest.approx(ref.price_eur_mwh, abs=1e-6)


def test_past_a_crowd_the_waves_slow_down_and_send_fewer_messages(grid_pki: Path) -> None:
    """30 nodes: the first epoch passes offers on every 80 ms; the next, with 29 peers known
    (more than the crowd of 20), every 300 ms, in fewer messages, to the same exact price."""
    timing = Timing(epoch_s=4.0)
    assert timing.for_peers(20) == (0.08, 0.1)
    assert timing.for_peers(21) == pytest.approx((0.3, 0.32))
    bids, views, signers, verifier = _grid(grid_pki, 30, seed=6)
    # A loaded host: messages queue for up to a few short waves.
    net = Net(views, latency_s=0.02, jitter_s=0.3)
    cores = _cores(bids, views, signers, verifier)
    net.run(cores, 399.0, 403.9)
    first = sum(c.sent[0] for c in cores.values())
    net.run(cores, 403.9, 406.5)
    second = sum(c.sent[0] for c in cores.values())
    assert second < 0.8 * first
    ref = reference.solve([bids[n] for n in sorted(bids)])
    for name in bids:
        last = net.cleared[name][-1]
        assert last.epoch == 101 and last.heard == 29
        assert last.result.price_eur_mwh == pytest.approx(ref.price_eur_mwh, abs=1e-6)


def test_past_a_crowd_offers_go_on_to_a_few_neighbours_to_the_same_exact_price(
    grid_pki: Path,
) -> None:
    """40 nodes, views of about 12: in the second epoch (39 peers known) a node sends its own
    offer to every neighbour but passes the others' on to `crowd_fanout` (8) of them only, a
    draw per epoch. Each offer then reaches a node about a third fewer times, and every node
    still holds every offer and clears the exact price."""
    bids, views, signers, verifier = _grid(grid_pki, 40, seed=9, c=12)
    net = Net(views, latency_s=0.01, jitter_s=0.05)
    relayed: dict[tuple[int, str], set[str]] = {}
    act = net._act

    def watch(node: str, now: float, actions: list[Action]) -> None:
        for a in actions:
            if isinstance(a, Send) and any(o.node != node for o in a.offers):
                relayed.setdefault((a.epoch, node), set()).add(a.target)
        act(node, now, actions)

    net._act = watch  # type: ignore[method-assign]
    cores = _cores(bids, views, signers, verifier)
    net.run(cores, 399.0, 403.9)
    first = net.offers
    net.run(cores, 403.9, 406.5)
    second = net.offers - first
    assert second < 0.8 * first
    for name in bids:
        others = set(views[name]) - {name}
        # The first epoch: every neighbour, and a few senders outside the view (BACK_LINKS).
        assert others <= relayed[(100, name)]
        assert len(relayed[(100, name)]) <= len(others) + BACK_LINKS
        assert len(relayed[(101, name)]) <= 8  # (fewer when a relay already has it all)
    ref = reference.solve([bids[n] for n in sorted(bids)])
    for name in bids:
        (cleared,) = [c for c in net.cleared[name] if c.epoch == 101]
        assert cleared.heard == 39
        assert cleared.result.price_eur_mwh == pytest.approx(ref.price_eur_mwh, abs=1e-6)


def test_nodes_waves_interleave_so_an_offer_waits_less_than_a_wave_per_hop(
    grid_pki: Path,
) -> None:
    """Each node's waves keep the epoch's period at a phase of their own: an offer that
    arrives just after one neighbour's wave waits for it, not for a wave at the same instant on
    every node. With 300 ms waves (past the crowd) and 5 ms links, every node holds every
    offer within one and a half waves, fewer than the two waves of hops that aligned waves
    need at least."""
    bids, views, signers, verifier = _grid(grid_pki, 40, seed=10, c=8)
    net = Net(views, latency_s=0.005)
    cores = _cores(bids, views, signers, verifier)
    net.run(cores, 399.0, 403.9)
    net.run(cores, 403.9, 406.5)
    for name in bids:
        (cleared,) = [c for c in net.cleared[name] if c.epoch == 101]
        assert cleared.heard == 39
        assert cleared.elapsed_s < 1.5 * 0.3


def test_with_a_peer_of_the_last_epoch_missing_a_node_waits_three_waves_of_quiet(
    grid_pki: Path,
) -> None:
    """A lull is no sign that every offer is in while a known peer's is missing: the node
    clears once, after three waves with nothing new, not at the first short lull (a partial
    price). A peer that is gone then costs those three waves in that epoch only."""
    bids, views, signers, verifier = _grid(grid_pki, 30, seed=8)
    net = Net(views, latency_s=0.02, jitter_s=0.3)
    cores = _cores(bids, views, signers, verifier)
    net.run(cores, 399.0, 403.9)
    del cores["n7"]
    net.dead.add("n7")
    net.run(cores, 403.9, 406.5)
    ref = _reference_without(bids, "n7")
    for name in cores:
        (cleared,) = [c for c in net.cleared[name] if c.epoch == 101]
        assert cleared.heard == 28 and cleared.elapsed_s >= 3 * 0.3
        assert cleared.result.price_eur_mwh == pytest.approx(ref.price_eur_mwh, abs=1e-6)


def _hostile(
    grid_pki: Path,
    bids: dict[str, list[Bid]],
    views: dict[str, list[str]],
    signers: dict[str, Signer],
    verifier: Verifier,
    offers: list[messages.NodeOffer],
    start: float = 399.0,
) -> Net:
    """A member ('n1', its own core replaced) sends `offers` to every node it knows, just
    after epoch 100 starts (an unsigned message stamped with an epoch that has not started
    ends nothing: test_a_forged_early_message_ends_no_epoch)."""
    cores = _cores(bids, views, signers, verifier)
    del cores["n1"]
    net = Net(views)
    for target in views["n1"]:
        net.deliver(start + 1.01, target, Received("n1", 100, tuple(offers)))
    net.run(cores, start, start + 2.0)
    return net


def _reference_without(bids: dict[str, list[Bid]], *left_out: str) -> reference.Reference:
    return reference.solve([b for n, b in sorted(bids.items()) if n not in left_out])


def test_forged_and_invented_offers_are_dropped_and_their_relay_named(grid_pki: Path) -> None:
    bids, views, signers, verifier = _grid(grid_pki, 12, seed=2)
    honest = signers["n3"].sign(100, offer_values(bids["n3"]))
    forged = attrs.evolve(honest, values=(0.0, CAPACITY_KW, 400.0, 400.0))  # n3 selling at 400
    # An invented member with a certificate from another CA.
    other = grid_pki.parent / "other-ca"
    pki.ensure_ca(other)
    sybil = Signer(_identity(other, "ghost")).sign(100, (-CAPACITY_KW,))
    # n1's real certificate, claiming to be n4.
    stolen = attrs.evolve(signers["n1"].sign(100, (0.0,)), node="n4")
    net = _hostile(grid_pki, bids, views, signers, verifier, [forged, sybil, stolen])
    reasons = [d.reason for _, d in net.dropped if d.sender == "n1"]
    assert any("signature that does not match" in r for r in reasons)
    assert any("the grid CA did not issue" in r for r in reasons)
    assert any("signed by n1's certificate" in r for r in reasons)
    # n3's true offer still reached everyone (from n3 itself), and n1 took no part.
    ref = _reference_without(bids, "n1")
    for name in bids:
        if name != "n1":
            got = net.cleared[name][-1].result
            assert got.price_eur_mwh == pytest.approx(ref.price_eur_mwh, abs=1e-6)


def test_a_member_moves_the_price_only_within_its_capacity(grid_pki: Path) -> None:
    bids, views, signers, verifier = _grid(grid_pki, 12, seed=3)
    over = signers["n1"].sign(100, (-2 * CAPACITY_KW,))  # a load beyond the grid's bound
    net = _hostile(grid_pki, bids, views, signers, verifier, [over])
    assert any("beyond the grid's bound" in d.reason for _, d in net.dropped)
    legal = signers["n1"].sign(100, (-CAPACITY_KW / 10,))
    net = _hostile(grid_pki, bids, views, signers, verifier, [legal])
    # Exactly what an honest member of that load would do.
    with_member = dict(bids, n1=[Fixed(-CAPACITY_KW / 10)])
    ref = _reference_without(with_member)
    for name in bids:
        if name != "n1":
            got = net.cleared[name][-1].result
            assert got.price_eur_mwh == pytest.approx(ref.price_eur_mwh, abs=1e-6)


def test_a_two_faced_member_is_left_out_by_everyone(grid_pki: Path) -> None:
    """It signs a cheap offer for some nodes and a dear one for others: both are passed on, so
    every honest node sees both and clears without it, at one price."""
    bids, views, signers, verifier = _grid(grid_pki, 12, seed=4)
    cheap = signers["n1"].sign(100, (0.0, 3000.0, -100.0, -100.0))
    dear = signers["n1"].sign(100, (-3000.0,))
    cores = _cores(bids, views, signers, verifier)
    del cores["n1"]
    net = Net(views)
    for i, target in enumerate(views["n1"]):
        net.deliver(399.01, target, Received("n1", 100, (cheap if i % 2 else dear,)))
    net.run(cores, 399.0, 401.0)
    ref = _reference_without(bids, "n1")
    for name in cores:
        got = net.cleared[name][-1]
        assert got.result.price_eur_mwh == pytest.approx(ref.price_eur_mwh, abs=1e-6)


def test_a_dead_neighbour_costs_nothing_and_a_refused_send_is_retried(grid_pki: Path) -> None:
    bids, views, signers, verifier = _grid(grid_pki, 12, seed=5)
    cores = _cores(bids, views, signers, verifier)
    del cores["n2"]
    net = Net(views)
    net.dead = {"n2"}
    net.run(cores, 399.0, 401.0)
    ref = _reference_without(bids, "n2")
    for name in cores:
        got = net.cleared[name][-1]
        assert got.result.price_eur_mwh == pytest.approx(ref.price_eur_mwh, abs=1e-6)
        assert got.heard == 10


def test_offers_of_another_epoch_are_ignored(grid_pki: Path) -> None:
    bids, views, signers, verifier = _grid(grid_pki, 6, seed=6)
    stale = signers["n1"].sign(99, (-CAPACITY_KW,))
    net = _hostile(grid_pki, bids, views, signers, verifier, [stale])
    ref = _reference_without(bids, "n1")
    for name in bids:
        if name != "n1":
            assert net.cleared[name][-1].result.price_eur_mwh == pytest.approx(
                ref.price_eur_mwh, abs=1e-6
            )


# --- certified limits, roles, early epochs, certificates sent once ------------------------------


def test_a_household_offering_megawatts_is_held_to_its_certified_size(tmp_path: Path) -> None:
    """n1, certified for 20 kW import and 10 kW export, signs 9 MW at the floor, then 9 MW of
    load at the cap: every honest node drops both, naming n1, and clears at the honest optimum.
    Within its limits (its full 10 kW at the floor) it moves the price exactly as an honest
    member of that size would."""
    pki.ensure_ca(tmp_path)
    bids, views, signers, verifier = _grid(tmp_path, 12, seed=3)
    signers["n1"] = Signer(pki.issue(tmp_path, "n1", ["127.0.0.1"], pki.Grant("node", 20.0, 10.0)))
    verifier = Verifier(pki.pki_dir(tmp_path) / "ca.crt", CAPACITY_KW)
    for lie in [(0.0, 9000.0, -500.0, -500.0), (-9000.0,)]:
        net = _hostile(tmp_path, bids, views, signers, verifier, [signers["n1"].sign(100, lie)])
        reasons = [d.reason for _, d in net.dropped if d.sender == "n1"]
        assert reasons and all("certified limits of -20..10 kW" in r for r in reasons)
        assert all("offer of n1" in r for r in reasons)
        ref = _reference_without(bids, "n1")
        for name in bids:
            if name != "n1":
                got = net.cleared[name][-1].result.price_eur_mwh
                assert got == pytest.approx(ref.price_eur_mwh, abs=1e-6)
    legal = signers["n1"].sign(100, (0.0, 10.0, -500.0, -500.0))
    net = _hostile(tmp_path, bids, views, signers, verifier, [legal])
    ref = _reference_without(dict(bids, n1=[Dispatchable(0.0, 10.0, -500.0)]))
    for name in bids:
        if name != "n1":
            got = net.cleared[name][-1].result.price_eur_mwh
            assert got == pytest.approx(ref.price_eur_mwh, abs=1e-6)


def test_an_honest_node_bids_no_more_than_its_certificate(tmp_path: Path) -> None:
    signer = Signer(pki.issue(tmp_path, "gas-7", [], pki.Grant("node", 5.0, 400.0)))
    values = offer_values(
        [Fixed(-2.0), Dispatchable(0, 2000, 60.0)], CAPACITY_KW, signer.grant.bounds_kw(1e4)
    )
    assert values == (-2.0, 402.0, 60.0, 60.0)  # 2000 kW cut to the 400 kW export, net


def test_operators_and_reserved_names_are_no_members(tmp_path: Path) -> None:
    """An operator's certificate (CN operator.PERSON, role operator) signs a valid offer: every
    node drops it. So does a certificate of a reserved name from before roles (no grant), and
    no node certificate can be issued under a reserved name."""
    pki.ensure_ca(tmp_path)
    verifier = Verifier(pki.pki_dir(tmp_path) / "ca.crt", CAPACITY_KW)
    op = Signer(pki.issue_operator(tmp_path, "alice"))
    assert op.node == "operator.alice"
    why = verifier.refusal(op.sign(100, (-1.0,)))
    assert why is not None and "role operator, not a node" in why
    legacy = Signer(pki._issue(tmp_path, "operator", ["127.0.0.1"], pki.Grant()))
    why = verifier.refusal(legacy.sign(100, (-1.0,)))
    assert why is not None and "reserved name 'operator'" in why
    for name in pki.RESERVED_NAMES:
        with pytest.raises(pki.BrokerError, match="reserved"):
            pki.issue(tmp_path, name, ["127.0.0.1"])


def _early_starts(net: Net, cores: dict[str, OfferCore], start: float) -> set[str]:
    """Run epoch 99's last second; the nodes that sent an offer of epoch 100 before 400 s."""
    early: set[str] = set()
    send = net._act

    def spy(node: str, now: float, actions: list[Action]) -> None:
        if now < 400.0 and any(isinstance(a, Send) and a.epoch == 100 for a in actions):
            early.add(node)
        send(node, now, actions)

    net._act = spy  # type: ignore[method-assign]
    net.run(cores, start, 400.5)
    return early


def test_a_forged_early_message_ends_no_epoch(grid_pki: Path) -> None:
    """In the last quarter of epoch 99 a member sends messages stamped with epoch 100 that
    carry no valid offer: no node ends epoch 99 or starts 100 before its own clock says so. A
    member's genuine early offer does (its clock is a little ahead): its receivers start,
    and theirs in turn."""
    bids, views, signers, verifier = _grid(grid_pki, 12, seed=7)
    forged = attrs.evolve(signers["n3"].sign(100, (0.0,)), values=(-5000.0,))
    for offer, starts in [(forged, False), (signers["n1"].sign(100, (0.0,)), True)]:
        cores = _cores(bids, views, signers, verifier)
        del cores["n1"]
        net = Net(views)
        net.run(cores, 396.0, 399.0)
        for target in views["n1"]:
            net.deliver(399.01, target, Received("n1", 100, (offer,)))
        early = _early_starts(net, cores, 399.0)
        direct = {t for t in views["n1"] if t in cores}
        assert early >= direct if starts else early == set()


def test_certificates_ride_only_while_new_even_as_views_change(tmp_path: Path) -> None:
    """A node's certificate rides along with its offers for its first FRESH_EPOCHS epochs only
    (every member holds it then), and to a newcomer for its first epochs; views drawn afresh
    every epoch (shuffles) change nothing: after that, only the pairs' refreshes (1 in 64
    epochs) carry one, and every node still clears the exact price. A node that restarts (a
    new session, no certificates held) gets them again and clears with every peer within an
    epoch of its return."""
    pki.ensure_ca(tmp_path)
    ca = pki.pki_dir(tmp_path) / "ca.crt"
    bids, views, _, _ = _grid(tmp_path, 20, seed=9)
    idents = {n: pki.identity(tmp_path, n) for n in bids}
    cores = {n: _own_core(n, bids[n], views[n], Signer(idents[n], session=1), ca)[0] for n in bids}
    net = Net(views)
    carried: list[messages.NodeOffer] = []
    send = net._act

    def spy(node: str, now: float, actions: list[Action]) -> None:
        carried.extend(o for a in actions if isinstance(a, Send) for o in a.offers)
        send(node, now, actions)

    net._act = spy  # type: ignore[method-assign]
    rng = random.Random(4)
    names = sorted(bids)
    net.run(cores, 399.0, 401.0)
    assert sum(o.cert is not None for o in carried) >= len(bids)  # every one went out
    ref = _reference_without(bids)
    for epoch in range(101, 106):
        for name in names:  # the overlay shuffled: new neighbours everywhere
            views[name][:] = rng.sample([m for m in names if m != name], 6)
        carried.clear()
        net.run(cores, epoch * 4.0 - 0.1, epoch * 4.0 + 1.0)
        with_cert = sum(o.cert is not None for o in carried)
        if epoch >= 100 + FRESH_EPOCHS:
            assert carried and with_cert <= len(carried) / 16, (epoch, with_cert, len(carried))
        for name in bids:
            last = net.cleared[name][-1]
            assert last.epoch == epoch and last.heard == 19
            assert last.result.price_eur_mwh == pytest.approx(ref.price_eur_mwh, abs=1e-6)
    # n4 restarts: a new core and verifier (it holds no certificate), a new session.
    cores["n4"] = _own_core("n4", bids["n4"], views["n4"], Signer(idents["n4"], session=2), ca)[0]
    net.run(cores, 431.9, 437.0)  # epochs 108 (its return) and 109
    (late,) = [c for c in net.cleared["n4"] if c.epoch == 109][-1:]
    assert late.heard == 19
    assert late.result.price_eur_mwh == pytest.approx(ref.price_eur_mwh, abs=1e-6)


def test_an_offer_refused_once_costs_no_check_when_it_comes_again(grid_pki: Path) -> None:
    """A member that sends the same bad offer again and again (or a third offer after two of
    its own were caught) makes each node check its signature once in the epoch, not once per
    copy: 1 or 30 copies cost the same signature checks."""
    checks = []
    for copies in (1, 30):
        bids, views, signers, _ = _grid(grid_pki, 12, seed=3)
        verifier = Verifier(pki.pki_dir(grid_pki) / "ca.crt", CAPACITY_KW)
        over = signers["n1"].sign(100, (-2 * CAPACITY_KW,))
        cheap = signers["n1"].sign(100, (0.0, 10.0, -100.0, -100.0))
        dear = signers["n1"].sign(100, (-10.0,))
        third = signers["n1"].sign(100, (-20.0,))
        offers = [over, cheap, dear] + [over, third] * (copies - 1)
        net = _hostile(grid_pki, bids, views, signers, verifier, offers)
        assert any("beyond the grid's bound" in d.reason for _, d in net.dropped)
        checks.append(verifier.checked)
    assert checks[0] == checks[1]


def test_certified_limits_hold_on_a_grid_with_no_bound_of_its_own() -> None:
    """A Verifier built with its default (no grid-wide bound: capacity inf) still holds a
    household to its certificate: the rounding room once scaled by the grid's bound, so an
    infinite one let a 90 MW offer through limits of 25 kW in and 10 kW out."""
    limits = (-25.0, 10.0)
    assert offer_refusal([90_000.0], math.inf, limits) is not None
    assert offer_refusal([-90_000.0], math.inf, limits) is not None
    assert offer_refusal([-25.0, 35.0, 10.0, 20.0], math.inf, limits) is None
    assert offer_refusal([10.0 + 1e-12], math.inf, limits) is None  # rounding, not a lie
    assert offer_refusal([1e12], math.inf) is None  # no bound at all: none to break
