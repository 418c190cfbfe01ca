"""The overlay driver with the core's `verify` detector, against a real broker: an entry a
shuffle reply admits is dialled at once, so a dead node's entry leaves the view before the next
period, and a live node's stays."""

from __future__ import annotations

import random
from typing import Any

import pytest

from redy import messages, pki
from redy.membership.cyclon import Cyclon
from redy.membership.cyclon import Neighbour as CoreEntry
from redy.transport.peer_links import PeerLinks

pytestmark = pytest.mark.integration


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
    reply = messages.ShuffleReply(
        sender="alive",
        nonce=out.nonce,
        entries=(
            messages.ViewEntry(node="dead", broker=dead_uri, age=1),
            messages.ViewEntry(node="other", broker=other.config.grid_uri, age=1),
            messages.ViewEntry(node="peer", broker=alive.config.grid_uri, age=1),
        ),
    )
    try:
        await driver.on_reply(reply)
    finally:
        await links.close_all()
    view = {e.node for e in core.view}
    assert "other" in view and "other" not in driver.lost
    assert "dead" not in view and "dead" in driver.lost
    assert "dead" in core._tombstones  # its stale copies are refused from now on
    # "peer" names the broker of "alive": the dial finds alive's certificate, a bogus entry
    # dropped without a verdict.
    assert "peer" not in view and "peer" not in core._tombstones
