"""The software prefetch of the compiled kernels is a hint: it changes no number."""

from __future__ import annotations

import numba
import numpy as np
import pytest

from redy.sim.prefetch import prefetch

pytestmark = pytest.mark.pure


@numba.njit
def _rows_sum(a: np.ndarray, order: np.ndarray, ahead: int) -> np.ndarray:
    acc = np.zeros(a.shape[1])
    for k in range(len(order)):
        if ahead and k + ahead < len(order):
            for q in range(0, a.shape[1], 8):
                prefetch(a, order[k + ahead], q)
        for q in range(a.shape[1]):
            acc[q] += a[order[k], q]
    return acc


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_a_prefetched_sweep_gives_the_very_sums_of_a_plain_one(dtype: type) -> None:
    rng = np.random.default_rng(1)
    a = rng.random((5_000, 37)).astype(dtype)
    order = rng.permutation(5_000)
    assert np.array_equal(_rows_sum(a, order, 4), _rows_sum(a, order, 0))
