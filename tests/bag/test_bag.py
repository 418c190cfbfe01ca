"""`redy bag record|play|info`: a node broker's traffic recorded to MCAP (JSON Schema channels
from topics.yaml) and replayed into a fresh broker, which ends with the same retained state."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import orjson
import pytest
from mcap.reader import make_reader

from redy import messages
from redy.topics import json_schema, render

pytestmark = pytest.mark.integration
REDY = [sys.executable, "-m", "redy"]


def _energy(node: str, epoch: int, price: float) -> bytes:
    return messages.encode(
        messages.NodeEnergyState(
            node=node, ts_s=float(epoch), production_kw=3.0, consumption_kw=1.0, net_kw=2.0,
            flex_up_kw=0.0, flex_down_kw=0.0, cost_eur_h=0.0, storage_kwh=0.0,
            storage_capacity_kwh=0.0, forecast_kw=(), units_online=1, units_total=1,
            epoch=epoch, price_eur_mwh=price, status="cleared",
        )
    )  # fmt: skip


def _retained(mqtt_client: Any, port: int, user: str | None, password: str | None) -> dict:
    """The retained store of a broker: what a fresh subscriber gets at once, topic -> payload."""
    c = mqtt_client(port, user, password)
    got = {topic: bytes(m.payload) for topic, m in c.retained("redy/#").items()}
    c.close()
    return got


def test_record_info_and_play_reproduce_the_retained_state(
    process_broker: Any, mqtt_client: Any, tmp_path: Path, plain_broker: Any
) -> None:
    b = process_broker("house-1", {"meter": "detection"})
    gov = mqtt_client(b.port, "governance", b.credentials.password("governance"))
    meter = mqtt_client(b.unit_port, "meter", b.credentials.password("meter"))
    state_topic = render("node_state", node="house-1")
    gov.publish(state_topic, _energy("house-1", 1, 80.0), retain=True)  # before the recording
    meter.publish(render("unit_state", node="house-1", unit="meter"),
                  messages.encode(messages.UnitState(state="online", bd_seq=1)), retain=True)  # fmt: skip
    out = tmp_path / "house-1.mcap"
    rec = subprocess.Popen(
        [*REDY, "bag", "record", "--broker", b.uri, "--credentials", str(b.config.credentials_path),
         "-o", str(out), "--duration", "4"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert rec.stdout is not None
    assert rec.stdout.readline().startswith("recording redy/#")  # subscribed from here on
    # one epoch of traffic: live measurements, then the node's new state and view (retained)
    for seq in range(3):
        m = messages.Measurement(seq=seq, ts_s=float(seq), power_kw=-1.0, energy_kwh=0.1 * seq)
        meter.publish(
            render("measurement", node="house-1", unit="meter"), messages.encode(m), qos=0
        )
    gov.publish(state_topic, _energy("house-1", 2, 91.5), retain=True)
    entries = (messages.ViewEntry(node="gas-1", broker="mqtt://127.0.0.1:28841", age=1),)
    gov.publish(render("view", node="house-1"),
                messages.encode(messages.View(node="house-1", ts_s=2.0, entries=entries)),
                retain=True)  # fmt: skip
    stdout, stderr = rec.communicate(timeout=30)
    assert rec.returncode == 0, stderr
    assert "recorded 7 messages on 4 topics" in stdout  # 2 retained at start, 3 live, 2 new

    # every channel has the JSON Schema of its type, and every message validates against it
    with out.open("rb") as f:
        for schema, channel, message in make_reader(f).iter_messages():
            assert schema is not None and schema.encoding == "jsonschema"
            assert channel.message_encoding == "json"
            jsonschema.validate(orjson.loads(message.data), orjson.loads(schema.data))
            assert orjson.loads(schema.data) == json_schema(schema.name)

    info = orjson.loads(subprocess.run([*REDY, "bag", "info", str(out), "--json"],
                                       capture_output=True, text=True).stdout)  # fmt: skip
    assert info["messages"] == 7
    assert info["topics"][state_topic] == {"type": "NodeEnergyState", "count": 2, "retained": True}
    meas = info["topics"][render("measurement", node="house-1", unit="meter")]
    assert meas == {"type": "Measurement", "count": 3, "retained": False}

    port = plain_broker()
    played = subprocess.run(
        [*REDY, "bag", "play", str(out), "--broker", f"mqtt://127.0.0.1:{port}", "--rate", "0"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert played.returncode == 0, played.stderr
    truth = _retained(mqtt_client, b.port, "operator", b.credentials.password("operator"))
    assert _retained(mqtt_client, port, None, None) == truth
    assert messages.decode(state_topic, truth[state_topic]).epoch == 2


def test_a_file_that_is_not_a_recording_is_one_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "x.mcap"
    bad.write_bytes(b"not an mcap file")
    for args in (("info", str(bad)), ("play", str(bad), "--broker", "mqtt://127.0.0.1:1")):
        done = subprocess.run([*REDY, "bag", *args], capture_output=True, text=True, timeout=30)
        assert done.returncode == 2 and done.stderr.startswith("error: "), done.stderr
        assert "not an MCAP recording" in done.stderr and done.stderr.count("\n") == 1
