"""The markets' shared vocabulary: what a market core is told (`Tick`) and what it asks of its
driver besides sending (`Cleared`, `Dropped`), whichever market it is (push-sum's MarketCore in
redy.balancing.epochs, the offer market's OfferCore in redy.balancing.offers). Each core adds
its own `Received`, `Refused` and `Send`."""

from __future__ import annotations

from typing import Protocol

import attrs

from redy.balancing.curves import Bid

NodeId = str


class Result(Protocol):
    """A market's result: the price (EUR/MWh), how it was found ('cleared', 'shortage',
    'surplus'), this node's share of the unserved load or excess must-run injection (kW), and
    each bid's injection at the price."""

    @property
    def price_eur_mwh(self) -> float: ...

    @property
    def status(self) -> str: ...

    @property
    def unserved_kw(self) -> float: ...

    @property
    def excess_kw(self) -> float: ...

    def dispatch_kw(self, bid: Bid) -> float: ...


@attrs.frozen
class Tick:
    """A deadline came (or the driver just looks)."""


@attrs.frozen
class Cleared:
    """The epoch's result and the bids it was found for (dispatch each with
    `result.dispatch_kw(bid)`); `elapsed_s` from the epoch's start; `heard`: the peers'
    messages (the offer market: the peers' offers) the node took in that epoch (0: it cleared
    on its own curve alone)."""

    epoch: int
    result: Result
    bids: tuple[Bid, ...]
    elapsed_s: float
    heard: int = 0


@attrs.frozen
class Dropped:
    """A peer's message broke the mass bounds (the offer market: carried an offer that is not
    its node's or breaks the grid's bounds) and was not taken."""

    sender: NodeId
    reason: str
