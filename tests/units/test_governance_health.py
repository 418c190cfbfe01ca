"""The governance unit's counters (node_health), what `redy launch --metrics` serves: the epoch
tally on a fake clock, and drops counted by reason against a real broker."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from redy import messages
from redy.topics import render
from redy.units import governance as governance_module
from redy.units.config import GovernanceConfig
from redy.units.governance import Governance
from redy.units.market import EpochTally


def test_the_epoch_tally_counts_whole_epochs_from_its_start() -> None:
    tally = EpochTally(epoch_s=4.0)
    tally.start(now=10.0)  # in epoch 2: epoch 3 is the first it counts
    tally.took_part(2)  # before the first: not counted
    tally.took_part(3)
    tally.took_part(3)  # a refined price of the same epoch
    assert tally.cleared == 1
    assert tally.missed(now=17.0) == 0  # epoch 4 is running: neither
    assert tally.missed(now=21.0) == 1  # epoch 4 ended without a clearing
    tally.took_part(5)
    assert tally.missed(now=21.0) == 1 and tally.cleared == 2  # epoch 5 runs, already cleared
    assert tally.missed(now=33.0) == 3  # 4, 6 and 7; 3 and 5 cleared; 8 running
    assert tally.missed(now=33.0) + tally.cleared == 8 - 3  # every ended epoch is one or other


@pytest.mark.integration
def test_drops_are_counted_by_reason_and_reported_retained(
    process_broker: Any, mqtt_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Malformed setpoints from an operator are dropped, logged and counted as `invalid`; the
    counters go out retained on node_health, where a monitor that comes later reads them."""
    monkeypatch.setattr(governance_module, "HEALTH_PERIOD_S", 0.2)
    broker = process_broker("house-1")
    password = broker.credentials.password("operator")
    op = mqtt_client(broker.port, "operator", password)
    cfg = GovernanceConfig(
        node="house-1", broker=broker.uri, credentials=broker.config.credentials_path
    )
    gov = Governance(cfg)
    setpoint = render("setpoint", node="house-1")

    async def main() -> None:
        stop = asyncio.Event()
        running = asyncio.create_task(gov.run(stop))
        while not gov._link.is_connected:
            assert not running.done(), running.exception()
            await asyncio.sleep(0.01)
        for payload in (b"not json", b'{"seq": -1, "net_kw": 1}', b"[]"):
            op.publish(setpoint, payload)
        for _ in range(100):
            if gov.dropped["invalid"] == 3:
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)  # a health period or two
        stop.set()
        await asyncio.wait_for(running, 10.0)

    asyncio.run(main())
    assert gov.dropped["invalid"] == 3
    later = mqtt_client(broker.port, "operator", password)
    got = later.retained(render("node_health", node="house-1"))
    (msg,) = got.values()
    health = messages.decode(msg.topic, msg.payload)
    assert isinstance(health, messages.GovernanceHealth)
    assert {c.name: c.count for c in health.dropped} == {"invalid": 3}
    assert health.epochs_cleared == health.epochs_missed == 0  # local mode: no market
    assert health.tasks > 0


def test_the_signed_shuffles_refused_and_unchecked_proofs_are_counted(tmp_path: Path) -> None:
    creds = tmp_path / "credentials.json"
    creds.write_text('{"users": {"governance": "pw"}}')
    gov = Governance(
        GovernanceConfig(node="house-1", broker="mqtt://127.0.0.1:1", credentials=str(creds))
    )
    gov.overlay = SimpleNamespace(overlay=SimpleNamespace(evidence_refused=2, evidence_dropped=5))

    async def health() -> messages.GovernanceHealth:
        return gov.health()

    counts = {c.name: c.count for c in asyncio.run(health()).dropped}
    assert counts == {"evidence_refused": 2, "evidence_over_budget": 5}
