"""Launch files: ROS 2-style YAML parsed into a launch description (data, nothing started).

    launch:
      - arg: {name: node, default: house-1, description: ...}
      - let: {name: port, value: "18841"}
      - include: {file: "$(dirname)/eco_house.yaml", arg: [{name: node, value: house-2}]}
      - group: [ ...actions, with their own scope for let... ]
      - clock: {speed: 720, start_s: 21600}
      - broker: {node: $(var node), port: $(var port), grid_port: ..., backend: process,
                 site_broker: mqtt://ha.local:1883, site_user: ..., site_password: $(env P)}
      - governance: {node: ..., kind: eco_house, introducer: gas-1, epoch_s: 6, rounds: 10}
      - detection: {node: ..., name: pv-meter, device: pv, params: {kwp: 6}, respawn: true}
      - action: {node: ..., name: heater, device: water_heater, period_s: 1}

Substitutions: `$(var NAME)`, `$(env NAME)`, `$(dirname)` (the folder of the current file).
The whole file, includes and all, is checked before anything starts; every problem is one
LaunchError naming the file, the line, and what was expected.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import attrs
import yaml

from redy.errors import LaunchError, SettingError
from redy.pki import RESERVED_NAMES, Grant
from redy.topics import CONTRACT
from redy.units.config import (
    GovernanceConfig,
    UnitConfig,
    check_settings,
    scalar_type,
    settings_of,
)
from redy.yaml_lines import LineLoader

_SUBST = re.compile(r"\$\((var|env|dirname)(?:\s+([A-Za-z0-9_.-]+))?\)")


# --- the description --------------------------------------------------------------------------


@attrs.frozen
class Clock:
    """Simulated time: `speed` simulated seconds per real second from `start_s` into the day."""

    speed: float = 1.0
    start_s: float = 0.0


@attrs.frozen
class BrokerSpec:
    node: str
    port: int
    grid_port: int
    unit_port: int
    backend: str = "process"
    bind: str = "127.0.0.1"
    grid_bind: str | None = None
    advertise: str | None = None
    site_broker: str | None = None  # one-way bridge of the node's topics (Home Assistant's)
    site_user: str | None = None
    site_password: str | None = None
    where: str = ""

    @property
    def grid_host(self) -> str:
        return self.grid_bind or self.bind

    @property
    def grid_uri(self) -> str:
        """The grid listener as peers dial it: the advertised address."""
        return f"mqtts://{self.advertise or self.grid_host}:{self.grid_port}"

    @property
    def local_uri(self) -> str:
        """The local listener as the node's own units and operators dial it."""
        host = "127.0.0.1" if self.bind in ("0.0.0.0", "::") else self.bind
        return f"mqtt://{host}:{self.port}"


@attrs.frozen
class GovernanceSpec:
    """A governance action: the settings the file gives (GovernanceConfig's names; the config
    supplies the rest) and how the launcher runs the process. After parsing, `introducer` in
    the settings holds grid URIs (the file may name nodes of the launch)."""

    node: str
    settings: Mapping[str, Any] = attrs.field(factory=dict)
    distant: bool = True
    respawn: bool = True  # a node without its governance unit is not in the market
    respawn_delay_s: float = 1.0
    where: str = ""

    def value(self, name: str) -> Any:
        """A setting as the process will have it: the file's value, else GovernanceConfig's
        default (None for one drawn at start, like the seed)."""
        if name in self.settings:
            return self.settings[name]
        default = attrs.fields_dict(GovernanceConfig)[name].default
        return None if hasattr(default, "factory") else default


@attrs.frozen
class UnitSpec:
    """A detection or action: what it is, the settings the file gives (UnitConfig's names,
    which supplies the rest) and how the launcher runs the process."""

    node: str
    name: str
    role: str
    device: str
    params: Mapping[str, Any] = attrs.field(factory=dict)
    settings: Mapping[str, Any] = attrs.field(factory=dict)
    respawn: bool = False
    respawn_delay_s: float = 1.0
    where: str = ""


@attrs.frozen
class NodeSpec:
    broker: BrokerSpec
    governance: GovernanceSpec | None
    units: tuple[UnitSpec, ...]

    @property
    def node(self) -> str:
        return self.broker.node

    def grant(self) -> Grant:
        """The connection limits the grid CA states for this node, from its units: it may
        export what its producers and storage can give and import what its loads and storage
        can take, each at the largest reading its governance accepts from the unit."""
        from redy.devices import rating, reading_limit_kw

        import_kw = export_kw = 0.0
        for u in self.units:
            quantity, rated_kw = rating(u.device, dict(u.params))
            kw = reading_limit_kw(rated_kw)
            if quantity != "consumption":
                export_kw += kw
            if quantity != "production":
                import_kw += kw
        return Grant("node", round(import_kw, 3), round(export_kw, 3))


@attrs.frozen
class LaunchDescription:
    """Everything a launch will run, validated: nodes in file order and the clock."""

    file: Path
    nodes: tuple[NodeSpec, ...]
    clock: Clock
    files: tuple[Path, ...] = ()  # every file read: `file` and its includes, in reading order

    def only(self, node: str) -> LaunchDescription:
        """The same launch reduced to one node (a gateway runs its own node of a grid file)."""
        for n in self.nodes:
            if n.node == node:
                return attrs.evolve(self, nodes=(n,))
        raise LaunchError(
            f"{self.file}: no node {node!r}; the file has {[n.node for n in self.nodes]}"
        )


# --- parsing ------------------------------------------------------------------------------------


def _launch_settings(cls: type) -> dict[str, tuple[type, bool]]:
    """The settings of a unit config that a launch file may give: key -> (type, required)."""
    return {
        name: (scalar_type(field), field.default is attrs.NOTHING)
        for name, (field, meta) in settings_of(cls).items()
        if meta.launch
    }


_FIELDS: dict[str, dict[str, tuple[type, bool]]] = {
    # action -> key -> (type, required)
    "arg": {"name": (str, True), "default": (str, False), "description": (str, False)},
    "let": {"name": (str, True), "value": (str, True)},
    "include": {"file": (str, True), "arg": (list, False)},
    "clock": {"speed": (float, False), "start_s": (float, False)},
    "broker": {
        "node": (str, True),
        "port": (int, True),
        "grid_port": (int, False),
        "unit_port": (int, False),
        "backend": (str, False),
        "bind": (str, False),
        "grid_bind": (str, False),
        "advertise": (str, False),
        "site_broker": (str, False),
        "site_user": (str, False),
        "site_password": (str, False),
    },
    # The settings GovernanceConfig marks launch=True, then what only the launcher uses.
    "governance": {
        **_launch_settings(GovernanceConfig),
        "distant": (bool, False),
        "respawn": (bool, False),
        "respawn_delay_s": (float, False),
    },
    "detection": {
        "node": (str, True),
        "name": (str, True),
        "device": (str, True),
        "params": (dict, False),
        **_launch_settings(UnitConfig),
        "respawn": (bool, False),
        "respawn_delay_s": (float, False),
    },
}
_FIELDS["action"] = _FIELDS["detection"]
_UNIT_SETTINGS = tuple(_launch_settings(UnitConfig))
_ACTIONS = (*_FIELDS, "group")


class _Scope:
    def __init__(self, file: Path, values: dict[str, str], given: Mapping[str, str]) -> None:
        self.file = file
        self.values = values
        self.given = given  # args from the command line or the including file

    def child(self) -> _Scope:
        return _Scope(self.file, dict(self.values), self.given)


class _Builder:
    def __init__(self) -> None:
        self.brokers: dict[str, BrokerSpec] = {}
        self.governance: dict[str, GovernanceSpec] = {}
        self.units: dict[str, list[UnitSpec]] = {}
        self.clock = Clock()
        self.include_depth = 0
        self.files: list[Path] = []


def _where(scope: _Scope, line: int) -> str:
    return f"{scope.file}:{line}"


def _subst(value: Any, scope: _Scope, line: int) -> Any:
    if isinstance(value, str):

        def repl(m: re.Match[str]) -> str:
            kind, name = m.group(1), m.group(2)
            if kind == "dirname":
                return str(scope.file.parent)
            if name is None:
                raise LaunchError(
                    f"{_where(scope, line)}: $({kind}) needs a name, e.g. $({kind} x)"
                )
            if kind == "env":
                if name not in os.environ:
                    raise LaunchError(
                        f"{_where(scope, line)}: environment variable {name} is not set"
                    )
                return os.environ[name]
            if name not in scope.values:
                raise LaunchError(
                    f"{_where(scope, line)}: unknown variable {name!r} in $(var {name}); "
                    f"declared: {sorted(scope.values) or 'none'}"
                )
            return scope.values[name]

        out = _SUBST.sub(repl, value)
        if "$(" in out:
            raise LaunchError(
                f"{_where(scope, line)}: bad substitution in {value!r}; "
                "expected $(var NAME), $(env NAME) or $(dirname)"
            )
        return out
    if isinstance(value, list):
        return [_subst(v, scope, line) for v in value]
    if isinstance(value, dict):
        return {
            k: _subst(v, scope, getattr(value, "key_lines", {}).get(k, line))
            for k, v in value.items()
        }
    return value


def _coerce(action: str, key: str, value: Any, want: type, where: str) -> Any:
    if want is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
    elif want is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
    elif want is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lstrip("-").isdigit():
            return int(value)
    elif want is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif isinstance(value, want):
        return value
    raise LaunchError(f"{where}: {action}.{key} must be {want.__name__}, got {value!r}")


def _fields(action: str, body: Any, scope: _Scope, line: int) -> dict[str, Any]:
    where = _where(scope, line)
    if not isinstance(body, dict):
        raise LaunchError(f"{where}: '{action}' expects a mapping of {sorted(_FIELDS[action])}")
    spec = _FIELDS[action]
    out = {}
    for key, value in body.items():
        key_line = getattr(body, "key_lines", {}).get(key, line)
        if key not in spec:
            raise LaunchError(
                f"{_where(scope, key_line)}: unknown key {key!r} in '{action}'; "
                f"expected {sorted(spec)}"
            )
        want, _ = spec[key]
        value = value if key in ("arg",) else _subst(value, scope, key_line)
        out[key] = _coerce(action, key, value, want, _where(scope, key_line))
    for key, (_, required) in spec.items():
        if required and key not in out:
            raise LaunchError(f"{where}: '{action}' is missing {key!r}")
    return out


def _run_actions(actions: Any, scope: _Scope, b: _Builder, line: int) -> None:
    if not isinstance(actions, list):
        raise LaunchError(f"{_where(scope, line)}: expected a list of actions {list(_ACTIONS)}")
    for item in actions:
        item_line = getattr(item, "line", line)
        if not isinstance(item, dict) or len(item) != 1:
            raise LaunchError(
                f"{_where(scope, item_line)}: each action is a one-key mapping, one of "
                f"{list(_ACTIONS)}"
            )
        ((action, body),) = item.items()
        if action not in _ACTIONS:
            raise LaunchError(
                f"{_where(scope, item_line)}: unknown action {action!r}; expected one of "
                f"{list(_ACTIONS)}"
            )
        if action == "group":  # a list of actions in a scope of its own, not fields
            _run_actions(body, scope.child(), b, item_line)
            continue
        _HANDLERS[action](_fields(action, body, scope, item_line), scope, b, item_line)


# action -> what it does with its checked fields (_FIELDS[action]); one function per action.
_Handler = Callable[[dict[str, Any], _Scope, _Builder, int], None]
_HANDLERS: dict[str, _Handler] = {}


def _handles(*actions: str) -> Callable[[_Handler], _Handler]:
    def register(handler: _Handler) -> _Handler:
        for action in actions:
            _HANDLERS[action] = handler
        return handler

    return register


@_handles("arg")
def _arg(f: dict[str, Any], scope: _Scope, b: _Builder, line: int) -> None:
    if f["name"] in scope.given:
        scope.values[f["name"]] = scope.given[f["name"]]
    elif "default" in f:
        scope.values[f["name"]] = f["default"]
    else:
        raise LaunchError(
            f"{_where(scope, line)}: argument {f['name']!r} has no default and was not given "
            f"(pass {f['name']}:=VALUE)"
        )


@_handles("let")
def _let(f: dict[str, Any], scope: _Scope, b: _Builder, line: int) -> None:
    scope.values[f["name"]] = f["value"]


@_handles("clock")
def _clock(f: dict[str, Any], scope: _Scope, b: _Builder, line: int) -> None:
    b.clock = Clock(speed=f.get("speed", b.clock.speed), start_s=f.get("start_s", 0.0))
    if b.clock.speed <= 0:
        raise LaunchError(f"{_where(scope, line)}: clock.speed must be > 0")


@_handles("include")
def _include(f: dict[str, Any], scope: _Scope, b: _Builder, line: int) -> None:
    where = _where(scope, line)
    path = Path(f["file"])
    if not path.is_absolute():
        path = scope.file.parent / path
    given: dict[str, str] = {}
    for a in f.get("arg", []):
        if not isinstance(a, dict) or set(a) != {"name", "value"}:
            raise LaunchError(f"{where}: include.arg items are {{name: ..., value: ...}}")
        given[str(a["name"])] = str(_subst(a["value"], scope, line))
    if b.include_depth > 16:
        raise LaunchError(f"{where}: includes nested deeper than 16 (a cycle?)")
    b.include_depth += 1
    _parse_file(path, given, b, where)
    b.include_depth -= 1


@_handles("broker")
def _add_broker(f: dict[str, Any], scope: _Scope, b: _Builder, line: int) -> None:
    where = _where(scope, line)
    node = _node_id(f["node"], where)
    if node in b.brokers:
        raise LaunchError(f"{where}: node {node!r} already has a broker ({b.brokers[node].where})")
    backend = f.get("backend", "process")
    if backend not in ("process", "container"):
        raise LaunchError(f"{where}: broker.backend must be 'process' or 'container'")
    port = f["port"]
    grid = f.get("grid_port", port + 10000)
    unit = f.get("unit_port", port + 5000)
    for p in (port, grid, unit):
        if not 0 < p < 65536:
            raise LaunchError(
                f"{where}: port {p} is out of range 1-65535 (the defaults are grid_port ="
                " port + 10000, unit_port = port + 5000: give them)"
            )
    grid_host = f.get("grid_bind") or f.get("bind", "127.0.0.1")
    if grid_host in ("0.0.0.0", "::") and not f.get("advertise"):
        raise LaunchError(
            f"{where}: the grid listener binds {grid_host}, which peers cannot dial; add"
            " advertise: HOST (the address other nodes reach this node at)"
        )
    # empty values (an unset $(env ...)) mean: no bridge, anonymous
    site = f.get("site_broker") or None
    if site is not None and "://" not in site:
        raise LaunchError(f"{where}: site_broker must be a broker URI like mqtt://HOST:1883")
    b.brokers[node] = BrokerSpec(
        node=node,
        port=port,
        grid_port=grid,
        unit_port=unit,
        backend=backend,
        bind=f.get("bind", "127.0.0.1"),
        grid_bind=f.get("grid_bind") or None,
        advertise=f.get("advertise") or None,
        site_broker=site,
        site_user=f.get("site_user") or None,
        site_password=f.get("site_password") or None,
        where=where,
    )
    b.units.setdefault(node, [])


@_handles("governance")
def _add_governance(f: dict[str, Any], scope: _Scope, b: _Builder, line: int) -> None:
    where = _where(scope, line)
    node = _node_id(f["node"], where)
    if node in b.governance:
        raise LaunchError(f"{where}: node {node!r} already has a governance unit")
    launcher = {"distant", "respawn", "respawn_delay_s"}
    settings = {k: v for k, v in f.items() if k not in launcher}
    if not settings.get("introducer"):
        settings.pop("introducer", None)  # an empty argument means: this node starts the overlay
    try:
        check_settings(GovernanceConfig, settings)
    except SettingError as exc:
        raise LaunchError(f"{where}: governance: {exc}") from None
    b.governance[node] = GovernanceSpec(
        node=node, settings=settings, **{k: f[k] for k in launcher if k in f}, where=where
    )


@_handles("detection")
def _add_detection(f: dict[str, Any], scope: _Scope, b: _Builder, line: int) -> None:
    _add_unit("detection", f, b, _where(scope, line))


@_handles("action")
def _add_action(f: dict[str, Any], scope: _Scope, b: _Builder, line: int) -> None:
    _add_unit("action", f, b, _where(scope, line))


def _add_unit(role: str, f: dict[str, Any], b: _Builder, where: str) -> None:
    from redy.devices import DEVICES, check_params
    from redy.errors import DeviceError

    node = _node_id(f["node"], where)
    name = _node_id(f["name"], where, what="unit name")
    if name in ("governance", "operator", "grid"):
        raise LaunchError(f"{where}: unit name {name!r} is reserved for broker accounts")
    if f["device"] not in DEVICES:
        raise LaunchError(
            f"{where}: unknown device model {f['device']!r}; expected one of {list(DEVICES)}"
        )
    params = {k: _scalar(v) for k, v in (f.get("params") or {}).items()}
    try:
        check_params(f["device"], params)
    except DeviceError as exc:
        raise LaunchError(f"{where}: {exc}") from None
    units = b.units.setdefault(node, [])
    # Without a seed, each unit of a node its own: its place in the node.
    settings = {"seed": len(units), **{k: f[k] for k in _UNIT_SETTINGS if k in f}}
    try:
        check_settings(UnitConfig, settings, node=node, unit=name, role=role, device=f["device"])
    except SettingError as exc:
        raise LaunchError(f"{where}: {role} {name}: {exc}") from None
    for u in units:
        if u.name == name:
            raise LaunchError(f"{where}: duplicate unit name {name!r} in node {node!r} ({u.where})")
    units.append(
        UnitSpec(
            node=node,
            name=name,
            role=role,
            device=f["device"],
            params=params,
            settings=settings,
            respawn=f.get("respawn", False),
            respawn_delay_s=f.get("respawn_delay_s", 1.0),
            where=where,
        )
    )


def _check_drivers(b: _Builder, ports: dict[int, str]) -> None:
    """Units on real devices run in wall-clock time, and the ports their drivers listen on
    must be free of brokers and of each other."""
    from redy.devices import model_class

    for units in b.units.values():
        for u in units:
            cls = model_class(u.device)
            if not getattr(cls, "wall_clock", False):
                continue
            if b.clock.speed != 1.0:
                raise LaunchError(
                    f"{u.where}: {u.device!r} drives a real device in wall-clock time; "
                    f"the launch clock must have speed 1, not {b.clock.speed:g}"
                )
            listens_on = getattr(cls, "listens_on", None)
            if listens_on and listens_on in u.params:
                port = u.params[listens_on]
                if port in ports:
                    raise LaunchError(f"{u.where}: port {port} is used twice (also {ports[port]})")
                ports[port] = u.where


def _scalar(value: Any) -> Any:
    """A substituted parameter back to the number or boolean it spells, else unchanged."""
    if not isinstance(value, str):
        return value
    if value.lower() in ("true", "false"):
        return value.lower() == "true"
    for cast in (int, float):
        try:
            return cast(value)
        except ValueError:
            pass
    return value


def _node_id(value: str, where: str, what: str = "node id") -> str:
    if not CONTRACT.id_regex.fullmatch(value):
        raise LaunchError(
            f"{where}: invalid {what} {value!r}; expected lower-case letters, digits, '-', '_'"
        )
    if what == "node id" and value in RESERVED_NAMES:
        raise LaunchError(
            f"{where}: node id {value!r} is reserved ({', '.join(RESERVED_NAMES)}); rename the node"
        )
    return value


def _parse_file(path: Path, given: Mapping[str, str], b: _Builder, where: str = "") -> None:
    try:
        text = path.read_text()
        if path.resolve() not in b.files:
            b.files.append(path.resolve())
    except OSError as exc:
        raise LaunchError(
            f"{where + ': ' if where else ''}cannot read launch file {path}: {exc.strerror}"
        ) from None
    try:
        doc = yaml.load(text, Loader=LineLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        line = mark.line + 1 if mark else 0
        raise LaunchError(f"{path}:{line}: bad YAML: {exc.problem}") from None
    except LaunchError as exc:
        raise LaunchError(f"{path}: {exc}") from None
    if not isinstance(doc, dict) or set(doc) != {"launch"}:
        raise LaunchError(f"{path}:1: expected a top-level 'launch:' list")
    scope = _Scope(path, {}, given)
    _run_actions(doc["launch"], scope, b, getattr(doc, "line", 1))


def parse(path: str | Path, args: Mapping[str, str] | None = None) -> LaunchDescription:
    """Parse and validate a launch file (with its includes) into a LaunchDescription."""
    file = Path(path).resolve()
    b = _Builder()
    _parse_file(file, dict(args or {}), b)
    nodes = []
    ports: dict[int, str] = {}
    # Nodes advertised at different addresses run on different machines, where the same ports
    # are free again; nodes of one machine (one address, loopback by default) need their own.
    taken: dict[tuple[str, int], str] = {}
    for node, broker in b.brokers.items():
        machine = broker.advertise or broker.grid_host
        for p in (broker.port, broker.grid_port, broker.unit_port):
            if (machine, p) in taken:
                raise LaunchError(
                    f"{broker.where}: port {p} is used twice (also {taken[machine, p]})"
                )
            taken[machine, p] = ports[p] = broker.where
        gov = b.governance.get(node)
        if gov is not None and gov.settings.get("introducer"):
            uris = []
            for name in gov.settings["introducer"].replace(" ", "").split(","):
                if "://" in name or not name:
                    uris.append(name)
                    continue
                intro = b.brokers.get(name)
                if intro is None:
                    raise LaunchError(
                        f"{gov.where}: introducer {name!r} is neither a node of this launch "
                        "nor a broker URI (mqtt://HOST:PORT)"
                    )
                uris.append(intro.grid_uri)
            introducer = ",".join(u for u in uris if u)
            gov = attrs.evolve(gov, settings={**gov.settings, "introducer": introducer})
        nodes.append(NodeSpec(broker=broker, governance=gov, units=tuple(b.units[node])))
    for node, gov in b.governance.items():
        if node not in b.brokers:
            raise LaunchError(f"{gov.where}: node {node!r} has a governance unit but no broker")
    for node, units in b.units.items():
        if node not in b.brokers and units:
            raise LaunchError(f"{units[0].where}: node {node!r} has units but no broker")
    if not nodes:
        raise LaunchError(f"{file}: the launch file starts no broker (nothing to run)")
    _check_drivers(b, ports)
    return LaunchDescription(file=file, nodes=tuple(nodes), clock=b.clock, files=tuple(b.files))


def check_ports_free(desc: LaunchDescription) -> None:
    """LaunchError if a port the launch needs is already bound on this machine."""
    from redy.brokers import port_is_free

    for n in desc.nodes:
        for p in (n.broker.port, n.broker.grid_port, n.broker.unit_port):
            if not port_is_free(
                p, n.broker.grid_host if p == n.broker.grid_port else n.broker.bind
            ):
                raise LaunchError(f"{n.broker.where}: port {p} is in use (node {n.node})")
