"""The `redy` command line: launch, topic, node, view, plan, broker, sim and the unit processes.

Each command lives in the module of what it drives and is imported only when it is called, so
`redy --help` and every unit process start quickly and stay small.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

import click

from redy.errors import RedyError

# name -> "module:attribute" of a click command or group; imported on first use.
_COMMANDS: dict[str, tuple[str, str]] = {
    "ha": ("redy.homeassistant:ha", "Home Assistant MQTT discovery from topics.yaml."),
    "launch": ("redy.launch.commands:launch", "Run a launch file: brokers, governance and units."),
    "bag": ("redy.bag:bag", "Record a broker's traffic to MCAP, replay it, describe it."),
    "broker": ("redy.brokers:broker", "Render, run and inspect a node's Mosquitto broker."),
    "topic": ("redy.tools:topic", "List, echo, publish and measure topics (like ros2 topic)."),
    "node": ("redy.tools:node", "List the nodes reachable from a broker, or one node's units."),
    "view": ("redy.tools:view", "Print a node's retained membership view."),
    "plan": ("redy.tools:plan", "Print a node's retained plan: prices and its own plan."),
    "deploy": (
        "redy.deploy:deploy",
        "Run one node of a grid file; generate Compose/systemd files.",
    ),
    "grid": ("redy.launch.generate:grid", "Generate launch files for grids of any size."),
    "sim": ("redy.sim.commands:sim", "Simulate membership or balancing for many nodes."),
    "dashboard": ("redy.dashboard.commands:dashboard", "Serve a live web page of the grid."),
    "detection": ("redy.units.commands:detection", "Run one detection unit process."),
    "action": ("redy.units.commands:action", "Run one action unit process."),
    "governance": ("redy.units.commands:governance", "Run one governance unit process."),
}


class _UserError(click.ClickException):
    """A RedyError as the command line shows it: `error: ` and one line, exit status 2."""

    exit_code = 2

    def __init__(self, error: RedyError) -> None:
        super().__init__(" ".join(str(error).split()))

    def show(self, file: Any = None) -> None:
        click.echo("error: " + self.format_message(), err=True)


class _LazyGroup(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        # The one place where our exceptions become what a user sees (and a CliRunner result).
        try:
            return super().invoke(ctx)
        except RedyError as exc:
            raise _UserError(exc) from exc

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(_COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        entry = _COMMANDS.get(cmd_name)
        if entry is None:
            return None
        target, _ = entry
        module_name, attr = target.split(":")
        try:
            command = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as exc:  # a command not built yet says so in one line
            raise click.ClickException(f"command {cmd_name!r} is not available: {exc}") from exc
        if not isinstance(command, click.Command):
            raise click.ClickException(f"command {cmd_name!r} is not a click command")
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # Help lists the short texts here so it never has to import the commands' modules.
        rows = [(name, help_text) for name, (_, help_text) in sorted(_COMMANDS.items())]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=_LazyGroup)
@click.option(
    "--verbose", "-v", is_flag=True, help="Log every event, not just the ones that matter."
)
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    default=None,
    envvar="REDY_LOG_FORMAT",
    help="Log lines as text (default) or JSON lines; launched processes inherit it.",
)
@click.version_option(package_name="redy")
def cli(verbose: bool, log_format: str | None) -> None:
    """ReDy Grid: a reliable, dynamic, fully decentralized data network for the smart grid.

    Tools that talk to a broker read --broker, --user, --password and --credentials from
    REDY_BROKER, REDY_USER, REDY_PASSWORD and REDY_CREDENTIALS when they are not given.
    """
    from redy.logformat import configure

    configure(verbose, log_format)


def main(argv: list[str] | None = None) -> Any:
    """Console-script entry point: a RedyError becomes one line on stderr and exit status 2
    (_LazyGroup.invoke)."""
    try:
        return cli.main(args=argv, prog_name="redy", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)
