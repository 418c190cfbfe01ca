"""SunSpec over Modbus TCP: detection and action units against pymodbus's own TCP server holding
SunSpec register maps (meter 203, inverter 701 + 704, inverter 103 + 123), including a device
that stops answering, answers with an exception code, or returns values out of range."""

from __future__ import annotations

import time
from typing import Any

import pytest
from conftest import NODE, until
from counterparts import BASE, M103, M123, M203, M701, M704, spread, sunspec_map, words

from redy import messages
from redy.topics import render

pytestmark = pytest.mark.e2e

UNITS = {"meter": "detection", "inverter": "action"}

# The meter: 123.4 W imported (W = 1234, W_SF = -1), 5 kWh exported, 12 kWh imported.
METER_MAP, METER_AT = sunspec_map(
    (203, M203, spread(M203, W=1234, W_SF=-1, TotWhExp=words(5000, 2),
                       TotWhImp=words(12000, 2), TotWh_SF=0)),
)  # fmt: skip
METER_POWER_KW = -0.1234  # SunSpec meters count import as +: the unit reports injection


def _meter(units: Any, port: int) -> Any:
    return units.start(
        "detection", "meter", "sunspec_meter", "--period-s", "0.2",
        host="127.0.0.1", port=port, rated_kw=2, timeout_s=0.5,
    )  # fmt: skip


def test_meter_unit_publishes_power_and_energy_with_scale_factors_and_wall_clock_time(
    node: Any, modbus_server: Any
) -> None:
    units, op = node
    server = modbus_server({1: METER_MAP})
    _meter(units, server.port)
    topic = render("measurement", node=NODE, unit="meter")
    first = until(lambda: op.latest(topic), what="a measurement")
    assert first.power_kw == pytest.approx(METER_POWER_KW)
    assert first.energy_kwh == 0.0  # energy counts from the unit's start, like a model's
    assert abs(first.ts_s - time.time()) < 5.0  # wall-clock time, not simulated time
    server.patch[1] = {METER_AT[203] + M203["TotWhImp"] + 1: 12500 & 0xFFFF}  # 0.5 kWh more
    later = until(lambda: (m := op.latest(topic)) and m.energy_kwh != 0.0 and m, what="more energy")
    assert later.energy_kwh == pytest.approx(-0.5)


def test_meter_that_fails_goes_offline_with_a_clear_error_and_never_publishes_a_wrong_number(
    node: Any, modbus_server: Any
) -> None:
    units, op = node
    server = modbus_server({1: METER_MAP})
    _meter(units, server.port)
    measurement = render("measurement", node=NODE, unit="meter")
    state = render("unit_state", node=NODE, unit="meter")
    until(lambda: op.latest(measurement), what="a measurement")

    def goes(expected: str) -> None:
        until(lambda: (s := op.latest(state)) and s.state == expected, what=f"state {expected}")

    w = METER_AT[203] + M203["W"]
    w_sf = METER_AT[203] + M203["W_SF"]
    faults = [
        ("exception", {}, "exception code 4 (server device failure)"),
        ("silent", {}, "did not answer"),
        ("ok", {w: 0x7FFF}, "out of range"),  # 3276.7 W on a 2 kW meter
        ("ok", {w: 0x8000}, "W is not implemented"),
        ("ok", {w_sf: 0x7FFF & 0xFFFF}, "scale factor W_SF = 32767 is out of range"),
    ]
    for mode, patch, error in faults:
        server.mode[1], server.patch[1] = mode, patch
        goes("offline")
        assert error in units.log("meter")
        server.mode[1], server.patch[1] = "ok", {w: 1234, w_sf: -1 & 0xFFFF}  # healthy again
        goes("online")
        n = len(op.all(measurement))
        until(lambda n=n: len(op.all(measurement)) > n + 1, what="measurements again")
    server.stop()  # the gateway goes away altogether
    goes("offline")
    until(lambda: "refuses connections" in units.log("meter"), what="the refusal logged")
    published = op.all(measurement)
    assert published and all(m.power_kw == pytest.approx(METER_POWER_KW) for m in published)
    assert units.procs[0].poll() is None


# Two inverters on one gateway: unit 1 speaks the DER models (701 + 704), unit 2 the older ones
# (103 + 123). Both make 4 kW of the 5 kW they are rated for, until limited.
RATED_W = 5000
AVAILABLE_W = 4000
DER_MAP, DER_AT = sunspec_map(
    (701, M701, spread(M701, W=AVAILABLE_W, W_SF=0, TotWhInj=words(10**6, 4),
                       TotWhAbs=words(0, 4), TotWh_SF=0)),
    (704, M704, spread(M704, WMaxLimPctEna=0, WMaxLimPct=1000, WMaxLimPct_SF=-1)),
)  # fmt: skip
OLD_MAP, OLD_AT = sunspec_map(
    (103, M103, spread(M103, W=AVAILABLE_W, W_SF=0, WH=words(10**6, 2), WH_SF=0)),
    (123, M123, spread(M123, Conn=1, WMaxLimPct=100, WMaxLim_Ena=0, WMaxLimPct_SF=0)),
)  # fmt: skip
INVERTERS = {
    1: (DER_MAP, DER_AT[701] + M701["W"], DER_AT[704], M704["WMaxLimPctEna"], M704["WMaxLimPct"], -1),
    2: (OLD_MAP, OLD_AT[103] + M103["W"], OLD_AT[123], M123["WMaxLim_Ena"], M123["WMaxLimPct"], 0),
}  # fmt: skip


def _physics(uid: int, regs: list[int], start: int, _written: Any) -> None:
    """An inverter's output follows its limit: min(available, WMaxLimPct x WMax) when enabled."""
    _, w_at, ctl_at, ena, pct, sf = INVERTERS[uid]
    limit_w = RATED_W
    if regs[ctl_at + ena - start] == 1:
        limit_w = regs[ctl_at + pct - start] * 10.0**sf / 100.0 * RATED_W
    regs[w_at - start] = int(min(AVAILABLE_W, limit_w))


@pytest.mark.parametrize("uid", [1, 2], ids=["701+704", "103+123"])
def test_inverter_action_unit_limits_the_output_through_the_controls_model(
    node: Any, modbus_server: Any, mqtt_client: Any, uid: int
) -> None:
    units, op = node
    server = modbus_server({uid: INVERTERS[uid][0]}, _physics)
    units.start(
        "action", "inverter", "sunspec_inverter", "--period-s", "0.2",
        host="127.0.0.1", port=server.port, unit_id=uid, rated_kw=RATED_W / 1000, timeout_s=0.5,
    )  # fmt: skip
    status = render("actuator_status", node=NODE, unit="inverter")
    first = until(lambda: op.latest(status), what="a status")
    assert first.power_kw == pytest.approx(AVAILABLE_W / 1000) and first.setpoint_kw is None
    assert first.min_kw == 0.0 and first.max_kw == pytest.approx(AVAILABLE_W / 1000)
    op.client.publish(
        render("command", node=NODE, unit="inverter"),
        messages.encode(messages.Command(seq=1, ts_s=time.time(), setpoint_kw=2.0)),
    )
    limited = until(
        lambda: (s := op.latest(status)) and s.seq == 1 and s.power_kw < 3.0 and s,
        what="the output limited",
    )
    assert limited.power_kw == pytest.approx(2.0) and limited.setpoint_kw == pytest.approx(2.0)
    _, _, ctl_at, ena, pct, sf = INVERTERS[uid]
    regs = server.registers[uid]
    assert regs[ctl_at + ena - BASE] == 1
    assert regs[ctl_at + pct - BASE] * 10.0**sf == pytest.approx(40.0)  # 2 kW of 5 kW
    # What it could give back stays known: the output it had before the limit.
    assert limited.max_kw == pytest.approx(AVAILABLE_W / 1000)
