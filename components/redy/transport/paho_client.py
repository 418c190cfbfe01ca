"""The one place paho-mqtt clients are made (`new_client`), and the sync MQTT adapter of
detection and action units (paho-mqtt 2, MQTT 5).

Every paho session of the package (units, the tools' sessions, the broker probe, the dashboards,
the Zigbee2MQTT driver) is a `new_client`: the project's one reconnect policy (`Backoff`, from
`RECONNECT_MIN_S` to `RECONNECT_MAX_S`, in place of paho's unjittered doubling), TLS from a grid
identity, and a refused login known by its CONNACK reason code (`refused_login`), not by its
text.

`UnitLink` owns one unit's connection to its node's broker: the Last Will (retained `offline`
state of this session's bd_seq), the birth (retained meta + `online`) re-published on every
(re)connect, re-subscription, reconnect with backoff, and decoding of incoming messages: an
invalid payload is logged in one line and dropped, never raised into the unit.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from redy import messages, pki
from redy.errors import BrokerError, InvalidMessage
from redy.topics import CONTRACT, TopicSpec, render
from redy.transport.backoff import Backoff

_log = logging.getLogger(__name__)

RECONNECT_MIN_S = 1
RECONNECT_MAX_S = 30
# CONNACK reason codes of a refused login: MQTT 5's "bad user name or password" and "not
# authorized" (paho reports MQTT 3.1.1's return codes 4 and 5 as these).
REFUSED_LOGIN = frozenset({134, 135})


class _BackoffClient(mqtt.Client):
    """A paho client whose reconnects wait the project's `Backoff`.

    paho (2.x, pinned) sleeps in `_reconnect_wait` before each reconnect of its network loop,
    doubling `_reconnect_delay` from `_reconnect_min_delay`, and clears `_reconnect_delay` on
    every accepted CONNACK. The override hands paho the next backoff delay as a one-step
    schedule and resets the backoff where paho would restart its own; it keeps paho's sleep,
    which wakes up on a disconnect or a stop. `loop_stop` closes paho's wake-up socket pair
    (`_reset_sockets`). tests/transport/test_library_internals.py holds these names."""

    def __init__(self, *args: Any, backoff: Backoff, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.backoff = backoff

    def loop_stop(self) -> MQTTErrorCode:
        """paho's loop_stop, then the socket pair that woke its network thread closed: paho
        closes it only when the client is collected, which in a reference cycle comes after
        the sockets' own finalizers (a ResourceWarning each). A later loop_start makes a new
        pair."""
        rc = super().loop_stop()
        if self._thread is None:  # the network thread is gone: nothing reads the pair now
            self._reset_sockets(sockpair_only=True)
        return rc

    def _reconnect_wait(self) -> None:
        with self._reconnect_delay_mutex:
            if self._reconnect_delay is None:  # connected since the last wait: a new incident
                self.backoff.reset()
            delay = self.backoff.next_delay()
            self._reconnect_min_delay = self._reconnect_max_delay = delay  # type: ignore[assignment]
            self._reconnect_delay = None
        super()._reconnect_wait()


def new_client(
    client_id: str,
    *,
    user: str | None = None,
    password: str | None = None,
    tls: pki.Identity | None = None,
    mqtt5: bool = True,
    userdata: Any = None,
) -> mqtt.Client:
    """A paho client (callback API 2), not yet connected: MQTT 5 unless `mqtt5` is False (a
    third-party broker such as Zigbee2MQTT's), logged in as `user` if given, with mutual TLS
    from a grid identity if `tls` is given, reconnecting with the one policy."""
    client = _BackoffClient(
        CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=mqtt.MQTTv5 if mqtt5 else mqtt.MQTTv311,
        userdata=userdata,
        # Equal jitter waits [d/2, d]: starting from 2 x the minimum keeps the first wait at
        # RECONNECT_MIN_S or more, as paho's own policy did.
        backoff=Backoff(first_s=2 * RECONNECT_MIN_S, cap_s=RECONNECT_MAX_S),
    )
    if user is not None:
        client.username_pw_set(user, password)
    if tls is not None:
        client.tls_set(ca_certs=str(tls.ca), certfile=str(tls.cert), keyfile=str(tls.key))
    return client


def refused_login(reason: Any) -> bool:
    """Whether a CONNACK reason (paho's ReasonCode) refuses our credentials: final, unlike a
    broker that is busy or not up yet."""
    return getattr(reason, "value", None) in REFUSED_LOGIN


def publish_properties(spec: TopicSpec) -> Properties | None:
    """The MQTT 5 properties a publish on `spec`'s topic carries: its expiry, if it has one."""
    if not spec.expiry_s:
        return None
    props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]  # paho: untyped init
    props.MessageExpiryInterval = int(spec.expiry_s)
    return props


OnMessage = Callable[[str, Any], None]


class UnitLink:
    """One unit's MQTT session with birth, Will, backoff and validated delivery."""

    def __init__(
        self,
        *,
        node: str,
        unit: str,
        broker: str,
        password: str,
        meta: messages.UnitMeta,
        keepalive_s: int = 5,
        subscriptions: tuple[str, ...] = (),
        on_message: OnMessage | None = None,
    ) -> None:
        self.node = node
        self.unit = unit
        self.meta = meta
        self._host, self._port = messages.parse_uri(broker)
        self._subscriptions = subscriptions
        self._on_message = on_message
        self.connected = threading.Event()
        self.refused: str | None = None
        self.births = 0
        self._state_topic = render("unit_state", node=node, unit=unit)
        self._c = new_client(f"{node}.{unit}", user=unit, password=password)
        offline = messages.UnitState(state="offline", bd_seq=meta.bd_seq)
        self._c.will_set(self._state_topic, messages.encode(offline), qos=1, retain=True)
        self._c.on_connect = self._on_connect
        self._c.on_disconnect = self._on_disconnect
        self._c.on_message = self._on_paho_message
        self._keepalive_s = keepalive_s

    def start(self, timeout_s: float = 10.0) -> None:
        """Connect (the network loop retries with backoff); BrokerError if refused or silent."""
        try:
            self._c.connect(self._host, self._port, keepalive=self._keepalive_s)
        except OSError as exc:
            raise BrokerError(
                f"unit {self.node}/{self.unit}: cannot reach {self._host}:{self._port}: {exc}"
            ) from None
        self._c.loop_start()
        if not self.connected.wait(timeout_s) or self.refused:
            self._c.loop_stop()
            raise BrokerError(
                f"unit {self.node}/{self.unit}: broker {self._host}:{self._port} "
                f"{'refused: ' + self.refused if self.refused else 'did not answer'}"
            )

    def _on_connect(self, c: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if reason.is_failure:
            self.refused = str(reason)
            _log.error("node=%s unit=%s connection refused: %s", self.node, self.unit, reason)
            self.connected.set()
            return
        for pattern in self._subscriptions:
            c.subscribe(pattern, qos=1)
        # Birth on every (re)connect: a restarted broker without persistence learns us again.
        c.publish(
            render("unit_meta", node=self.node, unit=self.unit),
            messages.encode(self.meta),
            qos=1,
            retain=True,
        )
        online = messages.UnitState(state="online", bd_seq=self.meta.bd_seq)
        c.publish(self._state_topic, messages.encode(online), qos=1, retain=True)
        self.births += 1
        _log.info(
            "node=%s unit=%s online (bd_seq %d, birth %d)",
            self.node,
            self.unit,
            self.meta.bd_seq,
            self.births,
        )
        self.connected.set()

    def _on_disconnect(self, _c: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        self.connected.clear()
        if reason.is_failure or reason.value != 0:
            _log.warning(
                "node=%s unit=%s link lost (%s); reconnecting with backoff",
                self.node,
                self.unit,
                reason,
            )

    def _on_paho_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            decoded = messages.decode(msg.topic, msg.payload)
        except InvalidMessage as exc:
            _log.warning("node=%s unit=%s dropped invalid message: %s", self.node, self.unit, exc)
            return
        problem = _stale_or_planted(msg, decoded, time.time())
        if problem is not None:
            _log.warning("node=%s unit=%s dropped %s: %s", self.node, self.unit, msg.topic, problem)
            return
        if self._on_message is not None:
            try:
                self._on_message(msg.topic, decoded)
            except Exception:  # a handler bug must not kill the network thread
                _log.exception(
                    "node=%s unit=%s handler failed on %s", self.node, self.unit, msg.topic
                )

    def publish(self, topic_name: str, msg: Any, **params: str) -> None:
        """Publish `msg` on the named topic with the contract's QoS and retention."""
        spec = CONTRACT.topic(topic_name)
        topic = spec.render(node=self.node, unit=self.unit, **params)
        self._c.publish(topic, messages.encode(msg), qos=spec.qos, retain=spec.retained)

    def stop(self) -> None:
        """Clean stop: announce offline (the Will is not sent on a clean disconnect)."""
        offline = messages.UnitState(state="offline", bd_seq=self.meta.bd_seq)
        if self.connected.is_set():
            info = self._c.publish(self._state_topic, messages.encode(offline), qos=1, retain=True)
            info.wait_for_publish(2.0)
        self._c.disconnect()
        self._c.loop_stop()


# How far a command's sequence number may run ahead of the wall clock in milliseconds. The
# governance numbers commands from its start time in ms, one more per command, so an honest seq
# stays near "now"; a seq far beyond would lock the actuator out of every later command.
SEQ_AHEAD_MS = 600_000


def _stale_or_planted(msg: mqtt.MQTTMessage, decoded: Any, now_s: float) -> str | None:
    """Why a delivered message must not be acted on (None if it may)."""
    spec, _ = CONTRACT.match(msg.topic)
    if msg.retain and not spec.retained:
        # The contract says this topic is never retained: what the broker hands out on
        # subscribe was planted there, or is left from another session.
        return "retained on a topic the contract says is not retained"
    if isinstance(decoded, messages.Command) and decoded.seq > now_s * 1000 + SEQ_AHEAD_MS:
        return (
            f"command seq {decoded.seq} is implausibly far ahead (expected at most now in ms"
            f" + {SEQ_AHEAD_MS})"
        )
    return None
