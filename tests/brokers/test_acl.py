"""ACLs and authentication against real brokers, in both backends (process and container).

Each forbidden publish is followed by an allowed marker publish from the same client; a watcher
collects everything up to the marker and sees the marker and not the forbidden message. That
proves the forbidden one did not arrive: a broker forwards one client's messages in order.
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


def _topics(received: list[Any]) -> list[str]:
    return [m.topic for m in received]


@pytest.fixture
def node(start_broker: Any) -> Any:
    return start_broker("house-1", UNITS)


@pytest.fixture
def watcher(node: Any, mqtt_client: Any) -> Any:
    """The operator account, subscribed to the whole node: sees what the broker let through."""
    w = mqtt_client(node.port, "operator", node.credentials.password("operator"))
    w.subscribe("redy/house-1/#")
    return w


def test_every_account_is_accepted_with_its_own_password(node: Any, mqtt_client: Any) -> None:
    for user in ("governance", "operator", *UNITS):
        c = mqtt_client(node.port, user, node.credentials.password(user))
        assert c.refused is None, user
    peer = mqtt_client(node.grid_port, "grid", node.credentials.grid_password, client_id="gas-1")
    assert peer.refused is None


def test_wrong_password_is_refused(node: Any, mqtt_client: Any) -> None:
    c = mqtt_client(node.port, "pv-meter", "not-the-password")
    assert c.refused is not None and "authori" in c.refused.lower()


def test_another_units_password_is_refused(node: Any, mqtt_client: Any) -> None:
    c = mqtt_client(node.port, "pv-meter", node.credentials.password("load-meter"))
    assert c.refused is not None and "authori" in c.refused.lower()


def test_anonymous_is_refused(node: Any, mqtt_client: Any) -> None:
    c = mqtt_client(node.port, None, None)
    assert c.refused is not None and "authori" in c.refused.lower()


def test_anonymous_and_a_wrong_grid_password_are_refused_on_the_grid_listener(
    node: Any, mqtt_client: Any
) -> None:
    assert mqtt_client(node.grid_port, None, None, client_id="gas-1").refused is not None
    wrong = mqtt_client(node.grid_port, "grid", "not-the-password", client_id="gas-1")
    assert wrong.refused is not None


def test_local_accounts_do_not_open_the_grid_listener(node: Any, mqtt_client: Any) -> None:
    for user in ("pv-meter", "governance", "operator"):
        c = mqtt_client(node.grid_port, user, node.credentials.password(user))
        assert c.refused is not None, user


def test_the_grid_credential_does_not_open_the_local_listener(node: Any, mqtt_client: Any) -> None:
    c = mqtt_client(node.port, "grid", node.credentials.grid_password)
    assert c.refused is not None


def test_detection_unit_cannot_publish_a_command_or_another_units_measurement(
    node: Any, watcher: Any, mqtt_client: Any
) -> None:
    meter = mqtt_client(node.port, "pv-meter", node.credentials.password("pv-meter"))
    meter.publish(render("command", node="house-1", unit="heater"), _command(1))
    meter.publish(render("measurement", node="house-1", unit="load-meter"), _measurement(1))
    meter.publish(render("unit_state", node="house-1", unit="load-meter"), b"offline")
    marker = render("measurement", node="house-1", unit="pv-meter")
    meter.publish(marker, _measurement(2))
    assert _topics(watcher.received_until(marker)) == [marker]


def test_action_unit_receives_only_its_own_commands(node: Any, mqtt_client: Any) -> None:
    heater = mqtt_client(node.port, "heater", node.credentials.password("heater"))
    heater.subscribe("redy/house-1/action/+/command")
    governance = mqtt_client(node.port, "governance", node.credentials.password("governance"))
    governance.publish(render("command", node="house-1", unit="battery"), _command(1))
    own = render("command", node="house-1", unit="heater")
    governance.publish(own, _command(2))
    got = heater.received_until(own)
    assert [(m.topic, messages.decode(m.topic, m.payload).seq) for m in got] == [(own, 2)]


def test_action_unit_cannot_command_another_unit(node: Any, watcher: Any, mqtt_client: Any) -> None:
    heater = mqtt_client(node.port, "heater", node.credentials.password("heater"))
    heater.publish(render("command", node="house-1", unit="battery"), _command(7))
    heater.publish(render("command", node="house-1", unit="heater"), _command(8))
    marker = render("unit_state", node="house-1", unit="heater")
    heater.publish(marker, b"online")
    assert _topics(watcher.received_until(marker)) == [marker]


def test_peer_writes_only_its_own_topics_on_the_grid_listener(
    node: Any, watcher: Any, mqtt_client: Any
) -> None:
    peer = mqtt_client(node.grid_port, "grid", node.credentials.grid_password, client_id="gas-1")
    assert peer.refused is None
    state = b'{"not": "checked by the broker"}'
    forbidden = [
        render("neighbour_state", node="house-1", peer="factory-1"),  # posing as another peer
        render("command", node="house-1", unit="heater"),
        render("setpoint", node="house-1"),
        render("view", node="house-1"),
        render("descriptor", node="house-1"),
        render("measurement", node="house-1", unit="pv-meter"),
    ]
    for topic in forbidden:
        peer.publish(topic, state)
    allowed = [
        render("neighbour_state", node="house-1", peer="gas-1"),
        render("gossip", node="house-1"),
        render("shuffle", node="house-1"),
        render("shuffle_reply", node="house-1"),
    ]
    for topic in allowed:
        peer.publish(topic, state)
    assert _topics(watcher.received_until(allowed[-1])) == allowed


def test_a_client_id_with_a_slash_cannot_widen_the_peer_pattern(
    node: Any, watcher: Any, mqtt_client: Any
) -> None:
    peer = mqtt_client(node.grid_port, "grid", node.credentials.grid_password, client_id="gas-1/x")
    peer.publish("redy/house-1/grid/neighbours/gas-1/x", b"{}")
    marker = render("gossip", node="house-1")
    peer.publish(marker, b"{}")
    assert _topics(watcher.received_until(marker)) == [marker]


def test_peer_reads_descriptor_and_view_but_not_measurements(
    node: Any, watcher: Any, mqtt_client: Any
) -> None:
    governance = mqtt_client(node.port, "governance", node.credentials.password("governance"))
    descriptor = render("descriptor", node="house-1")
    governance.publish(descriptor, b'{"retained": true}', retain=True)
    peer = mqtt_client(node.grid_port, "grid", node.credentials.grid_password, client_id="gas-1")
    peer.subscribe("redy/house-1/#")
    meter = mqtt_client(node.port, "pv-meter", node.credentials.password("pv-meter"))
    measurement = render("measurement", node="house-1", unit="pv-meter")
    meter.publish(measurement, _measurement(2))
    # mosquitto routes messages one at a time: once the watcher has the measurement, it was
    # offered to the peer too, before the governance's next publish (the peer's marker).
    watcher.wait_for(measurement)
    view = render("view", node="house-1")
    governance.publish(view, b'{"marker": true}', retain=True)
    assert _topics(peer.received_until(view)) == [descriptor, view]


def test_retained_messages_survive_a_broker_restart(node: Any, mqtt_client: Any) -> None:
    governance = mqtt_client(node.port, "governance", node.credentials.password("governance"))
    view = messages.View(node="house-1", ts_s=1.0, entries=())
    governance.publish(render("view", node="house-1"), messages.encode(view), retain=True)
    governance.close()
    node.stop()
    assert not node.alive()
    node.start()
    operator = mqtt_client(node.port, "operator", node.credentials.password("operator"))
    operator.subscribe(render("view", node="house-1"))
    got = operator.wait_for(render("view", node="house-1"))
    assert got.retain and messages.decode(got.topic, got.payload) == view
