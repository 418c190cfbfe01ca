"""topics.yaml and redy.messages / redy.topics describe the same contract."""

from __future__ import annotations

import re
import types
import typing
from pathlib import Path

import attrs
import pytest

from redy import messages, topics
from redy.errors import ContractError, InvalidMessage
from redy.topics import CONTRACT

pytestmark = pytest.mark.pure

_SCALARS = {
    "str": str,
    "id": str,
    "uri": str,
    "enum": str,
    "int": int,
    "float": float,
    "ramp": float | tuple[float, ...],
    "bool": bool,
}


def _python_type(field: topics.FieldSpec) -> object:
    if field.type == "list":
        item = messages.MESSAGE_TYPES.get(field.items or "") or _SCALARS[field.items or "str"]
        base: object = tuple[item, ...]  # type: ignore[valid-type]
    else:
        base = messages.MESSAGE_TYPES.get(field.type) or _SCALARS[field.type]
    return base | None if field.optional else base  # type: ignore[operator]


def _same(a: object, b: object) -> bool:
    if typing.get_origin(a) in (typing.Union, types.UnionType):
        return set(typing.get_args(a)) == set(typing.get_args(b))
    return a == b


def test_every_yaml_type_has_a_class_and_every_class_a_yaml_type() -> None:
    assert set(CONTRACT.types) == set(messages.MESSAGE_TYPES)


@pytest.mark.parametrize("type_name", sorted(CONTRACT.types))
def test_class_fields_match_yaml_fields(type_name: str) -> None:
    cls = messages.MESSAGE_TYPES[type_name]
    hints = typing.get_type_hints(cls)
    yaml_fields = {f.name: f for f in CONTRACT.types[type_name].fields}
    assert {a.name for a in attrs.fields(cls)} == set(yaml_fields)
    for name, spec in yaml_fields.items():
        assert _same(hints[name], _python_type(spec)), f"{type_name}.{name}"
        has_default = attrs.fields_dict(cls)[name].default is not attrs.NOTHING
        # Optional fields must have a default; only they and lists (empty) may have one.
        if spec.optional:
            assert has_default, f"{type_name}.{name}"
        elif has_default:
            assert spec.type == "list", f"{type_name}.{name}"


def test_every_topic_names_a_declared_type_and_known_roles() -> None:
    roles = {"detection", "action", "unit", "governance", "operator", "peer"}
    for spec in CONTRACT.topics.values():
        assert spec.type in CONTRACT.types
        assert spec.qos in (0, 1, 2)
        assert set(spec.publishers) <= roles and set(spec.subscribers) <= roles
        assert spec.pattern.startswith("redy/{node}/")


def test_topic_patterns_are_unambiguous() -> None:
    for spec in CONTRACT.topics.values():
        concrete = spec.pattern.format(node="n1", unit="u1", peer="p1")
        assert CONTRACT.match(concrete)[0] is spec


def test_render_and_match_round_trip() -> None:
    topic = topics.render("measurement", node="house-1", unit="pv-meter")
    assert topic == "redy/house-1/detection/pv-meter/measurement"
    spec, params = CONTRACT.match(topic)
    assert spec.name == "measurement"
    assert params == {"node": "house-1", "unit": "pv-meter"}


def test_matches_are_remembered_but_bounded_and_never_shared() -> None:
    """A node matches the same few names all day: each is worked out once. A caller that
    changes the placeholder values it got changes nobody else's, and a peer writing ever new
    names cannot grow the memory past its bound."""
    topic = topics.render("gossip", node="house-1", peer="gas-1")
    _, params = CONTRACT.match(topic)
    params["peer"] = "someone-else"
    assert CONTRACT.match(topic)[1] == {"node": "house-1", "peer": "gas-1"}
    for i in range(2 * topics._MATCH_MEMO_SIZE):
        assert CONTRACT.match(f"redy/house-1/grid/gossip/p{i}")[1]["peer"] == f"p{i}"
    assert len(CONTRACT._memo) <= topics._MATCH_MEMO_SIZE
    with pytest.raises(InvalidMessage):
        CONTRACT.match("redy/house-1/grid/gossip/NOT-AN-ID")
    assert CONTRACT.match(topic)[0].name == "gossip"


def test_acl_grants_only_what_the_roles_say() -> None:
    acl = topics.local_acl("house-1", {"pv-meter": "detection", "heater": "action"})
    block = acl.split("user pv-meter\n")[1].split("\n\n")[0].splitlines()
    assert "topic write redy/house-1/detection/pv-meter/measurement" in block
    assert not any("command" in line for line in block)
    heater = acl.split("user heater\n")[1].split("\n\n")[0].splitlines()
    assert "topic read redy/house-1/action/heater/command" in heater
    grid = topics.grid_acl("house-1")
    assert "pattern write redy/house-1/grid/neighbours/%u" in grid  # the certificate's CN
    assert "redy/house-1/action" not in grid


@pytest.mark.parametrize(
    ("old", "new", "where"),
    [
        # An unquoted ', ' inside a flow mapping splits a description into a junk key.
        (
            'description: "the node\'s grid listener, where peers write"',
            "description: the node's grid listener, where peers write",
            "field NodeDescriptor.broker has unknown key(s) ['where peers write']",
        ),
        ("max_payload_bytes: 65536", "max_payload_bytes: 65536\nmax_payload: 1", "the top level"),
        ("    qos: 1\n", "    qos: 1\n    qos_level: 1\n", "unknown key(s) ['qos_level']"),
    ],
)
def test_the_loader_rejects_an_unknown_key_naming_where(
    tmp_path: Path, old: str, new: str, where: str
) -> None:
    text = Path(topics.__file__).with_name("topics.yaml").read_text()
    assert old in text
    broken = tmp_path / "topics.yaml"
    broken.write_text(text.replace(old, new, 1))
    with pytest.raises(ContractError, match=re.escape(where)):
        topics.load_contract(broken)


def test_a_topic_without_its_qos_is_refused(tmp_path: Path) -> None:
    text = Path(topics.__file__).with_name("topics.yaml").read_text()
    broken = tmp_path / "topics.yaml"
    broken.write_text(text.replace("    qos: 1\n", "", 1))
    with pytest.raises(ContractError, match=r"lacks \['qos'\]"):
        topics.load_contract(broken)


def test_subscription_filters_come_from_the_contract() -> None:
    from redy.errors import RedyError
    from redy.topics import subscription

    assert subscription("unit_state", node="house-1") == "redy/house-1/units/+/state"
    assert subscription("view") == "redy/+/membership/view"
    assert subscription("descriptor", node="gas-1") == "redy/gas-1/descriptor"
    with pytest.raises(RedyError):
        subscription("unit_state", node="Bad/Node")
