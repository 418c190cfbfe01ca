"""How urgently a flexible load needs power, and what that makes it willing to pay.

One formula each, used by the device models (EV charger, water heater) and by the simulator's
synthetic bids alike. Urgency 0: it can wait; 1 or more: it must run now.
"""

from __future__ import annotations

import math


def ev_urgency(remaining_kwh: float, power_kw: float, time_left_s: float) -> float:
    """An EV: time needed at `power_kw` (what reaches the battery) / time left to the deadline;
    inf once the deadline has passed with energy still missing."""
    if remaining_kwh <= 0:
        return 0.0
    if time_left_s <= 0:
        return math.inf
    return remaining_kwh / power_kw * 3600.0 / time_left_s


def band_urgency(t_c: float, t_min_c: float, t_max_c: float) -> float:
    """A store kept within a temperature band (water heater): 0 at its top, 1 at its bottom."""
    return min(max((t_max_c - t_c) / (t_max_c - t_min_c), 0.0), 1.0)


def willingness_to_pay(urgency: float, base_eur_mwh: float, cap_eur_mwh: float) -> float:
    """EUR/MWh rising with urgency, quadratically, from `base` at 0 to `cap` at 1 and above."""
    u = min(max(urgency, 0.0), 1.0)
    return base_eur_mwh + (cap_eur_mwh - base_eur_mwh) * u * u
