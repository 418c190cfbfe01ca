"""Nothing a peer or a peer's broker sends or fails to send ends a governance unit.

A member with a valid certificate of its own ("evil") drives a real governance process through
its peer-facing topics (shuffle requests, replies, gossip, neighbour states) with messages that
hypothesis draws: garbage bytes, JSON of any shape, and well-formed messages whose addresses
point at brokers that misbehave (they present evil's certificate, so the dial gets past TLS):
one that never sends CONNACK, one that advertises Receive Maximum 1 and never acknowledges, one
that drops the connection after CONNACK, one that answers with garbage, and a closed port.
Afterwards the process is alive and still clears and publishes its state.
"""

from __future__ import annotations

import contextlib
import json
import queue
import time
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from members import BadBrokers

from redy import messages
from redy.topics import render

pytestmark = pytest.mark.integration

_names = st.sampled_from(["evil", "house-1", "ghost-1", "ghost-2", "gas-1"])
_numbers = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([0, -1, 1e308, -1e308, 2**62]),
)
_json = st.recursive(
    st.none() | st.booleans() | _numbers | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner, max_size=5)
    ),
    max_leaves=20,
)


def _dumps(value: Any) -> bytes:
    return json.dumps(value).encode()  # any integer, as a hostile encoder may send


def _shuffles(uris: list[str]) -> st.SearchStrategy[dict[str, Any]]:
    """Well-formed shuffle requests of evil's (within the codec's bounds, so they reach the
    overlay), naming misbehaving brokers: its own, which the answer goes to, and its entries'."""
    brokers = st.sampled_from(uris)
    entry = st.fixed_dictionaries(
        {"node": _names, "broker": brokers, "age": st.integers(min_value=0, max_value=50)}
    )
    return st.fixed_dictionaries(
        {
            "sender": st.just("evil"),
            "broker": brokers,
            "nonce": st.integers(min_value=0, max_value=2**31),
            "entries": st.lists(entry, max_size=12),
        }
    )


def _payloads(uris: list[str]) -> st.SearchStrategy[tuple[str, bytes]]:
    brokers = st.sampled_from(uris)
    entry = st.fixed_dictionaries(
        {"node": _names, "broker": brokers, "age": st.integers(min_value=-5, max_value=10**9)}
    )
    shuffle = _shuffles(uris)
    reply = st.fixed_dictionaries(
        {
            "sender": st.just("evil"),
            "nonce": st.integers(min_value=0, max_value=2**31),
            "entries": st.lists(entry, max_size=12),
        }
    )
    gossip = st.fixed_dictionaries(
        {
            "sender": st.just("evil"),
            "epoch": st.integers(min_value=-1, max_value=2**40),
            "round": st.integers(min_value=-1, max_value=10**6),
            "algorithm": st.sampled_from(["pushsum", "flow", "x"]),
            "weight": _numbers,
            "values": st.lists(_numbers, max_size=205),
            "phase": st.one_of(st.none(), st.integers(min_value=-1, max_value=9)),
            "floor_eur_mwh": st.one_of(st.none(), _numbers),
            "cap_eur_mwh": st.one_of(st.none(), _numbers),
        }
    )
    kinds = st.sampled_from(["shuffle", "shuffle_reply", "gossip", "neighbour_state"])
    body = st.one_of(
        st.binary(max_size=300),
        _json.map(_dumps),
        shuffle.map(_dumps),
        reply.map(_dumps),
        gossip.map(_dumps),
    )
    return st.tuples(kinds, body)


def test_nothing_a_peer_or_its_broker_does_ends_the_governance_unit(
    node: dict[str, Any],
) -> None:
    bad: BadBrokers = node["bad"]
    evil = node["evil"]
    sent = {"messages": 0}
    uris = list(bad.uris.values())

    @settings(
        max_examples=60,
        deadline=None,
        derandomize=True,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(_shuffles(uris), st.lists(_payloads(uris), max_size=6))
    def barrage(request: dict[str, Any], batch: list[tuple[str, bytes]]) -> None:
        for kind, payload in [("shuffle", _dumps(request)), *batch]:
            evil.c.publish(render(kind, node="house-1", peer="evil"), payload, qos=0)
            sent["messages"] += 1
        time.sleep(0.25)  # within evil's shuffle budget (5 a second): most requests get in
        assert node["gov"].poll() is None, "the governance unit ended"

    barrage()
    # Its view now holds evil at those brokers: give it time to dial them all.
    time.sleep(3.0)
    assert node["gov"].poll() is None, "the governance unit ended"
    assert bad.connections > 0, "no misbehaving broker was ever dialled"
    # Still clearing and publishing: a state of a later epoch than any before the barrage.
    watch = node["watch"]
    with contextlib.suppress(queue.Empty):
        while True:
            watch.messages.get_nowait()
    fresh = []  # states that arrive from now on
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and len({s.epoch for s in fresh}) < 2:
        with contextlib.suppress(queue.Empty):
            m = watch.messages.get(timeout=0.5)
            state = messages.decode(m.topic, m.payload)
            if state.status is not None:
                fresh.append(state)
    assert len({s.epoch for s in fresh}) >= 2, f"no new epochs cleared: {fresh[-3:]}"
    text = node["log"].read_text()
    assert "Traceback" not in text, "a peer's message raised in a handler (see the log)"
    print(
        f"no kill: {sent['messages']} hostile messages, {bad.connections} dials of bad brokers;"
        f" alive, statuses {sorted({s.status for s in fresh})}"
    )
