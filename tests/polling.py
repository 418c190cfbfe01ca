"""Waiting for a condition in tests: poll with a deadline, never a fixed sleep."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def until(
    pred: Callable[[], Any],
    timeout_s: float = 10.0,
    what: str = "condition",
    seen: Callable[[], Any] | None = None,
) -> Any:
    """The first truthy value of `pred()`, polled every 50 ms; AssertionError after `timeout_s`
    naming `what` (and what `seen()` shows then, if given)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        got = pred()
        if got:
            return got
        time.sleep(0.05)
    raise AssertionError(
        f"{what} not reached within {timeout_s} s" + (f"; saw {seen()}" if seen else "")
    )
