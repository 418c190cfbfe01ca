"""The governance unit: a node's gateway and decision maker (asyncio, gmqtt, MQTT 5).

One asyncio.TaskGroup owns every task: the inbox (messages from the node's own broker, the only
broker it reads), the state loop (publish the retained NodeEnergyState every period, command the
action units), and in distant mode the membership overlay. Cancellation closes every connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from typing import Any

import gmqtt

from redy import messages
from redy.brokers import load_credentials
from redy.errors import BrokerError, InvalidMessage
from redy.topics import CONTRACT, render
from redy.units.config import GovernanceConfig
from redy.units.node_state import NodeState

_log = logging.getLogger(__name__)

_CONNECT_TIMEOUT_S = 5.0
_Inbox = asyncio.Queue[tuple[str, Any, dict[str, Any]]]


async def connect_with_backoff(
    client: gmqtt.Client, uri: str, *, attempts: int = 8, keepalive_s: int = 5
) -> None:
    """gmqtt does not retry its first connect(): retry with exponential backoff, then raise."""
    host, port = messages.parse_uri(uri)
    delay = 0.2
    for attempt in range(1, attempts + 1):
        try:
            await asyncio.wait_for(
                client.connect(host, port, keepalive=keepalive_s), _CONNECT_TIMEOUT_S
            )
            return
        except gmqtt.MQTTConnectError as exc:  # refused: bad credentials do not get better
            raise BrokerError(f"broker {uri} refused the governance unit: {exc}") from None
        except (OSError, TimeoutError) as exc:
            if attempt == attempts:
                raise BrokerError(f"cannot reach broker {uri}: {exc}") from None
            _log.warning("broker %s not reachable (%s); retrying in %.1f s", uri, exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)


class Governance:
    """One node's governance unit."""

    def __init__(self, config: GovernanceConfig) -> None:
        self.config = config
        self.node = config.node
        self.state = NodeState(config.node)
        creds = load_credentials(config.credentials)
        self._password = creds.password("governance")
        self._grid_password = creds.grid_password
        self.target_net_kw: float | None = config.setpoint_kw
        self._seq = int(time.time() * 1000)  # increases across restarts of this unit
        self._inbox: _Inbox = asyncio.Queue(maxsize=10_000)
        self._dirty = asyncio.Event()
        self._client = gmqtt.Client(f"{config.node}.governance", clean_session=True)
        self._client.set_auth_credentials("governance", self._password)
        self._client.on_message = self._on_message
        self._client.on_connect = self._on_connect
        self.overlay: Any = None  # distant mode: redy.units.overlay.OverlayDriver
        self.market: Any = None  # distant mode with epochs: redy.units.market.MarketDriver

    # -- own broker -----------------------------------------------------------------------------

    def _on_connect(self, client: gmqtt.Client, _flags: Any, _rc: Any, _props: Any) -> None:
        client.subscribe(f"redy/{self.node}/#", qos=1)

    def _on_message(self, _c: Any, topic: str, payload: bytes, _qos: int, props: Any) -> int:
        try:
            msg = messages.decode(topic, payload)
        except InvalidMessage as exc:
            _log.warning("node=%s dropped invalid message: %s", self.node, exc)
            return 0
        try:
            self._inbox.put_nowait((topic, msg, dict(props or {})))
        except asyncio.QueueFull:
            _log.warning("node=%s inbox full; dropped %s", self.node, topic)
        return 0

    async def publish_local(self, topic: str, msg: Any) -> None:
        spec, _ = CONTRACT.match(topic)
        self._client.publish(topic, messages.encode(msg), qos=spec.qos, retain=spec.retained)

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
        while True:
            topic, msg, props = await self._inbox.get()
            try:
                await self._handle(topic, msg, props)
            except Exception:  # one bad message must not stop the node
                _log.exception("node=%s failed handling %s", self.node, topic)

    async def _handle(self, topic: str, msg: Any, props: dict[str, Any]) -> None:
        if isinstance(msg, messages.NodeSetpoint):
            self.target_net_kw = msg.net_kw
            _log.info("node=%s setpoint %.1f kW (seq %d)", self.node, msg.net_kw, msg.seq)
            self._dirty.set()
        elif isinstance(msg, messages.ShuffleRequest) and self.overlay is not None:
            response = props.get("response_topic")
            if isinstance(response, list):
                response = response[0] if response else None
            await self.overlay.on_request(msg, response)
        elif isinstance(msg, messages.ShuffleReply) and self.overlay is not None:
            await self.overlay.on_reply(msg)
        elif isinstance(msg, messages.Gossip) and self.market is not None:
            self.market.on_gossip(msg)
        elif self.state.on_message(topic, msg):
            # A unit came or went: its flexibility changes now, not at the next period.
            _log.info(
                "node=%s units online %d/%d",
                self.node,
                sum(u.online for u in self.state.units.values()),
                len(self.state.units),
            )
            self._dirty.set()

    async def _state_task(self) -> None:
        period = self.config.period_s
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._dirty.wait(), period)
            self._dirty.clear()
            if self.market is None:
                await self._dispatch()
            extra = self.market.state_fields() if self.market is not None else {}
            state = self.state.energy_state(
                self.config.sim_time_s(time.time()), setpoint_kw=self.target_net_kw, **extra
            )
            await self.publish_local(render("node_state", node=self.node), state)
            if self.overlay is not None:
                await self.overlay.push_state(state)

    async def _dispatch(self) -> None:
        if self.target_net_kw is None:
            return
        for order in self.state.follow_setpoint(self.target_net_kw):
            await self.command(order.unit, order.setpoint_kw, order.on)

    async def command(self, unit: str, setpoint_kw: float | None, on: bool | None = None) -> None:
        """Send one command to an action unit, with the next sequence number."""
        self._seq += 1
        cmd = messages.Command(seq=self._seq, ts_s=time.time(), setpoint_kw=setpoint_kw, on=on)
        await self.publish_local(render("command", node=self.node, unit=unit), cmd)

    async def run(self, stop: asyncio.Event) -> None:
        """Run until `stop` is set; every connection is closed on the way out."""
        await connect_with_backoff(self._client, self.config.broker)
        _log.info("node=%s governance connected to %s", self.node, self.config.broker)
        await self.publish_local(render("descriptor", node=self.node), self._descriptor())
        links = None
        try:
            async with asyncio.TaskGroup() as tg:
                tasks = [tg.create_task(self._inbox_task()), tg.create_task(self._state_task())]
                if self.config.grid_broker:
                    links = await self._start_overlay(tg, tasks)
                await stop.wait()
                for t in tasks:
                    t.cancel()
        finally:
            if links is not None:
                await links.close_all()
            await self._client.disconnect()
            _log.info("node=%s governance stopped", self.node)

    async def _start_overlay(self, tg: asyncio.TaskGroup, tasks: list[asyncio.Task[Any]]) -> Any:
        from redy.membership.cyclon import Cyclon
        from redy.transport.peer_links import PeerLinks
        from redy.units.overlay import OverlayDriver

        cfg = self.config
        assert cfg.grid_broker is not None
        links = PeerLinks(
            self.node,
            "grid",
            self._grid_password,
            max_links=2 * cfg.view_size + 4,
            timeout_s=cfg.shuffle_timeout_s,
        )
        core = Cyclon(
            self.node, cfg.grid_broker, cfg.view_size, cfg.shuffle_length, random.Random(cfg.seed)
        )
        self.overlay = OverlayDriver(
            node=self.node,
            grid_uri=cfg.grid_broker,
            core=core,
            links=links,
            publish_local=self.publish_local,
            period_s=cfg.shuffle_period_s,
            timeout_s=cfg.shuffle_timeout_s,
            introducer=cfg.introducer,
            grid_password=self._grid_password,
            state_expiry_s=max(1, round(3 * cfg.period_s)),
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
                command=self.command,
                epoch_s=cfg.epoch_s,
                rounds=cfg.rounds,
                rng=random.Random(cfg.seed + 1),
            )
            tasks.append(tg.create_task(self.market.run()))
        return links


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
