"""The governance unit: a node's gateway and decision maker (asyncio, gmqtt, MQTT 5).

One asyncio.TaskGroup owns every task: the inbox (messages from the node's own broker, the only
broker it reads), the state loop (publish the retained NodeEnergyState every period, command the
action units), and in distant mode the membership overlay and the market. Cancellation closes
every connection.

Faults: the connection to the node's own broker retries forever with backoff and re-announces
the node after every reconnect; its Last Will marks the retained state `offline`, so a dead
governance never shows "cleared". Publishes are awaited with a timeout and a failure is logged,
never raised; answers to peers' shuffle requests run in bounded tasks of their own, so no peer
can hold up the inbox that reads the node's units.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import Counter
from collections.abc import Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gmqtt

from redy import messages
from redy.brokers import grid_identity, load_credentials
from redy.errors import BrokerError, DeliveryFailed, InvalidMessage
from redy.logformat import Tally
from redy.topics import CONTRACT, render
from redy.transport.client import AsyncLink
from redy.units.config import GovernanceConfig
from redy.units.node_state import NodeState
from redy.units.peer_gate import PeerGate
from redy.units.state_pacing import StatePacing
from redy.units.tasks import TaskOwner

if TYPE_CHECKING:
    from redy.planning.binding import Binding

_log = logging.getLogger(__name__)

_LOCAL_TIMEOUT_S = 3.0
# Short, so a frozen governance unit's Will marks it offline within about one market epoch
# (Mosquitto waits 1.5 keepalives); pings on loopback cost nothing.
_KEEPALIVE_S = 2
_PEER_HANDLERS = 16  # shuffle answers in flight at once; more are dropped and counted
_ACKS = 64  # states awaiting their PUBACK, and the push to the neighbours, at once
HEALTH_PERIOD_S = 5.0  # the counters' report (node_health; its expiry is four periods)
_Inbox = asyncio.Queue[tuple[str, Any, dict[str, Any]]]


class Governance:
    """One node's governance unit."""

    def __init__(self, config: GovernanceConfig) -> None:
        self.config = config
        self.node = config.node
        self.state = NodeState(config.node)
        creds = load_credentials(config.credentials)
        self._password = creds.password("governance")
        self._identity = grid_identity(Path(config.credentials).parent)
        self.target_net_kw: float | None = config.setpoint_kw
        self._seq = int(time.time() * 1000)  # increases across restarts of this unit
        self._inbox: _Inbox = asyncio.Queue(maxsize=10_000)
        self._dirty = asyncio.Event()
        self._announce = True  # publish the descriptor at the next state period
        self.pacing = StatePacing(config.period_s, config.neighbour_period_s)
        self._pushing: asyncio.Task[None] | None = None
        # Every task beside the main loops, owned by the unit's TaskGroup (redy.units.tasks):
        # PUBACKs of states sent at once, pushes to the neighbours, handlers of peers' requests.
        self.tasks = TaskOwner(f"{config.node}.governance", limit=_ACKS)
        self.peer_handlers = TaskOwner(f"{config.node}.peers", limit=_PEER_HANDLERS)
        self._link = self._session(
            "governance",
            peers=False,
            will=gmqtt.Message(
                render("node_state", node=self.node),
                messages.encode(
                    self.state.energy_state(config.sim_time_s(time.time()), status="offline")
                ),
                qos=1,
                retain=True,
            ),
            on_connect=self._on_connect,
        )
        # Peers' messages reach us on a session of their own: a peer's flood fills that
        # connection, never the one that carries the units' reports and our own publishes.
        self._peer_link = self._session("governance-peers", peers=True)
        self._peers = PeerGate()
        self._unknown = Tally()  # messages on topics outside the contract, per topic
        self._peer_ready = asyncio.Event()
        # What this unit dropped, per reason (reported in node_health, logged where it happens).
        self.dropped: Counter[str] = Counter()
        self.started_s = time.time()
        self.overlay: Any = None  # distant mode: redy.units.overlay.OverlayDriver
        self.market: Any = None  # distant mode with epochs: redy.units.market.MarketDriver
        self.peer_links: Any = None  # distant mode: redy.transport.peer_links.PeerLinks
        self.planner: Any = None  # distant mode with plan_intervals: redy.units.planner.PlanDriver

    # -- own broker -----------------------------------------------------------------------------

    def _session(self, name: str, *, peers: bool, **kw: Any) -> AsyncLink:
        """A session of the governance account on the node's own broker, subscribed to what
        peers write (`peers`) or to everything else it reads; it reconnects by itself."""
        return AsyncLink(
            self.config.broker,
            f"{self.node}.{name}",
            user="governance",
            password=self._password,
            timeout_s=_LOCAL_TIMEOUT_S,
            keepalive_s=_KEEPALIVE_S,
            subscriptions=_subscriptions(self.node, peers=peers),
            on_message=self._on_message,
            reconnect=True,
            **kw,
        )

    def _on_connect(self) -> None:
        self._announce = True  # a restarted broker may have lost what we published
        self._dirty.set()

    def _on_message(self, topic: str, payload: bytes, props: dict[str, Any]) -> None:
        try:
            spec, params = CONTRACT.match(topic)
        except InvalidMessage as exc:
            # Logged at a topic's 1st, 2nd, 4th... message: a writer whose name is no node id
            # (an operator's certificate) cannot flood the log.
            self.dropped["unknown_topic"] += 1
            n = self._unknown.add(topic)
            if n is not None:
                _log.warning("node=%s dropped a message: %s (%d so far)", self.node, exc, n)
            return
        peer = params.get("peer")
        if peer is not None and not self._peers.admit(
            time.monotonic(), spec.name, peer, len(payload)
        ):
            self.dropped["over_budget"] += 1
            if self._peers.should_log(time.monotonic(), spec.name, peer):
                _log.warning(
                    "node=%s peer %s is over its %s budget; dropping its messages (%d so far)",
                    self.node,
                    peer,
                    spec.name,
                    self._peers.refused[peer],
                )
            return
        try:
            msg = messages.decode(topic, payload)
        except InvalidMessage as exc:
            self.dropped["invalid"] += 1
            _log.warning("node=%s dropped invalid message: %s", self.node, exc)
            return
        if peer is None:
            try:
                self._inbox.put_nowait((topic, msg, props))
            except asyncio.QueueFull:
                self.dropped["inbox_full"] += 1
                _log.warning("node=%s inbox full; dropped %s", self.node, topic)
            return
        # The broker let only `peer` write this topic; a message that names someone else as its
        # sender is a forgery, whoever wrote it.
        claimed = getattr(msg, "sender", None) or getattr(msg, "node", None)
        if claimed != peer:
            self.dropped["forged"] += 1
            _log.warning(
                "node=%s dropped %s written by %s in the name of %s",
                self.node,
                type(msg).__name__,
                peer,
                claimed,
            )
            return
        self._peers.put((topic, msg, props))
        self._peer_ready.set()

    async def publish_local(self, topic: str, msg: Any) -> bool:
        """Publish on our own broker (QoS and retain from the contract); False, logged, if the
        broker did not take it in time."""
        spec, _ = CONTRACT.match(topic)
        try:
            await self._link.publish(
                topic, messages.encode(msg), qos=spec.qos, retain=spec.retained
            )
        except DeliveryFailed as exc:
            _log.warning("node=%s could not publish %s: %s", self.node, topic, exc.reason)
            return False
        return True

    def _descriptor(self) -> messages.NodeDescriptor:
        return messages.NodeDescriptor(
            node=self.node,
            kind=self.config.kind,
            broker=self.config.grid_broker or self.config.broker,
            capabilities=("produce", "consume", "flex", "store", "forecast"),
            ts_s=time.time(),
        )

    # -- tasks -----------------------------------------------------------------------------------

    async def _inbox_task(self) -> None:
        """The node's own units' messages."""
        while True:
            topic, msg, props = await self._inbox.get()
            try:
                await self._handle(topic, msg, props)
            except Exception:  # one bad message must not stop the node
                _log.exception("node=%s failed handling %s", self.node, topic)

    async def _peer_inbox_task(self) -> None:
        """Peers' messages, admitted by the gate; apart from the units' inbox, so peers'
        traffic never delays what the node's own units report."""
        while True:
            await self._peer_ready.wait()
            self._peer_ready.clear()
            while (item := self._peers.get()) is not None:
                topic, msg, props = item
                try:
                    await self._handle(topic, msg, props)
                except Exception:  # nothing a peer sends may stop the node
                    _log.exception("node=%s failed handling %s", self.node, topic)
                await asyncio.sleep(0)  # let the units' inbox in between

    async def _handle(self, topic: str, msg: Any, props: dict[str, Any]) -> None:
        if isinstance(msg, messages.NodeSetpoint):
            self.target_net_kw = msg.net_kw
            _log.info("node=%s setpoint %.1f kW (seq %d)", self.node, msg.net_kw, msg.seq)
            self._dirty.set()
        elif isinstance(msg, messages.ShuffleRequest) and self.overlay is not None:
            # Its response topic is not read: the answer goes to the canonical reply topic
            # (OverlayDriver._send), the only one the sender's ACL lets us write.
            self._spawn_peer_task(self.overlay.on_request(msg), msg.sender)
        elif isinstance(msg, messages.ShuffleReply) and self.overlay is not None:
            await self.overlay.on_reply(msg)
        elif isinstance(msg, messages.Evidence) and self.overlay is not None:
            # Checked here, bounded by the overlay; only a proof that holds is sent on.
            spread = self.overlay.on_evidence(msg)
            if spread is not None:
                self._spawn_peer_task(spread, msg.sender)
        elif isinstance(msg, messages.Gossip) and self.market is not None:
            self.market.on_gossip(msg)
        elif isinstance(msg, messages.CellMessage) and self.market is not None:
            self.market.on_cell(msg)
        elif isinstance(msg, messages.PlanGossip):
            if self.planner is not None:
                self.planner.on_gossip(msg)
        elif self.state.on_message(topic, msg):
            # A unit came or went: its flexibility changes now, not at the next period.
            _log.info(
                "node=%s units online %d/%d",
                self.node,
                sum(u.online for u in self.state.units.values()),
                len(self.state.units),
            )
            self._dirty.set()

    def _price_cleared(self) -> None:
        """An epoch's first price: the state goes out on our broker now, before this loop turns
        to the gossip queued behind the clearing (the neighbours get it with their next push:
        a push to every neighbour at each price landed in the market's busiest second, 600
        publishes a 4 s epoch at 50 nodes)."""
        topic = render("node_state", node=self.node)
        spec, _ = CONTRACT.match(topic)
        try:  # in the market's loop: nothing here may raise
            payload = messages.encode(self._energy_state())
            ack = self._link.send(topic, payload, qos=spec.qos, retain=spec.retained)
        except (DeliveryFailed, InvalidMessage) as exc:
            _log.warning("node=%s could not publish %s: %s", self.node, topic, exc)
            self._dirty.set()  # the state task tries again
            return
        self.pacing.published_early(time.monotonic())  # the next, a period after this
        if ack is not None:
            self.tasks.spawn(self._state_acked(topic, ack), "state-ack")

    async def _state_acked(self, topic: str, ack: tuple[int, asyncio.Future[None]]) -> None:
        try:
            await self._link.acked(ack)
        except DeliveryFailed as exc:
            _log.warning("node=%s could not publish %s: %s", self.node, topic, exc.reason)

    def _energy_state(self) -> messages.NodeEnergyState:
        extra = self.market.state_fields() if self.market is not None else {}
        return self.state.energy_state(
            self.config.sim_time_s(time.time()), setpoint_kw=self.target_net_kw, **extra
        )

    def _spawn_peer_task(self, work: Coroutine[Any, Any, None], sender: str) -> None:
        """Run a peer-facing handler beside the inbox, at most _PEER_HANDLERS at once; one that
        fails is logged and counted (nothing a peer causes may end the node)."""
        if self.peer_handlers.spawn(work, f"answer {sender}") is None:
            self.dropped["peers_busy"] += 1
            _log.warning(
                "node=%s busy answering peers; dropped a request from %s (%d dropped)",
                self.node,
                sender,
                self.dropped["peers_busy"],
            )

    async def _state_task(self) -> None:
        """Publish the node's state when `pacing` says so (redy.units.state_pacing: its timing,
        tested with a fake clock); here only the waiting and the publishing."""
        pacing = self.pacing
        pacing.start(time.monotonic())
        while True:
            # asyncio.timeout, not wait_for: in 3.11 wait_for can swallow a cancellation that
            # arrives as the event is set, and the unit would never stop.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(pacing.wait_s(time.monotonic())):
                    await self._dirty.wait()
            if not pacing.due(time.monotonic(), self._dirty.is_set()):
                continue  # a first price's state went out meanwhile: a period after it
            self._dirty.clear()
            if self._announce and self._link.is_connected:
                self._announce = not await self.publish_local(
                    render("descriptor", node=self.node), self._descriptor()
                )
            if self.market is None:
                await self._dispatch()
            state = self._energy_state()
            await self.publish_local(render("node_state", node=self.node), state)
            # The push goes beside the local state, not before the next one.
            pushing = self._pushing is not None and not self._pushing.done()
            if self.overlay is not None and pacing.push_neighbours(time.monotonic(), pushing):
                self._pushing = self.tasks.spawn(self.overlay.push_state(state), "push-state")

    def health(self) -> messages.GovernanceHealth:
        """This unit's counters (redy.launch.metrics serves them to monitoring)."""
        dropped = Counter(self.dropped)
        dropped["peer_queue_full"] += self._peers.dropped_oldest
        dropped["tasks_full"] += self.tasks.dropped + self.peer_handlers.dropped
        dropped["task_failed"] += self.tasks.failed + self.peer_handlers.failed
        market = self.market
        if market is not None:
            dropped.update(market.dropped)
        if self.planner is not None:
            dropped.update(self.planner.dropped)
        signed: Any = getattr(self.overlay, "overlay", None)  # the signed shuffle's proofs
        if hasattr(signed, "evidence_refused"):
            dropped["evidence_refused"] += signed.evidence_refused
            dropped["evidence_over_budget"] += signed.evidence_dropped
        links = self.peer_links
        return messages.GovernanceHealth(
            node=self.node,
            ts_s=time.time(),
            started_s=self.started_s,
            epochs_cleared=market.epochs.cleared if market is not None else 0,
            epochs_missed=market.epochs.missed(market.now()) if market is not None else 0,
            offers=market.offers if market is not None else 0,
            peer_dials=links.dials if links is not None else 0,
            peer_failures=links.failures if links is not None else 0,
            peer_links=len(links.open_uris) if links is not None else 0,
            inbox=self._inbox.qsize() + len(self._peers.inbox),
            tasks=len(asyncio.all_tasks()),
            dropped=tuple(messages.Count(name=k, count=v) for k, v in sorted(dropped.items()) if v)[
                :32
            ],
            plan=(
                self.planner.counters(self._planned() is not None)
                if self.planner is not None
                else None
            ),
        )

    async def _health_task(self) -> None:
        """Report the counters every HEALTH_PERIOD_S (retained, so a monitor that comes later
        reads them at once)."""
        topic = render("node_health", node=self.node)
        while True:
            await asyncio.sleep(HEALTH_PERIOD_S)
            await self.publish_local(topic, self.health())

    def _planned(self) -> Binding | None:
        """What the current interval's plan binds (None: no plan binds, or plans advise)."""
        if self.planner is None or self.config.plan_dispatch != "binds":
            return None
        plan: Binding | None = self.planner.binding()
        return plan

    async def _dispatch(self) -> None:
        """With no market: the units the plan binds to their setpoints, the others to follow
        the node's setpoint (if it has one)."""
        plan = self._planned()
        planned = plan.setpoints_kw if plan is not None else {}
        for unit, kw in sorted(planned.items()):
            await self.command(unit, kw)
        if self.target_net_kw is None:
            return
        for order in self.state.follow_setpoint(self.target_net_kw):
            if order.unit not in planned:
                await self.command(order.unit, order.setpoint_kw, order.on)

    async def command(self, unit: str, setpoint_kw: float | None, on: bool | None = None) -> None:
        """Send one command to an action unit, with the next sequence number."""
        self._seq += 1
        cmd = messages.Command(seq=self._seq, ts_s=time.time(), setpoint_kw=setpoint_kw, on=on)
        await self.publish_local(render("command", node=self.node, unit=unit), cmd)

    async def _connect_both(self, refused: list[BrokerError]) -> None:
        try:
            await self._link.connect_retrying()
            if self.config.grid_broker:
                await self._peer_link.connect_retrying()
        except BrokerError as exc:  # kept for run(): in a TaskGroup it would be a group of one
            refused.append(exc)

    async def run(self, stop: asyncio.Event) -> None:
        """Run until `stop` is set; every connection is closed on the way out."""
        refused: list[BrokerError] = []
        async with asyncio.TaskGroup() as tg:
            connecting = tg.create_task(self._connect_both(refused), name="connect")
            stopping = tg.create_task(stop.wait(), name="stop")
            done, _ = await asyncio.wait(
                {connecting, stopping}, return_when=asyncio.FIRST_COMPLETED
            )
            connected = connecting in done
            stopping.cancel()
            connecting.cancel()  # stopped before the broker ever answered, or done already
        if refused:
            raise refused[0]  # a refusal of our credentials ends the unit here
        if not connected:
            await self._link.close()
            await self._peer_link.close()
            return
        _log.info("node=%s governance connected to %s", self.node, self.config.broker)
        links = None
        try:
            async with asyncio.TaskGroup() as tg:
                self.tasks.bind(tg)
                self.peer_handlers.bind(tg)
                tasks = [
                    tg.create_task(self._inbox_task()),
                    tg.create_task(self._peer_inbox_task()),
                    tg.create_task(self._state_task()),
                    tg.create_task(self._health_task()),
                ]
                if self.config.grid_broker:
                    links = await self._start_overlay(tg, tasks)
                elif self.config.plan_intervals > 0:
                    _log.warning(
                        "node=%s plans need distant mode (a grid listener): no plan", self.node
                    )
                await stop.wait()
                for t in tasks:
                    t.cancel()
                self.tasks.cancel_all()
                self.peer_handlers.cancel_all()
        finally:
            if links is not None:
                await links.close_all()
            # A clean stop: say so before the session ends (the Will covers the unclean ones).
            await self.publish_local(
                render("node_state", node=self.node),
                self.state.energy_state(self.config.sim_time_s(time.time()), status="offline"),
            )
            await self._link.close()
            await self._peer_link.close()
            _log.info("node=%s governance stopped", self.node)

    async def _start_overlay(self, tg: asyncio.TaskGroup, tasks: list[asyncio.Task[Any]]) -> Any:
        from redy.membership.cyclon import Cyclon
        from redy.transport.peer_links import PeerLinks
        from redy.units.overlay import OverlayDriver

        cfg = self.config
        assert cfg.grid_broker is not None
        # The cell market writes to every cell-mate and to the partner cells' members besides
        # the neighbours (links to them are used every epoch, so the idle rule keeps them).
        cell_links = 3 * cfg.cell_size if cfg.market == "cells" else 0
        links = PeerLinks(
            self.node,
            self._identity,
            max_links=4 * cfg.view_size + 8 + cell_links,
            timeout_s=cfg.shuffle_timeout_s,
        )
        self.peer_links = links
        # `verify`: entries a shuffle admits are dialled at once (docs/shuffle-study.md).
        signed = None
        core: Any
        if cfg.shuffle == "signed" and self._identity is not None:
            from redy.membership.secure_overlay import SecureOverlay

            signed = SecureOverlay(
                identity=self._identity,
                grid_uri=cfg.grid_broker,
                view_size=cfg.view_size,
                shuffle_length=cfg.shuffle_length,
                rng=random.Random(cfg.seed),
                timeout_s=cfg.shuffle_timeout_s,
                period_s=cfg.shuffle_period_s,
            )
            core = signed.core
        else:
            core = Cyclon(
                self.node,
                cfg.grid_broker,
                cfg.view_size,
                cfg.shuffle_length,
                random.Random(cfg.seed),
                detector="verify",
            )
        self.overlay = OverlayDriver(
            node=self.node,
            grid_uri=cfg.grid_broker,
            core=core,
            overlay=signed,
            links=links,
            publish_local=self.publish_local,
            period_s=cfg.shuffle_period_s,
            timeout_s=cfg.shuffle_timeout_s,
            introducer=cfg.introducer,
            identity=self._identity,
            state_expiry_s=max(1, round(3 * cfg.neighbour_period_s)),
        )
        tasks.append(tg.create_task(self.overlay.run()))
        if cfg.epoch_s > 0:
            from redy.units.market import MarketDriver

            overlay = self.overlay
            self.market = MarketDriver(
                node=self.node,
                state=self.state,
                links=links,
                neighbours=lambda: list(overlay.view),
                broker_of=overlay.broker_of,
                command=self.command,
                epoch_s=cfg.epoch_s,
                rounds=cfg.rounds,
                capacity_kw=cfg.capacity_kw,
                market=cfg.market,
                identity=self._identity,
                cell_size=cfg.cell_size,
                grid_uri=cfg.grid_broker,
                rng=random.Random(cfg.seed + 1),
                on_cleared=self._price_cleared,
                planned=self._planned,
            )
            tasks.append(tg.create_task(self.market.run()))
        if cfg.plan_intervals > 0:
            self._start_planner(tg, tasks, links)
        return links

    def _start_planner(
        self, tg: asyncio.TaskGroup, tasks: list[asyncio.Task[Any]], links: Any
    ) -> None:
        from redy.units.planner import PlanDriver

        cfg = self.config
        if self._identity is None:
            _log.warning("node=%s plans need the node's TLS identity: no plan", self.node)
            return
        overlay = self.overlay
        self.planner = PlanDriver(
            node=self.node,
            state=self.state,
            links=links,
            neighbours=lambda: list(overlay.view),
            broker_of=overlay.broker_of,
            publish_local=self.publish_local,
            identity=self._identity,
            capacity_kw=cfg.capacity_kw,
            horizon=cfg.plan_intervals,
            interval_min=cfg.plan_interval_min,
            interval_s=cfg.plan_interval_s,
            import_kw=cfg.plan_import_kw,
            export_kw=cfg.plan_export_kw,
        )
        tasks.append(tg.create_task(self.planner.run()))


def _subscriptions(node: str, *, peers: bool) -> tuple[str, ...]:
    """The governance's subscriptions on its own broker, from the contract: what peers write
    (`peers`), or everything else it reads."""
    out = []
    for spec in CONTRACT.topics.values():
        if "governance" not in spec.subscribers or ("peer" in spec.publishers) != peers:
            continue
        levels = spec.pattern.replace("{node}", node).split("/")
        out.append("/".join("+" if lv.startswith("{") else lv for lv in levels))
    return tuple(out)


def run_governance(config: GovernanceConfig, stop: asyncio.Event | None = None) -> None:
    """Run a governance unit in this thread's event loop until SIGTERM/SIGINT (or `stop`)."""
    import signal

    async def main() -> None:
        ev = stop or asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, ev.set)
        await Governance(config).run(ev)

    asyncio.run(main())
