"""`redy sim ... --plot FILE.png` draws the simulators' results; progress goes to stderr only
when it is a terminal."""

from __future__ import annotations

import io
import os
import pty
import subprocess
import sys
from pathlib import Path
from typing import Any

import matplotlib.image
import orjson
import pytest

from redy.sim.balance import simulate_balance
from redy.sim.membership import simulate_membership
from redy.sim.plots import balance_figure, membership_figure
from redy.sim.progress import progress_for

REDY = [sys.executable, "-m", "redy"]


@pytest.mark.pure
def test_membership_figure_draws_the_dead_links_of_each_cycle_after_the_crash() -> None:
    result = simulate_membership(
        nodes=200, view_size=10, shuffle_length=4, cycles=25, crash=0.3, crash_at=10
    )
    fig = membership_figure(result)
    deg_ax, dead_ax = fig.axes
    (line,) = dead_ax.get_lines()
    assert list(line.get_ydata()) == result["dead_links"]
    assert list(line.get_xdata()) == list(range(10, 10 + len(result["dead_links"])))
    assert "in-degree" in deg_ax.get_xlabel()
    assert f"mean {result['in_degree']['mean']:.1f}" in deg_ax.texts[0].get_text()


@pytest.mark.pure
def test_membership_figure_draws_a_histogram_when_the_result_has_one() -> None:
    result = {"nodes": 6, "in_degree": {"histogram": [0, 1, 3, 2]}, "dead_links": []}
    (deg_ax, _) = membership_figure(result).axes
    assert [p.get_height() for p in deg_ax.patches] == [0, 1, 3, 2]


@pytest.mark.pure
def test_balance_figure_draws_price_optimum_and_imbalance_per_epoch() -> None:
    result = simulate_balance(nodes=40, epochs=4, rounds=10, view_size=8, shuffle_length=4)
    price_ax, imb_ax, _ratio_ax = balance_figure(result).axes
    gossip, optimum = price_ax.get_lines()
    assert list(gossip.get_ydata()) == [e["price"] for e in result["epochs"]]
    assert list(optimum.get_ydata()) == [e["price_optimal"] for e in result["epochs"]]
    assert [p.get_height() for p in imb_ax.patches] == [e["imbalance_kw"] for e in result["epochs"]]


@pytest.mark.integration
def test_sim_plot_option_writes_a_png_and_keeps_the_json(tmp_path: Path) -> None:
    for args in (
        ["membership", "--nodes", "100", "--cycles", "10", "--crash", "0.2", "--crash-at", "5"],
        ["balance", "--nodes", "30", "--epochs", "3", "--rounds", "10"],
    ):
        png = tmp_path / f"{args[0]}.png"
        done = subprocess.run(
            [*REDY, "sim", *args, "--json", "--plot", str(png)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        assert "parameters" in orjson.loads(done.stdout)
        assert done.stderr == ""  # not a terminal: no progress, no log noise
        height, width, _ = matplotlib.image.imread(png).shape
        assert width > 500 and height > 300
    bad = subprocess.run(
        [*REDY, "sim", "balance", "--nodes", "5", "--epochs", "1", "--plot", "/nonexistent/x.png"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 2 and bad.stderr.startswith("error: cannot write plot")


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.pure
def test_progress_bar_counts_the_steps_a_simulator_reports_and_is_silent_off_a_terminal() -> None:
    def simulate(steps: int, progress: Any = None) -> int:
        for _ in range(steps):
            progress(1)
        return steps

    tty = _Tty()
    with progress_for(simulate, 7, "cycles", stream=tty) as extra:
        simulate(7, **extra)
    assert "7/7" in tty.getvalue() and "cycles" in tty.getvalue()
    pipe = io.StringIO()
    with progress_for(simulate, 7, "cycles", stream=pipe) as extra:
        assert extra == {}
    assert pipe.getvalue() == ""


@pytest.mark.integration
def test_sim_shows_progress_on_a_terminal_stderr() -> None:
    leader, follower = pty.openpty()
    proc = subprocess.Popen(
        [*REDY, "sim", "membership", "--nodes", "3000", "--cycles", "30", "--json"],
        stdout=subprocess.PIPE,
        stderr=follower,
    )
    os.close(follower)
    seen = b""
    while True:  # read while it runs: a pty's unread output goes when its last writer closes
        try:
            chunk = os.read(leader, 4096)
        except OSError:
            break
        if not chunk:
            break
        seen += chunk
    os.close(leader)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0
    done = subprocess.CompletedProcess(proc.args, 0, out)
    assert b"simulating 30 cycles" in seen and b"elapsed" in seen
    assert orjson.loads(done.stdout)["parameters"]["nodes"] == 3000
