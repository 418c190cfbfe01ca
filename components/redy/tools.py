"""Operator tools, as `ros2 topic` and `ros2 node`: `redy topic list|echo|pub|hz`, `redy view`,
`redy node list|info`. They work on any node's broker with its operator (local listener) or grid
(grid listener) credentials, and validate every payload against topics.yaml.
"""

from __future__ import annotations

import collections
import queue
import secrets
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click
import orjson
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from redy import messages, pki
from redy.brokers.credentials import load_credentials
from redy.errors import BrokerError, InvalidMessage
from redy.topics import CONTRACT, TopicSpec
from redy.transport.paho_client import publish_properties

_CONNECT_TIMEOUT_S = 5.0


class _Received:
    """One message as the tools see it."""

    __slots__ = ("payload", "retained", "t_ns", "t_s", "topic")

    def __init__(self, topic: str, payload: bytes, retained: bool) -> None:
        self.topic = topic
        self.payload = payload
        self.retained = retained
        self.t_s = time.monotonic()
        self.t_ns = time.time_ns()  # wall clock, for recordings


def _password(user: str, password: str | None, credentials: str | None) -> str:
    if password is not None:
        return password
    if credentials is None:
        raise click.UsageError("give --password, or --credentials FILE (a node's credentials.json)")
    # The one reader of credentials files: a bad or unreadable file, or no such account, is the
    # same BrokerError as anywhere else, made one line by the CLI.
    return load_credentials(credentials).password(user)


@contextmanager
def _client(
    broker: str,
    user: str | None,
    password: str | None,
    inbox: queue.Queue[_Received] | None = None,
    tls: pki.Identity | None = None,
) -> Iterator[mqtt.Client]:
    """A connected paho client (MQTT 5), its network loop in a thread; BrokerError if refused.
    `user` None connects anonymously (a replay broker that allows it). An mqtts:// broker (a
    node's grid listener) needs `tls`: the operator's certificate from the grid's pki/."""
    host, port = messages.parse_uri(broker)
    connected = threading.Event()
    outcome: dict[str, str] = {}
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=f"redy-cli-{secrets.token_hex(4)}",
        protocol=mqtt.MQTTv5,
    )
    if user is not None:
        client.username_pw_set(user, password)

    def on_connect(c: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        outcome["reason"] = str(reason)
        if not reason.is_failure:
            outcome["ok"] = "yes"
        connected.set()

    def on_message(c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        if inbox is not None:
            inbox.put(_Received(msg.topic, bytes(msg.payload), bool(msg.retain)))

    client.on_connect = on_connect
    client.on_message = on_message
    if broker.startswith("mqtts://"):
        if tls is None or not tls.cert.exists():
            raise BrokerError(
                f"{broker} is a grid listener (mutual TLS): give --credentials of a launched node"
                " so its grid's pki/operator.crt can be used"
            )
        client.tls_set(ca_certs=str(tls.ca), certfile=str(tls.cert), keyfile=str(tls.key))
    try:
        client.connect(host, port, keepalive=30)
    except OSError as exc:
        raise BrokerError(f"cannot reach broker {broker}: {exc.strerror or exc}") from None
    client.loop_start()
    try:
        if not connected.wait(_CONNECT_TIMEOUT_S):
            raise BrokerError(f"broker {broker} did not answer within {_CONNECT_TIMEOUT_S:.0f} s")
        if "ok" not in outcome:
            raise BrokerError(f"broker {broker} refused user {user!r}: {outcome.get('reason')}")
        yield client
    finally:
        client.disconnect()
        client.loop_stop()


def _subscribe(client: mqtt.Client, pattern: str) -> None:
    result, _ = client.subscribe(pattern, qos=1)
    if result != mqtt.MQTT_ERR_SUCCESS:
        raise BrokerError(f"cannot subscribe to {pattern}: {mqtt.error_string(result)}")


def _describe(topic: str) -> tuple[str, str]:
    """(type name, 'retained'/'volatile' by contract) of a topic, or ('?', 'outside the tree')."""
    try:
        spec, _ = CONTRACT.match(topic)
    except InvalidMessage:
        return "?", "outside the tree"
    return spec.type, "retained" if spec.retained else "volatile"


def _render(r: _Received) -> str:
    try:
        msg = messages.decode(r.topic, r.payload)
    except InvalidMessage as exc:
        return f"INVALID {exc}"
    return orjson.dumps(messages.to_dict(msg)).decode()


def _render_json(r: _Received) -> str:
    """One JSON line: topic, retained, and the decoded message or why it is invalid."""
    out: dict[str, Any] = {"topic": r.topic, "retained": r.retained}
    try:
        out["message"] = messages.to_dict(messages.decode(r.topic, r.payload))
    except InvalidMessage as exc:
        out["invalid"] = str(exc)
    return orjson.dumps(out).decode()


_broker_option = click.option(
    "--broker",
    required=True,
    envvar="REDY_BROKER",
    help="Broker URI, e.g. mqtt://127.0.0.1:18841 (env REDY_BROKER).",
)
_user_option = click.option("--user", default="operator", show_default=True, envvar="REDY_USER")
_password_option = click.option(
    "--password", default=None, envvar="REDY_PASSWORD", help="(env REDY_PASSWORD)"
)
_credentials_option = click.option(
    "--credentials",
    type=click.Path(dir_okay=False),
    default=None,
    envvar="REDY_CREDENTIALS",
    help="A node's credentials.json; the password of --user is read from it (env REDY_CREDENTIALS).",
)
_json_option = click.option("--json", "as_json", is_flag=True, help="JSON output, one per line.")


def _with_auth(f: Any) -> Any:
    for option in (_credentials_option, _password_option, _user_option, _broker_option):
        f = option(f)
    return f


@click.group()
def topic() -> None:
    """Topics of a node's broker, like `ros2 topic`."""


@topic.command("list")
@_with_auth
@click.option("--wait", "wait_s", type=float, default=2.0, show_default=True, help="Seconds.")
@click.option("--pattern", default="redy/#", show_default=True)
def topic_list(
    broker: str,
    user: str,
    password: str | None,
    credentials: str | None,
    wait_s: float,
    pattern: str,
) -> None:
    """Show the topics seen (retained ones at once) with their message type."""
    inbox: queue.Queue[_Received] = queue.Queue()
    with _client(broker, user, _password(user, password, credentials), inbox) as client:
        _subscribe(client, pattern)
        time.sleep(wait_s)
    seen: dict[str, list[_Received]] = collections.defaultdict(list)
    while not inbox.empty():
        r = inbox.get()
        seen[r.topic].append(r)
    for name in sorted(seen):
        type_name, kind = _describe(name)
        retained = "retained" if any(r.retained for r in seen[name]) else kind
        click.echo(f"{name} [{type_name}] {retained} x{len(seen[name])}")


def _find_topic(name: str) -> TopicSpec:
    """A topic of topics.yaml by its name, its pattern, or a concrete topic in the tree."""
    if name in CONTRACT.topics:
        return CONTRACT.topics[name]
    for spec in CONTRACT.topics.values():
        if spec.pattern == name:
            return spec
    try:
        return CONTRACT.match(name)[0]
    except InvalidMessage:
        raise click.UsageError(
            f"unknown topic {name!r}: expected a name from topics.yaml "
            f"({', '.join(sorted(CONTRACT.topics))}), its pattern, or a topic such as "
            "redy/house-1/governance/state"
        ) from None


def _type_fields(type_name: str, depth: int = 0) -> list[dict[str, Any]]:
    """The fields of a message type, nested types expanded, as plain dicts."""
    rows = []
    for f in CONTRACT.types[type_name].fields:
        row: dict[str, Any] = {"name": f.name, "type": f.type}
        if f.items:
            row["type"] = f"list[{f.items}]"
        for key in ("unit", "min", "max", "max_len"):
            if getattr(f, key) is not None:
                row[key] = getattr(f, key)
        if f.values:
            row["values"] = list(f.values)
        row["optional"] = f.optional
        row["description"] = f.description
        nested = f.items or f.type
        if nested in CONTRACT.types and depth < 4:
            row["fields"] = _type_fields(nested, depth + 1)
        rows.append(row)
    return rows


def _field_lines(rows: list[dict[str, Any]], indent: str) -> list[str]:
    lines = []
    for row in rows:
        kind = row["type"] + ("?" if row["optional"] else "")
        extra = [f"[{row['unit']}]"] if "unit" in row else []
        if "min" in row or "max" in row:
            low, high = (f"{row[k]:g}" if k in row else "" for k in ("min", "max"))
            extra.append(f"{low}..{high}")
        if "values" in row:
            extra.append("|".join(row["values"]))
        if "max_len" in row:
            extra.append(f"max {row['max_len']}")
        note = f"  # {row['description']}" if row["description"] else ""
        lines.append(f"{indent}{kind:<16} {row['name']:<24} {' '.join(extra)}{note}".rstrip())
        lines.extend(_field_lines(row.get("fields", []), indent + "    "))
    return lines


@topic.command("info")
@click.argument("topic_name", metavar="TOPIC")
@_json_option
def topic_info(topic_name: str, as_json: bool) -> None:
    """Show TOPIC's type, QoS, retention, expiry, roles and fields with units, from topics.yaml.

    TOPIC is a name from topics.yaml (node_state), its pattern, or a concrete topic.
    """
    spec = _find_topic(topic_name)
    fields = _type_fields(spec.type)
    info: dict[str, Any] = {
        "name": spec.name,
        "pattern": spec.pattern,
        "type": spec.type,
        "qos": spec.qos,
        "retained": spec.retained,
        "expiry_s": spec.expiry_s,
        "publishers": list(spec.publishers),
        "subscribers": list(spec.subscribers),
        "description": spec.description,
        "fields": fields,
    }
    if as_json:
        click.echo(orjson.dumps(info).decode())
        return
    expiry = f"{spec.expiry_s} s" if spec.expiry_s else "none"
    click.echo(f"topic:       {spec.name}  ({spec.pattern})")
    click.echo(f"type:        {spec.type}  ({CONTRACT.types[spec.type].description})")
    click.echo(f"qos:         {spec.qos}")
    click.echo(f"retained:    {'yes' if spec.retained else 'no'}")
    click.echo(f"expiry:      {expiry}")
    click.echo(f"publishers:  {', '.join(spec.publishers)}")
    click.echo(f"subscribers: {', '.join(spec.subscribers)}")
    if spec.description:
        click.echo(f"about:       {spec.description}")
    click.echo("fields:")
    for line in _field_lines(fields, "  "):
        click.echo(line)


@topic.command("echo")
@click.argument("pattern")
@_with_auth
@click.option("--count", type=int, default=0, help="Stop after N messages (0: until Ctrl-C).")
@click.option("--timeout", "timeout_s", type=float, default=0.0, help="Stop after S seconds.")
@_json_option
def topic_echo(
    pattern: str,
    broker: str,
    user: str,
    password: str | None,
    credentials: str | None,
    count: int,
    timeout_s: float,
    as_json: bool,
) -> None:
    """Print each message on PATTERN, decoded and validated (invalid ones shown as INVALID)."""
    inbox: queue.Queue[_Received] = queue.Queue()
    deadline = time.monotonic() + timeout_s if timeout_s > 0 else float("inf")
    shown = 0
    with _client(broker, user, _password(user, password, credentials), inbox) as client:
        _subscribe(client, pattern)
        while time.monotonic() < deadline and (count == 0 or shown < count):
            try:
                r = inbox.get(timeout=min(0.2, max(0.0, deadline - time.monotonic())))
            except queue.Empty:
                continue
            if as_json:
                click.echo(_render_json(r))
            else:
                flag = " (retained)" if r.retained else ""
                click.echo(f"{r.topic}{flag} {_render(r)}")
            shown += 1


@topic.command("pub")
@click.argument("topic_name", metavar="TOPIC")
@click.argument("payload")
@_with_auth
@click.option("--times", type=int, default=1, show_default=True)
@click.option("--rate", "rate_hz", type=float, default=1.0, show_default=True, help="Hz.")
def topic_pub(
    topic_name: str,
    payload: str,
    broker: str,
    user: str,
    password: str | None,
    credentials: str | None,
    times: int,
    rate_hz: float,
) -> None:
    """Validate PAYLOAD (JSON) against TOPIC's type, then publish it with the topic's QoS,
    retention and expiry."""
    spec, _ = CONTRACT.match(topic_name)
    body = messages.encode(messages.decode(topic_name, payload.encode()))
    props = publish_properties(spec)
    with _client(broker, user, _password(user, password, credentials)) as client:
        for i in range(times):
            info = client.publish(
                topic_name, body, qos=spec.qos, retain=spec.retained, properties=props
            )
            info.wait_for_publish(timeout=_CONNECT_TIMEOUT_S)
            if not info.is_published():
                raise BrokerError(
                    f"broker {broker} did not acknowledge the publish on {topic_name}"
                )
            if i + 1 < times:
                time.sleep(1.0 / rate_hz)
    click.echo(f"published {times} x {spec.type} on {topic_name}")


@topic.command("hz")
@click.argument("pattern")
@_with_auth
@click.option("--window", "window_s", type=float, default=5.0, show_default=True, help="Seconds.")
def topic_hz(
    pattern: str,
    broker: str,
    user: str,
    password: str | None,
    credentials: str | None,
    window_s: float,
) -> None:
    """Measure the rate of live (not retained) messages on PATTERN over a window."""
    inbox: queue.Queue[_Received] = queue.Queue()
    with _client(broker, user, _password(user, password, credentials), inbox) as client:
        _subscribe(client, pattern)
        time.sleep(window_s)
    stamps: dict[str, list[float]] = collections.defaultdict(list)
    while not inbox.empty():
        r = inbox.get()
        if not r.retained:
            stamps[r.topic].append(r.t_s)
    if not stamps:
        click.echo(f"no live messages on {pattern} in {window_s:g} s")
    for name in sorted(stamps):
        ts = stamps[name]
        rate = (len(ts) - 1) / (ts[-1] - ts[0]) if len(ts) > 1 and ts[-1] > ts[0] else 0.0
        click.echo(f"{name}: {rate:.2f} Hz ({len(ts)} messages in {window_s:g} s)")


def _read_retained(
    client: mqtt.Client, inbox: queue.Queue[_Received], topics_: list[str], wait_s: float = 1.5
) -> dict[str, Any]:
    """The retained message of each topic (decoded), waiting up to `wait_s` seconds; missing
    ones are left out."""
    for t in topics_:
        _subscribe(client, t)
    found: dict[str, Any] = {}
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline and len(found) < len(topics_):
        try:
            r = inbox.get(timeout=0.1)
        except queue.Empty:
            continue
        try:
            found[r.topic] = messages.decode(r.topic, r.payload)
        except InvalidMessage as exc:
            click.echo(f"INVALID {exc}", err=True)
    return found


def operator_identity(credentials: str | None) -> pki.Identity | None:
    """The operator's grid certificate, beside the launch state that `credentials` is in."""
    if not credentials:
        return None
    return pki.identity(Path(credentials).resolve().parent.parent, "operator")


def fetch_view(
    broker: str, user: str, password: str, node: str, tls: pki.Identity | None = None
) -> messages.View | None:
    """A node's retained membership view, read from `broker` (None if it has none)."""
    inbox: queue.Queue[_Received] = queue.Queue()
    with _client(broker, user, password, inbox, tls) as client:
        name = f"redy/{node}/membership/view"
        view = _read_retained(client, inbox, [name]).get(name)
    return view if isinstance(view, messages.View) else None


@click.command()
@click.argument("node_id", metavar="NODE")
@_with_auth
@_json_option
def view(
    node_id: str,
    broker: str,
    user: str,
    password: str | None,
    credentials: str | None,
    as_json: bool,
) -> None:
    """Print NODE's retained membership view (neighbours with ages and brokers)."""
    found = fetch_view(
        broker,
        user,
        _password(user, password, credentials),
        node_id,
        operator_identity(credentials),
    )
    if found is None:
        raise BrokerError(f"no retained view of node {node_id!r} on {broker}")
    if as_json:
        click.echo(orjson.dumps(messages.to_dict(found)).decode())
        return
    click.echo(f"view of {found.node} ({len(found.entries)} neighbours)")
    for e in sorted(found.entries, key=lambda e: (e.age, e.node)):
        click.echo(f"  {e.node:<24} age {e.age:<4} {e.broker}")


@click.group()
def node() -> None:
    """Nodes of the grid, like `ros2 node`."""


@node.command("list")
@_with_auth
@click.option("--limit", type=int, default=1000, show_default=True, help="Stop after N nodes.")
@_json_option
def node_list(
    broker: str,
    user: str,
    password: str | None,
    credentials: str | None,
    limit: int,
    as_json: bool,
) -> None:
    """List the nodes reachable from one broker by following retained views.

    The first broker is a node's local listener (operator); neighbours are reached on their
    grid listeners with the operator's certificate of the grid (pki/operator.crt beside the
    launch state of --credentials).
    """
    secret = _password(user, password, credentials)
    tls = operator_identity(credentials)
    inbox: queue.Queue[_Received] = queue.Queue()
    with _client(broker, user, secret, inbox, tls) as client:
        start = _read_retained(client, inbox, ["redy/+/membership/view"])
    frontier = [v for v in start.values() if isinstance(v, messages.View)]
    seen: dict[str, str] = {v.node: broker for v in frontier}
    while frontier and len(seen) < limit:
        current = frontier.pop()
        for e in current.entries:
            if e.node in seen:
                continue
            seen[e.node] = e.broker
            try:
                nxt = fetch_view(e.broker, "operator", "", e.node, tls)
            except BrokerError as exc:
                click.echo(f"{e.node}: unreachable ({exc})", err=True)
                continue
            if nxt is not None:
                frontier.append(nxt)
    if as_json:
        rows = [{"node": name, "broker": seen[name]} for name in sorted(seen)]
        click.echo(orjson.dumps(rows).decode())
        return
    for name in sorted(seen):
        click.echo(f"{name} {seen[name]}")


@node.command("info")
@click.argument("node_id", metavar="NODE")
@_with_auth
def node_info(
    node_id: str, broker: str, user: str, password: str | None, credentials: str | None
) -> None:
    """Show a node's descriptor, its units (birth and state) and its energy state."""
    inbox: queue.Queue[_Received] = queue.Queue()
    with _client(broker, user, _password(user, password, credentials), inbox) as client:
        for pattern in (
            f"redy/{node_id}/descriptor",
            f"redy/{node_id}/units/+/+",
            f"redy/{node_id}/governance/state",
        ):
            _subscribe(client, pattern)
        time.sleep(1.0)
    while not inbox.empty():
        r = inbox.get()
        click.echo(f"{r.topic} {_render(r)}")
