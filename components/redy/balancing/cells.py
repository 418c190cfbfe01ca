"""The checked market past flooding: cells, co-signed partial sums and an exact price in phases.

Flooding (redy.balancing.offers) costs every node O(N) offers an epoch and shows every
household's offer to every member. Here the grid is cut into K cells (K a power of two, about
N / `CELL_SIZE`); a node's cell is fixed by a hash of the grid's seed for the period and its
certificate's key (`cell_of`), so nobody picks its cell, and a coalition lands where the hash
puts it. Each epoch:

1. **Offers inside the cell.** Every member sends its signed offer (as in the flooding market)
   to each cell-mate; the cell then agrees on the offers that count (a Byzantine agreement among
   the cell's members: a leader (`leader`) proposes the offers it holds, two rounds of signed
   votes, `quorum` of them to decide, the next member leads after a failed view; it holds while
   hostile members are under a third of the cell). A member seen with two
   different signed offers for the epoch is left out by all (both are evidence), every honest
   offer counts (every honest mate got it and refuses a proposal without it), and an offer is
   seen by its cell-mates only, not by the grid.
2. **Partial sums between cells.** The cell's aggregate is a short vector (`summary`: total
   supply left and right of each probe price, the slope right of it, and the count of cost points
   between probes). Each member signs it; honest members sign only the value of the agreed
   offers, so a value with the signatures of a third of the roster plus one (`signatures_needed`)
   has an honest signer, and that is what a value needs to count for the other cells (`accept`).
   Cells then add by recursive doubling: in round r, cell c gives its block's co-signed sum to
   cell c XOR 2^r (`SPEAKERS` members, drawn by a hash of the epoch, phase, round and cell,
   gather the signatures and give the bundle to every member of the other cell; when all of
   them are silent the other cell asks any member) and adds what it got;
   after log2 K rounds every cell holds the grid's total, every one the same sum in the same
   order, so the same floats.
3. **Refinement.** A phase is one such sum at `POINTS` probe prices (`Refinement`): the first
   over the whole price range, each next inside the bracket where supply crosses zero, until the
   bracket holds few cost points; then a listing phase sums the cost points themselves (the
   smallest `LIST_MAX` distinct ones in the bracket, with the step kW and ramp slope that start
   or end at each: a merge that keeps the smallest keys is exact for those it keeps), from which
   the supply curve inside the bracket is known exactly and so is the price, to float precision,
   as the reference solver finds it.

What a member can do: bid anything within its certified limits (as in flooding); withholding its
offer from some mates, sending it late or two versions of it get it included by all or left out
by all (`propose`, `proposal_refusal`: at worst a view change). What a coalition needs to stop a
cell's agreement, or to sign a forged sum that other cells accept, is a third of the cell's
roster (more than f); either stops or bends every cell's total, since every total depends on
every cell. With random placement that is a binomial tail (`hostile_share_chance`): 3.7e-13 per
cell of 128 for a coalition of 10 % of the grid. Requiring two thirds of the roster on a bundle
would leave a third-hostile cell able only to stop the epoch, not bend it, at twice the bundle's
signatures. See docs/cell-market.md.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Collection, Hashable, Iterable, Mapping

import attrs
import numpy as np

CELL_SIZE = 128  # members per cell, on average (see hostile_share_chance)
POINTS = 32  # probe prices per grid phase
LIST_MAX = 64  # cost points a listing phase carries
SPEAKERS = 3  # members of a cell that give the other cell its sum, each round
MAX_PHASES = 16  # a refinement that needs more has met a curve it cannot split: see `Refinement`
MAX_VIEWS = 16  # views of one agreement before the cell gives the epoch up


def cell_count(nodes: int, cell_size: int = CELL_SIZE) -> int:
    """K, the power of two nearest N / cell_size (at least 1): cells of cell_size/sqrt(2) to
    cell_size*sqrt(2) members on average."""
    if nodes <= cell_size:
        return 1
    return 1 << max(0, round(math.log2(nodes / cell_size)))


def cell_of(seed: bytes, key: bytes, cells: int) -> int:
    """The cell of the member whose certificate holds public `key`, for the period of `seed`."""
    digest = hashlib.sha256(seed + key).digest()
    return int.from_bytes(digest[:8], "big") % cells


def hostile_share_chance(cell_size: int, share: float) -> float:
    """The chance that hostile members are a third or more of a cell of `cell_size` members
    placed at random (enough to stop its agreement), when a `share` of all members is hostile:
    a binomial tail."""
    m = cell_size
    first = m - (2 * m) // 3  # with this many, the honest cannot make 2m/3 + 1 votes
    return sum(math.comb(m, k) * share**k * (1 - share) ** (m - k) for k in range(first, m + 1))


# --- agreement inside a cell ------------------------------------------------------------------


def faults_tolerated(roster: int) -> int:
    """f: the hostile members a cell of `roster` members outlasts (f < roster / 3)."""
    return (roster - 1) // 3


def quorum(roster: int) -> int:
    """Votes a proposal needs: all but f, so two quorums share an honest member."""
    return roster - faults_tolerated(roster)


def leader(seed: bytes, epoch: int, cell: int, view: int, roster: int) -> int:
    """The roster index of the member that proposes in `view` (0, then 1 after a view change,
    ...): a hash of the period's seed, the epoch and the cell, then the next member each view."""
    digest = hashlib.sha256(seed + f"/{epoch}/{cell}".encode()).digest()
    return (int.from_bytes(digest[:8], "big") + view) % roster


@attrs.frozen
class Proposal:
    """A leader's proposal of the offers that count: (member, offer digest) pairs, and the
    members left out because they signed two offers for the epoch (both shown as evidence)."""

    view: int
    leader: int
    included: tuple[tuple[int, str], ...]
    excluded: tuple[int, ...] = ()


def propose(view: int, leader: int, seen: Mapping[int, Collection[str]]) -> Proposal:
    """What an honest leader proposes from the offers it holds (`seen`: member -> digests of the
    valid signed offers it holds from that member this epoch)."""
    included = tuple(sorted((m, next(iter(d))) for m, d in seen.items() if len(d) == 1))
    excluded = tuple(sorted(m for m, d in seen.items() if len(d) > 1))
    return Proposal(view, leader, included, excluded)


def proposal_refusal(
    on_time: Mapping[int, str], seen: Mapping[int, Collection[str]], proposal: Proposal
) -> str | None:
    """Why an honest member votes against a proposal (None: it votes for it). It refuses one
    that leaves out or changes an offer it received in the epoch's first window (`on_time`),
    unless that member signed two offers, and one that counts a member it holds two offers of;
    an offer it got later may be in or out. A refusing member then sends the offers it holds
    to every mate, so the next leader holds them."""
    counted = dict(proposal.included)
    for member, digests in seen.items():
        if len(digests) > 1 and member in counted:
            return f"counts member {member}, which signed two offers this epoch"
    for member, digest in on_time.items():
        if len(seen.get(member, ())) > 1:
            continue
        got = counted.get(member)
        if got != digest:
            what = "leaves out" if got is None else "changes"
            return f"{what} the offer of member {member}, received in the first window"
    return None


# --- a cell's aggregate ------------------------------------------------------------------------


def vector_length(points: int) -> int:
    """left, right and slope at each point, and the count of cost points between neighbours."""
    return 4 * points - 1


def summaries(
    group: np.ndarray,
    base_kw: np.ndarray,
    kw: np.ndarray,
    lo: np.ndarray,
    hi: np.ndarray,
    points: np.ndarray,
) -> np.ndarray:
    """Each group's aggregate at `points` (sorted prices), one row per group: total supply just
    left of each point (step blocks at it off) and right of it (on), the slope right of it
    (kW per EUR/MWh of the ramps in progress) and the count of cost points strictly between
    each point and the next. `base_kw[g]` is group g's must-run injection; the block arrays
    hold every block with `group` its group's index. Evaluated block by block, not with the
    reference solver's prefix sums."""
    groups = len(base_kw)
    p = len(points)
    out = np.zeros((groups, vector_length(p)))
    out[:, :p] = base_kw[:, None]
    out[:, p : 2 * p] = base_kw[:, None]
    if not len(kw):
        return out
    ramp = hi > lo
    step = ~ramp
    rate = np.where(ramp, kw / np.where(ramp, hi - lo, 1.0), 0.0)
    for j, x in enumerate(points):
        left = np.where(step, kw * (lo < x), 0.0)
        right = np.where(step, kw * (lo <= x), 0.0)
        moving = np.where(ramp, np.clip((x - lo) * rate, 0.0, kw), 0.0)
        out[:, j] += np.bincount(group, left + moving, groups)
        out[:, p + j] += np.bincount(group, right + moving, groups)
        live = ramp & (lo <= x) & (x < hi)
        out[:, 2 * p + j] = np.bincount(group, np.where(live, rate, 0.0), groups)
    # Cost points (a step's cost, a ramp's two ends) strictly inside each interval.
    costs = np.concatenate([lo, hi[ramp]])
    owner = np.concatenate([group, group[ramp]])
    inside = np.searchsorted(points, costs, side="left")  # points[i-1] < cost <= points[i]
    strictly = (inside > 0) & (inside < p) & (costs != points[np.minimum(inside, p - 1)])
    slot = (inside - 1)[strictly]
    counts = np.bincount(owner[strictly] * (p - 1) + slot, minlength=groups * (p - 1))
    out[:, 3 * p :] = counts.reshape(groups, p - 1)
    return out


@attrs.frozen
class Events:
    """Cost points inside a bracket, merged: sorted distinct `prices`, at each the kW of step
    blocks there (`jump_kw`) and the change of slope (ramps starting minus ramps ending), and
    `complete`: True when no cost point inside the bracket was left out."""

    prices: np.ndarray
    jump_kw: np.ndarray
    dslope: np.ndarray
    complete: bool


def events(
    kw: np.ndarray, lo: np.ndarray, hi: np.ndarray, a: float, b: float, keep: int = LIST_MAX
) -> Events:
    """The `keep` smallest distinct cost points strictly inside (a, b) of some blocks, merged
    (`merge` of the parts' events gives what this gives on all their blocks at once)."""
    ramp = hi > lo
    rate = np.where(ramp, kw / np.where(ramp, hi - lo, 1.0), 0.0)
    prices = np.concatenate([lo, hi[ramp]])
    jump = np.concatenate([np.where(ramp, 0.0, kw), np.zeros(int(ramp.sum()))])
    dslope = np.concatenate([rate, -rate[ramp]])
    inside = (prices > a) & (prices < b)
    return _merged(prices[inside], jump[inside], dslope[inside], keep, True)


def merge(parts: Iterable[Events], keep: int = LIST_MAX) -> Events:
    """The union of some parts' events, summed price by price, the `keep` smallest kept."""
    parts = list(parts)
    if not parts:
        return Events(np.zeros(0), np.zeros(0), np.zeros(0), True)
    return _merged(
        np.concatenate([e.prices for e in parts]),
        np.concatenate([e.jump_kw for e in parts]),
        np.concatenate([e.dslope for e in parts]),
        keep,
        all(e.complete for e in parts),
    )


def _merged(
    prices: np.ndarray, jump: np.ndarray, dslope: np.ndarray, keep: int, complete: bool
) -> Events:
    keys, at = np.unique(prices, return_inverse=True)
    j = np.bincount(at, jump, len(keys))
    d = np.bincount(at, dslope, len(keys))
    if len(keys) > keep:
        keys, j, d, complete = keys[:keep], j[:keep], d[:keep], False
    return Events(keys, j, d, complete)


# --- the refinement ------------------------------------------------------------------------------


@attrs.frozen
class Grid:
    """A phase that sums `summaries` at `points`."""

    points: np.ndarray


@attrs.frozen
class Listing:
    """A phase that sums the `events` strictly inside (a, b), knowing the total supply right of
    `a` (`s_a`, < 0), the slope there and the supply left of `b` (`s_b`, > 0)."""

    a: float
    b: float
    s_a: float
    slope_a: float
    s_b: float


@attrs.frozen
class Price:
    """Where supply crosses zero: the price, 'cleared', 'shortage' or 'surplus', and the share
    of the step blocks at the price that runs (as `reference.Reference` would dispatch)."""

    price_eur_mwh: float
    status: str
    step_share: float = 1.0


class Refinement:
    """The phases of one epoch (module docstring), the same on every node: `first()`, then
    `next(probe, total)` with the grid's total for that probe until it gives a Price."""

    def __init__(
        self,
        floor_eur_mwh: float,
        cap_eur_mwh: float,
        points: int = POINTS,
        list_max: int = LIST_MAX,
    ) -> None:
        if points < 3 or not floor_eur_mwh < cap_eur_mwh:
            raise ValueError("refinement: expected at least 3 points and floor < cap")
        self.floor, self.cap = floor_eur_mwh, cap_eur_mwh
        self.points, self.list_max = points, list_max
        self.phases = 0
        self._count = math.inf  # cost points in the bracket, as the last grid phase counted

    def first(self) -> Grid:
        return Grid(np.linspace(self.floor, self.cap, self.points))

    def next(self, probe: Grid | Listing, total: np.ndarray | Events) -> Grid | Listing | Price:
        self.phases += 1
        if isinstance(probe, Grid):
            assert isinstance(total, np.ndarray)
            return self._after_grid(probe.points, total)
        assert isinstance(total, Events)
        return self._after_listing(probe, total)

    def _after_grid(self, x: np.ndarray, v: np.ndarray) -> Grid | Listing | Price:
        p = len(x)
        left, right, slope, counts = v[:p], v[p : 2 * p], v[2 * p : 3 * p], v[3 * p :]
        if x[0] == self.floor and left[0] > 0:
            return Price(self.floor, "surplus", 0.0)
        if x[-1] == self.cap and right[-1] < 0:
            return Price(self.cap, "shortage")
        j = int(np.argmax(right >= 0))
        if left[j] <= 0:  # at a probe: the jump of the step blocks there covers zero
            jump = right[j] - left[j]
            return Price(float(x[j]), "cleared", float(-left[j] / jump) if jump > 0 else 1.0)
        a, b = float(x[j - 1]), float(x[j])
        sa, sb, count = float(right[j - 1]), float(left[j]), float(counts[j - 1])
        if count == 0:  # linear inside
            return Price(a + (b - a) * (-sa) / (sb - sa), "cleared")
        stalled = count > self._count / 4  # cost points crowd at a few prices: list them
        self._count = count
        if count <= self.list_max or stalled or self.phases >= MAX_PHASES // 2:
            return Listing(a, b, sa, float(slope[j - 1]), sb)
        return Grid(np.linspace(a, b, self.points))

    def _after_listing(self, probe: Listing, e: Events) -> Listing | Price:
        x, s, slope = probe.a, probe.s_a, probe.slope_a
        for price, jump, dslope in zip(e.prices, e.jump_kw, e.dslope, strict=True):
            left = s + slope * (price - x)
            if left >= 0:  # inside the linear piece before this cost point
                return Price(x + (-s) / slope, "cleared")
            right = left + jump
            if right >= 0:  # the jump here covers zero
                return Price(float(price), "cleared", float(-left / jump) if jump > 0 else 1.0)
            x, s, slope = float(price), right, slope + dslope
        if not e.complete:  # the crossing lies past the last point listed
            return Listing(x, probe.b, s, slope, probe.s_b)
        b = probe.b
        return Price(x + (b - x) * (-s) / (probe.s_b - s), "cleared")


# --- co-signed sums ------------------------------------------------------------------------------


@attrs.frozen
class Bundle:
    """A cell's value for one phase and round, with the members' signatures on its digest:
    (index in the cell's roster, signature)."""

    cell: int
    phase: int
    round: int
    digest: bytes
    signers: tuple[tuple[int, str], ...]


def accept(
    bundles: Iterable[Bundle],
    roster: int,
    verify: Callable[[int, bytes, str], bool],
    checked: set[Hashable] | None = None,
) -> tuple[Bundle | None, int]:
    """The first bundle signed by `signatures_needed(roster)` members of a cell, and the
    signatures checked to find it. A bundle naming too few distinct members costs nothing; one
    with a bad signature stops at it; signatures already found good (`checked`, kept across
    calls) are not checked again."""
    checks = 0
    good = checked if checked is not None else set()
    for b in bundles:
        members = {i for i, _ in b.signers if 0 <= i < roster}
        if len(members) < signatures_needed(roster) or len(members) != len(b.signers):
            continue
        ok = True
        for i, sig in b.signers:
            key = (b.cell, b.phase, b.round, i, b.digest, sig)
            if key in good:
                continue
            checks += 1
            if not verify(i, b.digest, sig):
                ok = False
                break
            good.add(key)
        if ok:
            return b, checks
    return None, checks


def signatures_needed(roster: int) -> int:
    """Signatures a cell's value needs to count for other cells: a third of its roster plus
    one, so at least one honest signer while hostile members are under a third."""
    return roster // 3 + 1


def rounds(cells: int) -> int:
    """Rounds of recursive doubling over `cells` (a power of two)."""
    return max(0, cells.bit_length() - 1)


def recursive_doubling(
    values: np.ndarray, sent: Callable[[int, np.ndarray], np.ndarray]
) -> np.ndarray:
    """Every cell's total after recursive doubling, row by row; `sent(r, own)` gives what each
    cell sends in round r given what each holds (honest cells send `own`)."""
    v = values.copy()
    k = len(v)
    idx = np.arange(k)
    for r in range(rounds(k)):
        out = sent(r, v)
        v = v + out[idx ^ (1 << r)]
    return v
