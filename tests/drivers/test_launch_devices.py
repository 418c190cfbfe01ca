"""`redy launch launch/eco_house_devices.yaml` end to end: the shipped example on real
counterparts (an inverter and a meter on one Modbus TCP gateway, a plug on a Zigbee2MQTT
broker); the node's governance sees all three devices' power."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest
from conftest import until
from counterparts import M203, M701, M704, spread, sunspec_map, words
from netports import node_block

from redy import messages
from redy.brokers import load_credentials, try_connect
from redy.topics import render

pytestmark = pytest.mark.e2e

LAUNCH = Path(__file__).resolve().parents[2] / "launch" / "eco_house_devices.yaml"

INVERTER, _ = sunspec_map(
    (701, M701, spread(M701, W=4000, W_SF=0, TotWhInj=words(10**6, 4), TotWh_SF=0)),
    (704, M704, spread(M704, WMaxLimPctEna=0, WMaxLimPct=100, WMaxLimPct_SF=0)),
)
METER, _ = sunspec_map(
    (203, M203, spread(M203, W=1234, W_SF=-1, TotWhImp=words(12000, 2), TotWh_SF=0)),
)


def _node_port() -> int:
    """A port P with its grid (+10000) and unit (+20000) ports free too."""
    return node_block()


def test_the_shipped_house_on_real_devices_runs_and_its_governance_counts_them(
    tmp_path: Path, modbus_server: Any, z2m_broker: Any, mqtt_client: Any
) -> None:
    gateway = modbus_server({1: INVERTER, 2: METER})
    z2m = mqtt_client(z2m_broker.port, None, None)
    z2m.publish("zigbee2mqtt/bridge/state", b'{"state":"online"}', retain=True)
    z2m.publish("zigbee2mqtt/boiler/availability", b'{"state":"online"}', retain=True)
    z2m.publish(
        "zigbee2mqtt/boiler",
        orjson.dumps({"state": "ON", "power": 2350, "energy": 3.2}),
        retain=True,
    )
    port = _node_port()
    launcher = subprocess.Popen(
        [sys.executable, "-m", "redy", "launch", str(LAUNCH), "--duration", "60",
         "--state-dir", str(tmp_path), f"port:={port}", f"inverter_port:={gateway.port}",
         "inverter_kw:=5", f"z2m_broker:=mqtt://127.0.0.1:{z2m_broker.port}", "plug:=boiler"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        creds = tmp_path / "house-real" / "credentials.json"
        until(creds.exists, 20, "the node's credentials")
        password = load_credentials(creds).password("operator")
        until(lambda: try_connect("127.0.0.1", port, "operator", password)[0], 20, "the broker")
        op = mqtt_client(port, "operator", password)
        topic = render("node_state", node="house-real")
        op.subscribe(topic)

        def counted() -> Any:
            for m in op.drain():
                s = messages.decode(m.topic, m.payload)
                if s.units_online == 3 and s.production_kw > 0 and s.consumption_kw > 2.4:
                    return s
            return None

        state = until(counted, 30, "all three devices counted in the node's state")
        assert state.production_kw == pytest.approx(4.0)  # the inverter
        assert state.consumption_kw == pytest.approx(0.1234 + 2.35)  # the meter and the plug
        assert state.flex_down_kw == pytest.approx(4.0 + 0.0)  # curtail the inverter to 0
    finally:
        launcher.terminate()
        _, err = launcher.communicate(timeout=30)
    assert launcher.returncode == 0, err[-2000:]
