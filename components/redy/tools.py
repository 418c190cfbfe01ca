"""Operator tools, as `ros2 topic` and `ros2 node`: `redy topic list|echo|pub|hz`, `redy view`,
`redy node list|info`. They work on any node's broker with its operator (local listener) or grid
(grid listener) credentials, and validate every payload against topics.yaml.
"""

from __future__ import annotations

import collections
import queue
import time
from pathlib import Path
from typing import Any

import click
import orjson

from redy import messages, pki
from redy.cli_auth import json_option, password_for, with_auth
from redy.errors import BrokerError, InvalidMessage
from redy.topics import CONTRACT, TopicSpec, render, subscription
from redy.transport.paho_client import publish_properties
from redy.transport.session import CONNECT_TIMEOUT_S, Received, connect, read_retained, subscribe


def _stderr(line: str) -> None:
    click.echo(line, err=True)


def _describe(topic: str) -> tuple[str, str]:
    """(type name, 'retained'/'volatile' by contract) of a topic, or ('?', 'outside the tree')."""
    try:
        spec, _ = CONTRACT.match(topic)
    except InvalidMessage:
        return "?", "outside the tree"
    return spec.type, "retained" if spec.retained else "volatile"


def _render(r: Received) -> str:
    try:
        msg = messages.decode(r.topic, r.payload)
    except InvalidMessage as exc:
        return f"INVALID {exc}"
    return orjson.dumps(messages.to_dict(msg)).decode()


def _render_json(r: Received) -> str:
    """One JSON line: topic, retained, and the decoded message or why it is invalid."""
    out: dict[str, Any] = {"topic": r.topic, "retained": r.retained}
    try:
        out["message"] = messages.to_dict(messages.decode(r.topic, r.payload))
    except InvalidMessage as exc:
        out["invalid"] = str(exc)
    return orjson.dumps(out).decode()


@click.group()
def topic() -> None:
    """Topics of a node's broker, like `ros2 topic`."""


@topic.command("list")
@with_auth
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
    inbox: queue.Queue[Received] = queue.Queue()
    with connect(broker, user, password_for(user, password, credentials), inbox) as client:
        subscribe(client, pattern)
        time.sleep(wait_s)
    seen: dict[str, list[Received]] = collections.defaultdict(list)
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
@json_option
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
@with_auth
@click.option("--count", type=int, default=0, help="Stop after N messages (0: until Ctrl-C).")
@click.option("--timeout", "timeout_s", type=float, default=0.0, help="Stop after S seconds.")
@json_option
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
    inbox: queue.Queue[Received] = queue.Queue()
    deadline = time.monotonic() + timeout_s if timeout_s > 0 else float("inf")
    shown = 0
    with connect(broker, user, password_for(user, password, credentials), inbox) as client:
        subscribe(client, pattern)
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
@with_auth
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
    with connect(broker, user, password_for(user, password, credentials)) as client:
        for i in range(times):
            info = client.publish(
                topic_name, body, qos=spec.qos, retain=spec.retained, properties=props
            )
            info.wait_for_publish(timeout=CONNECT_TIMEOUT_S)
            if not info.is_published():
                raise BrokerError(
                    f"broker {broker} did not acknowledge the publish on {topic_name}"
                )
            if i + 1 < times:
                time.sleep(1.0 / rate_hz)
    click.echo(f"published {times} x {spec.type} on {topic_name}")


@topic.command("hz")
@click.argument("pattern")
@with_auth
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
    inbox: queue.Queue[Received] = queue.Queue()
    with connect(broker, user, password_for(user, password, credentials), inbox) as client:
        subscribe(client, pattern)
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


def operator_identity(credentials: str | None) -> pki.Identity | None:
    """The operator's grid certificate, beside the launch state that `credentials` is in."""
    if not credentials:
        return None
    return pki.identity(Path(credentials).resolve().parent.parent, "operator")


def _retained(
    broker: str, user: str, password: str, topic: str, tls: pki.Identity | None = None
) -> Any:
    """The message retained on `topic` of `broker` (None if there is none)."""
    inbox: queue.Queue[Received] = queue.Queue()
    with connect(broker, user, password, inbox, tls) as client:
        return read_retained(client, inbox, [topic], on_invalid=_stderr).get(topic)


def fetch_view(
    broker: str, user: str, password: str, node: str, tls: pki.Identity | None = None
) -> messages.View | None:
    """A node's retained membership view, read from `broker` (None if it has none)."""
    view = _retained(broker, user, password, render("view", node=node), tls)
    return view if isinstance(view, messages.View) else None


@click.command()
@click.argument("node_id", metavar="NODE")
@with_auth
@json_option
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
        password_for(user, password, credentials),
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
@with_auth
@click.option("--limit", type=int, default=1000, show_default=True, help="Stop after N nodes.")
@json_option
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
    secret = password_for(user, password, credentials)
    tls = operator_identity(credentials)
    inbox: queue.Queue[Received] = queue.Queue()
    with connect(broker, user, secret, inbox, tls) as client:
        start = read_retained(client, inbox, [subscription("view")], on_invalid=_stderr)
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
@with_auth
def node_info(
    node_id: str, broker: str, user: str, password: str | None, credentials: str | None
) -> None:
    """Show a node's descriptor, its units (birth and state) and its energy state."""
    inbox: queue.Queue[Received] = queue.Queue()
    with connect(broker, user, password_for(user, password, credentials), inbox) as client:
        for pattern in (
            render("descriptor", node=node_id),
            subscription("unit_meta", node=node_id),
            subscription("unit_state", node=node_id),
            render("node_state", node=node_id),
        ):
            subscribe(client, pattern)
        time.sleep(1.0)
    while not inbox.empty():
        r = inbox.get()
        click.echo(f"{r.topic} {_render(r)}")


# -- plans ---------------------------------------------------------------------------------------


def fetch_plan(
    broker: str, user: str, password: str, node: str, tls: pki.Identity | None = None
) -> messages.Plan | None:
    """A node's retained plan (redy.units.planner), read from `broker` (None if it has none)."""
    found = _retained(broker, user, password, render("plan", node=node), tls)
    return found if isinstance(found, messages.Plan) else None


def plan_table(plan: messages.Plan, intervals: int) -> list[str]:
    """The next `intervals` of a plan as lines of a table: when each starts (UTC), its price and
    how it cleared, the community's flows at its boundary and the node's own plan."""
    total = len(plan.price_eur_mwh)
    shown = min(intervals, total)
    out = [
        f"plan of {plan.node}: {total} intervals of {plan.interval_min:g} min"
        f" ({plan.interval_s:g} s each) from interval {plan.start}, {plan.offers} offers,"
        f" cost {plan.objective_eur:.2f} EUR, digest {plan.digest[:16]}",
        f"{'interval':>10} {'starts':>8} {'EUR/MWh':>10} {'status':>8} {'import kW':>10}"
        f" {'export kW':>10} {'own kW':>9} {'blocks kW':>9} {'store kW':>9} {'store kWh':>9}"
        f" {'defer kW':>9}",
    ]

    def at(values: tuple[float, ...], t: int) -> float:
        return values[t] if t < len(values) else 0.0

    for t in range(shown):
        begins = time.strftime("%H:%M:%S", time.gmtime((plan.start + t) * plan.interval_s))
        status = plan.status[t] if t < len(plan.status) else "?"
        out.append(
            f"{plan.start + t:>10} {begins:>8} {plan.price_eur_mwh[t]:>10.3f} {status:>8}"
            f" {at(plan.import_kw, t):>10.3f} {at(plan.export_kw, t):>10.3f}"
            f" {at(plan.injection_kw, t):>9.3f} {at(plan.blocks_kw, t):>9.3f}"
            f" {at(plan.storage_kw, t):>9.3f} {at(plan.soc_kwh, t):>9.3f}"
            f" {at(plan.deferrable_kw, t):>9.3f}"
        )
    if shown < total:
        out.append(f"({total - shown} more intervals: --intervals {total} shows them all)")
    if plan.forecast_error_kw is not None:
        out.append(
            f"its meters' last interval: {plan.forecast_error_kw:+.3f} kW off their forecast"
            f" (mean size {plan.forecast_mae_kw or 0.0:.3f} kW)"
        )
    return out


@click.group()
def plan() -> None:
    """The community's plan as the nodes solved it (governance setting plan_intervals)."""


@plan.command("show")
@click.argument("node_id", metavar="NODE")
@click.option(
    "--intervals",
    type=click.IntRange(min=1),
    default=12,
    show_default=True,
    help="How many of the next intervals to print.",
)
@with_auth
@json_option
def plan_show(
    node_id: str,
    intervals: int,
    broker: str,
    user: str,
    password: str | None,
    credentials: str | None,
    as_json: bool,
) -> None:
    """Print NODE's retained plan: the next intervals' prices and NODE's own plan (kW; own kW is
    its net injection, + feeds the grid; store kW its stores' discharge, - charge; defer kW its
    deferrable loads' draw)."""
    found = fetch_plan(
        broker,
        user,
        password_for(user, password, credentials),
        node_id,
        operator_identity(credentials),
    )
    if found is None:
        raise BrokerError(
            f"no retained plan of node {node_id!r} on {broker} (does its grid set plan_intervals?)"
        )
    if as_json:
        click.echo(orjson.dumps(messages.to_dict(found)).decode())
        return
    for line in plan_table(found, intervals):
        click.echo(line)
