"""Free ports for a node's three listeners: local P, grid P + 10000, units P + 5000 (the
defaults of a launch file's broker)."""

from __future__ import annotations

import random

from redy.brokers import GRID_PORT_OFFSET, UNIT_PORT_OFFSET, port_is_free

OFFSETS = (0, GRID_PORT_OFFSET, UNIT_PORT_OFFSET)


def node_block(n: int = 1, low: int = 12000, high: int = 22000) -> int:
    """A first port P with P..P+n-1 free, and their grid and unit ports free too (the default
    range keeps all three below the ephemeral ports, 32768..)."""
    rng = random.Random()
    for _ in range(500):
        base = rng.randrange(low, high - n)
        if all(port_is_free(p + o) for p in range(base, base + n) for o in OFFSETS):
            return base
    raise RuntimeError(f"no block of {n} free node ports in {low}..{high}")
