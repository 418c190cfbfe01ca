"""Decentralized balancing end to end: the 12-node grid of launch/grid12.yaml (figure 3 and nine
more nodes) reaches a common price each epoch over real brokers; when the gas plant's broker and
governance hang (SIGSTOP: a killed one would be restarted by the launcher), the others
re-balance in the next epoch: the price rises over the
furnace's willingness to pay, the furnace sheds to its dispatch at that price and the house
batteries discharge, as the retained states show."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from netports import OFFSETS
from polling import until

from redy import messages
from redy.brokers import load_credentials, port_is_free, try_connect
from redy.launch.parser import parse

pytestmark = pytest.mark.e2e

LAUNCH = Path(__file__).resolve().parents[2] / "launch" / "grid12.yaml"
EPOCH_S = 4.0


class Watch:
    def __init__(self, client: Any) -> None:
        self.client = client
        self.latest: dict[str, Any] = {}

    def get(self, topic: str) -> Any:
        for m in self.client.drain():
            with contextlib.suppress(messages.InvalidMessage):
                self.latest[m.topic] = messages.decode(m.topic, m.payload)
        return self.latest.get(topic)


def _states(watches: dict[str, Watch]) -> dict[str, messages.NodeEnergyState]:
    out = {}
    for node, w in watches.items():
        s = w.get(f"redy/{node}/governance/state")
        if s is not None and s.epoch is not None:
            out[node] = s
    return out


def _agreed(
    watches: dict[str, Watch], after: int = 0, tol: float = 5.0
) -> tuple[int, float, dict[str, Any]] | None:
    """(epoch, price, states) once every node reports the same epoch > `after` and prices
    within `tol` EUR/MWh of each other."""
    states = _states(watches)
    if len(states) < len(watches):
        return None
    epochs = {s.epoch for s in states.values()}
    if len(epochs) != 1 or (epoch := epochs.pop()) is None or epoch <= after:
        return None
    prices = [s.price_eur_mwh for s in states.values() if s.price_eur_mwh is not None]
    if len(prices) < len(states) or max(prices) - min(prices) > tol:
        return None
    return epoch, sum(prices) / len(prices), states


def _summary(watches: dict[str, Watch]) -> list[tuple[str, Any, Any, Any]]:
    return [
        (n, s.epoch, s.price_eur_mwh and round(s.price_eur_mwh, 3), s.status)
        for n, s in sorted(_states(watches).items())
    ]


def _pids(pattern: str) -> list[int]:
    out = subprocess.run(["ps", "-ww", "-eo", "pid=,args="], capture_output=True, text=True)
    return [int(line.split()[0]) for line in out.stdout.splitlines() if pattern in line]


def test_grid_reaches_a_common_price_and_rebalances_after_the_gas_plant_dies(
    tmp_path: Path, mqtt_client: Any
) -> None:
    desc = parse(LAUNCH)
    ports = {n.node: n.broker.port for n in desc.nodes}
    assert all(port_is_free(p + o) for p in ports.values() for o in OFFSETS)
    with open(tmp_path / "launch.log", "wb") as log:  # the child keeps its own descriptor
        launcher = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "redy",
                "launch",
                str(LAUNCH),
                f"epoch_s:={EPOCH_S}",
                "--compose",
                "--state-dir",
                str(tmp_path),
            ],
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
    frozen: list[int] = []
    try:
        until(
            lambda: all((tmp_path / n / "credentials.json").exists() for n in ports),
            30,
            "brokers up",
        )
        watches = {}
        for node, port in ports.items():
            password = load_credentials(tmp_path / node / "credentials.json").password("operator")
            # Credentials are written before the broker starts: wait until it accepts them.
            until(
                lambda p=port, pw=password: try_connect("127.0.0.1", p, "operator", pw)[0],
                30,
                f"broker of {node}",
            )
            c = mqtt_client(port, "operator", password)
            c.subscribe(f"redy/{node}/governance/state")
            c.subscribe(f"redy/{node}/action/+/status")
            watches[node] = Watch(c)

        first = until(lambda: _agreed(watches), 40, "a first common price")
        # Once the gas plant has ramped up, it sets the price: loads run, batteries wait.
        second = until(
            lambda: (a := _agreed(watches, first[0])) and a[1] < 140.0 and a,
            8 * EPOCH_S,
            "a common price set by the gas plant",
        )

        killed_in = max(second[0], int(time.time() // EPOCH_S))
        # The launcher restarts a killed broker and respawns its units, so a plant that is
        # gone for good is one that hangs: its broker and units stop answering (SIGSTOP).
        frozen.extend(_pids(f"{tmp_path}/gas-1/"))
        for pid in frozen:
            os.kill(pid, signal.SIGSTOP)
        survivors = {n: w for n, w in watches.items() if n != "gas-1"}
        # With the plant hung, no cheap supply is left: the survivors clear one price
        # (to the market's resolution, 0.01 EUR/MWh, on every node) at the furnace's
        # willingness to pay (140), where the furnace is the marginal bid and sheds load.
        after = until(
            lambda: (a := _agreed(survivors, killed_in, tol=0.01)) and a[1] > 140.0 - 0.01 and a,
            5 * EPOCH_S,
            "survivors agreeing on a price over 140 after the crash",
            seen=lambda: _summary(survivors),
        )
        _, price, states = after
        assert price > 140.0 - 0.01
        assert "gas-1" not in states

        def statuses() -> list[Any]:
            return [
                survivors["factory-1"].get("redy/factory-1/governance/state"),
                survivors["factory-1"].get("redy/factory-1/action/furnace/status"),
                survivors["house-2"].get("redy/house-2/action/battery/status"),
            ]

        def shed_and_discharged() -> bool:
            factory, furnace, battery = statuses()
            if not (factory and furnace and battery) or factory.price_eur_mwh is None:
                return False
            # Merit order: at its willingness to pay (to the market's resolution) the furnace is
            # the marginal bid and runs a part; over it, none.
            over = factory.price_eur_mwh > furnace.marginal_cost_eur_mwh + 0.01
            return (
                furnace.power_kw > furnace.min_kw + 1.0
                and (not over or abs(furnace.power_kw - furnace.max_kw) < 1.0)
                and battery.power_kw > 0.0
            )

        until(
            shed_and_discharged,
            2 * EPOCH_S,
            "flexible load shed and battery discharging",
            seen=statuses,
        )
    finally:
        for pid in frozen:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        launcher.send_signal(signal.SIGTERM)
        try:
            launcher.wait(40)
        except subprocess.TimeoutExpired:
            launcher.kill()
