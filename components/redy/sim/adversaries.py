"""Hostile members in the simulators (issue 10): `--adversaries F` turns a fraction F of the
nodes into members that run the attacks of tests/adversarial against the same cores the honest
governance units run, with their defences (the shuffle core's placement bound, address-keyed
tombstones and identity checks; the market core's mass bounds).

A member is honest about its name (it has a valid certificate) and nothing else:

- **Eclipse** (`redy sim membership`): every period each member sends `RATE` shuffle requests to
  honest nodes drawn at random from the whole grid (the strongest reach: it knows every address),
  and answers every request it gets, with its own entry and poison: the other members (real, live
  and legitimate-looking), invented nodes at addresses that do not answer, invented nodes at
  another member's broker (an identity check fails), and honest nodes at dead addresses (the
  forged eviction). Measured: the share of attacker-controlled entries in honest views, period
  by period, and whether the honest nodes' overlay stays connected.
- **Price steering** (`redy sim balance`, push-sum): every round each member pushes to `REACH`
  honest nodes the most mass the bounds let through (weight MAX_PUSH_WEIGHT, the curve at
  -weight x capacity below its target price and +weight x capacity above), in the receiver's
  own epoch, phase, window and round, and swallows the mass honest nodes push to it. Measured:
  how far the honest nodes' prices move from the optimum of the honest bids, against what the
  same members could do as honest members of the same capacity bidding their full range at the
  target (the reference solver on the honest bids plus theirs).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from redy.balancing.aggregation import MAX_PUSH_WEIGHT, GossipOut
from redy.balancing.curves import Bid, Dispatchable
from redy.balancing.discovery import PhaseGossip, PriceDiscovery, PriceSearch
from redy.balancing.reference import solve
from redy.errors import SimulationError
from redy.membership.cyclon import Cyclon, Neighbour

if TYPE_CHECKING:
    from redy.sim.membership import _Net

RATE = 4  # shuffle requests per member per period (the eclipse: 4 per second at 1 s)
REACH = 12  # honest nodes each member pushes to per round (an honest node pushes to one)
STEER_TO_EUR_MWH = 400.0  # the price the members want (the first attack)
PUSH_WEIGHT = MAX_PUSH_WEIGHT  # the weight of a forged push: the most the bounds let through
_QUARTER = 0.25  # the target: no honest view more than a quarter attacker entries


def check(fraction: float, engine: str | None) -> None:
    """Refuse, in one line, a fraction that is not one, or an engine other than the core: the
    members attack the very cores (and defences) the processes run."""
    if not 0.0 <= fraction < 1.0:
        raise SimulationError(f"--adversaries is a fraction of the nodes in [0, 1), got {fraction}")
    if fraction and engine == "fast":
        raise SimulationError(
            "--adversaries runs on the core engine (the real cores and their defences); "
            "drop --engine fast"
        )


def pick(nodes: int, fraction: float, rng: random.Random) -> frozenset[int]:
    """The members that attack: round(fraction x nodes) of them, never node 0 (the star
    bootstrap's hub and the introducer of joins: a hostile introducer is another threat)."""
    count = min(round(fraction * nodes), nodes - 2)
    return frozenset(rng.sample(range(1, nodes), count)) if count > 0 else frozenset()


def sim_uri(i: int) -> str:
    return f"sim://{i}"


class Eclipse:
    """The eclipse members of one simulated overlay, and what they did to the honest views."""

    def __init__(self, evil: frozenset[int], shuffle_length: int, rng: random.Random) -> None:
        self.evil = evil
        self._members = sorted(evil)
        self.sl = shuffle_length
        self.rng = rng
        self._invented = 0
        self.max_share: list[float] = []  # per period: the worst honest view
        self.mean_share: list[float] = []
        self.over_quarter: list[float] = []  # per period: the share of honest views above 1/4

    def _poison(self, member: int, honest: Sequence[int], count: int) -> list[Neighbour]:
        """`count` entries, each of one of the four kinds (module docstring), all age 0."""
        rng, out = self.rng, []
        for _ in range(count):
            kind = rng.randrange(4)
            other = rng.choice(self._members)
            if kind == 0 and other != member:
                out.append(Neighbour(other, sim_uri(other), 0))
                continue
            self._invented += 1
            if kind == 1:
                out.append(Neighbour(-self._invented, f"sim://nowhere-{self._invented}", 0))
            elif kind == 2:
                out.append(Neighbour(-self._invented, sim_uri(other), 0))
            else:
                victim = rng.choice(honest)
                out.append(Neighbour(victim, f"sim://dead-{self._invented}", 0))
        return out

    def reply(self, member: int, honest: Sequence[int]) -> list[Neighbour]:
        """What a member answers an honest node's request with."""
        return self._poison(member, honest, self.sl)

    def requests(self, member: int, honest: Sequence[int]) -> list[tuple[int, list[Neighbour]]]:
        """This period's requests of one member: (target, entries) pairs."""
        me = Neighbour(member, sim_uri(member), 0)
        return [
            (self.rng.choice(honest), [me, *self._poison(member, honest, self.sl - 1)])
            for _ in range(RATE)
        ]

    def measure(self, nodes: Sequence[Cyclon], honest_live: Sequence[int]) -> None:
        """Record this period's share of attacker-controlled entries in the honest views: a
        member, an invented node, or an address that is not the node's own."""
        evil = self.evil
        shares = []
        for i in honest_live:
            view = nodes[i].view
            if view:
                bad = sum(
                    1 for e in view if e.node < 0 or e.node in evil or e.broker != sim_uri(e.node)
                )
                shares.append(bad / len(view))
        arr = np.asarray(shares) if shares else np.zeros(1)
        self.max_share.append(float(arr.max()))
        self.mean_share.append(float(arr.mean()))
        self.over_quarter.append(float((arr > _QUARTER).mean()))

    def report(self, net: _Net) -> dict[str, Any]:
        from redy.sim.membership import _components

        live = net.live()
        honest = [i for i in live if i not in self.evil]
        keep = set(honest)
        adj: list[list[int]] = [[] for _ in net.nodes]
        for i in honest:
            for e in net.nodes[i].view:
                j = e.node
                if j in keep and e.broker == sim_uri(j):
                    adj[i].append(j)
                    adj[j].append(i)
        largest = _components(adj, honest)
        return {
            "members": len(self.evil),
            "attack": "eclipse",
            "requests_per_member_per_period": RATE,
            "attacker_share_if_honest": len(self.evil) / max(1, len(live) - 1),
            "max_attacker_share": max(self.max_share, default=0.0),
            "mean_attacker_share": float(np.mean(self.mean_share)) if self.mean_share else 0.0,
            "max_attacker_share_per_cycle": self.max_share,
            "views_over_quarter": float(np.mean(self.over_quarter)) if self.over_quarter else 0.0,
            "honest_largest_component_fraction": largest / len(honest) if honest else 0.0,
        }


class Steering:
    """The price-steering members of one simulated market (module docstring)."""

    def __init__(self, evil: frozenset[int], capacity_kw: float, rng: random.Random) -> None:
        self.evil = evil
        self.capacity_kw = capacity_kw
        self.rng = rng
        self.sent = 0
        self.dropped = 0
        self.moved: list[float] = []  # per epoch: the honest nodes' median price - the optimum
        self.worst: list[float] = []  # per epoch: the honest price farthest from the optimum
        self.honest_moved: list[float] = []  # per epoch: what honest members could do

    def pushes(
        self, honest: Sequence[int], market: Sequence[PriceDiscovery], round_: int
    ) -> list[PhaseGossip]:
        """Round `round_`'s forged pushes of every member, each shaped like the receiver's own
        mass."""
        out = []
        w = PUSH_WEIGHT
        for member in self.evil:
            for t in self.rng.sample(list(honest), min(REACH, len(honest))):
                d = market[t]
                if d.done:
                    continue
                side = np.where(d.grid.prices >= STEER_TO_EUR_MWH, 1.0, -1.0)
                extra = 2 if d.phase == 1 else 0  # phase 1 also carries two limit totals
                # (weight 0, the attack as first found, carries the values of weight 1)
                values = np.concatenate([side, np.zeros(extra)]) * (w or 1.0) * self.capacity_kw
                g = GossipOut(t, member, d.epoch, round_, w, values)
                out.append(PhaseGossip(d.phase, d.grid.floor_eur_mwh, d.grid.cap_eur_mwh, g))
        self.sent += len(out)
        return out

    def record(
        self, epoch: dict[str, Any], honest_bids: list[list[Bid]], search: PriceSearch
    ) -> None:
        """Add this epoch's figures to its report (`epoch`, simulate_balance's): how far the
        honest nodes' prices moved from the honest optimum, and how far the same members could
        move it as honest members of the same capacity, each bidding its full range at the
        target (the reference solver, exact, independent of the gossip)."""
        floor, cap = search.floor_eur_mwh, search.cap_eur_mwh
        peers = [[Dispatchable(-self.capacity_kw, self.capacity_kw, STEER_TO_EUR_MWH)]] * len(
            self.evil
        )
        honest_max = solve([*honest_bids, *peers], floor, cap).price_eur_mwh
        optimum = epoch["price_optimal"]
        self.moved.append(epoch["price"] - optimum)
        self.worst.append(epoch["price_error"])
        self.honest_moved.append(honest_max - optimum)

    def report(self) -> dict[str, Any]:
        return {
            "members": len(self.evil),
            "attack": "steering",
            "target_eur_mwh": STEER_TO_EUR_MWH,
            "capacity_kw": self.capacity_kw,
            "pushes_per_member_per_round": REACH,
            "forged_pushes": self.sent,
            "dropped_by_bounds": self.dropped,
            "price_moved_eur_mwh": self.moved,
            "largest_price_error_eur_mwh": self.worst,
            "honest_members_could_move_eur_mwh": self.honest_moved,
        }
