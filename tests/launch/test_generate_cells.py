"""`redy grid generate --market cells`: every node of the generated grid runs the cell market."""

from __future__ import annotations

from pathlib import Path

import pytest

from redy.launch.generate import default_templates, render_grid, templates_in
from redy.launch.parser import parse

pytestmark = pytest.mark.pure


def test_a_generated_grid_runs_the_cell_market_when_asked(tmp_path: Path) -> None:
    mix = {"gas_plant": 1, "eco_house_battery": 3, "solar_plant": 1}
    out = tmp_path / "grid.yaml"
    out.write_text(
        render_grid(mix, templates_in(default_templates()), 20000, tmp_path, market="cells")
    )
    desc = parse(out)
    got = {n.governance.value("market") for n in desc.nodes if n.governance}
    assert got == {"cells"}, got
