"""ACLs and authentication against real brokers, in both backends (process and container).

Each forbidden publish is followed by an allowed marker publish from the same client; the
watcher sees the marker and not the forbidden message, which proves it did not arrive (messages
from one client on one broker are delivered in order).
"""

from __future__ import annotations

from typing import Any

import pytest

from redy import messages
from redy.topics import render

pytestmark = pytest.mark.integration

UNITS = {
    "pv-meter": "detection",
    "load-meter": "detection",
    "heater": "action",
    "battery": "action",
}


def _measurement(seq: int) -> bytes:
    return messages.encode(messages.Measurement(seq=seq, ts_s=1.0, power_kw=2.0, energy_kwh=0.1))


def _command(seq: int) -> bytes:
    return messages.encode(messages.Command(seq=seq, ts_s=1.0, on=True))


@pytest.fixture
def node(start_broker: Any) -> Any:
    return start_broker("house-1", UNITS)


def test_authenticated_unit_is_accepted(node: Any, mqtt_client: Any) -> None:
    c = mqtt_client(node.port, "pv-meter", node.credentials.password("pv-meter"))
    assert c.refused is None


def test_wrong_password_is_refused(node: Any, mqtt_client: Any) -> None:
    c = mqtt_client(node.port, "pv-meter", "not-the-password")
    assert c.refused is not None and "authori" in c.refused.lower()


def test_anonymous_is_refused(node: Any, mqtt_client: Any) -> None:
    c = mqtt_client(node.port, None, None)
    assert c.refused is not None and "authori" in c.refused.lower()


def test_anonymous_is_refused_on_the_grid_listener(node: Any, mqtt_client: Any) -> None:
    c = mqtt_client(node.grid_port, None, None)
    assert c.refused is not None


def test_unit_credentials_do_not_open_the_grid_listener(node: Any, mqtt_client: Any) -> None:
    c = mqtt_client(node.grid_port, "pv-meter", node.credentials.password("pv-meter"))
    assert c.refused is not None


def test_detection_unit_cannot_publish_a_command_or_another_units_measurement(
    node: Any, mqtt_client: Any
) -> None:
    watcher = mqtt_client(node.port, "operator", node.credentials.password("operator"))
    watcher.subscribe("redy/house-1/#")
    meter = mqtt_client(node.port, "pv-meter", node.credentials.password("pv-meter"))
    meter.publish(render("command", node="house-1", unit="heater"), _command(1))
    meter.publish(render("measurement", node="house-1", unit="load-meter"), _measurement(1))
    marker = render("measurement", node="house-1", unit="pv-meter")
    meter.publish(marker, _measurement(2))
    seen = [m.topic for m in watcher.received(1.0)]
    assert marker in seen
    assert seen == [marker]


def test_action_unit_receives_only_its_own_commands(node: Any, mqtt_client: Any) -> None:
    heater = mqtt_client(node.port, "heater", node.credentials.password("heater"))
    heater.subscribe("redy/house-1/action/+/command")
    governance = mqtt_client(node.port, "governance", node.credentials.password("governance"))
    governance.publish(render("command", node="house-1", unit="battery"), _command(1))
    own = render("command", node="house-1", unit="heater")
    governance.publish(own, _command(2))
    seen = [(m.topic, messages.decode(m.topic, m.payload).seq) for m in heater.received(1.0)]
    assert seen == [(own, 2)]


def test_action_unit_cannot_command_another_unit(node: Any, mqtt_client: Any) -> None:
    battery = mqtt_client(node.port, "battery", node.credentials.password("battery"))
    battery.subscribe(render("command", node="house-1", unit="battery"))
    heater = mqtt_client(node.port, "heater", node.credentials.password("heater"))
    heater.publish(render("command", node="house-1", unit="battery"), _command(7))
    assert battery.received(1.0) == []


def test_peer_writes_only_its_own_topics_on_the_grid_listener(node: Any, mqtt_client: Any) -> None:
    watcher = mqtt_client(node.port, "operator", node.credentials.password("operator"))
    watcher.subscribe("redy/house-1/#")
    peer = mqtt_client(node.grid_port, "grid", node.credentials.grid_password, client_id="gas-1")
    assert peer.refused is None
    state = b'{"not": "checked by the broker"}'
    peer.publish(render("neighbour_state", node="house-1", peer="factory-1"), state)  # forged
    peer.publish(render("command", node="house-1", unit="heater"), _command(1))
    peer.publish(render("setpoint", node="house-1"), b'{"seq": 1, "net_kw": 0}')
    peer.publish(render("view", node="house-1"), b"{}")
    own = render("neighbour_state", node="house-1", peer="gas-1")
    peer.publish(own, state)
    gossip = render("gossip", node="house-1")
    peer.publish(gossip, b"{}")
    shuffle = render("shuffle", node="house-1")
    peer.publish(shuffle, b"{}")
    seen = [m.topic for m in watcher.received(1.0)]
    assert seen == [own, gossip, shuffle]


def test_peer_reads_descriptor_and_view_but_not_measurements(node: Any, mqtt_client: Any) -> None:
    governance = mqtt_client(node.port, "governance", node.credentials.password("governance"))
    for name in ("descriptor", "view"):
        governance.publish(render(name, node="house-1"), b'{"retained": true}', retain=True)
    meter = mqtt_client(node.port, "pv-meter", node.credentials.password("pv-meter"))
    meter.publish(render("measurement", node="house-1", unit="pv-meter"), _measurement(1))
    peer = mqtt_client(node.grid_port, "grid", node.credentials.grid_password, client_id="gas-1")
    peer.subscribe("redy/house-1/#")
    meter.publish(render("measurement", node="house-1", unit="pv-meter"), _measurement(2))
    seen = sorted(m.topic for m in peer.received(1.0))
    assert seen == [render("descriptor", node="house-1"), render("view", node="house-1")]


def test_retained_messages_survive_a_broker_restart(node: Any, mqtt_client: Any) -> None:
    governance = mqtt_client(node.port, "governance", node.credentials.password("governance"))
    view = messages.View(node="house-1", ts_s=1.0, entries=())
    governance.publish(render("view", node="house-1"), messages.encode(view), retain=True)
    governance.close()
    node.stop()
    node.start()
    operator = mqtt_client(node.port, "operator", node.credentials.password("operator"))
    operator.subscribe(render("view", node="house-1"))
    got = operator.wait_for(render("view", node="house-1"))
    assert got.retain and messages.decode(got.topic, got.payload) == view
