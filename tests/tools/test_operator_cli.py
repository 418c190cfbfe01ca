"""Operator CLI polish: `topic info`, `--json` output, broker and credentials from the
environment, and JSON-lines logs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from typing import Any

import orjson
import pytest

from redy import messages
from redy.topics import CONTRACT, render

REDY = [sys.executable, "-c", "import sys; from redy.cli import main; sys.exit(main())"]


def _redy(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*REDY, *args],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, **(env or {})},
    )


@pytest.mark.pure
def test_topic_info_shows_type_qos_retention_expiry_and_fields_with_units() -> None:
    done = _redy("topic", "info", "redy/house-1/grid/neighbours/gas-1")
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "NodeEnergyState" in out and "qos:         1" in out
    assert "retained:    yes" in out and "expiry:      30 s" in out
    # every field of the type is listed, with its unit where topics.yaml gives one
    for f in CONTRACT.types["NodeEnergyState"].fields:
        line = next(ln for ln in out.splitlines() if ln.split()[1:2] == [f.name])
        if f.unit:
            assert f"[{f.unit}]" in line, line
    volatile = _redy("topic", "info", "measurement").stdout
    assert "retained:    no" in volatile and "expiry:      none" in volatile


@pytest.mark.pure
def test_topic_info_json_expands_nested_types_and_matches_the_contract() -> None:
    done = _redy("topic", "info", "redy/{node}/membership/view", "--json")
    info = orjson.loads(done.stdout)
    assert (info["type"], info["qos"], info["retained"], info["expiry_s"]) == (
        "View",
        1,
        True,
        None,
    )
    entries = next(f for f in info["fields"] if f["name"] == "entries")
    assert entries["type"] == "list[ViewEntry]"
    assert [f["name"] for f in entries["fields"]] == [
        f.name for f in CONTRACT.types["ViewEntry"].fields
    ]


@pytest.mark.pure
def test_topic_info_of_an_unknown_topic_says_what_was_expected() -> None:
    done = _redy("topic", "info", "redy/x/nothing")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "expected a name from topics.yaml" in done.stderr and "node_state" in done.stderr


@pytest.mark.integration
def test_broker_and_credentials_from_the_environment_and_json_outputs(
    process_broker: Any, mqtt_client: Any
) -> None:
    b = process_broker("house-1", {})
    env = {"REDY_BROKER": b.uri, "REDY_CREDENTIALS": str(b.config.credentials_path)}
    gov = mqtt_client(b.port, "governance", b.credentials.password("governance"))
    entry = messages.ViewEntry(node="gas-1", broker="mqtt://127.0.0.1:28841", age=3)
    view = messages.View(node="house-1", ts_s=5.0, entries=(entry,))
    published = messages.encode(view)
    gov.publish(render("view", node="house-1"), published, retain=True)

    shown = _redy("view", "house-1", "--json", env=env)
    assert shown.returncode == 0, shown.stderr
    assert orjson.loads(shown.stdout) == orjson.loads(published)

    echoed = _redy("topic", "echo", "redy/#", "--count", "1", "--timeout", "5", "--json", env=env)
    line = orjson.loads(echoed.stdout.strip())
    assert line == {
        "topic": render("view", node="house-1"),
        "retained": True,
        "message": orjson.loads(published),
    }

    listed = _redy("node", "list", "--json", env=env)
    assert listed.returncode == 0, listed.stderr
    rows = orjson.loads(listed.stdout)
    # gas-1 is only in the view (no broker answers for it): still listed, its URI from the view
    assert {"node": "house-1", "broker": b.uri} in rows
    assert {"node": "gas-1", "broker": "mqtt://127.0.0.1:28841"} in rows

    gov.publish(render("view", node="house-1"), b"{broken", retain=True)
    bad = _redy("topic", "echo", "redy/#", "--count", "1", "--timeout", "5", "--json", env=env)
    assert "invalid" in orjson.loads(bad.stdout.strip())


@pytest.mark.integration
def test_log_format_json_makes_every_log_line_a_json_object(process_broker: Any) -> None:
    b = process_broker("house-1", {"meter": "detection"})
    proc = subprocess.Popen(
        [
            *REDY,
            "--log-format",
            "json",
            "detection",
            "--node",
            "house-1",
            "--broker",
            b.unit_uri,
            "--credentials",
            str(b.config.credentials_path),
            "--unit",
            "meter",
            "--device",
            "fixed_load",
            "--period-s",
            "0.2",
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    first = proc.stderr.readline()  # the unit logs its connection: its SIGTERM handler is set
    proc.send_signal(signal.SIGTERM)
    rest = proc.communicate(timeout=15)[1]
    lines = [ln for ln in (first + rest).splitlines() if ln.strip()]
    assert lines, "the unit logged nothing"
    records = [orjson.loads(ln) for ln in lines]
    assert all({"ts_s", "level", "logger", "msg"} <= set(r) for r in records)
    assert any("stopped" in r["msg"] for r in records)
