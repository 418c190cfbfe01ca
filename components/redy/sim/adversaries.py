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
- **Offers** (`redy sim balance --market offers --attack ...`): members of the offer market,
  each signing with its own key and held to its certified limits, run one of `OFFER_ATTACKS`
  (`mix`: each member one of them in turn): `sell-floor` offers its full export at the price
  floor, `buy-cap` its full import at the price cap; `two-faced` signs both and sends each to
  half of its neighbours; `withhold` never passes on another's offer; `late` sends its own
  offer only once `LATE_SHARE` of the honest nodes have cleared; `replay` sends each neighbour,
  with every message, the offers it heard in the epoch before, as they were and stamped with
  this epoch (each costs a receiver one signature check per epoch: refused offers are
  remembered); `early`
  sends every neighbour, `EARLY_LEAD` of an epoch before the next one, a message of that next
  epoch carrying an offer with no valid signature. Measured: how far the honest prices are from
  the honest optimum, against the band in which honest members of the same certified limits
  could put it (all of them selling their full export at the floor, or all buying their full
  import at the cap: the reference solver), and how far outside that band any honest price is.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import attrs
import numpy as np

from redy.balancing.aggregation import MAX_PUSH_WEIGHT, GossipOut
from redy.balancing.curves import Bid, Dispatchable, FlexibleLoad
from redy.balancing.discovery import PhaseGossip, PriceDiscovery, PriceSearch
from redy.balancing.offers import Received, Send, offer_values
from redy.balancing.reference import solve
from redy.errors import SimulationError
from redy.membership.cyclon import Cyclon, Neighbour
from redy.messages import NodeOffer

if TYPE_CHECKING:
    from redy.balancing.offers import Timing
    from redy.sim.membership import ShuffleNet
    from redy.sim.offer_market import OfferGrid, SimKeys

RATE = 4  # shuffle requests per member per period (the eclipse: 4 per second at 1 s)
REACH = 12  # honest nodes each member pushes to per round (an honest node pushes to one)
STEER_TO_EUR_MWH = 400.0  # the price the members want (the first attack)
PUSH_WEIGHT = MAX_PUSH_WEIGHT  # the weight of a forged push: the most the bounds let through
_QUARTER = 0.25  # the target: no honest view more than a quarter attacker entries
OFFER_ATTACKS = ("sell-floor", "buy-cap", "two-faced", "withhold", "late", "replay", "early")
LATE_SHARE = 0.9  # a late member's offer goes once this share of the honest nodes cleared
EARLY_LEAD = 0.2  # of an epoch: an early member's next-epoch messages (in the last quarter)
_REPLAY_BATCH = 40  # offers per replayed message (the core's batches: about 40 KB)


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

    def report(self, net: ShuffleNet) -> dict[str, Any]:
        from redy.sim.views import largest_component

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
        largest = largest_component(adj, honest)
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


def offer_strategies(attack: str, known: tuple[str, ...] = OFFER_ATTACKS) -> tuple[str, ...]:
    """The strategies `--attack` names: a comma-separated list of `known` ones, or `mix` (all)."""
    names = tuple(a.strip() for a in attack.split(",") if a.strip())
    if names == ("mix",):
        return known
    bad = [a for a in names if a not in known]
    if bad or not names:
        raise SimulationError(
            f"--attack: expected mix or some of {', '.join(known)}; got {attack!r}"
        )
    return names


def _half(key: str) -> bool:
    return hashlib.blake2b(key.encode(), digest_size=1).digest()[0] % 2 == 1


class OfferAttacks:
    """The hostile members of one simulated offer market (module docstring), each running its
    own OfferCore (it relays, checks and clears as any node) whose messages and bids it bends."""

    def __init__(
        self,
        evil: frozenset[int],
        attack: str,
        names: Sequence[str],
        limits: Mapping[str, tuple[float, float]],
        keys: SimKeys,
        timing: Timing,
        floor_eur_mwh: float,
        cap_eur_mwh: float,
    ) -> None:
        self.evil = evil
        strategies = offer_strategies(attack)
        self.strategy = {m: strategies[k % len(strategies)] for k, m in enumerate(sorted(evil))}
        self.names = names
        self.limits = {m: limits[names[m]] for m in evil}
        self.keys = keys
        self.timing = timing
        self.floor, self.cap = floor_eur_mwh, cap_eur_mwh
        self.epoch = 0
        self._own: dict[int, NodeOffer] = {}  # a late member's offer, held back
        self._late_sent = False
        self._other: dict[int, NodeOffer] = {}  # a two-faced member's second offer
        self._heard: dict[int, dict[str, NodeOffer]] = {}  # offers of this epoch, per member
        self._old: dict[int, dict[str, NodeOffer]] = {}  # of the epoch before
        self.forged = 0  # messages the members made up (replays, early ones)
        self.bounds: list[tuple[float, float]] = []  # per epoch: honest members' band
        self.moved: list[float | None] = []
        self.outside: list[float] = []
        self.spread: list[float | None] = []

    def _lie(self, member: int, buy: bool) -> list[Bid]:
        import_kw, export_kw = self.limits[member]
        if buy:
            return [FlexibleLoad(import_kw, self.cap)]
        return [Dispatchable(0.0, export_kw, self.floor)]

    def begin(self, grid: OfferGrid, epoch: int, bids: list[Sequence[Bid]]) -> None:
        """Epoch `epoch` begins: the members' bids (set in `bids`) and their timers."""
        self.epoch = epoch
        self._old, self._heard = self._heard, {}
        self._own, self._other = {}, {}
        self._late_sent = False
        for m, s in self.strategy.items():
            if s in ("sell-floor", "buy-cap", "two-faced"):
                bids[m] = self._lie(m, buy=s == "buy-cap")
            if s == "two-faced":
                values = offer_values(self._lie(m, buy=True))
                self._other[m] = self.keys.sign(self.names[m], epoch, values)
            if s == "early":
                grid.at((epoch + 1 - EARLY_LEAD) * self.timing.epoch_s, m, ("early", epoch))

    def heard(self, member: int, event: Received) -> None:
        got = self._heard.setdefault(member, {})
        for o in event.offers:
            if o.epoch == self.epoch:
                got[o.sig] = o

    def outgoing(self, member: int, now: float, sends: list[Send]) -> list[Send]:
        """What a member sends instead of what its core would (`sends`)."""
        s, name = self.strategy[member], self.names[member]
        out = []
        for send in sends:
            offers = send.offers
            if s == "withhold":
                offers = tuple(o for o in offers if o.node == name)
            elif s == "two-faced" and _half(f"{name}/{send.target}"):
                offers = tuple(self._other[member] if o.node == name else o for o in offers)
            elif s == "late" and not self._late_sent:
                self._own.update((member, o) for o in offers if o.node == name)
                offers = tuple(o for o in offers if o.node != name)
            elif s == "replay":  # with every message: as many chances to cost a check
                out += self._replays(member, send)
            if offers:
                out.append(attrs.evolve(send, offers=offers))
        return out

    def _replays(self, member: int, send: Send) -> list[Send]:
        old = list(self._old.get(member, {}).values())
        restamped = [attrs.evolve(o, epoch=send.epoch) for o in old]
        both = old + restamped
        self.forged += -(-len(both) // _REPLAY_BATCH)
        return [
            Send(send.target, send.epoch, tuple(both[k : k + _REPLAY_BATCH]))
            for k in range(0, len(both), _REPLAY_BATCH)
        ]

    def on_cleared(self, grid: OfferGrid, epoch: int, cleared: int) -> None:
        """`cleared` honest nodes have a price for `epoch`: the late members' moment?"""
        if epoch != self.epoch or self._late_sent or cleared < LATE_SHARE * len(grid.honest):
            return
        self._late_sent = True
        for m, s in self.strategy.items():
            if s == "late":
                grid.at(grid.now, m, ("late", epoch))

    def timed(
        self, member: int, now: float, what: tuple[str, int], view: Sequence[str]
    ) -> list[Send]:
        """A member's timer: its late offer, or its early messages of the next epoch."""
        kind, epoch = what
        name = self.names[member]
        if kind == "late":
            own = self._own.get(member)
            return [Send(t, epoch, (own,)) for t in view] if own is not None else []
        forged = NodeOffer(
            node=name,
            epoch=epoch + 1,
            values=(0.0,),
            session=None,
            cert=self.keys.cert(name),
            sig="0" * len(self.keys.token(name, epoch, (0.0,), None)),
        )
        self.forged += len(view)
        return [Send(t, epoch + 1, (forged,)) for t in view]

    def band(self, honest_bids: list[list[Bid]]) -> tuple[float, float]:
        """The lowest and highest price honest members of the same certified limits could
        give: all selling their full export at the floor, or all buying their full import at
        the cap (the reference solver)."""
        low = [self._lie(m, buy=False) for m in self.evil]
        high = [self._lie(m, buy=True) for m in self.evil]
        return (
            solve([*honest_bids, *low], self.floor, self.cap).price_eur_mwh,
            solve([*honest_bids, *high], self.floor, self.cap).price_eur_mwh,
        )

    def record(self, epoch: dict[str, Any], honest_bids: list[list[Bid]]) -> None:
        """Add an epoch's figures (`epoch`: simulate_offers's report of it)."""
        low, high = self.band(honest_bids)
        self.bounds.append((low, high))
        price, got = epoch["price"], epoch["price_range"]
        self.moved.append(None if price is None else price - epoch["price_optimal"])
        self.outside.append(0.0 if got is None else max(0.0, low - got[0], got[1] - high))
        self.spread.append(epoch["price_spread"])

    def report(self) -> dict[str, Any]:
        counts: dict[str, int] = {}
        for s in self.strategy.values():
            counts[s] = counts.get(s, 0) + 1
        return {
            "members": len(self.evil),
            "attack": counts,
            "forged_messages": self.forged,
            "price_moved_eur_mwh": self.moved,
            "price_band_eur_mwh": self.bounds,
            "outside_band_eur_mwh": self.outside,
            "honest_price_spread_eur_mwh": self.spread,
        }
