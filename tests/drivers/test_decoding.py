"""The drivers' pure parts: SunSpec map discovery and decoding, Zigbee2MQTT state and
availability payloads, OCPP meter values."""

from __future__ import annotations

import pytest

from redy.drivers.ocpp_csms import parse_meter_values
from redy.drivers.sunspec import Block, decode_power_energy, discover
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
