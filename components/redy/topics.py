"""The topic contract (topics.yaml): load it, render and match topic names, derive broker ACLs.

`CONTRACT` is loaded once at import. A topic name is matched level by level against the
patterns; placeholders (`{node}`, `{unit}`, `{peer}`) each fill exactly one level and must be ids.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from functools import cached_property
from pathlib import Path
from typing import Any

import attrs
import yaml

from redy.errors import ContractError, InvalidMessage, RedyError

_CONTRACT_FILE = Path(__file__).with_name("topics.yaml")
_PLACEHOLDER = re.compile(r"^\{(\w+)\}$")

# Roles a unit user can have on its node's local listener; `unit` in topics.yaml means either.
UNIT_ROLES = ("detection", "action")


@attrs.frozen
class FieldSpec:
    """One field of a message type as topics.yaml declares it."""

    name: str
    type: str
    optional: bool = False
    items: str | None = None
    values: tuple[str, ...] = ()
    min: float | None = None
    max: float | None = None
    max_len: int | None = None
    unit: str | None = None
    description: str = ""


@attrs.frozen
class TypeSpec:
    """A message type: its fields in declaration order."""

    name: str
    description: str
    fields: tuple[FieldSpec, ...]


@attrs.frozen
class TopicSpec:
    """One topic of the tree: pattern, type, QoS, retention, expiry and roles."""

    name: str
    pattern: str
    type: str
    qos: int
    retained: bool
    publishers: tuple[str, ...]
    subscribers: tuple[str, ...]
    description: str = ""
    expiry_s: int | None = None

    @cached_property
    def levels(self) -> tuple[str, ...]:
        return tuple(self.pattern.split("/"))

    def render(self, **params: str) -> str:
        """The concrete topic name; every placeholder must be given as a valid id."""
        out = []
        for level in self.levels:
            m = _PLACEHOLDER.match(level)
            if m is None:
                out.append(level)
                continue
            key = m.group(1)
            if key not in params:
                raise RedyError(f"topic {self.name!r} needs {key}= to render {self.pattern}")
            out.append(check_id(params[key], what=key))
        return "/".join(out)

    def filter(self, **params: str) -> str:
        """A subscription filter: the placeholders given rendered, the others `+` (any one
        level), e.g. the state of every unit of one node."""
        out = []
        for level in self.levels:
            m = _PLACEHOLDER.match(level)
            if m is None:
                out.append(level)
            elif m.group(1) in params:
                out.append(check_id(params[m.group(1)], what=m.group(1)))
            else:
                out.append("+")
        return "/".join(out)

    @cached_property
    def _slots(self) -> tuple[tuple[str, bool], ...]:
        """Per level: the literal, or the placeholder's name and True."""
        out = []
        for level in self.levels:
            m = _PLACEHOLDER.match(level)
            out.append((level, False) if m is None else (m.group(1), True))
        return tuple(out)

    def match(self, topic_levels: list[str]) -> dict[str, str] | None:
        """The placeholder values if the topic fits this pattern, else None."""
        slots = self._slots
        if len(topic_levels) != len(slots):
            return None
        params: dict[str, str] = {}
        for level, (want, placeholder) in zip(topic_levels, slots, strict=True):
            if not placeholder:
                if level != want:
                    return None
            elif CONTRACT.id_regex.fullmatch(level):
                params[want] = level
            else:
                return None
        return params


# Concrete topic names a process has matched, kept so each name is matched against the patterns
# once: a node sees a few dozen names. Bounded all the same (a peer may write many names).
_MATCH_MEMO_SIZE = 4096


@attrs.frozen
class Contract:
    """The whole of topics.yaml."""

    version: int
    max_payload_bytes: int
    id_regex: re.Pattern[str]
    types: Mapping[str, TypeSpec]
    topics: Mapping[str, TopicSpec]
    _memo: dict[str, tuple[TopicSpec, dict[str, str]]] = attrs.field(
        factory=dict, init=False, eq=False, repr=False
    )

    def topic(self, name: str) -> TopicSpec:
        try:
            return self.topics[name]
        except KeyError:
            raise RedyError(
                f"unknown topic name {name!r}; expected one of {sorted(self.topics)}"
            ) from None

    def match(self, topic: str) -> tuple[TopicSpec, dict[str, str]]:
        """The topic spec and placeholder values of a concrete topic name.

        Raises InvalidMessage for a topic outside the tree.
        """
        hit = self._memo.get(topic)
        if hit is not None:
            return hit[0], dict(hit[1])
        levels = topic.split("/")
        for spec in self.topics.values():
            params = spec.match(levels)
            if params is not None:
                if len(self._memo) >= _MATCH_MEMO_SIZE:
                    self._memo.clear()
                self._memo[topic] = (spec, params)
                return spec, dict(params)
        raise InvalidMessage(
            f"topic {topic!r} is not in the ReDy tree; expected e.g. redy/<node>/detection/<unit>/measurement"
        )


def check_id(value: str, what: str = "id") -> str:
    """Return `value` if it is a valid node or unit id (one topic level), else raise RedyError."""
    if not isinstance(value, str) or not CONTRACT.id_regex.fullmatch(value):
        raise RedyError(
            f"invalid {what} {value!r}: expected lower-case letters, digits, '-' or '_' (max 63)"
        )
    return value


_RENDERED: dict[tuple[str, tuple[tuple[str, str], ...]], str] = {}


def render(name: str, **params: str) -> str:
    """Render the topic called `name` in topics.yaml, e.g. render('measurement', node=.., unit=..)."""
    key = (name, tuple(params.items()))
    topic = _RENDERED.get(key)
    if topic is None:
        topic = CONTRACT.topic(name).render(**params)
        if len(_RENDERED) >= _MATCH_MEMO_SIZE:  # bounded like the matches
            _RENDERED.clear()
        _RENDERED[key] = topic
    return topic


def subscription(name: str, **params: str) -> str:
    """The filter of topic `name` with the given placeholders and `+` for the others, e.g.
    subscription('unit_state', node=..) = redy/NODE/units/+/state."""
    return CONTRACT.topic(name).filter(**params)


_FIELD_KEYS = {f.name for f in attrs.fields(FieldSpec)} - {"name"}
_TOPIC_KEYS = {f.name for f in attrs.fields(TopicSpec)} - {"name"}
_TYPE_KEYS = {"description", "fields"}
_TOP_KEYS = {"version", "max_payload_bytes", "id_pattern", "types", "topics"}


def _checked(raw: Any, allowed: set[str], required: set[str], where: str) -> Mapping[str, Any]:
    """`raw` if it is a mapping with only `allowed` keys and every `required` one; else
    ContractError naming the place (an unquoted ': ' or ', ' in YAML makes a key of a phrase)."""
    if not isinstance(raw, Mapping):
        raise ContractError(f"topics.yaml: {where} must be a mapping, got {raw!r}")
    unknown = sorted(str(k) for k in set(raw) - allowed)
    if unknown:
        raise ContractError(
            f"topics.yaml: {where} has unknown key(s) {unknown}; expected some of {sorted(allowed)}"
            " (quote a description that holds ': ' or ', ')"
        )
    missing = sorted(required - set(raw))
    if missing:
        raise ContractError(f"topics.yaml: {where} lacks {missing}")
    return raw


def _field(name: str, raw: Mapping[str, Any]) -> FieldSpec:
    return FieldSpec(
        name=name,
        type=raw["type"],
        optional=bool(raw.get("optional", False)),
        items=raw.get("items"),
        values=tuple(raw.get("values", ())),
        min=None if raw.get("min") is None else float(raw["min"]),
        max=None if raw.get("max") is None else float(raw["max"]),
        max_len=raw.get("max_len"),
        unit=raw.get("unit"),
        description=raw.get("description", ""),
    )


def load_contract(path: Path = _CONTRACT_FILE) -> Contract:
    """Parse topics.yaml into a Contract; ContractError for an unknown or missing key."""
    raw = _checked(yaml.safe_load(path.read_text()), _TOP_KEYS, _TOP_KEYS, "the top level")
    types = {}
    for tname, t in raw["types"].items():
        _checked(t, _TYPE_KEYS, {"fields"}, f"type {tname}")
        fields = []
        for fname, f in t["fields"].items():
            _checked(f, _FIELD_KEYS, {"type"}, f"field {tname}.{fname}")
            fields.append(_field(str(fname), f))
        types[tname] = TypeSpec(tname, t.get("description", ""), tuple(fields))
    topics = {}
    for name, t in raw["topics"].items():
        _checked(t, _TOPIC_KEYS, _TOPIC_KEYS - {"description", "expiry_s"}, f"topic {name}")
        topics[name] = TopicSpec(
            name=name,
            pattern=t["pattern"],
            type=t["type"],
            qos=int(t["qos"]),
            retained=bool(t["retained"]),
            publishers=tuple(t["publishers"]),
            subscribers=tuple(t["subscribers"]),
            description=t.get("description", ""),
            expiry_s=t.get("expiry_s"),
        )
    return Contract(
        version=int(raw["version"]),
        max_payload_bytes=int(raw["max_payload_bytes"]),
        id_regex=re.compile(raw["id_pattern"]),
        types=types,
        topics=topics,
    )


CONTRACT = load_contract()


# --- ACLs -----------------------------------------------------------------------------------
# Mosquitto ACL files are derived from the publishers/subscribers of each topic, so a broker can
# never allow what topics.yaml does not say.

_ACCESS = {(True, False): "write", (False, True): "read", (True, True): "readwrite"}


def _plays(role: str, roles: tuple[str, ...]) -> bool:
    return role in roles or (role in UNIT_ROLES and "unit" in roles)


def _acl_lines(role: str, node: str, unit: str | None) -> list[str]:
    lines = []
    for spec in CONTRACT.topics.values():
        # Unit, governance and operator accounts may read neighbours' states but never forge them.
        topic = spec.pattern.replace("{peer}", "+").replace("{node}", node)
        if role in UNIT_ROLES:
            if "{unit}" not in topic:
                continue
            assert unit is not None
            topic = topic.replace("{unit}", unit)
        else:
            topic = topic.replace("{unit}", "+")
        access = _ACCESS.get((_plays(role, spec.publishers), _plays(role, spec.subscribers)))
        if access is not None:
            lines.append(f"topic {access} {topic}")
    return lines


def local_acl(node: str, units: Mapping[str, str]) -> str:
    """ACL file text for a node's local listener.

    `units` maps unit name (= username) to role ('detection' or 'action'). Users `governance` and
    `operator` are the node's own governance unit and its operators; both may also read $SYS.
    """
    check_id(node, "node")
    out = [f"# ACL of node {node}, local listener. Derived from topics.yaml: do not edit.", ""]
    for user, role in (("governance", "governance"), ("operator", "operator")):
        out.append(f"user {user}")
        out.extend(_acl_lines(role, node, None))
        out.append("topic read $SYS/#")
        out.append("")
    for unit, role in sorted(units.items()):
        if role not in UNIT_ROLES:
            raise RedyError(f"unit {unit!r} has role {role!r}; expected one of {UNIT_ROLES}")
        check_id(unit, "unit")
        out.append(f"user {unit}")
        out.extend(_acl_lines(role, node, unit))
        out.append("")
    return "\n".join(out)


def grid_acl(node: str) -> str:
    """ACL file text for a node's grid listener. Peers authenticate with their certificate and
    the broker takes its CN (their node id) as the username, so `%u` patterns confine each peer
    to the topics that end in its own name; what every peer may read is a pattern too."""
    check_id(node, "node")
    out = [f"# ACL of node {node}, grid listener. Derived from topics.yaml: do not edit.", ""]
    for spec in CONTRACT.topics.values():
        pub = "peer" in spec.publishers
        sub = "peer" in spec.subscribers
        access = _ACCESS.get((pub, sub))
        if access is None:
            continue
        topic = spec.pattern.replace("{node}", node).replace("{peer}", "%u")
        if "{" in topic:  # a level only the node's own units may fill: not for peers
            continue
        out.append(f"pattern {access} {topic}")
    out.append("")
    return "\n".join(out)


# --- JSON Schema ------------------------------------------------------------------------------
# Recordings (MCAP) carry one JSON Schema per message type so that viewers such as Foxglove can
# decode them; it is derived from the same declarations the codec checks.

_URI_PATTERN = "^mqtts?://.+:[0-9]{1,5}$"


def _field_schema(f: FieldSpec, type_name: str) -> dict[str, Any]:
    out: dict[str, Any]
    if type_name == "list":
        item = attrs.evolve(f, type=f.items or "str", items=None, max_len=None, min=f.min)
        out = {"type": "array", "items": _field_schema(item, item.type)}
        if f.max_len is not None:
            out["maxItems"] = f.max_len
        return out
    if type_name in CONTRACT.types:
        return json_schema(type_name, top=False)
    if type_name == "enum":
        out = {"type": "string", "enum": list(f.values)}
    elif type_name in ("str", "id", "uri"):
        longest = f.max_len if type_name == "str" and f.max_len is not None else 1024
        out = {"type": "string", "maxLength": longest}
        if type_name == "id":
            out["pattern"] = CONTRACT.id_regex.pattern
        elif type_name == "uri":
            out["pattern"] = _URI_PATTERN
    elif type_name in ("int", "float", "bool"):
        out = {"type": {"int": "integer", "float": "number", "bool": "boolean"}[type_name]}
        if f.min is not None and type_name != "bool":
            out["minimum"] = f.min
        if f.max is not None and type_name != "bool":
            out["maximum"] = f.max
    else:
        raise RedyError(f"field {f.name}: unknown type {type_name!r} in topics.yaml")
    return out


def json_schema(type_name: str, top: bool = True) -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of a message type of topics.yaml; units are named in each
    field's description, e.g. "signed net injection [kW]"."""
    t = CONTRACT.types[type_name]
    props: dict[str, Any] = {}
    for f in t.fields:
        schema = _field_schema(f, f.type)
        unit = f" [{f.unit}]" if f.unit and f.unit != "1" else ""
        if f.description or unit:
            schema["description"] = f"{f.description}{unit}".strip()
        props[f.name] = {"anyOf": [schema, {"type": "null"}]} if f.optional else schema
    out: dict[str, Any] = {
        "title": type_name,
        "description": t.description,
        "type": "object",
        "properties": props,
        "required": [f.name for f in t.fields if not f.optional],
    }
    if top:
        out = {"$schema": "https://json-schema.org/draft/2020-12/schema", **out}
    return out
