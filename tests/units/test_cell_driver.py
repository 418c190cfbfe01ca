"""The governance's market driver with `market: cells`, without brokers: what it queues from a
peer's CellMessage, what it refuses, what it sends where (its card to its neighbours, on their
`cells` topic), and the status of an epoch the cells could not clear."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from pathlib import Path
from typing import Any

import pytest

from redy import messages, pki, signing
from redy.balancing.cell_node import Failed
from redy.balancing.cell_roster import BodyIn, CardsIn
from redy.units.market import MarketDriver
from redy.units.node_state import NodeState

pytestmark = pytest.mark.pure

N2_BROKER = "mqtts://127.0.0.1:9002"


class Links:
    """PeerLinks as the driver uses them: every publish recorded."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, str, bytes, str | None]] = []

    async def publish(
        self, uri: str, topic: str, payload: bytes, *, node: str | None = None, qos: int = 1
    ) -> None:
        self.sent.append((uri, topic, payload, node))


def _driver(tmp: Path, links: Any = None) -> MarketDriver:
    pki.ensure_ca(tmp)
    ident = pki.issue(tmp, "n1", ["127.0.0.1"], pki.Grant("node", 20.0, 10.0))
    return MarketDriver(
        node="n1",
        state=NodeState("n1"),
        links=links,
        neighbours=lambda: [messages.ViewEntry(node="n2", broker=N2_BROKER, age=0)],
        command=lambda _u, _kw: None,  # type: ignore[arg-type,return-value]
        epoch_s=3.0,
        rounds=10,
        rng=random.Random(1),
        market="cells",
        identity=ident,
        cell_size=4,
        grid_uri="mqtts://127.0.0.1:9001",
    )


def test_a_cell_message_is_queued_as_cards_and_a_body_and_gossip_is_refused(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    d = _driver(tmp_path)
    n2 = signing.Signer(pki.issue(tmp_path, "n2", ["127.0.0.1"]))
    card = n2.card(N2_BROKER, 1000.0)
    d.on_cell(messages.CellMessage(sender="n2", body='{"t":"ask","e":1}', cards=(card,), held=3))
    first, second = d._events.get_nowait(), d._events.get_nowait()
    assert first == CardsIn("n2", (card,), 3)
    assert second == BodyIn("n2", b'{"t":"ask","e":1}')
    gossip = messages.Gossip(
        sender="n2", epoch=1, round=0, algorithm="offers", weight=0.0, values=()
    )
    with caplog.at_level(logging.WARNING):
        d.on_gossip(gossip)
    assert d._events.empty()
    assert "dropped gossip from n2: offers; this grid's market is cells" in caplog.text


async def test_the_card_goes_to_the_neighbours_cells_topic_on_its_broker(tmp_path: Path) -> None:
    links = Links()
    d = _driver(tmp_path, links)
    run = asyncio.create_task(d.run())
    await asyncio.sleep(0.3)
    run.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await run
    cards = [
        (uri, node, messages.decode(topic, payload))
        for uri, topic, payload, node in links.sent
        if topic == "redy/n2/grid/cells/n1"
    ]
    assert cards, links.sent
    uri, node, msg = cards[0]
    assert (uri, node, msg.sender) == (N2_BROKER, "n2", "n1")
    assert msg.cards is not None and msg.cards[0].node == "n1" and msg.held == 1
    assert msg.cards[0].broker == "mqtts://127.0.0.1:9001"


def test_an_epoch_the_cells_could_not_clear_is_no_price(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    d = _driver(tmp_path)
    with caplog.at_level(logging.INFO):
        d._act([Failed(7, "epoch 7: cell 0 did not agree on its offers (view 2)")])
    assert d.state_fields()["status"] == "isolated"
    assert "node=n1 epoch 7 not cleared: epoch 7: cell 0 did not agree" in caplog.text


async def test_a_core_that_fails_on_some_input_never_ends_the_driver(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    links = Links()
    d = _driver(tmp_path, links)
    honest = d.core.handle
    handled: list[object] = []

    def handle(now: float, event: Any) -> Any:
        if isinstance(event, BodyIn) and event.data == b"boom":
            raise ValueError("a bug")
        handled.append(event)
        return honest(now, event)

    d.core.handle = handle  # type: ignore[method-assign]
    run = asyncio.create_task(d.run())
    with caplog.at_level(logging.ERROR):
        for _ in range(3):
            d.on_cell(messages.CellMessage(sender="n2", body="boom"))
        d.on_cell(messages.CellMessage(sender="n2", body="{}"))
        await asyncio.sleep(0.5)
    run.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await run
    assert BodyIn("n2", b"{}") in handled
    assert d.dropped["market_failed"] == 3
    assert caplog.text.count("market core failed") == 1
