"""`redy detection`, `redy action` and `redy governance`: one unit per process.

Their options are derived from the settings of UnitConfig and GovernanceConfig
(redy.units.config); `--config FILE` takes the same settings as one JSON object, which is how a
launcher hands them over (no value goes through a command line and back).
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import attrs
import click
import orjson
import yaml

from redy.errors import SettingError
from redy.units.config import GovernanceConfig, Setting, UnitConfig, scalar_type, settings_of

_F = TypeVar("_F", bound=Callable[..., Any])
_C = TypeVar("_C")


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


def _option(name: str, field: attrs.Attribute[Any], meta: Setting) -> Callable[[_F], _F]:
    """The click option of one setting. Its default stays None: the config class owns it."""
    help_text = meta.help + (f" [{meta.unit}]" if meta.unit else "")
    shown = field.default
    if shown not in (attrs.NOTHING, None) and not hasattr(shown, "factory"):
        help_text += f"  [default: {shown}]"
    if name == "params":
        return click.option("--param", "params", multiple=True, metavar="KEY=VALUE", help=help_text)
    want = scalar_type(field)
    kind: Any = want if want in (int, float) else None
    if meta.minimum is not None and want is int:
        kind = click.IntRange(min=int(meta.minimum), min_open=meta.min_open)
    elif meta.minimum is not None and want is float:
        kind = click.FloatRange(min=meta.minimum, min_open=meta.min_open)
    elif want is Path:
        kind = click.Path(dir_okay=False)
    return click.option(f"--{name.replace('_', '-')}", name, type=kind, help=help_text)


def _options_of(cls: type) -> Callable[[_F], _F]:
    """Every setting of `cls` as an option, and --config FILE."""

    def decorate(f: _F) -> _F:
        for name, (field, meta) in reversed(settings_of(cls).items()):
            f = _option(name, field, meta)(f)
        return click.option(
            "--config",
            "config_file",
            type=click.Path(dir_okay=False),
            help="The settings as one JSON object (what a launch writes); options override it.",
        )(f)

    return decorate


def _config(cls: type[_C], config_file: str | None, given: dict[str, Any]) -> _C:
    """The config from the JSON file (if any) and the options given on the line."""
    values: dict[str, Any] = {}
    if config_file is not None:
        try:
            values = orjson.loads(Path(config_file).read_bytes())
        except (OSError, orjson.JSONDecodeError) as exc:
            raise SettingError(f"cannot read config {config_file}: {exc}") from None
    if "params" in given:
        given["params"] = _params(given["params"]) or None
    values |= {k: v for k, v in given.items() if v is not None}
    fields = settings_of(cls)
    missing = [n for n, (f, _) in fields.items() if f.default is attrs.NOTHING and n not in values]
    if missing:
        flags = ", ".join("--" + n.replace("_", "-") for n in missing)
        raise click.UsageError(f"missing {flags} (or --config FILE)")
    try:
        return cls(**values)
    except TypeError as exc:  # a key of the file that is no setting
        raise SettingError(f"config {config_file}: {exc}") from None


def _until_signalled() -> threading.Event:
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    return stop


def _device_unit(role: str) -> click.Command:
    @click.command(role, help=f"Run one {role} unit process (until SIGTERM or Ctrl-C).")
    @_options_of(UnitConfig)
    def command(config_file: str | None, **given: Any) -> None:
        from redy.units.factory import make_unit

        config = _config(UnitConfig, config_file, {**given, "role": role})
        make_unit(config).run(_until_signalled())

    return command


detection = _device_unit("detection")
action = _device_unit("action")


@click.command("governance", help="Run one governance unit process (until SIGTERM or Ctrl-C).")
@_options_of(GovernanceConfig)
def governance(config_file: str | None, **given: Any) -> None:
    from redy.units.governance import run_governance

    run_governance(_config(GovernanceConfig, config_file, given))
