"""OCPP 1.6J (and 2.0.1): an EV station's action unit is the CSMS of a charge point simulated
with the ocpp package over a real websocket on 127.0.0.1. It reads meter values and transactions with the
charge point's own timestamps and applies the dispatch with SetChargingProfile; a charge point
that rejects a profile, sends a broken meter value or disconnects never yields a wrong number."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import NODE, until
from counterparts import CP_ID, T1, ChargePointRunner
from ocpp import v201
from ocpp.v16 import call

from redy import messages
from redy.topics import render

pytestmark = pytest.mark.e2e

UNITS = {"point-1": "action"}
T1_UNIX = 1772366400.0  # T1, the charge point's clock, far from ours: its stamps must show


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


def test_ocpp_201_station_is_read_from_transaction_events_and_limited_on_its_evse(
    node: Any, charge_point: ChargePointRunner, free_port: Any
) -> None:
    units, op = node
    port = free_port()
    units.start(
        "action", "point-1", "ocpp_charger", "--period-s", "0.2",
        port=port, charge_point_id=CP_ID, rated_kw=11, protocol="ocpp2.0.1",
    )  # fmt: skip
    station = charge_point.connect(port, "ocpp2.0.1")
    status_topic = render("actuator_status", node=NODE, unit="point-1")
    idle = until(lambda: op.latest(status_topic), what="a status after the triggered reading")
    assert idle.power_kw == 0.0 and idle.ts_s == T1_UNIX
    reading = [{
        "timestamp": "2026-03-01T12:00:10Z",
        "sampled_value": [
            {"value": 7200, "measurand": "Power.Active.Import", "unit_of_measure": {"unit": "W"}},
            {"value": 1.03, "unit_of_measure": {"unit": "kWh"}},
        ],
    }]  # fmt: skip
    charge_point.run(station.call(v201.call.TransactionEvent(
        event_type="Started", timestamp="2026-03-01T12:00:10Z", trigger_reason="CablePluggedIn",
        seq_no=0, transaction_info={"transaction_id": "tx-42"}, evse={"id": 1, "connector_id": 1},
        meter_value=reading,
    )))  # fmt: skip
    charging = until(
        lambda: (s := op.latest(status_topic)) and s.power_kw < 0 and s, what="charging"
    )
    assert charging.power_kw == pytest.approx(-7.2) and charging.ts_s == T1_UNIX + 10
    assert charging.min_kw == -11.0
    op.client.publish(
        render("command", node=NODE, unit="point-1"),
        messages.encode(messages.Command(seq=1, ts_s=time.time(), setpoint_kw=-3.7)),
    )
    until(lambda: station.profiles, what="a SetChargingProfile")
    profile = station.profiles[-1]
    assert profile["evse_id"] == 1 and profile["transaction_id"] == "tx-42"
    assert profile["charging_profile_purpose"] == "TxProfile"
    (schedule,) = profile["charging_schedule"]
    assert schedule["charging_rate_unit"] == "W"
    assert schedule["charging_schedule_period"] == [{"start_period": 0, "limit": 3700.0}]
    applied = until(lambda: (s := op.latest(status_topic)) and s.seq == 1 and s, what="seq 1")
    assert applied.setpoint_kw == pytest.approx(-3.7)
