"""The market's epoch schedule and its tolerance of skewed clocks (pure)."""

from __future__ import annotations

import pytest

from redy.balancing.schedule import ClockOffsets, EpochSchedule, FutureBuffer
from redy.errors import RedyError

pytestmark = pytest.mark.pure


def test_rounds_in_the_first_half_and_clearing_a_tolerance_later() -> None:
    s = EpochSchedule(epoch_s=4.0, rounds=10, tolerance_s=1.0)
    assert s.round_at(5, 1) == 20.0
    assert s.round_at(5, 10) == pytest.approx(20.0 + 9 * 0.2)
    assert s.clear_at(5) == pytest.approx(23.0)
    assert s.tolerated_skew_s == pytest.approx(1.0)
    assert s.next_epoch(19.99) == 5 and s.next_epoch(20.0) == 6


def test_nodes_one_second_apart_exchange_every_round_before_clearing() -> None:
    """A node T s behind sends round r at its own round time; on the clock of a node T s ahead
    that is T s later. Every such message lands before the ahead node clears, and every message
    of the ahead node lands before the behind node clears (kept until its epoch starts)."""
    s = EpochSchedule(epoch_s=4.0, rounds=10, tolerance_s=1.0)
    skew = 1.0
    e = 7
    for r in range(1, 11):
        behind_send_on_ahead_clock = s.round_at(e, r) + skew
        assert behind_send_on_ahead_clock <= s.clear_at(e)
        ahead_send_on_behind_clock = s.round_at(e, r) - skew
        assert ahead_send_on_behind_clock <= s.clear_at(e)
        assert ahead_send_on_behind_clock >= s.start(e - 1)  # never two epochs early


def test_a_short_epoch_caps_the_clearing_time() -> None:
    s = EpochSchedule(epoch_s=1.0, rounds=5, tolerance_s=1.0)
    assert s.clear_offset_s == pytest.approx(0.95)
    assert s.tolerated_skew_s == pytest.approx(0.45)


def test_bad_schedules_are_refused() -> None:
    with pytest.raises(RedyError, match="rounds"):
        EpochSchedule(epoch_s=4.0, rounds=0)
    with pytest.raises(RedyError, match="gossip_share"):
        EpochSchedule(epoch_s=4.0, rounds=3, gossip_share=1.0)


def test_future_buffer_releases_one_epoch_and_is_bounded() -> None:
    b = FutureBuffer(limit=3)
    b.keep(5, "a")
    b.keep(6, "b")
    b.keep(5, "c")
    b.keep(5, "d")
    assert b.dropped == 1
    assert b.release(5) == ["a", "c"]
    assert b.release(6) == ["b"]
    assert b.release(6) == []


def test_clock_offset_is_the_median_over_senders() -> None:
    o = ClockOffsets()
    assert o.offset_s() is None
    o.sample("a", sent_s=100.0, received_s=101.5)  # we are 1.5 s ahead of a
    o.sample("b", sent_s=100.0, received_s=101.5)
    o.sample("c", sent_s=110.0, received_s=100.0)  # one wild neighbour does not matter
    assert o.offset_s() == pytest.approx(1.5)
    o.sample("c", sent_s=200.0, received_s=201.5)  # only each sender's latest counts
    assert o.offset_s() == pytest.approx(1.5)
