"""A unit's configuration, as the command line or the launcher gives it."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import attrs

from redy.brokers import load_credentials
from redy.topics import check_id


def _id(_inst: Any, attribute: attrs.Attribute[str], value: str) -> None:
    check_id(value, attribute.name)


@attrs.frozen(kw_only=True)
class UnitConfig:
    """One detection or action unit.

    `speed` is simulated seconds per real second; all units of a launch share `start_unix`, so
    their simulated clocks agree: sim time = sim_start_s + (now - start_unix) * speed.
    """

    node: str = attrs.field(validator=_id)
    unit: str = attrs.field(validator=_id)
    role: str = attrs.field(validator=attrs.validators.in_(("detection", "action")))
    broker: str
    credentials: Path = attrs.field(converter=Path)
    device: str
    params: dict[str, Any] = attrs.field(factory=dict)
    period_s: float = 1.0
    speed: float = 1.0
    seed: int = 0
    start_unix: float = attrs.field(factory=time.time)
    sim_start_s: float = 0.0
    keepalive_s: int = 5

    def password(self) -> str:
        return load_credentials(self.credentials).password(self.unit)

    def sim_time_s(self, now_unix: float) -> float:
        return self.sim_start_s + (now_unix - self.start_unix) * self.speed


@attrs.frozen(kw_only=True)
class GovernanceConfig:
    """A node's governance unit: local mode, and distant mode when `grid_broker` is set."""

    node: str = attrs.field(validator=_id)
    kind: str = "generic"
    broker: str
    credentials: Path = attrs.field(converter=Path)
    grid_broker: str | None = None
    introducer: str | None = None
    setpoint_kw: float | None = None
    period_s: float = 1.0
    speed: float = 1.0
    start_unix: float = attrs.field(factory=time.time)
    sim_start_s: float = 0.0
    view_size: int = 8
    shuffle_length: int = 4
    shuffle_period_s: float = 2.0
    shuffle_timeout_s: float = 1.5
    epoch_s: float = 0.0  # market interval; 0: no balancing, follow the setpoint rule
    rounds: int = 10
    seed: int = attrs.field(factory=lambda: int.from_bytes(os.urandom(4), "big"))

    def sim_time_s(self, now_unix: float) -> float:
        return self.sim_start_s + (now_unix - self.start_unix) * self.speed


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
