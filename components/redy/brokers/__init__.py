"""A node's Mosquitto broker: write its config, passwords and ACLs; run it as a child process
or as a container; wait until it accepts an authenticated connection. One module per job:

    config        NodeBroker (ports, listeners, accounts), the site bridge
    credentials   credentials.json and the per-process files, hashed password files
    files         write_files: mosquitto.conf, container.conf, passwords, ACLs, TLS identity
    probe         port_is_free, try_connect, wait_authenticated
    backends      ProcessBroker, ContainerBroker, make_broker, running
    cli           `redy broker run|password`

Layout of a node's state directory (`<state_dir>/<node>/`):

    mosquitto.conf        config for the process backend (host paths)
    container.conf        the same config with the container's paths
    passwd                local listener: `governance` and `operator`
    units.passwd          units' listener: one account per unit (its name is its client id)
    acl                   the ACL of both local listeners
    grid-ca.crt, grid.crt, grid.key, grid.acl
                          grid listener: mutual TLS with the grid CA, `%u` patterns
    credentials.json      the clear-text passwords (mode 0600), read by the launcher and tools
    units/<unit>.json, governance.json
                          what each process is handed: its own password only
    data/                 persistence (retained messages survive a restart)
"""

from redy.brokers.backends import (
    Broker,
    ContainerBroker,
    ProcessBroker,
    log_summary,
    make_broker,
    mosquitto_binary,
    running,
)
from redy.brokers.cli import broker
from redy.brokers.config import (
    DEFAULT_IMAGE,
    GRID_PORT_OFFSET,
    RESERVED_USERS,
    TRUSTED_USERS,
    UNIT_PORT_OFFSET,
    NodeBroker,
    SiteBridge,
    bridge_conf,
    image_name,
)
from redy.brokers.credentials import (
    Credentials,
    grid_identity,
    load_credentials,
    unit_credentials_path,
)
from redy.brokers.files import FALLBACK_TEMPLATE, template, write_files
from redy.brokers.probe import port_is_free, try_connect, wait_authenticated

__all__ = [
    "DEFAULT_IMAGE",
    "FALLBACK_TEMPLATE",
    "GRID_PORT_OFFSET",
    "RESERVED_USERS",
    "TRUSTED_USERS",
    "UNIT_PORT_OFFSET",
    "Broker",
    "ContainerBroker",
    "Credentials",
    "NodeBroker",
    "ProcessBroker",
    "SiteBridge",
    "bridge_conf",
    "broker",
    "grid_identity",
    "image_name",
    "load_credentials",
    "log_summary",
    "make_broker",
    "mosquitto_binary",
    "port_is_free",
    "running",
    "template",
    "try_connect",
    "unit_credentials_path",
    "wait_authenticated",
    "write_files",
]
