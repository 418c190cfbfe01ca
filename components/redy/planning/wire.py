"""A horizon offer on the wire: the `PlanOffer` message of topics.yaml, and the bytes its node signs.

`to_message` and `from_message` turn a `HorizonOffer` into the message and back; every number
goes through `float()` on the way out and the codec's conversion on the way in, so the offer a
receiver rebuilds is the one its node signed, field for field. `signed_body` is what the node's
key signs: the JSON `["plan", node, start, session]`, a newline, and the offer's own JSON
(`HorizonOffer.to_json`, the same bytes on every node). Its first item can never be a node id
followed by an integer epoch, so a plan signature is never an offer market signature
(`redy.signing.signed_bytes`) and the other way round.
"""

from __future__ import annotations

import attrs
import orjson

from redy import messages
from redy.errors import InvalidMessage
from redy.planning.offer import HorizonOffer, from_json


def signed_body(offer: HorizonOffer, session: int | None) -> bytes:
    """The bytes a node signs for `offer` (see the module docstring)."""
    return orjson.dumps(["plan", offer.node, offer.start, session]) + b"\n" + offer.to_json()


def to_message(
    offer: HorizonOffer, *, sig: str, session: int | None = None, cert: str | None = None
) -> messages.PlanOffer:
    """`offer` as the message that carries it, with its signature (and certificate)."""
    return messages.PlanOffer(
        node=offer.node,
        start=offer.start,
        interval_min=float(offer.interval_min),
        dispatch_now_kw=float(offer.dispatch_now_kw),
        base_kw=offer.base_kw,
        blocks=tuple(
            messages.PlanBlock(kw=b.kw, cost_eur_mwh=b.cost_eur_mwh) for b in offer.blocks
        ),
        storage=tuple(
            messages.PlanStorage(**{k: float(v) for k, v in attrs.asdict(s).items()})
            for s in offer.storage
        ),
        deferrable=tuple(
            messages.PlanDeferrable(
                energy_kwh=float(d.energy_kwh),
                begin=d.begin,
                end=d.end,
                power_kw=float(d.power_kw),
            )
            for d in offer.deferrable
        ),
        ramp_kw=None if offer.ramp_kw is None else float(offer.ramp_kw),
        session=session,
        cert=cert,
        sig=sig,
    )


def from_message(msg: messages.PlanOffer) -> HorizonOffer:
    """The offer `msg` carries; InvalidMessage (one line) if its numbers make none (the codec
    checked the form; `redy.planning.offer` checks the rest, as for any offer read as JSON)."""
    body = {
        "node": msg.node,
        "start": msg.start,
        "base_kw": msg.base_kw,
        "interval_min": msg.interval_min,
        "blocks": [attrs.asdict(b) for b in msg.blocks],
        "storage": [attrs.asdict(s) for s in msg.storage],
        "deferrable": [attrs.asdict(d) for d in msg.deferrable],
        "ramp_kw": msg.ramp_kw,
        "dispatch_now_kw": msg.dispatch_now_kw,
    }
    offer = from_json(orjson.dumps(body))
    if offer.node != msg.node:  # from_json keeps it; a guard against a change there
        raise InvalidMessage("horizon offer: its node changed on the way")
    return offer
