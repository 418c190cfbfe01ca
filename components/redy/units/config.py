"""A unit's configuration, as the command line or the launcher gives it."""

from __future__ import annotations

import os
import time
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

from redy.balancing.aggregation import CAPACITY_KW
from redy.balancing.cells import CELL_SIZE
from redy.brokers import load_credentials
from redy.errors import SettingError
from redy.topics import CONTRACT, check_id


def _id(_inst: Any, attribute: attrs.Attribute[str], value: str) -> None:
    check_id(value, attribute.name)


# --- settings ----------------------------------------------------------------------------------
# A unit's settings are the fields of its config class, each declared once with its type,
# default, unit and help; the command-line options (redy.units.commands), the launch-file keys
# (redy.launch.parser) and the JSON a launcher hands a child (redy.launch.supervisor) are derived
# from these declarations.


@attrs.frozen
class Setting:
    """What a config field says about itself beyond its type and default."""

    help: str
    unit: str = ""  # the physical unit of a number: s, kW, ... ("" for none)
    minimum: float | None = None
    min_open: bool = False  # the minimum itself is not allowed
    launch: bool = False  # a launch file may set it (else the launcher or the user does)


def setting(
    default: Any = attrs.NOTHING,
    *,
    help: str,
    unit: str = "",
    minimum: float | None = None,
    min_open: bool = False,
    launch: bool = False,
    factory: Any = None,
    validator: Any = None,
    converter: Any = None,
) -> Any:
    """A config field that is a setting (see Setting); range-checked when `minimum` is set."""
    meta = Setting(help, unit, minimum, min_open, launch)
    checks = [v for v in (validator, _in_range if minimum is not None else None) if v]
    return attrs.field(
        default=attrs.Factory(factory) if factory is not None else default,
        validator=checks or None,
        converter=converter,
        metadata={"setting": meta},
    )


def _in_range(_inst: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    meta: Setting = attribute.metadata["setting"]
    if value is None or meta.minimum is None:
        return
    if value < meta.minimum or (meta.min_open and value == meta.minimum):
        bound = ">" if meta.min_open else ">="
        raise SettingError(f"{attribute.name} must be {bound} {meta.minimum:g}, got {value!r}")


def _one_of(*values: str) -> Any:
    """A validator: the setting is one of `values` (SettingError naming them, in one line)."""

    def check(_inst: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        if value not in values:
            raise SettingError(
                f"{attribute.name} must be one of {', '.join(values)}, got {value!r}"
            )

    return check


def settings_of(cls: type) -> dict[str, tuple[attrs.Attribute[Any], Setting]]:
    """The settings of a config class in declaration order: name -> (field, Setting)."""
    attrs.resolve_types(cls)
    return {
        a.name: (a, a.metadata["setting"]) for a in attrs.fields(cls) if "setting" in a.metadata
    }


def scalar_type(attribute: attrs.Attribute[Any]) -> type:
    """int, float, str, bool or dict: the type of a setting with `| None` taken off."""
    t = attribute.type
    args = [a for a in typing.get_args(t) if a is not type(None)]
    base = args[0] if args else t
    out = typing.get_origin(base) or base
    assert isinstance(out, type), f"setting {attribute.name} has no plain type: {t!r}"
    return out


@attrs.frozen(kw_only=True)
class UnitConfig:
    """One detection or action unit.

    `speed` is simulated seconds per real second; all units of a launch share `start_unix`, so
    their simulated clocks agree: sim time = sim_start_s + (now - start_unix) * speed.
    """

    node: str = setting(help="Node id.", validator=_id)
    unit: str = setting(help="Unit name (its broker username).", validator=_id)
    role: str = attrs.field(validator=attrs.validators.in_(("detection", "action")))
    broker: str = setting(help="The node's broker, mqtt://HOST:PORT.")
    credentials: Path = setting(help="This unit's credentials file.", converter=Path)
    device: str = setting(help="Device model or driver (redy.devices.DEVICES).")
    params: dict[str, Any] = setting(help="Device parameters, KEY=VALUE.", factory=dict)
    period_s: float = setting(
        1.0, help="Sampling or status period.", unit="s", minimum=0.01, launch=True
    )
    speed: float = setting(
        1.0, help="Simulated seconds per real second.", minimum=0.0, min_open=True
    )
    seed: int = setting(0, help="Seed of the device model's randomness.", launch=True)
    start_unix: float = setting(
        help="Wall-clock start shared by a launch (default: now).", unit="s", factory=time.time
    )
    sim_start_s: float = setting(
        0.0, help="Simulated time at start_unix (seconds into the day).", unit="s"
    )
    keepalive_s: int = setting(5, help="MQTT keepalive.", unit="s", minimum=1)

    def password(self) -> str:
        return load_credentials(self.credentials).password(self.unit)

    def sim_time_s(self, now_unix: float) -> float:
        return self.sim_start_s + (now_unix - self.start_unix) * self.speed


def _kind(_inst: Any, attribute: attrs.Attribute[str], value: str) -> None:
    if value not in NODE_KINDS:
        raise SettingError(f"unknown node kind {value!r}; expected one of {list(NODE_KINDS)}")


# The longest plan a Plan message carries (topics.yaml: its lists' max_len): two days.
MAX_PLAN_INTERVALS = 192

NODE_KINDS: tuple[str, ...] = next(
    f.values for f in CONTRACT.types["NodeDescriptor"].fields if f.name == "kind"
)


@attrs.frozen(kw_only=True)
class GovernanceConfig:
    """A node's governance unit: local mode, and distant mode when `grid_broker` is set.

    To add a setting, declare it here with setting(...): the option of `redy governance`, the
    key of a launch file's governance action (launch=True) and the launcher's hand-over follow.
    """

    node: str = setting(help="Node id.", validator=_id, launch=True)
    kind: str = setting("generic", help="What the node is.", validator=_kind, launch=True)
    broker: str = setting(help="The node's broker, mqtt://HOST:PORT.")
    credentials: Path = setting(help="The governance unit's credentials file.", converter=Path)
    grid_broker: str | None = setting(None, help="This node's grid listener (distant mode).")
    introducer: str | None = setting(
        None, help="Grid listeners of the overlay to join, comma-separated.", launch=True
    )
    setpoint_kw: float | None = setting(
        None, help="Target net injection (local rule).", unit="kW", launch=True
    )
    period_s: float = setting(
        1.0, help="State publication period.", unit="s", minimum=0.01, launch=True
    )
    speed: float = setting(
        1.0, help="Simulated seconds per real second.", minimum=0.0, min_open=True
    )
    start_unix: float = setting(
        help="Wall-clock start shared by a launch (default: now).", unit="s", factory=time.time
    )
    sim_start_s: float = setting(
        0.0, help="Simulated time at start_unix (seconds into the day).", unit="s"
    )
    neighbour_period_s: float = setting(
        5.0,
        help="How often the energy state also goes to every neighbour's broker (retained for"
        " operators' tools; it expires after three periods).",
        unit="s",
        minimum=0.01,
        launch=True,
    )
    view_size: int = setting(8, help="Neighbours in the view (c).", minimum=1, launch=True)
    shuffle_length: int = setting(
        4, help="Entries exchanged per shuffle (SL < c).", minimum=1, launch=True
    )
    shuffle: str = setting(
        "cyclon",
        help="The shuffle: 'cyclon' exchanges plain entries; 'signed' hands on descriptors signed"
        " hop by hop with the node keys, each peer contacted only with one of its own"
        " descriptors and once per descriptor, so a member that copies, forges or floods"
        " leaves evidence and is dropped (redy.membership.secure).",
        validator=attrs.validators.in_(("cyclon", "signed")),
        launch=True,
    )
    shuffle_period_s: float = setting(
        2.0, help="Time between two shuffles.", unit="s", minimum=0.05, launch=True
    )
    shuffle_timeout_s: float = setting(
        1.5, help="Wait for a shuffle reply.", unit="s", minimum=0.05, launch=True
    )
    epoch_s: float = setting(
        0.0,
        help="Market interval (distant mode); 0 keeps the local setpoint rule.",
        unit="s",
        minimum=0.0,
        launch=True,
    )
    rounds: int = setting(10, help="Gossip rounds per market epoch.", minimum=1, launch=True)
    market: str = setting(
        "offers",
        help="How the market clears: 'offers' passes every node's signed offer to every node,"
        " held to its signer's certified limits, and clears the exact sum on every node (O(N)"
        " offers per node per epoch); 'pushsum' averages the nodes' curves by gossip (any grid"
        " size, for research: one member steers its price); 'cells' places the members in"
        " cells of about `cell_size` by a hash of their certificates: each member's offer goes"
        " to its cell-mates only, each cell agrees on its offers and co-signs their sum, and the"
        " cells add their sums to the exact price (redy.balancing.cell_node; docs/cell-market.md).",
        validator=attrs.validators.in_(("pushsum", "offers", "cells")),
        launch=True,
    )
    cell_size: int = setting(
        CELL_SIZE,
        help="market: cells: the members a cell holds on average (the cells are the power of two"
        " nearest members / cell_size); a cell outlasts fewer than a third of its members"
        " hostile or silent, and each offer is seen by its cell only (one grid, one value).",
        minimum=1,
        launch=True,
    )
    capacity_kw: float = setting(
        CAPACITY_KW,
        help="The grid's bound on any node's net injection at any price: a peer's gossip that"
        " carries more per unit of weight is dropped, and this node bids no more (one grid, one"
        " value).",
        unit="kW",
        minimum=1.0,
        launch=True,
    )
    plan_intervals: int = setting(
        0,
        help="Intervals of the rolling plan (distant mode; 96 is a day of 15-minute intervals,"
        f" at most {MAX_PLAN_INTERVALS}): every interval each node floods its signed horizon"
        " offer, held to its signer's certified limits, and solves the community's plan from the"
        " same offers (redy.planning); 0: no plan.",
        minimum=0,
        launch=True,
    )
    plan_interval_min: float = setting(
        15.0,
        help="A planning interval in simulated minutes (it lasts plan_interval_min x 60 / speed"
        " real seconds).",
        unit="min",
        minimum=0.0,
        min_open=True,
        launch=True,
    )
    plan_import_kw: float = setting(
        10000.0,
        help="What the community may draw from its supplier in any interval of the plan (one"
        " grid, one value).",
        unit="kW",
        minimum=0.0,
        launch=True,
    )
    plan_export_kw: float = setting(
        10000.0,
        help="What the community may feed to its supplier in any interval of the plan (one"
        " grid, one value).",
        unit="kW",
        minimum=0.0,
        launch=True,
    )
    plan_dispatch: str = setting(
        "binds",
        help="What the plan does in the current interval (plan_intervals > 0): 'binds' sets the"
        " node's stores and deferrable loads to their planned setpoints and the market clears"
        " the rest around them (redy.planning.binding); 'advises' publishes the plan and lets"
        " the market dispatch every unit as without plans.",
        validator=_one_of("binds", "advises"),
        launch=True,
    )
    seed: int = setting(
        help="Seed of the shuffle's randomness (default: random).",
        factory=lambda: int.from_bytes(os.urandom(4), "big"),
    )

    def __attrs_post_init__(self) -> None:
        if self.plan_intervals > MAX_PLAN_INTERVALS:
            raise SettingError(
                f"plan_intervals must be at most {MAX_PLAN_INTERVALS}, got {self.plan_intervals}"
            )
        if self.shuffle_length >= self.view_size:
            raise SettingError(
                f"shuffle_length ({self.shuffle_length}) must be smaller than view_size"
                f" ({self.view_size})"
            )

    def sim_time_s(self, now_unix: float) -> float:
        return self.sim_start_s + (now_unix - self.start_unix) * self.speed

    @property
    def plan_interval_s(self) -> float:
        """A planning interval in real seconds."""
        return self.plan_interval_min * 60.0 / self.speed


def check_settings(cls: type, settings: Mapping[str, Any], **identity: Any) -> None:
    """SettingError if a launch file's `settings` could not make a `cls` config (the broker and
    the credentials, which the launcher supplies, stand in)."""
    cls(broker="mqtt://127.0.0.1:1", credentials=Path("-"), **identity, **settings)


def next_bd_seq(credentials: Path, unit: str) -> int:
    """The next birth/death session number of a unit (Sparkplug B bdSeq), kept beside the
    node's credentials so a restarted process starts a newer session than the one before."""
    path = credentials.parent / "bdseq" / unit
    try:
        last = int(path.read_text())
    except (OSError, ValueError):
        last = -1
    current = (last + 1) % 2**31
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(str(current))
    except OSError:
        current = int(time.time())  # read-only state dir: wall-clock seconds still increase
    return current
