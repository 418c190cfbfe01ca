"""The stall attack (issue 10): a member's shuffle requests name its own broker, which accepts
TCP and TLS and never sends CONNACK. Each answer to it would hang until a timeout. The node
pays one timeout, remembers that broker as bad for a while, and meanwhile keeps reading its own
units and publishing its state on time (real broker, real governance process)."""

from __future__ import annotations

import queue
import time
from typing import Any

import pytest
from members import BadBrokers

from redy import messages
from redy.topics import render

pytestmark = pytest.mark.integration

_ATTACK_S = 8.0
_EVERY_S = 0.25  # four requests a second, the rate of the eclipse attack
_PERIOD_S = 0.3  # the node's state period (the fixture's)
_TIMEOUT_S = 0.5  # its shuffle timeout (the fixture's); a bad broker is skipped for 2x that


def test_a_member_whose_broker_never_answers_costs_one_timeout_and_never_holds_the_node(
    node: dict[str, Any],
) -> None:
    bad: BadBrokers = node["bad"]
    evil, watch = node["evil"], node["watch"]
    silent = bad.uris["silent"]
    while True:  # forget the states from before the attack
        try:
            watch.messages.get_nowait()
        except queue.Empty:
            break
    arrivals: list[float] = []
    started = time.monotonic()
    sent = 0
    next_send = started
    while (now := time.monotonic()) - started < _ATTACK_S:
        if now >= next_send:
            request = messages.ShuffleRequest(sender="evil", broker=silent, nonce=sent + 1)
            evil.c.publish(
                render("shuffle", node="house-1", peer="evil"), messages.encode(request), qos=1
            )
            sent += 1
            next_send += _EVERY_S
        try:
            m = watch.messages.get(timeout=max(0.0, min(0.05, next_send - time.monotonic())))
        except queue.Empty:
            continue
        if m.topic.endswith("governance/state"):
            arrivals.append(time.monotonic())
    assert node["gov"].poll() is None, "the stall ended the governance unit"
    gaps = [b - a for a, b in zip([started, *arrivals], arrivals, strict=False)]
    worst = max(gaps, default=_ATTACK_S)
    # Its state went out every period throughout: no answer to the silent broker held it.
    assert len(arrivals) >= 0.6 * _ATTACK_S / _PERIOD_S, f"{len(arrivals)} states in {_ATTACK_S} s"
    assert worst < 3 * _PERIOD_S + _TIMEOUT_S, f"the state stopped for {worst:.2f} s"
    # One timeout, then the broker is bad for 2 x the timeout: at most one dial per 1.5 s, where
    # answering every request would have dialled it `sent` times.
    dials = bad.dials["silent"]
    assert 1 <= dials <= _ATTACK_S / (3 * _TIMEOUT_S) + 2, f"{dials} dials for {sent} requests"
    print(
        f"stall: {sent} requests naming a silent broker in {_ATTACK_S:g} s; {dials} dials of it;"
        f" {len(arrivals)} states, the longest gap {worst:.2f} s (period {_PERIOD_S} s)"
    )
