"""A node's horizon offer: what it states for every interval of a rolling horizon, sans-IO.

Injection is signed as everywhere in redy: + feeds the grid, - draws from it (kW, the mean over
an interval). An offer covers `len(base_kw)` intervals of `interval_min` minutes from the
absolute interval `start`; relative indices (a deferrable's window) count from `start`.

- `base_kw`: the forecast of the injection that does not answer prices (PV minus load, ...).
- `blocks`: injection a node adds at a marginal cost, per interval (`Block.kw[t]` at
  `Block.cost_eur_mwh[t]`); a flexible load is a negative base and a block of the load it may
  shed at its willingness to pay (`offers.py`'s form, stated per interval). A rising marginal
  cost is several blocks (the LP stays linear).
- `ramp_kw`: the most the blocks' total injection may change from one interval to the next,
  starting from `dispatch_now_kw` (what they inject in the interval before `start`).
- `storage`: energy capacity, energy now, charge and discharge limits and efficiencies, a wear
  cost per MWh discharged and the value of the energy left at the horizon's end.
- `deferrable`: `energy_kwh` drawn within `[begin, end)` (an EV: from now to its deadline; a
  water heater: a window) at up to `power_kw`.

`limits_refusal` holds an offer to its signer's certified import/export limits interval by
interval with the offer market's own check (`balancing.offers.offer_refusal`): the widest net
injection the offer can take, from every charge and deferrable draw at full power with no block
on, to every block and discharge at full power. `admit` keeps the offers that pass and logs one
line per offer it drops, naming the sender. `from_json` rejects a malformed offer with
`InvalidMessage` (one line); `read_offers` logs that line with the sender's name and goes on.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import attrs
import numpy as np
import orjson

from redy.balancing.offers import offer_refusal
from redy.errors import InvalidMessage
from redy.pki import Grant

log = logging.getLogger(__name__)

INTERVAL_MIN = 15.0
HORIZON = 96  # intervals: a day of 15-minute intervals, the European market's
MAX_HORIZON = 4 * 96 * 7  # a week of 15-minute intervals
MAX_UNITS = 64  # blocks, stores or deferrable loads per offer


def floats(v: Iterable[float]) -> tuple[float, ...]:
    """A tuple of floats (an attrs converter)."""
    return tuple(float(x) for x in v)


def _finite(values: Iterable[float], what: str) -> None:
    if not all(math.isfinite(x) for x in values):
        raise InvalidMessage(f"{what}: expected finite numbers")


@attrs.frozen
class Block:
    """Up to `kw[t]` kW more injection in interval t at `cost_eur_mwh[t]`."""

    kw: tuple[float, ...] = attrs.field(converter=floats)
    cost_eur_mwh: tuple[float, ...] = attrs.field(converter=floats)

    def __attrs_post_init__(self) -> None:
        _finite(self.kw + self.cost_eur_mwh, "block")
        if len(self.kw) != len(self.cost_eur_mwh):
            raise InvalidMessage("block: expected as many costs as kW values")
        if any(k < 0 for k in self.kw):
            raise InvalidMessage("block: expected kw >= 0")


@attrs.frozen
class Storage:
    """A store: `capacity_kwh`, `soc_kwh` now (between `soc_min_kwh` and capacity), charge and
    discharge limits (kW at the meter), efficiencies (into the store, out of it), wear per MWh
    discharged and the value (EUR/kWh) of the energy left in it at the horizon's end."""

    capacity_kwh: float
    soc_kwh: float
    charge_kw: float
    discharge_kw: float
    charge_efficiency: float = 0.95
    discharge_efficiency: float = 0.95
    value_eur_kwh: float = 0.0
    wear_eur_mwh: float = 0.0
    soc_min_kwh: float = 0.0

    def __attrs_post_init__(self) -> None:
        _finite(attrs.astuple(self), "storage")
        if not 0 <= self.soc_min_kwh <= self.soc_kwh <= self.capacity_kwh:
            raise InvalidMessage("storage: expected 0 <= soc_min_kwh <= soc_kwh <= capacity_kwh")
        if self.charge_kw < 0 or self.discharge_kw < 0 or self.wear_eur_mwh < 0:
            raise InvalidMessage("storage: expected charge_kw, discharge_kw, wear_eur_mwh >= 0")
        if not (0 < self.charge_efficiency <= 1 and 0 < self.discharge_efficiency <= 1):
            raise InvalidMessage("storage: expected efficiencies in (0, 1]")


@attrs.frozen
class Deferrable:
    """`energy_kwh` (at the meter) to draw within intervals [begin, end) relative to the
    offer's start, at most `power_kw` in any interval."""

    energy_kwh: float
    begin: int
    end: int
    power_kw: float

    def __attrs_post_init__(self) -> None:
        _finite((self.energy_kwh, self.power_kw), "deferrable")
        if self.energy_kwh < 0 or self.power_kw < 0 or not 0 <= self.begin <= self.end:
            raise InvalidMessage("deferrable: expected energy, power >= 0, 0 <= begin <= end")


@attrs.frozen
class HorizonOffer:
    """One node's offer over a horizon (see the module docstring)."""

    node: str
    start: int
    base_kw: tuple[float, ...] = attrs.field(converter=floats)
    interval_min: float = INTERVAL_MIN
    blocks: tuple[Block, ...] = ()
    storage: tuple[Storage, ...] = ()
    deferrable: tuple[Deferrable, ...] = ()
    ramp_kw: float | None = None
    dispatch_now_kw: float = 0.0

    def __attrs_post_init__(self) -> None:
        h = len(self.base_kw)
        if not self.node or not 1 <= h <= MAX_HORIZON:
            raise InvalidMessage(f"offer: expected a node and 1 to {MAX_HORIZON} intervals")
        _finite(self.base_kw, "base_kw")
        if not (math.isfinite(self.interval_min) and self.interval_min > 0):
            raise InvalidMessage("offer: expected interval_min > 0")
        if max(len(self.blocks), len(self.storage), len(self.deferrable)) > MAX_UNITS:
            raise InvalidMessage(f"offer: expected at most {MAX_UNITS} units of each kind")
        if any(len(b.kw) != h for b in self.blocks):
            raise InvalidMessage(f"offer: expected every block to cover the {h} intervals")
        if any(d.end > h for d in self.deferrable):
            raise InvalidMessage("offer: a deferrable window beyond the horizon")
        if self.ramp_kw is not None and not (math.isfinite(self.ramp_kw) and self.ramp_kw >= 0):
            raise InvalidMessage("offer: expected ramp_kw >= 0")
        _finite((self.dispatch_now_kw,), "dispatch_now_kw")

    @property
    def horizon(self) -> int:
        return len(self.base_kw)

    @property
    def interval_h(self) -> float:
        return self.interval_min / 60.0

    def injection_range_kw(self) -> list[tuple[float, float]]:
        """Per interval, the lowest and highest net injection the offer can take (kW)."""
        h = self.horizon
        base = np.asarray(self.base_kw, float)
        lo = base - sum(s.charge_kw for s in self.storage)
        hi = base + sum(s.discharge_kw for s in self.storage)
        for b in self.blocks:
            hi = hi + np.asarray(b.kw, float)
        for d in self.deferrable:
            lo[d.begin : min(d.end, h)] -= d.power_kw
        return list(zip(lo.tolist(), hi.tolist(), strict=True))

    def to_json(self) -> bytes:
        """Compact JSON, the form `from_json` reads (orjson: the same bytes on every node)."""
        return orjson.dumps(attrs.asdict(self, recurse=True))


def from_json(raw: bytes | str) -> HorizonOffer:
    """The offer `raw` states; InvalidMessage (one line) if it is not one."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        raise InvalidMessage(f"horizon offer: not JSON ({str(e).splitlines()[0]})") from None
    if not isinstance(body, dict):
        raise InvalidMessage("horizon offer: expected a JSON object")
    try:
        return _offer(body)
    except InvalidMessage:
        raise
    except (TypeError, ValueError, KeyError) as e:
        raise InvalidMessage(f"horizon offer: {type(e).__name__}: {str(e)[:120]}") from None


def _offer(body: dict[str, Any]) -> HorizonOffer:
    fields = {f.name for f in attrs.fields(HorizonOffer)}
    if not set(body) <= fields or not {"node", "start", "base_kw"} <= set(body):
        raise InvalidMessage(f"horizon offer: expected the keys {', '.join(sorted(fields))}")
    if not isinstance(body["node"], str) or not _is_int(body["start"]):
        raise InvalidMessage("horizon offer: expected a node name and an integer start")
    _numbers(body["base_kw"], "base_kw")
    units: dict[str, Any] = {}
    for key, cls in (("blocks", Block), ("storage", Storage), ("deferrable", Deferrable)):
        items = body.get(key, ())
        if not isinstance(items, list | tuple) or not all(isinstance(i, dict) for i in items):
            raise InvalidMessage(f"horizon offer: expected {key} as a list of objects")
        units[key] = tuple(_unit(cls, i, key) for i in items)
    ramp = body.get("ramp_kw")
    if ramp is not None:
        _number(ramp, "ramp_kw")
    for key in ("interval_min", "dispatch_now_kw"):
        if key in body:
            _number(body[key], key)
    rest = {k: v for k, v in body.items() if k not in units}
    return HorizonOffer(**rest, **units)


def _unit(cls: type[Any], item: dict[str, Any], what: str) -> Any:
    names = {f.name: f for f in attrs.fields(cls)}
    if not set(item) <= set(names):
        raise InvalidMessage(
            f"horizon offer: {what}: unknown keys {sorted(set(item) - set(names))}"
        )
    for k, v in item.items():
        if k in ("kw", "cost_eur_mwh"):
            _numbers(v, f"{what}.{k}")
        elif k in ("begin", "end"):
            if not _is_int(v):
                raise InvalidMessage(f"horizon offer: {what}.{k}: expected an integer")
        else:
            _number(v, f"{what}.{k}")
    return cls(**item)


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _number(v: object, what: str) -> None:
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise InvalidMessage(f"horizon offer: {what}: expected a number")


def _numbers(v: object, what: str) -> None:
    if not isinstance(v, list | tuple):
        raise InvalidMessage(f"horizon offer: {what}: expected a list of numbers")
    for x in v:
        _number(x, what)


def read_offers(received: Iterable[tuple[str, bytes | str]]) -> list[HorizonOffer]:
    """The offers in `received` (sender, raw JSON) that parse; one log line per one that does
    not, naming its sender, and the rest go on."""
    out = []
    for sender, raw in received:
        try:
            out.append(from_json(raw))
        except InvalidMessage as e:
            log.warning("plan offer from %s refused: %s", sender, e)
    return out


# --- checks ------------------------------------------------------------------------------------


def limits_refusal(offer: HorizonOffer, bounds_kw: tuple[float, float]) -> str | None:
    """Why `offer` reaches beyond its signer's certified net injection `bounds_kw`
    (-import..export kW) in some interval, by the offer market's check (None: it keeps them)."""
    for t, (lo, hi) in enumerate(offer.injection_range_kw()):
        # The range as one offer of the market's form: a base and one block spanning the rest.
        values = (lo, hi - lo, 0.0, 0.0) if hi > lo else (lo,)
        reason = offer_refusal(values, max(abs(bounds_kw[0]), abs(bounds_kw[1])), bounds_kw)
        if reason is not None:
            return f"interval {offer.start + t}: {reason}"
    return None


def admit(
    offers: Iterable[HorizonOffer],
    grant_of: Callable[[str], Grant | None] | Mapping[str, Grant],
    capacity_kw: float,
    sender_of: Callable[[HorizonOffer], str] | None = None,
) -> list[HorizonOffer]:
    """The offers that keep their signer's certified limits (a node with no grant or none stated:
    the grid-wide `capacity_kw`), in canonical order (by node); one log line per offer dropped,
    naming its sender (`sender_of`, default the offer's node). A node with two offers is left
    out, as in the offer market."""
    lookup = grant_of.get if isinstance(grant_of, Mapping) else grant_of
    kept: dict[str, HorizonOffer] = {}
    twice: set[str] = set()
    for offer in offers:
        sender = sender_of(offer) if sender_of is not None else offer.node
        grant = lookup(offer.node) or Grant()
        reason = limits_refusal(offer, grant.bounds_kw(capacity_kw))
        if reason is not None:
            log.warning("plan offer of %s dropped: %s", sender, reason)
            continue
        if offer.node in kept and kept[offer.node] != offer:
            twice.add(offer.node)
        kept[offer.node] = offer
    for node in sorted(twice):
        log.warning("plan offers of %s dropped: two different offers for one horizon", node)
    return [kept[n] for n in sorted(kept) if n not in twice]


def canonical(offers: Sequence[HorizonOffer]) -> list[HorizonOffer]:
    """The offers in the order every node builds the problem in (by node id)."""
    return sorted(offers, key=lambda o: o.node)
