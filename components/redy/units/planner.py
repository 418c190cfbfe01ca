"""Distant mode, plans: a governance unit states its node's horizon offer every planning interval,
passes the nodes' signed offers on over the overlay and solves the community's plan.

The governance setting `plan_intervals` (> 0) turns it on. Intervals are numbered from the UNIX
epoch: interval k lasts `plan_interval_s` real seconds (`plan_interval_min` simulated minutes
over the launch's speed) from k x plan_interval_s, so every node of a grid, however it was
launched, numbers them alike (as the market numbers its epochs). At each interval's start the
driver

1. builds the node's offer over `plan_intervals` intervals from what its units report
   (`horizon_offer`, below), held to the limits of the node's own certificate;
2. signs it with the node key (`redy.planning.wire`, `redy.signing.Signer.sign_bytes`) and hands
   it to the flood core (`redy.planning.flood.PlanFlood`): every `wave_s` the offers a neighbour
   lacks go to its broker on `redy/<peer>/grid/plan/<node>`, each its own task bounded by the
   links' timeout; what arrives is checked once (signature of a grid-CA node certificate naming
   the offer's node, the limits it states, the grid's horizon) and a refusal is logged in one
   line naming the neighbour that sent it;
3. solves the community's LP (`redy.planning.problem.solve`, in a worker thread so the market's
   1 Hz loop is not held up) from the admitted offers in canonical order, with the supplier's
   boundary every node computes alike (`redy.planning.supplier`), once the offers have been
   quiet for `settle_s`, and again whenever another offer is admitted in the interval; and
4. publishes the plan, retained, on its own broker (`redy/<node>/governance/plan`): the prices
   per interval, the community's flows, its own plan, and a digest of the whole schedule that
   is the same on every node that solved the same offers.

Forecasts (`horizon_offer`): a meter that reports a forecast (the device models report six
hourly values ahead: `devices.loads`, `devices.renewables`) is read between its power now and
those points, linearly, and held at its last point beyond; a meter with none (a real device's
driver) is expected to go on at its mean over the last interval (`MeterHistory`), or its power
now before it has one. An actuator's status is carried over the horizon as it stands: a producer is blocks up to
its rated power at its marginal cost (two blocks for a rising cost), a flexible load its full
draw with a block of the part it may shed at its willingness to pay, a store (a unit with a
capacity) a `Storage` of its rated power whose energy now is the state of charge its status
states (else its meter's, else half its capacity), a load that states energy due by a deadline
(an EV) a `Deferrable` over the intervals up to its deadline. After each interval the node reports how far
its meters' mean power was from what they forecast at its start (`ForecastError`, in the plan
it publishes and in its log). Past MAX_BLOCKS blocks, the two of nearest cost
are merged (an offer must fit one message).

The current interval's plan binds (`binding()`, the pure rule in `redy.planning.binding`): the
setpoints this node's own solve gives its stores and deferrable loads for the interval it is in
are what the market dispatches them to (`redy.units.market`: they enter its offer as fixed
injection), and the market clears the rest of the node's flexibility around them; with no
plan for the interval (plans off, not yet solved, stale, the node not in it) the market
dispatches everything as without plans. A governance with no market commands the planned
units itself at every state period. Each binding is logged once per interval and solve.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import numpy as np
import orjson

from redy import messages, signing
from redy.balancing.curves import ramp_ends
from redy.errors import InvalidMessage, PeerUnreachable, RedyError
from redy.logformat import Tally
from redy.pki import Identity
from redy.planning import supplier
from redy.planning.binding import Binding, OwnUnits, binding
from redy.planning.flood import Drop, PlanFlood, Send, checker
from redy.planning.offer import Block, Deferrable, HorizonOffer, Storage, limits_refusal
from redy.planning.problem import PlanError, Schedule, new_highs, solve
from redy.planning.wire import from_message, signed_body, to_message
from redy.topics import render
from redy.transport.peer_links import PeerLinks
from redy.units.market import LOAD_VALUE_DEFAULT
from redy.units.node_state import NodeState
from redy.units.tasks import TaskOwner

_log = logging.getLogger(__name__)
_MAX_TASKS = 256  # sends and solves in flight at once; beyond, dropped and counted

# A store's round trip (sqrt each way), its wear and what its energy is worth at the horizon's
# end, for a unit that states none (the home battery of `redy sim plan`).
STORE_EFFICIENCY = 0.95
STORE_WEAR_EUR_MWH = 10.0
STORE_VALUE_EUR_KWH = 0.08
# Blocks an offer states at most: each is two numbers per interval, and an offer of 192
# intervals must fit one message (64 KiB) with its certificate.
MAX_BLOCKS = 4


def _merged(blocks: list[tuple[float, float]], most: int) -> list[tuple[float, float]]:
    """`blocks` (kW, EUR/MWh; by cost) with the two of nearest cost merged into one at their
    kW-weighted cost, until `most` are left."""
    out = list(blocks)
    while len(out) > most:
        i = min(range(len(out) - 1), key=lambda j: out[j + 1][1] - out[j][1])
        (k1, c1), (k2, c2) = out[i], out[i + 1]
        kw = k1 + k2
        out[i : i + 2] = [(kw, (k1 * c1 + k2 * c2) / kw if kw > 0 else c1)]
    return out


def _deferrable(
    energy_kwh: float, due_in_s: float, power_kw: float, horizon: int, interval_min: float
) -> Deferrable | None:
    """A load that must draw `energy_kwh` within `due_in_s` (simulated) at up to `power_kw`, as
    the horizon sees it: its window up to its deadline's interval, and past the horizon's end
    only what it could not draw after it."""
    if energy_kwh <= 0 or power_kw <= 0:
        return None
    interval_s = interval_min * 60.0
    end = min(horizon, math.ceil(due_in_s / interval_s))
    if end <= 0:
        return None
    after_h = max(due_in_s - horizon * interval_s, 0.0) / 3600.0
    need = max(energy_kwh - power_kw * after_h, 0.0)
    return Deferrable(need, 0, end, power_kw) if need > 0 else None


class MeterHistory:
    """Each meter's mean power over the last interval, from samples (sans-IO): what a meter with
    no forecast of its own (a real device's driver) is expected to go on measuring."""

    def __init__(self) -> None:
        self._sum: dict[str, float] = {}
        self._n: dict[str, int] = {}

    def sample(self, state: NodeState) -> None:
        for name, u in state.units.items():
            if u.online and u.role != "action" and u.measurement is not None:
                self._sum[name] = self._sum.get(name, 0.0) + u.measurement.power_kw
                self._n[name] = self._n.get(name, 0) + 1

    def means(self) -> dict[str, float]:
        """The means since the last call (which starts the next interval's)."""
        out = {k: v / self._n[k] for k, v in self._sum.items()}
        self._sum, self._n = {}, {}
        return out


def _forecast(
    m: messages.Measurement, horizon: int, interval_min: float, mean_kw: float | None = None
) -> np.ndarray:
    """A meter's power over the horizon (kW, the middle of each interval), from its forecast;
    without one, its mean over the last interval (`mean_kw`), else its power now, held."""
    lead_h = (np.arange(horizon) + 0.5) * interval_min / 60.0
    if not m.forecast_kw:
        return np.full(horizon, m.power_kw if mean_kw is None else mean_kw)
    points = np.arange(len(m.forecast_kw) + 1, dtype=float)  # now, then +1 h, +2 h, ...
    out: np.ndarray = np.interp(lead_h, points, [m.power_kw, *m.forecast_kw])
    return out


def horizon_offer(
    state: NodeState,
    start: int,
    horizon: int,
    interval_min: float,
    bounds_kw: tuple[float, float],
    history: Mapping[str, float] | None = None,
) -> tuple[HorizonOffer, OwnUnits]:
    """The node's offer over [start, start + horizon) from its online units (see the module
    docstring), held to `bounds_kw` (its certified -import..export kW): the forecast clipped
    into them, then its stores and blocks left out, the dearest first, while it is still not;
    and which unit each of its stores and deferrable loads stands for (what the plan solved
    from it commands: `redy.planning.binding`). `history`: each meter's mean over the last
    interval (MeterHistory), for those with no forecast of their own."""
    history = history or {}
    base = np.zeros(horizon)
    blocks: list[tuple[float, float]] = []  # (kW, EUR/MWh), the same in every interval
    stores: list[Storage] = []
    deferrable: list[Deferrable] = []
    store_units: list[str] = []
    deferrable_units: list[str] = []
    for name, u in state.units.items():
        if not u.online:
            continue
        meta, s = u.meta, u.status
        if u.role == "action" and s is not None:
            rated = max(meta.rated_power_kw if meta else 0.0, abs(s.min_kw), abs(s.max_kw))
            cost, cost_max = (
                ramp_ends(s.marginal_cost_eur_mwh)
                if s.marginal_cost_eur_mwh is not None
                else (None, None)
            )
            if meta is not None and meta.quantity == "storage" and meta.capacity_kwh:
                cap = meta.capacity_kwh
                soc = s.soc
                if soc is None and u.measurement is not None:
                    soc = u.measurement.soc
                # The charge it keeps between (a battery never empties): no energy below.
                floor = min(max(s.soc_min or 0.0, 0.0), 1.0)
                top = max(min(1.0 if s.soc_max is None else s.soc_max, 1.0), floor)
                soc = (floor + top) / 2 if soc is None else min(max(soc, floor), top)
                stores.append(
                    Storage(
                        capacity_kwh=cap * top,
                        soc_kwh=cap * soc,
                        soc_min_kwh=cap * floor,
                        charge_kw=rated,
                        discharge_kw=rated,
                        charge_efficiency=STORE_EFFICIENCY,
                        discharge_efficiency=STORE_EFFICIENCY,
                        value_eur_kwh=STORE_VALUE_EUR_KWH,
                        wear_eur_mwh=STORE_WEAR_EUR_MWH,
                    )
                )
                store_units.append(name)
            elif s.energy_due_kwh is not None and s.due_in_s is not None:
                due = _deferrable(s.energy_due_kwh, s.due_in_s, rated, horizon, interval_min)
                if due is not None:
                    deferrable.append(due)
                    deferrable_units.append(name)
            elif s.min_kw >= 0:  # a producer: up to its rating at its marginal cost
                lo = cost if cost is not None else 0.0
                hi = cost_max if cost_max is not None else lo
                if hi > lo:  # a rising cost: two blocks at the middles of its halves
                    blocks += [(rated / 2, lo + (hi - lo) / 4), (rated / 2, lo + 3 * (hi - lo) / 4)]
                else:
                    blocks.append((rated, lo))
            else:  # a load it may shed (or any other range): its full draw, the rest a block
                base += s.min_kw
                value = cost if cost is not None else LOAD_VALUE_DEFAULT
                if s.max_kw > s.min_kw:
                    blocks.append((s.max_kw - s.min_kw, value))
        elif u.measurement is not None:
            base += _forecast(u.measurement, horizon, interval_min, history.get(name))
    lo_kw, hi_kw = bounds_kw
    blocks = _merged(sorted(blocks, key=lambda b: b[1]), MAX_BLOCKS)

    def offer() -> HorizonOffer:
        return HorizonOffer(
            node=state.node,
            start=start,
            base_kw=tuple(np.clip(base, lo_kw, hi_kw).tolist()),
            interval_min=interval_min,
            blocks=tuple(Block((kw,) * horizon, (c,) * horizon) for kw, c in blocks),
            storage=tuple(stores),
            deferrable=tuple(deferrable),
        )

    out = offer()
    while limits_refusal(out, bounds_kw) is not None and (stores or blocks or deferrable):
        if deferrable:
            deferrable.pop()
            deferrable_units.pop()
        elif stores:
            stores.pop()
            store_units.pop()
        else:
            blocks.pop()
        out = offer()
    return out, OwnUnits(tuple(store_units), tuple(deferrable_units))


def metered_kw(state: NodeState) -> float:
    """What the node's online meters measure now (kW, + injection)."""
    return sum(
        u.measurement.power_kw
        for u in state.units.values()
        if u.online and u.role != "action" and u.measurement is not None
    )


def metered_forecast_kw(
    state: NodeState, interval_min: float, history: Mapping[str, float] | None = None
) -> float:
    """What the node's online meters forecast for the interval starting now (kW, its middle)."""
    history = history or {}
    return sum(
        float(_forecast(u.measurement, 1, interval_min, history.get(name))[0])
        for name, u in state.units.items()
        if u.online and u.role != "action" and u.measurement is not None
    )


class ForecastError:
    """How far the meters' forecasts were from what they measured, interval by interval, after
    the fact (sans-IO): `start(forecast_kw)` at an interval's start, `sample(kw)` during it;
    the next `start` closes it."""

    def __init__(self) -> None:
        self._forecast_kw: float | None = None
        self._sum_kw = 0.0
        self._n = 0
        self.last_kw: float | None = None  # the last closed interval's mean minus its forecast
        self._abs_sum_kw = 0.0
        self.intervals = 0

    def sample(self, kw: float) -> None:
        self._sum_kw += kw
        self._n += 1

    def start(self, forecast_kw: float) -> None:
        if self._forecast_kw is not None and self._n:
            self.last_kw = self._sum_kw / self._n - self._forecast_kw
            self._abs_sum_kw += abs(self.last_kw)
            self.intervals += 1
        self._forecast_kw, self._sum_kw, self._n = forecast_kw, 0.0, 0

    @property
    def mae_kw(self) -> float | None:
        return self._abs_sum_kw / self.intervals if self.intervals else None


def plan_message(
    node: str,
    sched: Schedule,
    offers: int,
    interval_s: float,
    errors: ForecastError | None = None,
) -> messages.Plan:
    """What a node publishes of the schedule it solved: the prices, flows and its own plan (and
    its forecasts' errors after the fact)."""
    own = sched.plans[node]
    h = len(sched.price_eur_mwh)
    store = np.zeros(h)
    soc = np.zeros(h)
    for ch, dis, e in zip(own.charge_kw, own.discharge_kw, own.soc_kwh, strict=True):
        store += np.asarray(dis) - np.asarray(ch)
        soc += np.asarray(e)
    draw = np.zeros(h)
    for d in own.deferrable_kw:
        draw += np.asarray(d)
    return messages.Plan(
        node=node,
        ts_s=time.time(),
        start=sched.start,
        interval_s=interval_s,
        interval_min=sched.interval_min,
        offers=offers,
        digest=schedule_digest(sched),
        objective_eur=sched.objective_eur,
        price_eur_mwh=sched.price_eur_mwh,
        status=sched.status,
        import_kw=sched.import_kw,
        export_kw=sched.export_kw,
        injection_kw=own.injection_kw,
        blocks_kw=own.blocks_kw,
        storage_kw=tuple(store.tolist()),
        soc_kwh=tuple(soc.tolist()),
        deferrable_kw=tuple(draw.tolist()),
        forecast_error_kw=None if errors is None else errors.last_kw,
        forecast_mae_kw=None if errors is None else errors.mae_kw,
    )


def schedule_digest(sched: Schedule) -> str:
    """SHA-256 of the schedule's JSON (orjson writes each float so that it reads back to the
    same bits): equal on two nodes exactly when their schedules are."""
    return hashlib.sha256(orjson.dumps(sched.to_json_dict())).hexdigest()


class PlanDriver:
    """One node's planning: a thin asyncio driver of `PlanFlood` (see the module docstring)."""

    def __init__(
        self,
        *,
        node: str,
        state: NodeState,
        links: PeerLinks,
        neighbours: Callable[[], list[messages.ViewEntry]],
        broker_of: Callable[[str], str | None],
        publish_local: Callable[[str, Any], Awaitable[bool]],
        identity: Identity,
        capacity_kw: float,
        horizon: int,
        interval_min: float,
        interval_s: float,
        import_kw: float,
        export_kw: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.node = node
        self.state = state
        self._links = links
        self._view = neighbours
        self._broker_of = broker_of
        self._publish_local = publish_local
        self._clock = clock
        self.horizon = horizon
        self.interval_min = interval_min
        self.interval_s = interval_s
        self.import_kw, self.export_kw = import_kw, export_kw
        # Waves and the quiet before a solve, in real seconds: a small share of the interval,
        # never longer than a few of the offer market's waves.
        self.wave_s = min(0.25, interval_s / 20)
        self.settle_s = min(0.5, interval_s / 10)
        self._signer = signing.Signer(identity, session=int(clock() * 1000))
        if self._signer.node != node:
            raise ValueError(f"the TLS identity names {self._signer.node}, not {node}")
        verifier = signing.Verifier(identity.ca, capacity_kw)
        self.bounds_kw = self._signer.grant.bounds_kw(capacity_kw)
        self.flood = PlanFlood(
            node, checker(verifier.signer_grant, capacity_kw, horizon, interval_min)
        )
        self._brokers: dict[str, str] = {}
        self.tasks = TaskOwner(f"{node}.plan", limit=_MAX_TASKS)
        self.dropped: Counter[str] = Counter()
        self.refused = Tally()  # offers dropped, per sender
        self.schedule: Schedule | None = None
        self._units = OwnUnits()  # what the stores and deferrable loads of our offer stand for
        self._schedule_units: OwnUnits | None = None  # ... of our offer in `schedule`
        self._solved: int | None = None  # the flood's version solved last
        self._solving: asyncio.Task[None] | None = None
        self.solve_s = 0.0  # the last solve's wall time
        self.plans_solved = 0  # schedules solved and published since the start
        self._told: tuple[int, int] | None = None  # the (interval, solve) that binds, logged
        self.errors = ForecastError()
        self.history = MeterHistory()

    # -- events in -----------------------------------------------------------------------------

    def on_gossip(self, msg: messages.PlanGossip) -> None:
        """A neighbour's offers from our broker (the governance checked the sender's name)."""
        drops = self.flood.receive(
            self._clock(), msg.sender, msg.start, msg.offers, self._neighbours()
        )
        for d in drops:
            self._log_drop(d)

    def _log_drop(self, d: Drop) -> None:
        self.dropped["plan_offer_refused"] += 1
        n = self.refused.add(d.sender)
        if n is not None:
            _log.warning(
                "node=%s dropped a plan offer from %s: %s (%d dropped from it so far)",
                self.node,
                d.sender,
                d.reason,
                n,
            )

    def _neighbours(self) -> list[str]:
        view = self._view()
        if len(self._brokers) > 1024:
            self._brokers = {}
        self._brokers |= {e.node: e.broker for e in view}
        return [e.node for e in view]

    # -- actions out ---------------------------------------------------------------------------

    def _spawn(self, work: Any, name: str) -> asyncio.Task[None] | None:
        task = self.tasks.spawn(work, name)
        if task is None:
            self.dropped["plan_tasks_full"] += 1
        return task

    def _begin(self, now: float, start: int) -> None:
        history = self.history.means()
        self.errors.start(metered_forecast_kw(self.state, self.interval_min, history))
        if self.errors.last_kw is not None and self.flood.start == start - 1:
            _log.info(
                "node=%s interval %d: metered %+.3f kW off its forecast (mean error %.3f kW over"
                " %d intervals)",
                self.node,
                start - 1,
                self.errors.last_kw,
                self.errors.mae_kw,
                self.errors.intervals,
            )
        self._units = OwnUnits()
        try:
            offer, units = horizon_offer(
                self.state, start, self.horizon, self.interval_min, self.bounds_kw, history
            )
            # As a receiver rebuilds it from the message (every number a float), so that the
            # bytes signed here are the bytes it checks.
            offer = from_message(to_message(offer, sig=""))
            self._units = units
        except (RedyError, ValueError) as exc:  # a unit's report that makes no offer
            self.dropped["plan_offer_unmade"] += 1
            _log.warning(
                "node=%s could not state its offer for interval %d (%s): it offers nothing",
                self.node,
                start,
                exc,
            )
            offer = HorizonOffer(self.node, start, (0.0,) * self.horizon, self.interval_min)
        session = self._signer.session
        sig = self._signer.sign_bytes(signed_body(offer, session))
        own = to_message(offer, sig=sig, session=session, cert=self._signer.cert)
        for d in self.flood.begin(now, start, own, offer):
            self._log_drop(d)

    async def _send(self, s: Send) -> None:
        broker = self._brokers.get(s.target) or self._broker_of(s.target)
        try:
            if broker is None:
                raise PeerUnreachable(
                    s.target, "broker unknown (neither in the view nor a contact)"
                )
            msg = messages.PlanGossip(
                sender=self.node, start=s.start, ts_s=self._clock(), offers=s.offers
            )
            await self._links.publish(
                broker,
                render("plan_gossip", node=s.target, peer=self.node),
                messages.encode(msg),
                node=s.target,
                qos=1,
            )
        except PeerUnreachable as exc:
            _log.debug("node=%s plan offers to %s failed: %s", self.node, s.target, exc.reason)
            self.flood.refused(s.target, s.start, s.offers)
        except InvalidMessage as exc:  # an offer too large for a message: it cannot go
            self.dropped["plan_offer_unsendable"] += 1
            _log.warning("node=%s cannot send plan offers to %s: %s", self.node, s.target, exc)

    async def _solve(
        self, version: int, start: int, offers: list[HorizonOffer], units: OwnUnits
    ) -> None:
        boundary = supplier.boundary(
            start, self.horizon, self.interval_min, self.import_kw, self.export_kw
        )
        self._solved = version  # tried once, whatever comes of it
        t0 = time.perf_counter()
        try:
            sched = await asyncio.to_thread(solve, offers, boundary)
        except PlanError as exc:
            _log.warning("node=%s could not plan interval %d: %s", self.node, start, exc)
            return
        self.solve_s = time.perf_counter() - t0
        if start != self.flood.start:
            return  # the interval ended meanwhile: the next one's plan comes
        self.schedule, self._schedule_units = sched, units
        self.plans_solved += 1
        msg = plan_message(self.node, sched, len(offers), self.interval_s, self.errors)
        await self._publish_local(render("plan", node=self.node), msg)
        _log.info(
            "node=%s plan of interval %d from %d offers: %.3f EUR/MWh now, %s, digest %s,"
            " solved in %.3f s",
            self.node,
            start,
            len(offers),
            sched.price_eur_mwh[0],
            sched.status[0],
            msg.digest[:12],
            self.solve_s,
        )

    # -- what binds -----------------------------------------------------------------------------

    def binding(self) -> Binding | None:
        """What this node's own plan commands its units now (`redy.planning.binding`), None when
        it binds nothing; the first time a solve binds an interval, one log line says so."""
        k = math.floor(self._clock() / self.interval_s)
        statuses = {
            name: u.status
            for name, u in self.state.units.items()
            if u.online and u.role == "action" and u.status is not None
        }
        out = binding(self.schedule, self.node, self._schedule_units, k, statuses)
        if out is not None and self._told != (k, out.solved_for):
            self._told = (k, out.solved_for)
            _log.info(
                "node=%s interval %d binds the plan solved for interval %d: %s",
                self.node,
                k,
                out.solved_for,
                ", ".join(f"{u} {kw:+.3f} kW" for u, kw in sorted(out.setpoints_kw.items())),
            )
        return out

    def counters(self, binding: bool) -> messages.PlanCounters:
        """The planning's counters for the node's health report (`redy launch --metrics`);
        `binding`: whether the plan commands the node's units now."""
        refused = self.flood.refused_by
        return messages.PlanCounters(
            solved=self.plans_solved,
            solve_s=self.solve_s,
            interval=max(math.floor(self._clock() / self.interval_s), 0),
            binding=binding,
            offers_admitted=self.flood.admitted,
            offers_refused=tuple(
                messages.Count(name=k, count=n) for k, n in sorted(refused.items()) if n
            )[:16],
        )

    # -- the loop ------------------------------------------------------------------------------

    async def run(self) -> None:
        """Interval after interval until cancelled; sends in flight are cancelled with the
        TaskGroup that owns them."""
        new_highs()  # the first HiGHS of a process prints a banner: here, not in a worker thread
        async with asyncio.TaskGroup() as group:
            self.tasks.bind(group)
            while True:
                now = self._clock()
                k = math.floor(now / self.interval_s)
                if k != self.flood.start:
                    self._begin(now, k)
                self.errors.sample(metered_kw(self.state))
                self.history.sample(self.state)
                for s in self.flood.wave(self._neighbours()):
                    self._spawn(self._send(s), "plan-offers")
                idle = self._solving is None or self._solving.done()
                version = self.flood.version
                if (
                    idle
                    and version != self._solved
                    and now - self.flood.changed_at >= self.settle_s
                    and self.flood.start is not None
                ):
                    self._solving = self._spawn(
                        self._solve(version, self.flood.start, self.flood.offers(), self._units),
                        "solve",
                    )
                wait = min(self.wave_s, (k + 1) * self.interval_s - self._clock())
                await asyncio.sleep(max(wait, 0.001))
