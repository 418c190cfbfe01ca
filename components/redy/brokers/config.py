"""What a node's broker is: its ports, listeners, accounts and site bridge."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

from redy.errors import BrokerError, InvalidMessage
from redy.pki import Grant
from redy.topics import UNIT_ROLES, check_id

DEFAULT_IMAGE = "redy/mosquitto:2"
GRID_PORT_OFFSET = 10000
# Units' listener at port + 5000: below the grid listener's plan, and for the usual ports
# (1883 -> 6883, 18841 -> 23841) below Linux's ephemeral range (32768..), where a listener
# can find its port held by some outgoing connection.
UNIT_PORT_OFFSET = 5000
# Accounts every node has besides its units: no unit may take one of these names.
RESERVED_USERS = ("governance", "operator", "grid")
# The node's trusted accounts, on the local listener; units are on the units' listener.
TRUSTED_USERS = ("governance", "operator")
CONTAINER_DIR = "/mosquitto/config/node"
CONTAINER_DATA = "/mosquitto/data"
READY_TIMEOUT_S = 15.0


def image_name() -> str:
    """The mosquitto image of the container backend (REDY_MOSQUITTO_IMAGE, e.g. the official
    eclipse-mosquitto:2 where a registry is reachable)."""
    return os.environ.get("REDY_MOSQUITTO_IMAGE", DEFAULT_IMAGE)


@attrs.frozen
class SiteBridge:
    """A one-way Mosquitto bridge from a node's broker to a site broker (Home Assistant's, say):
    the node's topics go out, nothing comes back in, so the site can read the node and never
    write to it. Bridges are fixed at broker start (Mosquitto 2.0 cannot add them at run time)."""

    uri: str = attrs.field()
    username: str | None = None
    password: str | None = None

    @uri.validator
    def _check_uri(self, _attribute: Any, uri: str) -> None:
        from redy.messages import parse_uri

        try:
            parse_uri(uri)
        except InvalidMessage as exc:
            raise BrokerError(f"site broker: {exc}") from None


def bridge_conf(node: str, site: SiteBridge) -> str:
    """The bridge section of a node's mosquitto.conf: `redy/<node>/#` out to the site, QoS 1,
    retained messages kept retained (MQTT 5 bridge), no topic in."""
    from redy.messages import parse_uri

    host, port = parse_uri(site.uri)
    lines = [
        "",
        "# Bridge to the site broker: this node's topics out, nothing in (read-only toward the node).",
        f"connection redy-site-{node}",
        f"address {host}:{port}",
        f"remote_clientid redy-bridge-{node}",
        "bridge_protocol_version mqttv50",
        "cleansession true",
        "notifications false",
        "try_private false",
        f"topic redy/{node}/# out 1",
    ]
    if site.username is not None:
        lines.append(f"remote_username {site.username}")
    if site.password is not None:
        lines.append(f"remote_password {site.password}")
    return "\n".join(lines) + "\n"


@attrs.frozen
class NodeBroker:
    """What a node's broker is: its id, ports, units (name -> role) and where its files live."""

    node: str = attrs.field(validator=lambda _i, _a, v: check_id(v, "node"))
    port: int
    state_dir: Path = attrs.field(converter=Path)
    units: Mapping[str, str] = attrs.field(factory=dict)
    grid_port: int | None = None
    unit_port: int | None = None  # the units' listener; default: port + UNIT_PORT_OFFSET
    bind: str = "127.0.0.1"  # the two local listeners (units; governance and operators)
    grid_bind: str | None = None  # the grid listener (peers); default: `bind`
    advertise: str | None = None  # host peers dial for the grid listener; default: `grid_bind`
    site: SiteBridge | None = None  # a one-way bridge of this node's topics to a site broker
    # What the grid CA states in the node's certificate (its role and connection limits), when
    # this host issues it; None: a node with no stated limits.
    grant: Grant | None = None

    @units.validator
    def _check_units(self, _attribute: Any, units: Mapping[str, str]) -> None:
        for unit, role in units.items():
            check_id(unit, "unit")
            if unit in RESERVED_USERS:
                raise BrokerError(
                    f"unit name {unit!r} is taken by the {unit} account; rename the unit"
                )
            if role not in UNIT_ROLES:
                raise BrokerError(
                    f"unit {unit!r} has role {role!r}; expected one of {', '.join(UNIT_ROLES)}"
                )

    def __attrs_post_init__(self) -> None:
        ports = {
            "port": self.port,
            "grid port": self.grid_listener_port,
            "unit port": self.unit_listener_port,
        }
        for what, port in ports.items():
            if not 1 <= port <= 65535:
                hint = f" (give a {what})" if what != "port" else ""
                raise BrokerError(f"{what} {port} of node {self.node} is not in 1..65535{hint}")
        if len(set(ports.values())) < len(ports):
            raise BrokerError(
                f"node {self.node}: its listeners need three different ports, got "
                + ", ".join(f"{what} {port}" for what, port in ports.items())
            )
        if self.advertised_host in ("0.0.0.0", "::", ""):
            raise BrokerError(
                f"node {self.node}: the grid listener binds {self.grid_host!r}, which peers cannot"
                " dial; give the address they reach it at (advertise: HOST)"
            )

    @property
    def grid_host(self) -> str:
        return self.grid_bind if self.grid_bind is not None else self.bind

    @property
    def advertised_host(self) -> str:
        return self.advertise if self.advertise is not None else self.grid_host

    @property
    def grid_listener_port(self) -> int:
        return self.grid_port if self.grid_port is not None else self.port + GRID_PORT_OFFSET

    @property
    def unit_listener_port(self) -> int:
        return self.unit_port if self.unit_port is not None else self.port + UNIT_PORT_OFFSET

    @property
    def node_dir(self) -> Path:
        return self.state_dir / self.node

    @property
    def _local_host(self) -> str:
        return (
            "127.0.0.1"
            if self.bind in ("0.0.0.0", "")
            else "::1"
            if self.bind == "::"
            else self.bind
        )

    @property
    def uri(self) -> str:
        """Where the node's governance unit and its operators reach the broker."""
        return f"mqtt://{self._local_host}:{self.port}"

    @property
    def unit_uri(self) -> str:
        """Where the node's detection and action units reach the broker (their own listener,
        on which an account's client id is its name)."""
        return f"mqtt://{self._local_host}:{self.unit_listener_port}"

    @property
    def grid_uri(self) -> str:
        """The grid listener as peers dial it (the advertised address; mutual TLS)."""
        return f"mqtts://{_uri_host(self.advertised_host)}:{self.grid_listener_port}"

    @property
    def credentials_path(self) -> Path:
        return self.node_dir / "credentials.json"

    def port_for(self, user: str) -> int:
        """The local listener an account connects to: units have their own."""
        return self.port if user in TRUSTED_USERS else self.unit_listener_port


def _uri_host(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host
