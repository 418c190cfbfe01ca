"""`redy broker`: run a node's broker in the foreground, print an account's password."""

from __future__ import annotations

import signal
import threading
from pathlib import Path

import click

from redy.brokers.backends import running
from redy.brokers.config import GRID_PORT_OFFSET, UNIT_PORT_OFFSET, NodeBroker, SiteBridge
from redy.brokers.credentials import load_credentials
from redy.errors import BrokerError

# --- CLI ------------------------------------------------------------------------------------


def _unit_option(
    _ctx: click.Context, _param: click.Parameter, values: tuple[str, ...]
) -> dict[str, str]:
    units = {}
    for v in values:
        name, sep, role = v.partition(":")
        if not sep or not name or not role:
            raise click.BadParameter(f"{v!r}: expected NAME:ROLE, e.g. pv-meter:detection")
        units[name] = role
    return units


_STATE_DIR = click.option(
    "--state-dir",
    type=click.Path(file_okay=False),
    default=".redy",
    show_default=True,
    help="Where node folders live (config, passwords, credentials.json, data).",
)


@click.group()
def broker() -> None:
    """A node's Mosquitto broker."""


@broker.command("run")
@click.option("--node", required=True, help="Node id, e.g. house-1.")
@click.option("--port", type=click.IntRange(1, 65535), required=True, help="Local listener.")
@click.option(
    "--grid-port",
    type=click.IntRange(1, 65535),
    default=None,
    help=f"Grid listener (peers) [default: port + {GRID_PORT_OFFSET}].",
)
@click.option(
    "--unit-port",
    type=click.IntRange(1, 65535),
    default=None,
    help=f"Units' listener [default: port + {UNIT_PORT_OFFSET}].",
)
@click.option(
    "--bind", default="127.0.0.1", show_default=True, help="Address of the two local listeners."
)
@click.option(
    "--backend", type=click.Choice(["process", "container"]), default="process", show_default=True
)
@_STATE_DIR
@click.option(
    "--unit",
    "units",
    multiple=True,
    metavar="NAME:ROLE",
    callback=_unit_option,
    help="A unit account (role detection or action); repeat for each unit.",
)
@click.option(
    "--site-broker",
    default=None,
    envvar="REDY_SITE_BROKER",
    help="Bridge this node's topics, one way, to a site broker (e.g. Home Assistant's).",
)
@click.option("--site-user", default=None, envvar="REDY_SITE_USER")
@click.option("--site-password", default=None, envvar="REDY_SITE_PASSWORD")
def broker_run(
    node: str,
    port: int,
    grid_port: int | None,
    unit_port: int | None,
    bind: str,
    backend: str,
    state_dir: str,
    units: dict[str, str],
    site_broker: str | None,
    site_user: str | None,
    site_password: str | None,
) -> None:
    """Run one node's broker in the foreground until Ctrl-C or SIGTERM."""
    site = SiteBridge(site_broker, site_user, site_password) if site_broker else None
    config = NodeBroker(
        node=node,
        port=port,
        grid_port=grid_port,
        unit_port=unit_port,
        state_dir=Path(state_dir),
        units=units,
        bind=bind,
        site=site,
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with running(config, backend) as b:
        click.echo(
            f"broker of {node} ({backend}) on {b.uri} (local), {b.unit_uri} (units) and "
            f"{b.grid_uri} (grid); "
            f"credentials in {config.credentials_path}"
        )
        try:
            while not stop.wait(0.5):
                if not b.alive():
                    raise BrokerError(f"the broker of {node} stopped unexpectedly")
        except KeyboardInterrupt:
            pass
    click.echo(f"broker of {node} stopped")


@broker.command("password")
@click.option("--node", required=True, help="Node id, e.g. house-1.")
@click.option(
    "--user",
    default="operator",
    show_default=True,
    help="governance, operator, grid, or a unit name.",
)
@_STATE_DIR
def broker_password(node: str, user: str, state_dir: str) -> None:
    """Print one account's password of a rendered node."""
    path = Path(state_dir) / node / "credentials.json"
    if not path.exists():
        raise BrokerError(
            f"no credentials for node {node!r} in {state_dir}: start its broker first"
        )
    click.echo(load_credentials(path).password(user))
