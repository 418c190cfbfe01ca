"""What the current interval's plan commands, sans-IO: each planned unit's setpoint (kW).

A node's plan binds its stores (a battery: net discharge, + injection) and its deferrable loads
(an EV: its draw, - injection) in the interval it is in. The rest of its flexibility (producers,
loads it may shed, stores and loads the plan does not hold) stays with the fast layer, the 1 Hz
offer market, which clears around the planned units: they enter the node's offer as fixed
injection at their setpoints and the market dispatches them there (`redy.units.market`).

Why the planned units stay at their setpoints rather than letting the market move them within
what remains of their range: the plan placed a store's energy and an EV's charge across the
horizon at the prices of every interval; the market sees one instant, and a store moved by the
instant's price spends at noon the energy planned for the evening peak (its thresholds know
nothing of the peak), or an EV charges whenever its urgency crosses the price rather than in
the cheap intervals before its deadline. What the market is left (producers and sheddable
loads, which answer the same costs in both layers) balances the forecasts' errors within the
interval, and the next interval's solve starts from where the units really are (rolling
horizon), so a deviation is corrected by the plan, not compounded by the instant.

Which plan binds: only a schedule this node solved itself from the offers it checked
(`redy.planning.flood`); nothing a peer sends is a command. The schedule solved for interval k
binds k; until it is solved (the offers settle for a moment at each interval's start) the one
solved for k-1 binds k through its second interval, a rolling horizon's previous solve. Older
schedules are stale and bind nothing, nor does a schedule without this node or without the
units its offer stated. Then the node goes on as with no plan: the market dispatches everything.

A planned setpoint is held to what the unit says it can reach now (its status's [min_kw, max_kw]):
a store that is fuller than the plan assumed, an EV with less left to draw.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import attrs

from redy.messages import ActuatorStatus

if TYPE_CHECKING:  # not at run time: a governance with plans off never loads HiGHS
    from redy.planning.problem import Schedule

# How many intervals a schedule binds after the one it was solved for (its start).
MAX_AGE = 1
_ZERO_KW = 1e-9  # planned values this close to zero are zero (the LP's round-off)


@attrs.frozen
class OwnUnits:
    """Which unit each store and each deferrable load of a node's offer stands for, in the
    offer's order (the order of its plan's lists). The names stay with the node: its offer, as
    peers see it, names no unit."""

    storage: tuple[str, ...] = ()
    deferrable: tuple[str, ...] = ()


@attrs.frozen
class Binding:
    """The setpoints the plan commands in `interval` (unit -> kW, + injection), from the
    schedule solved for interval `solved_for`."""

    interval: int
    solved_for: int
    setpoints_kw: Mapping[str, float]


def binding(
    schedule: Schedule | None,
    node: str,
    units: OwnUnits | None,
    interval: int,
    statuses: Mapping[str, ActuatorStatus],
) -> Binding | None:
    """What `schedule` (this node's own solve) commands `node`'s units in `interval`, given
    the statuses of its online action units; None when it binds nothing (see the module
    docstring): no schedule, a stale one, this node not in it, names that do not describe its
    offer in it, or none of its planned units online."""
    if schedule is None or units is None:
        return None
    t = interval - schedule.start
    plan = schedule.plans.get(node)
    if plan is None or not 0 <= t <= MAX_AGE or t >= len(schedule.price_eur_mwh):
        return None
    if len(plan.charge_kw) != len(units.storage):
        return None  # not the offer these names describe
    if len(plan.deferrable_kw) != len(units.deferrable):
        return None
    wanted: dict[str, float] = {}
    for name, ch, dis in zip(units.storage, plan.charge_kw, plan.discharge_kw, strict=True):
        wanted[name] = wanted.get(name, 0.0) + dis[t] - ch[t]
    for name, draw in zip(units.deferrable, plan.deferrable_kw, strict=True):
        wanted[name] = wanted.get(name, 0.0) - draw[t]
    out: dict[str, float] = {}
    for name, kw in wanted.items():
        s = statuses.get(name)
        if s is None:
            continue  # offline, or no status yet: the market leaves it alone too
        kw = 0.0 if abs(kw) < _ZERO_KW else kw
        out[name] = min(max(kw, s.min_kw), s.max_kw)
    if not out:
        return None
    return Binding(interval, schedule.start, out)
