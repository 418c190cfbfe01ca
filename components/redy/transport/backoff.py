"""The project's one reconnect policy: jittered exponential backoff.

Every retry of a lost or refused connection waits a `Backoff` delay: the governance's session
with its own broker (gmqtt, `redy.transport.client`), every paho session (`redy.transport
.paho_client`), `AsyncLink.connect_retrying` and the launcher's respawns. The uses differ only
in their first delay and their cap.
"""

from __future__ import annotations

import random


class Backoff:
    """Jittered exponential backoff: the n-th delay is uniform in [d/2, d], d = min(cap,
    first * 2**n) ("equal jitter"), so many clients that lost the same broker do not return in
    lockstep. `reset()` after a success."""

    def __init__(
        self, first_s: float = 0.2, cap_s: float = 10.0, rng: random.Random | None = None
    ) -> None:
        self.first_s = first_s
        self.cap_s = cap_s
        self._rng = rng or random.Random()
        self.attempts = 0

    def next_delay(self) -> float:
        d = min(self.cap_s, self.first_s * 2**self.attempts)
        self.attempts += 1
        return self._rng.uniform(d / 2, d)

    def reset(self) -> None:
        self.attempts = 0
