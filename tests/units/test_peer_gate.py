"""The peer gate (pure): per-writer budgets and the bounded drop-oldest peer inbox."""

from __future__ import annotations

import pytest

from redy.units.peer_gate import PeerGate

pytestmark = pytest.mark.pure


def test_a_flooding_writer_is_cut_to_its_rate_and_others_are_untouched() -> None:
    g = PeerGate({"shuffle": (5.0, 10.0, 1e6)})
    t = 100.0
    sent = admitted = 0
    while t < 110.0:  # 1,000 requests a second for 10 s
        sent += 1
        admitted += g.admit(t, "shuffle", "evil", 200)
        t += 0.001
    assert admitted <= 10 + 5 * 10 + 1  # the burst, then the rate
    assert g.refused["evil"] == sent - admitted
    assert g.admit(t, "shuffle", "honest", 200)
    assert "honest" not in g.refused


def test_bytes_are_budgeted_too() -> None:
    g = PeerGate({"gossip": (1000.0, 1000.0, 10_000.0)})
    assert g.admit(0.0, "gossip", "a", 9_000)
    assert not g.admit(0.0, "gossip", "a", 9_000)  # within the count, over the bytes
    assert g.admit(1.0, "gossip", "a", 9_000)


def test_the_inbox_drops_the_oldest_when_full() -> None:
    g = PeerGate(limit=3)
    for i in range(5):
        g.put((f"t{i}", i, {}))
    assert g.dropped_oldest == 2
    assert [g.get(), g.get(), g.get(), g.get()] == [
        ("t2", 2, {}),
        ("t3", 3, {}),
        ("t4", 4, {}),
        None,
    ]


def test_logging_is_once_a_minute_per_writer_and_kind() -> None:
    g = PeerGate()
    assert g.should_log(0.0, "gossip", "evil")
    assert not g.should_log(30.0, "gossip", "evil")
    assert g.should_log(30.0, "shuffle", "evil")
    assert g.should_log(61.0, "gossip", "evil")


def test_writers_are_bounded() -> None:
    g = PeerGate(max_writers=10)
    for i in range(100):
        g.admit(0.0, "gossip", f"w{i}", 10)
    assert len(g._buckets) <= 10
