"""Smart-grid churn for the shuffle study: the `smartgrid` scenario of `redy sim sweep`.

Not a uniform coin per node and cycle, but what a grid does in a day, compressed to `day`
shuffle cycles (the overlay answers each event within tens of cycles, so what matters is the
events' size and correlation, not the day's length in seconds):

- plants (5 %) never go down; each node's introducer is a plant, as in the launch files;
- factories (10 %) stay up;
- household gateways (75 %): half of them go offline in the evening (one by one, spread over
  `_NIGHT` of the day) and come back in the morning (`_MORNING`), each rejoining through its
  introducer's retained view as a restarted process does;
- EV stations (10 %) leave and join all day: an online station leaves with probability
  `_EV_LEAVE` per cycle, an offline one comes back with `_EV_RETURN`;
- a storm at `_STORM_AT` of the day takes 30 % of one region's nodes (of every kind but the
  plants) at once; they come back at `_STORM_BACK`.

Every node belongs to one of `regions` regions. The measures are taken from the views alone
(`redy.sim.views.views_of`), not from the engine's counters.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np

from redy.sim.array_cyclon import ArrayOverlay
from redy.sim.views import views_of

KINDS = {"plant": 0.05, "factory": 0.10, "household": 0.75, "ev_station": 0.10}
_SLEEPERS = 0.5  # share of household gateways switched off at night
_NIGHT = (0.05, 0.25)  # fraction of the day over which they go offline
_MORNING = (0.45, 0.60)  # and come back
_EV_LEAVE = 0.02
_EV_RETURN = 0.05
_STORM_AT = 0.70
_STORM_BACK = 0.85
_STORM_SHARE = 0.30


class SmartGridDay:
    """The events of one compressed day for `n` nodes, drawn from `rng`: what goes down and
    what comes back at each cycle (1..day)."""

    def __init__(self, n: int, rng: random.Random, *, day: int = 200, regions: int = 8) -> None:
        self.day = day
        names = list(KINDS)
        self.kind = rng.choices(names, weights=list(KINDS.values()), k=n)
        self.kind[0] = "plant"  # at least one plant: every node needs an introducer
        self.region = [rng.randrange(regions) for _ in range(n)]
        plants = [i for i, k in enumerate(self.kind) if k == "plant"]
        self.introducer = [rng.choice(plants) for _ in range(n)]
        self.down: dict[int, list[int]] = {}
        self.up: dict[int, list[int]] = {}
        for i, k in enumerate(self.kind):
            if k == "household" and rng.random() < _SLEEPERS:
                self._at(self.down, _NIGHT, i, rng)
                self._at(self.up, _MORNING, i, rng)
        self.ev = [i for i, k in enumerate(self.kind) if k == "ev_station"]
        struck = rng.randrange(regions)
        pool = [i for i in range(n) if self.region[i] == struck and self.kind[i] != "plant"]
        self.storm = sorted(rng.sample(pool, round(_STORM_SHARE * len(pool))))
        self.storm_at = max(1, round(_STORM_AT * day))
        self.storm_back = round(_STORM_BACK * day)
        self.storm_region = struck

    def _at(self, table: dict[int, list[int]], span: tuple[float, float], i: int, rng: Any) -> None:
        cycle = max(1, round(rng.uniform(*span) * self.day))
        table.setdefault(cycle, []).append(i)


def run_day(overlay: ArrayOverlay, day: SmartGridDay, rng: random.Random) -> dict[str, float]:
    """Drive `overlay` (already warmed up) through `day`; the measures of the module doc."""

    c = overlay.c
    alive = overlay.alive
    dead_frac: list[float] = []
    largest: list[float] = []
    orphans: list[int] = []
    back_at: dict[int, int] = {}  # returned node -> cycle it came back
    rejoin: list[int] = []
    storm_clear: int | None = None
    storm = np.asarray(day.storm, dtype=np.int64)
    for cycle in range(1, day.day + 1):
        for i in day.down.get(cycle, ()):
            alive[i] = False
        for i in day.up.get(cycle, ()):
            _revive(overlay, i, day, rng)
            back_at[i] = cycle
        for i in day.ev:
            if alive[i] and rng.random() < _EV_LEAVE:
                alive[i] = False
            elif not alive[i] and rng.random() < _EV_RETURN:
                _revive(overlay, i, day, rng)
                back_at[i] = cycle
        if cycle == day.storm_at:
            alive[storm] = False
        if cycle == day.storm_back:
            for i in day.storm:
                _revive(overlay, int(i), day, rng)
                back_at[int(i)] = cycle
        overlay.cycle(0.0)
        v = views_of(overlay)
        entries = max(1, v.entries)
        dead_frac.append(v.dead_entries / entries)
        largest.append(v.largest_component_fraction())
        indeg = v.in_degree()
        orphans.append(int((indeg == 0).sum()))
        for i, t in list(back_at.items()):
            if not alive[i]:
                del back_at[i]
            elif v.in_degree_of(i) >= c / 2:
                rejoin.append(cycle - t + 1)
                del back_at[i]
        storming = day.storm_at <= cycle < day.storm_back
        if storm_clear is None and storming and not v.names_any(storm):
            storm_clear = cycle - day.storm_at + 1
    return {
        "churn_dead_link_frac_mean": float(np.mean(dead_frac)),
        "churn_dead_link_frac_max": float(np.max(dead_frac)),
        "churn_largest_component_min": float(np.min(largest)),
        "churn_orphans_max": float(np.max(orphans)),
        "churn_rejoin_cycles_mean": float(np.mean(rejoin)) if rejoin else float("nan"),
        "churn_storm_heal_cycles": float(storm_clear) if storm_clear is not None else float("nan"),
    }


def _revive(overlay: ArrayOverlay, i: int, day: SmartGridDay, rng: random.Random) -> None:
    intro = day.introducer[i]
    if not overlay.alive[intro]:
        intro = rng.choice(overlay.live().tolist())
    overlay.revive(i, intro)
