"""The redy command line: help, one-line errors, and the topic tools on a real broker."""

from __future__ import annotations

import json
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from redy import messages
from redy.cli import cli
from redy.topics import render

REDY = [sys.executable, "-c", "import sys; from redy.cli import main; sys.exit(main())"]


def _redy(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*REDY, *args], capture_output=True, text=True, timeout=timeout)


def _invoke(*args: str) -> Result:
    """The command line in this process (click's CliRunner): for what needs no broker."""
    return CliRunner().invoke(cli, list(args))


@pytest.mark.pure
def test_help_lists_the_command_groups() -> None:
    result = _invoke("--help")
    assert result.exit_code == 0
    for group in ("launch", "topic", "node", "view", "broker", "sim"):
        assert f"  {group} " in result.output


@pytest.mark.pure
def test_topic_info_describes_a_topic_from_the_contract() -> None:
    result = _invoke("topic", "info", "node_state", "--json")
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert (info["type"], info["qos"], info["retained"]) == ("NodeEnergyState", 1, True)
    assert "governance" in info["publishers"]


@pytest.mark.pure
def test_a_redy_error_is_one_error_line_with_status_2() -> None:
    result = _invoke("sim", "membership", "--nodes", "10", "--view", "4", "--shuffle", "4")
    assert result.exit_code == 2
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr


@pytest.mark.pure
def test_a_bad_launch_argument_is_one_error_line(tmp_path: Path) -> None:
    f = tmp_path / "one.yaml"
    f.write_text("launch:\n  - arg: {name: port}\n")
    result = _invoke("launch", str(f), "nonsense")
    assert result.exit_code == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "Traceback" not in result.output


@pytest.mark.integration
def test_error_a_user_causes_is_one_line_not_a_traceback(process_broker: Any) -> None:
    b = process_broker("house-1")
    done = _redy("broker", "run", "--node", "house-2", "--port", str(b.port))
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "in use" in done.stderr
    done = _redy("topic", "echo", "redy/#", "--broker", "mqtt://127.0.0.1:1", "--password", "x")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    done = _redy("broker", "run", "--node", "House 1", "--port", "18000")
    assert done.returncode == 2 and "Traceback" not in done.stderr


@pytest.mark.pure
def test_a_broken_yaml_file_is_one_line_with_the_file(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("mix: [\n")
    for args in (
        ("launch", str(broken)),
        ("sim", "balance", "--nodes", "10", "--scenario", str(broken), "--json"),
    ):
        result = _invoke(*args)
        assert result.exit_code == 2, args
        assert result.stderr.strip().count("\n") == 0, result.stderr
        assert result.stderr.startswith("error: ") and str(broken) in result.stderr


@pytest.mark.integration
def test_broker_run_refuses_anonymous_and_stops_on_sigterm(tmp_path: Path, free_port: Any) -> None:
    port = free_port()
    proc = subprocess.Popen(
        [
            *REDY,
            "broker",
            "run",
            "--node",
            "house-1",
            "--port",
            str(port),
            "--grid-port",
            str(free_port()),
            "--state-dir",
            str(tmp_path),
            "--unit",
            "pv-meter:detection",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert f"mqtt://127.0.0.1:{port}" in line
        anon = subprocess.run(
            ["mosquitto_sub", "-p", str(port), "-t", "#", "-W", "2"],
            capture_output=True,
            text=True,
            check=False,
        )
        assert anon.returncode != 0 and "not authorised" in anon.stderr.lower()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=10)
    assert proc.returncode == 0


@pytest.mark.integration
def test_topic_pub_validates_then_list_and_echo_show_it(process_broker: Any) -> None:
    b = process_broker("house-1", {"heater": "action"})
    auth = ["--broker", b.uri, "--credentials", str(b.config.credentials_path)]
    topic = render("setpoint", node="house-1")
    bad = _redy("topic", "pub", topic, '{"seq": 1, "net_kw": "lots"}', *auth)
    assert bad.returncode == 2 and "NodeSetpoint.net_kw: expected a number" in bad.stderr
    good = _redy("topic", "pub", topic, '{"seq": 1, "net_kw": 4.5}', *auth)
    assert good.returncode == 0, good.stderr
    listed = _redy("topic", "list", "--wait", "1", *auth).stdout
    assert f"{topic} [NodeSetpoint] retained" in listed
    echoed = _redy("topic", "echo", topic, "--count", "1", "--timeout", "5", *auth).stdout
    assert '"net_kw":4.5' in echoed


@pytest.mark.integration
def test_topic_echo_shows_invalid_payloads_as_such(process_broker: Any, mqtt_client: Any) -> None:
    b = process_broker("house-1", {"meter": "detection"})
    auth = ["--broker", b.uri, "--credentials", str(b.config.credentials_path)]
    echo = subprocess.Popen(
        [*REDY, "topic", "echo", "redy/house-1/detection/+/measurement", "--timeout", "30", *auth],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert echo.stdout is not None
    lines: queue.Queue[str] = queue.Queue()
    reader = threading.Thread(target=lambda: [lines.put(x) for x in echo.stdout], daemon=True)
    reader.start()
    try:
        meter = mqtt_client(b.unit_port, "meter", b.credentials.password("meter"))
        topic = render("measurement", node="house-1", unit="meter")
        # echo subscribes when it is ready, unannounced: the broken payload is sent until it shows.
        deadline = time.monotonic() + 20
        while lines.empty():
            assert time.monotonic() < deadline and echo.poll() is None, "echo showed nothing"
            meter.publish(topic, b"{not json")
            time.sleep(0.1)
        sample = messages.Measurement(seq=1, ts_s=1.0, power_kw=1.0, energy_kwh=0.0)
        meter.publish(topic, messages.encode(sample))
        shown = [lines.get(timeout=10)]
        while "power_kw" not in shown[-1]:
            shown.append(lines.get(timeout=10))
    finally:
        echo.terminate()
        echo.wait(10)
        reader.join(5)  # at the end of its output once echo has exited
        echo.stdout.close()
    assert '"power_kw":1.0' in shown[-1]
    for line in shown[:-1]:
        assert "INVALID" in line and "malformed JSON" in line, line
