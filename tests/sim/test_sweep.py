"""`redy sim sweep` and `redy sim study`: a small grid at 200 nodes end to end (CSV columns, one
row per run and period, resuming, the report and its plots), the grid's parsing, and the verify
detector's healing on the reference engine."""

from __future__ import annotations

import csv
import random
import subprocess
import sys
from pathlib import Path

import pytest

from redy.errors import SimulationError
from redy.sim.churn import SmartGridDay
from redy.sim.membership import simulate_membership
from redy.sim.sweep import columns, parse_grid

pytestmark = pytest.mark.pure

_GRID = "view=4,8 shuffle=2,4 period_s=1,2"  # (4, 4) is skipped: SL < c
_REDY = [sys.executable, "-c", "import sys; from redy.cli import main; sys.exit(main())"]


def _redy(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*_REDY, *args], capture_output=True, text=True, timeout=120)


def _rows(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        return list(reader.fieldnames or ()), list(reader)


def test_a_small_sweep_writes_every_column_resumes_and_builds_the_report(tmp_path: Path) -> None:
    out = tmp_path / "results.csv"
    args = ["sim", "sweep", "membership", "--grid", _GRID, "--nodes", "200"]
    first = _redy(*args, "--seeds", "1", "-o", str(out))
    assert first.returncode == 0, first.stderr
    assert "3 runs done, 0 already" in first.stdout
    header, rows = _rows(out)
    assert header == columns()
    assert len(rows) == 3 * 2  # three (c, SL) runs, each written for two periods
    for row in rows:
        assert row["nodes"] == "200"
        for col in ("in_degree_std", "verify_crash50_heal_cycles", "bytes_per_node_s"):
            assert float(row[col]) > 0, col
        assert row["cost_gap_ratio"] == ""  # a membership sweep has no market columns
    again = _redy(*args, "--seeds", "2", "-o", str(out))
    assert again.returncode == 0, again.stderr
    assert "3 runs done, 3 already" in again.stdout
    assert len(_rows(out)[1]) == 12

    docs = tmp_path / "docs"
    built = _redy("sim", "study", str(out), "--docs", str(docs))
    assert built.returncode == 0, built.stderr
    text = (docs / "shuffle-study.md").read_text()
    for section in ("## Recommendation", "Per node kind", "Pareto front", "HyParView"):
        assert section in text
    for png in ("study-heal.png", "study-shape.png", "study-pareto.png", "study-churn.png"):
        assert (docs / png).read_bytes()[:4] == b"\x89PNG"
        assert f"({png})" in text


def test_a_bad_grid_is_one_clear_error() -> None:
    with pytest.raises(SimulationError, match="bad grid item"):
        parse_grid("view=4,8 colour=red")
    with pytest.raises(SimulationError, match="bad grid values for shuffle"):
        parse_grid("shuffle=two")
    assert parse_grid("view=8,4")["view"] == [4, 8]
    res = _redy("sim", "sweep", "membership", "--grid", "x", "-o", "f.csv")
    assert res.returncode == 2 and res.stderr.startswith("error: bad grid item")


@pytest.mark.parametrize("crash, within", [(0.5, 3), (0.9, 5)])
def test_verify_clears_dead_links_within_the_issue_targets(crash: float, within: int) -> None:
    """The reference engine (every node a Cyclon): 3 cycles after a 50 % crash, 5 after 90 %."""
    for seed in (1, 2, 3):
        r = simulate_membership(
            nodes=300,
            view_size=8,
            shuffle_length=4,
            cycles=30,
            crash=crash,
            crash_at=20,
            detector="verify",
            bootstrap="random",
            seed=seed,
            engine="core",
        )
        assert r["dead_links"][within - 1] == 0, r["dead_links"][:within]


def test_the_smart_grid_day_sleeps_households_and_storms_one_region() -> None:
    day = SmartGridDay(2000, random.Random(3))
    region = [
        i for i in range(2000) if day.region[i] == day.storm_region and day.kind[i] != "plant"
    ]
    assert set(day.storm) <= set(region)
    assert len(day.storm) == round(0.3 * len(region))
    down = {i: t for t, nodes in day.down.items() for i in nodes}
    up = {i: t for t, nodes in day.up.items() for i in nodes}
    assert down.keys() == up.keys()
    assert all(day.kind[i] == "household" and down[i] < up[i] for i in down)
    households = sum(k == "household" for k in day.kind)
    assert 0.4 * households < len(down) < 0.6 * households
    assert all(day.kind[day.introducer[i]] == "plant" for i in range(2000))
