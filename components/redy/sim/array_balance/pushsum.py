"""Push-sum over arrays: keep half, push half to one random view entry; refused pushes remove the
entry and try another (redy.sim.array_balance)."""

from __future__ import annotations

import numba
import numpy as np

from redy.balancing.aggregation import MAX_PUSH_WEIGHT, PUSH_TRIES
from redy.sim.array_cyclon import (
    Arr,
    ViewState,
    find_entry,
    remove_slot,
    strike_pop,
    tomb_add,
)


@numba.njit(cache=True)
def unreachable(view: ViewState, p: int, j: int, ttl: int) -> None:
    """Cyclon.on_unreachable for the redy detector: j out of p's view, its strikes gone, a
    tombstone."""
    ids, base, length, tick, strike_id, tomb_id, tomb_t = view
    s = find_entry(ids, length, p, j)
    if s >= 0:
        remove_slot(ids, base, length, p, s)
    strike_pop(strike_id, p, j)
    tomb_add(tomb_id, tomb_t, tick[p], p, j, ttl)


@numba.njit(cache=True)
def pushsum_kernel(
    s: Arr, w: Arr, order: Arr, done: Arr, alive: Arr, view: ViewState, ttl: int, rounds: int,
    loss: float,
) -> int:  # fmt: skip
    """`rounds` asynchronous rounds of push-sum; returns the messages sent."""
    ids, length = view[0], view[2]
    width = s.shape[1]
    sent = 0
    for _ in range(rounds):
        np.random.shuffle(order)
        for i in order:
            if done[i]:
                continue
            for _try in range(PUSH_TRIES):
                n = length[i]
                if n == 0:
                    break
                t = ids[i, np.random.randint(0, n)]
                sent += 1
                if not alive[t]:
                    # Refused: the half comes back (x / 2 + x / 2 == x), the entry goes.
                    unreachable(view, i, t, ttl)
                    continue
                si = s[i]
                # Half, but never more than MAX_PUSH_WEIGHT (PushSum.round: what receivers take).
                share = 0.5 if w[i] <= 2.0 * MAX_PUSH_WEIGHT else MAX_PUSH_WEIGHT / w[i]
                moved_w = w[i] * share
                w[i] -= moved_w
                if not (loss > 0.0 and np.random.random() < loss) and not done[t]:
                    st = s[t]
                    for q in range(width):
                        moved = si[q] * share
                        si[q] -= moved
                        st[q] += moved
                    w[t] += moved_w
                else:  # lost, or the target has finished: that share is gone
                    for q in range(width):
                        si[q] -= si[q] * share
                break
    return sent
