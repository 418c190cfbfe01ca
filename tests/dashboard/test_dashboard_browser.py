"""`redy dashboard` in a real browser (Debian's chromium, headless, driven by selenium): the page
lists every node of figure3, shows a common price, and updates when a node is killed."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from netports import OFFSETS
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

from redy.brokers import port_is_free

pytestmark = pytest.mark.e2e

LAUNCH = Path(__file__).resolve().parents[2] / "launch"
# The documentation's picture of the dashboard (docs/how-to/dashboard.md) is this test's: it
# goes to build/ (ignored by git, so a test run leaves the checkout clean) and `make docs`
# copies it into docs/images/.
DOCS_SCREENSHOT = Path(__file__).resolve().parents[2] / "build" / "docs" / "dashboard.png"
REDY = [sys.executable, "-m", "redy"]
NODES = ("gas-1", "factory-1", "house-1")


def _free_trio() -> list[int]:
    """Three consecutive local ports whose grid (+10000) and unit (+5000) ports are free too."""
    for base in range(21000, 23000, 7):
        ports = [base, base + 1, base + 2]
        if all(port_is_free(p + o) for p in ports for o in OFFSETS):
            return ports
    raise RuntimeError("no three free port pairs")


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[webdriver.Chrome]:
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    profile = tempfile.mkdtemp(prefix="chromium-", dir=tmp_path)
    for arg in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={profile}",
        "--window-size=1400,1000",
    ):
        options.add_argument(arg)
    service = Service(executable_path=shutil.which("chromedriver") or "/usr/bin/chromedriver")
    driver = webdriver.Chrome(service=service, options=options)
    try:
        yield driver
    finally:
        driver.quit()


def _wait(pred: Any, timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = pred()
        except Exception as exc:  # the page may be mid-render; try again
            last = exc
        if last and not isinstance(last, Exception):
            return last
        time.sleep(0.3)
    raise AssertionError(f"{what} not within {timeout_s} s (last: {last!r})")


def _rows(driver: webdriver.Chrome) -> dict[str, dict[str, str]]:
    """The node table as the page shows it, read in one script call: the page redraws the
    table every second, and cells read one by one may belong to a table already replaced."""
    table = driver.execute_script(
        "return [...document.querySelectorAll('#nodes tbody tr')]"
        ".map(tr => [...tr.querySelectorAll('td')].map(td => td.innerText.trim()));"
    )
    return {
        cells[0]: {
            "kind": cells[1],
            "price": cells[5],
            "units": cells[7],
            "epochs": cells[8],
            "live": cells[9],
        }
        for cells in table
        if len(cells) > 9
    }


def _stop(proc: subprocess.Popen[Any]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    for pipe in (proc.stdout, proc.stderr):
        if pipe is not None:
            pipe.close()


def test_the_page_lists_figure3_shows_a_common_price_and_sees_a_node_killed(
    tmp_path: Path, browser: webdriver.Chrome
) -> None:
    gas, factory, house = _free_trio()
    state = tmp_path / "state"
    launch = subprocess.Popen(
        [*REDY, "launch", str(LAUNCH / "figure3.yaml"), "--duration", "150",
         "--state-dir", str(state), f"gas_port:={gas}", f"factory_port:={factory}",
         f"house_port:={house}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    web: subprocess.Popen[str] | None = None
    try:
        _wait(lambda: all((state / n / "credentials.json").exists() for n in NODES), 30, "state")
        web = subprocess.Popen(
            [*REDY, "dashboard", "--launch-state", str(state), "--http-port", "0"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert web.stdout is not None
        url = re.search(r"http://\S+", web.stdout.readline())
        assert url, "the dashboard did not print its address"
        browser.get(url.group(0))

        rows = _wait(
            lambda: (r := _rows(browser)) and all(r.get(n, {}).get("live") == "up" for n in NODES) and r,
            60, "every node of figure3 up on the page",
        )  # fmt: skip
        assert set(rows) == set(NODES)
        assert {rows[n]["kind"] for n in NODES} == {"gas_plant", "factory", "eco_house"}
        common = _wait(
            lambda: re.match(r"(-?\d+\.\d+) EUR/MWh \(epoch \d+, 3 of 3 nodes\)",
                             browser.find_element(By.ID, "common-price").text),
            90, "a common price agreed by the 3 nodes",
        )  # fmt: skip
        price = float(common.group(1))
        rows = _rows(browser)
        assert all(abs(float(rows[n]["price"]) - price) < 1.0 for n in NODES), rows
        assert len(browser.find_elements(By.CSS_SELECTOR, "#overlay line")) >= 2
        # The governance's own counters (node_health), the ones /metrics serves.
        _wait(
            lambda: all(re.fullmatch(r"[1-9]\d*/\d+", _rows(browser)[n]["epochs"]) for n in NODES),
            30,
            "every node's cleared/missed epochs",
        )
        browser.save_screenshot(str(tmp_path / "dashboard.png"))
        DOCS_SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(tmp_path / "dashboard.png", DOCS_SCREENSHOT)

        # kill house-1: its broker first (the page loses it), then nothing answers for it
        out = subprocess.run(["ps", "-ww", "-eo", "pid=,args="], capture_output=True, text=True)
        conf = str(state / "house-1" / "mosquitto.conf")
        (pid,) = [int(line.split()[0]) for line in out.stdout.splitlines() if conf in line]
        os.kill(pid, signal.SIGKILL)
        _wait(lambda: _rows(browser)["house-1"]["live"] == "unreachable", 30, "house-1 shown dead")
        assert all(_rows(browser)[n]["live"] == "up" for n in ("gas-1", "factory-1"))
        browser.save_screenshot(str(tmp_path / "dashboard-house-1-killed.png"))
        assert (tmp_path / "dashboard-house-1-killed.png").stat().st_size > 10_000
    finally:
        if web is not None:
            _stop(web)
        _stop(launch)


def test_launch_web_serves_the_page_beside_the_launch_and_prints_its_address(
    tmp_path: Path,
) -> None:
    (port,) = _free_trio()[:1]
    f = tmp_path / "one.yaml"
    f.write_text(f"""\
launch:
  - broker: {{node: solo, port: {port}}}
  - governance: {{node: solo, kind: eco_house, distant: false, period_s: 0.3}}
  - detection: {{node: solo, name: meter, device: household_load, period_s: 0.3}}
""")
    launch = subprocess.Popen(
        [*REDY, "launch", str(f), "--duration", "60", "--state-dir", str(tmp_path / "s"),
         "--web", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    try:
        assert launch.stdout is not None
        url = _wait(lambda: re.search(r"dashboard: (http://\S+)", launch.stdout.readline()), 30,
                    "the dashboard's address")  # fmt: skip
        import urllib.request

        def solo_up() -> bool:
            with urllib.request.urlopen(url.group(1) + "api/state", timeout=5) as r:
                nodes = json.loads(r.read())["nodes"]
            return [(n["node"], n["liveness"]) for n in nodes] == [("solo", "up")]

        _wait(solo_up, 30, "solo up in /api/state")
        with urllib.request.urlopen(url.group(1), timeout=5) as r:
            page = r.read().decode()
        assert "/static/vendor/uPlot.iife.min.js" in page and "http" not in page.split("<body>")[1]
    finally:
        _stop(launch)
    assert launch.returncode == 0
