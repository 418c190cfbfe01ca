"""Shared by the tests that hold a fast simulator engine against the core-driven one."""

from __future__ import annotations

import statistics
from collections.abc import Callable, Mapping, Sequence
from typing import Any

Metric = Callable[[dict[str, Any]], float]


def assert_same_within_spread(
    core: Sequence[dict[str, Any]], fast: Sequence[dict[str, Any]], metrics: Mapping[str, Metric]
) -> None:
    """Both engines' runs on the same seeds: every metric's means differ by no more than twice
    the larger seed-to-seed spread."""
    for name, metric in metrics.items():
        a = [metric(r) for r in core]
        b = [metric(r) for r in fast]
        spread = max(statistics.stdev(a), statistics.stdev(b))
        gap = abs(statistics.mean(a) - statistics.mean(b))
        assert gap <= 2 * spread + 1e-12, f"{name}: core {a} fast {b}"
