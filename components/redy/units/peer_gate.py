"""What a governance unit lets in from its peers: per-sender rate limits and a bounded inbox.

Peers' messages arrive on the node's own broker, on topics that name their writer. Before any of
them is handled, `PeerGate` (sans-IO: the caller gives the time) checks the writer's budget for
that kind of message (a token bucket per writer and topic: count and bytes) and queues it in the
peer inbox, which holds at most `limit` messages and drops the oldest when full. The node's own
units never go through it: a flood of peer traffic cannot delay what the node's meters say.
Every refusal is counted per writer, and logged once per writer and kind per minute.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import attrs

# (messages per second, burst, bytes per second) a single peer may send, per topic kind. An
# honest node sends a shuffle request per period, its state per state period, and gossip a few
# dozen pushes per second at most (one push per round to one neighbour, rounds paced by arrival):
# the limits are ten times that, so only a flood meets them.
DEFAULT_LIMITS: dict[str, tuple[float, float, float]] = {
    "gossip": (200.0, 400.0, 4e6),
    "cells": (200.0, 400.0, 4e6),
    "shuffle": (5.0, 10.0, 5e5),
    "shuffle_reply": (5.0, 10.0, 5e5),
    "evidence": (5.0, 20.0, 5e5),
    "neighbour_state": (5.0, 10.0, 5e5),
}
_LOG_EVERY_S = 60.0


@attrs.define
class _Bucket:
    tokens: float
    bytes: float
    at: float


class PeerGate:
    """Rate limits per (writer, kind) and a bounded drop-oldest inbox of peer messages."""

    def __init__(
        self,
        limits: dict[str, tuple[float, float, float]] | None = None,
        limit: int = 2000,
        max_writers: int = 4096,
    ) -> None:
        self.limits = limits or DEFAULT_LIMITS
        self.inbox: deque[tuple[str, Any, dict[str, Any]]] = deque()
        self.limit = limit
        self.max_writers = max_writers
        self.dropped_oldest = 0
        self.refused: dict[str, int] = {}  # writer -> messages over its budget
        self._buckets: dict[tuple[str, str], _Bucket] = {}
        self._logged: dict[tuple[str, str], float] = {}

    def admit(self, now: float, kind: str, writer: str, size: int) -> bool:
        """Whether `writer` may send one more `kind` message of `size` bytes now."""
        rate, burst, byte_rate = self.limits.get(kind, (50.0, 100.0, 1e6))
        key = (writer, kind)
        b = self._buckets.get(key)
        if b is None:
            if len(self._buckets) >= self.max_writers:  # bounded: forget the stalest writer
                del self._buckets[next(iter(self._buckets))]
            b = self._buckets[key] = _Bucket(burst, byte_rate * burst / rate, now)
        elapsed = max(0.0, now - b.at)
        b.at = now
        b.tokens = min(burst, b.tokens + elapsed * rate)
        b.bytes = min(byte_rate * burst / rate, b.bytes + elapsed * byte_rate)
        if b.tokens < 1.0 or b.bytes < size:
            self.refused[writer] = self.refused.get(writer, 0) + 1
            return False
        b.tokens -= 1.0
        b.bytes -= size
        return True

    def should_log(self, now: float, kind: str, writer: str) -> bool:
        """True at most once a minute per writer and kind (so a flood does not flood the log)."""
        last = self._logged.get((writer, kind))
        if last is not None and now - last < _LOG_EVERY_S:
            return False
        if len(self._logged) >= self.max_writers:
            del self._logged[next(iter(self._logged))]
        self._logged[(writer, kind)] = now
        return True

    def put(self, item: tuple[str, Any, dict[str, Any]]) -> None:
        if len(self.inbox) >= self.limit:
            self.inbox.popleft()
            self.dropped_oldest += 1
        self.inbox.append(item)

    def get(self) -> tuple[str, Any, dict[str, Any]] | None:
        return self.inbox.popleft() if self.inbox else None
