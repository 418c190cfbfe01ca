"""Message types of topics.yaml as frozen attrs classes, with an orjson codec that validates.

`encode(msg)` gives compact JSON bytes (readable in mosquitto_sub). `decode(topic, payload)` finds
the topic's type in topics.yaml and checks the payload against it: size, JSON syntax, an object,
no unknown or missing fields, field types, finite numbers, ranges, enum values and list lengths.
Every failure is one `InvalidMessage` whose text says what was expected. The classes here and the
types in topics.yaml are checked against each other by tests/messages/test_contract.py.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

import attrs
import orjson

from redy.errors import InvalidMessage
from redy.topics import CONTRACT, FieldSpec, TopicSpec


@attrs.frozen(kw_only=True)
class ViewEntry:
    """One neighbour: its node id, its grid listener URI and its age in shuffle periods."""

    node: str
    broker: str
    age: int


@attrs.frozen(kw_only=True)
class NodeDescriptor:
    node: str
    kind: str
    broker: str
    ts_s: float
    capabilities: tuple[str, ...] = ()


@attrs.frozen(kw_only=True)
class UnitMeta:
    unit: str
    role: str
    device: str
    quantity: str
    rated_power_kw: float
    period_s: float
    bd_seq: int
    ts_s: float
    capacity_kwh: float | None = None


@attrs.frozen(kw_only=True)
class UnitState:
    state: str
    bd_seq: int


@attrs.frozen(kw_only=True)
class Measurement:
    seq: int
    ts_s: float
    power_kw: float
    energy_kwh: float
    soc: float | None = None
    available_kw: float | None = None
    forecast_kw: tuple[float, ...] = ()


@attrs.frozen(kw_only=True)
class Command:
    seq: int
    ts_s: float
    setpoint_kw: float | None = None
    on: bool | None = None


@attrs.frozen(kw_only=True)
class ActuatorStatus:
    seq: int
    ts_s: float
    power_kw: float
    on: bool
    min_kw: float
    max_kw: float
    setpoint_kw: float | None = None
    # One number, or (at_min, at_max): rising linearly from min_kw to max_kw.
    marginal_cost_eur_mwh: float | tuple[float, ...] | None = None
    charge_below_eur_mwh: float | None = None
    discharge_above_eur_mwh: float | None = None
    note: str | None = None
    soc: float | None = None
    soc_min: float | None = None
    soc_max: float | None = None
    energy_due_kwh: float | None = None
    due_in_s: float | None = None


@attrs.frozen(kw_only=True)
class NodeSetpoint:
    seq: int
    net_kw: float


@attrs.frozen(kw_only=True)
class NodeEnergyState:
    node: str
    ts_s: float
    production_kw: float
    consumption_kw: float
    net_kw: float
    flex_up_kw: float
    flex_down_kw: float
    cost_eur_h: float
    storage_kwh: float
    storage_capacity_kwh: float
    units_online: int
    units_total: int
    forecast_kw: tuple[float, ...] = ()
    epoch: int | None = None
    price_eur_mwh: float | None = None
    status: str | None = None
    clock_offset_s: float | None = None
    setpoint_kw: float | None = None
    unserved_kw: float | None = None
    excess_kw: float | None = None


@attrs.frozen(kw_only=True)
class Count:
    name: str
    count: int


@attrs.frozen(kw_only=True)
class GovernanceHealth:
    node: str
    ts_s: float
    started_s: float
    epochs_cleared: int
    epochs_missed: int
    offers: int
    peer_dials: int
    peer_failures: int
    peer_links: int
    inbox: int
    tasks: int
    dropped: tuple[Count, ...] = ()
    plan: PlanCounters | None = None


@attrs.frozen(kw_only=True)
class PlanCounters:
    solved: int
    solve_s: float
    interval: int
    binding: bool
    offers_admitted: int
    offers_refused: tuple[Count, ...] = ()


@attrs.frozen(kw_only=True)
class View:
    node: str
    ts_s: float
    entries: tuple[ViewEntry, ...] = ()


@attrs.frozen(kw_only=True)
class SignedEntry:
    node: str
    broker: str
    born: int
    chain: tuple[str, ...] = ()
    sigs: tuple[str, ...] = ()


@attrs.frozen(kw_only=True)
class ShuffleRequest:
    sender: str
    broker: str
    nonce: int
    entries: tuple[ViewEntry, ...] = ()
    token: SignedEntry | None = None
    signed: tuple[SignedEntry, ...] | None = None
    certs: tuple[str, ...] | None = None


@attrs.frozen(kw_only=True)
class ShuffleReply:
    sender: str
    nonce: int
    entries: tuple[ViewEntry, ...] = ()
    signed: tuple[SignedEntry, ...] | None = None
    certs: tuple[str, ...] | None = None
    refused: bool | None = None


@attrs.frozen(kw_only=True)
class Evidence:
    sender: str
    culprit: str
    copies: tuple[SignedEntry, ...] = ()
    certs: tuple[str, ...] | None = None


@attrs.frozen(kw_only=True)
class NodeOffer:
    """A node's offer for one epoch (redy.balancing.offers), signed with its node key; its
    certificate rides along only to a neighbour not known to hold it."""

    node: str
    epoch: int
    values: tuple[float, ...]
    session: int | None = None
    cert: str | None = None
    sig: str


@attrs.frozen(kw_only=True)
class Gossip:
    sender: str
    epoch: int
    round: int
    algorithm: str
    weight: float
    values: tuple[float, ...]
    ts_s: float | None = None
    phase: int | None = None
    floor_eur_mwh: float | None = None
    cap_eur_mwh: float | None = None
    offers: tuple[NodeOffer, ...] | None = None


@attrs.frozen(kw_only=True)
class CellCard:
    """A member of the cell market: its broker and certificate, signed (redy.signing)."""

    node: str
    broker: str
    cert: str
    ts_s: float
    sig: str


@attrs.frozen(kw_only=True)
class CellMessage:
    """A message of the cell market's protocol (JSON text) and/or members' cards."""

    sender: str
    body: str | None = None
    cards: tuple[CellCard, ...] | None = None
    held: int | None = None


@attrs.frozen(kw_only=True)
class PlanBlock:
    kw: tuple[float, ...] = ()
    cost_eur_mwh: tuple[float, ...] = ()


@attrs.frozen(kw_only=True)
class PlanStorage:
    capacity_kwh: float
    soc_kwh: float
    charge_kw: float
    discharge_kw: float
    charge_efficiency: float
    discharge_efficiency: float
    value_eur_kwh: float
    wear_eur_mwh: float
    soc_min_kwh: float


@attrs.frozen(kw_only=True)
class PlanDeferrable:
    energy_kwh: float
    begin: int
    end: int
    power_kw: float


@attrs.frozen(kw_only=True)
class PlanOffer:
    """A node's horizon offer (redy.planning.offer.HorizonOffer) on the wire, signed with its
    node key (redy.planning.wire)."""

    node: str
    start: int
    interval_min: float
    dispatch_now_kw: float
    sig: str
    base_kw: tuple[float, ...] = ()
    blocks: tuple[PlanBlock, ...] = ()
    storage: tuple[PlanStorage, ...] = ()
    deferrable: tuple[PlanDeferrable, ...] = ()
    ramp_kw: float | None = None
    session: int | None = None
    cert: str | None = None


@attrs.frozen(kw_only=True)
class PlanGossip:
    sender: str
    start: int
    ts_s: float | None = None
    offers: tuple[PlanOffer, ...] = ()


@attrs.frozen(kw_only=True)
class Plan:
    node: str
    ts_s: float
    start: int
    interval_s: float
    interval_min: float
    offers: int
    digest: str
    objective_eur: float
    price_eur_mwh: tuple[float, ...] = ()
    status: tuple[str, ...] = ()
    import_kw: tuple[float, ...] = ()
    export_kw: tuple[float, ...] = ()
    injection_kw: tuple[float, ...] = ()
    blocks_kw: tuple[float, ...] = ()
    storage_kw: tuple[float, ...] = ()
    soc_kwh: tuple[float, ...] = ()
    deferrable_kw: tuple[float, ...] = ()
    forecast_error_kw: float | None = None
    forecast_mae_kw: float | None = None


MESSAGE_TYPES: dict[str, type] = {
    cls.__name__: cls
    for cls in (
        ViewEntry,
        NodeDescriptor,
        UnitMeta,
        UnitState,
        Measurement,
        Command,
        ActuatorStatus,
        NodeSetpoint,
        NodeEnergyState,
        Count,
        GovernanceHealth,
        PlanCounters,
        View,
        SignedEntry,
        ShuffleRequest,
        ShuffleReply,
        Evidence,
        NodeOffer,
        Gossip,
        CellCard,
        CellMessage,
        PlanBlock,
        PlanStorage,
        PlanDeferrable,
        PlanOffer,
        PlanGossip,
        Plan,
    )
}

_CLASSES = frozenset(MESSAGE_TYPES.values())
_FIELD_NAMES: dict[type, tuple[str, ...]] = {}

M = TypeVar("M")


# --- encoding -------------------------------------------------------------------------------


def to_dict(msg: Any) -> dict[str, Any]:
    """A message as a plain JSON-ready dict (tuples become lists, nested messages dicts)."""
    return attrs.asdict(msg)


def _fields_of(msg: Any) -> dict[str, Any]:
    """A message's fields, nested messages as dicts (tuples stay tuples: JSON arrays all the
    same). attrs.asdict copies every list; a gossip message of offers is mostly nested lists."""
    names = _FIELD_NAMES.get(type(msg))
    if names is None:
        names = _FIELD_NAMES[type(msg)] = tuple(a.name for a in attrs.fields(type(msg)))
    out = {}
    for name in names:
        v = getattr(msg, name)
        if type(v) is tuple and v and type(v[0]) in _CLASSES:
            v = [_fields_of(x) for x in v]
        elif type(v) in _CLASSES:
            v = _fields_of(v)
        out[name] = v
    return out


def encode(msg: Any) -> bytes:
    """Compact JSON bytes of a message; the message is validated against its type first."""
    data = _fields_of(msg)
    _check_object(data, type(msg).__name__)
    _cross_check(msg)
    return orjson.dumps(data)


def encode_with(msg: Any, field: str, items: Sequence[bytes]) -> bytes:
    """`encode(msg)` with its last field, a list of messages, given as `items` already encoded
    (each by `encode`, so each was validated then): a node passing the same offers on to
    each neighbour encodes each offer once, not once per message."""
    names = _FIELD_NAMES.get(type(msg)) or tuple(a.name for a in attrs.fields(type(msg)))
    if names[-1] != field:
        raise ValueError(f"{type(msg).__name__}.{field} is not its last field")
    spec = next(f for f in CONTRACT.types[type(msg).__name__].fields if f.name == field)
    if spec.max_len is not None and len(items) > spec.max_len:
        raise InvalidMessage(
            f"{type(msg).__name__}.{field}: {len(items)} items, expected at most {spec.max_len}"
        )
    head = encode(attrs.evolve(msg, **{field: ()}))
    tail = f'"{field}":[]}}'.encode()
    assert head.endswith(tail), head[-40:]  # orjson keeps the field order
    payload = head[: -len(b"]}")] + b",".join(items) + b"]}"
    if len(payload) > CONTRACT.max_payload_bytes:
        raise InvalidMessage(
            f"{type(msg).__name__}: {len(payload)} bytes, over the limit of"
            f" {CONTRACT.max_payload_bytes} bytes"
        )
    return payload


# --- decoding -------------------------------------------------------------------------------


def decode(topic: str, payload: bytes | bytearray | memoryview | str) -> Any:
    """Validate `payload` as the message type of `topic` and return the message.

    Raises InvalidMessage naming the topic, the field and what was expected.
    """
    spec, _ = CONTRACT.match(topic)
    try:
        return decode_as(spec.type, payload)
    except InvalidMessage as exc:
        raise InvalidMessage(f"{topic}: {exc}") from None


def decode_as(type_name: str, payload: bytes | bytearray | memoryview | str) -> Any:
    """Validate `payload` as a message of type `type_name` (a key of topics.yaml's types)."""
    if isinstance(payload, str):
        payload = payload.encode()
    size = len(payload)
    if size > CONTRACT.max_payload_bytes:
        raise InvalidMessage(
            f"payload of {size} bytes is over the limit of {CONTRACT.max_payload_bytes} bytes"
        )
    try:
        data = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise InvalidMessage(
            f"malformed JSON ({exc.msg}); expected a {type_name} JSON object"
        ) from None
    return _build(type_name, data)


def from_dict(type_name: str, data: Any) -> Any:
    """Validate an already parsed JSON value as `type_name` and return the message."""
    return _build(type_name, data)


def _build(type_name: str, data: Any, where: str = "", checked: bool = False) -> Any:
    """The message of `data`, checked first unless `checked` (a nested object its parent's
    check already covered)."""
    if not checked:
        _check_object(data, type_name, where)
    tspec = CONTRACT.types[type_name]
    kwargs = {}
    for f in tspec.fields:
        if f.name in data:
            kwargs[f.name] = _convert(f, data[f.name])
        elif f.type == "list" and not f.optional:  # a list may be left out: it is empty
            kwargs[f.name] = _convert(f, [])
    msg = MESSAGE_TYPES[type_name](**kwargs)
    _cross_check(msg)
    return msg


def _cross_check(msg: Any) -> None:
    """Rules between fields that topics.yaml states in words."""
    if isinstance(msg, Command) and msg.setpoint_kw is None and msg.on is None:
        raise InvalidMessage("Command: expected setpoint_kw or on (or both), got neither")
    if isinstance(msg, ActuatorStatus):
        if msg.min_kw > msg.max_kw:
            raise InvalidMessage(
                f"ActuatorStatus: min_kw {msg.min_kw} is above max_kw {msg.max_kw}"
            )
        lo, hi = msg.charge_below_eur_mwh, msg.discharge_above_eur_mwh
        if lo is not None and hi is not None and lo > hi:
            raise InvalidMessage(
                f"ActuatorStatus: charge_below_eur_mwh {lo} is above discharge_above_eur_mwh {hi}"
            )


def _convert(f: FieldSpec, value: Any) -> Any:
    if value is None:
        return None
    if f.type == "list":
        return tuple(
            _nested(f.items, v)
            if f.items in MESSAGE_TYPES
            else (float(v) if f.items == "float" else v)
            for v in value
        )
    if f.type in MESSAGE_TYPES:
        return _nested(f.type, value)
    if f.type == "float" or (f.type == "ramp" and not isinstance(value, list | tuple)):
        return float(value)
    if f.type == "ramp":
        return tuple(float(v) for v in value)
    return value


# Signed objects (a type with a `sig` field: NodeOffer, PlanOffer) come many times over,
# unchanged: a node hears each offer from most of its neighbours. Each is checked and built once;
# a later copy equal to it, field for field, is the same message. Only the last few rounds (an
# offer's `epoch`, a plan offer's `start`) are worth keeping, since a copy of an older one is
# refused by the market anyway: per type, the entries of the _SIGNED_ROUNDS rounds that came
# last, at most _SIGNED_MEMO_SIZE entries in all (the oldest round goes first; a round alone
# and full takes no more). A memo of a fixed 4096 entries took a grid of 12 nodes about 15
# minutes to fill, so a node's memory grew for that long (issue 30's chaos hour).
_SIGNED_MEMO_SIZE = 4096
_SIGNED_ROUNDS = 3
_Rounds = dict[Any, dict[tuple[str, int], tuple[dict[str, Any], Any]]]
_SIGNED_TYPES = frozenset(
    name for name, t in CONTRACT.types.items() if any(f.name == "sig" for f in t.fields)
)
# type -> round -> (signature, number of fields) -> (the JSON object, its message). Keyed by the
# number of fields too: a copy with its certificate and one without are both kept.
_SIGNED: dict[str, _Rounds] = {name: {} for name in _SIGNED_TYPES}
_SIGNED_LOCK = threading.Lock()  # units that decode in a client's thread as well


def _round_of(value: dict[str, Any]) -> Any:
    return value.get("epoch", value.get("start"))


def _seen(type_name: str, value: Any) -> Any:
    """The message built before from a JSON object equal to `value`, or None."""
    if type_name not in _SIGNED_TYPES or type(value) is not dict:
        return None
    sig = value.get("sig")
    if type(sig) is not str:
        return None
    held = _SIGNED[type_name].get(_round_of(value))
    hit = held.get((sig, len(value))) if held is not None else None
    return hit[1] if hit is not None and hit[0] == value else None


def _remember(type_name: str, value: dict[str, Any], msg: Any) -> None:
    rounds = _SIGNED[type_name]
    key = _round_of(value)
    with _SIGNED_LOCK:
        held = rounds.get(key)
        if held is None:
            held = rounds[key] = {}
            while len(rounds) > _SIGNED_ROUNDS:
                del rounds[next(iter(rounds))]
        while sum(map(len, rounds.values())) >= _SIGNED_MEMO_SIZE and len(rounds) > 1:
            del rounds[next(iter(rounds))]
        if len(held) < _SIGNED_MEMO_SIZE:
            held[(value["sig"], len(value))] = (value, msg)


def _nested(type_name: str, value: Any) -> Any:
    """A nested message of a checked parent: built, or the one built before from its equal."""
    msg = _seen(type_name, value)
    if msg is not None:
        return msg
    msg = _build(type_name, value, checked=True)
    if type_name in _SIGNED_TYPES:
        _remember(type_name, value, msg)
    return msg


def _check_object(data: Any, type_name: str, where: str = "") -> None:
    """Raise InvalidMessage unless `data` is a valid JSON object of `type_name`."""
    where = where or type_name
    if not isinstance(data, Mapping):
        raise InvalidMessage(f"{where}: expected a JSON object, got {_kind(data)}")
    tspec = CONTRACT.types[type_name]
    known = _field_names(tspec)
    if not known.issuperset(data):
        unknown = sorted(str(k) for k in data if k not in known)
        raise InvalidMessage(
            f"{where}: unknown field(s) {unknown}; expected fields {sorted(known)}"
        )
    for f in tspec.fields:
        if f.name not in data or data[f.name] is None:
            if f.optional or (f.type == "list" and f.name not in data):
                continue
            raise InvalidMessage(f"{where}: missing field {f.name!r} ({_expect(f)})")
        _check_value(f, data[f.name], f"{where}.{f.name}")


def _check_value(f: FieldSpec, value: Any, where: str) -> None:
    t = f.type
    if t == "list":
        if not isinstance(value, list | tuple):
            raise InvalidMessage(f"{where}: expected a list of {f.items}, got {_kind(value)}")
        if f.max_len is not None and len(value) > f.max_len:
            raise InvalidMessage(f"{where}: {len(value)} items, expected at most {f.max_len}")
        if f.items == "float" and _plain_numbers(f, value):
            return  # the common case in one pass (a gossip curve); else name the bad item
        item = _derived(f, "items")
        for i, v in enumerate(value):
            _check_value(item, v, f"{where}[{i}]")
        return
    if t in MESSAGE_TYPES:
        if _seen(t, value) is None:
            _check_object(value, t, where)
        return
    if t == "ramp":
        if not isinstance(value, list | tuple):
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise InvalidMessage(f"{where}: expected {_expect(f)}, got {_kind(value)}")
            _check_value(_derived(f, "float"), value, where)
            return
        if len(value) != 2:
            raise InvalidMessage(f"{where}: {len(value)} items, expected {_expect(f)}")
        as_float = _derived(f, "float")
        for i, v in enumerate(value):
            _check_value(as_float, v, f"{where}[{i}]")
        if value[0] > value[1]:
            raise InvalidMessage(
                f"{where}: at_min {value[0]} is above at_max {value[1]}; expected {_expect(f)}"
            )
        return
    if t in ("str", "id", "uri", "enum"):
        if not isinstance(value, str):
            raise InvalidMessage(f"{where}: expected {_expect(f)}, got {_kind(value)}")
        if t == "id" and not CONTRACT.id_regex.fullmatch(value):
            raise InvalidMessage(f"{where}: {value!r} is not {_expect(f)}")
        if t == "uri" and not _is_uri(value):
            raise InvalidMessage(f"{where}: {value!r} is not {_expect(f)}")
        if t == "enum" and value not in f.values:
            raise InvalidMessage(f"{where}: {value!r} is not one of {list(f.values)}")
        longest = f.max_len if t == "str" and f.max_len is not None else 1024
        if len(value) > longest:
            raise InvalidMessage(
                f"{where}: string of {len(value)} characters, expected at most {longest}"
            )
        return
    if t == "bool":
        if not isinstance(value, bool):
            raise InvalidMessage(f"{where}: expected true or false, got {_kind(value)}")
        return
    if t == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidMessage(f"{where}: expected an integer, got {_kind(value)}")
    elif t == "float":
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise InvalidMessage(f"{where}: expected a number, got {_kind(value)}")
        if not math.isfinite(value):
            raise InvalidMessage(f"{where}: expected a finite number, got {value}")
    else:  # a type topics.yaml names but this module does not know: the contract test catches it
        raise InvalidMessage(f"{where}: unknown field type {t!r} in topics.yaml")
    if f.min is not None and value < f.min:
        raise InvalidMessage(f"{where}: {value} is below the minimum {f.min}{_unit(f)}")
    if f.max is not None and value > f.max:
        raise InvalidMessage(f"{where}: {value} is above the maximum {f.max}{_unit(f)}")


# What the checks derive from a spec of topics.yaml, worked out once per spec: the field names of
# a type, a list field's item spec, a ramp's spec as one number. Keyed by id, with the spec kept
# beside it so a recycled id never returns another spec's entry.
_NAMES: dict[int, tuple[Any, frozenset[str]]] = {}
_DERIVED: dict[tuple[int, str], tuple[FieldSpec, FieldSpec]] = {}


def _field_names(tspec: Any) -> frozenset[str]:
    hit = _NAMES.get(id(tspec))
    if hit is None or hit[0] is not tspec:
        hit = _NAMES[id(tspec)] = (tspec, frozenset(f.name for f in tspec.fields))
    return hit[1]


def _derived(f: FieldSpec, what: str) -> FieldSpec:
    """`f`'s item spec (`what` = "items") or `f` as one float ("float")."""
    hit = _DERIVED.get((id(f), what))
    if hit is None or hit[0] is not f:
        if what == "items":
            spec = attrs.evolve(f, type=f.items or "str", items=None, max_len=None)
        else:
            spec = attrs.evolve(f, type="float")
        hit = _DERIVED[(id(f), what)] = (f, spec)
    return hit[1]


def _plain_numbers(f: FieldSpec, value: list[Any] | tuple[Any, ...]) -> bool:
    """Whether every item is a finite number (not a bool) within the field's bounds."""
    if not value:
        return True
    if not all(type(v) is float or type(v) is int for v in value):
        return False
    try:
        if not math.isfinite(math.fsum(value)):
            return False  # an inf or nan: the item loop decides
    except OverflowError:  # a sum beyond float range, or an int no float holds
        return False

    return (f.min is None or min(value) >= f.min) and (f.max is None or max(value) <= f.max)


def _is_uri(value: str) -> bool:
    scheme, sep, rest = value.partition("://")
    if scheme not in ("mqtt", "mqtts") or not sep:
        return False
    host, colon, port = rest.rpartition(":")
    return bool(host) and bool(colon) and port.isdigit() and 0 < int(port) < 65536


def _expect(f: FieldSpec) -> str:
    return {
        "id": "an id (lower-case letters, digits, '-', '_')",
        "uri": "a broker URI like mqtt://127.0.0.1:1883",
        "enum": f"one of {list(f.values)}",
        "str": "a string",
        "int": "an integer",
        "float": f"a number in {f.unit}" if f.unit and f.unit != "1" else "a number",
        "ramp": f"a number in {f.unit} or [at_min, at_max] with at_min <= at_max",
        "bool": "true or false",
        "list": f"a list of {f.items}",
    }.get(f.type, f"a {f.type} object")


def _unit(f: FieldSpec) -> str:
    return f" {f.unit}" if f.unit and f.unit != "1" else ""


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    return {
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "a list",
        dict: "an object",
    }.get(type(value), type(value).__name__)


def topic_spec(topic: str) -> TopicSpec:
    """The TopicSpec of a concrete topic name (InvalidMessage if outside the tree)."""
    return CONTRACT.match(topic)[0]


def parse_uri(uri: str) -> tuple[str, int]:
    """(host, port) of an mqtt:// URI; InvalidMessage if it is not one."""
    if not _is_uri(uri):
        raise InvalidMessage(f"{uri!r} is not a broker URI like mqtt://127.0.0.1:1883")
    host, _, port = uri.partition("://")[2].rpartition(":")
    return host, int(port)
