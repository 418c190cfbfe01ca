"""`redy sim balance --market cells --engine core`: the cell market run message by message.

Every node is a `redy.balancing.cell_node.CellNode`, the per-node protocol of the cell market,
driven on an event clock (`CellBus`): what a node sends reaches its target 2 to 5 ms later
(seeded), in order on each link, and each node is woken at its `next_deadline()`. Nodes are
placed in the cells as `redy.sim.cell_market` places them (`placement_key`), so each run can
put what the protocol cost beside what the model (`simulate_cells`, which applies the
agreement's outcome and counts its messages) says it costs, node for node the same rosters.

Keys are stand-ins with the real ones' sizes (`SimCellKeys`): a signature is a keyed BLAKE2b
of what is signed under the signer's secret (drawn from the seed), 96 characters like a base64
ECDSA P-256 signature, so only the signer makes it; what a real verification would cost is
what the core counts (`Costs.checks`). Offers are held to each node's certified limits (the
most its own offers consume and produce over the run, `offer_market.certified_limits`) with the
real check (`offers.offer_refusal`). tests/balancing/test_cell_node.py runs the same bus with
real ECDSA keys. Meant for up to a few thousand nodes (every message is a Python object).
"""

from __future__ import annotations

import hashlib
import heapq
import math
import random
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import orjson

from redy import messages
from redy.balancing import cell_node, cells
from redy.balancing.cell_node import Action, CellNode, Costs, Failed, Send, Timing
from redy.balancing.curves import Bid, Fixed
from redy.balancing.events import Cleared, Dropped
from redy.balancing.offers import offer_refusal, offer_values
from redy.balancing.reference import solve, solve_blocks
from redy.errors import RedyError, SimulationError
from redy.messages import NodeOffer
from redy.signing import signed_bytes
from redy.sim.adversaries import offer_strategies
from redy.sim.cell_market import ATTACKS, PLACEMENT_SEED, placement_key
from redy.sim.offer_market import SESSION, SIG_CHARS, certified_limits

EPOCH_S = 4.0
TIMING = Timing(
    epoch_s=EPOCH_S,
    window_s=0.05,
    propose_s=0.08,
    view_s=0.15,
    round_s=0.06,
    settle_s=0.02,
    finish_by=0.9,
    skew_s=0.5,
)
LINK_DELAY_S = (0.002, 0.005)

Hook = Callable[[float, list[Send]], list[Send]]


class SimCellKeys:
    """One node's stand-in keys (module docstring); `secrets` and `bounds` are the grid's."""

    def __init__(
        self,
        node: str,
        secrets: Mapping[str, bytes],
        bounds: Mapping[str, tuple[float, float]],
        capacity_kw: float,
    ) -> None:
        self.node, self._secrets, self._bounds = node, secrets, bounds
        self.capacity_kw = capacity_kw

    def _token(self, node: str, body: bytes) -> str | None:
        secret = self._secrets.get(node)
        if secret is None:
            return None
        return hashlib.blake2b(body, key=secret, digest_size=SIG_CHARS // 2).hexdigest()

    def sign(self, body: bytes) -> str:
        return self._token(self.node, body) or ""

    def verify(self, node: str, body: bytes, sig: str) -> bool:
        token = self._token(node, body)
        return token is not None and token == sig

    def sign_offer(self, epoch: int, values: tuple[float, ...]) -> NodeOffer:
        body = signed_bytes(self.node, epoch, values, SESSION)
        return NodeOffer(
            node=self.node, epoch=epoch, values=values, session=SESSION, sig=self.sign(body)
        )

    def offer_refusal(self, offer: NodeOffer) -> str | None:
        body = signed_bytes(offer.node, offer.epoch, offer.values, offer.session)
        if not self.verify(offer.node, body, offer.sig):
            return f"offer of {offer.node} with a signature that does not match it"
        why = offer_refusal(offer.values, self.capacity_kw, self._bounds.get(offer.node))
        return None if why is None else f"offer of {offer.node}: {why}"


class CellBus:
    """CellNodes on an in-memory bus (module docstring); `hooks[node]` rewrites what that node
    sends (a hostile member's behaviour, in tests). Per node it keeps the refusals it made
    (`dropped`), its last outcome and its costs of the epoch last run."""

    def __init__(self, nodes: Mapping[str, CellNode], rng: random.Random) -> None:
        self.nodes = dict(nodes)
        self.rng = rng
        self.hooks: dict[str, Hook] = {}
        self._heap: list[tuple[float, int, str, str, bytes]] = []
        self._seq = 0
        self._link_free: dict[tuple[str, str], float] = {}
        self.dropped: dict[str, list[Dropped]] = {n: [] for n in self.nodes}
        self.outcome: dict[str, Cleared | Failed] = {}
        self.costs: dict[str, Costs] = {}

    def post(self, now: float, sender: str, target: str, data: bytes) -> None:
        """`data` from `sender` reaches `target` a link delay later, after what went before."""
        at = max(now + self.rng.uniform(*LINK_DELAY_S), self._link_free.get((sender, target), 0.0))
        self._link_free[(sender, target)] = at + 1e-6
        self._push(at, target, sender, data)

    def _push(self, at: float, target: str, sender: str, data: bytes) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (at, self._seq, target, sender, data))

    def _act(self, name: str, now: float, actions: list[Action]) -> None:
        sends = [a for a in actions if isinstance(a, Send)]
        hook = self.hooks.get(name)
        for s in hook(now, sends) if hook is not None else sends:
            self.post(now, name, s.target, s.data)
        for a in actions:
            if isinstance(a, Dropped):
                self.dropped[name].append(a)
            elif isinstance(a, Cleared | Failed):
                self.outcome[name] = a
        t = self.nodes[name].next_deadline()
        if t < math.inf:
            self._push(t, name, "", b"")

    def run(self, start: float, end: float) -> None:
        """Wake every node at `start`, then deliver and wake until `end`; the costs kept are
        those of the epoch in progress at `end`."""
        for name, node in self.nodes.items():
            self._act(name, start, node.tick(start))
        while self._heap and self._heap[0][0] < end:
            now, _, target, sender, data = heapq.heappop(self._heap)
            at = self.nodes.get(target)
            if at is None:
                continue
            if sender:
                self._act(target, now, at.receive(sender, data, now))
            elif at.next_deadline() <= now:
                self._act(target, now, at.tick(now))
        self.costs = {name: node.costs for name, node in self.nodes.items()}


class _Members:
    """The hostile members of a run, picked as the model picks them (`cell_market`: a seeded
    sample, `ATTACKS` in turn) so both runs face the same members. Each runs the honest core
    (it votes, signs and speaks like any member) and lies through what it sends (`hook`) or
    bids (`bids`): sell-floor and buy-cap bid their full certified export or import whatever
    the price; two-faced sends a second signed offer (one block fewer) to half its mates,
    withhold sends its offer to half only, late sends it after the first window, replay sends
    last epoch's offer instead, early one signed for the next epoch; forge, each round, gives
    the partner cell a sum of its own making with its own signature and honest mates' names
    on bad ones."""

    def __init__(
        self,
        names: Sequence[str],
        adversaries: float,
        attack: str | None,
        seed: int,
        bounds: Mapping[str, tuple[float, float]],
    ) -> None:
        n = len(names)
        count = min(round(adversaries * n), n - 1)
        picked = sorted(random.Random(seed + 7).sample(range(n), count))
        kinds = offer_strategies(attack or "mix", ATTACKS)
        self.strategy = {names[i]: kinds[j % len(kinds)] for j, i in enumerate(picked)}
        self.bounds = bounds
        self._last: dict[str, bytes] = {}  # each member's own offer message of the epoch before
        self._forged: set[tuple[str, int, int, int]] = set()

    def bids(self, name: str, honest: list[Bid]) -> list[Bid]:
        s = self.strategy.get(name)
        if s == "sell-floor":
            return [Fixed(self.bounds[name][1])]
        if s == "buy-cap":
            return [Fixed(self.bounds[name][0])]
        return honest

    def hook(self, name: str, bus: CellBus, node: CellNode, keys: SimCellKeys) -> Hook:
        kind = self.strategy[name]

        def half(target: str) -> bool:
            return hashlib.blake2b(f"{name}/{target}".encode(), digest_size=1).digest()[0] % 2 == 1

        def rewrite(now: float, sends: list[Send]) -> list[Send]:
            out: list[Send] = []
            for send in sends:
                msg = orjson.loads(send.data)
                own = msg["t"] == "offers" and any(o["node"] == name for o in msg["o"])
                if kind == "forge" and msg["t"] == "cosign":
                    out += self._forge(node, keys, msg)
                if not own:
                    out.append(send)
                    continue
                epoch = int(msg["e"])
                if kind == "replay":
                    self._last.setdefault(f"{name}/{epoch}", send.data)
                    old = self._last.get(f"{name}/{epoch - 1}")
                    if old is not None:
                        out.append(Send(send.target, old))
                elif kind == "early":
                    values = tuple(msg["o"][0]["values"])
                    later = keys.sign_offer(epoch + 1, values)
                    data = cell_node.encode("offers", epoch + 1, o=[messages.to_dict(later)])
                    out.append(Send(send.target, data))
                elif kind == "late":
                    bus.post(now + 2 * TIMING.window_s, name, send.target, send.data)
                elif kind == "withhold":
                    if half(send.target):
                        out.append(send)
                elif kind == "two-faced" and half(send.target):
                    values = tuple(msg["o"][0]["values"])
                    other = values[:-3] if len(values) > 1 else (values[0] / 2,)
                    second = keys.sign_offer(epoch, other)
                    data = cell_node.encode("offers", epoch, o=[messages.to_dict(second)])
                    out.append(Send(send.target, data))
                else:
                    out.append(send)
            return out

        return rewrite

    def _forge(self, node: CellNode, keys: SimCellKeys, cosign: dict[str, Any]) -> list[Send]:
        """A forged bundle for the round of `cosign` to every member of the partner cell."""
        epoch, phase, rnd = int(cosign["e"]), int(cosign["p"]), int(cosign["r"])
        key = (node.node, epoch, phase, rnd)
        if key in self._forged:
            return []
        self._forged.add(key)
        roster = node.roster
        value = [1000.0] * cells.vector_length(cells.POINTS)
        sig = keys.sign(node.sum_body(epoch, phase, rnd, node.cell, value))
        signers = [[node.index, sig]]
        need = cells.signatures_needed(len(roster))
        signers += [[i, "A" * SIG_CHARS] for i in range(len(roster)) if i != node.index][: need - 1]
        data = cell_node.encode("bundle", epoch, p=phase, r=rnd, c=node.cell, v=value, s=signers)
        partner = node.dir.rosters.get(node.cell ^ (1 << rnd), ())
        return [Send(m, data) for m in partner]


def _count(members: _Members) -> dict[str, int]:
    out: dict[str, int] = {}
    for kind in members.strategy.values():
        out[kind] = out.get(kind, 0) + 1
    return out


def counted_optimum(
    bus: CellBus, where: cell_node.Directory, honest: Sequence[str], floor: float, cap: float
) -> float:
    """The reference optimum of the offers the cells decided to count (each cell's as its
    first honest member holds them)."""
    values: list[tuple[float, ...]] = []
    for roster in where.rosters.values():
        first = next((m for m in roster if m in set(honest)), None)
        if first is not None:
            values += [o.values for o in bus.nodes[first].counted_offers()]
    base = sum(v[0] for v in values)
    kw = np.array([x for v in values for x in v[1::3]])
    lo = np.array([x for v in values for x in v[2::3]])
    hi = np.array([x for v in values for x in v[3::3]])
    return solve_blocks(base, kw, lo, hi, floor, cap)[0]


def _stats(values: Sequence[float]) -> dict[str, float]:
    a = np.asarray(values, dtype=float)
    return {"mean": float(a.mean()), "max": float(a.max())} if len(a) else {"mean": 0.0, "max": 0.0}


def simulate_cell_protocol(
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
    model: dict[str, Any] | None = None,
    progress: Callable[[int], object] | None = None,
) -> dict[str, Any]:
    """Run `epochs` epochs of the cell market, every node a CellNode (module docstring); per
        epoch the price against the reference optimum, whether every node cleared the same float,
        and per node what the protocol cost, beside what `model` (the result of
        `cell_market.simulate_cells` on the same arguments) counts if given. `adversaries`: the
        hostile share, each running one of `attack` (`_Members`); then per epoch the band honest
        members of their certified sizes could move the price in, and the price against the
        optimum of the offers the cells counted. Times are the event clock's (links of 2-5 ms, no
    processing time): `price_at_s`, when each node had its price after the epoch's start."""
    if not 0.0 <= adversaries < 1.0:
        raise SimulationError(
            f"--adversaries is a fraction of the nodes in [0, 1), got {adversaries}"
        )
    started, cpu0 = time.perf_counter(), time.process_time()
    n = len(names)
    offers = [
        [offer_values(bids_at(i, e), capacity_kw) for i in range(n)] for e in range(1, epochs + 1)
    ]
    bounds = {}
    for i, name in enumerate(names):
        imp, exp = certified_limits(o[i] for o in offers)
        bounds[name] = (-imp, exp)
    try:
        where = cell_node.directory(
            PLACEMENT_SEED, {name: placement_key(seed, name) for name in names}, cell_size
        )
    except RedyError as exc:
        raise SimulationError(f"--engine core: {exc}") from None
    draw = random.Random(seed)
    secrets = {name: draw.randbytes(32) for name in names}
    epoch_now = [1]
    index = {name: i for i, name in enumerate(names)}

    members = _Members(names, adversaries, attack, seed, bounds)

    def bids_of(name: str) -> Callable[[], list[Bid]]:
        return lambda: members.bids(name, bids_at(index[name], epoch_now[0]))

    nodes = {
        name: CellNode(
            name,
            SimCellKeys(name, secrets, bounds, capacity_kw),
            where,
            bids_of(name),
            TIMING,
            capacity_kw=capacity_kw,
            bounds_kw=bounds[name],
            floor_eur_mwh=price_floor,
            cap_eur_mwh=price_cap,
        )
        for name in names
    }
    bus = CellBus(nodes, random.Random(seed + 1))
    for name in members.strategy:
        lying = SimCellKeys(name, secrets, bounds, capacity_kw)
        bus.hooks[name] = members.hook(name, bus, nodes[name], lying)
    honest = [name for name in names if name not in members.strategy]
    report = []
    for e in range(1, epochs + 1):
        epoch_now[0] = e
        bus.run(e * EPOCH_S - 0.5, (e + 1) * EPOCH_S - 0.01)
        honest_bids = [bids_at(index[name], e) for name in honest]
        ref = solve(honest_bids, price_floor, price_cap)
        results = [bus.outcome.get(name) for name in honest]
        cleared = [r for r in results if isinstance(r, Cleared) and r.epoch == e]
        prices = {r.result.price_eur_mwh for r in cleared}
        price = next(iter(prices)) if len(prices) == 1 else None
        optimum = ref.price_eur_mwh
        if members.strategy:  # the optimum of the offers the cells counted
            optimum = counted_optimum(bus, where, honest, price_floor, price_cap)
        costs = [bus.costs[name] for name in honest]
        per_node = {
            "messages_received": _stats([c.messages_in for c in costs]),
            "bytes_received": _stats([c.bytes_in for c in costs]),
            "messages_sent": _stats([c.messages_out for c in costs]),
            "bytes_sent": _stats([c.bytes_out for c in costs]),
            "signature_checks": _stats([c.checks for c in costs]),
            "signatures_made": _stats([c.signatures for c in costs]),
        }
        row: dict[str, Any] = {
            "epoch": e,
            "price": price,
            "price_optimal": optimum,
            "price_error": abs(price - optimum) if price is not None else None,
            "price_honest_optimum": ref.price_eur_mwh,
            "status": cleared[0].result.status if price is not None else "split or failed",
            "cleared": len(cleared),
            "price_at_s": _stats([r.elapsed_s for r in cleared]),  # after the epoch's start
            "failed": sorted({r.reason for r in results if isinstance(r, Failed)})[:5],
            "every_honest_node_same_price": len(cleared) == len(honest) and len(prices) == 1,
            "refusals": sum(len(d) for d in bus.dropped.values()),
            "per_node": per_node,
        }
        if members.strategy:
            lo_p = solve(
                [*honest_bids, *([Fixed(bounds[m][1])] for m in members.strategy)],
                price_floor,
                price_cap,
            ).price_eur_mwh
            hi_p = solve(
                [*honest_bids, *([Fixed(bounds[m][0])] for m in members.strategy)],
                price_floor,
                price_cap,
            ).price_eur_mwh
            row["band"] = [lo_p, hi_p]
            row["inside_band"] = price is not None and lo_p - 1e-6 <= price <= hi_p + 1e-6
        if model is not None:
            modelled = model["epochs"][e - 1]["per_node"]
            keys = ("bytes_received", "signature_checks")
            row["model"] = {k: modelled[k] for k in keys}
            row["protocol_over_model"] = {
                k: per_node[k]["mean"] / modelled[k]["mean"] if modelled[k]["mean"] else None
                for k in keys
            }
        report.append(row)
        for d in bus.dropped.values():
            d.clear()
        if progress is not None:
            progress(1)
    return {
        "parameters": {
            "market": "cells",
            "engine": "core",
            "nodes": n,
            "epochs": epochs,
            "seed": seed,
            "cell_size": cell_size,
            "cells": where.cells,
            "roster": [
                min(map(len, where.rosters.values())),
                max(map(len, where.rosters.values())),
            ],
            "epoch_s": EPOCH_S,
            "link_delay_s": list(LINK_DELAY_S),
            "keys": "stand-ins (keyed BLAKE2b, the size of ECDSA P-256 signatures)",
            "adversaries": adversaries,
        },
        **(
            {"adversaries": {"members": len(members.strategy), "strategies": _count(members)}}
            if members.strategy
            else {}
        ),
        "epochs": report,
        "cpu_s": round(time.process_time() - cpu0, 3),
        "elapsed_s": round(time.perf_counter() - started, 2),
    }
