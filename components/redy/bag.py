"""`redy bag record|play|info`: record a node broker's traffic to MCAP and replay it, like
`ros2 bag`.

A recording has one JSON Schema per message type (derived from topics.yaml, so Foxglove and
other MCAP viewers decode it) and one channel per topic and retain flag: the subscription asks
for MQTT 5 retain-as-published, so a message published retained is recorded as such even when it
arrives live. Playing a recording publishes each message with its recorded retain flag and the
topic's QoS and expiry from topics.yaml, in order and (by default) with the recorded timing: a
fresh broker ends up with the retained state the recorded one had.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import click
import orjson
from paho.mqtt.subscribeoptions import SubscribeOptions

from redy.cli_auth import password_for, with_auth
from redy.errors import BagError, BrokerError, InvalidMessage
from redy.topics import CONTRACT, json_schema
from redy.transport.paho_client import publish_properties
from redy.transport.session import Received, connect

PROFILE = "redy"  # MCAP profile: MQTT topics of the ReDy tree


class _Recorder:
    """Writes messages to an MCAP file, registering schemas and channels on first use."""

    def __init__(self, path: Path) -> None:
        from mcap.writer import CompressionType, Writer

        try:
            self._stream = path.open("wb")
        except OSError as exc:
            raise BagError(f"cannot write {path}: {exc.strerror}") from None
        self._writer = Writer(self._stream, compression=CompressionType.NONE)
        self._writer.start(profile=PROFILE, library="redy")
        self._schemas: dict[str, int] = {}
        self._channels: dict[tuple[str, bool], int] = {}
        self._seq = 0
        self.counts: Counter[str] = Counter()
        self.skipped = 0

    def _channel(self, topic: str, retained: bool) -> int | None:
        key = (topic, retained)
        if key in self._channels:
            return self._channels[key]
        try:
            spec, _ = CONTRACT.match(topic)
        except InvalidMessage:
            return None
        if spec.type not in self._schemas:
            self._schemas[spec.type] = self._writer.register_schema(
                name=spec.type, encoding="jsonschema", data=orjson.dumps(json_schema(spec.type))
            )
        self._channels[key] = self._writer.register_channel(
            topic=topic,
            message_encoding="json",
            schema_id=self._schemas[spec.type],
            metadata={"retained": "true" if retained else "false", "qos": str(spec.qos)},
        )
        return self._channels[key]

    def add(self, r: Received) -> None:
        channel = self._channel(r.topic, r.retained)
        if channel is None:
            self.skipped += 1  # outside the ReDy tree (no schema to give it)
            return
        self._seq += 1
        self._writer.add_message(channel, r.t_ns, r.payload, r.t_ns, sequence=self._seq)
        self.counts[r.topic] += 1

    def close(self) -> None:
        self._writer.finish()  # type: ignore[no-untyped-call]  # mcap: untyped
        self._stream.close()


def _read(path: str) -> Any:
    from mcap.exceptions import McapError
    from mcap.reader import make_reader

    try:
        stream = Path(path).open("rb")  # noqa: SIM115 (closed by the caller)
    except OSError as exc:
        raise BagError(f"cannot read {path}: {exc.strerror}") from None
    try:
        return stream, make_reader(stream)
    except (McapError, ValueError, EOFError) as exc:
        stream.close()
        raise BagError(f"{path} is not an MCAP recording: {exc}") from None


def _messages(path: str) -> list[tuple[str, bool, int, bytes]]:
    """(topic, retained, log_time ns, payload) of every message, in log-time order."""
    from mcap.exceptions import McapError

    stream, reader = _read(path)
    out = []
    try:
        for _schema, channel, message in reader.iter_messages(log_time_order=True):
            retained = channel.metadata.get("retained") == "true"
            out.append((channel.topic, retained, message.log_time, bytes(message.data)))
    except (McapError, ValueError, EOFError) as exc:
        raise BagError(f"{path}: damaged recording ({exc})") from None
    finally:
        stream.close()
    return out


@click.group()
def bag() -> None:
    """Record a broker's traffic to MCAP, replay it, describe it (like ros2 bag)."""


@bag.command("record")
@click.argument("patterns", nargs=-1, metavar="[TOPICS]...")
@with_auth
@click.option("-o", "--output", type=click.Path(dir_okay=False), required=True, help="FILE.mcap")
@click.option("--duration", "duration_s", type=click.FloatRange(0, min_open=True), default=None,
              help="Stop after S seconds (default: Ctrl-C).")  # fmt: skip
@click.option("--count", type=click.IntRange(1), default=None, help="Stop after N messages.")
def record(
    patterns: tuple[str, ...],
    broker: str,
    user: str,
    password: str | None,
    credentials: str | None,
    output: str,
    duration_s: float | None,
    count: int | None,
) -> None:
    """Record TOPICS (MQTT patterns, default redy/#) of a broker to an MCAP file."""
    inbox: queue.Queue[Received] = queue.Queue()
    rec = _Recorder(Path(output))
    deadline = time.monotonic() + duration_s if duration_s else float("inf")
    total = 0
    try:
        with connect(broker, user, password_for(user, password, credentials), inbox) as client:
            acked = threading.Semaphore(0)
            client.on_subscribe = lambda *_a: acked.release()
            wanted = patterns or ("redy/#",)
            for p in wanted:
                client.subscribe(p, options=SubscribeOptions(qos=1, retainAsPublished=True))
            for p in wanted:
                if not acked.acquire(timeout=5.0):
                    raise BrokerError(f"{broker} did not acknowledge the subscription to {p}")
            # said once subscribed, so whoever starts a recording knows when traffic counts
            click.echo(f"recording {' '.join(wanted)} from {broker} to {output}")
            while time.monotonic() < deadline and (count is None or total < count):
                try:
                    r = inbox.get(timeout=0.1)
                except queue.Empty:
                    continue
                rec.add(r)
                total += 1
    except KeyboardInterrupt:
        pass  # Ctrl-C ends a recording; what was received is kept
    finally:
        rec.close()
    kept = sum(rec.counts.values())
    click.echo(f"recorded {kept} messages on {len(rec.counts)} topics to {output}"
               + (f" ({rec.skipped} outside the ReDy tree skipped)" if rec.skipped else ""))  # fmt: skip


@bag.command("play")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--broker", required=True, envvar="REDY_BROKER", help="Broker to publish to.")
@click.option("--user", default=None, envvar="REDY_USER", help="Default: anonymous.")
@click.option("--password", default=None, envvar="REDY_PASSWORD")
@click.option("--credentials", type=click.Path(dir_okay=False), default=None,
              envvar="REDY_CREDENTIALS")  # fmt: skip
@click.option("--rate", type=click.FloatRange(0), default=1.0, show_default=True,
              help="Speed factor of the recorded timing; 0: as fast as possible.")  # fmt: skip
def play(
    file: str,
    broker: str,
    user: str | None,
    password: str | None,
    credentials: str | None,
    rate: float,
) -> None:
    """Publish a recording's messages with their retain flags, QoS and expiry, in order."""
    msgs = _messages(file)
    secret = None if user is None else password_for(user, password, credentials)
    refused = 0
    with connect(broker, user, secret) as client:
        start_wall, start_log = time.monotonic(), msgs[0][2] if msgs else 0
        for topic, retained, log_ns, payload in msgs:
            if rate > 0:
                delay = (log_ns - start_log) / 1e9 / rate - (time.monotonic() - start_wall)
                if delay > 0:
                    time.sleep(delay)
            spec, _ = CONTRACT.match(topic)
            props = publish_properties(spec)
            info = client.publish(topic, payload, qos=spec.qos, retain=retained, properties=props)
            if spec.qos:
                info.wait_for_publish(timeout=5.0)
                if not info.is_published():
                    refused += 1
    if refused:
        raise BrokerError(f"{broker} did not acknowledge {refused} of {len(msgs)} messages")
    click.echo(f"played {len(msgs)} messages from {file} to {broker}")


@bag.command("info")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="One JSON object.")
def info(file: str, as_json: bool) -> None:
    """Describe a recording: duration, message count, and each topic's type and count."""
    from mcap.exceptions import McapError

    stream, reader = _read(file)
    try:
        summary = reader.get_summary()
    except (McapError, ValueError, EOFError) as exc:
        raise BagError(f"{file}: damaged recording ({exc})") from None
    finally:
        stream.close()
    if summary is None or summary.statistics is None:
        raise BagError(f"{file}: no summary section (recording not closed cleanly?)")
    stats = summary.statistics
    topics: dict[str, dict[str, Any]] = {}
    for cid, ch in summary.channels.items():
        row = topics.setdefault(
            ch.topic,
            {"type": summary.schemas[ch.schema_id].name if ch.schema_id else None, "count": 0,
             "retained": False},
        )  # fmt: skip
        row["count"] += stats.channel_message_counts.get(cid, 0)
        row["retained"] = row["retained"] or ch.metadata.get("retained") == "true"
    out = {
        "file": file,
        "messages": stats.message_count,
        "start_ns": stats.message_start_time,
        "end_ns": stats.message_end_time,
        "duration_s": (stats.message_end_time - stats.message_start_time) / 1e9,
        "schemas": sorted(s.name for s in summary.schemas.values()),
        "topics": dict(sorted(topics.items())),
    }
    if as_json:
        click.echo(orjson.dumps(out).decode())
        return
    click.echo(f"file:      {file}")
    click.echo(f"duration:  {out['duration_s']:.3f} s")
    click.echo(f"messages:  {out['messages']} on {len(topics)} topics")
    click.echo(f"schemas:   {', '.join(out['schemas'])} (jsonschema)")
    for name, row in out["topics"].items():
        flag = " retained" if row["retained"] else ""
        click.echo(f"  {name}  [{row['type']}] x{row['count']}{flag}")
