"""Home Assistant: a node bridges its topics one way to a real Mosquitto site broker, and
`redy ha discovery` publishes configs that follow Home Assistant's documented MQTT discovery
schema, whose templates give the right values from the bridged messages."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import jinja2
import jsonschema
import orjson
import pytest

from redy import messages
from redy.brokers import SiteBridge
from redy.topics import render

pytestmark = pytest.mark.integration
REDY = [sys.executable, "-m", "redy"]

# Home Assistant's documented rules (MQTT discovery and sensor device classes,
# home-assistant.io/integrations/mqtt and /integrations/sensor), written here independently:
# topic <prefix>/<component>/[<node_id>/]<object_id>/config with ids in [a-zA-Z0-9_-];
# power in W/kW/MW, energy in Wh/kWh/MWh with state_class total or total_increasing,
# energy_storage in Wh/kWh/MWh, battery in %; a device needs identifiers.
_DISCOVERY_TOPIC = re.compile(r"^homeassistant/sensor/([a-zA-Z0-9_-]+/)?[a-zA-Z0-9_-]+/config$")
_UNITS = {"power": ["W", "kW", "MW"], "energy": ["Wh", "kWh", "MWh"],
          "energy_storage": ["Wh", "kWh", "MWh"], "battery": ["%"]}  # fmt: skip
HA_SENSOR_SCHEMA = {
    "type": "object",
    "required": ["state_topic", "unique_id", "device", "name"],
    "properties": {
        "state_topic": {"type": "string", "minLength": 1},
        "unique_id": {"type": "string", "minLength": 1},
        "value_template": {"type": "string"},
        "availability_topic": {"type": "string"},
        "availability_template": {"type": "string"},
        "payload_available": {"type": "string"},
        "payload_not_available": {"type": "string"},
        "expire_after": {"type": "integer", "minimum": 1},
        "state_class": {"enum": ["measurement", "total", "total_increasing"]},
        "device_class": {"enum": list(_UNITS)},
        "device": {"type": "object", "required": ["identifiers"],
                   "properties": {"identifiers": {"type": "array", "minItems": 1}}},
    },
    "allOf": [
        {"if": {"required": ["device_class"], "properties": {"device_class": {"const": dc}}},
         "then": {"required": ["unit_of_measurement"],
                  "properties": {"unit_of_measurement": {"enum": units}}}}
        for dc, units in _UNITS.items()
    ] + [
        {"if": {"required": ["device_class"], "properties": {"device_class": {"const": "energy"}}},
         "then": {"properties": {"state_class": {"enum": ["total", "total_increasing"]}}}},
    ],
}  # fmt: skip


def _meta(unit: str, quantity: str) -> bytes:
    return messages.encode(messages.UnitMeta(unit=unit, role="detection", device="pv",
                           quantity=quantity, rated_power_kw=6.0, period_s=1.0, bd_seq=1,
                           ts_s=1.0))  # fmt: skip


def test_discovery_configs_follow_home_assistant_and_read_the_bridged_node(
    process_broker: Any, mqtt_client: Any, plain_broker: Any
) -> None:
    site_port = plain_broker()
    b = process_broker("house-1", {"pv-meter": "detection", "battery": "detection",
                                   "heater": "action"},
                       config={"site": SiteBridge(f"mqtt://127.0.0.1:{site_port}")})  # fmt: skip
    pv = mqtt_client(b.unit_port, "pv-meter", b.credentials.password("pv-meter"))
    bat = mqtt_client(b.unit_port, "battery", b.credentials.password("battery"))
    for client, unit, quantity in ((pv, "pv-meter", "production"), (bat, "battery", "storage")):
        client.publish(render("unit_meta", node="house-1", unit=unit), _meta(unit, quantity),
                       retain=True)  # fmt: skip
        client.publish(render("unit_state", node="house-1", unit=unit),
                       messages.encode(messages.UnitState(state="online", bd_seq=1)),
                       retain=True)  # fmt: skip
    done = subprocess.run(
        [*REDY, "ha", "discovery", "house-1", "--broker", b.uri, "--credentials",
         str(b.config.credentials_path), "--site-broker", f"mqtt://127.0.0.1:{site_port}"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr

    ha = mqtt_client(site_port, None, None)
    configs = {t: orjson.loads(m.payload) for t, m in ha.retained("homeassistant/#").items()}
    assert configs, "no discovery config on the site broker"
    for topic, config in configs.items():
        assert _DISCOVERY_TOPIC.match(topic), topic
        jsonschema.validate(config, HA_SENSOR_SCHEMA)
    assert len({c["unique_id"] for c in configs.values()}) == len(configs)
    by_id = {c["unique_id"]: c for c in configs.values()}
    power = by_id["redy_house_1_pv_meter_power_kw"]
    energy = by_id["redy_house_1_pv_meter_energy_kwh"]
    assert (power["device_class"], power["unit_of_measurement"]) == ("power", "kW")
    assert (energy["device_class"], energy["state_class"]) == ("energy", "total_increasing")
    assert power["availability_topic"] == render("unit_state", node="house-1", unit="pv-meter")
    assert by_id["redy_house_1_battery_soc"]["device_class"] == "battery"
    assert not any("heater" in u for u in by_id)  # action units have no measurement

    # the bridge: the node's messages reach the site, where the templates read them
    watch = mqtt_client(site_port, None, None)
    watch.subscribe("redy/#")
    sample = messages.Measurement(seq=1, ts_s=1.0, power_kw=4.2, energy_kwh=-12.5)
    meas_topic = render("measurement", node="house-1", unit="pv-meter")
    pv.publish(meas_topic, messages.encode(sample), qos=0)
    got = watch.wait_for(meas_topic)
    retained_state = {m.topic: m for m in watch.drain()}
    env = jinja2.Environment()
    value_json = orjson.loads(got.payload)
    assert env.from_string(power["value_template"]).render(value_json=value_json) == "4.2"
    assert env.from_string(energy["value_template"]).render(value_json=value_json) == "12.5"
    avail_topic = power["availability_topic"]
    if avail_topic not in retained_state:  # it may have come before the measurement
        fresh = mqtt_client(site_port, None, None)
        fresh.subscribe(avail_topic)
        retained_state[avail_topic] = fresh.wait_for(avail_topic)
    avail = env.from_string(power["availability_template"]).render(
        value_json=orjson.loads(retained_state[avail_topic].payload)
    )
    assert avail == power["payload_available"]

    # read-only toward the node: what the site publishes never reaches the node's broker
    op = mqtt_client(b.port, "operator", b.credentials.password("operator"))
    op.retained("redy/#")  # the retained store, dropped: only what comes after it counts
    ha.publish(
        render("command", node="house-1", unit="heater"), b'{"seq": 9, "ts_s": 1, "on": true}'
    )
    marker = render("measurement", node="house-1", unit="battery")
    bat.publish(marker, messages.encode(sample), qos=0)
    watch.wait_for(marker)  # the bridge has carried traffic since the site's publish
    assert [m.topic for m in op.received_until(marker)] == [marker]


@pytest.mark.pure
def test_the_bridge_section_sends_the_node_out_and_lets_nothing_in() -> None:
    from redy.brokers import bridge_conf

    conf = bridge_conf("house-1", SiteBridge("mqtt://10.0.0.5:1883", "ha", "secret"))
    topics = [line for line in conf.splitlines() if line.startswith("topic ")]
    assert topics == ["topic redy/house-1/# out 1"]
    assert "address 10.0.0.5:1883" in conf and "remote_password secret" in conf


@pytest.mark.e2e
def test_a_launch_file_bridges_its_node_to_the_site_broker(
    tmp_path: Path, mqtt_client: Any, plain_broker: Any, free_port: Any
) -> None:
    site_port = plain_broker()
    port = free_port()
    f = tmp_path / "solo.yaml"
    f.write_text(f"""\
launch:
  - broker: {{node: solo, port: {port}, grid_port: {free_port()}, unit_port: {free_port()}, site_broker: "mqtt://127.0.0.1:{site_port}"}}
  - governance: {{node: solo, kind: eco_house, distant: false, period_s: 0.3}}
  - detection: {{node: solo, name: meter, device: household_load, period_s: 0.3}}
""")
    site = mqtt_client(site_port, None, None)
    site.subscribe("redy/#")
    launch = subprocess.Popen(
        [*REDY, "launch", str(f), "--duration", "30", "--state-dir", str(tmp_path / "s")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        state = site.wait_for(render("unit_state", node="solo", unit="meter"), timeout_s=30)
        assert messages.decode(state.topic, state.payload).state == "online"
        site.wait_for(render("measurement", node="solo", unit="meter"), timeout_s=10)
    finally:
        launch.terminate()
        launch.wait(30)
