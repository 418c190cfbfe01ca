"""Zigbee2MQTT: a metering plug bridged from a real Mosquitto playing the Zigbee2MQTT broker to
the node's broker, with messages shaped as Zigbee2MQTT's documentation shows them: state JSON on
`zigbee2mqtt/<name>`, commands on `.../set`, retained availability and bridge state."""

from __future__ import annotations

import time
from typing import Any

import orjson
import pytest
from conftest import NODE, until

from redy import messages
from redy.topics import render

pytestmark = pytest.mark.e2e

UNITS = {"plug-meter": "detection", "plug": "action"}
PLUG = "living-room/heater-plug"  # friendly names may hold '/' (Zigbee2MQTT groups them so)
SEEN = "2026-03-01T12:00:00.000Z"
SEEN_UNIX = 1772366400.0


def state(**fields: Any) -> bytes:
    """A metering plug's state as Zigbee2MQTT publishes it."""
    base = {"state": "ON", "power": 2350, "energy": 12.34, "voltage": 231, "current": 10.2,
            "linkquality": 120, "last_seen": SEEN}  # fmt: skip
    return orjson.dumps({**base, **fields})


class Bridge:
    """Plays Zigbee2MQTT on its broker: bridge state, the plug's availability and state."""

    def __init__(self, client: Any) -> None:
        self.c = client
        self.c.publish("zigbee2mqtt/bridge/state", b'{"state":"online"}', retain=True)
        self.available(True)
        self.c.subscribe(f"zigbee2mqtt/{PLUG}/set")

    def available(self, online: bool) -> None:
        payload = {"state": "online" if online else "offline"}
        self.c.publish(f"zigbee2mqtt/{PLUG}/availability", orjson.dumps(payload), retain=True)

    def report(self, payload: bytes) -> None:
        self.c.publish(f"zigbee2mqtt/{PLUG}", payload, retain=True)


def _unit(units: Any, role: str, name: str, port: int) -> None:
    units.start(
        role, name, "z2m_plug", "--period-s", "0.1",
        broker=f"mqtt://127.0.0.1:{port}", name=PLUG, rated_kw=3.68,
    )  # fmt: skip


def test_plug_power_energy_and_timestamps_reach_the_node_broker(
    node: Any, z2m_broker: Any, mqtt_client: Any
) -> None:
    units, op = node
    bridge = Bridge(mqtt_client(z2m_broker.port, None, None))
    bridge.report(state())
    _unit(units, "detection", "plug-meter", z2m_broker.port)
    topic = render("measurement", node=NODE, unit="plug-meter")
    first = until(lambda: op.latest(topic), what="a measurement")
    assert first.power_kw == pytest.approx(-2.35)  # a plug's load consumes
    assert first.ts_s == SEEN_UNIX and first.energy_kwh == 0.0
    bridge.report(state(energy=12.84, power=1200, last_seen="2026-03-01T12:00:30.000Z"))
    later = until(lambda: (m := op.latest(topic)) and m.seq == 1 and m, what="the next state")
    assert later.power_kw == pytest.approx(-1.2) and later.energy_kwh == pytest.approx(-0.5)
    assert later.ts_s == SEEN_UNIX + 30
    time.sleep(0.5)  # five polls with nothing new from the plug: no repeated sample
    assert len(op.all(topic)) == 2


def test_commands_switch_the_plug_through_its_set_topic(
    node: Any, z2m_broker: Any, mqtt_client: Any
) -> None:
    units, op = node
    bridge = Bridge(mqtt_client(z2m_broker.port, None, None))
    bridge.report(state())
    _unit(units, "action", "plug", z2m_broker.port)
    status = render("actuator_status", node=NODE, unit="plug")
    on = until(lambda: op.latest(status), what="a status")
    assert on.on and on.power_kw == pytest.approx(-2.35)
    assert on.min_kw == pytest.approx(-2.35) and on.max_kw == 0.0
    op.client.publish(
        render("command", node=NODE, unit="plug"),
        messages.encode(messages.Command(seq=1, ts_s=time.time(), on=False)),
    )
    sent = bridge.c.wait_for(f"zigbee2mqtt/{PLUG}/set")
    assert orjson.loads(sent.payload) == {"state": "OFF"}
    bridge.report(state(state="OFF", power=0, last_seen="2026-03-01T12:01:00.000Z"))
    off = until(lambda: (s := op.latest(status)) and not s.on and s, what="the plug off")
    assert off.seq == 1 and off.power_kw == 0.0
    assert off.min_kw == pytest.approx(-2.35)  # it can take its load back


def test_offline_plug_bridge_broker_or_bad_state_turn_the_unit_offline_and_publish_nothing_wrong(
    node: Any, z2m_broker: Any, mqtt_client: Any
) -> None:
    units, op = node
    bridge = Bridge(mqtt_client(z2m_broker.port, None, None))
    bridge.report(state())
    _unit(units, "detection", "plug-meter", z2m_broker.port)
    measurement = render("measurement", node=NODE, unit="plug-meter")
    unit_state = render("unit_state", node=NODE, unit="plug-meter")
    until(lambda: op.latest(measurement), what="a measurement")

    def goes(expected: str) -> None:
        until(lambda: (s := op.latest(unit_state)) and s.state == expected, what=expected)

    bridge.available(False)
    goes("offline")
    assert "Zigbee2MQTT says the device is offline" in units.log("plug-meter")
    bridge.available(True)
    goes("online")
    bridge.c.publish("zigbee2mqtt/bridge/state", b'{"state":"offline"}', retain=True)
    goes("offline")
    assert "bridge is offline" in units.log("plug-meter")
    bridge.c.publish("zigbee2mqtt/bridge/state", b'{"state":"online"}', retain=True)
    goes("online")
    faults = [
        (b"{not json", "state is not JSON"),
        (state(power="2350"), "'power' must be a number (W)"),
        (state(power=-40), "'power' -40 W is negative"),
        (state(power=9000), "out of range"),  # 9 kW through a 3.68 kW plug
        (orjson.dumps({"state": "ON", "linkquality": 80}), "has no 'power'"),
    ]
    for i, (payload, error) in enumerate(faults):
        bridge.report(payload)
        goes("offline")
        assert error in units.log("plug-meter")
        bridge.report(state(last_seen=f"2026-03-01T12:0{i + 1}:00.000Z"))
        goes("online")
    z2m_broker.stop()  # the Zigbee2MQTT broker itself goes away
    goes("offline")
    assert "not connected" in units.log("plug-meter")
    published = op.all(measurement)
    assert len(published) > len(faults)
    assert all(m.power_kw == pytest.approx(-2.35) for m in published)
