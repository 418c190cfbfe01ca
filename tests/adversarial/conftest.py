"""The adversarial tests' fixtures: a real node under attack, and a member's misbehaving brokers."""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from members import BadBrokers, member, start_governance

from redy.topics import render


@pytest.fixture
def node(process_broker: Any, mqtt_client: Any, tmp_path: Path) -> Iterator[dict[str, Any]]:
    """house-1's broker and governance unit (distant mode, 2 s epochs), the operator watching
    its state, evil's client on its grid listener, and evil's misbehaving brokers."""
    broker = process_broker("house-1")
    log = tmp_path / "governance.log"
    gov = start_governance(
        broker, log, "--period-s", "0.3", "--epoch-s", "2", "--shuffle-period-s", "0.5",
        "--shuffle-timeout-s", "0.5",
    )  # fmt: skip
    evil_id = member(broker.config.state_dir, "evil")
    bad = BadBrokers(evil_id)
    try:
        watch = mqtt_client(broker.port, "operator", broker.credentials.password("operator"))
        watch.subscribe(render("node_state", node="house-1"))
        evil = mqtt_client(broker.config.grid_listener_port, None, None, "evil", evil_id)
        yield {"gov": gov, "log": log, "watch": watch, "evil": evil, "bad": bad}
    finally:
        bad.close()
        gov.send_signal(signal.SIGTERM)
        try:
            gov.wait(15)
        except subprocess.TimeoutExpired:
            gov.kill()
