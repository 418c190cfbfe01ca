"""OCPP 1.6J: an EV station's action unit is the CSMS of a charge point simulated with the ocpp
package over a real websocket on 127.0.0.1. It reads meter values and transactions with the
charge point's own timestamps and applies the dispatch with SetChargingProfile; a charge point
that rejects a profile, sends a broken meter value or disconnects never yields a wrong number."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import NODE, until
from ocpp.routing import on
from ocpp.v16 import ChargePoint, call, call_result
from ocpp.v16.enums import Action

from redy import messages
from redy.topics import render

pytestmark = pytest.mark.e2e

UNITS = {"point-1": "action"}
CP_ID = "CP-1"
T1 = "2026-03-01T12:00:00Z"  # the charge point's clock, far from ours: its stamps must show
T1_UNIX = 1772366400.0


class SimulatedChargePoint(ChargePoint):
    """A charge point as the ocpp package models one, answering the CSMS's requests."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.profiles: list[dict[str, Any]] = []
        self.profile_answer = "Accepted"
        self.energy_wh = 1000

    @on(Action.set_charging_profile)
    async def on_set_charging_profile(
        self, connector_id: int, cs_charging_profiles: dict[str, Any], **_kw: Any
    ) -> Any:
        self.profiles.append({"connector_id": connector_id, **cs_charging_profiles})
        return call_result.SetChargingProfile(status=self.profile_answer)

    @on(Action.trigger_message)
    async def on_trigger_message(self, requested_message: str, **_kw: Any) -> Any:
        if requested_message == "MeterValues":
            asyncio.get_running_loop().call_soon(
                lambda: asyncio.ensure_future(self.meter(T1, energy_wh=self.energy_wh))
            )
        return call_result.TriggerMessage(status="Accepted")

    async def meter(self, ts: str, energy_wh: Any = None, power_w: Any = None) -> None:
        values = []
        if energy_wh is not None:
            values.append(
                {
                    "value": str(energy_wh),
                    "measurand": "Energy.Active.Import.Register",
                    "unit": "Wh",
                }
            )
        if power_w is not None:
            values.append({"value": str(power_w), "measurand": "Power.Active.Import", "unit": "W"})
        await self.call(
            call.MeterValues(connector_id=1, meter_value=[{"timestamp": ts, "sampled_value": values}])
        )  # fmt: skip


class ChargePointRunner:
    """Runs one simulated charge point on its own event loop thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.cp: SimulatedChargePoint | None = None
        self.ws: Any = None
        self.tasks: list[asyncio.Task[None]] = []

    def run(self, coro: Any, timeout_s: float = 10.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout_s)

    def connect(self, port: int) -> SimulatedChargePoint:
        from websockets.asyncio.client import connect

        async def go() -> SimulatedChargePoint:
            self.ws = await connect(f"ws://127.0.0.1:{port}/{CP_ID}", subprotocols=["ocpp1.6"])  # type: ignore[list-item]
            cp = SimulatedChargePoint(CP_ID, self.ws)

            async def serve() -> None:
                with contextlib.suppress(Exception):  # the websocket closing ends it
                    await cp.start()

            self.tasks.append(self.loop.create_task(serve()))
            await cp.call(
                call.BootNotification(charge_point_model="Sim", charge_point_vendor="redy-test")
            )
            return cp

        def attempt() -> SimulatedChargePoint | None:
            try:
                return self.run(go())  # type: ignore[no-any-return]
            except OSError:
                return None  # the CSMS is not listening yet

        self.cp = until(attempt, what="the CSMS accepting the charge point")
        return self.cp

    def close(self) -> None:
        if self.ws is not None:
            self.run(self.ws.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@pytest.fixture
def charge_point() -> Iterator[ChargePointRunner]:
    r = ChargePointRunner()
    yield r
    r.close()


def _start(units: Any, port: int) -> None:
    units.start(
        "action", "point-1", "ocpp_charger", "--period-s", "0.2",
        port=port, charge_point_id=CP_ID, rated_kw=22, willingness_eur_mwh=150,
    )  # fmt: skip


def test_ev_unit_as_csms_reads_the_charge_point_and_applies_the_dispatch_with_a_profile(
    node: Any, charge_point: ChargePointRunner, free_port: Any
) -> None:
    units, op = node
    port = free_port()
    _start(units, port)
    cp = charge_point.connect(port)
    status_topic = render("actuator_status", node=NODE, unit="point-1")
    idle = until(lambda: op.latest(status_topic), what="a status after the triggered reading")
    assert idle.power_kw == 0.0 and idle.min_kw == 0.0 and idle.max_kw == 0.0
    assert idle.ts_s == T1_UNIX and idle.marginal_cost_eur_mwh == 150.0

    started = charge_point.run(
        cp.call(call.StartTransaction(connector_id=1, id_tag="TAG1", meter_start=1000, timestamp=T1))
    )  # fmt: skip
    charge_point.run(cp.meter("2026-03-01T12:00:10Z", energy_wh=1030, power_w=11000))
    charging = until(
        lambda: (s := op.latest(status_topic)) and s.power_kw < 0 and s, what="charging"
    )
    assert charging.power_kw == pytest.approx(-11.0)
    assert charging.ts_s == T1_UNIX + 10  # the charge point's timestamp, not ours
    assert charging.min_kw == -22.0 and charging.max_kw == 0.0

    op.client.publish(
        render("command", node=NODE, unit="point-1"),
        messages.encode(messages.Command(seq=1, ts_s=time.time(), setpoint_kw=-7.4)),
    )
    until(lambda: cp.profiles, what="a SetChargingProfile")
    profile = cp.profiles[-1]
    assert profile["connector_id"] == 1
    # (the ocpp package hands handlers the wire's camelCase keys in snake_case)
    assert profile["charging_profile_purpose"] == "TxProfile"
    assert profile["transaction_id"] == started.transaction_id
    schedule = profile["charging_schedule"]
    assert schedule["charging_rate_unit"] == "W"
    assert schedule["charging_schedule_period"] == [{"start_period": 0, "limit": 7400.0}]
    applied = until(lambda: (s := op.latest(status_topic)) and s.seq == 1 and s, what="seq 1")
    assert applied.setpoint_kw == pytest.approx(-7.4) and applied.note is None


def test_rejected_profile_broken_meter_value_and_disconnect_never_yield_a_wrong_number(
    node: Any, charge_point: ChargePointRunner, free_port: Any
) -> None:
    units, op = node
    port = free_port()
    _start(units, port)
    cp = charge_point.connect(port)
    status_topic = render("actuator_status", node=NODE, unit="point-1")
    state_topic = render("unit_state", node=NODE, unit="point-1")
    until(lambda: op.latest(status_topic), what="a status")
    charge_point.run(
        cp.call(call.StartTransaction(connector_id=1, id_tag="TAG1", meter_start=1000, timestamp=T1))
    )  # fmt: skip
    charge_point.run(cp.meter(T1, energy_wh=1000, power_w=7000))
    until(lambda: (s := op.latest(status_topic)) and s.power_kw < 0, what="charging")

    cp.profile_answer = "Rejected"
    op.client.publish(
        render("command", node=NODE, unit="point-1"),
        messages.encode(messages.Command(seq=1, ts_s=time.time(), setpoint_kw=-3.7)),
    )
    refused = until(
        lambda: (s := op.latest(status_topic)) and s.note and "rejected" in s.note and s,
        what="the rejection in the status",
    )
    assert refused.seq == 0 and refused.setpoint_kw is None  # nothing was applied

    def goes(expected: str) -> None:
        until(lambda: (s := op.latest(state_topic)) and s.state == expected, what=expected)

    for bad, error in [
        ("abc", "is not a number"),
        ("-5", "out of range"),
        ("99000", "out of range"),
    ]:
        charge_point.run(cp.meter(T1, power_w=bad))
        goes("offline")
        assert error in units.log("point-1")
        charge_point.run(cp.meter(T1, energy_wh=1000, power_w=7000))
        goes("online")
    charge_point.run(charge_point.ws.close())
    goes("offline")
    assert "charge point not connected" in units.log("point-1")
    powers = [m.power_kw for m in op.all(status_topic)]
    assert powers and set(powers) <= {0.0, -7.0}
