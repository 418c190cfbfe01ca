"""`redy grid generate`: launch files for grids of any size, checked by the launch parser and
run with `redy launch --compose`."""

from __future__ import annotations

import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from netports import node_block

from redy.errors import LaunchError
from redy.launch.generate import default_templates, parse_mix, render_grid, templates_in
from redy.launch.parser import parse

REDY = [sys.executable, "-m", "redy"]
MIX = {"gas_plant": 2, "factory": 5, "eco_house_battery": 40, "ev_station": 3, "solar_plant": 50}


@pytest.mark.pure
def test_a_generated_100_node_grid_parses_with_unique_ports_introducers_and_one_epoch(
    tmp_path: Path,
) -> None:
    out = tmp_path / "grid.yaml"
    out.write_text(render_grid(MIX, templates_in(default_templates()), 20000, tmp_path, 30, 5))
    desc = parse(out)
    assert len(desc.nodes) == 100
    kinds = Counter(n.governance.value("kind") for n in desc.nodes if n.governance)
    # eco_house_battery nodes are eco_house kind; ev_station and solar_plant their own
    assert kinds["gas_plant"] == 2 and kinds["factory"] == 5 and kinds["eco_house"] == 40
    ports = [p for n in desc.nodes for p in (n.broker.port, n.broker.grid_port)]
    assert len(set(ports)) == 200 and min(ports) == 20000 and max(ports) == 30099
    grid_uris = {n.broker.grid_uri: i for i, n in enumerate(desc.nodes)}
    first, *rest = desc.nodes
    assert first.governance is not None and first.governance.value("introducer") is None
    for i, n in enumerate(rest, start=1):
        assert n.governance is not None and n.governance.value("introducer") in grid_uris
        assert (
            grid_uris[n.governance.value("introducer")] < i
        )  # joins through a node started before it
    # no broker introduces more than the fanout (default 4)
    intro_load = Counter(n.governance.value("introducer") for n in rest if n.governance)
    assert max(intro_load.values()) <= 4
    assert {n.governance.value("epoch_s") for n in desc.nodes if n.governance} == {5.0}
    assert desc.clock.speed == 30.0


@pytest.mark.pure
def test_bad_mixes_and_port_plans_are_one_clear_error() -> None:
    templates = templates_in(default_templates())
    for text, expected in (
        ("gas_plant", "expected KIND=COUNT"),
        ("gas_plant=two", "expected KIND=COUNT"),
        ("gas_plant=0", "at least one node"),
        ("gas_plant=1,gas_plant=2", "twice"),
    ):
        with pytest.raises(LaunchError, match=expected):
            parse_mix(text)
    with pytest.raises(LaunchError, match=r"unknown node kind.*expected one of"):
        render_grid({"nuclear": 1}, templates, 20000, Path("."))
    with pytest.raises(LaunchError, match=r"need ports 60000\.\.70001"):
        render_grid({"gas_plant": 2}, templates, 60000, Path("."))


def _free_block(n: int) -> int:
    """A first port P with P..P+n-1 and their grid and unit ports free."""
    return node_block(n, 20000, 22000)


@pytest.mark.e2e
def test_a_generated_grid_runs_in_compose_mode(tmp_path: Path) -> None:
    out = tmp_path / "grid.yaml"
    base = _free_block(6)
    made = subprocess.run(
        [*REDY, "grid", "generate", "--mix", "gas_plant=1,factory=1,eco_house_battery=4",
         "--ports", str(base), "--epoch-s", "3", "-o", str(out)],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    assert "6 nodes, 20 units" in made.stdout
    run = subprocess.run(
        [*REDY, "launch", str(out), "--compose", "--duration", "25",
         "--state-dir", str(tmp_path / "state"), "--table", "10"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    summary = run.stdout.split("=== summary ===")[1]
    for node in ["gas-plant-1", "factory-1", *(f"eco-house-battery-{i}" for i in range(1, 5))]:
        m = re.search(rf"^{node}: (\d+) states.*online at the end (\d+)/(\d+)", summary, re.M)
        assert m, f"{node} missing from the summary:\n{summary}"
        assert int(m.group(1)) > 0 and m.group(2) == m.group(3), m.group(0)


@pytest.mark.pure
def test_a_generated_grid_plans_when_asked(tmp_path: Path) -> None:
    mix = {"gas_plant": 1, "eco_house_battery": 2, "ev_station": 1, "wind_farm": 1}
    for asked, expected in ((None, 0), (96, 96)):
        out = tmp_path / f"grid-{asked}.yaml"
        kw = {} if asked is None else {"plan_intervals": asked}
        out.write_text(render_grid(mix, templates_in(default_templates()), 20000, tmp_path, **kw))
        desc = parse(out)
        got = {n.governance.value("plan_intervals") for n in desc.nodes if n.governance}
        assert got == {expected}, got
