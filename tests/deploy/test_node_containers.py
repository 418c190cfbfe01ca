"""Four node containers of the node image on their own Docker network, over mutual TLS: they form
one overlay and clear one price; `docker kill` of one node leaves the others clearing without it
and forgetting it; `docker restart` brings it back into the overlay and the market.

The containers run exactly what `redy deploy compose` generates (command, launch files,
certificates), each with its own address on a network this test creates and removes.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import subprocess
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from click.testing import CliRunner

from redy.cli import cli
from redy.deploy import STATE_DIR, node_image

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

VICTIM = "house-2"

_TURBINE = (
    "action: {{node: $(var n), name: turbine, device: gas_plant, params: {{p_max_kw: {p}, "
    "p_min_kw: 100, ramp_pct_per_min: 20, marginal_cost_eur_mwh: {cost}, startup_time_s: 300, "
    "min_on_s: 1800, min_off_s: 1800}}}}"
)
_LOAD = (
    "detection: {{node: $(var n), name: load-meter, device: fixed_load, "
    "params: {{profile: g0, annual_kwh: {kwh}}}}}"
)
# node -> (kind, introducers, its one unit): two producers of different costs, two loads.
_PLAN = {
    "gas-1": ("gas_plant", "", _TURBINE.format(p=2000, cost=95)),
    "gas-2": ("gas_plant", "gas-1", _TURBINE.format(p=1500, cost=70)),
    "house-1": ("eco_house", "gas-1", _LOAD.format(kwh=3_000_000)),
    "house-2": ("eco_house", "gas-2,gas-1", _LOAD.format(kwh=2_000_000)),
}


def _grid_yaml() -> str:
    """One node per machine (here: per container); peers dial each other by name."""
    lines = ["launch:", "  - clock: {speed: 60, start_s: 43200}"]
    for name, (kind, intro, unit) in _PLAN.items():
        lines += [
            "  - group:",
            f"    - let: {{name: n, value: {name}}}",
            "    - broker: {node: $(var n), port: 1883, grid_port: 8883, grid_bind: 0.0.0.0,"
            " advertise: $(var n)}",
            f"    - governance: {{node: $(var n), kind: {kind}, introducer: '{intro}',"
            " epoch_s: 4, rounds: 10, shuffle_period_s: 1.0}",
            f"    - {unit}",
        ]
    return "\n".join(lines) + "\n"


NODES = tuple(_PLAN)


def _generated(tmp_path: Path) -> tuple[Path, dict[str, Any]]:
    grid = tmp_path / "grid.yaml"
    grid.write_text(_grid_yaml())
    out = tmp_path / "deploy"
    ca = CliRunner().invoke(cli, ["grid", "ca", "init", "--state-dir", str(tmp_path / "ca")])
    assert ca.exit_code == 0, ca.output
    result = CliRunner().invoke(
        cli,
        ["deploy", "compose", str(grid), "-o", str(out), "--certs", str(tmp_path / "ca")],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    return out, yaml.safe_load((out / "compose.yaml").read_text())


@pytest.fixture
def grid_containers(tmp_path: Path) -> Iterator[dict[str, Any]]:
    image = node_image()
    ready = subprocess.run(["docker", "image", "inspect", image], capture_output=True, check=False)
    if ready.returncode != 0:
        pytest.fail(f"image {image} is missing or dockerd is down (make image builds it)")
    from testcontainers.core.container import DockerContainer
    from testcontainers.core.network import Network

    out, doc = _generated(tmp_path)
    _sweep_networks()
    labels = {"org.redy.test": "1", "org.redy.owner-pid": str(os.getpid())}
    network = Network(docker_network_kw={"labels": labels})
    network.name = f"redy-grid-{secrets.token_hex(4)}"
    network.create()
    containers: dict[str, Any] = {}
    try:
        for name in NODES:
            svc = doc["services"][name]
            c = (
                DockerContainer(svc["image"])
                .with_name(f"redy-{name}-{secrets.token_hex(3)}")
                .with_command(svc["command"])
                .with_network(network)
                .with_network_aliases(name)
                .with_kwargs(
                    init=True,
                    labels={"org.redy.test": "1", "org.redy.owner-pid": str(os.getpid())},
                    hostname=name,
                )
            )
            for volume in svc["volumes"]:  # the generated bind mounts; the state stays inside
                src, dst, *mode = volume.split(":")
                if src.startswith("./"):
                    c.with_volume_mapping(str(out / src), dst, *mode)
            containers[name] = c
        with ThreadPoolExecutor(len(containers)) as pool:
            list(pool.map(lambda c: c.start(), containers.values()))
        yield containers
    finally:
        with ThreadPoolExecutor(len(NODES)) as pool:
            list(pool.map(_remove, containers.values()))
        with contextlib.suppress(Exception):  # already removed
            network.remove()


def _sweep_networks() -> None:
    """Remove test networks left by runs that were killed (their owner process is gone);
    their containers went with conftest's sweep."""
    listed = subprocess.run(
        [
            "docker",
            "network",
            "ls",
            "--filter",
            "label=org.redy.test",
            "--format",
            '{{.Name}} {{.Label "org.redy.owner-pid"}}',
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    for line in listed.stdout.splitlines():
        name, _, pid = line.partition(" ")
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            subprocess.run(["docker", "network", "rm", name], capture_output=True, check=False)


def _remove(container: Any) -> None:
    with contextlib.suppress(Exception):  # never started, or already gone
        container.stop()


def _health(container: Any, name: str) -> dict[str, Any] | None:
    svc_cmd = ["python3", "-m", "redy", "deploy", "health", "/etc/redy/launch/grid.yaml"]
    result = container.get_wrapped_container().exec_run(
        [*svc_cmd, "--node", name, "--state-dir", STATE_DIR, "--json"]
    )
    try:
        return dict(orjson.loads(result.output.strip().splitlines()[-1]))
    except (orjson.JSONDecodeError, IndexError):
        return None


def _snapshot(containers: dict[str, Any], names: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    with ThreadPoolExecutor(len(names)) as pool:
        found = dict(zip(names, pool.map(lambda n: _health(containers[n], n), names), strict=True))
    return {n: h for n, h in found.items() if h is not None}


def _one_overlay(states: dict[str, dict[str, Any]], names: tuple[str, ...]) -> bool:
    """Whether the views of `names` (as undirected edges) connect them all."""
    seen, todo = {names[0]}, [names[0]]
    while todo:
        n = todo.pop()
        near = set(states[n]["neighbours"]) | {m for m in names if n in states[m]["neighbours"]}
        for m in near & set(names) - seen:
            seen.add(m)
            todo.append(m)
    return seen == set(names)


def _cleared_together(states: dict[str, dict[str, Any]], names: tuple[str, ...]) -> bool:
    """All `names` cleared the same epoch at one price (within gossip's 1 % error)."""
    got = [states[n] for n in names]
    if any(s["status"] != "cleared" or s["price_eur_mwh"] is None for s in got):
        return False
    if len({s["epoch"] for s in got}) != 1:
        return False
    prices = [s["price_eur_mwh"] for s in got]
    return max(prices) - min(prices) <= 0.01 * max(abs(p) for p in prices) + 0.5


def _wait(
    containers: dict[str, Any],
    names: tuple[str, ...],
    ok: Callable[[dict[str, dict[str, Any]]], bool],
    what: str,
    timeout_s: float,
) -> dict[str, dict[str, Any]]:
    deadline = time.monotonic() + timeout_s
    states: dict[str, dict[str, Any]] = {}
    while time.monotonic() < deadline:
        states = _snapshot(containers, names)
        if len(states) == len(names) and ok(states):
            return states
        time.sleep(0.5)
    pytest.fail(f"{what} within {timeout_s:.0f} s; last states: {states}")


def test_four_node_containers_form_one_grid_survive_kill_and_restart(
    grid_containers: dict[str, Any],
) -> None:
    containers = grid_containers
    assert all(c.get_wrapped_container().image.tags[0] == node_image() for c in containers.values())
    addresses = set()
    for c in containers.values():
        c.get_wrapped_container().reload()
        nets = c.get_wrapped_container().attrs["NetworkSettings"]["Networks"]
        assert len(nets) == 1 and "host" not in nets  # its own network, not the host's
        addresses.add(next(iter(nets.values()))["IPAddress"])
    assert len(addresses) == len(NODES) and "" not in addresses  # each its own address

    states = _wait(
        containers,
        NODES,
        lambda s: (
            all(x["healthy"] for x in s.values())
            and _one_overlay(s, NODES)
            and _cleared_together(s, NODES)
        ),
        "four containers forming one overlay and clearing one price",
        90,
    )
    before = states[NODES[0]]["epoch"]

    containers[VICTIM].get_wrapped_container().kill()
    alive = tuple(n for n in NODES if n != VICTIM)
    _wait(
        containers,
        alive,
        lambda s: (
            all(VICTIM not in x["neighbours"] for x in s.values())
            and _one_overlay(s, alive)
            and _cleared_together(s, alive)
            and s[alive[0]]["epoch"] > before
        ),
        f"the others forgetting the killed {VICTIM} and clearing without it",
        60,
    )

    containers[VICTIM].get_wrapped_container().restart(timeout=5)
    _wait(
        containers,
        NODES,
        lambda s: (
            any(VICTIM in x["neighbours"] for n, x in s.items() if n != VICTIM)
            and s[VICTIM]["neighbours"] != []
            and _cleared_together(s, NODES)
        ),
        f"the restarted {VICTIM} rejoining the overlay and the market",
        60,
    )


def test_generated_compose_file_runs_the_grid_and_docker_sees_it_healthy(tmp_path: Path) -> None:
    """`docker-compose up` of what `redy deploy compose` writes for launch/three_machines.yaml
    (one machine: peers dial each other by service name on the project's network), until
    Docker's own healthcheck, run on the retained births, says every node is healthy."""
    grid = Path(__file__).resolve().parents[2] / "launch" / "three_machines.yaml"
    ca = CliRunner().invoke(cli, ["grid", "ca", "init", "--state-dir", str(tmp_path / "ca")])
    assert ca.exit_code == 0, ca.output
    out = tmp_path / "grid"
    args = ["deploy", "compose", str(grid), "-o", str(out), "--certs", str(tmp_path / "ca")]
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    compose = ["docker-compose", "-p", f"redy-test-{secrets.token_hex(3)}"]
    compose += ["-f", str(out / "compose.yaml")]
    try:
        up = subprocess.run([*compose, "up", "-d"], capture_output=True, text=True, check=False)
        assert up.returncode == 0, up.stderr
        ids = subprocess.run([*compose, "ps", "-q"], capture_output=True, text=True, check=True)
        containers = ids.stdout.split()
        assert len(containers) == 3
        deadline = time.monotonic() + 150
        health: list[str] = []
        while time.monotonic() < deadline:
            health = subprocess.run(
                ["docker", "inspect", "-f", "{{.State.Health.Status}}", *containers],
                capture_output=True,
                text=True,
                check=True,
            ).stdout.split()
            if health == ["healthy"] * 3:
                break
            time.sleep(2)
        assert health == ["healthy"] * 3
    finally:
        subprocess.run([*compose, "down", "-v", "-t", "5"], capture_output=True, check=False)
