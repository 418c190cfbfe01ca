"""ACLs and authentication against real brokers, in both backends (process and container).

Each forbidden publish is followed by an allowed marker publish from the same client; a watcher
collects everything up to the marker and sees the marker and not the forbidden message. That
proves the forbidden one did not arrive: a broker forwards one client's messages in order.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from redy import messages, pki
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


def _peer(broker: Any, name: str) -> pki.Identity:
    """A certificate of the broker's grid CA for node `name` (a peer, honest or not)."""
    return pki.issue(broker.config.state_dir, name, ["127.0.0.1"])


def test_every_account_is_accepted_with_its_own_password(node: Any, mqtt_client: Any) -> None:
    for user in ("governance", "operator", *UNITS):
        c = mqtt_client(node.port_for(user), user, node.credentials.password(user))
        assert c.refused is None, user
    peer = mqtt_client(node.grid_port, None, None, "gas-1", _peer(node, "gas-1"))
    assert peer.refused is None


def test_wrong_password_is_refused(node: Any, mqtt_client: Any) -> None:
    c = mqtt_client(node.unit_port, "pv-meter", "not-the-password")
    assert c.refused is not None and "authori" in c.refused.lower()


def test_another_units_password_is_refused(node: Any, mqtt_client: Any) -> None:
    c = mqtt_client(node.unit_port, "pv-meter", node.credentials.password("load-meter"))
    assert c.refused is not None and "authori" in c.refused.lower()


def test_anonymous_is_refused(node: Any, mqtt_client: Any) -> None:
    c = mqtt_client(node.port, None, None)
    assert c.refused is not None and "authori" in c.refused.lower()


def _refused_or_silent(connect: Any) -> bool:
    try:
        return connect().refused is not None
    except (TimeoutError, OSError):  # the TLS handshake failed: no CONNACK ever comes
        return True


def test_plain_mqtt_and_passwords_do_not_open_the_grid_listener(
    node: Any, mqtt_client: Any
) -> None:
    assert _refused_or_silent(lambda: mqtt_client(node.grid_port, None, None, "gas-1"))
    for user in ("pv-meter", "governance", "operator"):
        pw = node.credentials.password(user)
        assert _refused_or_silent(lambda u=user, p=pw: mqtt_client(node.grid_port, u, p)), user


def test_a_certificate_of_another_grid_is_refused(
    node: Any, mqtt_client: Any, tmp_path: Path
) -> None:
    stranger = pki.issue(tmp_path / "other-grid", "gas-1", ["127.0.0.1"])  # its own CA
    mine = _peer(node, "gas-1")
    forged = pki.Identity(ca=mine.ca, cert=stranger.cert, key=stranger.key)
    assert _refused_or_silent(lambda: mqtt_client(node.grid_port, None, None, "gas-1", forged))


def test_a_peer_cannot_take_over_another_peers_session(node: Any, mqtt_client: Any) -> None:
    """The grid listener makes the certificate's CN the client id: connecting with another
    node's client id does not knock that node off."""
    honest = mqtt_client(node.grid_port, None, None, "gas-1", _peer(node, "gas-1"))
    evil = _peer(node, "evil")
    for _ in range(3):
        mqtt_client(node.grid_port, None, None, "gas-1", evil)
    marker = render("gossip", node="house-1", peer="gas-1")
    honest.publish(marker, b"{}")  # still connected: its publish is acknowledged
    assert honest.c.is_connected()


def test_a_unit_cannot_take_over_another_units_session(node: Any, mqtt_client: Any) -> None:
    """On the units' listener an account's name is its client id: the pv meter connecting with
    the heater's client id (and with the governance unit's) knocks nobody off."""
    heater = mqtt_client(node.unit_port, "heater", node.credentials.password("heater"))
    governance = mqtt_client(node.port, "governance", node.credentials.password("governance"))
    meter_pw = node.credentials.password("pv-meter")
    for victim in ("heater", "governance", "heater"):
        assert mqtt_client(node.unit_port, "pv-meter", meter_pw, victim).refused is None
    heater.publish(render("actuator_status", node="house-1", unit="heater"), b"{}")
    governance.publish(render("node_state", node="house-1"), b"{}")
    assert heater.c.is_connected() and governance.c.is_connected()


def test_units_have_no_account_on_the_trusted_listener(node: Any, mqtt_client: Any) -> None:
    """The governance unit's and operators' listener lets them pick client ids; no unit can
    log in there, and they cannot log in on the units' listener either."""
    for unit in UNITS:
        c = mqtt_client(node.port, unit, node.credentials.password(unit), "governance")
        assert c.refused is not None, unit
    for user in ("governance", "operator"):
        c = mqtt_client(node.unit_port, user, node.credentials.password(user))
        assert c.refused is not None, user


def test_detection_unit_cannot_publish_a_command_or_another_units_measurement(
    node: Any, watcher: Any, mqtt_client: Any
) -> None:
    meter = mqtt_client(node.unit_port, "pv-meter", node.credentials.password("pv-meter"))
    meter.publish(render("command", node="house-1", unit="heater"), _command(1))
    meter.publish(render("measurement", node="house-1", unit="load-meter"), _measurement(1))
    meter.publish(render("unit_state", node="house-1", unit="load-meter"), b"offline")
    marker = render("measurement", node="house-1", unit="pv-meter")
    meter.publish(marker, _measurement(2))
    assert _topics(watcher.received_until(marker)) == [marker]


def test_action_unit_receives_only_its_own_commands(node: Any, mqtt_client: Any) -> None:
    heater = mqtt_client(node.unit_port, "heater", node.credentials.password("heater"))
    heater.subscribe("redy/house-1/action/+/command")
    governance = mqtt_client(node.port, "governance", node.credentials.password("governance"))
    governance.publish(render("command", node="house-1", unit="battery"), _command(1))
    own = render("command", node="house-1", unit="heater")
    governance.publish(own, _command(2))
    got = heater.received_until(own)
    assert [(m.topic, messages.decode(m.topic, m.payload).seq) for m in got] == [(own, 2)]


def test_action_unit_cannot_command_another_unit(node: Any, watcher: Any, mqtt_client: Any) -> None:
    heater = mqtt_client(node.unit_port, "heater", node.credentials.password("heater"))
    heater.publish(render("command", node="house-1", unit="battery"), _command(7))
    heater.publish(render("command", node="house-1", unit="heater"), _command(8))
    marker = render("unit_state", node="house-1", unit="heater")
    heater.publish(marker, b"online")
    assert _topics(watcher.received_until(marker)) == [marker]


def test_peer_writes_only_its_own_topics_on_the_grid_listener(
    node: Any, watcher: Any, mqtt_client: Any
) -> None:
    peer = mqtt_client(node.grid_port, None, None, "gas-1", _peer(node, "gas-1"))
    assert peer.refused is None
    state = b'{"not": "checked by the broker"}'
    forbidden = [
        render("neighbour_state", node="house-1", peer="factory-1"),  # posing as another peer
        render("gossip", node="house-1", peer="factory-1"),
        render("shuffle", node="house-1", peer="factory-1"),
        render("shuffle_reply", node="house-1", peer="factory-1"),
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
        render("gossip", node="house-1", peer="gas-1"),
        render("shuffle", node="house-1", peer="gas-1"),
        render("shuffle_reply", node="house-1", peer="gas-1"),
    ]
    for topic in allowed:
        peer.publish(topic, state)
    assert _topics(watcher.received_until(allowed[-1])) == allowed


def test_peer_reads_descriptor_and_view_but_not_measurements(
    node: Any, watcher: Any, mqtt_client: Any
) -> None:
    governance = mqtt_client(node.port, "governance", node.credentials.password("governance"))
    descriptor = render("descriptor", node="house-1")
    governance.publish(descriptor, b'{"retained": true}', retain=True)
    peer = mqtt_client(node.grid_port, None, None, "gas-1", _peer(node, "gas-1"))
    peer.subscribe("redy/house-1/#")
    meter = mqtt_client(node.unit_port, "pv-meter", node.credentials.password("pv-meter"))
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
