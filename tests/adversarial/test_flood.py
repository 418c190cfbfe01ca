"""A member floods a node's grid listener: the node keeps serving its own units and names the
offender (real broker, real governance process)."""

from __future__ import annotations

import queue
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from members import member, start_governance

from redy import messages
from redy.topics import render

pytestmark = pytest.mark.integration


def test_a_gossip_flood_is_cut_to_its_budget_and_the_node_keeps_publishing(
    process_broker: Any, mqtt_client: Any, tmp_path: Path
) -> None:
    broker = process_broker("house-1")
    log = tmp_path / "governance.log"
    gov = start_governance(broker, log, "--period-s", "0.2", "--epoch-s", "2")
    try:
        watch = mqtt_client(broker.port, "operator", broker.credentials.password("operator"))
        watch.subscribe(render("node_state", node="house-1"))
        evil = member(broker.config.state_dir, "evil")
        flood = mqtt_client(broker.config.grid_listener_port, None, None, "evil", evil)
        msg = messages.Gossip(
            sender="evil", epoch=1, round=1, algorithm="pushsum", weight=0.5, values=(1.0,) * 201
        )
        payload = messages.encode(msg)
        topic = render("gossip", node="house-1", peer="evil")
        _drain(watch, 0.5)  # forget what came before
        t0 = time.monotonic()
        sent = 0
        while time.monotonic() - t0 < 3.0:  # as fast as one client can, at QoS 0
            flood.c.publish(topic, payload, qos=0)
            sent += 1
        states = [m for m in _drain(watch, 0.5) if m.topic.endswith("governance/state")]
        assert gov.poll() is None, "the flood ended the governance unit"
        # It kept publishing its state (period 0.2 s: about 17 in 3.5 s on an idle machine; a
        # state loop stuck behind the flood, as before peers had their own session, showed 1).
        assert len(states) >= 3, f"{len(states)} states during a flood of {sent} messages"
        text = log.read_text()
        assert "peer evil is over its gossip budget" in text
        print(f"flood: {sent} gossip messages in 3 s, {len(states)} states published meanwhile")
    finally:
        gov.send_signal(signal.SIGTERM)
        gov.wait(10)


def _drain(client: Any, seconds: float) -> list[Any]:
    """Everything the client has received, and what arrives within `seconds`."""
    out = []
    deadline = time.monotonic() + seconds
    while True:
        try:
            out.append(client.messages.get(timeout=max(0.0, deadline - time.monotonic())))
        except queue.Empty:
            return out
