"""Constants shared by the fast market engine's kernels and its driver (redy.sim.array_balance)."""

from __future__ import annotations

import numpy as np

# Result status codes in the arrays, and their names in the report.
NONE, CLEARED, SHORTAGE, SURPLUS = 0, 1, 2, 3


NO_TURN = np.iinfo(np.int32).max
