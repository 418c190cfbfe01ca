"""The codec round-trips every message type and turns any bad payload into InvalidMessage."""

from __future__ import annotations

import contextlib
import json
import math

import attrs
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from redy import messages
from redy.errors import InvalidMessage
from redy.topics import CONTRACT, FieldSpec

pytestmark = pytest.mark.pure

_ID = st.from_regex(r"[a-z0-9][a-z0-9_-]{0,15}", fullmatch=True)
_URI = st.builds("mqtt://127.0.0.1:{}".format, st.integers(1, 65535))


def _number(spec: FieldSpec) -> st.SearchStrategy[float]:
    lo = -1e9 if spec.min is None else spec.min
    hi = 1e9 if spec.max is None else spec.max
    return st.floats(lo, hi, allow_nan=False, allow_infinity=False)


def _value(spec: FieldSpec) -> st.SearchStrategy[object]:
    t = spec.type
    if t == "list":
        item = FieldSpec(name=spec.name, type=spec.items or "str", min=spec.min, max=spec.max)
        return st.lists(_value(item), max_size=min(spec.max_len or 8, 8)).map(tuple)
    if t in messages.MESSAGE_TYPES:
        return _message(t)
    scalar: st.SearchStrategy[object] = {
        "str": st.text(max_size=40),
        "id": _ID,
        "uri": _URI,
        "enum": st.sampled_from(spec.values or ("x",)),
        "bool": st.booleans(),
        "int": st.integers(int(spec.min or 0), int(min(spec.max or 2**31, 2**31))),
        "float": _number(spec),
        # A number, or a rising pair [at_min, at_max].
        "ramp": st.one_of(
            _number(spec), st.lists(_number(spec), min_size=2, max_size=2).map(sorted).map(tuple)
        ),
    }[t]
    return st.one_of(st.none(), scalar) if spec.optional else scalar


def _message(type_name: str) -> st.SearchStrategy[object]:
    cls = messages.MESSAGE_TYPES[type_name]
    fields = {f.name: _value(f) for f in CONTRACT.types[type_name].fields}
    strategy = st.builds(cls, **fields)
    if type_name == "Command":
        strategy = strategy.filter(lambda c: c.setpoint_kw is not None or c.on is not None)
    if type_name == "ActuatorStatus":
        strategy = strategy.filter(
            lambda s: (
                s.min_kw <= s.max_kw
                and (
                    s.charge_below_eur_mwh is None
                    or s.discharge_above_eur_mwh is None
                    or s.charge_below_eur_mwh <= s.discharge_above_eur_mwh
                )
            )
        )
    return strategy


def _topic_for(type_name: str) -> str:
    for spec in CONTRACT.topics.values():
        if spec.type == type_name:
            return spec.pattern.format(node="n1", unit="u1", peer="p1")
    raise LookupError(type_name)


_TOP_TYPES = sorted({spec.type for spec in CONTRACT.topics.values()})


@pytest.mark.parametrize("type_name", _TOP_TYPES)
@settings(max_examples=60, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_round_trip(type_name: str, data: st.DataObject) -> None:
    msg = data.draw(_message(type_name))
    assert messages.decode(_topic_for(type_name), messages.encode(msg)) == msg


@given(payload=st.binary(max_size=300), type_name=st.sampled_from(_TOP_TYPES))
@settings(max_examples=300)
def test_random_bytes_give_a_message_or_invalid_message(payload: bytes, type_name: str) -> None:
    try:
        msg = messages.decode(_topic_for(type_name), payload)
    except InvalidMessage:
        return
    assert type(msg).__name__ == type_name


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)


@given(doc=st.dictionaries(st.sampled_from(["seq", "ts_s", "on", "setpoint_kw", "x"]), _JSON))
@settings(max_examples=300)
def test_random_json_objects_give_a_command_or_invalid_message(doc: dict[str, object]) -> None:
    try:
        msg = messages.decode("redy/n1/action/u1/command", json.dumps(doc))
    except InvalidMessage:
        return
    assert isinstance(msg, messages.Command)
    assert msg.setpoint_kw is None or math.isfinite(msg.setpoint_kw)


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (b"{", "malformed JSON"),
        (b"[1]", "expected a JSON object"),
        (b'{"seq": 1, "on": true}', "missing field 'ts_s'"),
        (b'{"seq": "1", "ts_s": 1, "on": true}', "Command.seq: expected an integer"),
        (b'{"seq": 1, "ts_s": 1, "on": true, "colour": 1}', "unknown field(s) ['colour']"),
        (b'{"seq": -3, "ts_s": 1, "on": true}', "below the minimum 0"),
        (b'{"seq": 1, "ts_s": 1, "setpoint_kw": 1e308, "on": true}', "above the maximum"),
        (b'{"seq": 1, "ts_s": 1, "setpoint_kw": NaN}', "malformed JSON"),
        (b'{"seq": 1, "ts_s": 1}', "expected setpoint_kw or on"),
        (b'{"seq": 1, "ts_s": 1, "on": "yes"}', "Command.on: expected true or false"),
    ],
)
def test_bad_command_payloads_say_what_was_expected(payload: bytes, expected: str) -> None:
    with pytest.raises(InvalidMessage) as err:
        messages.decode("redy/house-1/action/heater/command", payload)
    assert expected in str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (b'"min_kw": 5, "max_kw": -5', "min_kw 5.0 is above max_kw -5.0"),
        (
            b'"min_kw": -5, "max_kw": 5, "charge_below_eur_mwh": 120, "discharge_above_eur_mwh": 90',
            "charge_below_eur_mwh 120.0 is above discharge_above_eur_mwh 90.0",
        ),
    ],
)
def test_actuator_status_ranges_must_be_ordered(extra: bytes, expected: str) -> None:
    payload = b'{"seq": 1, "ts_s": 1, "power_kw": 0, "on": true, ' + extra + b"}"
    with pytest.raises(InvalidMessage, match=expected):
        messages.decode("redy/house-1/action/battery/status", payload)


def test_oversized_payload_is_refused_before_parsing() -> None:
    payload = (
        b'{"seq": 1, "ts_s": 1, "on": true, "pad": "' + b"x" * CONTRACT.max_payload_bytes + b'"}'
    )
    with pytest.raises(InvalidMessage, match="over the limit"):
        messages.decode("redy/house-1/action/heater/command", payload)


@pytest.mark.parametrize(
    "topic",
    ["redy/house-1", "other/house-1/descriptor", "redy/House-1/descriptor", "redy/h/x/y/z/w"],
)
def test_topics_outside_the_tree_are_refused(topic: str) -> None:
    with pytest.raises(InvalidMessage, match="not in the ReDy tree"):
        messages.decode(topic, b"{}")


def test_nested_entry_errors_name_the_path() -> None:
    payload = b'{"node":"a","ts_s":1,"entries":[{"node":"b","broker":"http://x","age":1}]}'
    with pytest.raises(InvalidMessage, match=r"entries\[0\]\.broker"):
        messages.decode("redy/a/membership/view", payload)


@pytest.mark.parametrize(
    "values", [[1e308, 1e308], [-1e308, -1e308, 1.0], [2**70, 2**70], [10**400]]
)
def test_huge_numbers_in_a_list_give_a_message_or_invalid_message(values: list[float]) -> None:
    """A list whose sum is beyond float range (found by the no-kill property test: the check
    raised OverflowError out of the decoder)."""
    doc = {"sender": "evil", "epoch": 1, "round": 1, "algorithm": "pushsum", "weight": 0.5}
    payload = json.dumps(doc | {"values": values}).encode()
    with contextlib.suppress(InvalidMessage):
        messages.decode("redy/house-1/grid/gossip/evil", payload)


def _offer(sig: str, values: tuple[float, ...] = (-5.0, 10.0, 40.0, 60.0)) -> messages.NodeOffer:
    return messages.NodeOffer(node="gas-1", epoch=7, values=values, cert="Q0VSVA==", sig=sig)


def test_a_message_of_encoded_offers_is_the_message_encoded_whole() -> None:
    """`encode_with` splices offers encoded once into each message: byte for byte what `encode`
    gives, and refused where `encode` would refuse."""
    offers = (_offer("c2lnMQ=="), _offer("c2lnMg==", (1.0,)))
    whole = messages.Gossip(
        sender="house-1", epoch=7, round=0, algorithm="offers", weight=0.0, values=(),
        ts_s=12.5, offers=offers,
    )  # fmt: skip
    head = attrs.evolve(whole, offers=None)
    got = messages.encode_with(head, "offers", [messages.encode(o) for o in offers])
    assert got == messages.encode(whole)
    assert messages.decode("redy/gas-1/grid/gossip/house-1", got) == whole
    assert messages.encode_with(head, "offers", []) == messages.encode(
        attrs.evolve(whole, offers=())
    )
    with pytest.raises(InvalidMessage, match="at most 256"):
        messages.encode_with(head, "offers", [messages.encode(offers[0])] * 257)
    with pytest.raises(ValueError, match="not its last field"):
        messages.encode_with(head, "values", [])


def test_a_copy_of_a_signed_offer_is_checked_once_but_a_changed_copy_in_full() -> None:
    """A node hears each offer from most of its neighbours: an equal copy is the message built
    before. A hostile relay that keeps an offer's signature but changes its values gets no
    shortcut: its copy is checked and built on its own (and the signature check, later, fails)."""
    topic = "redy/gas-1/grid/gossip/house-1"

    def gossip(*offers: dict[str, object]) -> bytes:
        return orjson.dumps(
            {"sender": "house-1", "epoch": 7, "round": 0, "algorithm": "offers", "weight": 0.0,
             "values": [], "offers": list(offers)}
        )  # fmt: skip

    honest = {"node": "gas-1", "epoch": 7, "values": [-5.0, 10.0, 40.0, 60.0],
              "cert": "Q0VSVA==", "sig": "c2lnLW9uY2U="}  # fmt: skip
    first = messages.decode(topic, gossip(honest)).offers[0]
    again = messages.decode(topic, gossip(dict(honest))).offers[0]
    assert again is first
    changed = messages.decode(topic, gossip(dict(honest, values=[-5.0]))).offers[0]
    assert changed is not first and changed.values == (-5.0,) and first.values[0] == -5.0
    for bad in ({"values": [1.0] * 194}, {"values": ["x"]}, {"epoch": -1}, {"extra": 1}):
        with pytest.raises(InvalidMessage):
            messages.decode(topic, gossip(dict(honest, **bad)))
    # The changed copy took the memo's place: the honest one is built again, equal as ever.
    assert messages.decode(topic, gossip(honest)).offers[0] == first


def test_the_signed_memo_keeps_the_last_rounds_only_and_stays_bounded() -> None:
    """The memo of signed offers is worth its memory within an epoch: after four epochs of a
    dozen offers it holds the last three, and a member flooding distinct signatures in one epoch
    fills it to its bound and no further (issue 30: a fixed 4096-entry memo grew a node's memory
    for its first quarter of an hour)."""
    topic = "redy/gas-1/grid/gossip/house-1"

    def decode(epoch: int, sig: str) -> object:
        offer = {"node": "gas-1", "epoch": epoch, "values": [-5.0], "cert": "Q0VSVA==", "sig": sig}
        payload = {"sender": "house-1", "epoch": epoch, "round": 0, "algorithm": "offers",
                   "weight": 0.0, "values": [], "offers": [offer]}  # fmt: skip
        return messages.decode(topic, orjson.dumps(payload)).offers[0]

    base = 10**6  # epochs no other test uses
    for epoch in range(base, base + 4):
        for i in range(12):
            decode(epoch, f"s{epoch}-{i}")
    held = messages._SIGNED["NodeOffer"]
    assert set(held).issuperset({base + 1, base + 2, base + 3}) and base not in held
    first = decode(base + 3, f"s{base + 3}-0")
    assert decode(base + 3, f"s{base + 3}-0") is first  # still a hit
    for i in range(messages._SIGNED_MEMO_SIZE + 100):
        decode(base + 9, f"flood-{i}")
    assert sum(map(len, held.values())) <= messages._SIGNED_MEMO_SIZE
    assert list(held) == [base + 9]  # the flood's round, alone and full


def _least(f: FieldSpec) -> object:
    """The plainest value a field of its type could hold (its range may still refuse it)."""
    if f.type in messages.MESSAGE_TYPES:
        return _least_object(f.type)
    plain: dict[str, object] = {"id": "a", "str": "a", "uri": "mqtt://127.0.0.1:1883",
                                "int": 0, "bool": False, "ramp": 0.0}  # fmt: skip
    if f.type == "enum":
        return f.values[0]
    if f.type in plain:
        return plain[f.type]
    return f.min if f.min is not None else 0.0


def _least_object(type_name: str) -> dict[str, object]:
    """A type's required fields, lists left out (a list may be: it is then empty)."""
    fields = CONTRACT.types[type_name].fields
    return {f.name: _least(f) for f in fields if not f.optional and f.type != "list"}


@pytest.mark.parametrize("type_name", sorted(CONTRACT.types))
def test_a_message_that_leaves_its_lists_out_is_a_message_or_one_clear_error(
    type_name: str,
) -> None:
    """topics.yaml lets a list be left out. A peer's offer without its `values` ended in a
    TypeError from the message class, past the codec's checks (found by fuzzing the cell
    market): every type, nested ones too, either builds with empty lists or says what is
    wrong."""
    try:
        msg = messages.from_dict(type_name, _least_object(type_name))
    except InvalidMessage:
        return
    for f in CONTRACT.types[type_name].fields:
        if f.type == "list" and not f.optional:
            assert len(getattr(msg, f.name)) == 0
