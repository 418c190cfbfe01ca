"""`redy sim membership`: the shuffle core (redy.membership.cyclon) for N nodes in one process.

Cycle by cycle, every live node initiates one shuffle, in a random order. The simulator is the
network, not an oracle: a node learns that a neighbour is dead only as the real process would —
its request to that neighbour's broker is refused (strong evidence, reported to the core as
`on_unreachable`), and with the `redy` and `verify` detectors also its per-period state push to
each neighbour's broker (`verify`: and its dial of every entry a merge admits) — and a lost
message is only a timeout. Crashes, joins (through one
introducer, seeded from its view as a joining process reads the retained view) and message loss
are parameters. Metrics are computed on the overlay's graph; path lengths and clustering are
sampled for large N (the output says how many samples).

`secure=True` (`--secure`, issue 26) runs the shuffle with signed descriptors
(redy.membership.secure.SecureCyclon) instead, and its hostile members are the coalition of
redy.sim.coalition; each run reports the shuffle's bytes per node and period (a model of the
wire: redy.sim.sweep.message_sizes plus what signing adds) so both shuffles can be compared.
"""

from __future__ import annotations

import random
import time
from collections import deque
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from redy.errors import SimulationError
from redy.membership.cyclon import Cyclon, Neighbour
from redy.membership.secure import Descriptor, SecureCyclon, Verdict
from redy.sim.coalition import Coalition
from redy.sim.views import SOURCES, largest_component, metric_sample, overlay_report

if TYPE_CHECKING:
    from redy.sim.adversaries import Eclipse
    from redy.sim.array_cyclon import ArrayOverlay
    from redy.sim.array_secure import SecureArrayOverlay

_ENGINES = ("fast", "core")


def _uri(i: int) -> str:
    return f"sim://{i}"


class ShuffleNet:
    def __init__(
        self, n: int, c: int, sl: int, detector: str, seed: int, adversaries: float = 0.0
    ) -> None:
        self.rng = random.Random(seed)
        self.c, self.sl, self.detector = c, sl, detector
        self.nodes: list[Cyclon] = []
        self.alive: list[bool] = []
        self.introducer = 0
        self.messages = 0  # shuffle messages sent, and their bytes (the model of SecureShuffleNet)
        self.bytes = 0
        for _ in range(n):
            self.add()
        # Hostile members (redy.sim.adversaries): with them, an entry's address matters, as an
        # entry may name a node at an address that is not its own.
        self.evil: frozenset[int] = frozenset()
        self.eclipse: Eclipse | None = None
        if adversaries:
            from redy.sim.adversaries import Eclipse, pick

            arng = random.Random(seed + 7)
            self.evil = pick(n, adversaries, arng)
            self.eclipse = Eclipse(self.evil, sl, arng)

    def add(self) -> int:
        i = len(self.nodes)
        self.nodes.append(
            Cyclon(
                i,
                _uri(i),
                self.c,
                self.sl,
                random.Random(self.rng.getrandbits(64)),
                detector=self.detector,
            )
        )
        self.alive.append(True)
        return i

    def cycle(self, loss: float) -> None:
        rng = self.rng
        order = [i for i, a in enumerate(self.alive) if a]
        rng.shuffle(order)
        nodes, alive, evil = self.nodes, self.alive, self.evil
        probe = self.detector != "cyclon"
        verify = self.detector == "verify"
        honest = [i for i in order if i not in evil] if evil else order
        for i in order:
            if i in evil:
                self._attack(i, honest)
                continue
            p = nodes[i]
            if probe:
                # The real governance pushes its energy state to every neighbour's broker each
                # period; a refused connection there is the same evidence as a refused shuffle.
                self._push_states(p)
            if probe and not len(p):
                # An empty view: the real process rejoins through its introducer's view.
                intro = self.introducer if alive[self.introducer] else rng.choice(order)
                if intro != i:
                    p.seed([Neighbour(intro, _uri(intro), 0), *nodes[intro].view])
                    if verify:
                        self._dial_admitted(p)
            out = p.tick()
            if out is None:
                continue
            q = out.target.node
            if not self._dial(p, q, out.target.broker):
                p.on_timeout(out.nonce)  # the broker refused the connection (see _dial)
                continue
            self.messages += 1
            self.bytes += _HEADER_BYTES + len(out.entries) * _PLAIN_ENTRY_BYTES
            if loss and rng.random() < loss:
                p.on_timeout(out.nonce)  # request lost: only a timeout
                continue
            if q in evil:
                assert self.eclipse is not None
                reply: tuple[Neighbour, ...] | list[Neighbour] = self.eclipse.reply(q, honest)
            else:
                reply = nodes[q].on_request(Neighbour(i, _uri(i), 0), out.entries)
                if verify:
                    self._dial_admitted(nodes[q])
            self.messages += 1
            self.bytes += _HEADER_BYTES + len(reply) * _PLAIN_ENTRY_BYTES
            if loss and rng.random() < loss:
                p.on_timeout(out.nonce)  # reply lost
                continue
            p.on_reply(out.nonce, reply)
            if verify:
                self._dial_admitted(p)
        if self.eclipse is not None:
            self.eclipse.measure(nodes, [i for i in honest if alive[i]])

    def _dial(self, p: Cyclon, node: int, broker: str) -> bool:
        """Connect to `node`'s broker at `broker` as the driver would; on failure tell `p` what
        it learnt. Without hostile members every address is the node's own, so only death
        refuses; with them an address may be nobody's (refused: evidence about that address) or
        another node's (its certificate names someone else: the entry is bogus, no verdict)."""
        if not self.evil:
            if self.alive[node]:
                return True
            p.on_unreachable(node)
            return False
        if broker == _uri(node) and node >= 0:
            if self.alive[node]:
                return True
            p.on_unreachable(node, broker)
            return False
        owner = broker.removeprefix("sim://")
        if owner.isdigit() and self.alive[int(owner)]:
            p.discard(node)
        else:
            p.on_unreachable(node, broker)
        return False

    def _push_states(self, p: Cyclon) -> None:
        if not self.evil:
            alive = self.alive
            for j in [j for j in p.neighbours() if not alive[j]]:
                p.on_unreachable(j)
            return
        for e in p.view:
            self._dial(p, e.node, e.broker)

    def _attack(self, member: int, honest: list[int]) -> None:
        """One period of a hostile member: its eclipse requests (redy.sim.adversaries)."""
        assert self.eclipse is not None
        if not honest:
            return
        verify = self.detector == "verify"
        for target, entries in self.eclipse.requests(member, honest):
            if self.alive[target]:
                self.nodes[target].on_request(entries[0], entries)
                if verify:
                    self._dial_admitted(self.nodes[target])

    def _dial_admitted(self, node: Cyclon) -> None:
        """The driver dials each entry a merge admitted; a dead node's broker refuses."""
        if not self.evil:
            alive = self.alive
            for j in node.take_admitted():
                if not alive[j]:
                    node.on_unreachable(j)
            return
        brokers = {e.node: e.broker for e in node.view}
        for j in node.take_admitted():
            self._dial(node, j, brokers[j])

    def live(self) -> list[int]:
        return [i for i, a in enumerate(self.alive) if a]

    def adjacency(self) -> list[list[int]]:
        """Undirected adjacency among live nodes (links to dead nodes left out)."""
        alive = self.alive
        adj: list[set[int]] = [set() for _ in self.nodes]
        for i in self.live():
            for j in self.nodes[i].neighbours():
                if j >= 0 and alive[j] and j != i:  # (< 0: a node a hostile member invented)
                    adj[i].add(j)
                    adj[j].add(i)
        return [list(s) for s in adj]

    def in_degree(self) -> np.ndarray:
        live = self.live()
        targets = [j for i in live for j in self.nodes[i].neighbours() if j >= 0]
        counts = np.bincount(np.asarray(targets, dtype=np.int64), minlength=len(self.nodes))
        return counts[np.asarray(live, dtype=np.int64)]

    def dead_links(self) -> int:
        alive = self.alive
        return sum(
            1 for i in self.live() for j in self.nodes[i].neighbours() if j < 0 or not alive[j]
        )

    # -- what simulate_membership asks of either engine --------------------------------------

    def crash(self, fraction: float, rng: random.Random) -> None:
        live = self.live()
        for i in rng.sample(live, round(fraction * len(live))):
            self.alive[i] = False

    def join(self, count: int, rng: random.Random) -> None:
        introducer = rng.choice(self.live())
        self.introducer = introducer
        for _ in range(count):
            j = self.add()
            intro = self.nodes[introducer]
            self.nodes[j].seed([Neighbour(introducer, _uri(introducer), 0), *intro.view])

    def mean_view_size(self) -> float:
        live = self.live()
        return sum(len(self.nodes[i]) for i in live) / max(1, len(live))

    def metrics(self, rng: random.Random) -> dict[str, Any]:
        return _metrics(self, rng)

    def sweep(self, rng: random.Random) -> list[dict[str, float]]:
        return _sweep(self, rng)


def _path_length(adj: list[list[int]], sources: list[int]) -> float:
    total = count = 0
    dist = [-1] * len(adj)
    for s in sources:
        touched = [s]
        dist[s] = 0
        queue = deque([s])
        while queue:
            u = queue.popleft()
            for v in adj[u]:
                if dist[v] < 0:
                    dist[v] = dist[u] + 1
                    total += dist[v]
                    count += 1
                    touched.append(v)
                    queue.append(v)
        for t in touched:
            dist[t] = -1
    return total / count if count else 0.0


def _clustering(adj: list[list[int]], sample: list[int]) -> float:
    sets: dict[int, set[int]] = {}
    acc = 0.0
    for u in sample:
        nb = adj[u]
        k = len(nb)
        if k < 2:
            continue
        links = 0
        for v in nb:
            sv = sets.get(v)
            if sv is None:
                sv = sets[v] = set(adj[v])
            links += sum(1 for w in nb if w in sv)
        acc += links / (k * (k - 1))
    return acc / len(sample) if sample else 0.0


def bootstrap_overlay(net: ShuffleNet, kind: str) -> None:
    n, c = len(net.nodes), net.c
    for i, node in enumerate(net.nodes):
        if kind == "star":
            peers = [0] if i else []
        elif kind == "ring":
            peers = [(i + k) % n for k in range(1, min(c, n - 1) + 1)]
        else:
            peers = [j for j in net.rng.sample(range(n), min(c + 1, n)) if j != i][:c]
        node.seed([Neighbour(j, _uri(j), 0) for j in peers])


def _metrics(net: ShuffleNet, rng: random.Random) -> dict[str, Any]:
    live = net.live()
    adj = net.adjacency()
    sample = metric_sample(live, rng)
    return overlay_report(
        len(live),
        net.in_degree(),
        _clustering(adj, sample),
        _path_length(adj, sample[:SOURCES]),
        len(sample),
        largest_component(adj, live),
    )


def simulate_membership(
    *,
    nodes: int,
    view_size: int,
    shuffle_length: int,
    cycles: int,
    bootstrap: str = "star",
    crash: float = 0.0,
    crash_at: int | None = None,
    join_count: int = 0,
    join_at: int | None = None,
    loss: float = 0.0,
    detector: str = "redy",
    remove_sweep: bool = False,
    seed: int = 1,
    engine: str | None = None,
    adversaries: float = 0.0,
    secure: bool = False,
    strategy: str = "mix",
) -> dict[str, Any]:
    """Run the shuffle for `cycles` cycles and report the overlay's shape (see module doc).

    `engine`: fast or core (None: fast, or core with adversaries, which run only there: they
    attack the very cores the processes run, redy.sim.adversaries)."""
    engine = engine or ("core" if adversaries or secure else "fast")
    if not 0 < shuffle_length < view_size:
        raise SimulationError(f"need 0 < --shuffle < --view, got {shuffle_length} and {view_size}")
    if nodes < 2:
        raise SimulationError("need at least 2 nodes")
    if engine not in _ENGINES:
        raise SimulationError(f"unknown engine {engine!r}; expected one of {', '.join(_ENGINES)}")
    if adversaries:
        from redy.sim.adversaries import check

        check(adversaries, "core" if secure else engine)
    started = time.perf_counter()
    net: ShuffleNet | ArrayOverlay
    secure_fast: SecureArrayOverlay | None = None
    if secure and engine == "fast":
        from redy.sim.adversaries import pick
        from redy.sim.array_secure import SecureArrayOverlay  # numba: imported only when used

        evil = pick(nodes, adversaries, random.Random(seed + 7)) if adversaries else frozenset()
        net = secure_fast = SecureArrayOverlay(
            nodes + join_count, nodes, view_size, shuffle_length, detector, seed, evil, strategy
        )
        net.bootstrap(bootstrap)
    elif secure:
        net = SecureShuffleNet(
            nodes, view_size, shuffle_length, detector, seed, adversaries, strategy
        )
        net.bootstrap(bootstrap)
    elif engine == "core":
        net = ShuffleNet(nodes, view_size, shuffle_length, detector, seed, adversaries)
        bootstrap_overlay(net, bootstrap)
    else:
        from redy.sim.array_cyclon import ArrayOverlay  # numba: imported only when used

        net = ArrayOverlay(nodes + join_count, nodes, view_size, shuffle_length, detector, seed)
        net.bootstrap(bootstrap)
    rng = random.Random(seed + 1)
    std_per_cycle: list[float] = []
    dead_links: list[int] = []
    live_entries: list[float] = []
    measure_every = 1 if nodes <= 20_000 else 5
    for cycle in range(1, cycles + 1):
        if crash and crash_at == cycle:
            net.crash(crash, rng)
        if join_count and join_at == cycle:
            net.join(join_count, rng)
        net.cycle(loss)
        if cycle % measure_every == 0 or cycle == cycles:
            std_per_cycle.append(float(net.in_degree().std()))
        if crash_at is not None and cycle >= crash_at and crash:
            dead_links.append(net.dead_links())
        if loss:
            live_entries.append(net.mean_view_size())
    result: dict[str, Any] = {
        "parameters": {
            "nodes": nodes,
            "view": view_size,
            "shuffle": shuffle_length,
            "cycles": cycles,
            "bootstrap": bootstrap,
            "crash": crash,
            "crash_at": crash_at,
            "join": join_count,
            "join_at": join_at,
            "loss": loss,
            "detector": detector,
            "seed": seed,
            "engine": engine,
            "adversaries": adversaries,
            "secure": secure,
        },
        **net.metrics(rng),
        "dead_links": dead_links,
    }
    if isinstance(net, SecureShuffleNet) and net.coalition is not None:
        honest = [i for i in net.live() if i not in net.evil]
        convicted = {m for i in honest for m in net.secure_nodes[i].convicted}
        views = [list(node.neighbours()) for node in net.secure_nodes]
        result["adversaries"] = net.coalition.report(views, convicted, net.live())
    elif secure_fast is not None and secure_fast.coalition is not None:
        result["adversaries"] = secure_fast.coalition_report()
    elif isinstance(net, ShuffleNet) and net.eclipse is not None:
        result["adversaries"] = net.eclipse.report(net)
    if isinstance(net, ShuffleNet):
        live_n = max(1, len(net.live()))
        result["shuffle_bytes_per_node_period"] = net.bytes / live_n / max(1, cycles)
    else:  # the fast engine does not count the shuffles' bytes
        result["shuffle_bytes_per_node_period"] = None
    final = std_per_cycle[-1] if std_per_cycle else 0.0
    converged = next(
        (k for k, s in enumerate(std_per_cycle) if abs(s - final) <= 0.1 * final), None
    )
    result["cycles_to_converge"] = (
        (converged + 1) * measure_every if converged is not None else None
    )
    if loss:
        result["mean_view_size"] = live_entries[-1] if live_entries else 0.0
    if remove_sweep:
        result["remove_sweep"] = net.sweep(rng)
    result["elapsed_s"] = round(time.perf_counter() - started, 2)
    return result


def _sweep(net: ShuffleNet, rng: random.Random) -> list[dict[str, float]]:
    """Remove live nodes in 5 % steps (no more shuffling) and report the largest component."""
    live = net.live()
    order = rng.sample(live, len(live))
    adj_full = net.adjacency()
    out = []
    for step in range(1, 20):
        removed = set(order[: int(len(order) * step * 0.05)])
        remaining = [i for i in live if i not in removed]
        adj = [[v for v in nb if v not in removed] for nb in adj_full]
        frac = largest_component(adj, remaining) / len(remaining) if remaining else 0.0
        out.append({"removed_fraction": round(step * 0.05, 2), "largest_component_fraction": frac})
    return out


class SecureShuffleNet(ShuffleNet):
    """The overlay of `redy.membership.secure.SecureCyclon` cores (`--secure`), with the
    coalition of redy.sim.coalition as its hostile members. The simulator is the network: it
    carries each message's view digest and news as the processes would; signatures are what the
    members cannot forge (an entry they make up for another node is `valid=False`)."""

    def __init__(
        self,
        n: int,
        c: int,
        sl: int,
        detector: str,
        seed: int,
        adversaries: float = 0.0,
        strategy: str = "mix",
    ) -> None:
        self.period = 0
        self.secure_nodes: list[SecureCyclon] = []
        self.messages = 0
        self.bytes = 0
        super().__init__(n, c, sl, detector, seed)
        self.coalition: Coalition | None = None
        self.eclipse = None
        if adversaries:
            from redy.sim.adversaries import pick

            arng = random.Random(seed + 7)
            self.evil = pick(n, adversaries, arng)
            proto = self.secure_nodes[0]
            self.coalition = Coalition(
                self.evil, strategy, sl, proto.max_age, proto.max_chain, arng
            )

    def add(self) -> int:
        i = len(self.secure_nodes)
        self.secure_nodes.append(
            SecureCyclon(
                i,
                _uri(i),
                self.c,
                self.sl,
                random.Random(self.rng.getrandbits(64)),
                detector=self.detector,
            )
        )
        self.nodes = self.secure_nodes  # type: ignore[assignment]
        self.alive.append(True)
        return i

    def bootstrap(self, kind: str) -> None:
        """A running overlay's views (`random`, `ring`): every entry handed to its holder, each
        owner's copies of distinct periods; `star`: everyone knows node 0 (to contact only)."""
        n, c = len(self.secure_nodes), self.c
        issued = [0] * n
        for i, node in enumerate(self.secure_nodes):
            if kind == "star":
                peers = [0] if i else []
            elif kind == "ring":
                peers = [(i + k) % n for k in range(1, min(c, n - 1) + 1)]
            else:
                peers = [j for j in self.rng.sample(range(n), min(c + 1, n)) if j != i][:c]
            got = []
            for j in peers:
                issued[j] += 1
                d = Descriptor(j, _uri(j), -issued[j], (j, i))
                got.append(d)
            if kind == "star":
                node.seed(got, 0)
            else:
                for d in got:
                    node._view[d.owner] = d
                    node._seen[(d.owner, d.born)] = d
        if self.coalition is not None:
            for m in self.coalition.members:
                self.coalition.absorb(self.secure_nodes[m].descriptors)

    def cycle(self, loss: float) -> None:
        self.period += 1
        period = self.period
        rng = self.rng
        nodes, alive, evil = self.secure_nodes, self.alive, self.evil
        coalition = self.coalition
        order = [i for i, a in enumerate(alive) if a]
        rng.shuffle(order)
        verify = self.detector == "verify"
        probe = self.detector != "cyclon"
        for i in order:
            if i in evil:
                assert coalition is not None
                self._members_act(i, period)
                continue
            p = nodes[i]
            if probe:
                for j in [j for j in p.neighbours() if not alive[j]]:
                    p.on_unreachable(j)
            out = None
            if probe and p.starved and (not len(p) or p.sample() is None):
                # Nobody to ask: the real process asks its introducer again (and reads its
                # retained view).
                intro = self.introducer if alive[self.introducer] else rng.choice(order)
                if intro != i:
                    ip = nodes[intro]
                    if not len(p):
                        p.seed(ip.descriptors, period)
                        if verify:
                            self._dial_admitted(p)
                    out = p.probe(Descriptor(intro, _uri(intro), period, (intro,)), period)
            if out is None:
                out = p.tick(period)
            if out is None:
                continue
            q = out.target.owner
            if not alive[q]:
                p.on_unreachable(q)
                p.on_timeout(out.nonce)
                continue
            self._count(out.entries, c_digest=len(p))
            if loss and rng.random() < loss:
                p.on_timeout(out.nonce)
                continue
            if q in evil:
                assert coalition is not None
                reply: Sequence[Descriptor] | None = coalition.reply(q, i, out, period)
                digest: tuple[Descriptor, ...] = ()
                news: tuple[Verdict, ...] = ()
            else:
                target = nodes[q]
                reply = target.on_request(
                    i, out.token, out.entries, period, p.descriptors, p.news()
                )
                digest, news = target.descriptors, target.news()
                if verify:
                    self._dial_admitted(target)
            if reply is None:
                p.on_refused(out.nonce)
                continue
            self._count(reply, c_digest=len(digest), news=len(news))
            if loss and rng.random() < loss:
                p.on_timeout(out.nonce)
                continue
            p.on_reply(out.nonce, q, reply, digest, news)
            if verify:
                self._dial_admitted(p)
        if coalition is not None:
            honest = [i for i in order if i not in evil]
            coalition.measure(nodes, honest, period)

    def _members_act(self, member: int, period: int) -> None:
        coalition = self.coalition
        assert coalition is not None
        nodes, alive = self.secure_nodes, self.alive
        for to, out in coalition.requests_of(member, period, alive):
            reply = nodes[to].on_request(member, out.token, out.entries, period)
            if reply is None:
                coalition.refused += 1
                if out.token is not None and member not in nodes[to].convicted:
                    coalition.give_back(out.token)
                continue
            coalition.absorb(reply)
            if self.detector == "verify":
                self._dial_admitted(nodes[to])

    def _dial_admitted(self, node: Any) -> None:
        alive = self.alive
        for j in node.take_admitted():
            if j < 0 or not alive[j]:
                node.on_unreachable(j)

    def _count(self, entries: Sequence[Descriptor], c_digest: int, news: int = 0) -> None:
        """Bytes on the wire (redy.sim.sweep.message_sizes's model plus what signing adds)."""
        self.messages += 1
        hops = sum(len(d.chain) for d in entries)
        self.bytes += (
            _HEADER_BYTES
            + len(entries) * _ENTRY_BYTES
            + hops * _HOP_BYTES
            + c_digest * _DIGEST_BYTES
            + news * _VERDICT_BYTES
        )

    def join(self, count: int, rng: random.Random) -> None:
        introducer = rng.choice(self.live())
        self.introducer = introducer
        for _ in range(count):
            j = self.add()
            ip = self.secure_nodes[introducer]
            seeds = [Descriptor(introducer, _uri(introducer), self.period, (introducer,))]
            self.secure_nodes[j].seed([*seeds, *ip.descriptors], self.period)

    def adjacency(self) -> list[list[int]]:
        alive = self.alive
        adj: list[set[int]] = [set() for _ in self.secure_nodes]
        for i in self.live():
            for j in self.secure_nodes[i].neighbours():
                if j >= 0 and alive[j] and j != i:
                    adj[i].add(j)
                    adj[j].add(i)
        return [list(s) for s in adj]


# Bytes of the signed shuffle's messages (SecureShuffleNet._count): a message's MQTT and JSON frame;
# an entry's node, broker and born (as today's ViewEntry, age replaced by the period); the
# owner's and each hop's ECDSA P-256 signature (base64, 88 characters) with the hop's node id;
# a digest entry (owner, period and 8 bytes of the chain's hash); a verdict with its two signed
# statements.
_HEADER_BYTES = 160
_ENTRY_BYTES = 80
_HOP_BYTES = 110
_DIGEST_BYTES = 24
_VERDICT_BYTES = 600
_PLAIN_ENTRY_BYTES = 80
