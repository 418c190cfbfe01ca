"""The cell market's pure core (redy.balancing.cells): the price it refines from cells' sums is
the reference solver's, whatever the cells; sums are the same floats in every cell; a bundle
counts only with enough good signatures, and a forged one costs at most one bad check."""

from __future__ import annotations

import random

import numpy as np
import pytest

from redy.balancing import cells
from redy.balancing.curves import Dispatchable, Fixed, FlexibleLoad, Renewable, Storage
from redy.balancing.offers import offer_values
from redy.balancing.reference import solve
from redy.sim.balance import DEFAULT_MIX, node_bids


def _grid(n: int, seed: int, extra: list | None = None) -> list[list]:
    rng = random.Random(seed)
    kinds = rng.choices(list(DEFAULT_MIX), weights=list(DEFAULT_MIX.values()), k=n)
    bids = [node_bids(k, random.Random(seed * 1000 + i), rng.random()) for i, k in enumerate(kinds)]
    return bids + (extra or [])


def _refine(bids: list[list], groups: int, floor: float = -500.0, cap: float = 4000.0):
    """Clear `bids` split over `groups` cells as the nodes would: summaries per cell added by
    recursive doubling, events per cell merged, the refinement on the totals."""
    values = [offer_values(b) for b in bids]
    g = np.arange(len(values)) % groups
    base = np.bincount(g, [v[0] for v in values], groups)
    owner = np.array([i for i, v in enumerate(values) for _ in v[1::3]], dtype=np.int64)
    kw = np.array([x for v in values for x in v[1::3]])
    lo = np.array([x for v in values for x in v[2::3]])
    hi = np.array([x for v in values for x in v[3::3]])
    bg = g[owner] if len(owner) else np.zeros(0, dtype=np.int64)
    refine = cells.Refinement(floor, cap)
    probe = refine.first()
    while not isinstance(probe, cells.Price):
        if isinstance(probe, cells.Grid):
            summed = cells.recursive_doubling(
                cells.summaries(bg, base, kw, lo, hi, probe.points), lambda _r, v: v
            )
            assert all(np.array_equal(summed[0], row) for row in summed)
            total = summed[0]
        else:
            parts = [
                cells.events(kw[bg == c], lo[bg == c], hi[bg == c], probe.a, probe.b)
                for c in range(groups)
            ]
            total = cells.merge(parts)
        probe = refine.next(probe, total)
    return probe, refine.phases


@pytest.mark.parametrize(("n", "groups", "seed"), [(30, 1, 1), (500, 8, 2), (4000, 64, 3)])
def test_price_from_cells_is_the_reference_optimum(n: int, groups: int, seed: int) -> None:
    bids = _grid(n, seed)
    price, _ = _refine(bids, groups)
    ref = solve(bids, -500.0, 4000.0)
    assert price.status == ref.status
    assert abs(price.price_eur_mwh - ref.price_eur_mwh) <= 1e-6


def test_price_at_a_crowded_cost_point() -> None:
    """Thousands of blocks at one cost (renewables at 0) with the crossing on it: the grid
    phases cannot split them, the listing merges them into one point and clears on its jump."""
    bids = [[Renewable(3.0, 0.0)] for _ in range(3000)] + [[Fixed(-4000.0)]]
    price, phases = _refine(bids, 16)
    ref = solve(bids, -500.0, 4000.0)
    assert price.price_eur_mwh == ref.price_eur_mwh == 0.0
    assert abs(price.step_share - 4000.0 / 9000.0) < 1e-12
    assert phases <= cells.MAX_PHASES


@pytest.mark.parametrize(
    ("bids", "status"),
    [
        ([[Fixed(-50.0)], [Renewable(10.0, 0.0)]], "shortage"),
        ([[Fixed(50.0)], [FlexibleLoad(10.0, 80.0)]], "surplus"),
        ([[Dispatchable(0.0, 100.0, 60.0)], [Fixed(-40.0)], [Storage(5, 5, 40, 120)]], "cleared"),
    ],
)
def test_shortage_surplus_and_ramps(bids: list[list], status: str) -> None:
    price, _ = _refine(bids, 2)
    ref = solve(bids, -500.0, 4000.0)
    assert price.status == ref.status == status
    assert abs(price.price_eur_mwh - ref.price_eur_mwh) <= 1e-6


def test_merge_keeps_the_smallest_points_whatever_the_order() -> None:
    rng = np.random.default_rng(4)
    kw, lo = rng.uniform(1, 10, 400), rng.choice(np.linspace(0, 100, 90), 400)
    hi = lo + rng.choice([0.0, 5.0], 400)
    whole = cells.events(kw, lo, hi, 10.0, 90.0, keep=20)
    parts = [cells.events(kw[i::7], lo[i::7], hi[i::7], 10.0, 90.0, keep=20) for i in range(7)]
    for order in (parts, parts[::-1]):
        merged = cells.merge(order, keep=20)
        assert not merged.complete and not whole.complete
        np.testing.assert_array_equal(merged.prices, whole.prices)
        np.testing.assert_allclose(merged.jump_kw, whole.jump_kw, rtol=1e-12)
        np.testing.assert_allclose(merged.dslope, whole.dslope, rtol=1e-12)


def test_cells_are_fixed_by_the_key_and_fill_evenly() -> None:
    assert cells.cell_count(50) == 1
    assert cells.cell_count(1_000_000) == 8192
    assert all(cells.cell_count(n) & (cells.cell_count(n) - 1) == 0 for n in (300, 5000, 77777))
    keys = [f"key-{i}".encode() for i in range(20_000)]
    placed = [cells.cell_of(b"seed", k, 64) for k in keys]
    assert placed == [cells.cell_of(b"seed", k, 64) for k in keys]
    sizes = np.bincount(placed, minlength=64)
    assert sizes.min() > 230 and sizes.max() < 400  # 312 on average
    moved = sum(a != cells.cell_of(b"other", k, 64) for a, k in zip(placed, keys, strict=True))
    assert moved > 0.9 * len(keys)  # another period's seed places members afresh


def test_hostile_share_chance_is_the_binomial_tail() -> None:
    assert cells.hostile_share_chance(128, 0.10) == pytest.approx(3.7e-13, rel=0.05)
    assert cells.hostile_share_chance(128, 0.01) < 1e-50
    assert cells.hostile_share_chance(3, 0.5) == pytest.approx(0.875)


def _signed(member: int, digest: bytes) -> str:
    return f"sig:{member}:{digest.hex()}"


def _verify(calls: list[int]):
    def verify(member: int, digest: bytes, sig: str) -> bool:
        calls.append(member)
        return sig == _signed(member, digest)

    return verify


def test_a_bundle_counts_with_a_third_of_the_roster_plus_one_good_signature() -> None:
    digest = b"\x01" * 32
    good = cells.Bundle(3, 1, 2, digest, tuple((i, _signed(i, digest)) for i in range(11)))
    calls: list[int] = []
    got, checks = cells.accept([good], 30, _verify(calls))
    assert got == good and checks == 11 == cells.signatures_needed(30)
    seen: set = set()
    cells.accept([good], 30, _verify([]), seen)
    again, checks = cells.accept([good], 30, _verify([]), seen)
    assert again == good and checks == 0  # good signatures are checked once


def test_forged_bundles_cost_at_most_one_bad_check_each() -> None:
    """A coalition of 4 in a cell of 30 signs a forged sum, names honest members to reach the
    threshold with bad signatures, names one member many times, or names too few: none counts,
    and each costs the receiver its coalition's checks plus one."""
    real, forged = b"\x01" * 32, b"\x02" * 32
    coalition = tuple((i, _signed(i, forged)) for i in range(4))
    padded = coalition + tuple((i, "bad") for i in range(4, 11))
    repeated = coalition + tuple((0, _signed(0, forged)) for _ in range(7))
    few = coalition
    honest = cells.Bundle(0, 1, 2, real, tuple((i, _signed(i, real)) for i in range(10, 21)))
    calls: list[int] = []
    bundles = [cells.Bundle(0, 1, 2, forged, s) for s in (padded, repeated, few)] + [honest]
    got, checks = cells.accept(bundles, 30, _verify(calls))
    assert got == honest
    assert checks == 5 + 11  # the padded forgery stops at its first bad name; then the honest
    assert calls[:5] == [0, 1, 2, 3, 4]
    none, _ = cells.accept(bundles[:3], 30, _verify([]))
    assert none is None


def test_quorum_and_leaders() -> None:
    assert (cells.faults_tolerated(128), cells.quorum(128)) == (42, 86)
    assert (cells.faults_tolerated(4), cells.quorum(4)) == (1, 3)
    first = cells.leader(b"seed", 7, 3, 0, 100)
    assert [cells.leader(b"seed", 7, 3, v, 100) for v in range(3)] == [
        first,
        (first + 1) % 100,
        (first + 2) % 100,
    ]
    assert (
        cells.leader(b"seed", 8, 3, 0, 100) != first or cells.leader(b"seed", 9, 3, 0, 100) != first
    )


def test_an_honest_member_refuses_a_proposal_that_censors_or_counts_an_equivocator() -> None:
    """Member 5 signed two offers (both held), member 6 sent its offer late (after the first
    window): an honest leader leaves 5 out and may count 6 or not; a hostile leader that leaves
    out 2 (received on time) or counts 5 is refused."""
    on_time = {1: "d1", 2: "d2", 5: "x"}
    seen = {1: {"d1"}, 2: {"d2"}, 5: {"x", "y"}, 6: {"d6"}}
    honest = cells.propose(0, 1, seen)
    assert honest.included == ((1, "d1"), (2, "d2"), (6, "d6")) and honest.excluded == (5,)
    assert cells.proposal_refusal(on_time, seen, honest) is None
    without_late = cells.Proposal(0, 1, ((1, "d1"), (2, "d2")), (5,))
    assert cells.proposal_refusal(on_time, seen, without_late) is None
    censoring = cells.Proposal(1, 3, ((1, "d1"), (6, "d6")))
    assert "leaves out the offer of member 2" in cells.proposal_refusal(on_time, seen, censoring)
    changed = cells.Proposal(1, 3, ((1, "d1"), (2, "other")))
    assert "changes the offer of member 2" in cells.proposal_refusal(on_time, seen, changed)
    equivocator = cells.Proposal(1, 3, ((1, "d1"), (2, "d2"), (5, "x")))
    assert "member 5, which signed two offers" in cells.proposal_refusal(on_time, seen, equivocator)
