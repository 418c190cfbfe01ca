"""A unit setting is declared once (redy.units.config): the launch-file key, the command-line
option and the config a launched process gets are derived from that declaration."""

from __future__ import annotations

from pathlib import Path

import attrs
import click
import orjson
import pytest

from redy.errors import LaunchError, SettingError
from redy.launch import parser
from redy.launch.parser import parse
from redy.launch.supervisor import Supervisor
from redy.units import commands
from redy.units.config import GovernanceConfig, UnitConfig, settings_of

pytestmark = pytest.mark.pure

_LAUNCHER_ONLY = {"distant", "respawn", "respawn_delay_s"}


def test_every_launch_setting_is_a_launch_key_and_every_setting_an_option() -> None:
    launch = {n for n, (_, meta) in settings_of(GovernanceConfig).items() if meta.launch}
    assert set(parser._FIELDS["governance"]) == launch | _LAUNCHER_ONLY
    for cls, command in ((GovernanceConfig, commands.governance), (UnitConfig, commands.action)):
        options = {p.name for p in command.params if isinstance(p, click.Option)}
        assert set(settings_of(cls)) <= options, set(settings_of(cls)) - options
    (view,) = [p for p in commands.governance.params if p.name == "view_size"]
    assert isinstance(view, click.Option) and "[default: 8]" in (view.help or "")
    assert attrs.fields_dict(GovernanceConfig)["view_size"].default == 8  # said once, here


def _launch(tmp_path: Path, governance: str) -> Path:
    f = tmp_path / "one.yaml"
    f.write_text(
        "launch:\n"
        "  - broker: {node: solo, port: 19001}\n"
        f"  - governance: {{node: solo, {governance}}}\n"
        "  - action: {node: solo, name: battery, device: battery, period_s: 0.5}\n"
    )
    return f


def test_launch_values_reach_the_process_typed_through_one_json_config(tmp_path: Path) -> None:
    desc = parse(_launch(tmp_path, "kind: factory, view_size: 6, shuffle_length: 2, epoch_s: 3"))
    sup = Supervisor(desc, state_dir=tmp_path / "state")
    (node,) = desc.nodes
    (sup.state_dir / "solo").mkdir(parents=True)
    argv = sup._config_argv(node, "governance", "governance", sup.governance_config(node))
    assert argv[-3:-1] == ["governance", "--config"]
    config = commands._config(GovernanceConfig, argv[-1], {})
    assert (config.kind, config.view_size, config.shuffle_length) == ("factory", 6, 2)
    assert config.epoch_s == 3.0 and isinstance(config.epoch_s, float)
    assert config.shuffle_period_s == 2.0  # not in the file: the config's own default
    assert config.grid_broker == node.broker.grid_uri
    (unit,) = node.units
    unit_argv = sup._config_argv(node, "action", unit.name, sup.unit_config(node, unit))
    unit_config = commands._config(UnitConfig, unit_argv[-1], {"role": "action"})
    assert (unit_config.unit, unit_config.period_s, unit_config.device) == (
        "battery",
        0.5,
        "battery",
    )


def test_an_option_on_the_line_overrides_the_config_file(tmp_path: Path) -> None:
    f = tmp_path / "g.json"
    f.write_bytes(orjson.dumps({"node": "a", "broker": "mqtt://h:1", "credentials": "c.json"}))
    config = commands._config(GovernanceConfig, str(f), {"view_size": 12, "rounds": None})
    assert (config.node, config.view_size, config.rounds) == ("a", 12, 10)


def test_missing_and_unknown_settings_are_refused_in_one_line(tmp_path: Path) -> None:
    with pytest.raises(click.UsageError, match="--broker, --credentials"):
        commands._config(GovernanceConfig, None, {"node": "a"})
    f = tmp_path / "g.json"
    f.write_bytes(orjson.dumps({"node": "a", "broker": "b", "credentials": "c", "colour": 1}))
    with pytest.raises(SettingError, match="colour"):
        commands._config(GovernanceConfig, str(f), {})


@pytest.mark.parametrize(
    ("governance", "says"),
    [
        ("view_size: 3, shuffle_length: 3", "shuffle_length (3) must be smaller than view_size"),
        ("shuffle_period_s: 0.01", "shuffle_period_s must be >= 0.05"),
        ("kind: castle", "unknown node kind 'castle'"),
        ("view_size: many", "governance.view_size must be int"),
        ("plan_dispatch: obeys", "plan_dispatch must be one of binds, advises, got 'obeys'"),
    ],
)
def test_a_bad_setting_in_a_launch_file_names_the_line(
    tmp_path: Path, governance: str, says: str
) -> None:
    with pytest.raises(
        LaunchError, match=r"one\.yaml:3: .*" + says.replace("(", r"\(").replace(")", r"\)")
    ):
        parse(_launch(tmp_path, governance))


def test_a_unit_period_below_its_minimum_names_the_unit_and_the_line(tmp_path: Path) -> None:
    f = _launch(tmp_path, "kind: factory").read_text().replace("period_s: 0.5", "period_s: 0")
    (tmp_path / "one.yaml").write_text(f)
    with pytest.raises(
        LaunchError, match=r"one\.yaml:4: action battery: period_s must be >= 0\.01"
    ):
        parse(tmp_path / "one.yaml")
