"""The shuffle with signed descriptors (issue 26), after SecureCyclon (Antonov and Voulgaris,
ICDCS 2023): a sans-IO state machine with the events of `redy.membership.cyclon.Cyclon`, in
which a member, alone or with others, places no more descriptors of itself than an honest node
does, and whatever more it tries leaves signed evidence against it.

A **descriptor** is issued by its owner, one per period (`born`, the owner's period of issue,
inside the owner's signature with its broker URI), in the owner's own request of that period.
It travels as a **transfer chain**: the owner first, then every node that held it, each hop
signed by the node that handed it on. Its age is the current period minus `born`, so nobody can
make an old descriptor young; one older than `max_age` periods is dead. Rules an honest node
keeps, and checks in what it receives:

- **Hand on once.** An entry sent away is kept only as a *terminal* copy: it fills its slot until
  the answer's entries replace it and may still be used to contact its owner, but it is never
  sent again. An honest node therefore never hands one descriptor to two nodes, and two chains of
  one descriptor that are not one the prefix of the other name, at the node where they part, a
  member that handed it on twice (a *fork*). A fork is proof from signed material alone.
- **Contact with a communication certificate.** A request to Q carries one of Q's own
  descriptors (the entry the initiator has held longest, the *token*), whose chain ends at the
  sender. Q
  accepts each of its descriptors once: nobody contacts Q more often than Q issued descriptors,
  whatever its rate. A token presented twice along chains that fork convicts the forker. A
  request without a token (a joining node's first contact, read from a retained view) places only
  the sender's own descriptor (whatever else it carries is checked all the same) and gets at most
  one entry back, SL such a period per receiver.
  A node answers at most SL tokened requests a period (it issues one descriptor a period, so an
  honest pace rarely meets the bound): a coalition cannot pour its hoard into a few views; the
  token of a request refused so is not used up.
- **Swap, never take more than given.** An answer holds no more entries than the request brought,
  so a member draining honest views drains them one for one.
- **Check every entry.** A descriptor whose signature does not verify, whose chain does not end
  with the hop from the sender to the receiver, that is dead or from the future, convicts the
  sender: its signed message carries it, and an honest node never passes such a thing on. Each
  node remembers the chain of every descriptor it held or saw in a partner's view digest for
  `max_age` periods: a chain that forks from a remembered one convicts the forker.
- **Spread the verdicts.** Every message carries the convictions its sender learnt in the last
  `news_periods` periods (the simulator); in the processes a fork's `Verdict.proof`, the two
  signed copies, goes to the neighbours, who check it themselves (redy.membership.secure_overlay).
- **One descriptor a period.** Never two of one period, even if the clock steps back (`tick`),
  nor one of the period a restarted process started in (`resume`): two would be a fork at us.
  A convicted node's entries, and every entry whose chain passes through it, leave the view and
  are refused; its requests go unanswered.

- **Sample, and ask a sample when starved.** Every node seen named (in what we merge and in
  the digests) feeds a few min-wise samplers (Brahms, Bortnikov et al. 2009): each keeps the
  node of least keyed hash, so a member repeating itself gains nothing there. A node left with
  nothing it may hand on (members that answer short leave only terminal copies behind) contacts
  a sampled node without a token instead of shuffling, and so does every node one period in
  `probe_every` (4): its descriptor of that period then lands with a node drawn evenly from all
  it has seen, not with the owner of the entry it has held longest, whom members may be.
- **Contact what we have held longest**, not the oldest descriptor (CYCLON's rule): the age a
  descriptor shows is its owner's to choose within the lifetime, and members that hand out only
  their freshest stay in honest views longest under CYCLON's rule (a 30 % hoarding coalition
  held 1.13 to 1.18 times its share at 1,000 nodes, 0.93 to 1.02 with this rule, seeds 1-7).
  Dead descriptors still leave at `max_age`, unreachable ones when a dial or push fails.

What bounds a coalition then: each member issues one descriptor per period, as every honest node
does; a descriptor is contacted once and handed on once per holder; so the coalition's entries in
honest views are the descriptors its members issued, each in one place at a time. Handing one
descriptor to several nodes is the only way past that bound, and it is a fork: detected with a
probability that grows with the square of the copies (every copy is checked by every node it
passes and every partner that sees it in a digest), and, once detected, known to every honest
node within a few periods.

Signatures are outside this class: the driver verifies them and gives `Descriptor.valid`; the
simulator, whose members cannot sign for others, models them.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Hashable, Iterable, Sequence
from typing import Any, NamedTuple

from redy.membership.cyclon import Neighbour, check_parameters

NodeId = Any
_STRIKES = 3
_SWEEP_EVERY = 8  # periods between sweeps of the remembered chains and tombstones
_LONG_AGO = -(2**62)  # `since` of an entry held from before anything we count


class Descriptor(NamedTuple):
    """A descriptor of `owner` (grid listener `broker`) issued in the owner's period `born`, as
    handed along `chain` (owner first, the current holder last). `valid`: its signatures verify
    (the driver's check; a forged one is False). `sigs[k]`: the signature of the hop from
    `chain[k]` to `chain[k + 1]` (redy.membership.signatures; empty in the simulator, whose
    members cannot forge and whose `valid` says what a check would)."""

    owner: NodeId
    broker: str
    born: int
    chain: tuple[NodeId, ...]
    valid: bool = True
    sigs: tuple[str, ...] = ()


class SecureOut(NamedTuple):
    """A request: to `target` (the token; None: an untokened first contact), matched by
    `nonce`, carrying `entries` (the sender's own fresh descriptor last)."""

    target: Descriptor
    token: Descriptor | None
    nonce: int
    entries: tuple[Descriptor, ...]


class Verdict(NamedTuple):
    """`culprit` misbehaved; `reason` says how (for the log). `proof`: the signed material that
    shows it to anyone (two copies of one descriptor whose chains part right after `culprit`),
    or () when only we saw it (a forged token: nobody's signature says the culprit sent it)."""

    culprit: NodeId
    reason: str
    proof: tuple[Descriptor, ...] = ()


def fork_point(a: Sequence[NodeId], b: Sequence[NodeId]) -> NodeId | None:
    """The node that handed one descriptor on along both chains `a` and `b` to different nodes,
    or None when one chain extends the other (one path, seen at two moments)."""
    n = min(len(a), len(b))
    for k in range(n):
        if a[k] != b[k]:
            return a[k - 1] if k else None
    return None


def _rank(seed: int, node: NodeId) -> int:
    """A sampler's rank of `node`: a hash keyed by the sampler's seed, stable across runs."""
    if isinstance(node, int):
        return ((node + 0x9E3779B97F4A7C15) * seed * 0xBF58476D1CE4E5B9 >> 7) & (2**61 - 1)
    digest = hashlib.blake2b(str(node).encode(), digest_size=8, key=seed.to_bytes(8, "big"))
    return int.from_bytes(digest.digest(), "big")


class SecureCyclon:
    """One node's view of signed descriptors and its shuffle. Events in, messages out; every
    event takes the current period (an integer the whole grid shares: the simulator's cycle, or
    the wall clock divided by the shuffle period in the processes)."""

    def __init__(
        self,
        node: NodeId,
        uri: str,
        view_size: int,
        shuffle_length: int,
        rng: random.Random,
        *,
        detector: str = "verify",
        max_age: int = 0,
        max_chain: int = 5,
        news_periods: int = 3,
        samplers: int = 4,
        probe_every: int = 4,
    ) -> None:
        check_parameters(view_size, shuffle_length, detector)
        self.me = node
        self.uri = uri
        self.view_size = view_size
        self.shuffle_length = shuffle_length
        self.detector = detector
        self.max_age = max_age or 2 * view_size
        self.max_chain = max_chain
        self.news_periods = news_periods
        self.period = 0
        self._rng = rng
        self._view: dict[Hashable, Descriptor] = {}
        self._since: dict[Hashable, int] = {}  # owner -> period the copy we hold came in
        self._terminal: set[Hashable] = set()  # sent away: kept, never sent again
        self._pending: dict[int, tuple[Descriptor, tuple[Hashable, ...]]] = {}
        # The copy of every descriptor we held or saw, by (owner, born): a fork's proof
        self._seen: dict[tuple[Hashable, int], Descriptor] = {}
        self._redeemed: dict[int, Descriptor] = {}  # own descriptors used to reach us
        self._issued = -(2**62)  # the period of our last descriptor: one a period, never two
        self._tombstones: dict[Hashable, int] = {}
        self._strikes: dict[Hashable, int] = {}
        # (period, count): untokened requests answered in that period, at most SL a period
        self._untokened = (-1, 0)
        self._tokened = (-1, 0)  # (period, count) of tokened requests answered
        # Min-wise samplers (Brahms) over every node we have seen named: repetition cannot bias
        # them, so each holds a node drawn evenly from those seen, whoever repeats itself.
        self.probe_every = probe_every
        self._phase = rng.randrange(probe_every) if probe_every else 0
        self._seeds = [rng.getrandbits(61) | 1 for _ in range(samplers)]
        self._samples: list[tuple[int, NodeId, str] | None] = [None] * samplers
        self._next_sample = 0
        self.convicted: dict[Hashable, int] = {}  # culprit -> period we learnt it
        self._news: list[tuple[int, Verdict]] = []
        self.verdicts: list[Verdict] = []  # our own findings since the driver last took them
        self._admitted: list[Hashable] | None = [] if detector == "verify" else None

    # -- reading -------------------------------------------------------------------------------

    @property
    def view(self) -> tuple[Neighbour, ...]:
        p = self.period
        return tuple(Neighbour(d.owner, d.broker, p - d.born) for d in self._view.values())

    @property
    def descriptors(self) -> tuple[Descriptor, ...]:
        return tuple(self._view.values())

    def neighbours(self) -> Iterable[NodeId]:
        return self._view.keys()

    def __len__(self) -> int:
        return len(self._view)

    @property
    def starved(self) -> bool:
        """Nothing we may hand on: an empty view, or only terminal entries (what members who
        answer short leave behind). The driver then asks its introducer instead of shuffling."""
        return len(self._terminal) >= len(self._view)

    def news(self) -> tuple[Verdict, ...]:
        """The convictions to carry in our next messages (learnt in the last news_periods)."""
        limit = self.period - self.news_periods
        while self._news and self._news[0][0] < limit:
            self._news.pop(0)
        return tuple(v for _, v in self._news)

    def take_verdicts(self) -> list[Verdict]:
        out, self.verdicts = self.verdicts, []
        return out

    # -- events --------------------------------------------------------------------------------

    def seed(self, entries: Iterable[Descriptor], period: int) -> None:
        """Start from a retained view (or a bootstrap): terminal entries, to contact only; they
        were not handed to us, so we may not hand them on."""
        self.period = period
        for d in entries:
            if d.owner == self.me or d.owner in self.convicted or not d.valid:
                continue
            if len(self._view) >= self.view_size:
                break
            if d.owner not in self._view and period - d.born <= self.max_age:
                self._view[d.owner] = d
                self._since[d.owner] = period
                self._terminal.add(d.owner)
                if self._admitted is not None:
                    self._admitted.append(d.owner)

    def issue(self, period: int, to: NodeId) -> Descriptor:
        """Our descriptor of `period`, handed to `to`."""
        return Descriptor(self.me, self.uri, period, (self.me, to))

    def tick(self, period: int) -> SecureOut | None:
        """One period: drop dead descriptors, contact the owner of the entry we have held longest
        with it (module doc)."""
        if period <= self._issued:
            return None  # the clock stepped back: a second descriptor of one period is a fork
        self.period = period
        if period % _SWEEP_EVERY == 0:
            self._sweep()
        view = self._view
        if not view:
            return None
        self._drop_dead()
        if not view:
            return None
        if self.starved or (self.probe_every and period % self.probe_every == self._phase):
            sample = self.sample()
            if sample is not None:
                return self.probe(sample, period)
        since = self._since
        oldest = min(since.get(o, _LONG_AGO) for o in view)
        candidates = [o for o in view if since.get(o, _LONG_AGO) == oldest]
        q = candidates[0] if len(candidates) == 1 else self._rng.choice(candidates)
        target = view[q]
        token = None if q in self._terminal and target.chain[-1] != self.me else target
        self._drop(q)
        return self._request(target, token, period)

    def resume(self, period: int) -> None:
        """Issue no descriptor of `period` or before: a restarted process may have issued that
        period's before it died, and a second one, handed elsewhere, would convict us."""
        self._issued = max(self._issued, period)

    def probe(self, target: Descriptor, period: int) -> SecureOut:
        """A first contact of a node outside the view (no token): to join or rejoin."""
        self.period = period
        return self._request(Descriptor(target.owner, target.broker, target.born, ()), None, period)

    def sample(self) -> Descriptor | None:
        """A sampled node outside the view to contact without a token (module doc), in turn;
        None if none is left."""
        n = len(self._samples)
        for k in range(n):
            slot = self._samples[(self._next_sample + k) % n]
            if slot is None:
                continue
            _, owner, broker = slot
            if owner in self._view or owner in self.convicted or owner in self._tombstones:
                continue
            self._next_sample = (self._next_sample + k + 1) % n
            return Descriptor(owner, broker, self.period, ())
        return None

    def _saw(self, owner: NodeId, broker: str) -> None:
        if owner == self.me or owner in self.convicted:
            return
        for i, seed in enumerate(self._seeds):
            h = _rank(seed, owner)
            slot = self._samples[i]
            if slot is None or h < slot[0]:
                self._samples[i] = (h, owner, broker)

    def _unsample(self, node: NodeId) -> None:
        for i, slot in enumerate(self._samples):
            if slot is not None and slot[1] == node:
                self._samples[i] = None

    def on_request(
        self,
        sender: NodeId,
        token: Descriptor | None,
        entries: Sequence[Descriptor],
        period: int,
        digest: Iterable[Descriptor] = (),
        news: Iterable[Verdict] = (),
    ) -> tuple[Descriptor, ...] | None:
        """Answer a request (also while our own is pending); None: refused."""
        self.period = max(self.period, period)
        self.learn(news)
        if sender in self.convicted or sender == self.me:
            return None
        if token is None:
            if not any(d.owner == sender for d in entries):
                return None
            period_, count = self._untokened
            count = count + 1 if period_ == self.period else 1
            if count > self.shuffle_length:
                return None
            self._untokened = (self.period, count)
            # Only the sender's own descriptor is placed, but whatever else it handed us is
            # checked like any entry: a copy there that forks from one we saw convicts.
            got = self._admissible(sender, entries)
            got = [d for d in got if d.owner == sender][:1]
        else:
            if not self._token_ok(sender, token):
                return None
            period_, count = self._tokened
            count = count + 1 if period_ == self.period else 1
            if count > self.shuffle_length:
                return None  # a burst beyond any honest pace: later (the token stays good)
            self._tokened = (self.period, count)
            if not self._redeem(sender, token):
                return None
            got = self._admissible(sender, entries)
        if not got or sender in self.convicted:
            return None
        self._observe(sender, digest)
        if sender in self.convicted:
            return None
        self._drop_dead()  # what died since our tick: a receiver would convict us for it
        others = [o for o in self._view if o != sender and o not in self._terminal]
        k = min(self.shuffle_length, len(others), len(got))
        sent = self._rng.sample(others, k) if k else []
        reply = tuple(self._hand(o, sender) for o in sent)
        self._merge(got, sent)
        return reply

    def on_reply(
        self,
        nonce: int,
        sender: NodeId,
        entries: Sequence[Descriptor],
        digest: Iterable[Descriptor] = (),
        news: Iterable[Verdict] = (),
    ) -> bool:
        """Merge the answer to our request; False for an unknown nonce."""
        pending = self._pending.pop(nonce, None)
        if pending is None:
            return False
        target, sent = pending
        self.learn(news)
        self._strikes.pop(target.owner, None)
        self._tombstones.pop(target.owner, None)
        if sender in self.convicted:
            return True
        got = self._admissible(sender, entries)
        self._observe(sender, digest)
        if sender not in self.convicted:
            self._merge(got, sent)
        return True

    def on_refused(self, nonce: int) -> None:
        """The target answered but refused (its descriptor was already used, or we are
        convicted there): it is alive; our entries stay terminal, nothing else changes."""
        pending = self._pending.pop(nonce, None)
        if pending is not None:
            self._strikes.pop(pending[0].owner, None)
            if not pending[0].chain:
                self._unsample(pending[0].owner)  # a sample that turns us away: draw another

    def on_timeout(self, nonce: int) -> None:
        """No answer: CYCLON leaves the target out; `redy`/`verify` put it back (as terminal: it
        was handed on) until it missed _STRIKES in a row."""
        pending = self._pending.pop(nonce, None)
        if pending is None or self.detector == "cyclon" or not pending[0].chain:
            return
        target = pending[0]
        o = target.owner
        strikes = self._strikes.get(o, 0) + 1
        if strikes >= _STRIKES or o in self._tombstones or o in self.convicted:
            self._strikes.pop(o, None)
            return
        self._strikes[o] = strikes
        if o not in self._view and len(self._view) < self.view_size:
            self._view[o] = target
            self._since[o] = _LONG_AGO  # the first to try again, as it was
            self._terminal.add(o)

    def on_unreachable(self, node: NodeId) -> None:
        if self.detector == "cyclon":
            return
        self._drop(node)
        self._strikes.pop(node, None)
        self._tombstones[node] = self.period
        self._unsample(node)

    def discard(self, node: NodeId) -> None:
        self._drop(node)

    def take_admitted(self) -> tuple[NodeId, ...]:
        if not self._admitted:
            return ()
        out = tuple(n for n in dict.fromkeys(self._admitted) if n in self._view)
        self._admitted.clear()
        return out

    def awaiting_dial(self) -> frozenset[NodeId]:
        """The nodes merged since the last take_admitted() (detector "verify")."""
        return frozenset(self._admitted) if self._admitted else frozenset()

    def learn(self, news: Iterable[Verdict]) -> None:
        """Convictions another node carried (their proofs checked by the driver)."""
        for v in news:
            if v.culprit not in self.convicted and v.culprit != self.me:
                self._convict(v, found=False)

    # -- inside --------------------------------------------------------------------------------

    def _request(self, target: Descriptor, token: Descriptor | None, period: int) -> SecureOut:
        q = target.owner
        others = [o for o in self._view if o != q and o not in self._terminal]
        k = 0 if token is None else min(self.shuffle_length - 1, len(others))
        sent = self._rng.sample(others, k) if k else []
        entries = (*(self._hand(o, q) for o in sent), self.issue(period, q))
        self._issued = max(self._issued, period)
        nonce = self._rng.getrandbits(62)
        self._pending[nonce] = (target, tuple(sent))
        return SecureOut(target, token, nonce, entries)

    def _hand(self, owner: Hashable, to: NodeId) -> Descriptor:
        """Hand our entry of `owner` to `to`: the copy we keep becomes terminal."""
        d = self._view[owner]
        self._terminal.add(owner)
        return d._replace(chain=(*d.chain, to))

    def _drop_dead(self) -> None:
        limit = self.period - self.max_age
        for o in [o for o, d in self._view.items() if d.born < limit]:
            self._drop(o)

    def _drop(self, owner: Hashable) -> None:
        self._view.pop(owner, None)
        self._since.pop(owner, None)
        self._terminal.discard(owner)

    def _convict(self, verdict: Verdict, found: bool = True) -> None:
        culprit = verdict.culprit
        if culprit in self.convicted or culprit == self.me:
            return
        self.convicted[culprit] = self.period
        self._news.append((self.period, verdict))
        if found:
            self.verdicts.append(verdict)
        self._unsample(culprit)
        for o in [o for o, d in self._view.items() if culprit in d.chain]:
            self._drop(o)

    def _token_ok(self, sender: NodeId, token: Descriptor) -> bool:
        """Whether `token` is one of our own descriptors, alive and handed to `sender`; a
        forged or dead one convicts the sender."""
        p = self.period
        if (
            token.owner != self.me
            or not token.valid
            or len(token.chain) < 2
            or token.chain[0] != self.me
            or token.chain[-1] != sender
            or token.born > p + 1
        ):
            self._convict(Verdict(sender, "presented a token that is not one of ours"))
            return False
        if token.born < p - self.max_age - 1:
            self._convict(Verdict(sender, f"presented a dead token (period {token.born})"))
            return False
        return True

    def _redeem(self, sender: NodeId, token: Descriptor) -> bool:
        """Use up one of our own descriptors (checked by _token_ok) presented by `sender`."""
        prev = self._redeemed.get(token.born)
        if prev is not None:
            culprit = fork_point(prev.chain, token.chain)
            if culprit is not None:
                why = f"handed our descriptor {token.born} on twice"
                self._convict(Verdict(culprit, why, (prev, token)))
            return False
        self._redeemed[token.born] = token
        return True

    def _admissible(self, sender: NodeId, entries: Sequence[Descriptor]) -> list[Descriptor]:
        """The entries we may merge; a malformed one convicts the sender (see module doc)."""
        p, me = self.period, self.me
        out: list[Descriptor] = []
        owners: set[Hashable] = set()
        for d in entries:
            chain = d.chain
            if (
                not d.valid
                or len(chain) < 2
                or chain[0] != d.owner
                or chain[-1] != me
                or chain[-2] != sender
                or d.born > p + 1
            ):
                self._convict(Verdict(sender, "sent a descriptor that does not verify"))
                return []
            if d.born < p - self.max_age - 1:
                self._convict(Verdict(sender, f"sent a dead descriptor of {d.owner}"))
                return []
            if len(chain) > self.max_chain:
                self._convict(Verdict(sender, f"handed on a worn-out descriptor of {d.owner}"))
                return []
            if d.owner == me or d.owner in owners:
                continue
            if self.convicted and any(n in self.convicted for n in chain):
                continue
            # Forks first: a copy of a node we lost (its broker did not answer) still proves.
            if not self._remember(d):
                return []  # a fork: the culprit is convicted, the message is poisoned
            died = self._tombstones.get(d.owner)
            if died is not None:
                if d.born <= died:
                    continue
                del self._tombstones[d.owner]
            owners.add(d.owner)
            out.append(d)
            self._saw(d.owner, d.broker)
        return out

    def _remember(self, d: Descriptor) -> bool:
        """Record `d`'s chain; False (and a conviction) if it forks from a remembered one."""
        key = (d.owner, d.born)
        prev = self._seen.get(key)
        if prev is None:
            self._seen[key] = d
            return True
        culprit = fork_point(prev.chain, d.chain)
        if culprit is not None:
            why = f"handed the descriptor {d.owner}/{d.born} on twice"
            self._convict(Verdict(culprit, why, (prev, d)))
            return False
        if len(d.chain) > len(prev.chain):
            self._seen[key] = d
        return True

    def _observe(self, sender: NodeId, digest: Iterable[Descriptor]) -> None:
        """A partner's view digest: remembered like what we hold, checked for forks."""
        p = self.period - self.max_age
        for d in digest:
            ok = d.valid and d.born >= p and d.chain and d.chain[-1] == sender
            if ok and self._remember(d):
                self._saw(d.owner, d.broker)

    def _merge(self, got: list[Descriptor], sent: Iterable[Hashable]) -> None:
        view, terminal = self._view, self._terminal
        self._rng.shuffle(got)  # the sender's order decides nothing
        fresh: list[Descriptor] = []
        for d in got:
            old = view.get(d.owner)
            if old is None:
                fresh.append(d)
            elif d.born > old.born:  # keep the younger: ours is dropped, not handed on
                view[d.owner] = d
                self._since[d.owner] = self.period
                if len(d.chain) < self.max_chain:
                    terminal.discard(d.owner)
                else:
                    terminal.add(d.owner)
        replaceable = [o for o in sent if o in view and o in terminal]
        for d in fresh:
            if len(view) >= self.view_size:
                if not replaceable:
                    # Still full: a terminal copy gives way before a new entry is dropped;
                    # one drawn at random (the set's order would favour some node ids).
                    others = [o for o in view if o in terminal]
                    if not others:
                        break
                    replaceable = [self._rng.choice(others)]
                self._drop(replaceable.pop())
            view[d.owner] = d
            self._since[d.owner] = self.period
            if len(d.chain) >= self.max_chain:
                terminal.add(d.owner)  # worn out: to contact its owner, never to hand on
            if self._admitted is not None:
                self._admitted.append(d.owner)

    def _sweep(self) -> None:
        limit = self.period - self.max_age - 1
        for k in [k for k in self._seen if k[1] < limit]:
            del self._seen[k]
        for b in [b for b in self._redeemed if b < limit]:
            del self._redeemed[b]
        for n in [n for n, t in self._tombstones.items() if t < limit]:
            del self._tombstones[n]
