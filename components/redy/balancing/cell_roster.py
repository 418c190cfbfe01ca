"""The cell market in a governance unit, sans-IO: members' cards, the rosters, and the node's
`CellNode` (redy.balancing.cell_node) for the rosters of the moment.

**Rosters from cards.** Nothing central lists the members. Each member signs a card
(`messages.CellCard`: its node id, its grid listener and its certificate; redy.signing's
`Signer.card`) when its governance starts and every `CARD_REFRESH_S`, and sends it to its
overlay neighbours; a node that takes a card new to it (valid: a member certificate of the grid
CA naming the card's node, signed by that certificate's key, signed at most `CARD_AHEAD_S` ahead
and less than `CARD_TTL_S` ago) passes it on to its own neighbours, so a card floods the overlay
once. A member's card is news only `CARD_GAP_S` after the one held, and one that changes nothing
(same broker and certificate) only after half the refresh period: a member cannot make the grid
flood its cards faster. A neighbour that sends this node its own valid card with a count of
cards lower than this node holds gets back every card held (at most once per `_STORE_EVERY_S`),
and every `_STORE_EVERY_S` a node sends its card and count to one neighbour in turn: a node that
joins, restarts or missed a flood holds the grid's cards within a shuffle or two, and nodes that
hold as many exchange nothing more. A card counts until `CARD_TTL_S` after it was signed: a
member that stopped drops out of the rosters then, at the same time on every node (the card's
own time).

**Cells.** Shortly before each epoch (`PLACE_AT` of the one before) the node places the epoch's
members (`place`): those whose card it holds, current at the epoch's start, and whose first card
(with this certificate) was signed at least `SETTLE_S` before it, time enough for its flood to
reach every node; the card's own signed time decides, so every node that holds it lets the
member in at the same epoch (a restarted member's cards are no new member). The node counts
itself at once (before it settles, its messages are refused by the others, who are not
disturbed). The seed for that epoch is the grid's seed for the day (a hash of the grid CA's
certificate and the day), the cells the power of two nearest members / `cell_size`, each member
in the cell of a hash of the seed and its certificate's key (`cells.cell_of`). A placement that
leaves a cell with fewer than `MIN_ROSTER` members is drawn again from the seed (up to `_DRAWS`
times, then with half the cells; a grid of fewer than twice `MIN_ROSTER` members is one cell):
in a cell of one, no one but its member would check its offer and sign its sum; in a cell of
three, one silent member stops the grid's epoch; a cell of four outlasts one hostile member.
Every node that holds the same cards computes the same rosters. The seed is predictable (the CA
and the day): a coalition whose keys the CA certifies could grind them for a day to come and
meet in one cell that day; a seed the grid draws itself (a hash of the sums the cells co-signed
the day before) would close that (not built). When the rosters change, the node starts a new
`CellNode` in time for that epoch: a member that joins, or whose card expires, costs no epoch.

**What it costs, and what it trusts.** Every node holds every member's card (about 1 KiB): O(N)
per card period, meant for grids of up to a few thousand nodes; at country scale a lookup of the
few rosters a node needs (its own cell and its partners') replaces the flood (not built). Two
nodes that hold different cards (a card still on its way after `SETTLE_S`, or dated back by its
member and shown late) place the members differently: their messages name rosters the other does
not hold and are refused, and the cells they touch fail that epoch (`Failed`, never a price they
cannot stand behind) until the cards have spread. A member can neither choose its cell (its key
is certified) nor send a card for another member (the card is signed); a member that shows its
card to some nodes only is in the rosters of some: the epochs of its cells fail until its card
has flooded from any honest node that holds it.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterable, Mapping

import attrs

from redy.balancing import cells
from redy.balancing.cell_node import Action, CellNode, Directory, Keys, Timing
from redy.balancing.curves import Bid
from redy.balancing.events import Cleared, Dropped, Tick
from redy.errors import RedyError
from redy.messages import CellCard

NodeId = str
CARD_TTL_S = 3600.0  # a card counts this long after it was signed
CARD_REFRESH_S = 600.0  # a member signs a new card this often (well within the TTL)
CARD_AHEAD_S = 60.0  # a card signed further ahead of this node's clock is refused
CARD_GAP_S = 30.0  # a member's next card is news this long after the one held, at the soonest
SEED_PERIOD_S = 86400.0  # the placement's seed changes once a day
SETTLE_S = 10.0  # a new member counts this long after its first card (the flood's time)
PLACE_AT = 0.95  # share of an epoch at which the next epoch's cells are placed
MAX_MEMBERS = 4096  # cards held; beyond, new members' cards are refused (the flood's scale)
CARDS_PER_MESSAGE = 64  # messages.CellMessage.cards' max_len
_CARD_CHECK_S = 1.0  # how often new neighbours are sent this node's card
MIN_ROSTER = 4  # members a cell must hold, unless it is the only one
_DRAWS = 64  # placements drawn before the cells are halved
_STORE_EVERY_S = 10.0  # a neighbour is sent every card held at most this often, and asked


@attrs.frozen
class CardsIn:
    """Cards a peer sent (its own or others' it passes on); `held`: with its own card, how
    many cards it holds."""

    sender: NodeId
    cards: tuple[CellCard, ...]
    held: int | None = None


@attrs.frozen
class BodyIn:
    """A message of the cell protocol from a peer (the JSON text, as bytes)."""

    sender: NodeId
    data: bytes


@attrs.frozen
class SendCards:
    target: NodeId
    cards: tuple[CellCard, ...]
    held: int | None = None  # with this node's own card: how many cards it holds


Event = Tick | CardsIn | BodyIn
MarketAction = Action | SendCards


def grid_seed(ca_der: bytes, now: float) -> bytes:
    """The placement's seed for the day of `now`: the same on every node of the grid."""
    day = math.floor(now / SEED_PERIOD_S)
    return hashlib.sha256(b"redy-cells/" + ca_der + f"/{day}".encode()).digest()


def place(seed: bytes, keys: Mapping[NodeId, bytes], cell_size: int) -> Directory:
    """The cells of the members whose certificates hold `keys` (node -> public key bytes):
    `cells.cell_count` of them (at most N / `MIN_ROSTER`), each member in `cells.cell_of`; a
    placement with a cell under `MIN_ROSTER` members is drawn again (`_DRAWS` times, then with
    half the cells). Deterministic in its inputs."""
    if not keys:
        raise RedyError("cells: no member to place")
    most = 1 << max(0, (len(keys) // MIN_ROSTER).bit_length() - 1)  # a power of two
    k = min(cells.cell_count(len(keys), cell_size), most)
    while True:
        for draw in range(_DRAWS if k > 1 else 1):
            s = seed if draw == 0 else hashlib.sha256(seed + f"/draw/{draw}".encode()).digest()
            rosters: dict[int, list[NodeId]] = {c: [] for c in range(k)}
            for node, key in keys.items():
                rosters[cells.cell_of(s, key, k)].append(node)
            if k == 1 or all(len(r) >= MIN_ROSTER for r in rosters.values()):
                return Directory(s, k, {c: tuple(sorted(r)) for c, r in rosters.items()})
        k //= 2


class Roster:
    """The valid cards this node holds, by member (module docstring)."""

    def __init__(
        self,
        refusal: Callable[[CellCard], str | None],
        key_of: Callable[[str], bytes],
        max_members: int = MAX_MEMBERS,
    ) -> None:
        self._refusal, self._key_of = refusal, key_of
        self.max_members = max_members
        self.cards: dict[NodeId, CellCard] = {}
        self.since: dict[NodeId, float] = {}  # member -> its first card's time (this cert)
        self._keys: dict[str, bytes] = {}  # cert -> its public key

    def take(self, card: CellCard, now: float) -> bool | str:
        """True if `card` is new and valid (held now), False if it is no news (held, older,
        expired), or why it is refused."""
        held = self.cards.get(card.node)
        if held is not None:
            same = held.broker == card.broker and held.cert == card.cert
            if card.ts_s < held.ts_s + (CARD_REFRESH_S / 2 if same else CARD_GAP_S):
                return False  # older, or too soon after the one held
        if card.ts_s > now + CARD_AHEAD_S:
            return f"card of {card.node} signed {card.ts_s - now:.0f} s ahead of this clock"
        if card.ts_s + CARD_TTL_S <= now:
            return False
        if held is None and len(self.cards) >= self.max_members:
            return f"card of {card.node}: {self.max_members} members held already"
        why = self._refusal(card)
        if why is not None:
            return why
        if card.cert not in self._keys:
            try:
                self._keys[card.cert] = self._key_of(card.cert)
            except RedyError as exc:
                return f"card of {card.node}: {exc}"
        if held is None or held.cert != card.cert:
            self.since[card.node] = card.ts_s
        self.cards[card.node] = card
        return True

    def valid(self, card: CellCard, now: float) -> bool:
        """Whether `card` is its member's own and current (a signature check)."""
        if not now - CARD_TTL_S < card.ts_s <= now + CARD_AHEAD_S:
            return False
        return self._refusal(card) is None

    def expire(self, now: float) -> None:
        for node in [n for n, c in self.cards.items() if c.ts_s + CARD_TTL_S <= now]:
            del self.cards[node]
            del self.since[node]
        live = {c.cert for c in self.cards.values()}
        self._keys = {cert: k for cert, k in self._keys.items() if cert in live}

    def members(self, at: float, settle_s: float, me: NodeId) -> dict[NodeId, str]:
        """The members at time `at` (node -> certificate): those whose card is current then
        and whose first card with this certificate was signed at least `settle_s` before (its
        flood has reached every node), and this node `me` itself."""
        return {
            n: c.cert
            for n, c in self.cards.items()
            if c.ts_s + CARD_TTL_S > at and (self.since[n] + settle_s <= at or n == me)
        }

    def key(self, cert: str) -> bytes:
        return self._keys[cert]

    def broker(self, node: NodeId) -> str | None:
        card = self.cards.get(node)
        return card.broker if card is not None else None


class CellMarket:
    """One node's cell market (module docstring): `handle(now, event)` returns what to send
    (`Send`: a protocol message to a member; `SendCards`), `Dropped` (one line naming the
    sender), and once an epoch `Cleared` or `Failed`. `card(now)` signs this node's card;
    `keys_for(certs)` gives the `cell_node.Keys` that check signatures with the certificates
    of the rosters; `neighbours()` the overlay's."""

    def __init__(
        self,
        node: NodeId,
        *,
        card: Callable[[float], CellCard],
        card_refusal: Callable[[CellCard], str | None],
        key_of: Callable[[str], bytes],
        keys_for: Callable[[dict[NodeId, str]], Keys],
        bids: Callable[[], Iterable[Bid]],
        neighbours: Callable[[], list[NodeId]],
        timing: Timing,
        cell_size: int,
        ca_der: bytes,
        capacity_kw: float = math.inf,
        bounds_kw: tuple[float, float] | None = None,
        floor_eur_mwh: float = -500.0,
        cap_eur_mwh: float = 4000.0,
        settle_s: float = SETTLE_S,
    ) -> None:
        self.node = node
        self.settle_s = settle_s
        self._card, self._keys_for, self._bids = card, keys_for, bids
        self._neighbours = neighbours
        self.timing, self.cell_size, self._ca_der = timing, cell_size, ca_der
        self.capacity_kw, self.bounds_kw = capacity_kw, bounds_kw
        self.floor_eur_mwh, self.cap_eur_mwh = floor_eur_mwh, cap_eur_mwh
        self.roster = Roster(card_refusal, key_of)
        self.cell: CellNode | None = None
        self.directory: Directory | None = None
        self._placed: tuple[bytes, tuple[tuple[NodeId, str], ...]] | None = None
        self._own: CellCard | None = None
        self._card_to: set[NodeId] = set()  # neighbours sent the current own card
        # peer -> when it was last sent every card, and the time of the card it sent then
        self._store_to: dict[NodeId, tuple[float, float]] = {}
        self._ask_at = -math.inf  # when this node next sends its card to one neighbour
        self._asked = 0
        self._card_check = -math.inf
        self._placed_for: int | None = None  # the epoch whose members were placed last
        self.rebuilds = 0  # rosters changed (a new CellNode)

    # -- what the driver asks -------------------------------------------------------------------

    def next_deadline(self) -> float:
        out = self._card_check + _CARD_CHECK_S
        if self._placed_for is not None:
            out = min(out, (self._placed_for + PLACE_AT) * self.timing.epoch_s)
        if self.cell is not None:
            out = min(out, self.cell.next_deadline())
        return out

    def broker_of(self, node: NodeId) -> str | None:
        return self.roster.broker(node)

    def handle(self, now: float, event: Event) -> list[MarketAction]:
        out: list[MarketAction] = []
        self._cards_out(now, out)
        # The next epoch's cells, placed shortly before it starts (a CellNode made then starts
        # that epoch on time); at the first call, the current epoch's (its CellNode waits for
        # the next one).
        epoch = math.floor(now / self.timing.epoch_s + 1e-9)
        # The same expression as next_deadline's: at that deadline this is True, to the bit.
        upcoming = epoch + 1 if now >= (epoch + PLACE_AT) * self.timing.epoch_s else epoch
        if upcoming != self._placed_for:
            self._placed_for = upcoming
            self.roster.expire(now)
            self._rebuild(upcoming * self.timing.epoch_s)
        if isinstance(event, CardsIn):
            self._on_cards(now, event, out)
        elif isinstance(event, BodyIn):
            if self.cell is None:
                out.append(Dropped(event.sender, "a cell message before this node has rosters"))
            else:
                out += self._from_cell(self.cell.receive(event.sender, event.data, now))
        if self.cell is not None:
            out += self._from_cell(self.cell.tick(now))
        return out

    # -- cards ----------------------------------------------------------------------------------

    def _cards_out(self, now: float, out: list[MarketAction]) -> None:
        """A new card when due; the current one to any neighbour that has not had it."""
        if now - self._card_check < _CARD_CHECK_S:
            return
        self._card_check = now
        if self._own is None or now - self._own.ts_s >= CARD_REFRESH_S:
            self._own = self._card(now)
            self._card_to = set()
            why = self.roster.take(self._own, now)
            if isinstance(why, str):  # its certificate makes no member: it cannot take part
                out.append(Dropped(self.node, f"this node's own card: {why}"))
        for n in self._neighbours():
            if n not in self._card_to and n != self.node:
                self._card_to.add(n)
                out.append(SendCards(n, (self._own,), len(self.roster.cards)))
        if len(self._card_to) > MAX_MEMBERS:
            self._card_to = set(self._neighbours())
        # Anti-entropy: every _STORE_EVERY_S, the card and count to one neighbour in turn;
        # one that holds more cards answers with all of them.
        others = [n for n in self._neighbours() if n != self.node]
        if others and now >= self._ask_at:
            self._ask_at = now + _STORE_EVERY_S
            self._asked += 1
            target = others[self._asked % len(others)]
            out.append(SendCards(target, (self._own,), len(self.roster.cards)))

    def _on_cards(self, now: float, event: CardsIn, out: list[MarketAction]) -> None:
        new: list[CellCard] = []
        own: CellCard | None = None  # the sender's own card, valid
        for card in event.cards:
            got = self.roster.take(card, now)
            if isinstance(got, str):
                out.append(Dropped(event.sender, got))
            elif got:
                new.append(card)
            if card.node == event.sender and not isinstance(got, str):
                own = card
        if new:  # passed on once: every node floods a card the first time it takes it
            for n in self._neighbours():
                passed = tuple(c for c in new if c.node != n)
                if n != event.sender and n != self.node and passed:
                    out.append(SendCards(n, passed))
        # A neighbour that sends its own card holding fewer cards than this node (it started,
        # restarted, or missed some) gets every card held, at most once per _STORE_EVERY_S of
        # this node's time or of its cards' (a restarted node signs a new one), and only for a
        # card that checks (no news is not checked by `take`).
        last = self._store_to.get(event.sender)
        if (
            own is None
            or (event.held is not None and event.held >= len(self.roster.cards))
            or (
                last is not None
                and now < last[0] + _STORE_EVERY_S
                and own.ts_s < last[1] + _STORE_EVERY_S
            )
            or (own not in new and not self.roster.valid(own, now))
        ):
            return
        self._store_to[event.sender] = (now, own.ts_s)
        if len(self._store_to) > MAX_MEMBERS:
            self._store_to = {event.sender: (now, own.ts_s)}
        held = [c for n, c in sorted(self.roster.cards.items()) if n != event.sender]
        for i in range(0, len(held), CARDS_PER_MESSAGE):
            out.append(SendCards(event.sender, tuple(held[i : i + CARDS_PER_MESSAGE])))

    # -- cells ----------------------------------------------------------------------------------

    def _rebuild(self, at: float) -> None:
        """Place the members of time `at` (an epoch's start) anew if they or the seed changed
        (module docstring)."""
        seed = grid_seed(self._ca_der, at)
        certs = self.roster.members(at, self.settle_s, self.node)
        members = tuple(sorted(certs.items()))
        if self._placed == (seed, members) or self.node not in certs:
            return
        self._placed = (seed, members)
        keys = {n: self.roster.key(c) for n, c in members}
        self.directory = place(seed, keys, self.cell_size)
        self.cell = CellNode(
            self.node,
            self._keys_for(dict(members)),
            self.directory,
            self._bids,
            self.timing,
            capacity_kw=self.capacity_kw,
            bounds_kw=self.bounds_kw,
            floor_eur_mwh=self.floor_eur_mwh,
            cap_eur_mwh=self.cap_eur_mwh,
        )
        self.rebuilds += 1

    def _from_cell(self, actions: list[Action]) -> list[MarketAction]:
        """The CellNode's actions, a Cleared counting the members whose offers its price
        rests on (its cell's counted offers, and the other cells' members whose sums it
        added)."""
        out: list[MarketAction] = []
        d = self.directory
        for a in actions:
            if isinstance(a, Cleared) and d is not None and self.cell is not None:
                others = sum(len(r) for c, r in d.rosters.items() if c != self.cell.cell)
                a = attrs.evolve(a, heard=a.heard + others)
            out.append(a)
        return out
