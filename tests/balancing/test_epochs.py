"""The market's epoch and round core with a fake clock and in-memory links (pure)."""

from __future__ import annotations

import random

import numpy as np
import pytest

from redy.balancing.aggregation import GossipOut, MassBounds, PushSum
from redy.balancing.curves import Bid, Dispatchable, Fixed, FlexibleLoad
from redy.balancing.discovery import PhaseGossip
from redy.balancing.epochs import (
    Cleared,
    ClockOffsets,
    MarketCore,
    Pacing,
    Received,
    Refused,
    Send,
    Tick,
)
from redy.balancing.inmemory import Adversary, InMemoryLinks
from redy.balancing.reference import solve
from redy.errors import RedyError

pytestmark = pytest.mark.pure


def _bids(i: int) -> list[Bid]:
    rng = random.Random(i)
    if i % 4 == 0:
        return [Dispatchable(0, rng.uniform(200, 900), rng.uniform(30, 150), cost_max_eur_mwh=None)]
    if i % 4 == 1:
        return [Dispatchable(50, 600, 40.0, cost_max_eur_mwh=rng.uniform(60, 200))]
    return [Fixed(-rng.uniform(100, 400)), FlexibleLoad(80, rng.uniform(20, 300))]


def _cores(links: InMemoryLinks, pacing: Pacing, live: list[int]) -> dict[int, MarketCore]:
    return {
        i: MarketCore(
            PushSum(i, random.Random(i)),
            pacing,
            bids=lambda i=i: _bids(i),  # type: ignore[misc]
            neighbours=lambda i=i: links.views[i],  # type: ignore[misc]
        )
        for i in live
    }


def test_every_node_holds_the_optimal_price_a_few_round_trips_into_the_epoch() -> None:
    n = 30
    links = InMemoryLinks(n, latency_s=0.002)
    pacing = Pacing(epoch_s=4.0, round_s=0.004)
    cores = _cores(links, pacing, list(range(n)))
    links.run(cores, start_s=3.5, until_s=12.0)  # starts mid-epoch 0: waits for epoch 1
    ref = solve([_bids(i) for i in range(n)])
    by_epoch: dict[int, list[Cleared]] = {}
    for c in links.cleared:
        by_epoch.setdefault(c.epoch, []).append(c)
    assert sorted(by_epoch) == [1, 2]
    for clears in by_epoch.values():
        assert len(clears) == n
        for c in clears:
            assert abs(c.result.price_eur_mwh - ref.price_eur_mwh) <= 0.01
            # Paced by arrivals: 3 phases x 60 pushes at 2-4 ms each, where pacing the rounds
            # at epoch_s / (rounds + 2) would take 3.9 s for one phase.
            assert c.elapsed_s < 1.0
        total = sum(c.result.dispatch_kw(b) for c in clears for b in c.bids)
        assert abs(total) < 1e-3 * sum(
            -b.injection_kw(0) for i in range(n) for b in _bids(i) if isinstance(b, Fixed)
        )


def test_refused_pushes_keep_their_mass_and_the_live_nodes_clear_among_themselves() -> None:
    n = 24
    dead = frozenset({3, 11})
    links = InMemoryLinks(n, latency_s=0.001, dead=dead)
    live = [i for i in range(n) if i not in dead]
    cores = _cores(links, Pacing(epoch_s=2.0, round_s=0.003), live)
    links.run(cores, start_s=2.0, until_s=3.9)
    ref = solve([_bids(i) for i in live])
    assert len(links.cleared) == len(live)
    for c in links.cleared:
        assert abs(c.result.price_eur_mwh - ref.price_eur_mwh) <= 0.01


def test_a_message_of_the_next_epoch_starts_a_node_whose_clock_is_behind() -> None:
    pacing = Pacing(epoch_s=4.0)
    core = MarketCore(PushSum(0, random.Random(0)), pacing, lambda: _bids(0), lambda: [1])
    peer = MarketCore(PushSum(1, random.Random(1)), pacing, lambda: _bids(1), lambda: [0])
    assert core.handle(3.9, Tick()) == []  # mid-epoch 0: waits
    (first,) = peer.handle(4.0, Tick())  # the peer's clock reached epoch 1: it pushes
    assert isinstance(first, Send)
    core.handle(3.95, Received(first.msg))
    assert core.epoch == 1 and core.discovery.epoch == 1
    # A message from far ahead (a broken clock) does not move it.
    far = MarketCore(PushSum(2, random.Random(2)), pacing, lambda: _bids(2), lambda: [0])
    (ahead,) = [a for a in far.handle(40.0, Tick()) if isinstance(a, Send)]
    core.handle(4.1, Received(ahead.msg))
    assert core.epoch == 1


def test_pacing_refuses_settings_that_cannot_run() -> None:
    with pytest.raises(RedyError, match="epoch_s > 0"):
        Pacing(epoch_s=0)
    with pytest.raises(RedyError, match="min_gap_s < round_s"):
        Pacing(epoch_s=4, round_s=0.1, min_gap_s=0.2)


def test_clock_offset_is_the_median_over_senders() -> None:
    o = ClockOffsets()
    assert o.offset_s() is None and o.correction_s() == 0.0
    o.sample("a", sent_s=100.0, received_s=100.8)  # we are 0.8 s ahead of a
    o.sample("b", sent_s=100.0, received_s=100.8)
    o.sample("c", sent_s=110.0, received_s=100.0)  # one wild neighbour does not matter
    assert o.offset_s() == pytest.approx(0.8)
    assert o.correction_s() == pytest.approx(0.8) and not o.skewed()
    # Only each sender's last 8 messages count: a sender's wild message is forgotten.
    w = ClockOffsets()
    w.sample("a", sent_s=10.0, received_s=0.0)
    for k in range(8):
        w.sample("a", sent_s=20.0 + k, received_s=20.5 + k)
    assert w.offset_s() == pytest.approx(0.5)
    # Queueing on a loaded host delays messages by up to a second: the offset stays the
    # smallest difference (the clock's, plus the shortest latency).
    for delay in (0.9, 0.4, 1.1, 0.6):
        w.sample("a", sent_s=300.0, received_s=300.5 + delay)
    assert w.offset_s() == pytest.approx(0.5)
    far = ClockOffsets(tolerance_s=1.0)
    far.sample("a", sent_s=100.0, received_s=103.0)
    assert far.skewed() and far.correction_s() == 0.0  # beyond the tolerance: no correction


def test_clock_offset_worked_out_only_when_a_smallest_changes_is_still_the_median() -> None:
    """The offset is cached between samples that leave every sender's smallest as it was; it
    always equals the median worked out from scratch over each sender's last 8 differences,
    through windows sliding past their smallest and senders pushed out past the bound."""
    rng = random.Random(4)
    o = ClockOffsets(max_senders=5, window=8)
    history: dict[str, list[float]] = {}
    for _ in range(3000):
        sender = f"n{rng.randrange(7)}"
        diff = rng.choice([0.2, 0.5]) + rng.expovariate(10.0)
        o.sample(sender, sent_s=0.0, received_s=diff)
        history[sender] = [*history.pop(sender, []), diff][-8:]
        while len(history) > 5:
            del history[next(iter(history))]
        want = sorted(min(v) for v in history.values())
        mid = len(want) // 2
        median = want[mid] if len(want) % 2 else (want[mid - 1] + want[mid]) / 2
        assert o.offset_s() == pytest.approx(median, abs=1e-12)


class _OnItsClock:
    """A core whose clock is `ahead_s` ahead of the links' (true) time."""

    def __init__(self, core: MarketCore, ahead_s: float) -> None:
        self.core, self.ahead_s = core, ahead_s

    def handle(self, now: float, event: Received | Refused | Tick) -> list:
        # 1 ns over: (deadline - ahead) + ahead may round below the deadline.
        return self.core.handle(now + self.ahead_s + 1e-9, event)

    def next_deadline(self) -> float:
        return self.core.next_deadline() - self.ahead_s


def test_nodes_whose_clocks_are_up_to_a_second_apart_clear_together_on_corrected_clocks() -> None:
    """Two clocks skewed by +-0.8 s (1.6 s apart) among good ones: each node runs its core on
    its own clock minus its median offset from its neighbours' timestamps, so all start the
    epoch together and find the optimal price."""
    n = 12
    skew = {i: {2: 0.8, 7: -0.8}.get(i, 0.0) for i in range(n)}
    links = InMemoryLinks(n, latency_s=0.002)
    offsets = {i: ClockOffsets() for i in range(n)}
    for i in range(n):  # what each node learnt from its neighbours' earlier gossip
        for j in links.views[i]:
            offsets[i].sample(j, sent_s=100.0 + skew[j], received_s=100.0 + skew[i] + 0.002)
    # Every core sees its raw clock corrected: true time + skew - correction.
    err = {i: skew[i] - offsets[i].correction_s() for i in range(n)}
    assert max(abs(e) for e in err.values()) < 0.01  # the median of its neighbours' skews
    cores = _cores(links, Pacing(epoch_s=3.0, round_s=0.004), list(range(n)))
    skewed = {i: _OnItsClock(c, err[i]) for i, c in cores.items()}
    links.run(skewed, start_s=2.5, until_s=8.9)  # type: ignore[arg-type]
    ref = solve([_bids(i) for i in range(n)])
    by_epoch: dict[int, list[Cleared]] = {}
    for c in links.cleared:
        by_epoch.setdefault(c.epoch, []).append(c)
    for clears in by_epoch.values():
        assert len(clears) == n
        for c in clears:
            assert abs(c.result.price_eur_mwh - ref.price_eur_mwh) <= 0.01
            assert c.heard > 0


def test_an_epoch_cut_short_keeps_the_last_phase_gossiped_and_the_nodes_together() -> None:
    """Phases not done by `finish_by` (a saturated host) end on the last phase the nodes
    gossiped enough, never on phases cleared on a node's own curve alone."""
    n = 30
    links = InMemoryLinks(n, latency_s=0.003)
    cores = _cores(links, Pacing(epoch_s=4.0, round_s=0.006, finish_by=0.1), list(range(n)))
    links.run(cores, start_s=3.9, until_s=4.9)
    ref = solve([_bids(i) for i in range(n)])
    assert len(links.cleared) == n
    assert any(c.result.phases < 3 for c in links.cleared)  # it was cut short
    prices = [c.result.price_eur_mwh for c in links.cleared]
    assert max(prices) - min(prices) <= 1.0  # one 0.34 EUR/MWh phase-2 window, or less
    assert all(abs(p - ref.price_eur_mwh) <= 1.0 for p in prices)


def _steering(price: float, weight: float, amplitude: float) -> Adversary:
    """A member that answers every honest push with one of its own to the same node, epoch,
    phase, window and round: `amplitude` kW of supply above `price` and as much demand below,
    so that the sum crosses at `price`."""

    def adversary(_sender: object, _now: float, m: PhaseGossip) -> list[tuple[object, PhaseGossip]]:
        g = m.msg
        v = np.where(np.linspace(m.floor_eur_mwh, m.cap_eur_mwh, 201) >= price, 1.0, -1.0)
        values = np.concatenate([v, np.zeros(len(g.values) - 201)]) * amplitude
        forged = GossipOut(g.target, "evil", g.epoch, g.round, weight, values)
        return [(g.target, PhaseGossip(m.phase, m.floor_eur_mwh, m.cap_eur_mwh, forged))]

    return adversary


def _prices_under(
    adversary: Adversary | None, bounds: MassBounds | None, n: int = 6
) -> tuple[list[float], list]:
    """The prices `n` nodes clear epoch 1 at, and what their cores dropped (also the attack
    bench's run, bench/market_attack.py)."""
    links = InMemoryLinks(n, latency_s=0.002, adversary=adversary)
    pacing = Pacing(epoch_s=4.0, round_s=0.004)
    cores = {
        i: MarketCore(
            PushSum(i, random.Random(i)),
            pacing,
            bids=lambda i=i: _bids(i),  # type: ignore[misc]
            neighbours=lambda i=i: links.views[i],  # type: ignore[misc]
            bounds=bounds,
        )
        for i in range(n)
    }
    links.run(cores, start_s=3.5, until_s=8.0)
    return [c.result.price_eur_mwh for c in links.cleared if c.epoch == 1], links.dropped


def test_a_members_weightless_mass_of_huge_values_is_dropped_and_its_sender_named() -> None:
    """The price-steering attack: weight 0 and +-1e12 kW around the price the member wants. With
    no bounds every node clears at the member's price; with them its messages are dropped, each
    with the reason, and every node clears at the optimum of the honest bids."""
    attack = _steering(400.0, 0.0, 1e12)
    ref = solve([_bids(i) for i in range(6)]).price_eur_mwh
    steered, _ = _prices_under(attack, None)
    assert len(steered) == 6 and all(abs(p - 400.0) < 0.01 for p in steered)
    prices, dropped = _prices_under(attack, MassBounds(capacity_kw=1000.0))
    assert len(prices) == 6 and all(abs(p - ref) <= 0.01 for p in prices)
    assert dropped and {d.sender for d in dropped} == {"evil"}
    assert "weight 0, expected in (0, 4]" in dropped[0].reason


def test_honest_pushes_keep_the_mass_bounds() -> None:
    """Honest nodes' messages are never dropped: their values stay within weight x capacity and
    their curves rise with the price (the bound is the largest node's net injection)."""
    prices, dropped = _prices_under(None, MassBounds(capacity_kw=1000.0))
    assert len(prices) == 6 and not dropped


@pytest.mark.parametrize(
    ("weight", "values", "round_", "reason"),
    [
        (4.5, [0.0, 1.0], 1, "weight 4.5"),
        (0.5, [0.0, 600.0], 1, "beyond weight x capacity = 500 kW"),
        (0.5, [100.0, 50.0], 1, "falls by 50 kW"),
        (0.5, [0.0, float("nan")], 1, "not finite"),
        (0.5, [0.0, 1.0], 61, "round 61, expected 1..60"),
    ],
)
def test_mass_bounds_name_what_a_message_breaks(
    weight: float, values: list[float], round_: int, reason: str
) -> None:
    got = MassBounds(capacity_kw=1000.0).refusal(weight, np.array(values), 2, round_)
    assert got is not None and reason in got
    assert MassBounds(capacity_kw=1000.0).refusal(0.5, np.array([-500.0, 500.0]), 2, 60) is None
