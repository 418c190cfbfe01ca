"""Starting and stopping real brokers (both backends), and the one-line errors of a failed start."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from redy import brokers
from redy.brokers import ContainerBroker, NodeBroker, ProcessBroker
from redy.errors import BrokerError

pytestmark = pytest.mark.integration


def _config(tmp_path: Path, free_port: Any, **kw: Any) -> NodeBroker:
    return NodeBroker(
        node=kw.pop("node", "house-1"),
        port=kw.pop("port", None) or free_port(),
        grid_port=kw.pop("grid_port", None) or free_port(),
        unit_port=kw.pop("unit_port", None) or free_port(),
        state_dir=tmp_path / "state",
        **kw,
    )


def _test_broker(config: NodeBroker, backend: str) -> ProcessBroker | ContainerBroker:
    if backend == "process":
        return ProcessBroker(config, die_with_parent=True)
    return ContainerBroker(config, labels={"org.redy.test": "1"})


def _wait_gone(pid: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


def test_a_broker_is_alive_until_stopped_and_frees_its_ports(start_broker: Any) -> None:
    b = start_broker("house-1")
    assert b.alive()
    b.stop()
    assert not b.alive()
    assert all(brokers.port_is_free(p) for p in (b.port, b.grid_port, b.unit_port))


def test_alive_reads_the_current_state_when_the_broker_dies_behind_its_back(
    start_broker: Any,
) -> None:
    b = start_broker("house-1")
    assert b.alive()
    if isinstance(b, ProcessBroker):
        os.kill(b.pid, signal.SIGKILL)
    else:
        subprocess.run(["docker", "kill", b.container_id], capture_output=True, check=True)
    deadline = time.monotonic() + 10
    while b.alive():
        assert time.monotonic() < deadline, "alive() still says alive 10 s after a SIGKILL"
        time.sleep(0.05)


def test_a_killed_broker_is_seen_dead(start_broker: Any) -> None:
    b = start_broker("house-1")
    b.kill()
    assert not b.alive()


def test_a_port_in_use_is_one_clear_error(tmp_path: Path, free_port: Any, backend: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        b = _test_broker(_config(tmp_path, free_port, port=port), backend)
        with pytest.raises(BrokerError) as err:
            b.start()
    assert f"127.0.0.1:{port}" in str(err.value) and "in use" in str(err.value)
    assert "\n" not in str(err.value)
    assert not b.alive()


def test_a_broker_that_exits_at_start_reports_its_last_log_line(
    tmp_path: Path, free_port: Any, backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    bad = brokers.template().replace("sys_interval 10", "no_such_option 1")
    monkeypatch.setattr(brokers.files, "template", lambda: bad)
    b = _test_broker(_config(tmp_path, free_port), backend)
    with pytest.raises(BrokerError) as err:
        b.start()
    assert "no_such_option" in str(err.value) and "\n" not in str(err.value)
    assert not b.alive()


def test_a_missing_image_names_the_command_that_builds_it(
    tmp_path: Path, free_port: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REDY_MOSQUITTO_IMAGE", "redy/no-such-image:0")
    b = ContainerBroker(_config(tmp_path, free_port), labels={"org.redy.test": "1"})
    with pytest.raises(BrokerError) as err:
        b.start()
    assert "redy/no-such-image:0" in str(err.value) and "make image" in str(err.value)
    assert "\n" not in str(err.value)


def test_an_unreachable_docker_is_one_clear_error(
    tmp_path: Path, free_port: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-docker.sock")
    b = ContainerBroker(_config(tmp_path, free_port), labels={"org.redy.test": "1"})
    with pytest.raises(BrokerError, match="cannot reach docker") as err:
        b.start()
    assert "dockerd" in str(err.value) and "\n" not in str(err.value)


def test_a_missing_mosquitto_is_one_clear_error(
    tmp_path: Path, free_port: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(brokers.backends, "_MOSQUITTO_FALLBACKS", ())
    with pytest.raises(BrokerError, match="mosquitto not found"):
        ProcessBroker(_config(tmp_path, free_port)).start()


def test_an_unknown_backend_is_refused(tmp_path: Path, free_port: Any) -> None:
    with pytest.raises(BrokerError, match="expected 'process' or 'container'"):
        brokers.make_broker(_config(tmp_path, free_port), "podman")


def test_a_process_broker_dies_with_the_process_that_started_it(
    tmp_path: Path, free_port: Any
) -> None:
    config = _config(tmp_path, free_port)
    script = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from redy.brokers import NodeBroker, ProcessBroker\n"
        f"c = NodeBroker(node='house-1', port={config.port}, grid_port={config.grid_port},"
        f" unit_port={config.unit_port}, state_dir=Path({str(config.state_dir)!r}))\n"
        "b = ProcessBroker(c, die_with_parent=True)\n"
        "b.start()\n"
        "print(b.pid, flush=True)\n"
        "time.sleep(60)\n"
    )
    owner = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert owner.stdout is not None
        broker_pid = int(owner.stdout.readline())
        owner.send_signal(signal.SIGKILL)  # no chance to clean up
        owner.wait(5)
        assert _wait_gone(broker_pid, 5.0), "mosquitto outlived the process that started it"
    finally:
        if owner.poll() is None:
            owner.kill()
            owner.wait()
        if owner.stdout is not None:
            owner.stdout.close()


def _run_cli(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "redy", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _containers_of(pid: int) -> list[str]:
    done = subprocess.run(
        ["docker", "ps", "-aq", "--filter", f"label=org.redy.owner-pid={pid}"],
        capture_output=True,
        text=True,
        check=False,
    )
    return done.stdout.split()


def test_broker_run_serves_until_sigterm_and_leaves_nothing_behind(
    tmp_path: Path, free_port: Any, backend: str, mqtt_client: Any
) -> None:
    port, grid_port, unit_port = free_port(), free_port(), free_port()
    state = tmp_path / "state"
    proc = _run_cli(
        "broker", "run", "--node", "house-1", "--port", str(port), "--grid-port",
        str(grid_port), "--unit-port", str(unit_port), "--backend", backend,
        "--state-dir", str(state),
        "--unit", "pv-meter:detection",
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        banner = proc.stdout.readline()
        assert f"mqtt://127.0.0.1:{port}" in banner and "credentials.json" in banner, banner
        # Serving means surviving its own liveness checks (every 0.5 s): watched over 1.2 s,
        # failing as soon as it exits.
        until = time.monotonic() + 1.2
        while time.monotonic() < until:
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            time.sleep(0.05)
        creds = brokers.load_credentials(state / "house-1" / "credentials.json")
        assert mqtt_client(port, None, None).refused is not None
        unit = mqtt_client(unit_port, "pv-meter", creds.password("pv-meter"))
        assert unit.refused is None
        unit.close()
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=15)
        assert proc.returncode == 0 and "stopped" in out
        assert all(brokers.port_is_free(p) for p in (port, grid_port, unit_port))
        if backend == "container":
            assert _containers_of(proc.pid) == []
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if backend == "container":  # a killed command cannot remove its container itself
            leftovers = _containers_of(proc.pid)
            if leftovers:
                subprocess.run(["docker", "rm", "-f", *leftovers], capture_output=True, check=False)
