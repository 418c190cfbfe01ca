"""The governance unit's state publication under a storm of first prices, against a real
broker: the state of a first price goes out in the clearing's own call, and the periodic state
task keeps running whatever the timing between the two."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from redy.units.config import GovernanceConfig
from redy.units.governance import Governance

pytestmark = pytest.mark.integration


def test_first_prices_at_any_moment_of_the_state_period_never_end_the_governance(
    process_broker: Any, mqtt_client: Any
) -> None:
    """A first price may land while the state task's wait is expiring (an earlier version moved
    that wait's deadline and raised there, which ended the process). Prices every millisecond
    against a 10 ms period for 1.5 s: the unit runs on and publishes states throughout."""
    broker = process_broker("house-1")
    op = mqtt_client(broker.port, "operator", broker.credentials.password("operator"))
    op.subscribe("redy/house-1/governance/state")
    cfg = GovernanceConfig(
        node="house-1",
        broker=broker.uri,
        credentials=broker.config.credentials_path,
        period_s=0.01,
    )
    gov = Governance(cfg)

    async def main() -> None:
        stop = asyncio.Event()
        running = asyncio.create_task(gov.run(stop))
        while not gov._link.is_connected:
            assert not running.done(), running.exception()
            await asyncio.sleep(0.01)
        loop = asyncio.get_running_loop()
        end = loop.time() + 1.5
        while loop.time() < end:
            gov._price_cleared()
            await asyncio.sleep(0.001)
            assert not running.done(), running.exception()
        stop.set()
        await asyncio.wait_for(running, 10.0)

    asyncio.run(main())
    states = [m for m in op.drain() if m.topic == "redy/house-1/governance/state"]
    assert len(states) > 100  # the first prices' states and the periodic ones
