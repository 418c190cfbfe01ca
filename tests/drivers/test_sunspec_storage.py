"""A battery behind a SunSpec inverter (701 + 802 + 124) on pymodbus's TCP server: its action
unit states the state of charge and reserve of model 802, a node's plan starts the store from
them, an invalid state of charge is left out with one log line, and a setpoint becomes the
charge and discharge limits of model 124."""

from __future__ import annotations

import time
from typing import Any

import pytest
from conftest import NODE, until
from counterparts import BASE, M124, M701, M802, spread, sunspec_map, words

from redy import messages
from redy.topics import render
from redy.units.planner import horizon_offer

pytestmark = pytest.mark.e2e

UNITS = {"battery": "action"}
CAPACITY_KWH = 13.5

# 1.5 kW discharging; SoC 62.5 % (625 x 10^-1), reserve 10..95 % (SoCMin 5 % is the floor the
# owner's reserve SoCRsvMin overrides); 124 with ChaState 60 % for a device without 802.
BATTERY_MAP, AT = sunspec_map(
    (701, M701, spread(M701, W=1500, W_SF=0, TotWhInj=words(10**6, 4), TotWhAbs=words(0, 4),
                       TotWh_SF=0)),
    (802, M802, spread(M802, WHRtg=13500, SoCMax=1000, SoCMin=50, SocRsvMax=950,
                       SoCRsvMin=100, SoC=625, SoC_SF=-1)),
    (124, M124, spread(M124, StorCtl_Mod=0, MinRsvPct=10, ChaState=60, OutWRte=0, InWRte=0,
                       MinRsvPct_SF=0, ChaState_SF=0, InOutWRte_SF=-1)),
)  # fmt: skip


def test_battery_states_its_charge_the_plan_starts_from_it_and_a_setpoint_limits_it(
    node: Any, modbus_server: Any
) -> None:
    units, op = node
    server = modbus_server({1: BATTERY_MAP})
    units.start(
        "action", "battery", "sunspec_storage", "--period-s", "0.2",
        host="127.0.0.1", port=server.port, rated_kw=5, capacity_kwh=CAPACITY_KWH, timeout_s=0.5,
    )  # fmt: skip
    status_topic = render("actuator_status", node=NODE, unit="battery")
    status = until(lambda: op.latest(status_topic), what="a status")
    assert status.soc == pytest.approx(0.625)
    assert (status.soc_min, status.soc_max) == (pytest.approx(0.10), pytest.approx(0.95))
    assert status.power_kw == pytest.approx(1.5) and (status.min_kw, status.max_kw) == (-5, 5)
    meta = op.latest(render("unit_meta", node=NODE, unit="battery"))
    assert meta.quantity == "storage" and meta.capacity_kwh == CAPACITY_KWH

    # What the governance makes of it: a store starting from the charge the device stated.
    state = op.governance_view("battery", status)
    [store] = horizon_offer(state, 0, 8, 15.0, (-20.0, 20.0))[0].storage
    assert store.soc_kwh == pytest.approx(0.625 * CAPACITY_KWH)
    assert store.soc_min_kwh == pytest.approx(0.10 * CAPACITY_KWH)
    assert store.capacity_kwh == pytest.approx(0.95 * CAPACITY_KWH)

    # 255 %: not reported, one line saying what was expected; the power still is.
    soc_at = AT[802] + M802["SoC"]
    server.patch[1] = {soc_at: 2550}
    until(lambda: (s := op.latest(status_topic)) and s.soc is None, what="a status without soc")
    time.sleep(0.6)  # three more polls: still one line
    log = units.log("battery")
    assert log.count("state of charge not reported") == 1
    assert "SoC 255 % is out of range (expected 0..100 %)" in log
    assert op.latest(status_topic).power_kw == pytest.approx(1.5)
    server.patch[1] = {soc_at: 625}
    until(lambda: (s := op.latest(status_topic)) and s.soc is not None, what="the soc again")

    # Charge at 2 kW: InWRte 40 % (400 x 10^-1), OutWRte 0, both limits in force.
    op.client.publish(
        render("command", node=NODE, unit="battery"),
        messages.encode(messages.Command(seq=1, ts_s=time.time(), setpoint_kw=-2.0)),
    )
    until(lambda: (s := op.latest(status_topic)) and s.seq == 1, what="the command applied")
    regs = server.registers[1]
    ctl = AT[124] - BASE
    assert regs[ctl + M124["InWRte"]] == 400 and regs[ctl + M124["OutWRte"]] == 0
    assert regs[ctl + M124["StorCtl_Mod"]] == 3
    assert units.procs[0].poll() is None
