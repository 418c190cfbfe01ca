"""Launch files: substitution, include, group, and every error with file:line."""

from __future__ import annotations

from pathlib import Path

import pytest

from redy.errors import LaunchError
from redy.launch.parser import LaunchDescription, parse

pytestmark = pytest.mark.pure

LAUNCH = Path(__file__).resolve().parents[2] / "launch"


def _write(tmp: Path, name: str, text: str) -> Path:
    p = tmp / name
    p.write_text(text)
    return p


NODE = """\
launch:
  - arg: {name: node, default: house-9}
  - arg: {name: port, default: "19001"}
  - let: {name: kwp, value: "7.5"}
  - broker: {node: $(var node), port: $(var port)}
  - governance: {node: $(var node), kind: eco_house}
  - detection: {node: $(var node), name: pv, device: pv, params: {kwp: $(var kwp)}}
"""


def test_every_shipped_launch_file_parses() -> None:
    for f in sorted(LAUNCH.glob("*.yaml")):
        assert parse(f).nodes, f


def test_shipped_grids_plan_an_island_unless_given_a_supplier() -> None:
    # No process of a launch is a supplier: a plan that counted on one placed the stores for
    # exchanges the grid cannot make (issue 29). One value per grid, from the top file.
    def supplier(desc: LaunchDescription) -> set[tuple[float, float]]:
        return {
            (n.governance.value("plan_import_kw"), n.governance.value("plan_export_kw"))
            for n in desc.nodes
            if n.governance
        }

    for f in sorted(LAUNCH.glob("*.yaml")):
        assert supplier(parse(f)) == {(0.0, 0.0)}, f
    for f in ("grid12.yaml", "figure3.yaml"):
        given = parse(LAUNCH / f, {"plan_import_kw": "500", "plan_export_kw": "200"})
        assert supplier(given) == {(500.0, 200.0)}, f


def test_figure3_is_the_papers_three_nodes() -> None:
    desc = parse(LAUNCH / "figure3.yaml")
    roles = {n.node: sorted(u.role for u in n.units) for n in desc.nodes}
    assert roles == {
        "gas-1": ["action", "detection"],
        "factory-1": ["action", "detection"],
        "house-1": ["action", "detection", "detection"],
    }
    assert all(n.governance is not None for n in desc.nodes)
    intro = {n.node: n.governance.value("introducer") for n in desc.nodes if n.governance}
    assert (
        intro["factory-1"] == intro["house-1"] == "mqtts://127.0.0.1:28841"
    )  # mutual TLS between nodes


def test_substitution_and_command_line_args(tmp_path: Path) -> None:
    desc = parse(_write(tmp_path, "n.yaml", NODE), {"node": "house-3"})
    (n,) = desc.nodes
    assert n.node == "house-3" and n.broker.port == 19001 and n.broker.grid_port == 29001
    assert n.units[0].params == {"kwp": 7.5}


def test_include_with_args_and_group_scope(tmp_path: Path) -> None:
    _write(tmp_path, "n.yaml", NODE)
    top = _write(
        tmp_path,
        "grid.yaml",
        """\
launch:
  - group:
      - let: {name: p, value: "19011"}
      - include: {file: "$(dirname)/n.yaml", arg: [{name: node, value: a}, {name: port, value: $(var p)}]}
  - include: {file: n.yaml, arg: [{name: node, value: b}, {name: port, value: "19021"}]}
""",
    )
    desc = parse(top)
    assert [(n.node, n.broker.port) for n in desc.nodes] == [("a", 19011), ("b", 19021)]


@pytest.mark.parametrize(
    ("text", "line", "expected"),
    [
        ("launch:\n  - broker: {node: a, port: 1, colour: red}\n", 2, "unknown key 'colour'"),
        ("launch:\n  - arg: {name: x}\n", 2, "argument 'x' has no default"),
        (
            "launch:\n  - broker: {node: a, port: 19001}\n  - detection: {node: a, name: m, device: warp}\n",
            3,
            "unknown device model 'warp'",
        ),
        (
            "launch:\n  - broker: {node: a, port: 19001}\n"
            "  - action: {node: a, name: m, device: battery}\n"
            "  - action: {node: a, name: m, device: battery}\n",
            4,
            "duplicate unit name 'm'",
        ),
        (
            "launch:\n  - broker: {node: a, port: 19001}\n  - broker: {node: a, port: 19002}\n",
            3,
            "already has a broker",
        ),
        ("launch:\n  - broker: {node: a, port: $(var nope)}\n", 2, "unknown variable 'nope'"),
        ("launch:\n  - broker: {node: a, port: [1, 2}\n", 2, "bad YAML"),
        ("launch:\n  - teleport: {}\n", 2, "unknown action 'teleport'"),
        (
            "launch:\n  - broker: {node: a, port: 19001}\n"
            "  - detection: {node: a, name: m, device: pv, params: {kwp: lots}}\n",
            3,
            "parameter 'kwp' expected a number, got 'lots'",
        ),
        (
            "launch:\n  - broker: {node: a, port: 19001}\n"
            "  - action: {node: a, name: m, device: battery, params: {colour: red}}\n",
            3,
            "unknown parameter 'colour'; expected one of",
        ),
        ("launch:\n  - broker: {node: a, port: abc}\n", 2, "broker.port must be int"),
        (
            "launch:\n  - broker: {node: a, port: 19001}\n  - governance: {node: a, kind: castle}\n",
            3,
            "unknown node kind 'castle'",
        ),
    ],
)
def test_bad_launch_files_name_file_line_and_expectation(
    tmp_path: Path, text: str, line: int, expected: str
) -> None:
    f = _write(tmp_path, "bad.yaml", text)
    with pytest.raises(LaunchError) as err:
        parse(f)
    msg = str(err.value)
    assert f"{f}:{line}" in msg and expected in msg and "\n" not in msg


def test_error_inside_an_include_names_the_included_file(tmp_path: Path) -> None:
    _write(tmp_path, "inner.yaml", "launch:\n  - broker: {node: a, port: 19001, bad: 1}\n")
    outer = _write(tmp_path, "outer.yaml", "launch:\n  - include: {file: inner.yaml}\n")
    with pytest.raises(LaunchError, match=r"inner\.yaml:2: unknown key 'bad'"):
        parse(outer)


def test_port_in_use_fails_before_anything_starts(tmp_path: Path) -> None:
    import socket

    from redy.launch.parser import check_ports_free

    with socket.socket() as s:
        # A port whose grid port (+10000) is still a valid port, taken by us.
        for port in range(21000, 40000, 37):
            try:
                s.bind(("127.0.0.1", port))
                break
            except OSError:
                continue
        s.listen()
        desc = parse(_write(tmp_path, "n.yaml", NODE), {"port": str(port)})
        with pytest.raises(LaunchError, match=f"port {port} is in use"):
            check_ports_free(desc)
