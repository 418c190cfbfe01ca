"""Plans in real processes: a launched grid of three nodes (a gas plant, a house with PV and a
battery, a house with a water heater and an EV; brokers, governance units and device units) with
`plan_intervals` set. Every node floods its signed horizon offer and solves the community's plan;
every node then holds the same plan, prices equal to the bit, and `redy plan show` prints it. A
member with a certificate of its own (20 kW of import, 10 of export) sends an offer beyond those
limits, a malformed one and a payload that is no message: each is dropped with one log line
naming it, and the nodes go on planning together without it. The dashboard shows the plan (in
headless chromium, as tests/dashboard does)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
from netports import node_block
from polling import until

from redy import messages, pki
from redy.brokers import GRID_PORT_OFFSET, load_credentials, try_connect
from redy.planning.offer import HorizonOffer
from redy.planning.wire import signed_body, to_message
from redy.signing import Signer
from redy.topics import render

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "dashboard"))
import test_dashboard_browser as browser_page

browser = browser_page.browser  # the dashboard tests' headless chromium, a fixture here too

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

REDY = [sys.executable, "-m", "redy"]
NODES = ("gas-1", "house-1", "house-2")
SPEED = 180.0  # a 15-minute interval lasts 5 s
INTERVAL_S = 15 * 60 / SPEED
HORIZON = 24


def gas_plant(port: int, common: str) -> str:
    """The launch lines of gas-1: a 20 kW gas plant at 70 EUR/MWh and a meter of its load."""
    return f"""\
  - broker: {{node: gas-1, port: {port}}}
  - governance: {{node: gas-1, kind: gas_plant, {common}}}
  - detection: {{node: gas-1, name: meter, device: fixed_load, period_s: 0.5,
      params: {{profile: g0, annual_kwh: 50000}}}}
  - action: {{node: gas-1, name: gen, device: gas_plant, period_s: 0.5,
      params: {{p_max_kw: 20, p_min_kw: 0, ramp_pct_per_min: 600, marginal_cost_eur_mwh: 70,
        startup_time_s: 0, min_on_s: 0, min_off_s: 0}}}}"""


def _grid_file(tmp: Path, port: int) -> Path:
    common = (
        f"epoch_s: 2, market: offers, plan_intervals: {HORIZON}, period_s: 0.5,"
        " shuffle_period_s: 0.5, shuffle_timeout_s: 0.4, view_size: 4, shuffle_length: 2"
    )
    text = f"""\
launch:
  - clock: {{speed: {SPEED:g}, start_s: 21600}}
{gas_plant(port, common)}
  - broker: {{node: house-1, port: {port + 1}}}
  - governance: {{node: house-1, kind: eco_house, introducer: gas-1, {common}}}
  - detection: {{node: house-1, name: pv-meter, device: pv, period_s: 0.5, params: {{kwp: 6}}}}
  - detection: {{node: house-1, name: load-meter, device: household_load, period_s: 0.5,
      params: {{annual_kwh: 4000}}}}
  - action: {{node: house-1, name: battery, device: battery, period_s: 0.5,
      params: {{capacity_kwh: 13.5, power_kw: 5, round_trip_efficiency: 0.9, soc: 0.8}}}}
  - broker: {{node: house-2, port: {port + 2}}}
  - governance: {{node: house-2, kind: eco_house, introducer: gas-1, {common}}}
  - detection: {{node: house-2, name: load-meter, device: household_load, period_s: 0.5,
      params: {{annual_kwh: 4000}}}}
  - action: {{node: house-2, name: water-heater, device: water_heater, period_s: 0.5,
      params: {{power_kw: 2.5, volume_l: 200}}}}
  - action: {{node: house-2, name: ev, device: ev_charger, period_s: 0.5,
      params: {{power_kw: 7.4, energy_needed_kwh: 10, deadline_s: 32400}}}}
"""
    path = tmp / "plan-grid.yaml"
    path.write_text(text)
    return path


class Grid:
    """A launched grid of `nodes` from `grid_file(tmp, first port)`, with `args` to the launch
    (tests/units/test_plan_binding_grid.py launches another one)."""

    def __init__(
        self,
        tmp: Path,
        nodes: tuple[str, ...] = NODES,
        grid_file: Callable[[Path, int], Path] = _grid_file,
        args: tuple[str, ...] = (),
    ) -> None:
        self.tmp = tmp
        self.state = tmp / "state"
        self.nodes = nodes
        self._grid_file = grid_file
        self._args = args
        self.port = node_block(len(nodes))
        self.launcher: subprocess.Popen[bytes] | None = None

    def local(self, node: str) -> int:
        return self.port + self.nodes.index(node)

    def grid_port(self, node: str) -> int:
        return self.local(node) + GRID_PORT_OFFSET

    def credentials(self, node: str) -> Path:
        return self.state / node / "credentials.json"

    def password(self, node: str) -> str:
        return load_credentials(self.credentials(node)).password("operator")

    def logs(self) -> str:
        return "\n".join(f.read_text() for f in sorted((self.state / "logs").glob("*.log")))

    def start(self) -> None:
        with open(self.tmp / "launch.log", "wb") as log:  # the child keeps its own descriptor
            self.launcher = subprocess.Popen(
                [*REDY, "launch", str(self._grid_file(self.tmp, self.port)), "--state-dir",
                 str(self.state), *self._args],
                stdout=log,
                stderr=subprocess.STDOUT,
            )  # fmt: skip
        for node in self.nodes:
            until(self.credentials(node).exists, 60, f"{node} credentials")
            until(
                lambda n=node: try_connect(
                    "127.0.0.1", self.local(n), "operator", self.password(n)
                )[0],
                60,
                f"{node} broker",
            )

    def stop(self) -> None:
        if self.launcher is None:
            return
        if self.launcher.poll() is None:
            self.launcher.terminate()
            try:
                self.launcher.wait(30)
            except subprocess.TimeoutExpired:
                self.launcher.kill()
                self.launcher.wait()


@pytest.fixture(scope="module")
def grid(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Grid]:
    g = Grid(tmp_path_factory.mktemp("plan-grid"))
    try:
        g.start()
        yield g
    finally:
        g.stop()


class Plans:
    """The plans every node's broker retains, as they come (one operator client per node)."""

    def __init__(self, grid: Grid, mqtt_client: Any) -> None:
        self.clients = {}
        for node in NODES:
            c = mqtt_client(grid.local(node), "operator", grid.password(node))
            c.subscribe(render("plan", node=node))
            self.clients[node] = c
        self.latest: dict[str, messages.Plan] = {}
        self.seen: dict[str, dict[str, messages.Plan]] = {n: {} for n in NODES}  # by digest

    def update(self) -> dict[str, messages.Plan]:
        for node, c in self.clients.items():
            for m in c.drain():
                plan = messages.decode(m.topic, m.payload)
                self.latest[node] = plan
                self.seen[node][plan.digest] = plan
        return self.latest

    def agreed(self, after: int = -1, offers: int = len(NODES)) -> messages.Plan | None:
        """One plan every node holds now, of an interval after `after`, counting `offers`."""
        got = self.update()
        if set(got) != set(NODES):
            return None
        first = got[NODES[0]]
        if first.start <= after or first.offers != offers:
            return None
        if all(
            p.start == first.start and p.digest == first.digest and p.offers == offers
            for p in got.values()
        ):
            return first
        return None


def test_every_node_holds_the_same_plan_and_redy_plan_show_prints_it(
    grid: Grid, mqtt_client: Any
) -> None:
    plans = Plans(grid, mqtt_client)
    plan = until(plans.agreed, 120, "one plan on every node", seen=lambda: plans.latest)
    held = dict(plans.latest)
    for node in NODES:
        p = held[node]
        # The same schedule on every node: its digest, and every price to the bit.
        assert p.price_eur_mwh == plan.price_eur_mwh
        assert [x.hex() for x in p.price_eur_mwh] == [x.hex() for x in plan.price_eur_mwh]
        assert p.import_kw == plan.import_kw and p.export_kw == plan.export_kw
        assert len(p.price_eur_mwh) == HORIZON and len(p.injection_kw) == HORIZON
        assert all(-500.0 <= x <= 4000.0 for x in p.price_eur_mwh)
    # Each node's own plan is its share: the community's balance holds in every interval.
    for t in range(HORIZON):
        net = sum(held[n].injection_kw[t] for n in NODES)
        assert net + plan.import_kw[t] - plan.export_kw[t] == pytest.approx(0.0, abs=1e-6)
    assert any(abs(x) > 1e-9 for x in held["house-1"].storage_kw)  # the battery is planned
    # The EV (10 kWh by 09:00, three simulated hours after the start) draws within its window.
    draw = held["house-2"].deferrable_kw
    assert sum(draw) > 0 and all(x == 0 for x in draw[12:]), draw

    env = {
        **os.environ,
        "REDY_BROKER": f"mqtt://127.0.0.1:{grid.local('house-1')}",
        "REDY_CREDENTIALS": str(grid.credentials("house-1")),
    }
    out = subprocess.run(
        [*REDY, "plan", "show", "house-1"], env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    head = re.match(r"plan of house-1: (\d+) intervals .* digest ([0-9a-f]{16})$", lines[0])
    assert head and int(head.group(1)) == HORIZON, out.stdout
    plans.update()
    shown = next(p for d, p in plans.seen["house-1"].items() if d.startswith(head.group(2)))
    rows = lines[2:14]
    assert len(rows) == 12 and lines[14].startswith("(12 more intervals")
    for t, row in enumerate(rows):
        cells = row.split()
        assert int(cells[0]) == shown.start + t
        assert cells[2] == f"{shown.price_eur_mwh[t]:.3f}"
        assert cells[6] == f"{shown.injection_kw[t]:.3f}"
    # Bad input: one line each, exit status 2.
    for argv, said in (
        (["plan", "show", "Not An Id"], "invalid node 'Not An Id'"),
        (["plan", "show", "nobody"], "no retained plan of node 'nobody'"),
    ):
        bad = subprocess.run([*REDY, *argv], env=env, capture_output=True, text=True, timeout=60)
        assert bad.returncode == 2, bad.stderr
        assert len(bad.stderr.strip().splitlines()) == 1 and said in bad.stderr, bad.stderr


def test_offers_beyond_certified_limits_or_malformed_are_dropped_and_planning_goes_on(
    grid: Grid, mqtt_client: Any
) -> None:
    plans = Plans(grid, mqtt_client)
    until(plans.agreed, 120, "one plan on every node", seen=lambda: plans.latest)
    ident = pki.issue(grid.state, "house-x", ["127.0.0.1"], pki.Grant("node", 20.0, 10.0))
    signer = Signer(ident)
    clients = {n: mqtt_client(grid.grid_port(n), None, None, "house-x", ident) for n in NODES}
    assert all(c.refused is None for c in clients.values())
    t0 = time.time()
    first = int(t0 // INTERVAL_S)
    while time.time() - t0 < 3 * INTERVAL_S:
        k = int(time.time() // INTERVAL_S)
        big = HorizonOffer(node="house-x", start=k, base_kw=(-9000.0,) * HORIZON)
        beyond = to_message(big, sig=signer.sign_bytes(signed_body(big, None)), cert=signer.cert)
        small = HorizonOffer(node="house-x", start=k, base_kw=(-1.0,) * HORIZON)
        store = messages.PlanStorage(
            capacity_kwh=1.0, soc_kwh=5.0, charge_kw=1.0, discharge_kw=1.0,
            charge_efficiency=0.9, discharge_efficiency=0.9, value_eur_kwh=0.0,
            wear_eur_mwh=0.0, soc_min_kwh=0.0,
        )  # fmt: skip
        malformed = attrs.evolve(
            to_message(small, sig=signer.sign_bytes(b"x"), cert=signer.cert), storage=(store,)
        )
        for node, c in clients.items():
            topic = render("plan_gossip", node=node, peer="house-x")
            msg = messages.PlanGossip(
                sender="house-x", start=k, ts_s=time.time(), offers=(beyond, malformed)
            )
            c.publish(topic, messages.encode(msg))
            c.publish(topic, b'{"sender": "house-x", "start": "soon"')
        time.sleep(0.5)
    logs = until(
        lambda: (lambda text: text if all(
            f"node={n} dropped a plan offer from house-x" in text for n in NODES
        ) else None)(grid.logs()),
        60,
        "every node's log line naming house-x",
    )  # fmt: skip
    assert re.search(
        r"dropped a plan offer from house-x: plan offer of house-x: interval \d+: net injection"
        r" from -9000 to -9000 kW, beyond its certified limits of -20\.\.10 kW",
        logs,
    ), logs[-3000:]
    assert re.search(
        r"dropped a plan offer from house-x: plan offer of house-x: storage:"
        r" expected 0 <= soc_min_kwh <= soc_kwh <= capacity_kwh",
        logs,
    ), logs[-3000:]
    assert "dropped invalid message: redy/gas-1/grid/plan/house-x" in logs
    # Planning goes on, together and without the liar.
    plan = until(
        lambda: plans.agreed(after=first + 3), 120, "a later plan on every node",
        seen=lambda: plans.latest,
    )  # fmt: skip
    assert plan.offers == len(NODES)
    # Each node reports after the fact how far its meters were from their forecast.
    assert all(p.forecast_error_kw is not None for p in plans.latest.values()), plans.latest


def test_the_dashboard_shows_the_plan_every_node_holds(grid: Grid, browser: Any) -> None:
    web = subprocess.Popen(
        [*REDY, "dashboard", "--launch-state", str(grid.state), "--http-port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert web.stdout is not None
        url = re.search(r"http://\S+", web.stdout.readline())
        assert url, "the dashboard did not print its address"
        browser.get(url.group(0))
        summary = until(
            lambda: re.search(
                r"from interval (\d+), 3 offers, held by 3 of 3 nodes",
                browser.execute_script("return document.getElementById('plan-summary').innerText"),
            ),
            60,
            "the plan held by the 3 nodes on the page",
        )
        assert int(summary.group(1)) > 0
        # Two charts: the prices and the three nodes' planned injection (a series each).
        legends = browser.execute_script(
            "return [...document.querySelectorAll('#plan-nodes-chart .u-series .u-label')]"
            ".map(e => e.innerText.trim());"
        )
        assert set(NODES) <= set(legends), legends
        assert browser.execute_script(
            "return document.querySelectorAll('#plan-price-chart canvas').length"
        )
    finally:
        browser_page._stop(web)


def test_a_governance_killed_mid_interval_comes_back_and_plans_with_the_others(
    grid: Grid, mqtt_client: Any
) -> None:
    plans = Plans(grid, mqtt_client)
    before = until(plans.agreed, 120, "one plan on every node", seen=lambda: plans.latest)
    config = str(grid.state / "house-2" / "governance.config.json")
    out = subprocess.run(["ps", "-ww", "-eo", "pid=,args="], capture_output=True, text=True)
    (pid,) = [int(line.split()[0]) for line in out.stdout.splitlines() if config in line]
    os.kill(pid, signal.SIGKILL)
    # The launcher respawns it: a new session, whose offer replaces the old one on every node,
    # and the others send the newcomer every offer again.
    plan = until(
        lambda: plans.agreed(after=before.start), 120, "a later plan on every node",
        seen=lambda: plans.latest,
    )  # fmt: skip
    assert plan.offers == len(NODES)
