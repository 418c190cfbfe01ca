"""The overlay driver with the core's `verify` detector, against a real broker: an entry a
shuffle reply admits is dialled at once, so a dead node's entry leaves the view before the next
period, and a live node's stays."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest

from redy import messages, pki
from redy.membership.cyclon import Cyclon
from redy.membership.cyclon import Neighbour as CoreEntry
from redy.transport.peer_links import PeerLinks

pytestmark = pytest.mark.integration


async def _answer(driver: Any, links: PeerLinks, nonce: int, age: int, **brokers: str) -> None:
    """alive's reply to our shuffle, naming each node at its broker; then every link closed."""
    entries = tuple(messages.ViewEntry(node=n, broker=b, age=age) for n, b in brokers.items())
    try:
        await driver.on_reply(messages.ShuffleReply(sender="alive", nonce=nonce, entries=entries))
    finally:
        await links.close_all()


async def test_a_reply_naming_a_dead_node_loses_it_at_once_and_keeps_the_live_one(
    process_broker: Any, free_port: Any, overlay_driver: Any
) -> None:
    alive = process_broker("alive")
    other = process_broker("other")
    me = pki.issue(alive.config.state_dir, "me", ["127.0.0.1"])
    links = PeerLinks("me", me, timeout_s=2.0)
    core = Cyclon("me", "mqtts://127.0.0.1:1", 4, 2, random.Random(1), detector="verify")
    core.seed([CoreEntry("alive", alive.config.grid_uri, 0)])
    core.take_admitted()

    driver = overlay_driver(core, links, me, period_s=60.0)
    out = core.tick()
    assert out is not None and out.target.node == "alive"
    dead_uri = f"mqtts://127.0.0.1:{free_port()}"  # nothing listens there
    await _answer(driver, links, out.nonce, dead=dead_uri, other=other.config.grid_uri,
                  peer=alive.config.grid_uri, age=1)  # fmt: skip
    view = {e.node for e in core.view}
    assert "other" in view and "other" not in driver.lost
    assert "dead" not in view and "dead" in driver.lost
    assert "dead" in core._tombstones  # its stale copies are refused from now on
    # "peer" names the broker of "alive": the dial finds alive's certificate, a bogus entry
    # dropped without a verdict.
    assert "peer" not in view and "peer" not in core._tombstones


async def test_an_admitted_entry_is_not_published_before_its_dial_starts(
    process_broker: Any, free_port: Any, overlay_driver: Any
) -> None:
    """The dials start only at the gather's first await; a task that runs in between (another
    request's handler publishing the view) must not see the unchecked candidates (CI stop 34: an
    honest view published two attacker entries of four)."""
    alive = process_broker("alive")
    me = pki.issue(alive.config.state_dir, "me", ["127.0.0.1"])
    links = PeerLinks("me", me, timeout_s=2.0)
    seen: list[set[str]] = []

    class Looking(Cyclon):
        def take_admitted(self) -> tuple[Any, ...]:
            admitted = super().take_admitted()
            asyncio.get_running_loop().call_soon(lambda: seen.append({e.node for e in driver.view}))
            return admitted

    core = Looking("me", "mqtts://127.0.0.1:1", 4, 2, random.Random(1), detector="verify")
    core.seed([CoreEntry("alive", alive.config.grid_uri, 0)])
    core.take_admitted()
    seen.clear()
    driver = overlay_driver(core, links, me, period_s=60.0)
    out = core.tick()
    assert out is not None
    ghost_uri = f"mqtts://127.0.0.1:{free_port()}"  # nothing listens there
    await _answer(
        driver, links, out.nonce, age=0, **{"ghost-1": ghost_uri, "ghost-2": alive.config.grid_uri}
    )
    assert seen, "the look-up callback did not run"
    assert not seen[0] & {"ghost-1", "ghost-2"}, f"published unchecked: {seen[0]}"
    assert not {e.node for e in core.view} & {"ghost-1", "ghost-2"}
