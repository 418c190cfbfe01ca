"""`redy sim balance --market offers`: the offer market of the governance units, N nodes in one
process, on a discrete-event clock.

Every node is a `redy.balancing.offers.OfferCore`, the very core a governance unit runs, driven
as the unit drives it: `handle(now, event)` at its `next_deadline()` and on every message it
gets. What the unit does with the network the driver does here: a `Send` reaches its target
`LINK_DELAY_S` +- `LINK_JITTER_S` later (seeded), as a `Received`; the neighbours are the node's
view in the simulator's overlay (the shuffle core of redy.sim.membership, one shuffle per
epoch), and the bids are the node's for the epoch the clock is in.

Keys and certificates are stand-ins of the real ones' sizes (`SimKeys`: an offer's `sig` is a
keyed hash of what the real Signer signs, its `cert` a string naming the node), checked by a
`SimVerifier` per node that follows `signing.Verifier` step for step and counts what costs an
ECDSA verification in the real one: each new certificate, each offer's signature. Each node's
certificate states its limits (import_kw, export_kw): the most its own bids consume and
produce over the run (`certified_limits`); offers beyond them are refused with the real check
(`offers.offer_refusal` on the `Grant`'s bounds), and the core bids within them.

Measured per node and epoch: the bytes it received (the codec's: every message's length is
that of `redy.messages.encode_with`, the governance's encoding, see `_Sizes`), the signatures
and certificates it checked, and an estimate of the memory its market state takes
(`OfferGrid.memory`: not tracemalloc, which cannot tell one simulated node's objects from
another's, and here nodes share the offer objects a real node would decode for itself).
"""

from __future__ import annotations

import hashlib
import heapq
import math
import random
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import attrs
import numpy as np
import orjson

from redy import messages
from redy.balancing.curves import Bid
from redy.balancing.events import Cleared, Dropped, Tick
from redy.balancing.offers import (
    OfferCore,
    Received,
    Send,
    Timing,
    cert_missing,
    offer_refusal,
    offer_values,
)
from redy.balancing.reference import solve
from redy.errors import SimulationError
from redy.messages import NodeOffer
from redy.pki import Grant
from redy.sim.membership import ShuffleNet, bootstrap_overlay

if TYPE_CHECKING:
    from redy.sim.adversaries import OfferAttacks

LINK_DELAY_S = 0.005
LINK_JITTER_S = 0.002
EPOCH_S = 4.0  # the default market interval of the simulated offer market
CERT_CHARS = 700  # a node certificate of redy.pki with its limits, base64 DER, measured
SIG_CHARS = 96  # a base64 ECDSA P-256 signature (70-72 bytes of DER)
SESSION = 1_765_000_000_000  # every simulated governance's start, UNIX ms (its digits count)
_WALL_S = 1_765_000_000.123456  # the clock stamped into ts_s: its digits count in the bytes
_ENTRY_BYTES = 32  # one entry of a CPython set or dict of strings (measured: 26-33)
_KEY_BYTES = 200  # a checked certificate's public key and its record in the Verifier (guess)

Limits = tuple[float, float]  # certified (import_kw, export_kw)


def certified_limits(offers: Iterable[Sequence[float]]) -> Limits:
    """The most a node's offers (`offer_values`) ever consume and produce: (import_kw,
    export_kw), what the grid CA certifies for it here."""
    import_kw = export_kw = 0.0
    for v in offers:
        import_kw = max(import_kw, -v[0])
        export_kw = max(export_kw, v[0] + sum(v[1::3]))
    return import_kw, export_kw


class SimKeys:
    """The grid's keys and certificates, stand-ins for redy.pki's with the same sizes: a
    signature is a keyed hash of what `signing.Signer` signs (node, epoch, values, session) under
    the node's key (drawn from the seed), so only the node's own signer makes it; a certificate
    is a string naming the node, of a real one's length, whose `Grant` states its limits."""

    def __init__(self, seed: int, limits: Mapping[str, Limits], capacity_kw: float) -> None:
        self._seed = seed
        self._keys: dict[str, bytes] = {}
        self.capacity_kw = capacity_kw
        self.grants = {n: Grant(import_kw=i, export_kw=e) for n, (i, e) in limits.items()}
        self._certs = {self.cert(n): n for n in limits}

    @staticmethod
    def cert(node: str) -> str:
        return f"sim-cert:{node}:".ljust(CERT_CHARS, "A")

    def member(self, cert: str) -> str | None:
        """The node a certificate of the grid CA names (None: the CA did not issue it)."""
        return self._certs.get(cert)

    def token(self, node: str, epoch: int, values: Sequence[float], session: int | None) -> str:
        key = self._keys.get(node)
        if key is None:
            key = self._keys[node] = hashlib.blake2b(f"{self._seed}/{node}".encode()).digest()
        body: list[object] = [node, epoch, [float(v) for v in values]]
        if session is not None:
            body.append(session)
        data = orjson.dumps(body)
        return hashlib.blake2b(data, key=key, digest_size=SIG_CHARS // 2).hexdigest()

    def sign(self, node: str, epoch: int, values: Sequence[float]) -> NodeOffer:
        v = tuple(float(x) for x in values)
        return NodeOffer(
            node=node,
            epoch=epoch,
            values=v,
            session=SESSION,
            cert=self.cert(node),
            sig=self.token(node, epoch, v, SESSION),
        )

    def signer(self, node: str) -> Callable[[int, tuple[float, ...]], NodeOffer]:
        return lambda epoch, values: self.sign(node, epoch, values)

    def bounds_kw(self, node: str) -> tuple[float, float]:
        return self.grants[node].bounds_kw(self.capacity_kw)


class SimVerifier:
    """One node's stand-in for `signing.Verifier`, step for step and with its cost model: a
    certificate not seen before is checked against the CA (`cert_checks`, an ECDSA verification
    each), then the offer's signature (`checked`, one each), then the offer against the limits
    its certificate states (`offers.offer_refusal`, the real check). An offer without its
    certificate is checked with the one held for its node (`cert_missing` if none)."""

    def __init__(self, keys: SimKeys) -> None:
        self._keys = keys
        self._by_cert: dict[str, str | None] = {}
        self._by_node: dict[str, str] = {}
        self.checked = 0
        self.cert_checks = 0

    def cert_of(self, node: str) -> str | None:
        return self._by_node.get(node)

    def held_certs(self) -> int:
        return len(self._by_cert)

    def refusal(self, offer: NodeOffer) -> str | None:
        keys = self._keys
        if offer.cert is None:
            held = self._by_node.get(offer.node)
            if held is None:
                return cert_missing
            member: str | None = offer.node
        else:
            if offer.cert in self._by_cert:
                member = self._by_cert[offer.cert]
            else:
                self.cert_checks += 1
                member = self._by_cert[offer.cert] = keys.member(offer.cert)
            if member is None:
                return f"offer of {offer.node} with a certificate the grid CA did not issue"
        if member != offer.node:
            return f"offer of {offer.node} signed by {member}'s certificate"
        self.checked += 1
        if offer.sig != keys.token(offer.node, offer.epoch, offer.values, offer.session):
            if offer.cert is None:
                return cert_missing  # as the real one: signed with a certificate not held
            return f"offer of {offer.node} with a signature that does not match it"
        if offer.cert is not None:
            self._by_node[offer.node] = offer.cert
        why = offer_refusal(offer.values, keys.capacity_kw, keys.bounds_kw(member))
        return None if why is None else f"offer of {offer.node}: {why}"


class _Sizes:
    """The length of each message as the governance encodes it (`messages.encode_with` of a
    Gossip with `ts_s`, each offer encoded once): the head once per sender and epoch, each offer
    once, then the sum."""

    def __init__(self) -> None:
        self._heads: dict[tuple[str, int], int] = {}
        self._offers: dict[tuple[str, bool], int] = {}  # (sig, with its certificate)
        self._held: dict[tuple[str, bool], int] = {}

    def head(self, sender: str, epoch: int) -> int:
        key = (sender, epoch)
        n = self._heads.get(key)
        if n is None:
            if len(self._heads) > 100_000:
                self._heads.clear()
            n = self._heads[key] = len(messages.encode(_gossip(sender, epoch)))
        return n

    def offer(self, o: NodeOffer) -> int:
        key = (o.sig, o.cert is not None)
        n = self._offers.get(key)
        if n is None:
            n = self._offers[key] = len(messages.encode(o))
        return n

    def message(self, sender: str, epoch: int, offers: Sequence[NodeOffer]) -> int:
        """`len(encode_with(gossip, "offers", [encode(o) for o in offers]))`."""
        return self.head(sender, epoch) + sum(self.offer(o) for o in offers) + len(offers) - 1

    def held(self, o: NodeOffer) -> int:
        """What one offer takes in a node's memory (`_held_bytes`)."""
        key = (o.sig, o.cert is not None)
        n = self._held.get(key)
        if n is None:
            n = self._held[key] = _held_bytes(o, self.offer(o))
        return n

    def forget(self) -> None:
        """An epoch's offers are not seen again (replays are encoded afresh)."""
        self._offers.clear()
        self._held.clear()


def _gossip(sender: str, epoch: int) -> messages.Gossip:
    return messages.Gossip(
        sender=sender,
        epoch=epoch,
        round=0,
        algorithm="offers",
        weight=0.0,
        values=(),
        ts_s=_WALL_S,
        offers=(),
    )


def _held_bytes(o: NodeOffer, encoded: int) -> int:
    """An estimate of what one offer takes in a governance unit: the decoded NodeOffer (its
    object, strings, tuple and floats), its encoding kept for passing it on (bytes of
    `encoded`), its copy without the certificate (for the neighbours that hold it), and its
    entries in the core's dicts of offers by node and by signature and of those copies."""
    decoded = sum(sys.getsizeof(x) for x in (o, o.node, o.epoch, o.cert, o.sig, o.values))
    decoded += sum(sys.getsizeof(v) for v in o.values)
    return decoded + sys.getsizeof(b"") + encoded + sys.getsizeof(o) + 3 * _ENTRY_BYTES


@attrs.define
class _Epoch:
    """What the honest nodes did in one epoch, by node index."""

    price: dict[int, float] = attrs.Factory(dict)  # the last price each node cleared at
    status: dict[int, str] = attrs.Factory(dict)
    heard: dict[int, int] = attrs.Factory(dict)
    # Each node's bids' injections at its last price (kW).
    dispatch_kw: dict[int, list[float]] = attrs.Factory(dict)
    all_honest_s: dict[int, float] = attrs.Factory(dict)  # first clearing with every honest offer
    accepted: dict[int, set[str]] = attrs.Factory(dict)  # honest offers each node took in
    early: int = 0  # honest nodes that started the epoch before its start


class OfferGrid:
    """N OfferCores over the overlay `net`, on one event queue (module docstring)."""

    def __init__(
        self,
        names: Sequence[str],
        net: ShuffleNet,
        timing: Timing,
        keys: SimKeys,
        capacity_kw: float,
        floor_eur_mwh: float,
        cap_eur_mwh: float,
        rng: random.Random,
        attacks: OfferAttacks | None = None,
    ) -> None:
        self.names = list(names)
        self.index = {n: i for i, n in enumerate(self.names)}
        self.net = net
        self.timing = timing
        self.keys = keys
        self.verifiers = [SimVerifier(keys) for _ in names]
        self.rng = rng
        self.attacks = attacks
        self.evil: frozenset[int] = attacks.evil if attacks is not None else frozenset()
        self.honest = [i for i in range(len(names)) if i not in self.evil]
        self.sizes = _Sizes()
        n = len(names)
        self.bids: list[Sequence[Bid]] = [() for _ in range(n)]  # this epoch's, per node
        self.views: list[list[str]] = [[] for _ in range(n)]
        self.cores = [
            OfferCore(
                self.names[i],
                timing,
                bids=self._bids_of(i),
                neighbours=self._neighbours_of(i),
                sign=keys.signer(self.names[i]),
                refusal=self._refusal_of(i),
                capacity_kw=capacity_kw,
                floor_eur_mwh=floor_eur_mwh,
                cap_eur_mwh=cap_eur_mwh,
                bounds_kw=keys.bounds_kw(self.names[i]),
                cert_of=self.verifiers[i].cert_of,
            )
            for i in range(n)
        ]
        self._heap: list[tuple[float, int, int, Any]] = []
        self._seq = 0
        self._deadline = [math.inf] * n
        self.now = 0.0
        self.epochs: dict[int, _Epoch] = {}
        self.messages = 0
        self.dropped = 0
        self.bytes_in = np.zeros(n)
        self.offers_in = np.zeros(n)
        self.offers_out = np.zeros(n)
        self.held = np.zeros(n)  # bytes of the offers each node took in this epoch
        self.certs_in = np.zeros(n)  # offers received with their certificate, this epoch
        self.certs_held = np.zeros(n)  # of those, certificates its Verifier already held
        self._checks0 = np.zeros(n)  # each verifier's counts when the epoch began
        self._certs0 = np.zeros(n)

    # --- what the cores ask ------------------------------------------------------------------

    def _bids_of(self, i: int) -> Callable[[], Sequence[Bid]]:
        return lambda: self.bids[i]

    def _neighbours_of(self, i: int) -> Callable[[], Sequence[str]]:
        return lambda: self.views[i]

    def _refusal_of(self, i: int) -> Callable[[NodeOffer], str | None]:
        verify = self.verifiers[i].refusal

        def refusal(offer: NodeOffer) -> str | None:
            reason = verify(offer)
            if reason is None:
                self.held[i] += self.sizes.held(offer)
                j = self.index.get(offer.node)
                if j is not None and j not in self.evil:
                    self._epoch(offer.epoch).accepted.setdefault(i, set()).add(offer.node)
            return reason

        return refusal

    def _epoch(self, epoch: int) -> _Epoch:
        e = self.epochs.get(epoch)
        if e is None:
            e = self.epochs[epoch] = _Epoch()
        return e

    # --- the clock ---------------------------------------------------------------------------

    def _push(self, t: float, node: int, what: Any) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (t, self._seq, node, what))

    def _schedule(self, i: int) -> None:
        d = max(self.cores[i].next_deadline(), self.now)
        if d != self._deadline[i]:
            self._deadline[i] = d
            self._push(d, i, None)

    def start(self, t: float) -> None:
        """Every node looks at `t` (a governance unit's first look at its clock)."""
        order = list(range(len(self.names)))
        self.rng.shuffle(order)
        for i in order:
            self._deadline[i] = t
            self._push(t, i, None)

    def at(self, t: float, node: int, what: Any) -> None:
        """Wake `node`'s attack at `t` (`what` is handed to OfferAttacks.timed)."""
        self._push(t, node, ("attack", what))

    def run_until(self, t_end: float) -> None:
        """Carry out every event before `t_end`."""
        heap = self._heap
        while heap and heap[0][0] < t_end:
            t, _, i, what = heapq.heappop(heap)
            self.now = t
            if what is None:
                if self._deadline[i] != t:
                    continue  # superseded by a later look
                self._deadline[i] = math.inf
                self._handle(i, Tick())
            elif isinstance(what, Received):
                if i in self.evil:
                    assert self.attacks is not None
                    self.attacks.heard(i, what)
                self._handle(i, what)
            else:
                assert self.attacks is not None
                for s in self.attacks.timed(i, t, what[1], self.views[i]):
                    self._send(i, s)

    def _handle(self, i: int, event: Tick | Received) -> None:
        core = self.cores[i]
        was = core.epoch
        actions = core.handle(self.now, event)
        early = self.now < core.epoch * self.timing.epoch_s - 1e-9
        if core.epoch != was and early and i not in self.evil:
            self._epoch(core.epoch).early += 1
        sends = [a for a in actions if isinstance(a, Send)]
        if i in self.evil:
            assert self.attacks is not None
            sends = self.attacks.outgoing(i, self.now, sends)
        for s in sends:
            self._send(i, s)
        for a in actions:
            if isinstance(a, Cleared) and i not in self.evil:
                self._cleared(i, a)
            elif isinstance(a, Dropped):
                self.dropped += 1
        self._schedule(i)

    def _send(self, i: int, s: Send) -> None:
        j = self.index.get(s.target)
        if j is None or not s.offers:
            return
        self.messages += 1
        self.bytes_in[j] += self.sizes.message(self.names[i], s.epoch, s.offers)
        self.offers_in[j] += len(s.offers)
        self.offers_out[i] += len(s.offers)
        certs = [o.node for o in s.offers if o.cert is not None]
        self.certs_in[j] += len(certs)
        held = self.verifiers[j].cert_of
        self.certs_held[j] += sum(1 for node in certs if held(node) is not None)
        delay = LINK_DELAY_S + self.rng.uniform(-LINK_JITTER_S, LINK_JITTER_S)
        self._push(self.now + delay, j, Received(self.names[i], s.epoch, s.offers))

    def _cleared(self, i: int, c: Cleared) -> None:
        e = self._epoch(c.epoch)
        first = i not in e.price
        e.price[i] = c.result.price_eur_mwh
        e.status[i] = c.result.status
        e.heard[i] = c.heard
        e.dispatch_kw[i] = [c.result.dispatch_kw(b) for b in c.bids]
        if i not in e.all_honest_s and len(e.accepted.get(i, ())) >= len(self.honest) - 1:
            e.all_honest_s[i] = c.elapsed_s
        if first and self.attacks is not None:
            self.attacks.on_cleared(self, c.epoch, len(e.price))

    def new_epoch(self) -> None:
        """Counters of one epoch start from zero."""
        self.bytes_in[:] = 0
        self.offers_in[:] = 0
        self.offers_out[:] = 0
        self.certs_in[:] = 0
        self.certs_held[:] = 0
        self.held[:] = 0
        self._checks0[:] = [v.checked for v in self.verifiers]
        self._certs0[:] = [v.cert_checks for v in self.verifiers]
        self.sizes.forget()

    def checks(self) -> tuple[np.ndarray, np.ndarray]:
        """Signatures and certificates each node checked in this epoch."""
        sigs = np.array([v.checked for v in self.verifiers], dtype=float) - self._checks0
        certs = np.array([v.cert_checks for v in self.verifiers], dtype=float) - self._certs0
        return sigs, certs

    def memory(self) -> np.ndarray:
        """An estimate of each node's market state at the epoch's end, bytes: the offers it
        took in (`_held_bytes`), its per-neighbour sets of the signatures each has (an entry
        per offer sent or received), and per node whose certificate it holds: the certificate
        and key its Verifier keeps, and the core's records of that node's certificate and
        session (an entry and a small tuple each)."""
        per_node = sys.getsizeof(SimKeys.cert("")) + _KEY_BYTES + 2 * _ENTRY_BYTES
        per_node += 2 * (_ENTRY_BYTES + sys.getsizeof(("", 0)))
        certs = np.array([v.held_certs() for v in self.verifiers], dtype=float)
        out: np.ndarray = (
            self.held + _ENTRY_BYTES * (self.offers_in + self.offers_out) + per_node * certs
        )
        return out


def _stats(values: np.ndarray) -> dict[str, float]:
    if not len(values):
        return {"mean": 0.0, "max": 0.0}
    return {"mean": float(values.mean()), "max": float(values.max())}


def simulate_offers(
    *,
    names: Sequence[str],
    bids_at: Callable[[int, int], list[Bid]],
    epochs: int,
    view_size: int,
    shuffle_length: int,
    seed: int,
    capacity_kw: float,
    price_floor: float,
    price_cap: float,
    epoch_s: float = EPOCH_S,
    adversaries: float = 0.0,
    attack: str | None = None,
    progress: Callable[[int], object] | None = None,
) -> dict[str, Any]:
    """Run `epochs` epochs of the offer market over N = len(names) nodes; `bids_at(i, epoch)`:
    node i's bids in that epoch (epochs from 1). See the module docstring for what is
    measured; with `adversaries` (a fraction of the nodes) running `attack` (a strategy of
    redy.sim.adversaries.OFFER_ATTACKS, a comma-separated list of them, or `mix`)."""
    started, cpu0 = time.perf_counter(), time.process_time()
    n = len(names)
    if epoch_s <= 0:
        raise SimulationError(f"--epoch-s must be > 0, got {epoch_s}")
    timing = Timing(epoch_s)
    all_bids = {(i, e): bids_at(i, e) for i in range(n) for e in range(1, epochs + 1)}
    limits = {
        names[i]: certified_limits(
            offer_values(all_bids[i, e], capacity_kw) for e in range(1, epochs + 1)
        )
        for i in range(n)
    }
    keys = SimKeys(seed, limits, capacity_kw)
    net = ShuffleNet(n, view_size, shuffle_length, "redy", seed)
    bootstrap_overlay(net, "random")
    for _ in range(10):
        net.cycle(0.0)
    attacks = None
    if adversaries:
        from redy.sim.adversaries import OfferAttacks, check, pick

        check(adversaries, None)
        arng = random.Random(seed + 7)
        evil = pick(n, adversaries, arng)
        attacks = OfferAttacks(
            evil, attack or "mix", names, limits, keys, timing, price_floor, price_cap
        )
    elif attack is not None:
        raise SimulationError("--attack needs --adversaries")
    grid = OfferGrid(
        names,
        net,
        timing,
        keys,
        capacity_kw,
        price_floor,
        price_cap,
        random.Random(seed + 11),
        attacks,
    )
    grid.start(epoch_s)  # the start of epoch 1
    report = []
    for epoch in range(1, epochs + 1):
        net.cycle(0.0)
        grid.views = [[names[j] for j in net.nodes[i].neighbours()] for i in range(n)]
        grid.bids = [all_bids[i, epoch] for i in range(n)]
        if attacks is not None:
            attacks.begin(grid, epoch, grid.bids)
        grid.new_epoch()
        cpu = time.process_time()
        grid.run_until((epoch + 1) * epoch_s)
        cpu = time.process_time() - cpu
        honest_bids = [all_bids[i, epoch] for i in grid.honest]
        report.append(overlay_report(grid, epoch, honest_bids, cpu))
        grid.epochs.pop(epoch - 1, None)  # its report needed it (the peers heard); no more
        if attacks is not None:
            attacks.record(report[-1], honest_bids)
        if progress is not None:
            progress(1)
    return {
        "parameters": {
            "market": "offers",
            "nodes": n,
            "epochs": epochs,
            "view": view_size,
            "shuffle": shuffle_length,
            "seed": seed,
            "epoch_s": epoch_s,
            "timing": attrs.asdict(timing),
            "link_delay_s": [LINK_DELAY_S, LINK_JITTER_S],
            "price_range": [price_floor, price_cap],
            "capacity_kw": capacity_kw,
            "memory": "estimate (OfferGrid.memory), not tracemalloc",
        },
        "epochs": report,
        **({"adversaries": attacks.report()} if attacks is not None else {}),
        "messages": grid.messages,
        "dropped": grid.dropped,
        "cpu_s": round(time.process_time() - cpu0, 3),
        "elapsed_s": round(time.perf_counter() - started, 2),
    }


def overlay_report(
    grid: OfferGrid, epoch: int, honest_bids: list[list[Bid]], cpu: float
) -> dict[str, Any]:
    """One epoch's figures for the honest nodes (module docstring)."""
    honest = grid.honest
    e = grid.epochs.get(epoch, _Epoch())
    floor, cap = grid.cores[0].floor_eur_mwh, grid.cores[0].cap_eur_mwh
    ref = solve(honest_bids, floor, cap)
    prices = np.array([e.price[i] for i in honest if i in e.price])
    statuses = Counter(e.status.get(i, "none") for i in honest)
    reached = [e.all_honest_s[i] for i in honest if i in e.all_honest_s]
    everyone = len(reached) == len(honest)
    last_s = max(reached) if everyone else None
    # The wave period of this epoch: the crowd's once nodes knew more than `crowd` peers.
    before = grid.epochs.get(epoch - 1)
    peers = max(before.heard.values(), default=0) if before is not None else 0
    wave_s = grid.timing.for_peers(peers)[0]
    idx = np.asarray(honest, dtype=np.int64)
    sigs, certs = grid.checks()
    dispatch = [p for i in honest for p in e.dispatch_kw.get(i, ())]
    injection = sum(dispatch, 0.0)
    load = sum((-p for p in dispatch if p < 0), 0.0)
    return {
        "epoch": epoch,
        "nodes": len(grid.names),
        "honest": len(honest),
        "price": float(np.median(prices)) if len(prices) else None,
        "price_optimal": ref.price_eur_mwh,
        "status_optimal": ref.status,
        "price_error": float(np.abs(prices - ref.price_eur_mwh).max()) if len(prices) else None,
        "price_spread": float(prices.max() - prices.min()) if len(prices) else None,
        "price_range": [float(prices.min()), float(prices.max())] if len(prices) else None,
        "statuses": dict(statuses),
        # The honest nodes' net injection at their prices (with members, theirs is missing).
        "imbalance_kw": injection,
        "load_kw": load,
        "imbalance_ratio": abs(injection) / load if load else 0.0,
        "cleared_with_every_honest_offer": len(reached) / len(honest),
        "last_cleared_s": last_s,
        "waves": last_s / wave_s if last_s is not None else None,
        "wave_s": wave_s,
        "early_starts": e.early,
        "per_node": {
            "bytes_received": _stats(grid.bytes_in[idx]),
            "offers_received": _stats(grid.offers_in[idx]),
            "certificates_received": _stats(grid.certs_in[idx]),
            "certificates_already_held": _stats(grid.certs_held[idx]),
            "signature_checks": _stats(sigs[idx]),
            "certificate_checks": _stats(certs[idx]),
            "memory_bytes": _stats(grid.memory()[idx]),
        },
        "cpu_s": round(cpu, 3),
    }
