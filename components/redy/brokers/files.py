"""A node's broker files: config (from brokers/mosquitto.conf.template), passwords, ACLs and
its TLS identity, written by `write_files`."""

from __future__ import annotations

import getpass
import re
import secrets
from pathlib import Path

import orjson

from redy import pki
from redy.brokers.config import (
    CONTAINER_DATA,
    CONTAINER_DIR,
    TRUSTED_USERS,
    NodeBroker,
    bridge_conf,
)
from redy.brokers.credentials import (
    Credentials,
    load_credentials,
    password_file,
    unit_credentials_path,
    write_private,
)
from redy.topics import CONTRACT, grid_acl, local_acl

_TEMPLATE = Path(__file__).resolve().parents[3] / "brokers" / "mosquitto.conf.template"


def template() -> str:
    if _TEMPLATE.exists():
        return _TEMPLATE.read_text()
    return FALLBACK_TEMPLATE


# Kept identical to brokers/mosquitto.conf.template (a test checks it) so an installed wheel,
# which has no brokers/ folder, renders the same config.
FALLBACK_TEMPLATE = """\
# Mosquitto config of node {node}. Rendered by redy.brokers: do not edit.
per_listener_settings true
user {user}
persistence true
persistence_location {data_dir}/
# Retained state survives a kill -9 with at most 1 s of loss: a node's broker holds a few hundred
# small retained messages, so rewriting the database once a second costs little (autosave counts
# seconds while autosave_on_changes is false).
autosave_interval 1
autosave_on_changes false
log_dest stderr
log_type error
log_type warning
log_type notice
log_type information
connection_messages true
sys_interval 10
max_packet_size {max_packet_size}
# Limits, whatever a client does: 20 QoS 1 messages in flight per client (advertised as Receive
# Maximum); a client that does not read gets at most 1000 messages or 4 MiB queued, then loses
# the oldest; the broker refuses publishes beyond 256 MiB of memory rather than be killed.
max_inflight_messages 20
max_queued_messages 1000
max_queued_bytes 4194304
memory_limit 268435456
# Send small packets at once: with Nagle's algorithm every forwarded message waits for the
# receiver's delayed ACK (40 ms on Linux): measured 44 ms against 0.2 ms per shuffle round trip.
set_tcp_nodelay true

# Local listener: the node's governance unit and its operators, the node's trusted accounts
# (an operator runs several tools at once and the governance unit keeps two sessions, so their
# client ids are free). No unit has an account here.
listener {port} {bind}
allow_anonymous false
password_file {conf_dir}/passwd
acl_file {conf_dir}/acl
max_connections 64

# Units' listener: each detection and action unit with its own account, whose name is its client
# id, so no unit can take over another's session (or the governance unit's).
listener {unit_port} {bind}
allow_anonymous false
password_file {conf_dir}/units.passwd
acl_file {conf_dir}/acl
use_username_as_clientid true
max_connections 128

# Grid listener: peers' governance units, mutual TLS (1.2 or 1.3). A peer's certificate must be
# signed by the grid CA; its CN (the peer's node id) becomes its username and client id, so the
# ACL's %u patterns confine it to its own topics and nobody can take over another's session.
listener {grid_port} {grid_bind}
allow_anonymous false
cafile {conf_dir}/grid-ca.crt
certfile {conf_dir}/grid.crt
keyfile {conf_dir}/grid.key
require_certificate true
use_identity_as_username true
use_username_as_clientid true
acl_file {conf_dir}/grid.acl
max_connections 256
"""


def _person() -> str:
    """This host's operator, as a name: the login, in node-id form."""
    try:
        login = getpass.getuser()
    except (KeyError, OSError):
        login = ""
    name = re.sub(r"[^a-z0-9_-]", "-", login.lower()).strip("-_")[:63]
    return name or "local"


def write_files(broker: NodeBroker) -> Credentials:
    """Write a node's config, password and ACL files; keep passwords already issued."""
    d = broker.node_dir
    (d / "data").mkdir(parents=True, exist_ok=True)
    users: dict[str, str] = {}
    if broker.credentials_path.exists():
        users.update(load_credentials(broker.credentials_path).users)
    wanted = ["governance", "operator", *sorted(broker.units)]
    users = {u: users.get(u) or secrets.token_urlsafe(18) for u in wanted}
    write_private(
        broker.credentials_path,
        orjson.dumps({"node": broker.node, "users": users}, option=orjson.OPT_INDENT_2),
    )
    for unit in broker.units:  # each unit process is handed its own password only
        write_private(
            unit_credentials_path(broker, unit),
            orjson.dumps({"node": broker.node, "users": {unit: users[unit]}}),
        )
    write_private(
        broker.node_dir / "governance.json",
        orjson.dumps({"node": broker.node, "users": {"governance": users["governance"]}}),
    )
    password_file(d / "passwd", {u: users[u] for u in TRUSTED_USERS})
    password_file(d / "units.passwd", {u: p for u, p in users.items() if u not in TRUSTED_USERS})
    # The grid listener's identity (and the governance unit's, toward its neighbours): the
    # node's certificate, issued by the grid CA on first use.
    ident = pki.ensure_identity(broker.state_dir, broker.node, _cert_hosts(broker), broker.grant)
    (d / "grid-ca.crt").write_bytes(ident.ca.read_bytes())
    (d / "grid.crt").write_bytes(ident.cert.read_bytes())
    write_private(d / "grid.key", ident.key.read_bytes())
    if pki.has_ca_key(broker.state_dir):  # this host's operator, for its tools (reads only)
        pki.ensure_operator(broker.state_dir, _person())
    (d / "acl").write_text(local_acl(broker.node, broker.units))
    (d / "grid.acl").write_text(grid_acl(broker.node))
    common = {
        "node": broker.node,
        "port": broker.port,
        "grid_port": broker.grid_listener_port,
        "unit_port": broker.unit_listener_port,
        "bind": broker.bind,
        "grid_bind": broker.grid_host,
        # A safety net behind the codec's own limit: room for the topic and MQTT 5 properties.
        "max_packet_size": 2 * CONTRACT.max_payload_bytes,
    }
    bridge = bridge_conf(broker.node, broker.site) if broker.site else ""
    for name, values in (
        (
            "mosquitto.conf",
            {"user": getpass.getuser(), "data_dir": d / "data", "conf_dir": d.resolve()},
        ),
        (
            "container.conf",
            {"user": "root", "data_dir": CONTAINER_DATA, "conf_dir": CONTAINER_DIR},
        ),
    ):
        text = template().format(**common, **values) + bridge
        if bridge:  # it may hold the site's password: owner-only, like credentials.json
            write_private(d / name, text.encode())
        else:
            (d / name).write_text(text)
    return Credentials(users=users)


def _cert_hosts(broker: NodeBroker) -> list[str]:
    hosts = [broker.advertised_host]
    if broker.grid_host not in ("0.0.0.0", "::"):
        hosts.append(broker.grid_host)
    return [*hosts, "127.0.0.1", "localhost"]
