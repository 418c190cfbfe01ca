"""Unit processes against a real broker: birth, Will, idempotent commands, bad input, restart."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from polling import until

from redy import messages
from redy.topics import render

pytestmark = pytest.mark.e2e

BIRTHS = {"meter": "detection", "battery": "action"}  # the two units most tests start
UNITS = {**BIRTHS, "ev": "action"}


class Procs:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, broker: Any, *args: str, log: str) -> subprocess.Popen[bytes]:
        argv = [
            sys.executable,
            "-m",
            "redy",
            *args,
            "--node",
            "house-1",
            "--broker",
            broker.uri if args[0] == "governance" else broker.unit_uri,
            "--credentials",
            str(broker.config.credentials_path),
        ]
        with open(self.tmp / log, "wb") as f:
            p = subprocess.Popen(argv, stdout=f, stderr=f)
        self.procs.append(p)
        return p

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Procs]:
    p = Procs(tmp_path)
    yield p
    p.stop()


class Watch:
    """Latest decoded message per topic, from an operator subscription."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.latest: dict[str, Any] = {}
        self.retained: dict[str, bool] = {}

    def pump(self) -> None:
        for m in self.client.drain():
            try:
                self.latest[m.topic] = messages.decode(m.topic, m.payload)
                self.retained[m.topic] = bool(m.retain)
            except messages.InvalidMessage:
                pass

    def get(self, topic: str) -> Any:
        self.pump()
        return self.latest.get(topic)


@pytest.fixture
def node(process_broker: Any, mqtt_client: Any) -> tuple[Any, Watch]:
    broker = process_broker("house-1", UNITS)
    operator = mqtt_client(broker.port, "operator", broker.credentials.password("operator"))
    operator.subscribe("redy/house-1/#")
    return broker, Watch(operator)


def _detection(procs: Procs, broker: Any) -> subprocess.Popen[bytes]:
    return procs.start(
        broker,
        "detection",
        "--unit",
        "meter",
        "--device",
        "household_load",
        "--period-s",
        "0.2",
        "--keepalive-s",
        "2",
        log="meter.log",
    )


def _action(procs: Procs, broker: Any) -> subprocess.Popen[bytes]:
    return procs.start(
        broker,
        "action",
        "--unit",
        "battery",
        "--device",
        "battery",
        "--period-s",
        "0.2",
        "--keepalive-s",
        "2",
        log="battery.log",
    )


def test_birth_and_online_state_are_retained_and_measurements_flow(
    node: tuple[Any, Watch], procs: Procs, mqtt_client: Any
) -> None:
    broker, watch = node
    _detection(procs, broker)
    _action(procs, broker)
    measurement = render("measurement", node="house-1", unit="meter")
    m = until(lambda: watch.get(measurement), what="a measurement")
    assert m.power_kw < 0  # a load consumes
    for unit in BIRTHS:  # both births are out before the late subscriber comes
        state_topic = render("unit_state", node="house-1", unit=unit)
        until(lambda t=state_topic: watch.get(t), what=f"{unit} online")
    # A late subscriber gets births and states from the broker's retained store.
    late = mqtt_client(broker.port, "operator", broker.credentials.password("operator"))
    got = {
        x.topic: (x.retain, messages.decode(x.topic, x.payload))
        for x in late.retained("redy/house-1/units/#").values()
    }
    for unit, role in BIRTHS.items():
        retained, meta = got[render("unit_meta", node="house-1", unit=unit)]
        assert retained and meta.role == role
        retained, state = got[render("unit_state", node="house-1", unit=unit)]
        assert retained and state.state == "online" and state.bd_seq == meta.bd_seq


def test_kill9_of_an_action_unit_turns_it_offline_and_governance_drops_its_flexibility(
    node: tuple[Any, Watch], procs: Procs, mqtt_client: Any
) -> None:
    broker, watch = node
    procs.start(broker, "governance", "--period-s", "0.3", log="governance.log")
    action = _action(procs, broker)
    state_topic = render("node_state", node="house-1")
    until(lambda: (s := watch.get(state_topic)) and s.flex_up_kw > 0, what="flexibility")
    action.kill()  # SIGKILL: no clean stop, the broker must send the Will
    killed = time.monotonic()
    unit_state = render("unit_state", node="house-1", unit="battery")
    until(
        lambda: (s := watch.get(unit_state)) and s.state == "offline", timeout_s=8, what="the Will"
    )
    will_after_s = time.monotonic() - killed
    late = mqtt_client(broker.port, "operator", broker.credentials.password("operator"))
    late.subscribe(unit_state)
    retained = late.wait_for(unit_state)
    assert retained.retain and messages.decode(unit_state, retained.payload).state == "offline"
    assert will_after_s <= 2 * 1.5 + 1.0  # keepalive 2 s: the broker waits 1.5 x keepalive
    until(
        lambda: (
            (s := watch.get(state_topic))
            and s.flex_up_kw == 0
            and s.flex_down_kw == 0
            and s.units_online == 0
        ),
        timeout_s=3,
        what="flexibility dropped",
    )


def test_ev_status_carries_a_willingness_to_pay_that_rises_toward_its_deadline(
    node: tuple[Any, Watch], procs: Procs
) -> None:
    broker, watch = node
    # 10 kWh needed within four simulated hours at 11 kW, 1800 simulated s per real s; off.
    procs.start(
        broker,
        "action",
        "--unit",
        "ev",
        "--device",
        "ev_charger",
        "--param",
        "energy_needed_kwh=10",
        "--param",
        "deadline_s=14400",
        "--speed",
        "1800",
        "--period-s",
        "0.2",
        log="ev.log",
    )
    status_topic = render("actuator_status", node="house-1", unit="ev")
    first = until(lambda: watch.get(status_topic), what="first status")
    op = watch.client
    op.publish(
        render("command", node="house-1", unit="ev"),
        messages.encode(messages.Command(seq=1, ts_s=0.0, on=False)),
    )
    late = until(
        lambda: (s := watch.get(status_topic)) and s.ts_s > 7200 and not s.on and s,
        what="two hours of waiting",
    )
    assert first.marginal_cost_eur_mwh < late.marginal_cost_eur_mwh <= 400.0


def test_battery_status_states_storage_prices_that_fall_as_it_charges(
    node: tuple[Any, Watch], procs: Procs, mqtt_client: Any
) -> None:
    broker, watch = node
    _action(procs, broker)  # 13.5 kWh, 5 kW, half full; one simulated second per second
    status_topic = render("actuator_status", node="house-1", unit="battery")
    first = until(lambda: watch.get(status_topic), what="first status")
    assert first.charge_below_eur_mwh < first.discharge_above_eur_mwh
    op = mqtt_client(broker.port, "operator", broker.credentials.password("operator"))
    op.publish(
        render("command", node="house-1", unit="battery"),
        messages.encode(messages.Command(seq=1, ts_s=1.0, setpoint_kw=-5.0)),
    )
    later = until(
        lambda: (
            (s := watch.get(status_topic)) and s.power_kw < -4.0 and s.ts_s > first.ts_s + 3 and s
        ),
        what="charging for a few seconds",
    )
    assert later.charge_below_eur_mwh < first.charge_below_eur_mwh
    assert later.discharge_above_eur_mwh < first.discharge_above_eur_mwh


def test_old_or_repeated_command_is_acknowledged_and_ignored(
    node: tuple[Any, Watch], procs: Procs, mqtt_client: Any
) -> None:
    broker, watch = node
    _action(procs, broker)
    status_topic = render("actuator_status", node="house-1", unit="battery")
    until(lambda: watch.get(status_topic), what="first status")
    op = mqtt_client(broker.port, "operator", broker.credentials.password("operator"))
    command = render("command", node="house-1", unit="battery")
    op.publish(command, messages.encode(messages.Command(seq=10, ts_s=1.0, setpoint_kw=-2.0)))
    until(lambda: (s := watch.get(status_topic)) and s.seq == 10, what="seq 10 applied")
    op.publish(command, messages.encode(messages.Command(seq=7, ts_s=2.0, setpoint_kw=4.0)))
    s = until(
        lambda: (s := watch.get(status_topic)) and s.note and "ignored" in s.note and s,
        what="old command acknowledged",
    )
    assert s.seq == 10 and s.setpoint_kw == -2.0


def test_malformed_command_is_logged_and_the_unit_keeps_working(
    node: tuple[Any, Watch], procs: Procs, mqtt_client: Any
) -> None:
    broker, watch = node
    action = _action(procs, broker)
    status_topic = render("actuator_status", node="house-1", unit="battery")
    until(lambda: watch.get(status_topic), what="first status")
    op = mqtt_client(broker.port, "operator", broker.credentials.password("operator"))
    command = render("command", node="house-1", unit="battery")
    op.publish(command, b"{this is not json")
    op.publish(command, b'{"seq": "x", "ts_s": 1, "on": true}')
    op.publish(command, b"x" * 70_000)
    op.publish(command, messages.encode(messages.Command(seq=3, ts_s=1.0, setpoint_kw=1.5)))
    until(
        lambda: (s := watch.get(status_topic)) and s.seq == 3 and s.setpoint_kw == 1.5,
        what="valid command applied after bad ones",
    )
    assert action.poll() is None
    log = (procs.tmp / "battery.log").read_text()
    assert log.count("dropped invalid message") >= 2
    assert "malformed JSON" in log and "expected an integer" in log


def test_unit_republishes_its_birth_after_a_broker_restart(
    node: tuple[Any, Watch], procs: Procs, mqtt_client: Any
) -> None:
    broker, watch = node
    _detection(procs, broker)
    meta_topic = render("unit_meta", node="house-1", unit="meter")
    until(lambda: watch.get(meta_topic), timeout_s=30, what="the first birth")
    broker.stop()
    shutil.rmtree(broker.config.node_dir / "data")  # forget every retained message
    broker.start()
    op = mqtt_client(broker.port, "operator", broker.credentials.password("operator"))
    # Retained or live, the second birth reaches a subscriber whenever it subscribed.
    op.subscribe(meta_topic)
    got = op.wait_for(meta_topic, 15)
    meta = messages.decode(got.topic, got.payload)
    assert meta.unit == "meter"
    until(lambda: "birth 2" in (procs.tmp / "meter.log").read_text(), what="second birth logged")
