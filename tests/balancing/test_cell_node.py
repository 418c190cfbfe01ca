"""The cell market's per-node protocol (redy.balancing.cell_node), message by message, with
real ECDSA P-256 keys, on an in-memory bus with link delays: every honest node clears the
reference solver's price, the same float everywhere, and each hostile member of point 4 of
issue 25 is met as cells.py's docstring says (a test each); what it costs per node against the
simulator's model (redy.sim.cell_market) for the same grid."""

from __future__ import annotations

import base64
import heapq
import math
import random
from collections.abc import Callable, Sequence

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from redy.balancing import cell_node
from redy.balancing.cell_node import CellNode, Failed, Send, Timing
from redy.balancing.curves import Bid
from redy.balancing.events import Cleared, Dropped
from redy.balancing.offers import offer_refusal, offer_values
from redy.balancing.reference import solve
from redy.messages import NodeOffer
from redy.signing import signed_bytes
from redy.sim.balance import DEFAULT_MIX, node_bids

pytestmark = pytest.mark.pure

SEED = b"cells-test-period"
EPOCH = 1
EPOCH_S = 10.0
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
_ECDSA = ec.ECDSA(hashes.SHA256())


class Grid:
    """N nodes' real keys, their bids and certified limits (from their honest bids)."""

    def __init__(self, n: int, seed: int) -> None:
        rng = random.Random(seed)
        kinds = rng.choices(list(DEFAULT_MIX), weights=list(DEFAULT_MIX.values()), k=n)
        self.names = [f"n{i:02d}" for i in range(n)]
        self.bids: dict[str, list[Bid]] = {
            name: node_bids(kinds[i], random.Random(seed * 1000 + i), rng.random())
            for i, name in enumerate(self.names)
        }
        self.private = {n: ec.generate_private_key(ec.SECP256R1()) for n in self.names}
        self.public = {n: k.public_key() for n, k in self.private.items()}
        self.bounds: dict[str, tuple[float, float]] = {}
        for name, bids in self.bids.items():
            v = offer_values(bids)
            self.bounds[name] = (min(v[0], 0.0), max(v[0] + sum(v[1::3]), 0.0))
        der = {
            n: k.public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            for n, k in self.public.items()
        }
        self.directory = cell_node.directory(SEED, der, 8)

    def keys(self, name: str) -> Keys:
        return Keys(self, name)

    def sign(self, name: str, body: bytes) -> str:
        return base64.b64encode(self.private[name].sign(body, _ECDSA)).decode()

    def offer(self, name: str, epoch: int, values: Sequence[float]) -> NodeOffer:
        v = tuple(float(x) for x in values)
        sig = self.sign(name, signed_bytes(name, epoch, v, 1))
        return NodeOffer(node=name, epoch=epoch, values=v, session=1, sig=sig)


class Keys:
    """One node's key and the grid's public keys and certified limits (real ECDSA)."""

    def __init__(self, grid: Grid, name: str) -> None:
        self.grid, self.name = grid, name

    def sign_offer(self, epoch: int, values: tuple[float, ...]) -> NodeOffer:
        return self.grid.offer(self.name, epoch, values)

    def sign(self, body: bytes) -> str:
        return self.grid.sign(self.name, body)

    def verify(self, node: str, body: bytes, sig: str) -> bool:
        key = self.grid.public.get(node)
        try:
            assert key is not None
            key.verify(base64.b64decode(sig, validate=True), body, _ECDSA)
        except (AssertionError, ValueError, InvalidSignature):
            return False
        return True

    def offer_refusal(self, offer: NodeOffer) -> str | None:
        body = signed_bytes(offer.node, offer.epoch, offer.values, offer.session)
        if not self.verify(offer.node, body, offer.sig):
            return f"offer of {offer.node} with a signature that does not match it"
        why = offer_refusal(offer.values, math.inf, self.grid.bounds[offer.node])
        return None if why is None else f"offer of {offer.node}: {why}"


Hook = Callable[[float, list[Send]], list[Send]]


class Net:
    """The nodes on an in-memory bus: a message reaches its target 2-5 ms later (seeded), in
    order per link; `hooks` rewrite what a hostile node sends."""

    def __init__(self, grid: Grid, seed: int = 1, bids: dict[str, list[Bid]] | None = None):
        self.grid = grid
        self.rng = random.Random(seed)
        self.nodes = {
            n: CellNode(
                n,
                grid.keys(n),
                grid.directory,
                (lambda n=n: (bids or grid.bids)[n]),
                TIMING,
                bounds_kw=grid.bounds[n],
            )
            for n in grid.names
        }
        self.hooks: dict[str, Hook] = {}
        self.heap: list[tuple[float, int, str, str, bytes]] = []
        self.seq = 0
        self.link_free: dict[tuple[str, str], float] = {}
        self.dropped: dict[str, list[Dropped]] = {n: [] for n in grid.names}
        self.outcome: dict[str, Cleared | Failed] = {}
        self.costs: dict[str, cell_node.Costs] = {}

    def post(self, now: float, sender: str, target: str, data: bytes) -> None:
        at = max(now + self.rng.uniform(0.002, 0.005), self.link_free.get((sender, target), 0.0))
        self.link_free[(sender, target)] = at + 1e-6
        self.seq += 1
        heapq.heappush(self.heap, (at, self.seq, target, sender, data))

    def _act(self, name: str, now: float, actions: list[cell_node.Action]) -> None:
        sends = [a for a in actions if isinstance(a, Send)]
        hook = self.hooks.get(name)
        if hook is not None:
            sends = hook(now, sends)
        for s in sends:
            self.post(now, name, s.target, s.data)
        for a in actions:
            if isinstance(a, Dropped):
                self.dropped[name].append(a)
            elif isinstance(a, Cleared | Failed):
                self.outcome[name] = a
        self._wake(name)

    def _wake(self, name: str) -> None:
        t = self.nodes[name].next_deadline()
        if t < math.inf:
            self.seq += 1
            heapq.heappush(self.heap, (t, self.seq, name, "", b""))

    def run(self, epoch: int = EPOCH) -> None:
        """From just before `epoch` until its end."""
        start = epoch * EPOCH_S
        for name, node in self.nodes.items():
            self._act(name, start - 1.0, node.tick(start - 1.0))
        end = start + EPOCH_S - 0.01
        while self.heap and self.heap[0][0] < end:
            now, _, target, sender, data = heapq.heappop(self.heap)
            node = self.nodes[target]
            if sender:
                self._act(target, now, node.receive(sender, data, now))
            elif node.next_deadline() <= now:
                self._act(target, now, node.tick(now))
        for name, node in self.nodes.items():
            self.costs[name] = node.costs


def _cells(grid: Grid) -> dict[int, tuple[str, ...]]:
    return dict(grid.directory.rosters)


def _prices(net: Net, honest: Sequence[str]) -> set[float]:
    out = set()
    for n in honest:
        o = net.outcome.get(n)
        assert isinstance(o, Cleared), (n, o)
        out.add(o.result.price_eur_mwh)
    return out


def _check_price(net: Net, honest: Sequence[str], counted_bids: list[list[Bid]]) -> float:
    prices = _prices(net, honest)
    assert len(prices) == 1, prices  # the same float on every honest node
    price = prices.pop()
    ref = solve(counted_bids, -500.0, 4000.0)
    assert abs(price - ref.price_eur_mwh) <= 1e-6, (price, ref.price_eur_mwh)
    return price


@pytest.mark.parametrize(("n", "seed"), [(32, 3), (64, 5)])
def test_every_honest_node_clears_the_reference_price(n: int, seed: int) -> None:
    grid = Grid(n, seed)
    rosters = _cells(grid)
    assert 4 <= len(rosters) <= 8 and min(len(r) for r in rosters.values()) >= 3
    net = Net(grid, seed)
    net.run()
    _check_price(net, grid.names, list(grid.bids.values()))
    assert not any(net.dropped.values()), net.dropped
