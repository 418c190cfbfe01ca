"""`redy dashboard --broker URI`: the page's data from brokers given one by one."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
import urllib.request
from typing import Any

import pytest

from redy import messages
from redy.topics import render

pytestmark = pytest.mark.integration
REDY = [sys.executable, "-m", "redy"]


def test_dashboard_of_given_brokers_serves_their_nodes_state(
    process_broker: Any, mqtt_client: Any
) -> None:
    b = process_broker("gas-1", {})
    gov = mqtt_client(b.port, "governance", b.credentials.password("governance"))
    desc = messages.NodeDescriptor(node="gas-1", kind="gas_plant", broker=b.grid_uri,
                                   capabilities=("produce",), ts_s=1.0)  # fmt: skip
    state = messages.NodeEnergyState(
        node="gas-1", ts_s=1.0, production_kw=900.0, consumption_kw=10.0, net_kw=890.0,
        flex_up_kw=100.0, flex_down_kw=800.0, cost_eur_h=85.0, storage_kwh=0.0,
        storage_capacity_kwh=0.0, forecast_kw=(), units_online=2, units_total=2, epoch=5,
        price_eur_mwh=95.0, status="cleared",
    )  # fmt: skip
    gov.publish(render("descriptor", node="gas-1"), messages.encode(desc), retain=True)
    gov.publish(render("node_state", node="gas-1"), messages.encode(state), retain=True)
    web = subprocess.Popen(
        [*REDY, "dashboard", "--broker", b.uri, "--credentials", str(b.config.credentials_path),
         "--http-port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert web.stdout is not None
        url = re.search(r"http://\S+", web.stdout.readline())
        assert url, "no address printed"
        deadline = time.monotonic() + 20
        while True:
            with urllib.request.urlopen(url.group(0) + "api/state", timeout=5) as r:
                snap = json.loads(r.read())
            if snap["nodes"] and snap["nodes"][0]["liveness"] == "up":
                break
            assert time.monotonic() < deadline, snap
            time.sleep(0.2)
        (row,) = snap["nodes"]
        assert (row["node"], row["kind"], row["price_eur_mwh"]) == ("gas-1", "gas_plant", 95.0)
        assert snap["common_price"] == {"epoch": 5, "price_eur_mwh": 95.0, "agree": 1, "of": 1}
    finally:
        web.send_signal(signal.SIGTERM)
        _, err = web.communicate(timeout=15)
    assert "Traceback" not in err


def test_dashboard_without_brokers_says_what_it_needs(tmp_path: Any) -> None:
    done = subprocess.run([*REDY, "dashboard"], capture_output=True, text=True, timeout=30)
    assert done.returncode == 2 and "--launch-state DIR" in done.stderr
    empty = subprocess.run([*REDY, "dashboard", "--launch-state", str(tmp_path)],
                           capture_output=True, text=True, timeout=30)  # fmt: skip
    assert (
        empty.returncode == 2 and "no node in" in empty.stderr and "Traceback" not in empty.stderr
    )
