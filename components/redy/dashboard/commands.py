"""`redy dashboard`: serve the live web page of a launch (or of given brokers)."""

from __future__ import annotations

from pathlib import Path

import click

from redy.cli_auth import password_for


@click.command("dashboard")
@click.option(
    "--launch-state",
    type=click.Path(file_okay=False, exists=True),
    default=None,
    help="A launch's --state-dir: watch every node in it with its operator credentials.",
)
@click.option(
    "--broker", "brokers", multiple=True, envvar="REDY_BROKER", help="A node's broker URI (repeat)."
)
@click.option("--user", default="operator", show_default=True, envvar="REDY_USER")
@click.option("--password", default=None, envvar="REDY_PASSWORD")
@click.option(
    "--credentials", type=click.Path(dir_okay=False), default=None, envvar="REDY_CREDENTIALS"
)
@click.option("--host", default="127.0.0.1", show_default=True, help="HTTP address.")
@click.option(
    "--http-port", type=click.IntRange(0, 65535), default=8050, show_default=True, help="0: any."
)
def dashboard(
    launch_state: str | None,
    brokers: tuple[str, ...],
    user: str,
    password: str | None,
    credentials: str | None,
    host: str,
    http_port: int,
) -> None:
    """Serve a live page of the grid: nodes, overlay, price and balance per epoch."""
    from redy.dashboard.server import Feed, Target, WebServer, bind, targets_from_launch_state

    if launch_state:
        targets = targets_from_launch_state(Path(launch_state))
    elif brokers:
        secret = password_for(user, password, credentials)
        targets = [Target(uri, user, secret) for uri in brokers]
    else:
        raise click.UsageError("give --launch-state DIR, or one --broker URI per node")
    feed = Feed(targets)
    server = WebServer(feed, bind(host, http_port))
    feed.start()
    click.echo(f"dashboard: {server.url} ({len(targets)} brokers)")
    try:
        server.serve()
    finally:
        feed.stop()
