"""Distant mode, balancing: a governance unit drives its market core over MQTT.

Three cores, by the governance setting `market`: 'pushsum' (below), 'offers'
(`redy.balancing.offers.OfferCore`: signed offers passed on in waves and cleared exactly on
every node) and 'cells' (`redy.balancing.cell_roster.CellMarket`: members' cards flooded over
the overlay, and the cell protocol of `redy.balancing.cell_node` with every cell-mate and the
partner cells' members on the `cells` topic); the driver runs them the same way, with the same
clock and statuses.

The push-sum epochs, phases and rounds are `redy.balancing.epochs.MarketCore` (sans-IO): this driver
only sleeps until the core's next deadline, feeds it what arrives (a neighbour's gossip on
`redy/<node>/grid/gossip`, a push a neighbour's broker refused) and carries out what it returns
(pushes, each its own task bounded by the links' timeout, so a slow neighbour never delays a
round; the dispatch of the units at the price found). Rounds are paced by message arrival and
the price is found to 0.01 EUR/MWh over -500..4,000 EUR/MWh by successive refinement
(`redy.balancing.discovery`), with merit-order dispatch on the final window.

Nodes share the clock as NTP-synchronised hosts do: each node estimates its offset from the
`ts_s` its neighbours put in their gossip (`ClockOffsets`) and runs the core on its neighbours'
time when the offset is within the tolerance, so a node up to that far off still clears with
them. Its status says honestly whether it took part: `skewed` beyond the tolerance, `isolated`
when no neighbour's gossip reached it in the epoch, otherwise what the market found (`cleared`,
or `shortage`/`surplus` with its share of the unserved or excess kW).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import re
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from redy import messages, signing
from redy.balancing import cell_node, cell_roster
from redy.balancing import offers as offer_market
from redy.balancing.aggregation import CAPACITY_KW, GossipOut, MassBounds, PushSum
from redy.balancing.cells import CELL_SIZE
from redy.balancing.curves import (
    Bid,
    Dispatchable,
    Fixed,
    FlexibleLoad,
    Storage,
    ramp_ends,
)
from redy.balancing.discovery import MarketResult, PhaseGossip, PriceSearch
from redy.balancing.epochs import (
    Action,
    ClockOffsets,
    Event,
    MarketCore,
    Pacing,
    Received,
    Refused,
    Send,
)
from redy.balancing.events import Cleared, Dropped, Result, Tick
from redy.errors import InvalidMessage, PeerUnreachable
from redy.logformat import Tally
from redy.pki import Identity
from redy.topics import render
from redy.transport.peer_links import PeerLinks
from redy.units.node_state import NodeState
from redy.units.tasks import TaskOwner

if TYPE_CHECKING:
    from redy.planning.binding import Binding

_log = logging.getLogger(__name__)
_MAX_TASKS = 1024  # sends and dispatches in flight at once; beyond, dropped and counted

# Prices (EUR/MWh) where storage that states no policy charges and discharges (batteries state
# theirs), and the value of a flexible load that states no willingness to pay (EVs and water
# heaters state theirs).
STORAGE_CHARGE_BELOW = 60.0
STORAGE_DISCHARGE_ABOVE = 110.0
LOAD_VALUE_DEFAULT = 150.0

# Pushes per phase: never fewer than the core's default (at 50 nodes fewer left some nodes
# 0.02 EUR/MWh off); a launch file's `rounds` may ask for more.
_MIN_ROUNDS = Pacing(epoch_s=1.0).rounds

# The offer market's messages go at QoS 0. Each offer reaches a node from most of its
# neighbours, so one lost message costs nothing, while a PUBACK per message doubled the packets
# of the epoch's burst: at 50 nodes on 2 cores, QoS 1 left 28-38 % of the 1 Hz balance samples
# beyond 1 % of load and QoS 0 0-21 % (two runs of bench/market_latency.py). A link that cannot
# be had still fails the send, and the offers go again in the next wave. Push-sum keeps QoS 1:
# a lost push would lose mass.
_OFFER_QOS = 0
# A round with no message ends after this long (s): a few peer round trips on an idle host.
ROUND_S = 0.005

_EVENTS_MAX = 10_000
_KIND = re.compile(r"[0-9][0-9.e+-]*")  # the numbers of a refusal's reason
_CoreEvent = Event | offer_market.Event | cell_roster.Event


def cell_timing(epoch_s: float) -> cell_node.Timing:
    """The cell protocol's deadlines as shares of the epoch: offers on time within its first
    10 %, the first proposal at 15 %, a view changed after 20 % more, a partner cell asked
    after 10 % (on a grid of 3 s epochs: 0.3, 0.45, 0.6 and 0.3 s, a few dozen MQTT hops)."""
    return cell_node.Timing(
        epoch_s=epoch_s,
        window_s=0.10 * epoch_s,
        propose_s=0.15 * epoch_s,
        view_s=0.20 * epoch_s,
        round_s=0.10 * epoch_s,
        settle_s=0.03 * epoch_s,
        finish_by=0.9,
        skew_s=min(0.5, 0.15 * epoch_s),
    )


def node_bids(state: NodeState, plan: Binding | None = None) -> dict[str, Bid]:
    """One bid per online unit: meters are fixed, actuators bid their reachable range. When the
    current interval's plan binds (`plan`), an actuator it plans is fixed at its setpoint: it
    stays there and the others clear around it (`redy.planning.binding`)."""
    bids: dict[str, Bid] = {}
    planned = plan.setpoints_kw if plan is not None else {}
    for name, u in state.units.items():
        if not u.online:
            continue
        if u.role == "action" and u.status is not None and name in planned:
            bids[name] = Fixed(planned[name])
        elif u.role == "action" and u.status is not None:
            s = u.status
            # A stated marginal cost is one number, or [at_min, at_max] rising over the range.
            cost, cost_max = (None, None)
            if s.marginal_cost_eur_mwh is not None:
                cost, cost_max = ramp_ends(s.marginal_cost_eur_mwh)
            if s.min_kw >= 0:
                bids[name] = Dispatchable(
                    s.min_kw, s.max_kw, cost if cost is not None else 0.0, cost_max_eur_mwh=cost_max
                )
            elif s.max_kw <= 0:
                value = cost if cost is not None else LOAD_VALUE_DEFAULT
                if s.max_kw < 0:
                    bids[f"{name}.base"] = Fixed(s.max_kw)
                bids[name] = FlexibleLoad(s.max_kw - s.min_kw, value, cost_max)
            elif cost is not None and cost_max is not None and s.charge_below_eur_mwh is None:
                # Storage that states a rising cost: charges fully under at_min, discharges
                # fully over at_max, and follows the ramp between.
                bids[name] = Dispatchable(s.min_kw, s.max_kw, cost, cost_max_eur_mwh=cost_max)
            else:
                charge_below = s.charge_below_eur_mwh
                discharge_above = s.discharge_above_eur_mwh
                bids[name] = Storage(
                    -s.min_kw,
                    s.max_kw,
                    STORAGE_CHARGE_BELOW if charge_below is None else charge_below,
                    STORAGE_DISCHARGE_ABOVE if discharge_above is None else discharge_above,
                )
        elif u.measurement is not None:
            bids[name] = Fixed(u.measurement.power_kw)
    return bids


def _commanded(name: str, bid: Bid, planned: Mapping[str, float]) -> bool:
    """Whether the market sets this bid's unit (meters and the fixed part of a load it cannot;
    a unit the plan binds it sets to its planned setpoint)."""
    if name in planned:
        return True
    return not name.endswith(".base") and isinstance(bid, Dispatchable | FlexibleLoad | Storage)


class EpochTally:
    """The epochs a node cleared in with others, and those that ended without it (sans-IO).
    Counted from the first whole epoch after `start`; an epoch still running is neither."""

    def __init__(self, epoch_s: float) -> None:
        self.epoch_s = epoch_s
        self.first: int | None = None
        self.cleared = 0
        self._last: int | None = None  # the last epoch counted cleared

    def start(self, now: float) -> None:
        self.first = math.floor(now / self.epoch_s) + 1

    def took_part(self, epoch: int) -> None:
        if self.first is None or epoch < self.first or epoch == self._last:
            return
        self.cleared += 1
        self._last = epoch

    def missed(self, now: float) -> int:
        if self.first is None:
            return 0
        current = math.floor(now / self.epoch_s)
        ended = current - self.first
        return max(0, ended - (self.cleared - (self._last == current)))


class MarketDriver:
    """One node's market: a thin asyncio driver of `MarketCore` (see the module docstring)."""

    def __init__(
        self,
        *,
        node: str,
        state: NodeState,
        links: PeerLinks,
        neighbours: Callable[[], list[messages.ViewEntry]],
        broker_of: Callable[[str], str | None] = lambda _node: None,
        command: Callable[[str, float], Awaitable[None]],
        epoch_s: float,
        rounds: int,
        rng: random.Random,
        clock: Callable[[], float] = time.time,
        tolerance_s: float = 1.0,
        search: PriceSearch | None = None,
        round_s: float = ROUND_S,
        on_cleared: Callable[[], None] = lambda: None,
        capacity_kw: float = CAPACITY_KW,
        market: str = "pushsum",
        identity: Identity | None = None,
        planned: Callable[[], Binding | None] = lambda: None,
        cell_size: int = CELL_SIZE,
        grid_uri: str | None = None,
    ) -> None:
        """`market`: 'pushsum' (curves averaged by gossip), 'offers' (signed offers flooded
        and cleared exactly, `redy.balancing.offers`) or 'cells' (in cells of about
        `cell_size`, `redy.balancing.cell_roster`; its card names `grid_uri`); the last two
        need the node's TLS `identity`.
        `planned()`: what the current interval's plan binds, asked at each epoch's bids
        (`redy.units.planner.PlanDriver.binding`); None: no plan binds."""
        self.node = node
        self.state = state
        self._links = links
        self._view = neighbours
        self._broker_of = broker_of  # a peer's broker outside the view (one that wrote to us)
        self._command = command
        self._clock = clock
        self._on_cleared = on_cleared
        self._planned = planned
        self.search = search or PriceSearch()
        self.pacing = Pacing(epoch_s, rounds=max(rounds, _MIN_ROUNDS), round_s=round_s)
        # id(bid) -> (unit name, whether the market commands it), for the epoch's bids
        self._names: dict[int, tuple[str, bool]] = {}
        self._new_names: dict[int, tuple[str, bool]] = {}
        self._brokers: dict[str, str] = {}
        # (epoch, sig, with its certificate) -> the offer's JSON
        self._offer_bytes: dict[tuple[int, str, bool], bytes] = {}
        self.bounds = MassBounds(capacity_kw, self.pacing.rounds)
        self.market = market
        self.core: MarketCore | offer_market.OfferCore | cell_roster.CellMarket
        self.verifier: signing.Verifier | None = None  # the offer market's
        if market == "cells":
            self.core = self._cell_market(identity, capacity_kw, cell_size, grid_uri, epoch_s)
        elif market == "offers":
            if identity is None:
                raise ValueError("market 'offers' needs the node's TLS identity")
            signer = signing.Signer(identity, session=int(clock() * 1000))
            if signer.node != node:
                raise ValueError(f"the TLS identity names {signer.node}, not {node}")
            if not signer.grant.limited:
                _log.warning(
                    "node=%s its certificate states no connection limits: peers hold its"
                    " offers to the grid-wide bound of %g kW (issue it with --import-kw and"
                    " --export-kw)",
                    node,
                    capacity_kw,
                )
            verifier = signing.Verifier(identity.ca, capacity_kw)
            self.verifier = verifier
            self.core = offer_market.OfferCore(
                node,
                offer_market.Timing(epoch_s),
                self._bids,
                self._neighbours,
                signer.sign,
                verifier.refusal,
                capacity_kw,
                self.search.floor_eur_mwh,
                self.search.cap_eur_mwh,
                bounds_kw=signer.grant.bounds_kw(capacity_kw),
                cert_of=verifier.cert_of,
            )
        else:
            self.core = MarketCore(
                PushSum(node, rng),
                self.pacing,
                self._bids,
                self._neighbours,
                self.search,
                self.bounds,
            )
        self.offsets = ClockOffsets(tolerance_s)
        self.status = "waiting"
        self.refused = Tally()  # gossip messages dropped, per sender and kind
        self._clipped_logged = 0.0
        self.result: Result | None = None
        self.result_epoch: int | None = None
        self.last: Cleared | None = None
        self._announced_epoch: int | None = None
        self._events: asyncio.Queue[_CoreEvent] = asyncio.Queue(maxsize=_EVENTS_MAX)
        # Pushes, offers and dispatches in flight, owned by run()'s TaskGroup.
        self.tasks = TaskOwner(f"{node}.market", limit=_MAX_TASKS)
        self._dispatching: asyncio.Task[None] | None = None  # the latest clearing's commands
        self.dropped: Counter[str] = Counter()  # gossip refused, events and tasks dropped
        self.epochs = EpochTally(epoch_s)
        self.offers = 0  # offers (push-sum: messages) the last clearing counted

    def _cell_market(
        self,
        identity: Identity | None,
        capacity_kw: float,
        cell_size: int,
        grid_uri: str | None,
        epoch_s: float,
    ) -> cell_roster.CellMarket:
        if identity is None or grid_uri is None:
            raise ValueError("market 'cells' needs the node's TLS identity and grid listener")
        signer = signing.Signer(identity, session=int(self._clock() * 1000))
        if signer.node != self.node:
            raise ValueError(f"the TLS identity names {signer.node}, not {self.node}")
        verifier = self.verifier = signing.Verifier(identity.ca, capacity_kw)
        uri = grid_uri
        return cell_roster.CellMarket(
            self.node,
            card=lambda now: signer.card(uri, now),
            card_refusal=verifier.card_refusal,
            key_of=signing.public_key_bytes,
            keys_for=lambda certs: signing.CellKeys(signer, verifier, certs),
            bids=self._bids,
            neighbours=self._neighbours,
            timing=cell_timing(epoch_s),
            cell_size=cell_size,
            ca_der=verifier.ca_der,
            capacity_kw=capacity_kw,
            bounds_kw=signer.grant.bounds_kw(capacity_kw),
            floor_eur_mwh=self.search.floor_eur_mwh,
            cap_eur_mwh=self.search.cap_eur_mwh,
        )

    # -- what the core asks --------------------------------------------------------------------

    def _bids(self) -> list[Bid]:
        plan = self._planned()
        bids = node_bids(self.state, plan)
        planned = plan.setpoints_kw if plan is not None else {}
        new = {id(b): (name, _commanded(name, b, planned)) for name, b in bids.items()}
        # The last epoch's names too: its Cleared may be carried out after the next one began.
        self._names, self._new_names = self._new_names | new, new
        return list(bids.values())

    def _neighbours(self) -> list[str]:
        self._brokers |= {e.node: e.broker for e in self._view()}
        if len(self._brokers) > 1024:  # bounded: keep the current view's
            self._brokers = {e.node: e.broker for e in self._view()}
        return [e.node for e in self._view()]

    def now(self) -> float:
        """The market's clock: this node's, moved onto its neighbours' within the tolerance."""
        return self._clock() - self.offsets.correction_s()

    # -- events in -----------------------------------------------------------------------------

    def on_cell(self, msg: messages.CellMessage) -> None:
        """A peer's cell message (cards, a protocol message or both): queued for the core."""
        if self.market != "cells":
            self._refuse(msg.sender, f"a cell message; this grid's market is {self.market}")
            return
        if msg.cards:
            self._queue(cell_roster.CardsIn(msg.sender, msg.cards, msg.held))
        if msg.body is not None:
            self._queue(cell_roster.BodyIn(msg.sender, msg.body.encode()))

    def on_gossip(self, msg: messages.Gossip) -> None:
        """A neighbour's gossip from our broker: checked, then queued for the core."""
        if self.market == "cells":
            self._refuse(msg.sender, f"{msg.algorithm}; this grid's market is cells", "gossip")
            return
        if self.market == "offers":
            if msg.algorithm != "offers":
                self._refuse(
                    msg.sender, f"expected offers (this grid's market), got {msg.algorithm}"
                )
                return
            if msg.ts_s is not None:
                self.offsets.sample(msg.sender, msg.ts_s, self._clock())
            self._queue(offer_market.Received(msg.sender, msg.epoch, msg.offers or ()))
            return
        k = self.search.k
        expected = k + 2 if msg.phase == 1 else k
        values = np.asarray(msg.values, dtype=float)
        if (
            msg.algorithm != "pushsum"
            or msg.phase is None
            or msg.floor_eur_mwh is None
            or msg.cap_eur_mwh is None
            or len(msg.values) != expected
        ):
            self._refuse(
                msg.sender,
                f"expected pushsum with a phase, its window and {k} values ({k + 2} in phase 1);"
                f" got {msg.algorithm} phase {msg.phase} with {len(msg.values)} values",
            )
            return
        if msg.ts_s is not None:
            self.offsets.sample(msg.sender, msg.ts_s, self._clock())
        out = GossipOut(
            target=self.node,
            sender=msg.sender,
            epoch=msg.epoch,
            round=msg.round,
            weight=msg.weight,
            values=values,
        )
        self._queue(Received(PhaseGossip(msg.phase, msg.floor_eur_mwh, msg.cap_eur_mwh, out)))

    def _refuse(self, sender: str, reason: str, what: str | None = None) -> None:
        """Drop a sender's gossip (`what`: by default this market's messages); logged at its
        1st, 2nd, 4th, 8th... drop (no log flood)."""
        self.dropped["gossip_refused"] += 1
        # Counted per sender and kind of refusal (the reason without its numbers): a sender's
        # refusals of one kind during the start (no roster yet) do not hide another (an offer
        # beyond its certified limits) until its 32nd drop.
        n = self.refused.add(f"{sender}/{_KIND.sub('#', reason)[:60]}")
        if n is not None:
            _log.warning(
                "node=%s dropped %s from %s: %s (%d of this kind from it so far)",
                self.node,
                what or ("a cell message" if self.market == "cells" else "gossip"),
                sender,
                reason,
                n,
            )

    def _queue(self, event: _CoreEvent) -> None:
        try:
            self._events.put_nowait(event)
        except asyncio.QueueFull:
            n = self.dropped["market_events_full"] = self.dropped["market_events_full"] + 1
            if n % 100 == 1:
                _log.warning("node=%s market events full; %d dropped", self.node, n)

    # -- actions out ---------------------------------------------------------------------------

    def _spawn(self, work: Coroutine[Any, Any, None], name: str = "send") -> None:
        if self.tasks.spawn(work, name) is None:
            n = self.dropped["market_tasks_full"] = self.dropped["market_tasks_full"] + 1
            if n % 100 == 1:
                _log.warning("node=%s market tasks full; %d dropped", self.node, n)

    def _act(
        self,
        actions: list[Action] | list[offer_market.Action] | list[cell_roster.MarketAction],
    ) -> None:
        for a in actions:
            if isinstance(a, Send):
                self._spawn(self._push(a.msg), "push")
            elif isinstance(a, offer_market.Send):
                self._spawn(self._send_offers(a), "offers")
            elif isinstance(a, cell_node.Send):
                self._spawn(self._send_cell(a.target, body=a.data.decode()), "cell")
            elif isinstance(a, cell_roster.SendCards):
                self._spawn(self._send_cell(a.target, cards=a.cards, held=a.held), "cards")
            elif isinstance(a, Dropped):
                self._refuse(str(a.sender), a.reason)
            elif isinstance(a, cell_node.Failed):
                self._failed(a)
            else:
                self._cleared(a)

    async def _send_cell(
        self,
        target: str,
        body: str | None = None,
        cards: tuple[messages.CellCard, ...] | None = None,
        held: int | None = None,
    ) -> None:
        msg = messages.CellMessage(sender=self.node, body=body, cards=cards, held=held)
        try:
            payload = messages.encode(msg)
        except InvalidMessage as exc:  # a message of the core past the contract's size
            _log.warning("node=%s could not send a cell message to %s: %s", self.node, target, exc)
            return
        await self._deliver(target, payload, lambda: None, topic="cells")

    def _failed(self, f: cell_node.Failed) -> None:
        """An epoch the cells could not clear: no price this node can stand behind."""
        self.status = "isolated"
        _log.info("node=%s epoch %d not cleared: %s", self.node, f.epoch, f.reason)

    async def _push(self, m: PhaseGossip) -> None:
        out = m.msg
        msg = messages.Gossip(
            sender=self.node,
            epoch=out.epoch,
            round=out.round,
            algorithm="pushsum",
            weight=out.weight,
            values=tuple(float(v) for v in out.values),
            ts_s=self._clock(),
            phase=m.phase,
            floor_eur_mwh=m.floor_eur_mwh,
            cap_eur_mwh=m.cap_eur_mwh,
        )
        await self._deliver(out.target, msg, lambda: self._queue(Refused(m)))  # mass back

    def _offer_json(self, offer: messages.NodeOffer) -> bytes:
        """An offer's JSON, encoded (and checked) once for all the messages that carry it."""
        key = (offer.epoch, offer.sig, offer.cert is not None)
        out = self._offer_bytes.get(key)
        if out is None:
            if len(self._offer_bytes) >= 4 * offer_market.MAX_NODES:
                self._offer_bytes.clear()
            out = self._offer_bytes[key] = messages.encode(offer)
        return out

    async def _send_offers(self, a: offer_market.Send) -> None:
        if self._offer_bytes and next(iter(self._offer_bytes))[0] != a.epoch:
            self._offer_bytes.clear()  # an epoch's offers go out in that epoch only
        msg = messages.Gossip(
            sender=self.node,
            epoch=a.epoch,
            round=0,
            algorithm="offers",
            weight=0.0,
            values=(),
            ts_s=self._clock(),
        )
        payload = messages.encode_with(msg, "offers", [self._offer_json(o) for o in a.offers])
        await self._deliver(
            a.target,
            payload,
            lambda: self._queue(offer_market.Refused(a.target, a.epoch, a.offers)),
            qos=_OFFER_QOS,
        )

    async def _deliver(
        self,
        target: str,
        msg: messages.Gossip | bytes,
        failed: Callable[[], None],
        qos: int = 1,
        topic: str = "gossip",
    ) -> None:
        """Publish `msg` (or its encoding) on `target`'s `topic` on its broker (its card's in
        the cell market, else its view entry's); `failed()` if that fails (at QoS 0: if the
        link cannot be had or the packet cannot be written)."""
        broker = None
        if isinstance(self.core, cell_roster.CellMarket):
            broker = self.core.broker_of(target)
        broker = broker or self._brokers.get(target) or self._broker_of(target)
        try:
            if broker is None:
                raise PeerUnreachable(
                    str(target), "broker unknown (neither in the view nor a contact)"
                )
            await self._links.publish(
                broker,
                render(topic, node=target, peer=self.node),
                msg if isinstance(msg, bytes) else messages.encode(msg),
                node=target,
                qos=qos,
            )
        except PeerUnreachable as exc:
            _log.debug("node=%s gossip to %s failed: %s", self.node, target, exc.reason)
            failed()

    def _cleared(self, c: Cleared) -> None:
        clipped = self.core.discovery.clipped_kw if isinstance(self.core, MarketCore) else 0.0
        if clipped > self._clipped_logged:
            self._clipped_logged = clipped
            _log.warning(
                "node=%s its units could inject or draw %.6g kW, beyond the grid's capacity"
                " bound of %.6g kW: it bids that much only (raise the bound for this grid)",
                self.node,
                clipped,
                self.bounds.capacity_kw,
            )
        self.last = c
        self.result = c.result
        self.result_epoch = c.epoch
        self.status = self._honest_status(c)
        self.offers = c.heard
        if self.status in ("cleared", "shortage", "surplus"):
            self.epochs.took_part(c.epoch)
        orders = [
            (self._names[id(b)][0], c.result.dispatch_kw(b))
            for b in c.bids
            if id(b) in self._names and self._names[id(b)][1]
        ]
        self._dispatch_latest(orders)
        if c.epoch != self._announced_epoch:
            # The local state goes out at once for an epoch's first price only: the offer
            # market may refine it as late offers come, and those wait for the state's period.
            self._announced_epoch = c.epoch
            self._on_cleared()
        if isinstance(self.core, offer_market.OfferCore):
            messages_sent, offers_sent = self.core.sent
            how = f"{c.heard} peers' offers, sent {offers_sent} offers in {messages_sent} messages"
        elif isinstance(self.core, cell_roster.CellMarket):
            cell, d = self.core.cell, self.core.directory
            where = f"cell {cell.cell} of {d.cells}" if cell is not None and d is not None else ""
            how = f"{c.heard} members' offers counted, {where}"
        else:
            assert isinstance(c.result, MarketResult)
            how = f"{c.result.phases} phases, {c.heard} messages heard"
        _log.info(
            "node=%s epoch %d price %.3f EUR/MWh (%s) after %.3f s, %s, clock offset %+.3f s",
            self.node,
            c.epoch,
            c.result.price_eur_mwh,
            self.status,
            c.elapsed_s,
            how,
            self.offsets.offset_s() or 0.0,
        )

    def _dispatch_latest(self, orders: list[tuple[str, float]]) -> None:
        """Dispatch `orders` in place of any dispatch still in flight: commands are numbered
        when sent and a unit keeps the highest number, so an older dispatch that went on would
        outrank this one with its stale setpoints. Cancelled, it sends nothing more; what it
        sent before has lower numbers than all of this one's."""
        if self._dispatching is not None and not self._dispatching.done():
            self._dispatching.cancel()
        self._dispatching = self.tasks.spawn(self._dispatch(orders), "dispatch")

    async def _dispatch(self, orders: list[tuple[str, float]]) -> None:
        for name, kw in orders:
            await self._command(name, kw)

    def _honest_status(self, c: Cleared) -> str:
        """`cleared` (or shortage/surplus) only when the node really took part with others."""
        if self.offsets.skewed():
            _log.warning(
                "node=%s clock is %+.2f s off its neighbours' (tolerated: %.2f s)",
                self.node,
                self.offsets.offset_s(),
                self.offsets.tolerance_s,
            )
            return "skewed"
        if c.heard == 0:
            return "isolated"  # it averaged nothing but its own curve
        return c.result.status

    # -- the loop ------------------------------------------------------------------------------

    async def run(self) -> None:
        """Epoch after epoch until cancelled; pending pushes and commands are cancelled with the
        TaskGroup that owns them."""
        self.epochs.start(self.now())
        async with asyncio.TaskGroup() as group:
            self.tasks.bind(group)
            while True:
                event: _CoreEvent = Tick()
                wait = self.core.next_deadline() - self.now()
                if wait > 0:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(wait):
                            event = await self._events.get()
                elif not self._events.empty():
                    event = self._events.get_nowait()
                else:
                    await asyncio.sleep(0)  # a deadline behind: the other tasks still run
                try:
                    actions = self.core.handle(self.now(), event)  # type: ignore[arg-type]
                except Exception:  # a bug met by some input: logged, never the node's end
                    self.dropped["market_failed"] += 1
                    if self.dropped["market_failed"] in (1, 10, 100, 1000):
                        _log.exception(
                            "node=%s market core failed on %s", self.node, str(event)[:200]
                        )
                    await asyncio.sleep(0.1)  # not a busy loop if it fails on every deadline
                    continue
                self._act(actions)

    def state_fields(self) -> dict[str, Any]:
        """Price, epoch, status, clock offset and unserved/excess kW for NodeEnergyState."""
        offset = self.offsets.offset_s()
        fields: dict[str, Any] = {"status": self.status}
        if offset is not None:
            fields["clock_offset_s"] = round(offset, 3)
        r = self.result
        if r is not None:
            fields |= {"price_eur_mwh": r.price_eur_mwh, "epoch": self.result_epoch}
            if r.status == "shortage":
                fields["unserved_kw"] = round(r.unserved_kw, 3)
            elif r.status == "surplus":
                fields["excess_kw"] = round(r.excess_kw, 3)
        return fields
