"""The tutorials' commands, run as a reader would run them (tests/docs/shellblocks.py): the demo
grid (shortened, on free ports), the 10,000-node simulation (at full size: seconds), the real
devices' launch checks, and one node per machine on three machines, with three network
namespaces standing in for the machines."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
from faults.faultgrid import Netns, have_netns
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
            replaced(inside, {launch: f"{launch} {ports}", "127.0.0.1:18841": f"127.0.0.1:{base}"}),
        ],
        work, 300,
    )  # fmt: skip
    _ok(out)
    demo, table, seen = parts
    assert "dashboard: http://" in demo
    assert re.search(r"^gas-1 .* \d+\.\d\s+cleared$", demo, re.M), demo[-3000:]
    assert re.search(r"^factory-1 .* \d+\.\d\s+cleared$", table, re.M), table
    # redy node list follows views that shuffles change under it: gas-1 is certain, the others
    # show in most runs (the tutorial says so).
    assert "gas-1 mqtt://" in seen, seen
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


def test_the_real_devices_tutorial_checks_its_launch_files(tmp_path: Path) -> None:
    """Its runnable steps are the checks of the shipped files (tests/drivers runs the house on
    counterparts of the devices)."""
    work = workspace(tmp_path)
    out, parts = run(blocks(TUTORIALS / "real-devices.md"), work, 120)
    _ok(out)
    house, station = parts
    assert "launch/eco_house_devices.yaml: ok (1 nodes, 3 units)" in house
    assert "launch/ev_station_ocpp.yaml: ok (1 nodes, 2 units)" in station


THREE = ("gas-1", "factory-1", "house-1")


def _state(out: str) -> dict[str, object] | None:
    for line in out.splitlines():
        if line.startswith("{"):
            message: dict[str, object] = json.loads(line)["message"]
            return message
    return None


@pytest.mark.e2e
def test_the_three_machines_tutorial_clears_one_price_on_three_namespaces(tmp_path: Path) -> None:
    """Steps 1, 3 and 4 as written: the operator's step on this host, each gateway's in a network
    namespace of its own (its own address), until every gateway's check shows one price."""
    problem = have_netns()
    assert problem is None, f"network namespaces unavailable: {problem} (make test runs as root)"
    work = workspace(tmp_path)
    laptop, gateway, check = blocks(TUTORIALS / "three-machines.md")
    net = Netns(3)
    hosts = " ".join(f"{n.split('-')[0]}_host:={a}" for n, a in zip(THREE, net.addrs, strict=True))
    example = 'HOSTS="gas_host:=192.0.2.10 factory_host:=192.0.2.11 house_host:=192.0.2.12"'
    out, _ = run(replaced(laptop, {example: f'HOSTS="{hosts}"'}), work, 120)
    _ok(out)

    # A gateway's shell: redy installed, the same HOSTS as the operator's, its own NODE and state.
    gateway = replaced(gateway, {"NODE=gas-1\n": ""})

    def on(i: int, block: str) -> str:
        state = tmp_path / f"machine-{i}"
        prelude = f'. .venv/bin/activate\nHOSTS="{hosts}"\nNODE={THREE[i]}\n'
        return prelude + replaced(block, {"/var/lib/redy": str(state)})

    gateways: list[subprocess.Popen[bytes]] = []
    net.up()
    try:
        for i in range(3):
            log = (tmp_path / f"gateway-{i}.log").open("wb")
            gateways.append(
                subprocess.Popen(
                    [*net.exec_prefix(i), "bash", "-euo", "pipefail", "-c", on(i, gateway)],
                    cwd=work,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )
            log.close()
        deadline = time.monotonic() + 120
        seen: dict[str, object] = {}
        while time.monotonic() < deadline:
            states = {}
            for i, node in enumerate(THREE):
                out, _ = run(on(i, check), work, 60, prefix=net.exec_prefix(i))
                states[node] = _state(out.stdout) if out.returncode == 0 else None
            seen = states
            prices = {
                (s["epoch"], s["price_eur_mwh"])
                for s in states.values()
                if s is not None and s.get("status") == "cleared"
            }
            if all(s is not None and s.get("status") == "cleared" for s in states.values()) and (
                len(prices) == 1
            ):
                break
            time.sleep(2)
        else:
            logs = "\n".join((tmp_path / f"gateway-{i}.log").read_text()[-1500:] for i in range(3))
            raise AssertionError(f"no common price on the three gateways: {seen}\n{logs}")
        assert all(p.poll() is None for p in gateways), "a gateway's node stopped"
    finally:
        for p in gateways:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for p in gateways:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(10)
        net.down()
