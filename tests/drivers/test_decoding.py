"""The drivers' pure parts: SunSpec map discovery and decoding, Zigbee2MQTT state and
availability payloads, OCPP meter values."""

from __future__ import annotations

import pytest

from redy.drivers.ocpp_csms import (
    OcppCharger,
    parse_charging_needs,
    parse_ev_soc,
    parse_meter_values,
)
from redy.drivers.sunspec import Block, ChargeState, decode_charge, decode_power_energy, discover
from redy.drivers.zigbee2mqtt import _online, parse_state
from redy.errors import DeviceFault

pytestmark = pytest.mark.pure


def test_discovery_walks_the_model_chain_from_the_marker() -> None:
    regs = {
        40000: 0x5375,
        40001: 0x6E53,
        40002: 1,
        40003: 66,
        40070: 203,
        40071: 105,
        40177: 0xFFFF,
    }
    got = discover(lambda a, n: [regs.get(a + i, 0) for i in range(n)], 40000)
    assert got == {1: Block(1, 40004, 66), 203: Block(203, 40072, 105)}
    with pytest.raises(DeviceFault, match="no SunSpec marker 'SunS' at register 0"):
        discover(lambda a, n: [0] * n, 0)


def test_meter_block_applies_scale_factors_and_signs_energy_as_the_meter_does() -> None:
    regs = [0] * 53
    regs[16], regs[20] = (-250) & 0xFFFF, 1  # -2500 W: exporting
    regs[36:38] = [0x0001, 0x0000]  # 65536 x 10^-2 Wh exported
    regs[44:46] = [0x0000, 10000]  # 10000 x 10^-2 Wh imported
    regs[52] = (-2) & 0xFFFF
    w, wh = decode_power_energy(Block(203, 0, 105), regs)
    assert w == -2500.0 and wh == pytest.approx(100.0 - 655.36)


def test_der_701_block_reads_uint64_energy_and_refuses_unimplemented_values() -> None:
    regs = [0] * 119
    regs[8], regs[114] = 1500, 0
    regs[17:21] = [0, 0, 0x0001, 0x86A0]  # 100000 Wh injected
    regs[118] = 0
    assert decode_power_energy(Block(701, 0, 153), regs) == (1500.0, 100000.0)
    regs[8] = 0x8000
    with pytest.raises(DeviceFault, match="W is not implemented"):
        decode_power_energy(Block(701, 0, 153), regs)


def test_zigbee2mqtt_state_takes_epoch_millisecond_last_seen_and_both_availability_forms() -> None:
    assert parse_state(b'{"power": 5, "last_seen": 1772366400000}', 0.0) == (
        5.0,
        None,
        None,
        1772366400.0,
    )
    assert parse_state(b'{"power": 5, "state": "OFF"}', 42.0) == (5.0, None, False, 42.0)
    with pytest.raises(DeviceFault, match="'last_seen' is not ISO 8601"):
        parse_state(b'{"power": 5, "last_seen": "yesterday"}', 0.0)
    assert _online(b'{"state":"online"}') and _online(b"online")
    assert not _online(b'{"state":"offline"}') and not _online(b"offline")


def test_ocpp_meter_values_default_measurand_kwh_unit_and_phases() -> None:
    got = parse_meter_values([{
        "timestamp": "2026-03-01T12:00:00Z",
        "sampled_value": [
            {"value": "1.5", "unit": "kWh"},  # measurand defaults to the energy register
            {"value": "7.2", "measurand": "Power.Active.Import", "unit": "kW"},
            {"value": "2400", "measurand": "Power.Active.Import", "phase": "L1"},
            {"value": "231", "measurand": "Voltage"},
        ],
    }])  # fmt: skip
    assert got == [(1772366400.0, 1500.0, 7200.0)]
    with pytest.raises(DeviceFault, match="unknown unit 'Wh'"):
        parse_meter_values([{"timestamp": "2026-03-01T12:00:00Z", "sampled_value": [
            {"value": "1", "measurand": "Power.Active.Import", "unit": "Wh"}]}])  # fmt: skip


def test_storage_charge_from_model_124_and_802_and_what_is_not_reported() -> None:
    m124 = [0] * 24
    m124[5], m124[19] = 150, (-1) & 0xFFFF  # MinRsvPct 15.0 %
    m124[6], m124[20] = 5625, (-2) & 0xFFFF  # ChaState 56.25 %
    assert decode_charge(124, m124) == ChargeState(0.5625, 0.15, None)
    m124[19] = 0x8000  # no reserve stated: none assumed
    assert decode_charge(124, m124) == ChargeState(0.5625, None, None)
    m124[20] = 0x8000
    with pytest.raises(DeviceFault, match=r"ChaState_SF is not implemented \(0x8000\)"):
        decode_charge(124, m124)
    m124[6], m124[20] = 255, 0
    with pytest.raises(DeviceFault, match=r"ChaState 255 % is out of range \(expected 0..100 %\)"):
        decode_charge(124, m124)
    m802 = [0] * 55
    m802[5:10] = [0xFFFF, 0xFFFF, 0xFFFF, 0xFFFF, 40]  # SoC 40 %, no bounds at all
    assert decode_charge(802, m802) == ChargeState(0.40, None, None)
    m802[5], m802[6] = 98, 3  # the manufacturer's SoCMax, SoCMin where no reserve is set
    assert decode_charge(802, m802) == ChargeState(0.40, 0.03, 0.98)
    m802[7], m802[8] = 90, 20  # the owner's reserve comes first
    assert decode_charge(802, m802) == ChargeState(0.40, 0.20, 0.90)
    m802[7], m802[8] = 10, 20
    with pytest.raises(DeviceFault, match=r"reserve 20%\.\.10% is empty"):
        decode_charge(802, m802)


def test_ocpp_ev_state_of_charge_and_charging_needs_are_checked() -> None:
    def mv(*svs: dict[str, object]) -> list[dict[str, object]]:
        return [{"timestamp": "2026-03-01T12:00:00Z", "sampled_value": list(svs)}]

    assert parse_ev_soc(mv({"value": "1.5", "unit": "kWh"})) is None
    assert parse_ev_soc(mv({"value": "42", "measurand": "SoC", "unit": "Percent"})) == 0.42
    v201 = {"value": 4.2, "measurand": "SoC", "unit_of_measure": {"unit": "Percent",
                                                                  "multiplier": 1}}  # fmt: skip
    assert parse_ev_soc(mv(v201)) == pytest.approx(0.42)
    for bad in ("255", "NaN", "-1", "full"):
        with pytest.raises(ValueError, match=r"expected 0\.\.100 Percent"):
            parse_ev_soc(mv({"value": bad, "measurand": "SoC", "unit": "Percent"}))
    with pytest.raises(ValueError, match=r"expected 0\.\.100 Percent"):
        parse_ev_soc(mv({"value": "42", "measurand": "SoC", "unit": "Wh"}))
    needs = {"requested_energy_transfer": "AC_three_phase",
             "departure_time": "2026-03-01T18:00:00Z",
             "ac_charging_parameters": {"energy_amount": 20000, "ev_min_current": 6,
                                        "ev_max_current": 16, "ev_max_voltage": 400}}  # fmt: skip
    now = 1772366400.0  # 12:00
    assert parse_charging_needs(needs, now) == (20000.0, now + 6 * 3600)
    assert parse_charging_needs({"requested_energy_transfer": "DC"}, now) == (None, None)
    with pytest.raises(ValueError, match=r"expected 0\.\.1e9 Wh"):
        parse_charging_needs({"dc_charging_parameters": {"energy_amount": -5}}, now)
    with pytest.raises(ValueError, match="departureTime"):
        parse_charging_needs({"departure_time": "tonight"}, now)
    with pytest.raises(ValueError, match="more than 7 days ahead"):  # due_in_s would not fit
        parse_charging_needs({"departure_time": "2126-03-01T12:00:00Z"}, now)
    with pytest.raises(ValueError, match=r"expected 0\.\.100 Percent"):
        v201["unit_of_measure"] = {"unit": "Percent", "multiplier": 9}
        parse_ev_soc(mv(v201))


def test_an_evs_energy_due_falls_with_what_the_meter_counts_and_ends_with_it() -> None:
    cp = OcppCharger(port=9001, charge_point_id="CP1")
    assert cp.due() is None and cp.soc_now() is None
    cp.on_needs(20000.0, None)  # no departure: no deadline invented
    assert cp.due() is None
    cp.on_needs(20000.0, 1000.0 + 7200.0)  # before the first reading
    cp.on_transaction(1, 5000.0, 1000.0)
    cp.on_boot()
    cp._cp = object()  # a connected session, as the CSMS keeps it: read() needs one
    cp.read(1000.0)
    assert cp.due() == (20.0, 7200.0)
    cp.on_meter(11000.0, 7400.0, 1800.0)
    cp.on_ev(soc=0.55)
    cp.read(1800.0)
    assert cp.due() == (pytest.approx(14.0), 6400.0) and cp.soc_now() == 0.55
    cp.on_ev(problem="SoC '255' Percent is not a state of charge")
    assert cp.soc_now() == 0.55  # the last good one stands until the EV leaves
    cp.on_transaction(None, 12000.0, 1900.0)
    assert cp.due() is None and cp.soc_now() is None
