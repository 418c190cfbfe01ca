"""`redy sim balance --market cells`: the cell market of redy.balancing.cells, 10^3 to 10^6 nodes.

What runs is the market's arithmetic, the real code: every cell's aggregate (`cells.summaries`,
`cells.events`) over its members' offers (`offers.offer_values`, held to each member's certified
limits), recursive doubling between cells (`cells.recursive_doubling`) and the refinement
(`cells.Refinement`) that every node runs on the total it holds. What is modelled, not run
message by message: the rounds inside a cell and between cells. The members of a cell agree on
the offers that count (a Byzantine agreement among the cell, leader and two rounds of votes,
which holds while hostile members are under a third of the cell); the model applies its outcome
(every honest offer counts; a hostile member's offer counts or not, the same for all) and counts
its messages. Per honest node and epoch it counts what the protocol would make the node receive
and check, with message sizes from their JSON encodings (`_Wire`):

- in its cell: each mate's signed offer (the governance's `NodeOffer` encoding without the
  certificate), the leader's proposal (each included member with its offer's digest), two
  rounds of votes from every mate; a signature check for each offer and vote;
- per phase and round: the bundle of the other cell's sum from each of its `cells.SPEAKERS`
  speakers, with a third of its roster's signatures plus one (enough for one honest signer
  while hostile members are under a third), each signature checked once; and, for a node that
  speaks for its cell this round, its mates' signatures on the cell's new sum (`_costs`);
- what the members' attacks add (`ATTACKS`).

Certificates: a node learns its cell's roster and those of the cells it meets in the rounds
(one per round) once per seed period, `cert_bytes_per_period`; the cells are fixed for that
period, so no certificate travels in an epoch. Memory: an estimate (mates' offers as the
governance holds them, the certificates and keys of the rosters it meets, the vectors).
"""

from __future__ import annotations

import random
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import orjson

from redy import messages
from redy.balancing import cells
from redy.balancing.curves import Bid
from redy.balancing.offers import offer_values
from redy.balancing.reference import solve_blocks
from redy.errors import SimulationError
from redy.messages import NodeOffer
from redy.sim.adversaries import OFFER_ATTACKS, offer_strategies
from redy.sim.offer_market import CERT_CHARS, SIG_CHARS, certified_limits

# A hostile member's strategy in the cell market: point 3's, plus `forge`, which sends the
# other cell, every round, a forged sum carrying its coalition's signatures and honest members'
# names with bad signatures (rejected at the first bad one).
ATTACKS = (*OFFER_ATTACKS, "forge")
_KEY_BYTES = 200  # a checked certificate's public key and its record (as offer_market)
_HELD_OFFER = 1_000  # an offer as a governance holds it, decoded and encoded (offer_market)
PLACEMENT_SEED = b"redy-cells"  # the seed period's seed of every simulated grid


def placement_key(seed: int, name: str) -> bytes:
    """What stands for the certificate key of node `name` in the cells' hash (`cells.cell_of`),
    in a run of `seed` (redy.sim.cell_protocol places its nodes the same way)."""
    return str(seed).encode() + name.encode()


class _Wire:
    """The encoded length of each message of the protocol (JSON, as the governance encodes)."""

    def __init__(self) -> None:
        self._offer: dict[int, int] = {}

    def offer(self, values: int) -> int:
        """A NodeOffer of `values` numbers, without its certificate."""
        n = self._offer.get(values)
        if n is None:
            sample = NodeOffer(
                node="eco_house-123456",
                epoch=123456,
                values=tuple(1234.56789012 for _ in range(values)),
                session=1_765_000_000_000,
                cert=None,
                sig="A" * SIG_CHARS,
            )
            n = self._offer[values] = len(messages.encode(sample))
        return n

    @staticmethod
    def _head() -> dict[str, Any]:
        return {"cell": 65535, "epoch": 123456, "phase": 9, "round": 19}

    def proposal(self, roster: int) -> int:
        """The leader's proposal: (member, digest) of each offer that counts."""
        body = {**self._head(), "leader": 127, "included": [[127, "f" * 16]] * roster}
        return len(orjson.dumps({**body, "sig": "A" * SIG_CHARS}))

    def vote(self) -> int:
        body = {**self._head(), "member": 127, "digest": "f" * 64, "kind": "commit"}
        return len(orjson.dumps({**body, "sig": "A" * SIG_CHARS}))

    def cosign(self) -> int:
        """A member's signature on its cell's new sum (the sum itself each member computes)."""
        return len(orjson.dumps({**self._head(), "member": 127, "sig": "A" * SIG_CHARS}))

    def bundle(self, value: np.ndarray | cells.Events, signers: int) -> int:
        if isinstance(value, cells.Events):
            body: Any = [value.prices.tolist(), value.jump_kw.tolist(), value.dslope.tolist()]
        else:
            body = value.tolist()
        sigs = [[127, "A" * SIG_CHARS] for _ in range(signers)]
        return len(orjson.dumps({**self._head(), "value": body, "sigs": sigs}))


class _Epoch:
    """One epoch's offers as arrays: each node's must-run `base`, then every block with its
    owner's index."""

    def __init__(self, offers: Sequence[Sequence[float]]) -> None:
        self.values = [len(v) for v in offers]
        self.base = np.array([v[0] for v in offers])
        self.owner = np.array([i for i, v in enumerate(offers) for _ in v[1::3]], dtype=np.int64)
        self.kw = np.array([x for v in offers for x in v[1::3]])
        self.lo = np.array([x for v in offers for x in v[2::3]])
        self.hi = np.array([x for v in offers for x in v[3::3]])

    def blocks_of(self, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        keep = mask[self.owner]
        return self.owner[keep], self.kw[keep], self.lo[keep], self.hi[keep]


def simulate_cells(
    *,
    names: Sequence[str],
    bids_at: Callable[[int, int], list[Bid]],
    epochs: int,
    seed: int,
    capacity_kw: float,
    price_floor: float,
    price_cap: float,
    cell_size: int = cells.CELL_SIZE,
    adversaries: float = 0.0,
    attack: str | None = None,
    progress: Callable[[int], object] | None = None,
) -> dict[str, Any]:
    """Run `epochs` epochs of the cell market over N = len(names) nodes (module docstring);
    `bids_at(i, epoch)`: node i's bids (epochs from 1); `adversaries`: the hostile share, each
    running one of `attack` (comma-separated ATTACKS, or mix: each one of them in turn)."""
    started, cpu0 = time.perf_counter(), time.process_time()
    n = len(names)
    if cell_size < 4:
        raise SimulationError(f"--cell-size: expected at least 4 members, got {cell_size}")
    if not 0.0 <= adversaries < 1.0:
        raise SimulationError(
            f"--adversaries is a fraction of the nodes in [0, 1), got {adversaries}"
        )
    if attack is not None and not adversaries:
        raise SimulationError("--attack needs --adversaries")
    strategies = offer_strategies(attack or "mix", ATTACKS)
    # Each node's offers, epoch by epoch, held to the bounds it will be certified for: the most
    # its own offers consume and produce over the run (as offer_market).
    offers = [
        [offer_values(bids_at(i, e), capacity_kw) for i in range(n)] for e in range(1, epochs + 1)
    ]
    limits = np.array([certified_limits(o[i] for o in offers) for i in range(n)])  # import, export
    k = cells.cell_count(n, cell_size)
    cell = np.array([cells.cell_of(PLACEMENT_SEED, placement_key(seed, n), k) for n in names])
    roster = np.bincount(cell, minlength=k)
    rng = random.Random(seed + 7)
    count = min(round(adversaries * n), n - 1)
    evil = np.zeros(n, bool)
    evil[rng.sample(range(n), count)] = True
    strategy = np.full(n, "", dtype=object)
    for j, i in enumerate(np.flatnonzero(evil)):
        strategy[i] = strategies[j % len(strategies)]
    hostile = np.bincount(cell, evil, k).astype(int)
    unsafe = hostile >= roster - (2 * roster) // 3  # honest members cannot make 2/3 + 1 votes
    wire = _Wire()
    report = []
    for e in range(1, epochs + 1):
        cpu = time.process_time()
        report.append(
            _epoch(
                e,
                offers[e - 1],
                limits,
                cell,
                roster,
                evil,
                strategy,
                unsafe,
                wire,
                price_floor,
                price_cap,
                rng,
            )
        )
        report[-1]["cpu_s"] = round(time.process_time() - cpu, 3)
        if progress is not None:
            progress(1)
    return {
        "parameters": {
            "market": "cells",
            "nodes": n,
            "epochs": epochs,
            "seed": seed,
            "cell_size": cell_size,
            "cells": k,
            "roster": [int(roster.min()), int(roster.max())],
            "rounds": cells.rounds(k),
            "points": cells.POINTS,
            "list_max": cells.LIST_MAX,
            "speakers": cells.SPEAKERS,
            "price_range": [price_floor, price_cap],
            "capacity_kw": capacity_kw,
            "memory": "estimate, not tracemalloc",
        },
        "cells": {
            "hostile_max": int(hostile.max()) if k else 0,
            "unsafe": int(unsafe.sum()),
            "third_hostile_chance": cells.hostile_share_chance(cell_size, adversaries)
            if adversaries
            else 0.0,
        },
        "cert_bytes_per_period": _cert_bytes(roster, cell, evil),
        "epochs": report,
        **({"adversaries": _adversary_report(report, evil, strategy)} if adversaries else {}),
        "cpu_s": round(time.process_time() - cpu0, 3),
        "elapsed_s": round(time.perf_counter() - started, 2),
    }


def _cert_bytes(roster: np.ndarray, cell: np.ndarray, evil: np.ndarray) -> dict[str, float]:
    """Certificates an honest node fetches once per seed period: its cell's roster and the
    roster of the cell its own meets in each round."""
    per_node = (roster[cell] + _met(roster)[cell] - 1) * CERT_CHARS
    honest = per_node[~evil]
    return {"mean": float(honest.mean()), "max": float(honest.max())}


def _epoch(
    e: int,
    offers: list[tuple[float, ...]],
    limits: np.ndarray,
    cell: np.ndarray,
    roster: np.ndarray,
    evil: np.ndarray,
    strategy: np.ndarray,
    unsafe: np.ndarray,
    wire: _Wire,
    floor: float,
    cap: float,
    rng: random.Random,
) -> dict[str, Any]:
    n, k = len(offers), len(roster)
    # What counts: every honest offer, and each member's as its cell agrees (`_agree`).
    counted = list(offers)
    included = ~evil
    extra_bytes = np.zeros(k)  # per honest member of each cell, beyond one view of agreement
    extra_checks = np.zeros(k)
    views = np.ones(k)
    for i in np.flatnonzero(evil):
        s, c = strategy[i], cell[i]
        imp, exp = limits[i]
        if s == "sell-floor":
            counted[i] = (float(exp),)
        elif s == "buy-cap":
            counted[i] = (float(-imp),)
        elif s in ("replay", "early"):  # refused: another epoch's stamp or no valid signature
            extra_checks[c] += 1
    members = np.split(np.argsort(cell, kind="stable"), np.cumsum(roster)[:-1])
    offer_bytes = float(np.mean([wire.offer(len(v)) for v in offers[:1000]]))
    for c in np.flatnonzero(np.bincount(cell, evil, k) > 0):
        if unsafe[c]:
            continue
        got, took, more_bytes, more_checks = _agree(
            e, int(c), members[c], evil, strategy, rng, wire, offer_bytes
        )
        views[c] = took
        for node, yes in got.items():
            included[node] = yes
        extra_bytes[c] += more_bytes
        extra_checks[c] += more_checks
    epoch = _Epoch([counted[i] for i in range(n)])
    honest = ~evil
    honest_offers = _Epoch([offers[i] for i in np.flatnonzero(honest)])
    ref_price, ref_status = solve_blocks(
        honest_offers.base.sum(), honest_offers.kw, honest_offers.lo, honest_offers.hi, floor, cap
    )
    kept = _Epoch([counted[i] for i in np.flatnonzero(included)])
    with_kept, _ = solve_blocks(kept.base.sum(), kept.kw, kept.lo, kept.hi, floor, cap)
    band = None
    if evil.any():  # honest members of the same limits, all selling, or all buying, in full
        lo_p, _ = solve_blocks(
            honest_offers.base.sum() + limits[evil, 1].sum(),
            honest_offers.kw,
            honest_offers.lo,
            honest_offers.hi,
            floor,
            cap,
        )
        hi_p, _ = solve_blocks(
            honest_offers.base.sum() - limits[evil, 0].sum(),
            honest_offers.kw,
            honest_offers.lo,
            honest_offers.hi,
            floor,
            cap,
        )
        band = (lo_p, hi_p)
    # The refinement on the cells' sums.
    owner, kw, lo, hi = epoch.blocks_of(included)
    base = np.bincount(cell, np.where(included, epoch.base, 0.0), k)
    refine = cells.Refinement(floor, cap)
    probe: cells.Grid | cells.Listing | cells.Price = refine.first()
    bundle_bytes = []  # per phase: one bundle of a cell's sum with its signatures
    need = np.array([cells.signatures_needed(int(r)) for r in roster], float)
    stalled = bool(unsafe.any())
    while not isinstance(probe, cells.Price) and not stalled:
        if isinstance(probe, cells.Grid):
            values = cells.summaries(cell[owner], base, kw, lo, hi, probe.points)
            totals = cells.recursive_doubling(values, lambda _r, v: v)
            total: np.ndarray | cells.Events = totals[0]
            if not all(np.array_equal(totals[0], t) for t in totals):
                raise SimulationError("recursive doubling left cells with different sums")
            sample: np.ndarray | cells.Events = values[0]
        else:
            total = _merge_tree(_events_by_cell(cell[owner], kw, lo, hi, probe.a, probe.b, k))
            sample = total
        bundle_bytes.append(wire.bundle(sample, int(need.max())))
        probe = refine.next(probe, total)
    price = probe.price_eur_mwh if isinstance(probe, cells.Price) else None
    status = probe.status if isinstance(probe, cells.Price) else "stalled"
    bytes_in, checks = _costs(
        epoch, cell, roster, evil, strategy, extra_bytes, extra_checks, bundle_bytes, wire, rng
    )
    mates = (roster - 1).astype(float)
    memory = (
        mates[cell] * _HELD_OFFER
        + (roster[cell] + _met(roster)[cell]) * (CERT_CHARS + _KEY_BYTES + sys.getsizeof(""))
        + 8 * cells.vector_length(cells.POINTS) * 4
    )
    h = honest
    out: dict[str, Any] = {
        "epoch": e,
        "nodes": n,
        "honest": int(h.sum()),
        "price": price,
        "price_optimal": ref_price if not evil.any() else with_kept,
        "status": status,
        "status_optimal": ref_status,
        "price_error": abs(price - (ref_price if not evil.any() else with_kept))
        if price is not None
        else None,
        "price_honest_optimum": ref_price,
        "phases": len(bundle_bytes),
        "rounds": cells.rounds(k) * len(bundle_bytes),
        "views_max": int(views.max()),
        "cells_with_view_changes": int((views > 1).sum()),
        "every_honest_node_same_price": price is not None,  # one total, the same floats
        "per_node": {
            "bytes_received": _stats(bytes_in[h]),
            "signature_checks": _stats(checks[h]),
            "memory_bytes": _stats(memory[h]),
            "offer_seen_by": _stats(mates[cell][h]),
        },
    }
    if band is not None:
        out["band"] = list(band)
        out["inside_band"] = price is not None and band[0] - 1e-6 <= price <= band[1] + 1e-6
    return out


def _agree(
    epoch: int,
    c: int,
    members: np.ndarray,
    evil: np.ndarray,
    strategy: np.ndarray,
    rng: random.Random,
    wire: _Wire,
    offer_bytes: float,
) -> tuple[dict[int, bool], int, float, float]:
    """One cell's agreement on its members' offers, view by view, with the real rules
    (`cells.propose`, `cells.proposal_refusal`, `cells.quorum`, `cells.leader`): which hostile
    members' offers count, the views it took, and the bytes and checks each honest member pays
    beyond one view. Honest offers reach every mate in the first window; a member's reach it as
    its strategy sends them (withhold: half the honest mates; two-faced: one version to each
    half; late, replay, early: none in the window). A hostile leader proposes without one
    honest offer (every honest member refuses); hostile members never vote. After a failed view
    every honest member sends the offers it holds to its mates (so all hold the same), and the
    next member leads."""
    roster = len(members)
    honest = [j for j in range(roster) if not evil[members[j]]]
    on_time: dict[int, dict[int, str]] = {j: {} for j in honest}
    for j in range(roster):
        if not evil[members[j]]:
            continue
        s = strategy[members[j]]
        if s in ("sell-floor", "buy-cap", "forge"):
            for g in honest:
                on_time[g][j] = "a"
        elif s in ("withhold", "two-faced"):
            half = set(rng.sample(honest, len(honest) // 2))
            for g in honest:
                if g in half:
                    on_time[g][j] = "a"
                elif s == "two-faced":
                    on_time[g][j] = "b"
    seen: dict[int, dict[int, set[str]]] = {
        g: {j: {d} for j, d in held.items()} for g, held in on_time.items()
    }
    need = cells.quorum(roster)
    failed_view = wire.proposal(roster) + 2 * (roster - 1) * wire.vote()
    extra_bytes = extra_checks = 0.0
    echoed = False
    for view in range(cells.MAX_VIEWS):
        lead = cells.leader(b"sim", epoch, c, view, roster)
        proposal = None
        if not evil[members[lead]]:
            proposal = cells.propose(view, lead, seen[lead])
            votes = sum(
                1 for g in honest if cells.proposal_refusal(on_time[g], seen[g], proposal) is None
            )
            if votes >= need:
                counted = dict(proposal.included)
                got = {int(members[j]): j in counted for j in range(roster) if evil[members[j]]}
                return got, view + 1, extra_bytes, extra_checks
        extra_bytes += failed_view
        extra_checks += roster - 1  # the view change's signed messages
        if not echoed:  # every honest member sends the members' offers it holds to its mates
            union: dict[int, set[str]] = {}
            for held in seen.values():
                for j, ds in held.items():
                    union.setdefault(j, set()).update(ds)
            holders = sum(len(held) for held in on_time.values())
            extra_bytes += holders / max(1, len(honest)) * offer_bytes
            extra_checks += sum(len(ds) for ds in union.values())
            seen = {g: {j: set(ds) for j, ds in union.items()} for g in honest}
            echoed = True
    return {int(m): False for m in members if evil[m]}, cells.MAX_VIEWS, extra_bytes, extra_checks


def _met(roster: np.ndarray) -> np.ndarray:
    """Per cell: the members of the cells it meets over the rounds of recursive doubling."""
    k = len(roster)
    idx = np.arange(k)
    out = np.zeros(k)
    for r in range(cells.rounds(k)):
        out += roster[idx ^ (1 << r)]
    return out


def _costs(
    epoch: _Epoch,
    cell: np.ndarray,
    roster: np.ndarray,
    evil: np.ndarray,
    strategy: np.ndarray,
    extra_bytes: np.ndarray,
    extra_checks: np.ndarray,
    bundle_bytes: list[int],
    wire: _Wire,
    rng: random.Random,
) -> tuple[np.ndarray, np.ndarray]:
    """Bytes each node receives and signatures it checks in one epoch (module docstring).

    Between cells, in each phase and round, `cells.SPEAKERS` members of each cell (drawn by a
    hash of the epoch, phase, round and cell: here by the seeded generator) gather their mates'
    signatures on the cell's new sum and give the bundle to every member of the other cell; a
    hostile speaker sends nothing (or, `forge`, a forged sum with its coalition's signatures and
    honest names with bad signatures, rejected at the first bad one). When every speaker of a
    cell is hostile, the other cell's members ask its members, who sign to all their mates
    (each receiver pays a round of signatures and one bundle more)."""
    k = len(roster)
    mates = (roster - 1).astype(float)
    need = np.array([cells.signatures_needed(int(r)) for r in roster], float)
    hostile = np.bincount(cell, evil, k).astype(float)
    per_offer = np.array([wire.offer(v) for v in epoch.values], float)
    bytes_in = np.bincount(cell, per_offer, k)[cell] - per_offer
    bytes_in += mates[cell] * 2 * wire.vote()
    bytes_in += np.array([wire.proposal(int(r)) for r in roster])[cell]
    bytes_in += extra_bytes[cell]
    checks = 3 * mates[cell] + extra_checks[cell]  # offers, and votes of two rounds
    order = np.argsort(cell, kind="stable")
    starts = np.concatenate([[0], np.cumsum(roster)[:-1]])
    gen = np.random.default_rng(rng.getrandbits(32))
    idx = np.arange(k)
    cosign = wire.cosign()
    forger = evil & (strategy == "forge")
    for size in bundle_bytes:
        for r in range(cells.rounds(k)):
            other = (idx ^ (1 << r))[cell]  # each node's other cell this round
            drawn = starts[:, None] + gen.integers(0, roster[:, None], (k, cells.SPEAKERS))
            speakers = order[drawn]
            np.add.at(bytes_in, speakers.ravel(), np.repeat(mates * cosign, cells.SPEAKERS))
            honest_speakers = (~evil[speakers]).sum(1)
            forged = forger[speakers].sum(1)
            bytes_in += (honest_speakers + forged)[other] * size
            checks += need[other] + (forged * (hostile + 1))[other]
            silent = honest_speakers == 0
            bytes_in += silent[other] * (mates[other] * cosign + size)
    return bytes_in, checks


def _events_by_cell(
    group: np.ndarray, kw: np.ndarray, lo: np.ndarray, hi: np.ndarray, a: float, b: float, k: int
) -> list[cells.Events]:
    """Each cell's events inside (a, b) (only the blocks with a cost point there matter)."""
    ramp = hi > lo
    near = ((lo > a) & (lo < b)) | (ramp & (hi > a) & (hi < b))
    g, kw, lo, hi = group[near], kw[near], lo[near], hi[near]
    order = np.argsort(g, kind="stable")
    g, kw, lo, hi = g[order], kw[order], lo[order], hi[order]
    bounds = np.searchsorted(g, np.arange(k + 1))
    empty = cells.Events(np.zeros(0), np.zeros(0), np.zeros(0), True)
    out = []
    for c in range(k):
        s, t = bounds[c], bounds[c + 1]
        out.append(cells.events(kw[s:t], lo[s:t], hi[s:t], a, b) if t > s else empty)
    return out


def _merge_tree(parts: list[cells.Events]) -> cells.Events:
    """The cells' events merged in the order of recursive doubling (pairs, then pairs of
    pairs), as every cell merges them."""
    level = parts
    while len(level) > 1:
        level = [cells.merge(level[j : j + 2]) for j in range(0, len(level), 2)]
    return level[0]


def _stats(values: np.ndarray) -> dict[str, float]:
    if not len(values):
        return {"mean": 0.0, "max": 0.0}
    return {"mean": float(values.mean()), "max": float(values.max())}


def _adversary_report(
    report: list[dict[str, Any]], evil: np.ndarray, strategy: np.ndarray
) -> dict[str, Any]:
    inside = [r.get("inside_band") for r in report]
    return {
        "members": int(evil.sum()),
        "strategies": {s: int((strategy == s).sum()) for s in ATTACKS if (strategy == s).any()},
        "epochs_inside_band": sum(1 for x in inside if x),
        "epochs": len(report),
        "max_error_to_counted_optimum": max(
            (r["price_error"] for r in report if r["price_error"] is not None), default=None
        ),
    }


def describe(result: dict[str, Any]) -> str:
    """A few lines for a terminal."""
    p = result["parameters"]
    lines = [
        f"cell market: {p['nodes']} nodes in {p['cells']} cells of {p['roster'][0]}-{p['roster'][1]}"
        f" members, {p['rounds']} rounds a phase"
    ]
    for r in result["epochs"]:
        pn = r["per_node"]
        lines.append(
            f"epoch {r['epoch']}: price {r['price']} (optimum {r['price_optimal']}, error"
            f" {r['price_error']}), {r['phases']} phases, per node {pn['bytes_received']['mean'] / 1e3:.0f} kB"
            f" received, {pn['signature_checks']['mean']:.0f} checks"
        )
    return "\n".join(lines)
