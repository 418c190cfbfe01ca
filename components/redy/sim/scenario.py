"""Scenario files for `redy sim balance`: shares of built-in node kinds, explicit nodes, or both.

```yaml
mix: {eco_house: 0.6, gas_plant: 0.1}      # optional: kinds drawn for the other nodes
nodes:                                     # optional: these nodes, with these bids
  - id: gen-1
    bids: [{type: dispatchable, p_min_kw: 5000, p_max_kw: 50000, marginal_cost_eur_mwh: [42.0, 61.5]}]
  - id: town
    bids: [{type: fixed, p_kw: -35000}]
```

Bid types and their keys (powers in kW, + = injection; prices in EUR/MWh):
- `dispatchable`: p_max_kw, marginal_cost_eur_mwh; p_min_kw (0), on (true)
- `fixed`: p_kw
- `flexible_load`: power_kw, wtp_eur_mwh (the whole load runs at or under it)
- `storage`: charge_kw, discharge_kw, and charge_below_eur_mwh + discharge_above_eur_mwh, or
  marginal_cost_eur_mwh alone (charges under at_min, discharges over at_max)
- `renewable`: available_kw; marginal_cost_eur_mwh (0)

A marginal cost (or a willingness to pay) is a number, or `[at_min, at_max]`: a linear ramp
over the bid's range. Unknown keys and bid types are refused with the file and line.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

import attrs
import yaml

from redy.balancing.curves import Bid, Dispatchable, Fixed, FlexibleLoad, Renewable, Storage
from redy.errors import RedyError, SimulationError
from redy.yaml_lines import LineLoader


@attrs.frozen
class ScenarioNode:
    id: str
    bids: tuple[Bid, ...]


@attrs.frozen
class Scenario:
    mix: dict[str, float] | None
    nodes: tuple[ScenarioNode, ...] = ()


def _ramp(value: Any) -> tuple[float, float | None]:
    """A price as a number or [at_min, at_max]: (at_min, at_max or None)."""
    if isinstance(value, list):
        if len(value) != 2:
            raise ValueError("expected a number or [at_min, at_max]")
        lo, hi = float(value[0]), float(value[1])
        return lo, hi
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError("expected a number or [at_min, at_max]")
    return float(value), None


def _dispatchable(f: dict[str, Any]) -> Bid:
    lo, hi = _ramp(f["marginal_cost_eur_mwh"])
    return Dispatchable(
        float(f.get("p_min_kw", 0.0)),
        float(f["p_max_kw"]),
        lo,
        bool(f.get("on", True)),
        cost_max_eur_mwh=hi,
    )


def _flexible(f: dict[str, Any]) -> Bid:
    lo, hi = _ramp(f["wtp_eur_mwh"])
    return FlexibleLoad(float(f["power_kw"]), lo, hi)


def _storage(f: dict[str, Any]) -> Bid:
    charge, discharge = float(f["charge_kw"]), float(f["discharge_kw"])
    prices = ("charge_below_eur_mwh", "discharge_above_eur_mwh")
    if "marginal_cost_eur_mwh" in f and not any(k in f for k in prices):
        # A rising cost over the whole range: charges under at_min, discharges over at_max.
        lo, hi = _ramp(f["marginal_cost_eur_mwh"])
        return Dispatchable(-charge, discharge, lo, cost_max_eur_mwh=hi)
    if not all(k in f for k in prices) or "marginal_cost_eur_mwh" in f:
        raise ValueError(f"expected both {list(prices)}, or marginal_cost_eur_mwh alone")
    lo, hi = float(f[prices[0]]), float(f[prices[1]])
    if lo > hi:
        raise ValueError(f"{prices[0]} {lo} is above {prices[1]} {hi}")
    return Storage(charge, discharge, lo, hi)


# Bid type: (required keys, optional keys, builder).
_BIDS: dict[str, tuple[tuple[str, ...], tuple[str, ...], Callable[[dict[str, Any]], Bid]]] = {
    "dispatchable": (("p_max_kw", "marginal_cost_eur_mwh"), ("p_min_kw", "on"), _dispatchable),
    "fixed": (("p_kw",), (), lambda f: Fixed(float(f["p_kw"]))),
    "flexible_load": (("power_kw", "wtp_eur_mwh"), (), _flexible),
    "storage": (
        ("charge_kw", "discharge_kw"),
        ("charge_below_eur_mwh", "discharge_above_eur_mwh", "marginal_cost_eur_mwh"),
        _storage,
    ),
    "renewable": (
        ("available_kw",),
        ("marginal_cost_eur_mwh",),
        lambda f: Renewable(float(f["available_kw"]), float(f.get("marginal_cost_eur_mwh", 0.0))),
    ),
}


def _line(value: Any, key: str | None = None, default: int = 1) -> int:
    if key is not None:
        return int(getattr(value, "key_lines", {}).get(key, getattr(value, "line", default)))
    return int(getattr(value, "line", default))


def _keys(where: str, value: Any, allowed: tuple[str, ...], what: str) -> None:
    if not isinstance(value, dict):
        raise SimulationError(f"{where}: expected {what} as a mapping")
    for key in value:
        if key not in allowed:
            raise SimulationError(
                f"{where.rsplit(':', 1)[0]}:{_line(value, key)}: unknown key {key!r} in {what};"
                f" expected {list(allowed)}"
            )


def _bid(file: str, raw: Any, line: int) -> Bid:
    where = f"{file}:{_line(raw, default=line)}"
    if not isinstance(raw, dict) or "type" not in raw:
        raise SimulationError(f"{where}: expected a bid {{type: one of {list(_BIDS)}, ...}}")
    kind = raw["type"]
    if kind not in _BIDS:
        raise SimulationError(
            f"{file}:{_line(raw, 'type')}: unknown bid type {kind!r}; expected one of {list(_BIDS)}"
        )
    required, optional, build = _BIDS[kind]
    _keys(where, raw, ("type", *required, *optional), f"a {kind} bid")
    missing = [k for k in required if k not in raw]
    if missing:
        raise SimulationError(f"{where}: a {kind} bid needs {missing}")
    try:
        return build(raw)
    except (TypeError, ValueError, RedyError) as exc:
        raise SimulationError(
            f"{where}: bad {kind} bid ({exc}); prices and powers are numbers, a marginal cost "
            "is a number or [at_min, at_max] with at_min <= at_max"
        ) from None


def load_scenario(path: str, kinds: Collection[str] = ()) -> Scenario:
    """Read and check a scenario file (`kinds`: the node kinds a mix may name, if given);
    SimulationError naming the file and line otherwise."""
    try:
        data = yaml.load(Path(path).read_text(), Loader=LineLoader)
    except (OSError, yaml.YAMLError, RedyError) as exc:
        problem = getattr(exc, "problem", None) or str(exc)
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else path
        raise SimulationError(
            f"{where}: expected YAML with 'mix: {{kind: share}}' and/or 'nodes: [...]' ({problem})"
        ) from None
    _keys(f"{path}:1", data, ("mix", "nodes"), "a scenario")
    if "mix" not in data and "nodes" not in data:
        raise SimulationError(f"{path}:1: expected 'mix:' and/or 'nodes:'")
    mix = None
    if "mix" in data:
        where = f"{path}:{_line(data, 'mix')}"
        try:
            mix = {str(k): float(v) for k, v in data["mix"].items()}
        except (AttributeError, TypeError, ValueError) as exc:
            raise SimulationError(
                f"{where}: expected 'mix: {{kind: share, ...}}' ({exc})"
            ) from None
        if not mix or sum(mix.values()) <= 0 or min(mix.values()) < 0:
            raise SimulationError(f"{where}: the shares must be >= 0 and add up to more than 0")
        unknown = sorted(set(mix) - set(kinds)) if kinds else []
        if unknown:
            line = _line(data["mix"], unknown[0], _line(data, "mix"))
            raise SimulationError(
                f"{path}:{line}: unknown node kind {unknown[0]!r} in 'mix:'; expected {sorted(kinds)}"
            )
    nodes = []
    if "nodes" in data:
        raw_nodes = data["nodes"]
        line = _line(data, "nodes")
        if not isinstance(raw_nodes, list):
            raise SimulationError(f"{path}:{line}: expected 'nodes:' as a list of {{id, bids}}")
        seen: set[str] = set()
        for raw in raw_nodes:
            where = f"{path}:{_line(raw, default=line)}"
            _keys(where, raw, ("id", "bids"), "a node")
            if not isinstance(raw.get("id"), str) or not isinstance(raw.get("bids"), list):
                raise SimulationError(f"{where}: a node needs 'id: <name>' and 'bids: [...]'")
            if raw["id"] in seen:
                raise SimulationError(f"{where}: node id {raw['id']!r} appears twice")
            seen.add(raw["id"])
            bids = tuple(_bid(path, b, _line(raw, "bids")) for b in raw["bids"])
            nodes.append(ScenarioNode(raw["id"], bids))
    return Scenario(mix, tuple(nodes))
