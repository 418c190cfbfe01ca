"""Attacks on identity, each by someone with only what a grid member (or a unit) has, against real
brokers and processes: each is refused or contained, and the node says so in one log line."""

from __future__ import annotations

import asyncio
import functools
import random
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from members import member, start_governance
from polling import until

from redy import messages, pki
from redy.brokers import load_credentials, unit_credentials_path
from redy.errors import PeerImpostor
from redy.membership.cyclon import Cyclon, Neighbour
from redy.topics import render
from redy.transport.peer_links import PeerLinks
from redy.units.node_state import NodeState

pytestmark = pytest.mark.integration


_until = functools.partial(until, timeout_s=15.0)  # processes start here: 15 s


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for p in started:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in started:
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()


def test_a_member_cannot_speak_in_another_nodes_name(
    process_broker: Any, mqtt_client: Any, procs: list[Any], tmp_path: Path
) -> None:
    """The broker refuses a topic in another's name; a message in the member's own topic that
    claims another sender is dropped by the governance, which logs the offender."""
    broker = process_broker("house-1")
    log = tmp_path / "governance.log"
    procs.append(start_governance(broker, log, "--epoch-s", "2"))
    watch = mqtt_client(broker.port, "operator", broker.credentials.password("operator"))
    watch.subscribe("redy/house-1/#")
    evil = mqtt_client(
        broker.config.grid_listener_port,
        None,
        None,
        "evil",
        member(broker.config.state_dir, "evil"),
    )
    forged = messages.Gossip(
        sender="gas-1", epoch=1, round=1, algorithm="pushsum", weight=0.0, values=(1e12,) * 3
    )
    evil.publish(render("gossip", node="house-1", peer="gas-1"), messages.encode(forged))
    evil.publish(render("gossip", node="house-1", peer="evil"), messages.encode(forged))
    request = messages.ShuffleRequest(sender="gas-1", broker="mqtts://127.0.0.1:1", nonce=1)
    evil.publish(render("shuffle", node="house-1", peer="evil"), messages.encode(request))
    marker = render("neighbour_state", node="house-1", peer="evil")
    evil.publish(marker, b"{}")
    seen = [m.topic for m in watch.received_until(marker)]
    assert render("gossip", node="house-1", peer="gas-1") not in seen  # the ACL refused it
    text = _until(
        lambda: (t := log.read_text()).count("in the name of gas-1") >= 2 and t,
        what="the governance logging both forgeries",
    )
    assert "dropped Gossip written by evil in the name of gas-1" in text
    assert "dropped ShuffleRequest written by evil in the name of gas-1" in text


async def test_plain_text_dialling_is_refused_and_leaks_nothing(tmp_path: Path) -> None:
    """A view entry with a plain mqtt:// address: nothing is sent there, not even a CONNECT."""
    got: list[bytes] = []

    async def capture(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        got.append(await reader.read(1024))

    server = await asyncio.start_server(capture, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    links = PeerLinks("me", pki.issue(tmp_path, "me", ["127.0.0.1"]), timeout_s=0.5)
    try:
        with pytest.raises(PeerImpostor, match="plain mqtt:// refused"):
            await links.publish(
                f"mqtt://127.0.0.1:{port}", "redy/x/grid/gossip/me", b"{}", node="x"
            )
        await asyncio.sleep(0.2)
    finally:
        server.close()
    assert got == []


async def test_a_broker_with_another_nodes_certificate_is_a_bogus_entry_not_a_death(
    process_broker: Any, overlay_driver: Any
) -> None:
    """An entry says 'honest' lives at the address of evil's broker: the dial finds evil's
    certificate, drops the entry, and keeps no tombstone for honest (it may be alive)."""
    evil = process_broker("evil")
    me = member(evil.config.state_dir, "me")
    links = PeerLinks("me", me, timeout_s=2.0)
    with pytest.raises(PeerImpostor) as caught:
        await links.publish(
            evil.config.grid_uri, "redy/honest/grid/gossip/me", b"{}", node="honest"
        )
    assert caught.value.presented == "evil"

    core = Cyclon("me", "mqtts://127.0.0.1:1", 4, 2, random.Random(1))
    core.seed([Neighbour("honest", evil.config.grid_uri, 0)])

    driver = overlay_driver(core, links, me)
    await driver.step()
    await links.close_all()
    assert "honest" not in {e.node for e in core.view}
    assert "honest" not in core._tombstones  # no verdict on the node itself
    assert "honest" not in driver.lost


async def test_a_broker_of_another_grid_is_refused(process_broker: Any, tmp_path: Path) -> None:
    stranger = process_broker("house-9", state_dir=tmp_path / "another-grid")
    me = pki.issue(tmp_path / "our-grid", "me", ["127.0.0.1"])
    links = PeerLinks("me", me, timeout_s=2.0)
    with pytest.raises(PeerImpostor, match="certificate refused"):
        await links.publish(stranger.config.grid_uri, "redy/house-9/grid/gossip/me", b"{}")


def test_each_unit_process_is_handed_its_own_password_only(process_broker: Any) -> None:
    broker = process_broker("house-1", {"meter": "detection", "heater": "action"})
    for unit in ("meter", "heater"):
        path = unit_credentials_path(broker.config, unit)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert set(orjson.loads(path.read_bytes())["users"]) == {unit}
        assert load_credentials(path).password(unit) == broker.credentials.password(unit)
    gov = broker.config.node_dir / "governance.json"
    assert set(orjson.loads(gov.read_bytes())["users"]) == {"governance"}
    assert stat.S_IMODE((broker.config.node_dir / "grid.key").stat().st_mode) == 0o600


def test_a_retained_command_with_a_huge_seq_does_not_lock_an_actuator(
    process_broker: Any, mqtt_client: Any, procs: list[Any], tmp_path: Path
) -> None:
    broker = process_broker("house-1", {"battery": "action"})
    op = mqtt_client(broker.port, "operator", broker.credentials.password("operator"))
    command = render("command", node="house-1", unit="battery")
    lock = messages.Command(seq=2**62, ts_s=1.0, setpoint_kw=5.0)
    op.publish(command, messages.encode(lock), retain=True)  # planted before the unit starts
    log = tmp_path / "battery.log"
    with open(log, "wb") as f:
        procs.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "redy",
                    "action",
                    "--node",
                    "house-1",
                    "--broker",
                    broker.config.unit_uri,
                    "--unit",
                    "battery",
                    "--device",
                    "battery",
                    "--credentials",
                    str(unit_credentials_path(broker.config, "battery")),
                    "--period-s",
                    "0.2",
                ],
                stdout=f,
                stderr=f,
            )
        )
    status = render("actuator_status", node="house-1", unit="battery")
    op.subscribe(status)
    _until(lambda: b"online" in log.read_bytes(), what="battery unit up")
    far = messages.Command(seq=int(time.time() * 1000) + 10**9, ts_s=2.0, setpoint_kw=5.0)
    op.publish(command, messages.encode(far))  # live, but absurdly far ahead
    honest = messages.Command(seq=int(time.time() * 1000), ts_s=3.0, setpoint_kw=-2.0)
    op.publish(command, messages.encode(honest))
    got = _until(
        lambda: next(
            (s for m in op.drain() if (s := messages.decode(m.topic, m.payload)).seq == honest.seq),
            None,
        ),
        what="the honest command applied",
    )
    assert got.setpoint_kw == -2.0
    text = log.read_text()
    assert "retained on a topic the contract says is not retained" in text
    assert "implausibly far ahead" in text


def test_a_lying_meter_is_ignored_and_named_once(caplog: pytest.LogCaptureFixture) -> None:
    s = NodeState("house-1")
    meta = messages.UnitMeta(
        unit="meter",
        role="detection",
        device="household_load",
        quantity="consumption",
        rated_power_kw=5.0,
        period_s=1.0,
        bd_seq=0,
        ts_s=0.0,
    )
    s.on_message("redy/house-1/units/meter/meta", meta)
    s.on_message("redy/house-1/units/meter/state", messages.UnitState(state="online", bd_seq=0))
    good = messages.Measurement(seq=1, ts_s=1.0, power_kw=-3.0, energy_kwh=0.0)
    s.on_message("redy/house-1/detection/meter/measurement", good)
    with caplog.at_level("WARNING"):
        for _ in range(3):
            lie = messages.Measurement(seq=2, ts_s=2.0, power_kw=-1e7, energy_kwh=0.0)
            s.on_message("redy/house-1/detection/meter/measurement", lie)
    assert s.units["meter"].measurement == good
    assert s.energy_state(0.0).consumption_kw == pytest.approx(3.0)
    lines = [r.getMessage() for r in caplog.records if "ignores unit meter" in r.getMessage()]
    assert len(lines) == 1 and "rated 5 kW" in lines[0]
