"""One node of the cell market (redy.balancing.cells), message by message, sans-IO.

`CellNode` runs, for one governance unit, the protocol that `cells`' docstring and
docs/cell-market.md describe and that `redy sim balance --market cells` models: it takes the
messages its peers send (`receive(sender, data, now)`, `data` the raw payload, `sender` the
member the transport names: the last level of the topic, which the broker's ACL binds to the
sender's certificate), the time (`tick(now)` at `next_deadline()`), and returns what to send to
whom (`Send`), the refusals (`Dropped`, one line naming the sender) and, once an epoch, its
result (`Cleared`, or `Failed` with the reason: never a price it cannot stand behind).

An epoch, as each node runs it:

1. **Offers.** It signs its offer (`offers.offer_values`, held to its certified limits, the
   flooding market's `NodeOffer` and signature, without the certificate: the rosters carry the
   certificates once per seed period) and sends it to each cell-mate. A mate's offer counts only
   if the `Keys` find it signed by that member and within its certified limits (the driver's
   `offer_refusal`: redy.signing's Verifier, which holds offers to `offers.offer_refusal`).
   Offers that arrive within `Timing.window_s` are "on time" (`cells.proposal_refusal`).
2. **Agreement** (PBFT's normal case and view change, inside the cell). At `propose_s` the
   leader of view 0 (`cells.leader`) sends its signed proposal (`cells.propose`: member and
   digest of each offer it counts, and the members it leaves out for two signed offers with
   both as evidence). A member that lacks an offer the proposal counts asks the leader for it
   (`want`; the next view's leader if this one does not answer); then, unless `cells.proposal_refusal` gives a reason, it sends a signed `prepare`
   to every mate; with `cells.quorum` prepares it is prepared (and keeps their signatures as
   the proof) and sends a signed `commit`; with a quorum of commits the cell has decided. A
   view not decided within `view_s` is changed: each member sends its mates a signed view
   change naming what it prepared, and the next leader the proof with it and the offers it
   holds (member and digest); a member that sees f + 1 of its mates ask for a later view joins
   them. The next leader pulls the
   offers it lacks from the lists, and with a quorum of view changes proposes again: the
   proposal prepared in the highest view if any (so a decision taken in one view is kept in
   every later one), else its own, now with the offers every honest member held. The new
   proposal carries the signed view changes it rests on and the proof of what it re-proposes.
3. **Sums between cells.** Every member computes its cell's value from the decided offers
   (`cells.summaries` at the phase's probe prices, or `cells.events` in a listing phase) and
   signs it; in round r of recursive doubling it sends that signature to the round's
   `cells.SPEAKERS` speakers (`speakers`: drawn by a hash of the seed, epoch, phase, round and
   cell), who check the signatures on what they computed themselves, and with
   `cells.signatures_needed` of them give the bundle to every member of the partner cell
   (cell XOR 2^r). A member accepts the first bundle of its partner that `cells.accept` passes
   (a bad signature stops it), adds it to its own block's value (the lower cell's first, so
   every cell adds the same floats) and goes on to the next round. With no good bundle
   `round_s` into a round it asks a member of the partner cell, then twice as many after twice
   the wait, up to f + 1 at once (`_ask`); each asked member sends its signature to all its
   mates (who answer in kind) and gives the bundle to the askers.
4. **Refinement.** After the last round every node holds the grid's total for the phase, the
   same floats on every node, and `cells.Refinement` (the same on every node) gives the next
   probe, until the price (a `Price`; `Cleared` with an `offers.ExactResult`).

Every peer's message is distrusted: oversized, malformed, of an unknown kind, from a sender in
no roster this node holds, for another epoch (messages of the next epoch that come at most
`skew_s` before it starts are held until it does; earlier ones are refused: nothing ends an
epoch early), from the wrong member (a proposal not from its view's leader, a bundle not from
the round's partner cell), or with a bad signature: refused with one `Dropped` naming the
sender. One message of a kind per sender, view, phase and round is tried (a vote, view change,
proposal or bundle with a bad signature costs its sender that slot); a sender's offers are
checked until `_REFUSED_PER_SENDER` of them were refused; a `want` is answered once per offer
and asker: nothing a member repeats costs a signature check or a reply twice.

A member that sees a quorum commit a proposal it never got (its leader left it out) asks the
committers for it and takes the leader's signed proposal from whichever relays it; one that
missed the commits and asks for a view change gets from each mate that decided the proposal
and a quorum of signed commits.

What a node pays is counted (`Costs`: messages and bytes in and out, signatures checked and
made, per epoch). Not built: the unserved or excess share of a node in a shortage or surplus
(the cells' sums carry no per-node load), so `ExactResult.unserved_kw` and `excess_kw` stay 0.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

import attrs
import numpy as np
import orjson

from redy import messages
from redy.balancing import cells
from redy.balancing.curves import Bid
from redy.balancing.events import Cleared, Dropped
from redy.balancing.offers import ExactResult, offer_values
from redy.errors import InvalidMessage, RedyError
from redy.messages import NodeOffer

NodeId = str
MAX_MESSAGE_BYTES = 65_536  # a peer's message past this is refused unread
_DIGEST_CHARS = 32  # an offer's digest: 128 bits of SHA-256, hex
_EARLY_PER_SENDER = 16  # messages of the next epoch held per sender
_REFUSED_PER_SENDER = 4  # offers refused from one sender in an epoch before it is not heard
_SIG_CHARS = 200  # a signature (base64 DER ECDSA P-256 is 96)


class Keys(Protocol):
    """The node's key and the grid's certificates, as the core needs them (redy.signing's
    Signer and Verifier behind them in a governance unit; real or stand-in keys in tests)."""

    def sign_offer(self, epoch: int, values: tuple[float, ...]) -> NodeOffer:
        """This node's offer for `epoch`, signed (without its certificate)."""
        ...

    def sign(self, body: bytes) -> str:
        """This node's signature of `body`."""
        ...

    def offer_refusal(self, offer: NodeOffer) -> str | None:
        """Why `offer` is not signed by its node or breaks its certified limits (None: fine)."""
        ...

    def verify(self, node: NodeId, body: bytes, sig: str) -> bool:
        """Whether `sig` is `node`'s signature of `body`."""
        ...


@attrs.frozen
class Directory:
    """The cells of a seed period: `cells` (a power of two) and the rosters this node holds
    (cell -> its members, sorted; a node needs its own and those its cell meets in the rounds
    of recursive doubling)."""

    seed: bytes
    cells: int
    rosters: Mapping[int, tuple[NodeId, ...]]
    _index: dict[NodeId, tuple[int, int]] = attrs.field(init=False, repr=False)

    def __attrs_post_init__(self) -> None:
        index = {n: (c, i) for c, r in self.rosters.items() for i, n in enumerate(r)}
        object.__setattr__(self, "_index", index)

    def place(self, node: NodeId) -> tuple[int, int] | None:
        """(cell, index in its roster) of `node`, if in a roster held."""
        return self._index.get(node)


def directory(seed: bytes, keys: Mapping[NodeId, bytes], cell_size: int) -> Directory:
    """The cells of the members whose certificates hold `keys` (node -> public key bytes):
    `cells.cell_count` of them, each member in `cells.cell_of`. An empty cell is an error (no
    one could speak for it): a grid that small wants a smaller `cell_size`."""
    k = cells.cell_count(len(keys), cell_size)
    rosters: dict[int, list[NodeId]] = {c: [] for c in range(k)}
    for node, key in keys.items():
        rosters[cells.cell_of(seed, key, k)].append(node)
    empty = [c for c, r in rosters.items() if not r]
    if empty:
        raise RedyError(f"cells: {len(empty)} of {k} cells empty; expected a smaller cell size")
    return Directory(seed, k, {c: tuple(sorted(r)) for c, r in rosters.items()})


def speakers(seed: bytes, epoch: int, phase: int, rnd: int, cell: int, roster: int) -> list[int]:
    """The roster indexes of the members that give the partner cell `cell`'s bundle in this
    phase and round: `cells.SPEAKERS` distinct ones (all, in a smaller cell), drawn by hash."""
    out: list[int] = []
    draw = 0
    while len(out) < min(cells.SPEAKERS, roster):
        h = hashlib.sha256(seed + f"/speak/{epoch}/{phase}/{rnd}/{cell}/{draw}".encode()).digest()
        i = int.from_bytes(h[:8], "big") % roster
        if i not in out:
            out.append(i)
        draw += 1
    return out


def offer_digest(offer: NodeOffer) -> str:
    """What a proposal names an offer by: its signed content (a re-signed copy is the same)."""
    body = orjson.dumps([offer.node, offer.epoch, list(offer.values), offer.session])
    return hashlib.sha256(body).hexdigest()[:_DIGEST_CHARS]


def encode(kind: str, epoch: int, **fields: Any) -> bytes:
    """A message of the cell market: JSON {"t": kind, "e": epoch, ...}."""
    return orjson.dumps({"t": kind, "e": epoch, **fields})


@attrs.frozen
class Timing:
    """Epoch length (s); offers received within `window_s` of the start are on time; the
    leader of view 0 proposes at `propose_s`; a view not decided `view_s` after it began is
    changed (view 0 begins at `propose_s`); a round with no good bundle after `round_s` asks
    the partner cell; a new leader proposes `settle_s` after its quorum of view changes (the
    offers it pulled arrive meanwhile); past `finish_by` of the epoch a node gives it up;
    messages of the next epoch up to `skew_s` early are held."""

    epoch_s: float
    window_s: float = 1.0
    propose_s: float = 1.5
    view_s: float = 2.0
    round_s: float = 1.0
    settle_s: float = 0.3
    finish_by: float = 0.9
    skew_s: float = 0.5

    def __attrs_post_init__(self) -> None:
        if not 0 < self.window_s < self.propose_s < self.finish_by * self.epoch_s:
            raise RedyError("cell market timing: expected 0 < window_s < propose_s < finish")
        if min(self.view_s, self.round_s, self.settle_s, self.skew_s) <= 0:
            raise RedyError("cell market timing: expected view_s, round_s, settle_s, skew_s > 0")


@attrs.frozen
class Send:
    target: NodeId
    data: bytes


@attrs.frozen
class Failed:
    """The epoch ended with no price this node can stand behind, and why."""

    epoch: int
    reason: str


Action = Send | Cleared | Dropped | Failed


@attrs.define
class Costs:
    """What one node paid in one epoch."""

    messages_in: int = 0
    bytes_in: int = 0
    messages_out: int = 0
    bytes_out: int = 0
    checks: int = 0  # signatures verified
    signatures: int = 0  # signatures made


class _Bad(InvalidMessage):
    pass


def _int(d: dict[str, Any], key: str, lo: int = 0, hi: int = 1 << 62) -> int:
    v = d.get(key)
    if type(v) is not int or not lo <= v <= hi:
        raise _Bad(f"{key}: expected an integer in {lo}..{hi}")
    return v


def _str(d: dict[str, Any], key: str, max_len: int = _SIG_CHARS) -> str:
    v = d.get(key)
    if type(v) is not str or len(v) > max_len:
        raise _Bad(f"{key}: expected a string of at most {max_len} characters")
    return v


def _list(d: dict[str, Any], key: str, max_len: int) -> list[Any]:
    v = d.get(key)
    if type(v) is not list or len(v) > max_len:
        raise _Bad(f"{key}: expected a list of at most {max_len} items")
    return v


def _pairs(v: list[Any], roster: int, what: str, max_str: int) -> list[tuple[int, str]]:
    """[[index, string], ...] with indexes in the roster, each index once."""
    out: list[tuple[int, str]] = []
    for p in v:
        if (
            type(p) is not list
            or len(p) != 2
            or type(p[0]) is not int
            or not 0 <= p[0] < roster
            or type(p[1]) is not str
            or len(p[1]) > max_str
        ):
            raise _Bad(f"{what}: expected [member index, string] pairs")
        out.append((p[0], p[1]))
    if len({i for i, _ in out}) != len(out):
        raise _Bad(f"{what}: a member named twice")
    return out


def _floats(v: Any, what: str, max_len: int) -> np.ndarray:
    if (
        type(v) is not list
        or len(v) > max_len
        or not all(type(x) is float and math.isfinite(x) for x in v)
    ):
        raise _Bad(f"{what}: expected a list of at most {max_len} finite numbers")
    return np.array(v, dtype=float)


def _offer_of(raw: Any) -> NodeOffer:
    """A NodeOffer from its JSON form, checked against topics.yaml (the codec raises
    TypeError, not InvalidMessage, for an object that lacks a required field: caught here)."""
    try:
        offer: NodeOffer = messages.from_dict("NodeOffer", raw)
    except (TypeError, ValueError) as exc:
        raise _Bad(f"an offer that is not a NodeOffer ({str(exc)[:80]})") from None
    return offer


def _value_json(value: np.ndarray | cells.Events) -> list[Any]:
    if isinstance(value, cells.Events):
        return [
            value.prices.tolist(),
            value.jump_kw.tolist(),
            value.dslope.tolist(),
            value.complete,
        ]
    return [float(x) for x in value.tolist()]


@attrs.frozen
class _Proposal:
    """A proposal as received: the cells.Proposal, its digest, whether it re-proposes what a
    quorum prepared in an earlier view (then no member refuses it), and its message fields."""

    proposal: cells.Proposal
    digest: str
    justified: bool


@attrs.define
class _ViewChange:
    view: int
    prepared_view: int
    prepared_digest: str
    sig: str
    cert: dict[str, Any] | None
    checked: bool = False


class _Epoch:
    """One epoch's state."""

    def __init__(self, epoch: int, started: float, cell: int, me: int, roster: int) -> None:
        self.epoch, self.started = epoch, started
        self.cell, self.me, self.roster = cell, me, roster
        self.held: dict[int, dict[str, NodeOffer]] = {}  # member -> digest -> its valid offers
        self.on_time: dict[int, str] = {}
        self.view = 0
        self.view_deadline = math.inf
        self.proposals: dict[int, _Proposal] = {}
        self.raw: dict[int, dict[str, Any]] = {}  # view -> its proposal's fields, for relaying
        self.committed_unheld: dict[int, str] = {}  # view -> digest a quorum committed
        self.proposed: set[int] = set()  # views this node proposed in (as leader)
        self.nv_at = math.inf  # when this node, leading a new view, proposes
        self.voted: dict[tuple[str, int], str] = {}  # (kind, view) -> digest this node voted
        self.votes: dict[tuple[str, int, str], dict[int, str]] = {}  # -> member -> signature
        self.voters: set[tuple[str, int, int]] = set()  # (kind, view, member) heard
        self.prepared: tuple[int, str, cells.Proposal, dict[int, str]] | None = None
        self.view_changes: dict[int, dict[int, _ViewChange]] = {}  # view -> member -> it
        self.highest_asked: dict[int, int] = {}  # member -> the highest view it asked for
        self.wanted: set[tuple[NodeId, int, str]] = set()  # (of whom, member, digest) asked
        self.answered: set[tuple[Any, ...]] = set()  # (asker, member, digest) or (asker, view)
        self.refused_from: dict[NodeId, int] = {}  # offers refused, by sender
        self.proposals_from: set[tuple[int, int]] = set()  # (mate, view) tried
        self.refused: set[int] = set()  # views whose proposal this node refused
        self.decided: _Proposal | None = None
        self.blocks: tuple[np.ndarray, np.ndarray, np.ndarray, float] | None = None
        # The sums.
        self.refine: cells.Refinement | None = None
        self.probe: cells.Grid | cells.Listing | None = None
        self.phase = 0
        self.round = 0
        self.value: np.ndarray | cells.Events | None = None
        self.round_deadline = math.inf
        self.asked = 0  # partner members asked this round
        self.ask_step = 0  # asks sent this round (each asks twice as many members)
        self.mine: dict[tuple[int, int], tuple[str, bytes, np.ndarray | cells.Events]] = {}
        self.cosigns: dict[tuple[int, int], dict[int, str]] = {}
        self.good: dict[tuple[int, int], dict[int, str]] = {}  # cosigns checked good
        self.bad: set[tuple[int, int, int]] = set()
        self.askers: dict[tuple[int, int], set[NodeId]] = {}
        self.served: set[tuple[int, int, NodeId]] = set()
        self.help: set[tuple[int, int]] = set()  # rounds whose cosign goes to all mates
        self.helped: set[tuple[int, int]] = set()
        self.bundles: dict[tuple[int, int], list[tuple[NodeId, dict[str, Any]]]] = {}
        self.bundle_from: set[tuple[int, int, NodeId]] = set()
        self.checked: set[Any] = set()  # for cells.accept
        self.done = False


class CellNode:
    """The cell market's protocol for one node (module docstring). `bids()`: the node's bids
    for the epoch that starts; `bounds_kw`: its certified -import..export kW (the grid's
    +-capacity_kw if None); prices between `floor_eur_mwh` and `cap_eur_mwh`."""

    def __init__(
        self,
        node: NodeId,
        keys: Keys,
        cells_of: Directory,
        bids: Callable[[], Iterable[Bid]],
        timing: Timing,
        *,
        capacity_kw: float = math.inf,
        bounds_kw: tuple[float, float] | None = None,
        floor_eur_mwh: float = -500.0,
        cap_eur_mwh: float = 4000.0,
    ) -> None:
        place = cells_of.place(node)
        if place is None:
            raise RedyError(f"cell market: {node} is in no roster of the directory")
        self.node, self.keys, self.dir, self.timing = node, keys, cells_of, timing
        self.cell, self.index = place
        self.roster = cells_of.rosters[self.cell]
        self._bids_of = bids
        self.capacity_kw, self.bounds_kw = capacity_kw, bounds_kw
        self.floor_eur_mwh, self.cap_eur_mwh = floor_eur_mwh, cap_eur_mwh
        self._rounds = cells.rounds(cells_of.cells)
        self._f = cells.faults_tolerated(len(self.roster))
        self._quorum = cells.quorum(len(self.roster))
        self._next_epoch: int | None = None
        self._s: _Epoch | None = None
        self._bids: tuple[Bid, ...] = ()
        self._early: dict[NodeId, list[bytes]] = {}
        self.costs = Costs()  # of the epoch in progress
        self.last_costs: Costs | None = None  # of the epoch before
        self.outcome: Cleared | Failed | None = None  # of the epoch in progress, once known
        self.fallbacks = 0  # partner members asked for a bundle, over the node's life
        self._handlers: dict[str, Callable[[NodeId, dict[str, Any], float, list[Action]], None]]
        self._handlers = {
            "offers": self._on_offers,
            "want": self._on_want,
            "propose": self._on_propose,
            "prepare": self._on_vote,
            "commit": self._on_vote,
            "viewchange": self._on_view_change,
            "cosign": self._on_cosign,
            "bundle": self._on_bundle,
            "ask": self._on_ask,
            "decided": self._on_decided,
        }

    # --- what others can read ----------------------------------------------------------------

    @property
    def epoch(self) -> int | None:
        return self._s.epoch if self._s is not None else None

    @property
    def decided(self) -> cells.Proposal | None:
        """The offers this node's cell agreed on this epoch, once it has."""
        s = self._s
        return s.decided.proposal if s is not None and s.decided is not None else None

    def counted_offers(self) -> list[NodeOffer]:
        """The offers of the decided proposal (empty before)."""
        s = self._s
        if s is None or s.decided is None:
            return []
        return [s.held[i][d] for i, d in s.decided.proposal.included if d in s.held.get(i, {})]

    def sum_body(self, epoch: int, phase: int, rnd: int, cell: int, value: list[Any]) -> bytes:
        """What the members of `cell` sign as their block's value in this phase and round."""
        return self._body("sum", epoch, cell, phase, rnd, value)

    # --- time ----------------------------------------------------------------------------------

    def _start_of(self, epoch: int) -> float:
        return epoch * self.timing.epoch_s

    def next_deadline(self) -> float:
        if self._next_epoch is None:
            return -math.inf
        out = self._start_of(self._next_epoch)
        s = self._s
        if s is None or s.done:
            return out
        finish = s.started + self.timing.finish_by * self.timing.epoch_s
        out = min(out, finish, s.nv_at)
        if s.decided is None:
            out = min(out, s.view_deadline)
            if self._leader(s, 0) == s.me and 0 not in s.proposed:
                out = min(out, self._start_of(s.epoch) + self.timing.propose_s)
        elif s.value is not None:
            out = min(out, s.round_deadline)
        return out

    def tick(self, now: float) -> list[Action]:
        out: list[Action] = []
        self._advance(now, out)
        return out

    def _advance(self, now: float, out: list[Action]) -> None:
        if self._next_epoch is None:
            self._next_epoch = math.ceil(now / self.timing.epoch_s - 1e-9)
        if now >= self._start_of(self._next_epoch):
            self._start(now, math.floor(now / self.timing.epoch_s + 1e-9), out)
        s = self._s
        if s is None or s.done:
            return
        t0 = self._start_of(s.epoch)
        if now >= s.started + self.timing.finish_by * self.timing.epoch_s:
            self._fail(s, self._stuck(s), out)
            return
        if s.decided is None:
            if (
                self._leader(s, 0) == s.me
                and 0 not in s.proposed
                and now >= t0 + self.timing.propose_s
            ):
                self._propose(now, s, 0, out)
            if now >= s.nv_at:
                s.nv_at = math.inf
                self._propose(now, s, s.view, out)
            if now >= s.view_deadline and s.decided is None:
                self._change_view(now, s, s.view + 1, out)
        elif s.value is not None and now >= s.round_deadline:
            self._ask(now, s, out)

    def _stuck(self, s: _Epoch) -> str:
        if s.decided is None:
            return f"epoch {s.epoch}: cell {s.cell} did not agree on its offers (view {s.view})"
        if s.blocks is None:
            return f"epoch {s.epoch}: offers the cell agreed on did not all arrive"
        partner = s.cell ^ (1 << s.round)
        return f"epoch {s.epoch}: phase {s.phase} round {s.round}: no good bundle of cell {partner}"

    def _fail(self, s: _Epoch, reason: str, out: list[Action]) -> None:
        s.done = True
        self.outcome = Failed(s.epoch, reason)
        out.append(self.outcome)

    # --- sending -------------------------------------------------------------------------------

    def _send(self, targets: Iterable[NodeId], data: bytes, out: list[Action]) -> None:
        for t in targets:
            if t != self.node:
                self.costs.messages_out += 1
                self.costs.bytes_out += len(data)
                out.append(Send(t, data))

    def _mates(self) -> tuple[NodeId, ...]:
        return self.roster

    def _sign(self, body: bytes) -> str:
        self.costs.signatures += 1
        return self.keys.sign(body)

    def _verify(self, node: NodeId, body: bytes, sig: str) -> bool:
        self.costs.checks += 1
        return self.keys.verify(node, body, sig)

    def _body(self, kind: str, epoch: int, cell: int, *parts: Any) -> bytes:
        return orjson.dumps(["redy-cell", kind, self.dir.seed.hex(), epoch, cell, *parts])

    def _leader(self, s: _Epoch, view: int) -> int:
        return cells.leader(self.dir.seed, s.epoch, s.cell, view, s.roster)

    # --- the epoch -----------------------------------------------------------------------------

    def _start(self, now: float, epoch: int, out: list[Action]) -> None:
        old = self._s
        if old is not None and not old.done:
            self._fail(old, self._stuck(old), out)
        self.last_costs, self.costs = self.costs, Costs()
        self.outcome = None
        self._next_epoch = epoch + 1
        s = self._s = _Epoch(epoch, now, self.cell, self.index, len(self.roster))
        s.view_deadline = self._start_of(epoch) + self.timing.propose_s + self.timing.view_s
        self._bids = tuple(self._bids_of())
        values = offer_values(self._bids, self.capacity_kw, self.bounds_kw)
        self.costs.signatures += 1
        mine = self.keys.sign_offer(epoch, values)
        d = offer_digest(mine)
        s.held[s.me] = {d: mine}
        s.on_time[s.me] = d
        self._send(self._mates(), encode("offers", epoch, o=[messages.to_dict(mine)]), out)
        early, self._early = self._early, {}
        for sender, datas in early.items():
            for data in datas:
                self._handle(sender, data, now, out, counted=True)

    def receive(self, sender: NodeId, data: bytes, now: float) -> list[Action]:
        """A peer's message (`sender`: the member the transport names)."""
        out: list[Action] = []
        self._advance(now, out)
        self._handle(sender, data, now, out)
        self._advance(now, out)
        return out

    def _handle(
        self, sender: NodeId, data: bytes, now: float, out: list[Action], counted: bool = False
    ) -> None:
        if not counted:
            self.costs.messages_in += 1
            self.costs.bytes_in += len(data)
        if len(data) > MAX_MESSAGE_BYTES:
            out.append(Dropped(sender, f"a message of {len(data)} bytes, over {MAX_MESSAGE_BYTES}"))
            return
        try:
            d = orjson.loads(data)
        except orjson.JSONDecodeError:
            out.append(Dropped(sender, "a message that is not JSON"))
            return
        if type(d) is not dict or type(d.get("t")) is not str or type(d.get("e")) is not int:
            out.append(Dropped(sender, "a message with no kind or epoch"))
            return
        kind, epoch = d["t"], d["e"]
        handler = self._handlers.get(kind)
        if handler is None:
            out.append(Dropped(sender, f"a message of unknown kind {kind[:40]!r}"))
            return
        if self.dir.place(sender) is None:
            out.append(Dropped(sender, f"a {kind} message from a node in no roster held"))
            return
        s = self._s
        if s is None or epoch != s.epoch:
            now_epoch = s.epoch if s is not None else None
            nxt = self._next_epoch
            if nxt is not None and epoch == nxt and self._start_of(nxt) - now <= self.timing.skew_s:
                held = self._early.setdefault(sender, [])
                if len(held) < _EARLY_PER_SENDER:
                    held.append(data)
                    return
            out.append(Dropped(sender, f"a {kind} message of epoch {epoch} in epoch {now_epoch}"))
            return
        try:
            handler(sender, d, now, out)
        except InvalidMessage as exc:
            out.append(Dropped(sender, f"{kind}: {exc}"))

    def _mate(self, sender: NodeId, kind: str) -> int:
        place = self.dir.place(sender)
        if place is None or place[0] != self.cell:
            raise _Bad(f"a {kind} from outside this node's cell")
        return place[1]

    # --- offers --------------------------------------------------------------------------------

    def _on_offers(self, sender: NodeId, d: dict[str, Any], now: float, out: list[Action]) -> None:
        s = self._s
        assert s is not None
        self._mate(sender, "offers")
        for raw in _list(d, "o", 2 * s.roster):
            offer = _offer_of(raw)
            self._take_offer(now, s, sender, offer, out)
        self._retry(now, s, out)

    def _take_offer(
        self, now: float, s: _Epoch, sender: NodeId, offer: NodeOffer, out: list[Action]
    ) -> bool:
        """Hold `offer` if it is valid and new (True if held, now or before)."""
        place = self.dir.place(offer.node)
        if place is None or place[0] != self.cell:
            raise _Bad(f"an offer of {offer.node[:40]}, not of this cell")
        if offer.epoch != s.epoch:
            raise _Bad(f"an offer of {offer.node} for epoch {offer.epoch}")
        i = place[1]
        held = s.held.setdefault(i, {})
        d = offer_digest(offer)
        if d in held:
            return True
        if len(held) >= 2:  # two already: the evidence is complete, more costs nothing
            return False
        if s.refused_from.get(sender, 0) >= _REFUSED_PER_SENDER:
            raise _Bad(f"more than {_REFUSED_PER_SENDER} refused offers this epoch")
        self.costs.checks += 1
        why = self.keys.offer_refusal(offer)
        if why is not None:
            s.refused_from[sender] = s.refused_from.get(sender, 0) + 1
            out.append(Dropped(sender, why))
            return False
        held[d] = offer
        if i not in s.on_time and now <= self._start_of(s.epoch) + self.timing.window_s:
            s.on_time[i] = d
        return True

    def _on_want(self, sender: NodeId, d: dict[str, Any], now: float, out: list[Action]) -> None:
        s = self._s
        assert s is not None
        self._mate(sender, "want")
        view = d.get("p")
        if type(view) is int and view in s.raw and (sender, view) not in s.answered:
            s.answered.add((sender, view))  # the proposal a quorum committed, once
            fields = {k: v for k, v in s.raw[view].items() if k not in ("t", "e")}
            self._send([sender], encode("propose", s.epoch, **fields), out)
        asked = _pairs(_list(d, "w", 2 * s.roster), s.roster, "w", _DIGEST_CHARS)
        got = []
        for i, x in asked:  # each offer once per asker: a want repeated costs nothing
            if x in s.held.get(i, {}) and (sender, i, x) not in s.answered:
                s.answered.add((sender, i, x))
                got.append(s.held[i][x])
        if got:
            data = encode("offers", s.epoch, o=[messages.to_dict(o) for o in got])
            self._send([sender], data, out)

    def _want(
        self, s: _Epoch, target: NodeId, missing: list[tuple[int, str]], out: list[Action]
    ) -> None:
        # Asked once of each mate: a leader that withholds an offer is not the next view's.
        new = [m for m in missing if (target, *m) not in s.wanted]
        if new and target != self.node:
            s.wanted.update((target, *m) for m in new)
            self._send([target], encode("want", s.epoch, w=[list(m) for m in new]), out)

    def _seen(self, s: _Epoch) -> dict[int, set[str]]:
        return {i: set(h) for i, h in s.held.items() if h}

    # --- agreement -----------------------------------------------------------------------------

    def _proposal_body(self, s: _Epoch, p: cells.Proposal) -> bytes:
        return self._body(
            "propose", s.epoch, s.cell, p.view, [list(x) for x in p.included], list(p.excluded)
        )

    def _propose(self, now: float, s: _Epoch, view: int, out: list[Action]) -> None:
        if view in s.proposed or self._leader(s, view) != s.me or view != s.view:
            return
        s.proposed.add(view)
        fields: dict[str, Any] = {}
        justified = False
        if view == 0:
            p = cells.propose(0, s.me, self._seen(s))
        else:
            vcs = {m: v for m, v in s.view_changes.get(view, {}).items() if v.checked}
            best = max(vcs.items(), key=lambda kv: kv[1].prepared_view)
            if best[1].prepared_view >= 0:
                cert = best[1].cert
                assert cert is not None
                inc, exc = self._cert_content(s, cert)
                p = cells.Proposal(view, s.me, tuple(inc), tuple(exc))
                fields["cert"] = cert
                justified = True
            else:
                p = cells.propose(view, s.me, self._seen(s))
            fields["nv"] = [
                [m, v.prepared_view, v.prepared_digest, v.sig] for m, v in sorted(vcs.items())
            ]
        evidence = [messages.to_dict(o) for i in p.excluded for o in s.held[i].values()]
        body = self._proposal_body(s, p)
        sig = self._sign(body)
        data = encode(
            "propose",
            s.epoch,
            v=view,
            inc=[list(x) for x in p.included],
            exc=list(p.excluded),
            ev=evidence,
            s=sig,
            **fields,
        )
        self._send(self._mates(), data, out)
        s.proposals[view] = _Proposal(p, hashlib.sha256(body).hexdigest(), justified)
        s.raw[view] = orjson.loads(data)
        self._try_vote(now, s, view, out)

    def _cert_content(
        self, s: _Epoch, cert: dict[str, Any]
    ) -> tuple[list[tuple[int, str]], list[int]]:
        inc = _pairs(_list(cert, "inc", s.roster), s.roster, "cert.inc", _DIGEST_CHARS)
        exc = _list(cert, "exc", s.roster)
        if not all(type(i) is int and 0 <= i < s.roster for i in exc):
            raise _Bad("cert.exc: expected member indexes")
        return sorted(inc), sorted(exc)

    def _check_cert(
        self, s: _Epoch, view: int, digest: str, cert: Any
    ) -> tuple[list[tuple[int, str]], list[int]]:
        """The content of a proposal that a quorum prepared in `view` with `digest`, if `cert`
        proves it (their signatures); else _Bad."""
        if type(cert) is not dict:
            raise _Bad("a prepared claim without its proof")
        inc, exc = self._cert_content(s, cert)
        p = cells.Proposal(view, self._leader(s, view), tuple(inc), tuple(exc))
        if hashlib.sha256(self._proposal_body(s, p)).hexdigest() != digest:
            raise _Bad("a proof of another proposal than the one claimed")
        sigs = _pairs(_list(cert, "prep", s.roster), s.roster, "cert.prep", _SIG_CHARS)
        if len(sigs) < self._quorum:
            raise _Bad(f"a proof with {len(sigs)} prepares, {self._quorum} needed")
        body = self._body("prepare", s.epoch, s.cell, view, digest)
        for m, sig in sigs:
            if not self._verify(self.roster[m], body, sig):
                raise _Bad(f"a proof with a bad prepare of {self.roster[m]}")
        return inc, exc

    def _on_propose(self, sender: NodeId, d: dict[str, Any], now: float, out: list[Action]) -> None:
        s = self._s
        assert s is not None
        who = self._mate(sender, "proposal")
        view = _int(d, "v", 0, cells.MAX_VIEWS)
        lead = self._leader(s, view)
        if (who, view) in s.proposals_from:
            return  # one try per sender and view
        s.proposals_from.add((who, view))
        # A mate relays the leader's proposal to a member that saw a quorum commit it.
        relayed = view in s.committed_unheld
        if view in s.proposals or s.decided is not None or (view < s.view and not relayed):
            return  # a second one, an old view's: costs nothing
        if who != lead and not relayed:
            raise _Bad(f"a proposal for view {view}, whose leader is another member")
        inc = sorted(_pairs(_list(d, "inc", s.roster), s.roster, "inc", _DIGEST_CHARS))
        exc = _list(d, "exc", s.roster)
        if not all(type(i) is int and 0 <= i < s.roster for i in exc) or len(set(exc)) != len(exc):
            raise _Bad("exc: expected distinct member indexes")
        p = cells.Proposal(view, lead, tuple(inc), tuple(sorted(exc)))
        body = self._proposal_body(s, p)
        if not self._verify(self.roster[lead], body, _str(d, "s")):
            raise _Bad(f"a proposal for view {view} with a bad signature")
        for raw in _list(d, "ev", 2 * s.roster):
            self._take_offer(now, s, sender, _offer_of(raw), out)
        if any(len(s.held.get(i, {})) < 2 for i in exc):
            raise _Bad(f"a proposal for view {view} that leaves a member out without evidence")
        justified = False
        if view > 0:
            justified = self._check_new_view(s, view, d, inc, sorted(exc))
        s.proposals[view] = _Proposal(p, hashlib.sha256(body).hexdigest(), justified)
        s.raw[view] = d
        if relayed:
            self._tally(now, s, "commit", view, s.committed_unheld.pop(view), out)
            return
        if view > s.view:
            self._enter_view(now, s, view)
        self._try_vote(now, s, view, out)

    def _check_new_view(
        self, s: _Epoch, view: int, d: dict[str, Any], inc: list[tuple[int, str]], exc: list[int]
    ) -> bool:
        """Whether a proposal for `view` > 0 re-proposes what a quorum prepared (True) or is
        free (False); _Bad if the view changes it names do not justify it."""
        nv = _list(d, "nv", s.roster)
        claims: list[tuple[int, int, str, str]] = []
        for item in nv:
            if (
                type(item) is not list
                or len(item) != 4
                or type(item[0]) is not int
                or not 0 <= item[0] < s.roster
                or type(item[1]) is not int
                or not -1 <= item[1] < view
                or type(item[2]) is not str
                or type(item[3]) is not str
            ):
                raise _Bad("nv: expected [member, prepared view, digest, signature] items")
            claims.append((item[0], item[1], item[2][:80], item[3][:_SIG_CHARS]))
        if len({c[0] for c in claims}) != len(claims) or len(claims) < self._quorum:
            raise _Bad(f"a proposal for view {view} resting on too few view changes")
        for m, pv, pd, sig in claims:
            if not self._verify(
                self.roster[m], self._body("viewchange", s.epoch, s.cell, view, pv, pd), sig
            ):
                raise _Bad(f"a proposal for view {view} with a bad view change of {self.roster[m]}")
        top = max(claims, key=lambda c: c[1])
        if top[1] < 0:
            return False
        got = self._check_cert(s, top[1], top[2], d.get("cert"))
        if got != (inc, exc):
            raise _Bad(f"a proposal for view {view} that is not the one prepared in view {top[1]}")
        return True

    def _try_vote(self, now: float, s: _Epoch, view: int, out: list[Action]) -> None:
        prop = s.proposals.get(view)
        if prop is None or view != s.view or ("prepare", view) in s.voted or view in s.refused:
            return
        p = prop.proposal
        missing = [(i, x) for i, x in p.included if x not in s.held.get(i, {})]
        if missing:
            self._want(s, self.roster[p.leader], missing, out)
            return
        if not prop.justified:
            why = cells.proposal_refusal(s.on_time, self._seen(s), p)
            if why is not None:
                s.refused.add(view)
                out.append(
                    Dropped(self.roster[p.leader], f"proposal of view {view} refused: it {why}")
                )
                return
        self._vote(now, s, "prepare", view, prop.digest, out)

    def _vote(
        self, now: float, s: _Epoch, kind: str, view: int, digest: str, out: list[Action]
    ) -> None:
        s.voted[(kind, view)] = digest
        sig = self._sign(self._body(kind, s.epoch, s.cell, view, digest))
        s.votes.setdefault((kind, view, digest), {})[s.me] = sig
        self._send(self._mates(), encode(kind, s.epoch, v=view, d=digest, s=sig), out)
        self._tally(now, s, kind, view, digest, out)

    def _on_vote(self, sender: NodeId, d: dict[str, Any], now: float, out: list[Action]) -> None:
        s = self._s
        assert s is not None
        kind = d["t"]
        who = self._mate(sender, kind)
        view = _int(d, "v", 0, cells.MAX_VIEWS)
        digest = _str(d, "d", 64)
        if (kind, view, who) in s.voters:
            return
        s.voters.add((kind, view, who))  # one try: a bad one costs its sender the vote
        if not self._verify(sender, self._body(kind, s.epoch, s.cell, view, digest), _str(d, "s")):
            raise _Bad(f"a {kind} vote for view {view} with a bad signature")
        s.votes.setdefault((kind, view, digest), {})[who] = d["s"]
        self._tally(now, s, kind, view, digest, out)

    def _tally(
        self, now: float, s: _Epoch, kind: str, view: int, digest: str, out: list[Action]
    ) -> None:
        votes = s.votes.get((kind, view, digest), {})
        if len(votes) < self._quorum:
            return
        if kind == "prepare":
            if s.voted.get(("prepare", view)) != digest or ("commit", view) in s.voted:
                return
            prop = s.proposals[view]
            if s.prepared is None or s.prepared[0] < view:
                s.prepared = (view, digest, prop.proposal, dict(votes))
            self._vote(now, s, "commit", view, digest, out)
        elif s.decided is None:
            held = s.proposals.get(view)
            if held is None:  # a quorum committed a proposal this node missed: ask them
                if view not in s.committed_unheld:
                    s.committed_unheld[view] = digest
                    want = encode("want", s.epoch, w=[], p=view)
                    self._send([self.roster[m] for m in votes], want, out)
                return
            if held.digest != digest:
                return
            s.decided = held
            missing = [(i, x) for i, x in held.proposal.included if x not in s.held.get(i, {})]
            for m in votes:  # asked of every member that committed: one honest holds them
                self._want(s, self.roster[m], missing, out)
            self._retry(now, s, out)

    def _enter_view(self, now: float, s: _Epoch, view: int) -> None:
        s.view = view
        s.view_deadline = now + self.timing.view_s

    def _change_view(self, now: float, s: _Epoch, view: int, out: list[Action]) -> None:
        if s.highest_asked.get(s.me, 0) >= view:
            return
        if view >= cells.MAX_VIEWS:
            self._fail(s, f"epoch {s.epoch}: cell {s.cell} did not agree in {view} views", out)
            return
        self._enter_view(now, s, view)
        pv, pd = (s.prepared[0], s.prepared[1]) if s.prepared is not None else (-1, "")
        sig = self._sign(self._body("viewchange", s.epoch, s.cell, view, pv, pd))
        cert = None
        if s.prepared is not None:
            p = s.prepared[2]
            cert = {
                "inc": [list(x) for x in p.included],
                "exc": list(p.excluded),
                "prep": [[m, g] for m, g in sorted(s.prepared[3].items())],
            }
        held = [[i, x] for i, h in sorted(s.held.items()) for x in h]
        mine = _ViewChange(view, pv, pd, sig, cert, checked=True)
        s.view_changes.setdefault(view, {})[s.me] = mine
        s.highest_asked[s.me] = view
        # The offers held and the proof go to the next leader only (it proposes from them);
        # the others count the signed view change and check the leader's proposal.
        lead = self.roster[self._leader(s, view)]
        full = encode("viewchange", s.epoch, v=view, pv=pv, pd=pd, s=sig, held=held, cert=cert)
        self._send([lead], full, out)
        short = encode("viewchange", s.epoch, v=view, pv=pv, pd=pd, s=sig)
        self._send([m for m in self._mates() if m != lead], short, out)
        self._new_view_ready(now, s, view)

    def _on_view_change(
        self, sender: NodeId, d: dict[str, Any], now: float, out: list[Action]
    ) -> None:
        s = self._s
        assert s is not None
        who = self._mate(sender, "view change")
        view = _int(d, "v", 1, cells.MAX_VIEWS)
        pv = d.get("pv")
        if type(pv) is not int or not -1 <= pv < view:
            raise _Bad("pv: expected a view before the one asked for, or -1")
        pd = _str(d, "pd", 64)
        sig = _str(d, "s")
        if s.decided is not None:
            self._prove(s, sender, out)  # it missed the commits: here they are
            return
        if view < s.view:
            return
        got = s.view_changes.setdefault(view, {})
        if who in got or len(s.view_changes) > cells.MAX_VIEWS:
            return
        vc = _ViewChange(view, pv, pd, sig, d.get("cert") if pv >= 0 else None)
        if self._leader(s, view) == s.me:  # it leads that view: its proposal rests on this
            got[who] = _ViewChange(view, -1, "", "", None)  # one try (unchecked: not counted)
            if not self._verify(
                sender, self._body("viewchange", s.epoch, s.cell, view, pv, pd), sig
            ):
                raise _Bad(f"a view change to view {view} with a bad signature")
            if pv >= 0:
                self._check_cert(s, pv, pd, vc.cert)
            vc.checked = True
            self._pull(s, sender, d.get("held"), out)
        got[who] = vc
        s.highest_asked[who] = max(view, s.highest_asked.get(who, -1))
        if s.decided is None:
            later = sorted(v for m, v in s.highest_asked.items() if v > s.view and m != s.me)
            if len(later) >= self._f + 1:
                self._change_view(now, s, later[0], out)
        self._new_view_ready(now, s, view)

    def _prove(self, s: _Epoch, mate: NodeId, out: list[Action]) -> None:
        """Give a mate that still changes views what this node decided: the leader's signed
        proposal and a quorum of signed commits (once per mate)."""
        assert s.decided is not None
        view = s.decided.proposal.view
        commits = s.votes.get(("commit", view, s.decided.digest), {})
        if ("decided", mate) in s.answered or view not in s.raw or len(commits) < self._quorum:
            return
        s.answered.add(("decided", mate))
        prop = {k: v for k, v in s.raw[view].items() if k not in ("t", "e")}
        signed = [[m, g] for m, g in sorted(commits.items())]
        data = encode("decided", s.epoch, v=view, d=s.decided.digest, c=signed, prop=prop)
        self._send([mate], data, out)

    def _on_decided(self, sender: NodeId, d: dict[str, Any], now: float, out: list[Action]) -> None:
        """A mate's proof of what the cell decided (`_prove`): a quorum of commits, checked,
        then the proposal, taken as a relayed one."""
        s = self._s
        assert s is not None
        self._mate(sender, "decision")
        if s.decided is not None or ("proof", sender) in s.answered:
            return
        s.answered.add(("proof", sender))  # one try per mate
        view = _int(d, "v", 0, cells.MAX_VIEWS)
        digest = _str(d, "d", 64)
        commits = _pairs(_list(d, "c", s.roster), s.roster, "c", _SIG_CHARS)
        prop = d.get("prop")
        if len(commits) < self._quorum or type(prop) is not dict:
            raise _Bad(f"a decision with {len(commits)} commits, {self._quorum} needed")
        body = self._body("commit", s.epoch, s.cell, view, digest)
        for m, sig in commits:
            if not self._verify(self.roster[m], body, sig):
                raise _Bad(f"a decision with a bad commit of {self.roster[m]}")
        s.votes.setdefault(("commit", view, digest), {}).update(commits)
        held = s.proposals.get(view)
        if held is not None:
            self._tally(now, s, "commit", view, digest, out)
            return
        s.committed_unheld[view] = digest
        self._on_propose(sender, {**prop, "t": "propose", "e": s.epoch}, now, out)

    def _pull(self, s: _Epoch, sender: NodeId, listed: Any, out: list[Action]) -> None:
        """Ask a mate that changes view for the offers it lists that this node (leading the
        next view) lacks; a malformed list is ignored (the view change still counts)."""
        if type(listed) is not list or len(listed) > 4 * s.roster:
            return
        missing = [
            (item[0], item[1])
            for item in listed
            if type(item) is list
            and len(item) == 2
            and type(item[0]) is int
            and 0 <= item[0] < s.roster
            and type(item[1]) is str
            and len(item[1]) <= _DIGEST_CHARS
            and item[1] not in s.held.get(item[0], {})
            and len(s.held.get(item[0], {})) < 2
        ]
        self._want(s, sender, missing, out)

    def _new_view_ready(self, now: float, s: _Epoch, view: int) -> None:
        if self._leader(s, view) != s.me or view != s.view or view in s.proposed:
            return
        checked = sum(1 for v in s.view_changes.get(view, {}).values() if v.checked)
        if checked >= self._quorum and s.nv_at == math.inf:
            s.nv_at = now + self.timing.settle_s

    # --- sums between cells --------------------------------------------------------------------

    def _retry(self, now: float, s: _Epoch, out: list[Action]) -> None:
        """Go on with what the new offers allow: a vote waiting for them, the sums."""
        if s.decided is None:
            self._try_vote(now, s, s.view, out)
            return
        if s.blocks is not None:
            return
        p = s.decided.proposal
        if any(x not in s.held.get(i, {}) for i, x in p.included):
            return
        offers = [s.held[i][x].values for i, x in p.included]
        s.blocks = (
            np.array([x for v in offers for x in v[1::3]]),
            np.array([x for v in offers for x in v[2::3]]),
            np.array([x for v in offers for x in v[3::3]]),
            float(sum(v[0] for v in offers)),
        )
        s.refine = cells.Refinement(self.floor_eur_mwh, self.cap_eur_mwh)
        s.probe = s.refine.first()
        self._enter_phase(now, s, out)

    def _cell_value(self, s: _Epoch) -> np.ndarray | cells.Events:
        assert s.blocks is not None
        kw, lo, hi, base = s.blocks
        if isinstance(s.probe, cells.Grid):
            group = np.zeros(len(kw), dtype=np.int64)
            row = cells.summaries(group, np.array([base]), kw, lo, hi, s.probe.points)[0]
            return np.asarray(row, dtype=float)
        assert isinstance(s.probe, cells.Listing)
        return cells.events(kw, lo, hi, s.probe.a, s.probe.b)

    def _enter_phase(self, now: float, s: _Epoch, out: list[Action]) -> None:
        s.value = self._cell_value(s)
        s.round = 0
        self._enter_round(now, s, out)

    def _enter_round(self, now: float, s: _Epoch, out: list[Action]) -> None:
        while not s.done:
            assert s.value is not None and s.refine is not None and s.probe is not None
            if s.round == self._rounds:
                nxt = s.refine.next(s.probe, s.value)
                if isinstance(nxt, cells.Price):
                    self._finish(now, s, nxt, out)
                    return
                s.probe = nxt
                s.phase += 1
                if s.phase >= cells.MAX_PHASES:
                    self._fail(s, f"epoch {s.epoch}: no price after {s.phase} phases", out)
                    return
                self._enter_phase(now, s, out)
                return
            key = (s.phase, s.round)
            body = self.sum_body(s.epoch, s.phase, s.round, s.cell, _value_json(s.value))
            s.mine[key] = (self._sign(body), body, s.value)
            s.cosigns.setdefault(key, {})[s.me] = s.mine[key][0]
            talk = speakers(self.dir.seed, s.epoch, s.phase, s.round, s.cell, s.roster)
            cosign = encode("cosign", s.epoch, p=s.phase, r=s.round, s=s.mine[key][0], h=False)
            self._send([self.roster[i] for i in talk], cosign, out)
            if key in s.help:
                self._help(s, key, out)
            s.round_deadline = now + self.timing.round_s
            s.asked = s.ask_step = 0
            self._try_bundle(s, key, out)
            if not self._take_bundles(s, key, out):
                return
            # accepted: the next round (the loop)

    def _take_bundles(self, s: _Epoch, key: tuple[int, int], out: list[Action]) -> bool:
        """Try the partner's bundles held for the current round; True if one was accepted
        (the value now holds this round's sum and the round has moved on)."""
        waiting = s.bundles.pop(key, [])
        while waiting:
            sender, d = waiting.pop(0)
            try:
                if self._accept(s, sender, d, out):
                    return True
            except InvalidMessage as exc:
                out.append(Dropped(sender, f"bundle: {exc}"))
        return False

    def _partner_value(self, s: _Epoch, d: dict[str, Any]) -> np.ndarray | cells.Events:
        v = d.get("v")
        if isinstance(s.probe, cells.Grid):
            return _floats(v, "v", cells.vector_length(len(s.probe.points)))
        if type(v) is not list or len(v) != 4 or type(v[3]) is not bool:
            raise _Bad("v: expected [prices, jump_kw, dslope, complete]")
        prices = _floats(v[0], "v.prices", 2 * cells.LIST_MAX)
        jump, dslope = _floats(v[1], "v.jump", len(prices)), _floats(v[2], "v.dslope", len(prices))
        if len(jump) != len(prices) or len(dslope) != len(prices):
            raise _Bad("v: lists of different lengths")
        return cells.Events(prices, jump, dslope, v[3])

    def _accept(self, s: _Epoch, sender: NodeId, d: dict[str, Any], out: list[Action]) -> bool:
        partner = s.cell ^ (1 << s.round)
        roster = self.dir.rosters[partner]
        value = self._partner_value(s, d)
        body = self.sum_body(s.epoch, s.phase, s.round, partner, _value_json(value))
        signers = _pairs(_list(d, "s", len(roster)), len(roster), "s", _SIG_CHARS)
        bundle = cells.Bundle(partner, s.phase, s.round, body, tuple(signers))

        def check(i: int, digest: bytes, sig: str) -> bool:
            return self._verify(roster[i], digest, sig)

        got, _ = cells.accept([bundle], len(roster), check, s.checked)
        if got is None:
            raise _Bad(
                f"a bundle of cell {partner} for phase {s.phase} round {s.round} with a bad"
                " signature or too few signers"
            )
        assert s.value is not None
        low, high = (s.value, value) if s.cell < partner else (value, s.value)
        if isinstance(low, cells.Events):
            assert isinstance(high, cells.Events)
            s.value = cells.merge([low, high])
        else:
            assert isinstance(high, np.ndarray)
            s.value = low + high
        s.round += 1
        return True

    def _on_bundle(self, sender: NodeId, d: dict[str, Any], now: float, out: list[Action]) -> None:
        s = self._s
        assert s is not None
        phase = _int(d, "p", 0, cells.MAX_PHASES)
        rnd = _int(d, "r", 0, max(0, self._rounds - 1))
        if self._rounds == 0:
            raise _Bad("a bundle in a grid of one cell")
        partner = s.cell ^ (1 << rnd)
        place = self.dir.place(sender)
        if place is None or place[0] != partner or _int(d, "c", 0, self.dir.cells) != partner:
            raise _Bad(f"a bundle for round {rnd} not from cell {partner}")
        key = (phase, rnd)
        if s.done or key < (s.phase, s.round):
            return  # a late copy: this node has that round's sum
        if (phase, rnd, sender) in s.bundle_from:
            return
        s.bundle_from.add((phase, rnd, sender))
        s.bundles.setdefault(key, []).append((sender, d))
        current = s.value is not None and key == (s.phase, s.round)
        if current and self._take_bundles(s, key, out):
            self._enter_round(now, s, out)

    def _on_cosign(self, sender: NodeId, d: dict[str, Any], now: float, out: list[Action]) -> None:
        s = self._s
        assert s is not None
        who = self._mate(sender, "cosign")
        key = (_int(d, "p", 0, cells.MAX_PHASES), _int(d, "r", 0, max(0, self._rounds - 1)))
        sig = _str(d, "s")
        held = s.cosigns.setdefault(key, {})
        if who in held:
            return
        held[who] = sig
        if d.get("h") is True:
            self._help(s, key, out)
        self._try_bundle(s, key, out)

    def _help(self, s: _Epoch, key: tuple[int, int], out: list[Action]) -> None:
        """Send this node's signature of a round's value to every mate (the partner's members
        asked for a bundle); once the value is known."""
        s.help.add(key)
        if key in s.helped or key not in s.mine:
            return
        s.helped.add(key)
        cosign = encode("cosign", s.epoch, p=key[0], r=key[1], s=s.mine[key][0], h=True)
        self._send(self._mates(), cosign, out)

    def _on_ask(self, sender: NodeId, d: dict[str, Any], now: float, out: list[Action]) -> None:
        s = self._s
        assert s is not None
        key = (_int(d, "p", 0, cells.MAX_PHASES), _int(d, "r", 0, max(0, self._rounds - 1)))
        partner = s.cell ^ (1 << key[1])
        place = self.dir.place(sender)
        if self._rounds == 0 or place is None or place[0] != partner:
            raise _Bad(f"an ask for round {key[1]} not from cell {partner}")
        askers = s.askers.setdefault(key, set())
        if len(askers) >= len(self.dir.rosters[partner]):
            return
        askers.add(sender)
        self._help(s, key, out)
        self._try_bundle(s, key, out)

    def _try_bundle(self, s: _Epoch, key: tuple[int, int], out: list[Action]) -> None:
        """As a speaker of a round, or asked by the partner's members: with enough good
        signatures of this node's own value, give the bundle to whoever still waits for it."""
        if key not in s.mine:
            return
        phase, rnd = key
        talk = speakers(self.dir.seed, s.epoch, phase, rnd, s.cell, s.roster)
        partner = s.cell ^ (1 << rnd)
        targets: list[NodeId] = []
        if s.me in talk and (phase, rnd, "*") not in s.served:
            targets += self.dir.rosters[partner]
        targets += [a for a in sorted(s.askers.get(key, ())) if (phase, rnd, a) not in s.served]
        if not targets:
            return
        sig, body, value = s.mine[key]
        good = s.good.setdefault(key, {s.me: sig})
        need = cells.signatures_needed(s.roster)
        for m, other in sorted(s.cosigns.get(key, {}).items()):
            if len(good) >= need:
                break
            if m in good or (phase, rnd, m) in s.bad:
                continue
            if self._verify(self.roster[m], body, other):
                good[m] = other
            else:
                s.bad.add((phase, rnd, m))
                out.append(
                    Dropped(
                        self.roster[m],
                        f"a bad signature of its cell's sum, phase {phase} round {rnd}",
                    )
                )
        if len(good) < need:
            return
        signers = [[m, g] for m, g in sorted(good.items())[:need]]
        data = encode("bundle", s.epoch, p=phase, r=rnd, c=s.cell, v=_value_json(value), s=signers)
        if s.me in talk:
            s.served.add((phase, rnd, "*"))
        for t in targets:
            s.served.add((phase, rnd, t))
        self._send(dict.fromkeys(targets), data, out)

    def _ask(self, now: float, s: _Epoch, out: list[Action]) -> None:
        """No good bundle this round yet: ask members of the partner cell, one the first time,
        then twice as many each time after twice the wait, up to f + 1 at once. A partner
        that is only late (its agreement took a view change) costs a few asks, not f + 1 from
        every member each `round_s`; silent speakers and f silent members are passed within
        a few doublings (each ask reaches an honest member with odds of two in three or more)."""
        partner = s.cell ^ (1 << s.round)
        roster = self.dir.rosters[partner]
        count = min(1 << s.ask_step, cells.faults_tolerated(len(roster)) + 1)
        s.ask_step += 1
        s.round_deadline = now + self.timing.round_s * (1 << s.ask_step)
        if s.asked >= len(roster):
            return
        h = hashlib.sha256(f"{self.node}/{s.epoch}/{s.phase}/{s.round}".encode()).digest()
        start = int.from_bytes(h[:4], "big") + s.asked
        picked = [
            roster[(start + j) % len(roster)] for j in range(min(count, len(roster) - s.asked))
        ]
        s.asked += len(picked)
        self.fallbacks += len(picked)
        self._send(picked, encode("ask", s.epoch, p=s.phase, r=s.round), out)

    def _finish(self, now: float, s: _Epoch, price: cells.Price, out: list[Action]) -> None:
        s.done = True
        result = ExactResult(price.price_eur_mwh, price.status, price.step_share)
        heard = len(s.decided.proposal.included) - 1 if s.decided is not None else 0
        self.outcome = Cleared(s.epoch, result, self._bids, now - s.started, heard)
        out.append(self.outcome)
