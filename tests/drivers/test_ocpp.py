"""OCPP 1.6J (and 2.0.1): an EV station's action unit is the CSMS of a charge point simulated
with the ocpp package over a real websocket on 127.0.0.1. It reads meter values and transactions with the
charge point's own timestamps and applies the dispatch with SetChargingProfile; a charge point
that rejects a profile, sends a broken meter value or disconnects never yields a wrong number."""

from __future__ import annotations

import datetime as dt
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
from redy.units.planner import horizon_offer

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


def _start_201(units: Any, port: int) -> None:
    units.start(
        "action", "point-1", "ocpp_charger", "--period-s", "0.2",
        port=port, charge_point_id=CP_ID, rated_kw=11, protocol="ocpp2.0.1",
    )  # fmt: skip


def test_ocpp_201_station_is_read_from_transaction_events_and_limited_on_its_evse(
    node: Any, charge_point: ChargePointRunner, free_port: Any
) -> None:
    units, op = node
    port = free_port()
    _start_201(units, port)
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


def test_ocpp_201_ev_needs_and_soc_reach_the_status_and_the_plan(
    node: Any, charge_point: ChargePointRunner, free_port: Any
) -> None:
    """NotifyEVChargingNeeds (energyAmount Wh, departureTime) and the SoC measurand: the energy
    due falls with what the meter counts; a SoC of 255 % is left out with one log line."""
    units, op = node
    port = free_port()
    _start_201(units, port)
    station = charge_point.connect(port, "ocpp2.0.1")
    status_topic = render("actuator_status", node=NODE, unit="point-1")
    idle = until(lambda: op.latest(status_topic), what="a status")
    assert idle.energy_due_kwh is None and idle.due_in_s is None and idle.soc is None

    def reading(kwh: float, soc: float) -> list[dict[str, Any]]:
        return [{"timestamp": "2026-03-01T12:00:10Z", "sampled_value": [
            {"value": kwh, "unit_of_measure": {"unit": "kWh"}},
            {"value": soc, "measurand": "SoC", "unit_of_measure": {"unit": "Percent"}},
        ]}]  # fmt: skip

    charge_point.run(station.call(v201.call.TransactionEvent(
        event_type="Started", timestamp="2026-03-01T12:00:10Z", trigger_reason="CablePluggedIn",
        seq_no=0, transaction_info={"transaction_id": "tx-7"}, evse={"id": 1, "connector_id": 1},
        meter_value=reading(1.0, 55),
    )))  # fmt: skip
    departure = dt.datetime.now(dt.UTC) + dt.timedelta(hours=2)
    answer = charge_point.run(station.call(v201.call.NotifyEVChargingNeeds(
        evse_id=1, charging_needs={
            "requested_energy_transfer": "AC_three_phase",
            "departure_time": departure.isoformat().replace("+00:00", "Z"),
            "ac_charging_parameters": {"energy_amount": 20000, "ev_min_current": 6,
                                       "ev_max_current": 16, "ev_max_voltage": 400},
        },
    )))  # fmt: skip
    assert answer.status == "Accepted"
    status = until(
        lambda: (s := op.latest(status_topic)) and s.energy_due_kwh is not None and s,
        what="a status with the EV's needs",
    )
    assert status.soc == pytest.approx(0.55) and status.energy_due_kwh == pytest.approx(20.0)
    assert status.due_in_s == pytest.approx(7200.0, abs=10.0)
    charge_point.run(station.call(v201.call.MeterValues(evse_id=1, meter_value=reading(3.0, 255))))
    later = until(
        lambda: (s := op.latest(status_topic)) and s.energy_due_kwh < 19.0 and s,
        what="the energy due after 2 kWh",
    )
    assert later.energy_due_kwh == pytest.approx(18.0) and later.soc == pytest.approx(0.55)
    time.sleep(0.6)
    log = units.log("point-1")
    assert log.count("is not a state of charge (expected 0..100 Percent)") == 1

    # The plan sees a deferrable load: 18 kWh within the intervals up to its departure.
    state = op.governance_view("point-1", later)
    [ev] = horizon_offer(state, 0, 16, 15.0, (-20.0, 20.0))[0].deferrable
    assert ev.energy_kwh == pytest.approx(18.0) and ev.end == 8 and ev.power_kw == 11.0
    assert units.procs[0].poll() is None
