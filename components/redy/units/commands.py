"""`redy detection`, `redy action` and `redy governance`: one unit per process."""

from __future__ import annotations

import signal
import threading
import time
from typing import Any

import click
import yaml

from redy.units.config import GovernanceConfig, UnitConfig


def _params(values: tuple[str, ...]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for v in values:
        key, sep, raw = v.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{v!r}: expected key=value, e.g. kwp=6")
        try:
            out[key] = yaml.safe_load(raw)
        except yaml.YAMLError:
            out[key] = raw
    return out


def _common(f: Any) -> Any:
    options = [
        click.option("--node", required=True, help="Node id."),
        click.option("--broker", required=True, help="The node's broker, mqtt://HOST:PORT."),
        click.option(
            "--credentials",
            required=True,
            type=click.Path(dir_okay=False),
            help="The node's credentials.json.",
        ),
        click.option("--period-s", type=click.FloatRange(0.01), default=1.0, show_default=True),
        click.option(
            "--speed",
            type=click.FloatRange(0.0, min_open=True),
            default=1.0,
            show_default=True,
            help="Simulated seconds per real second.",
        ),
        click.option(
            "--start-unix",
            type=float,
            default=None,
            help="Wall-clock start shared by a launch (default: now).",
        ),
        click.option(
            "--sim-start-s",
            type=float,
            default=0.0,
            show_default=True,
            help="Simulated time at --start-unix (seconds into the day).",
        ),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def _device_unit(role: str) -> click.Command:
    @click.command(role, help=f"Run one {role} unit process (until SIGTERM or Ctrl-C).")
    @_common
    @click.option("--unit", required=True, help="Unit name (its broker username).")
    @click.option("--device", required=True, help="Device model or driver (redy.devices.DEVICES).")
    @click.option("--param", "params", multiple=True, metavar="KEY=VALUE")
    @click.option("--seed", type=int, default=0, show_default=True)
    @click.option("--keepalive-s", type=click.IntRange(1), default=5, show_default=True)
    def command(params: tuple[str, ...], start_unix: float | None, **kw: Any) -> None:
        from redy.units.device_unit import make_unit

        config = UnitConfig(
            role=role, params=_params(params), start_unix=start_unix or time.time(), **kw
        )
        stop = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
        make_unit(config).run(stop)

    return command


detection = _device_unit("detection")
action = _device_unit("action")


@click.command("governance", help="Run one governance unit process (until SIGTERM or Ctrl-C).")
@_common
@click.option("--kind", default="generic", show_default=True)
@click.option("--grid-broker", default=None, help="This node's grid listener (distant mode).")
@click.option("--introducer", default=None, help="A grid listener of the overlay, to join.")
@click.option("--setpoint-kw", type=float, default=None, help="Target net injection (local rule).")
@click.option("--view-size", type=click.IntRange(1), default=8, show_default=True)
@click.option("--shuffle-length", type=click.IntRange(1), default=4, show_default=True)
@click.option("--shuffle-period-s", type=click.FloatRange(0.05), default=2.0, show_default=True)
@click.option("--shuffle-timeout-s", type=click.FloatRange(0.05), default=1.5, show_default=True)
@click.option(
    "--epoch-s",
    type=click.FloatRange(0.0),
    default=0.0,
    show_default=True,
    help="Market interval in seconds (distant mode); 0 keeps the local setpoint rule.",
)
@click.option(
    "--rounds",
    type=click.IntRange(1),
    default=10,
    show_default=True,
    help="Gossip rounds per market epoch.",
)
@click.option("--seed", type=int, default=None)
def governance(start_unix: float | None, seed: int | None, **kw: Any) -> None:
    from redy.units.governance import run_governance

    extra: dict[str, Any] = {"seed": seed} if seed is not None else {}
    run_governance(GovernanceConfig(start_unix=start_unix or time.time(), **extra, **kw))
