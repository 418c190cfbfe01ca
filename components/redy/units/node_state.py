"""What a governance unit knows of its own node, and its local dispatch rule (pure, no I/O).

Fed with decoded messages from the node's broker, it keeps which units are online (by retained
state and bd_seq: a Will from an older session is ignored), their latest measurements and the
actuators' statuses, and answers the node's energy state. Flexibility counts only ONLINE
actuators, so a unit that goes offline leaves the node's flexibility at once.
"""

from __future__ import annotations

import logging

import attrs

from redy import messages
from redy.balancing.curves import ramp_ends, running_cost_eur_h
from redy.devices import reading_limit_kw

_log = logging.getLogger(__name__)


@attrs.define
class UnitView:
    """The governance's picture of one unit."""

    meta: messages.UnitMeta | None = None
    state: messages.UnitState | None = None
    measurement: messages.Measurement | None = None
    status: messages.ActuatorStatus | None = None

    @property
    def online(self) -> bool:
        return self.state is not None and self.state.state == "online"

    @property
    def role(self) -> str | None:
        return self.meta.role if self.meta else None

    @property
    def power_kw(self) -> float:
        if self.role == "action" and self.status is not None:
            return self.status.power_kw
        if self.measurement is not None:
            return self.measurement.power_kw
        return 0.0


@attrs.frozen
class Order:
    """A command the rule wants sent: a setpoint for one action unit."""

    unit: str
    setpoint_kw: float | None
    on: bool | None = None


class NodeState:
    """The live state of one node, from its own broker's messages."""

    def __init__(self, node: str) -> None:
        self.node = node
        self.units: dict[str, UnitView] = {}
        self.refused: dict[str, str] = {}  # unit -> why its last reading was not believed

    def on_message(self, topic: str, msg: object) -> bool:
        """Take one decoded message; True if the node's online set or flexibility changed."""
        parts = topic.split("/")
        if len(parts) < 4 or parts[1] != self.node:
            return False
        if isinstance(msg, messages.UnitMeta):
            u = self.units.setdefault(parts[3], UnitView())
            u.meta = msg
            return False
        if isinstance(msg, messages.UnitState):
            u = self.units.setdefault(parts[3], UnitView())
            if u.state is not None and msg.bd_seq < u.state.bd_seq:
                return False  # a late Will of an older session (Sparkplug bdSeq rule)
            if u.meta is not None and msg.bd_seq < u.meta.bd_seq:
                return False
            was = u.online
            u.state = msg
            return was != u.online
        if isinstance(msg, messages.Measurement):
            u = self.units.setdefault(parts[3], UnitView())
            problem = _implausible_measurement(u.meta, msg)
            if problem is None:
                u.measurement = msg
            else:
                self._refuse(parts[3], problem)
            return False
        if isinstance(msg, messages.ActuatorStatus):
            u = self.units.setdefault(parts[3], UnitView())
            problem = _implausible_status(u.meta, msg)
            if problem is None:
                u.status = msg
            else:
                self._refuse(parts[3], problem)
            return False
        return False

    def _refuse(self, unit: str, problem: str) -> None:
        """Log once per unit (a lying or broken device would fill the log otherwise)."""
        if unit not in self.refused:
            _log.warning("node=%s ignores unit %s: %s", self.node, unit, problem)
        self.refused[unit] = problem

    def online_actuators(self) -> dict[str, UnitView]:
        return {
            name: u
            for name, u in self.units.items()
            if u.online and u.role == "action" and u.status is not None
        }

    def energy_state(
        self,
        ts_s: float,
        *,
        setpoint_kw: float | None = None,
        price_eur_mwh: float | None = None,
        epoch: int | None = None,
        status: str = "local",
        clock_offset_s: float | None = None,
        unserved_kw: float | None = None,
        excess_kw: float | None = None,
    ) -> messages.NodeEnergyState:
        """The node's energy state now (only online units count)."""
        production = consumption = 0.0
        cost_eur_h = storage_kwh = capacity_kwh = 0.0
        forecast: list[float] = []
        for u in self.units.values():
            if not u.online:
                continue
            p = u.power_kw
            if u.meta is not None and u.meta.quantity == "storage" and p < 0:
                consumption += -p
            elif p >= 0:
                production += p
            else:
                consumption += -p
            st = u.status
            if st is not None and st.marginal_cost_eur_mwh is not None and p > 0:
                cost_eur_h += running_cost_eur_h(p, st.min_kw, st.max_kw, st.marginal_cost_eur_mwh)
            m = u.measurement
            if m is not None and m.forecast_kw:
                forecast = [
                    a + b
                    for a, b in zip(
                        forecast or [0.0] * len(m.forecast_kw), m.forecast_kw, strict=False
                    )
                ]
            if u.meta is not None and u.meta.capacity_kwh:
                capacity_kwh += u.meta.capacity_kwh
                soc = m.soc if m is not None else None
                if soc is not None:
                    storage_kwh += soc * u.meta.capacity_kwh
        flex_up = flex_down = 0.0
        for u in self.online_actuators().values():
            assert u.status is not None
            flex_up += max(0.0, u.status.max_kw - u.status.power_kw)
            flex_down += max(0.0, u.status.power_kw - u.status.min_kw)
        return messages.NodeEnergyState(
            node=self.node,
            ts_s=max(ts_s, 0.0),
            production_kw=production,
            consumption_kw=consumption,
            net_kw=production - consumption,
            flex_up_kw=flex_up,
            flex_down_kw=flex_down,
            cost_eur_h=cost_eur_h,
            storage_kwh=storage_kwh,
            storage_capacity_kwh=capacity_kwh,
            forecast_kw=tuple(forecast[:96]),
            units_online=sum(1 for u in self.units.values() if u.online),
            units_total=len(self.units),
            epoch=epoch,
            price_eur_mwh=price_eur_mwh,
            status=status,
            clock_offset_s=clock_offset_s,
            setpoint_kw=setpoint_kw,
            unserved_kw=unserved_kw,
            excess_kw=excess_kw,
        )

    def follow_setpoint(self, target_net_kw: float) -> list[Order]:
        """Orders that move the node's net injection toward `target_net_kw`.

        Raising takes the cheapest actuators first, lowering the dearest first (merit order),
        each within its reachable [min_kw, max_kw].
        """
        state = self.energy_state(0.0)
        gap = target_net_kw - state.net_kw
        actuators = self.online_actuators()

        def cost(name: str) -> float:
            status = actuators[name].status
            assert status is not None
            c = status.marginal_cost_eur_mwh
            return ramp_ends(c)[0] if c is not None else 0.0  # a ramp: its first kW's cost

        orders = []
        for name in sorted(actuators, key=cost, reverse=gap < 0):
            status = actuators[name].status
            assert status is not None
            if abs(gap) < 1e-6:
                break
            new = min(status.max_kw, max(status.min_kw, status.power_kw + gap))
            if abs(new - status.power_kw) > 1e-6:
                orders.append(Order(unit=name, setpoint_kw=new))
                gap -= new - status.power_kw
        return orders


def _limit_kw(meta: messages.UnitMeta) -> float:
    return reading_limit_kw(meta.rated_power_kw)


def _implausible_measurement(
    meta: messages.UnitMeta | None, msg: messages.Measurement
) -> str | None:
    """Why a measurement cannot be true of the unit that sent it (None if it can)."""
    if meta is None:
        return None  # no birth yet: nothing to judge it by
    limit = _limit_kw(meta)
    if abs(msg.power_kw) > limit:
        return (
            f"measured {msg.power_kw:g} kW but rated {meta.rated_power_kw:g} kW"
            f" (expected within +/-{limit:g} kW)"
        )
    return None


def _implausible_status(meta: messages.UnitMeta | None, msg: messages.ActuatorStatus) -> str | None:
    """Why an actuator status cannot be true of the unit's rating (None if it can). (Its power
    may lie outside its reachable range: a plant that is off reports 0 kW and its minimum.)"""
    if meta is None:
        return None
    limit = _limit_kw(meta)
    worst = max(abs(msg.min_kw), abs(msg.max_kw), abs(msg.power_kw))
    if worst > limit:
        return (
            f"status power {msg.power_kw:g} kW, range [{msg.min_kw:g}, {msg.max_kw:g}] kW, beyond"
            f" its rating {meta.rated_power_kw:g} kW (expected within +/-{limit:g} kW)"
        )
    return None
