"""`redy launch FILE.yaml [name:=value ...] [--duration S] [--compose]`."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import click

from redy.errors import LaunchError
from redy.launch.parser import parse
from redy.launch.supervisor import Supervisor

_log = logging.getLogger(__name__)


def launch_args(values: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for v in values:
        name, sep, value = v.partition(":=")
        if not sep or not name:
            raise LaunchError(f"launch argument {v!r}: expected name:=value")
        out[name] = value
    return out


def operator_feed(sup: Supervisor) -> Any:
    """Operator connections to every node of the launch, feeding the one live model that the
    table and the web page both read (redy.dashboard)."""
    from redy.brokers import load_credentials
    from redy.dashboard.server import Feed, Target

    targets = []
    for n in sup.desc.nodes:
        cfg = sup.broker_config(n)
        password = load_credentials(cfg.credentials_path).password("operator")
        targets.append(Target(cfg.uri, "operator", password, n.node))
    feed = Feed(targets)
    feed.start()
    return feed


def _start_web(feed: Any, port: int) -> Any:
    """The web dashboard on the launch's feed, serving in a thread."""
    from redy.dashboard.server import WebServer, bind

    server = WebServer(feed, bind("127.0.0.1", port))
    server.start()
    return server


METRICS = click.option(
    "--metrics",
    "metrics_port",
    type=click.IntRange(0, 65535),
    default=None,
    help="Serve Prometheus metrics of every node and process on 127.0.0.1:PORT/metrics"
    " (0: any free port).",
)


class MetricsEndpoint:
    """`--metrics`: the launch's operator feed and the metrics server on it, from the launch's
    start (`started`) to its stop (`stopping`)."""

    def __init__(self, port: int | None, feed: Any = None) -> None:
        self.port = port
        self.feed = feed  # a feed the launch opened for its table or page, else one of its own
        self._own_feed: Any = None
        self._server: Any = None

    def started(self, sup: Supervisor) -> None:
        if self.port is None:
            return
        from redy.launch.metrics import serve

        if self.feed is None:
            self.feed = self._own_feed = operator_feed(sup)
        self._server, port = serve(sup, self.feed, self.port)
        click.echo(f"metrics: http://127.0.0.1:{port}/metrics")

    def stopping(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._own_feed is not None:
            self._own_feed.stop()


DURATION = click.option(
    "--duration",
    "duration_s",
    type=click.FloatRange(0.0, min_open=True),
    default=None,
    help="Stop everything after S seconds.",
)


@click.command("launch")
@click.argument("file", type=click.Path(dir_okay=False))
@click.argument("args", nargs=-1)
@DURATION
@click.option("--compose", is_flag=True, help="All units of a node in one process.")
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False),
    default=".redy",
    show_default=True,
    help="Broker configs, credentials, logs.",
)
@click.option(
    "--backend",
    type=click.Choice(["process", "container"]),
    default=None,
    help="Override every broker's backend.",
)
@click.option(
    "--table",
    "table_period_s",
    type=float,
    default=None,
    is_flag=False,
    flag_value=5.0,
    help="Print a live table of the nodes every S seconds (5).",
)
@click.option(
    "--web",
    "web_port",
    type=click.IntRange(0, 65535),
    default=None,
    is_flag=False,
    flag_value=8050,
    help="Also serve the live web dashboard on 127.0.0.1:PORT (8050; 0: any free port).",
)
@METRICS
@click.option("--check", is_flag=True, help="Only parse and validate the file.")
def launch(
    file: str,
    args: tuple[str, ...],
    duration_s: float | None,
    compose: bool,
    state_dir: str,
    backend: str | None,
    table_period_s: float | None,
    web_port: int | None,
    metrics_port: int | None,
    check: bool,
) -> None:
    """Run a launch FILE: brokers first, then governance units, then the units."""
    desc = parse(file, launch_args(args))
    if check:
        units = sum(len(n.units) for n in desc.nodes)
        click.echo(f"{file}: ok ({len(desc.nodes)} nodes, {units} units)")
        return
    dashboard: Any = None
    web: list[Any] = []  # the live feed, then the web server when --web is given
    metrics = MetricsEndpoint(metrics_port)

    def started(sup: Supervisor) -> None:
        nonlocal dashboard
        click.echo(
            f"launched {len(desc.nodes)} nodes; state, credentials and logs in "
            f"{Path(state_dir).resolve()}"
        )
        for n in desc.nodes:
            click.echo(
                f"  {n.node}: {n.broker.local_uri} (grid {n.broker.grid_uri}), "
                "operator password in "
                f"{Path(state_dir).resolve() / n.node / 'credentials.json'}"
            )
        if web_port is not None or table_period_s:
            web.append(operator_feed(sup))
            metrics.feed = web[0]
        metrics.started(sup)
        if web_port is not None:
            web.append(_start_web(web[0], web_port))
            click.echo(f"dashboard: {web[1].url}")
        if table_period_s:
            from redy.launch.dashboard import Dashboard

            dashboard = Dashboard(sup, web[0], table_period_s)
            dashboard.start()

    def stopping(_sup: Supervisor) -> None:
        # The last table is taken while every unit still runs; then the feed and the page stop.
        if dashboard is not None:
            dashboard.stop()
            click.echo(dashboard.table())
            click.echo(dashboard.summary())
        metrics.stopping()
        for part in reversed(web):
            part.stop()

    sup = Supervisor(
        desc,
        state_dir=Path(state_dir),
        backend=backend,
        compose=compose,
        on_started=started,
        on_stopping=stopping,
    )
    status = sup.run(duration_s)
    if status:
        raise SystemExit(status)
