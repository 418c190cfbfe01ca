"""Home Assistant MQTT discovery for ReDy nodes: `redy ha discovery`.

A node's broker bridges `redy/<node>/#` one way to a site broker (`redy broker run
--site-broker`, rendered by redy.brokers). On that site broker, retained discovery configs
(`homeassistant/sensor/redy_<node>/<object>/config`) make every unit and the node itself appear
in Home Assistant by themselves. The configs are generated from topics.yaml: every number field
with a unit of a measurement and of the node's energy state becomes a sensor —

    kW  -> device_class power,  state_class measurement
    kWh -> device_class energy, state_class total_increasing (a meter's cumulative energy, as a
           magnitude: consumption counts up too) or, for storage, energy_storage / measurement
    EUR/MWh -> a plain sensor with that unit; soc -> device_class battery in %

with availability from the unit's retained online/offline state (its Last Will), and a device
per node. `discovery_configs` is pure; the command reads the node's retained unit births to know
its units and publishes the configs, retained, to the site broker.
"""

from __future__ import annotations

import queue
import time
from collections.abc import Mapping
from typing import Any

import click
import orjson

from redy import messages
from redy.cli_auth import password_for, with_auth
from redy.errors import InvalidMessage
from redy.topics import CONTRACT, render, subscription
from redy.transport.session import Received, connect, subscribe

DISCOVERY_PREFIX = "homeassistant"
_MANUFACTURER = "ReDy Grid"
# The node's own sensors go stale (unavailable) when its governance stops publishing.
_NODE_EXPIRE_AFTER_S = 60


def _object_id(*parts: str) -> str:
    return "_".join(p.replace("-", "_") for p in parts)


def _sensor(field: str, unit: str | None, quantity: str | None) -> dict[str, Any] | None:
    """Home Assistant's classes for a field of topics.yaml, or None if it is not a sensor."""
    if field == "soc":
        return {"device_class": "battery", "unit_of_measurement": "%", "state_class": "measurement",
                "value_template": "{{ (value_json.soc * 100) | round(1) }}"}  # fmt: skip
    if unit == "kW":
        return {"device_class": "power", "unit_of_measurement": "kW", "state_class": "measurement"}
    if unit == "kWh":
        if quantity in ("storage", "mixed") or field.startswith("storage"):
            return {"device_class": "energy_storage", "unit_of_measurement": "kWh",
                    "state_class": "measurement"}  # fmt: skip
        return {"device_class": "energy", "unit_of_measurement": "kWh",
                "state_class": "total_increasing",
                "value_template": f"{{{{ value_json.{field} | abs }}}}"}  # fmt: skip
    if unit == "EUR/MWh":
        return {"unit_of_measurement": "EUR/MWh", "state_class": "measurement"}
    return None


def _fields(type_name: str) -> list[tuple[str, str | None]]:
    """(name, unit) of the scalar number fields of a message type."""
    return [
        (f.name, f.unit)
        for f in CONTRACT.types[type_name].fields
        if f.type in ("float", "int") and (f.unit not in (None, "1", "s") or f.name == "soc")
    ]


def discovery_configs(
    node: str, kind: str, units: Mapping[str, messages.UnitMeta]
) -> dict[str, dict[str, Any]]:
    """Discovery topic -> config payload for a node's detection units and its energy state."""
    device = {
        "identifiers": [f"redy_{node.replace('-', '_')}"],
        "name": node,
        "manufacturer": _MANUFACTURER,
        "model": kind,
    }
    node_id = device["identifiers"][0]
    out: dict[str, dict[str, Any]] = {}

    def add(object_id: str, name: str, state_topic: str, field: str, classes: dict[str, Any],
            extra: dict[str, Any]) -> None:  # fmt: skip
        config = {
            "name": name,
            "unique_id": f"{node_id}_{object_id}",
            "object_id": f"{node_id}_{object_id}",
            "state_topic": state_topic,
            "value_template": f"{{{{ value_json.{field} }}}}",
            "device": device,
            **classes,
            **extra,
        }
        out[f"{DISCOVERY_PREFIX}/sensor/{node_id}/{object_id}/config"] = config

    for unit, meta in sorted(units.items()):
        if meta.role != "detection":
            continue
        availability = {
            "availability_topic": render("unit_state", node=node, unit=unit),
            "availability_template": "{{ value_json.state }}",
            "payload_available": "online",
            "payload_not_available": "offline",
        }
        for field, field_unit in _fields("Measurement"):
            classes = _sensor(field, field_unit, meta.quantity)
            if classes is None or (field == "soc" and meta.quantity != "storage"):
                continue
            add(_object_id(unit, field), f"{unit} {field}",
                render("measurement", node=node, unit=unit), field, classes, availability)  # fmt: skip
    for field, field_unit in _fields("NodeEnergyState"):
        classes = _sensor(field, field_unit, None)
        if classes is not None:
            add(_object_id("node", field), field, render("node_state", node=node), field, classes,
                {"expire_after": _NODE_EXPIRE_AFTER_S})  # fmt: skip
    return out


@click.group("ha")
def ha() -> None:
    """Home Assistant: MQTT discovery configs generated from topics.yaml."""


@ha.command("discovery")
@click.argument("node_id", metavar="NODE")
@with_auth
@click.option("--site-broker", required=True, envvar="REDY_SITE_BROKER",
              help="The site broker Home Assistant reads (the node's bridge target).")  # fmt: skip
@click.option("--site-user", default=None, envvar="REDY_SITE_USER")
@click.option("--site-password", default=None, envvar="REDY_SITE_PASSWORD")
@click.option("--dry-run", is_flag=True, help="Print the configs as JSON lines, publish nothing.")
def discovery(
    node_id: str,
    broker: str,
    user: str,
    password: str | None,
    credentials: str | None,
    site_broker: str,
    site_user: str | None,
    site_password: str | None,
    dry_run: bool,
) -> None:
    """Publish (retained) the discovery configs of NODE's units to the site broker.

    NODE's units are read from its broker's retained births (units/+/meta) and descriptor.
    """
    inbox: queue.Queue[Received] = queue.Queue()
    with connect(broker, user, password_for(user, password, credentials), inbox) as client:
        for pattern in (
            subscription("unit_meta", node=node_id),
            render("descriptor", node=node_id),
        ):
            subscribe(client, pattern)
        time.sleep(1.0)  # retained messages arrive at once; wildcards give no count to wait for
    found = []
    while not inbox.empty():
        r = inbox.get()
        try:
            found.append(messages.decode(r.topic, r.payload))
        except InvalidMessage as exc:
            click.echo(f"INVALID {exc}", err=True)
    units = {m.unit: m for m in found if isinstance(m, messages.UnitMeta)}
    desc = next((m for m in found if isinstance(m, messages.NodeDescriptor)), None)
    configs = discovery_configs(node_id, desc.kind if desc else "generic", units)
    if dry_run:
        for topic, config in configs.items():
            click.echo(orjson.dumps({"topic": topic, "config": config}).decode())
        return
    with connect(site_broker, site_user, site_password) as site:
        for topic, config in configs.items():
            site.publish(topic, orjson.dumps(config), qos=1, retain=True).wait_for_publish(5.0)
    click.echo(f"published {len(configs)} discovery configs of {node_id} ({len(units)} units) "
               f"to {site_broker}")  # fmt: skip
