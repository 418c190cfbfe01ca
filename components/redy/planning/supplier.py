"""The supplier at a launched grid's boundary: one price profile every node computes alike.

Every node must solve the same problem, so the boundary is a function of the interval index and
of the grid's settings only (no clock, no randomness): a day-ahead-like price by the time of day
of the interval (a morning and an evening peak, a midday dip; the shape of `redy sim plan`'s
supplier without its daily level), plus IMPORT_FEE_EUR_MWH to import and minus it to export,
within the grid's import and export limits (kW, the same in every interval). Interval k covers
simulated time [k, k + 1) x interval_min from the UNIX epoch; a launch compresses it by its
speed, so the supplier's day passes with the launch's simulated days, not with its clock's time
of day.
"""

from __future__ import annotations

import math

from redy.planning.problem import Boundary

IMPORT_FEE_EUR_MWH = 15.0


def day_ahead_eur_mwh(hour: float) -> float:
    """The supplier's day-ahead price at `hour` (0-24) of the day (EUR/MWh)."""
    return (
        85.0
        + 35.0 * math.exp(-(((hour - 8.0) / 1.5) ** 2))
        + 70.0 * math.exp(-(((hour - 19.5) / 2.0) ** 2))
        - 60.0 * math.exp(-(((hour - 13.5) / 2.5) ** 2))
    )


def boundary(
    start: int, horizon: int, interval_min: float, import_kw: float, export_kw: float
) -> Boundary:
    """The supplier over intervals [start, start + horizon) (see the module docstring)."""
    da = [
        day_ahead_eur_mwh(((start + t + 0.5) * interval_min / 60.0) % 24.0) for t in range(horizon)
    ]
    return Boundary(
        tuple(p + IMPORT_FEE_EUR_MWH for p in da),
        tuple(p - IMPORT_FEE_EUR_MWH for p in da),
        (float(import_kw),) * horizon,
        (float(export_kw),) * horizon,
    )
