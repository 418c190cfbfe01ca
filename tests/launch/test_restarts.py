"""The launcher's restart policy (pure): backoff, reset after a good run, crash-loop limit."""

from __future__ import annotations

import pytest

from redy.launch.supervisor import CRASH_LIMIT, CRASH_WINDOW_S, Restarts

pytestmark = pytest.mark.pure


def test_backoff_grows_then_gives_up_in_a_crash_loop() -> None:
    r = Restarts("n/governance", 1.0)
    now = 0.0
    waits = []
    for _ in range(CRASH_LIMIT - 1):
        r.started(now)
        now += 0.5  # dies half a second after each start
        r.died(now)
        assert r.due_at is not None and not r.gave_up
        waits.append(r.due_at - now)
        now = r.due_at
    assert waits[-1] > waits[0]
    r.started(now)
    r.died(now + 0.5)
    assert r.gave_up and not r.due(now + 1000)


def test_a_long_good_run_starts_a_new_incident() -> None:
    r = Restarts("n/broker", 1.0)
    r.started(0.0)
    for k in range(1, 4):
        r.died(float(k))
        r.started(float(k))
    r.died(4.0)
    late = r.due_at - 4.0
    r.started(10.0)
    r.died(10.0 + CRASH_WINDOW_S + 1)  # it ran a whole window: backoff starts over
    assert late >= 4.0  # the fourth death in a row waits 4-8 s
    assert r.due_at - (10.0 + CRASH_WINDOW_S + 1) <= 1.0
    assert not r.gave_up
