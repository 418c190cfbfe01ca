"""A coalition of hostile members against the signed shuffle (redy.membership.secure), issue 26:
`redy sim membership --adversaries F --secure`.

Every member holds a valid certificate and signs with its own key; the coalition shares
everything else: every honest descriptor any member receives (a *token*: the right to contact its
owner once, and an entry it can withhold), every member descriptor, and who is where. Each
member knows every honest node's address, answers every request, and sends its requests as
soon as it holds a token. Strategies (`STRATEGIES`, `mix`: each member one in turn):

- `hoard`: the strongest that breaks no rule. One request per period (the rate of an honest
  node), with its own fresh descriptor and the coalition's freshest descriptors, never an honest
  one; answers with coalition descriptors only, and fewer rather than an honest one; keeps every
  honest descriptor it receives (honest views lose them) and hands out each coalition descriptor
  once.
- `focus`: `hoard`, with every request on the honest node the coalition has held tokens of
  longest, so a few honest views take all of it.
- `rate`: every token it holds used at once, up to `RATE` requests a period, each with its own
  descriptor of the period (so it hands that on several times) and copies of the coalition's.
- `replay`: `hoard`, plus every coalition descriptor it ever handed out handed out again, and
  once in a while one older than the descriptors' lifetime.
- `pairs`: members in pairs; each hands out copies of its partner's descriptors as well as its
  own (the evidence then names the copier, not the owner).
- `poison`: `hoard` with a forged entry in every message: invented nodes, another member's
  address under an honest name, honest nodes at dead addresses.
"""

from __future__ import annotations

import random
from collections.abc import Collection, Hashable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from redy.errors import SimulationError
from redy.membership.secure import Descriptor, SecureOut

STRATEGIES = ("hoard", "focus", "rate", "replay", "pairs", "poison")
RATE = 4  # the most requests a `rate` member sends per period
_HALF = 0.5
_Alive = Sequence[bool] | np.ndarray  # who is up, by node (the fast engine passes its array)


def sim_uri(i: int) -> str:
    return f"sim://{i}"


def strategies(spec: str) -> tuple[str, ...]:
    names = tuple(s.strip() for s in spec.split(",") if s.strip())
    if names == ("mix",):
        return STRATEGIES
    bad = [s for s in names if s not in STRATEGIES]
    if bad or not names:
        raise SimulationError(
            f"--strategy: expected mix or some of {', '.join(STRATEGIES)}; got {spec!r}"
        )
    return names


def _via(d: Descriptor, member: int, to: int) -> Descriptor:
    """`d` as `member` hands it to `to` (a hop from the member that holds it to `member` is
    signed by colluders: free)."""
    chain = d.chain if d.chain[-1] == member else (*d.chain, member)
    return d._replace(chain=(*chain, to))


class Coalition:
    """The hostile members of one simulated overlay, and what they achieved."""

    def __init__(
        self,
        evil: frozenset[int],
        spec: str,
        sl: int,
        max_age: int,
        max_chain: int,
        rng: random.Random,
    ) -> None:
        self.evil = evil
        self.members = sorted(evil)
        names = strategies(spec)
        self.strategy = {m: names[k % len(names)] for k, m in enumerate(self.members)}
        self.partner = {
            m: self.members[k ^ 1] if (k ^ 1) < len(self.members) else m
            for k, m in enumerate(self.members)
        }
        self.sl, self.max_age, self.max_chain, self.rng = sl, max_age, max_chain, rng
        self.tokens: dict[int, list[Descriptor]] = {}  # honest owner -> its descriptors we hold
        self.stock: list[Descriptor] = []  # member descriptors not in an honest view
        self.placed: list[Descriptor] = []  # member descriptors handed out (for replays)
        self.requests = 0
        self.refused = 0
        self._invented = 0
        # per period: shares of member entries in the honest views
        self.mean_share: list[float] = []
        self.max_share: list[float] = []
        self.over_half: list[float] = []
        self.known_at: dict[int, int] = {}  # member -> first period every honest node knew it

    # -- what the members hold ---------------------------------------------------------------

    def absorb(self, entries: Sequence[Descriptor]) -> None:
        for d in entries:
            if d.owner in self.evil:
                self.stock.append(d)
            else:
                self.tokens.setdefault(d.owner, []).append(d)

    def _take_token(self, member: int, period: int, alive: _Alive) -> Descriptor | None:
        """A token of an honest node: `focus` members take the honest node the coalition has
        held tokens of longest (all on a few views), the others one drawn at random (spread:
        a receiver answers few requests a period); the oldest of that node's first."""
        limit = period - self.max_age
        focus = self.strategy[member] == "focus"
        while self.tokens:
            if focus or len(self.tokens) == 1:
                owner = next(iter(self.tokens))
            else:
                owner = self.rng.choice(list(self.tokens))
            ds = self.tokens[owner]
            ds.sort(key=lambda d: -d.born)
            d = ds.pop()
            if not ds:
                del self.tokens[owner]
            if d.born >= limit and alive[owner]:
                return d
        return None

    def give_back(self, token: Descriptor) -> None:
        """A token the receiver did not take this time (busy): kept for another period."""
        self.tokens.setdefault(token.owner, []).append(token)

    def _fresh(self, member: int, to: int, count: int, period: int) -> list[Descriptor]:
        """Up to `count` coalition descriptors for `to`, freshest first, as `member`'s strategy
        hands them out."""
        s = self.strategy[member]
        limit = period - self.max_age
        # What an honest node would refuse (dead or worn out) the careful members keep back.
        room = self.max_chain - 2
        self.stock = [d for d in self.stock if d.born >= limit and len(d.chain) <= room]
        self.stock.sort(key=lambda d: d.born)
        out: list[Descriptor] = []
        while self.stock and len(out) < count:
            d = self.stock.pop()
            self.placed.append(d)
            out.append(_via(d, member, to))
        if len(out) < count and s in ("replay", "pairs", "rate"):
            pool = [d for d in self.placed[-200:] if d.born >= limit and len(d.chain) <= room]
            if s == "pairs":
                mate = self.partner[member]
                pool = [d for d in pool if d.owner in (member, mate)] or pool
            self.rng.shuffle(pool)
            out += [_via(d, member, to) for d in pool[: count - len(out)]]
        if s == "replay" and out and self.rng.random() < 0.05:
            old = Descriptor(member, sim_uri(member), period - self.max_age - 3, (member,))
            out[-1] = _via(old, member, to)
        if s == "poison" and out:
            out[-1] = self._forged(member, to)
        return out

    def _forged(self, member: int, to: int) -> Descriptor:
        self._invented += 1
        kind = self._invented % 3
        if kind == 0:
            owner, broker = -self._invented, f"sim://nowhere-{self._invented}"
        elif kind == 1:
            owner, broker = to, sim_uri(member)  # an honest name at a member's broker
        else:
            owner, broker = to, f"sim://dead-{self._invented}"
        return Descriptor(owner, broker, 0, (owner, member, to), valid=False)

    # -- events ------------------------------------------------------------------------------

    def requests_of(self, member: int, period: int, alive: _Alive) -> list[tuple[int, SecureOut]]:
        """This period's requests of `member`: (target, request) pairs."""
        count = RATE if self.strategy[member] == "rate" else 1
        out = []
        for _ in range(count):
            token = self._take_token(member, period, alive)
            if token is None:
                break
            to = token.owner
            if token.chain[-1] != member:
                token = token._replace(chain=(*token.chain, member))
            own = Descriptor(member, sim_uri(member), period, (member, to))
            entries = (*self._fresh(member, to, self.sl - 1, period), own)
            self.placed.append(own._replace(chain=(member,)))
            out.append((to, SecureOut(token, token, 0, entries)))
        self.requests += len(out)
        return out

    def reply(self, member: int, sender: int, out: SecureOut, period: int) -> list[Descriptor]:
        """What `member` answers an honest node's request with."""
        self.absorb(out.entries)
        return self._fresh(member, sender, len(out.entries), period)

    # -- figures -----------------------------------------------------------------------------

    def measure(self, nodes: Sequence[Any], honest_live: Sequence[int], period: int) -> None:
        """The figures of this period, from the core nodes' views and convictions."""
        evil = self.evil
        shares = []
        for i in honest_live:
            view = nodes[i].neighbours()
            n = len(nodes[i])
            if n:
                shares.append(sum(1 for o in view if o in evil or o < 0) / n)
        self.record_shares(np.asarray(shares))
        if period % 5 == 0:
            counts: dict[int, int] = {}
            for i in honest_live:
                for m in nodes[i].convicted:
                    counts[m] = counts.get(m, 0) + 1
            self.record_known(counts, len(honest_live), period)

    def record_shares(self, shares: np.ndarray) -> None:
        """Each honest view's share of member (or invented) entries, this period."""
        arr = shares if len(shares) else np.zeros(1)
        self.mean_share.append(float(arr.mean()))
        self.max_share.append(float(arr.max()))
        self.over_half.append(float((arr > _HALF).mean()))

    def record_known(self, counts: Mapping[int, int], honest: int, period: int) -> None:
        """`counts`: how many of the `honest` live nodes have convicted each node."""
        for m, n in counts.items():
            if n >= honest and m in self.evil and m not in self.known_at:
                self.known_at[m] = period

    def report(
        self, views: Sequence[Iterable[int]], convicted: Collection[Hashable], live: Sequence[int]
    ) -> dict[str, Any]:
        """The run's figures; `views[i]`: node i's neighbours, `convicted`: the members some
        honest node has convicted."""
        from redy.sim.views import largest_component

        honest = [i for i in live if i not in self.evil]
        keep = set(honest)
        adj: list[list[int]] = [[] for _ in views]
        for i in honest:
            for j in views[i]:
                if j in keep:
                    adj[i].append(j)
                    adj[j].append(i)
        largest = largest_component(adj, honest)
        share_if_honest = len(self.evil) / max(1, len(live) - 1)
        counts: dict[str, int] = {}
        for s in self.strategy.values():
            counts[s] = counts.get(s, 0) + 1
        known = sorted(self.known_at.values())
        final = self.mean_share[-1] if self.mean_share else 0.0
        return {
            "members": len(self.evil),
            "attack": counts,
            "defence": "signed",
            "attacker_share_if_honest": share_if_honest,
            "final_attacker_share": final,
            "final_share_ratio": final / share_if_honest if share_if_honest else 0.0,
            "max_attacker_share": max(self.max_share, default=0.0),
            "max_share_final": self.max_share[-1] if self.max_share else 0.0,
            "mean_attacker_share": float(np.mean(self.mean_share)) if self.mean_share else 0.0,
            "mean_attacker_share_per_cycle": self.mean_share,
            "max_attacker_share_per_cycle": self.max_share,
            "views_over_half_final": self.over_half[-1] if self.over_half else 0.0,
            "honest_largest_component_fraction": largest / len(honest) if honest else 0.0,
            "member_requests": self.requests,
            "members_convicted_somewhere": len(self.evil.intersection(convicted)),
            "members_known_to_all": len(known),
            "cycles_until_known_to_all": {
                "median": known[len(known) // 2] if known else None,
                "max": known[-1] if known else None,
            },
        }
