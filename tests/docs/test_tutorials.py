"""The tutorials' commands, run as a reader would run them (tests/docs/shellblocks.py): the demo
grid (shortened, on free ports), the 10,000-node simulation (at full size: seconds), and one node
per machine on three machines, with three network namespaces standing in for the machines."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
from netports import node_block
from shellblocks import ROOT, blocks, replaced, run, workspace

TUTORIALS = ROOT / "docs" / "tutorials"


def _ok(out: subprocess.CompletedProcess[str]) -> None:
    assert out.returncode == 0, out.stdout[-3000:] + "\n" + out.stderr[-3000:]


@pytest.mark.e2e
def test_the_demo_grid_tutorial_runs_and_shows_a_price(tmp_path: Path) -> None:
    work = workspace(tmp_path)
    base = node_block(3)
    ports = f"gas_port:={base} factory_port:={base + 1} house_port:={base + 2}"
    make_demo, by_hand, inside = blocks(TUTORIALS / "demo-grid.md")
    launch = "redy launch launch/figure3.yaml"
    out, parts = run(
        [
            replaced(make_demo, {"make demo": f"make -o .venv/.installed demo DEMO_DURATION=25 DEMO_WEB_PORT=0 DEMO_ARGS='{ports}'"}),
            replaced(by_hand, {launch: f"{launch} {ports}", "--duration 40": "--duration 20"}),
            replaced(inside, {launch: f"{launch} {ports}", "127.0.0.1:18841": f"127.0.0.1:{base}",
                              "--duration 40": "--duration 30", "sleep 25": "sleep 20"}),
        ],
        work, 300,
    )  # fmt: skip
    _ok(out)
    demo, table, seen = parts
    assert "dashboard: http://" in demo
    assert re.search(r"^gas-1 .* \d+\.\d\s+cleared$", demo, re.M), demo[-3000:]
    assert re.search(r"^factory-1 .* \d+\.\d\s+cleared$", table, re.M), table
    for node in ("gas-1", "factory-1", "house-1"):
        assert node in seen
    assert re.search(r"price_eur_mwh\W+-?\d", seen), seen


@pytest.mark.e2e
def test_the_simulation_tutorial_runs_at_10000_nodes(tmp_path: Path) -> None:
    work = workspace(tmp_path)
    out, parts = run(blocks(TUTORIALS / "simulation.md"), work, 300)
    _ok(out)
    overlay, market, _ = parts
    assert "live nodes 5000" in overlay and "largest component 1.0" in overlay, overlay
    assert len(re.findall(r"^epoch \d+ price", market, re.M)) == 3, market
    for epoch in json.loads((work / "offers.json").read_text())["epochs"]:
        assert epoch["price"] == pytest.approx(epoch["price_optimal"], abs=1e-6)
