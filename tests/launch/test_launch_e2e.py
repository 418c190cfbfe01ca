"""`redy launch` end to end: real brokers, real unit processes, respawn, clean stops."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from netports import OFFSETS, node_block
from polling import until

from redy import messages
from redy.brokers import load_credentials, port_is_free, try_connect
from redy.launch.supervisor import CRASH_LIMIT
from redy.topics import render

pytestmark = pytest.mark.e2e

LAUNCH = Path(__file__).resolve().parents[2] / "launch"
REDY = [sys.executable, "-m", "redy"]


def _descendants(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-eo", "pid=,ppid=,sid=,args="], capture_output=True, text=True)
    rows = [line.split(None, 3) for line in out.stdout.splitlines()]
    kids, frontier = [], [pid]
    while frontier:
        p = frontier.pop()
        for r in rows:
            if int(r[1]) == p:
                kids.append(int(r[0]))
                frontier.append(int(r[0]))
    return kids


def _processes_using(state_dir: Path) -> list[str]:
    """Command lines that name `state_dir` (brokers' configs, units' credentials)."""
    out = subprocess.run(["ps", "-ww", "-eo", "args="], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if str(state_dir) in line]


def _free_ports() -> int:
    """A port P with its grid (+10000) and unit (+5000) ports free too."""
    return node_block()


FIGURE3_UNITS = {
    "gas-1": {"meter": "detection", "turbine": "action"},
    "factory-1": {"meter": "detection", "furnace": "action"},
    "house-1": {"pv-meter": "detection", "load-meter": "detection", "water-heater": "action"},
}


def test_figure3_for_20_s_retains_every_birth_exits_0_and_leaves_nothing_behind(
    tmp_path: Path, mqtt_client: Any
) -> None:
    # Free ports, not figure3's defaults: another run on this machine may hold those.
    local = [_free_ports() for _ in FIGURE3_UNITS]
    ports = [*local, *(p + 10000 for p in local)]
    metrics_port = node_block()
    launcher = subprocess.Popen(
        [
            *REDY,
            "launch",
            str(LAUNCH / "figure3.yaml"),
            *(
                f"{a}:={p}"
                for a, p in zip(("gas_port", "factory_port", "house_port"), local, strict=True)
            ),
            "plan_intervals:=8",  # the nodes plan too: the plan's counters are served
            "--duration",
            "20",
            "--state-dir",
            str(tmp_path),
            "--table",
            "5",
            "--metrics",
            str(metrics_port),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        for port, (node, units) in zip(ports, FIGURE3_UNITS.items(), strict=False):
            creds = tmp_path / node / "credentials.json"
            until(creds.exists, 20, f"{node} credentials")
            password = load_credentials(creds).password("operator")
            until(
                lambda p=port, pw=password: try_connect("127.0.0.1", p, "operator", pw)[0],
                20,
                f"{node} broker",
            )
            wanted = {
                render(t, node=node, unit=u) for u in units for t in ("unit_meta", "unit_state")
            }

            def births(
                port: int = port, password: str = password, wanted: set[str] = wanted
            ) -> dict[str, Any] | None:
                # A fresh subscriber each time: what it gets at once is the retained store.
                op = mqtt_client(port, "operator", password)
                got = op.retained("redy/+/units/#")
                op.close()
                return got if wanted <= set(got) else None

            got = until(births, 20, f"{node}: every unit's birth and state retained")
            for unit, role in units.items():
                meta = got[render("unit_meta", node=node, unit=unit)]
                state = got[render("unit_state", node=node, unit=unit)]
                assert messages.decode(meta.topic, meta.payload).role == role
                assert messages.decode(state.topic, state.payload).state == "online"
        # Every series for every node and process, parsed as Prometheus parses it.
        families = until(
            lambda: _scrape_when_counted(metrics_port), 20, "every node's counters on /metrics"
        )
        _assert_every_series(families, FIGURE3_UNITS)
        out, err = launcher.communicate(timeout=60)
    finally:
        if launcher.poll() is None:
            launcher.kill()
            launcher.communicate()  # reaped, its pipes closed
    assert launcher.returncode == 0, err[-2000:]
    assert "gas-1" in out and "=== summary ===" in out
    assert _processes_using(tmp_path) == []
    assert all(port_is_free(p) for p in ports)
    for node, units in FIGURE3_UNITS.items():  # every node produced states while it ran
        line = re.search(
            rf"^{node}: (\d+) states, .* units online at the end (\d+)/(\d+)(, epochs .*)?$",
            out,
            re.M,
        )
        assert line, f"no summary line for {node}:\n{out[-2000:]}"
        states, online, total = map(int, line.groups()[:3])
        # A state a second once the brokers are up, 10 to 15 of them here; at least 3 even on a
        # machine so loaded that the brokers take most of the 20 s to come up.
        assert states >= 3, line.group(0)
        assert online == total == len(units), line.group(0)


NODE_SERIES = (
    "redy_node_up",
    "redy_node_price_eur_per_mwh",
    "redy_node_epoch",
    "redy_node_clock_offset_seconds",
    "redy_market_epochs_cleared_total",
    "redy_market_epochs_missed_total",
    "redy_market_offers",
    "redy_peer_dials_total",
    "redy_peer_failures_total",
    "redy_peer_links",
    "redy_governance_inbox_messages",
    "redy_governance_tasks",
    "redy_governance_start_time_seconds",
    "redy_plan_solved_total",
    "redy_plan_solve_seconds",
    "redy_plan_interval",
    "redy_plan_binding",
    "redy_plan_offers_admitted_total",
)
PROCESS_SERIES = (
    "redy_process_up",
    "redy_process_respawns_total",
    "redy_process_resident_memory_bytes",
    "redy_process_open_fds",
)


def _scrape_when_counted(port: int) -> dict[str, list[Any]] | None:
    """/metrics parsed by prometheus_client's parser, by sample name; None until every node
    has every node series (its governance reported its counters, cleared a price and measured
    its clock against its neighbours')."""
    from prometheus_client.parser import text_string_to_metric_families

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            text = r.read().decode()
    except OSError:
        return None
    samples: dict[str, list[Any]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append(sample)
    every = all(
        {s.labels["node"] for s in samples.get(name, [])} == set(FIGURE3_UNITS)
        for name in NODE_SERIES
    )
    solved = every and all(s.value >= 1 for s in samples["redy_plan_solved_total"])
    return samples if solved else None


def _assert_every_series(samples: dict[str, list[Any]], units: dict[str, dict[str, str]]) -> None:
    for name in NODE_SERIES:
        assert {s.labels["node"] for s in samples[name]} == set(units), name
    statuses = [s for s in samples["redy_node_status"] if s.value == 1.0]
    assert sorted(s.labels["node"] for s in statuses) == sorted(units)  # one status per node
    processes = {(n, p) for n, us in units.items() for p in [*us, "governance", "broker"]}
    for name in PROCESS_SERIES:
        got = {(s.labels["node"], s.labels["process"]) for s in samples[name]}
        assert processes <= got, (name, processes - got)
    assert all(s.value > 1e6 for s in samples["redy_process_resident_memory_bytes"])
    assert all(s.value == 0 for s in samples["redy_process_respawns_total"])
    # The plan's counters: a solve well within an interval (1.25 s at speed 720), the current
    # interval, the peers' offers taken in; figure3 has no store or EV, so no plan binds;
    # refusals are served per reason only once there are any.
    assert all(0 < s.value < 1.25 for s in samples["redy_plan_solve_seconds"])
    now = time.time() / 1.25  # reported within the last health period or two (5 s each)
    assert all(now - 10 <= s.value <= now + 1 for s in samples["redy_plan_interval"])
    assert all(s.value >= 1 for s in samples["redy_plan_offers_admitted_total"])
    assert all(s.value == 0 for s in samples["redy_plan_binding"])
    assert all(
        s.labels["reason"] in ("form", "horizon", "signature", "limits", "twice", "sessions")
        for s in samples.get("redy_plan_offers_refused_total", [])
    )


def _one_node_file(tmp_path: Path) -> Path:
    f = tmp_path / "one.yaml"
    f.write_text("""\
launch:
  - arg: {name: port}
  - broker: {node: solo, port: $(var port)}
  - governance: {node: solo, kind: eco_house, distant: false, period_s: 0.3}
  - action: {node: solo, name: battery, device: battery, period_s: 0.3, respawn: true, respawn_delay_s: 0.5}
  - detection: {node: solo, name: meter, device: household_load, period_s: 0.3}
""")
    return f


@pytest.mark.parametrize("compose", [False, True], ids=["processes", "compose"])
def test_respawn_after_kill9_and_sigterm_stops_everything(
    tmp_path: Path, mqtt_client: Any, compose: bool
) -> None:
    port = _free_ports()
    state = tmp_path / "state"
    argv = [
        *REDY,
        "launch",
        str(_one_node_file(tmp_path)),
        f"port:={port}",
        "--state-dir",
        str(state),
    ]
    if compose:
        argv.append("--compose")
    launcher = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        creds = state / "solo" / "credentials.json"
        until(creds.exists, 20, "credentials")
        # Credentials are written before the broker starts: wait until it accepts them.
        password = load_credentials(creds).password("operator")
        until(lambda: try_connect("127.0.0.1", port, "operator", password)[0], 20, "broker up")
        op = mqtt_client(port, "operator", password)
        op.subscribe("redy/solo/units/+/meta")
        meta_topic = render("unit_meta", node="solo", unit="battery")
        first = messages.decode(meta_topic, op.wait_for(meta_topic, 20).payload)
        kids = _descendants(launcher.pid)
        unit_pids = [
            p for p in kids if _is_unit(p, "battery" if not compose else "redy.launch.compose")
        ]
        assert unit_pids
        os.kill(unit_pids[0], signal.SIGKILL)
        again = messages.decode(meta_topic, op.wait_for(meta_topic, 20).payload)
        assert again.bd_seq > first.bd_seq  # a new session announced itself
        launcher.send_signal(signal.SIGTERM)
        assert launcher.wait(30) == 0
        assert _processes_using(state) == []
        assert all(port_is_free(port + o) for o in OFFSETS)
    finally:
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait()
        for pipe in (launcher.stdout, launcher.stderr):
            if pipe is not None:
                pipe.close()


def _is_unit(pid: int, word: str) -> bool:
    try:
        return word in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False


def test_kill9_of_the_launcher_leaves_no_unit_or_broker(tmp_path: Path) -> None:
    port = _free_ports()
    state = tmp_path / "state"
    with open(tmp_path / "launch.log", "wb") as log:  # the child keeps its own descriptor
        launcher = subprocess.Popen(
            [*REDY, "launch", str(_one_node_file(tmp_path)), f"port:={port}", "--state-dir", state],
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
    try:
        # The broker and the three units of _one_node_file, each naming the state directory.
        until(lambda: len(_processes_using(state)) >= 4, 20, "launch up")
        launcher.kill()
        launcher.wait()
        until(lambda: _processes_using(state) == [], 10, "orphans gone")
    finally:
        if launcher.poll() is None:
            launcher.kill()


def test_a_launch_that_gave_up_on_a_process_exits_1(tmp_path: Path) -> None:
    """The battery's process is killed each time it comes back until the crash-loop limit gives
    it up; the launch then stops on SIGTERM with exit status 1 and names it (it used to exit 0)."""
    port = _free_ports()
    state = tmp_path / "state"
    argv = [*REDY, "launch", str(_one_node_file(tmp_path)), f"port:={port}"]
    launcher = subprocess.Popen(
        [*argv, "--state-dir", str(state)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        creds = state / "solo" / "credentials.json"
        until(creds.exists, 20, "credentials")
        password = load_credentials(creds).password("operator")
        until(lambda: try_connect("127.0.0.1", port, "operator", password)[0], 20, "broker up")
        killed: set[int] = set()

        def kill_battery() -> bool:
            for pid in _descendants(launcher.pid):
                if pid not in killed and _is_unit(pid, "battery"):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                    killed.add(pid)
            return len(killed) >= CRASH_LIMIT

        until(kill_battery, 60, f"{CRASH_LIMIT} deaths of the battery's process")
        time.sleep(1.0)  # the supervisor's next poll sees the last death
        launcher.send_signal(signal.SIGTERM)
        _, err = launcher.communicate(timeout=30)
        assert launcher.returncode == 1, err[-2000:]
        assert "giving up on" in err and "exit status 1" in err
    finally:
        if launcher.poll() is None:
            launcher.kill()
