"""`redy sim plan`: a community planned over rolling horizons, day by day, against perfect
foresight and against today's single-interval market on the same days and seed.

The community (seeded): households with load (a BDEW H0 profile of 2,500-5,000 kWh a year, with
a noise of their own) and, seven in ten, rooftop PV (3-8 kWp on pvlib's clear sky, under a
cloud cover shared by all and a little of their own); 30 % of them with a home battery
(5-13.5 kWh, 0.37 C, 95 % each way, wear 10 EUR/MWh discharged, its energy worth 80 EUR/MWh at
the horizon's end), 30 % with an EV (3.7, 7.4 or 11 kW; arrives 17:00-20:00, leaves 06:00-08:00,
needs 5-20 kWh, never more than 90 % of what its charger can give in its stay); one gas plant
per 200 nodes (0.6 kW per household in two blocks at 95 and 125 EUR/MWh, ramping a quarter of
its size per interval) and one wind farm per 500 nodes (0.5 kW per household at its nameplate,
a power curve on an autoregressive wind speed). At the boundary, the supplier: a day-ahead-like
profile (a morning and an evening peak, a midday dip, a level drawn per day) plus 15 EUR/MWh to
import and minus 15 to export; import up to 1.6 kW per household, export up to 4.

The run starts on 16 March at 12:00. A plan day runs from 12:00 to 12:00 (the day-ahead
market's rhythm), 96 intervals of 15 min,
so each evening's EVs leave within the day they came. At every interval k of a day every node
offers over the rest of the day [k, end) (the horizon shrinks to one interval at 11:45; the
stores' end value prices what is left for the next day) and the plan is solved again
(redy.planning.problem); the first interval's dispatch binds. Keeping the horizon's end fixed
makes each re-solve the tail of the day's problem, so with perfect forecasts the rolling plan's
cost is the perfect-foresight optimum (Bellman's principle) and the difference measures only the
forecasts.

Forecasts (`--forecast model`): the forecast issued at k for interval t is the actual value times
(1 + s(L) u[t]), L = t - k the lead in intervals, s(L) = sigma sqrt((L + 1) / 96), u[t] a
standard AR(1) series over the targets (phi 0.9) mixing a part common to all nodes (weather) and
a part of each node's own: PV sigma 0.25 (a day-ahead nMAE of about 20 % of the energy), 80 %
common; load sigma 0.15, 30 % common; wind sigma 0.25, all common. An EV is known from its
arrival only (with `perfect`, from the day's start). What the forecasts miss at dispatch the
boundary absorbs at its prices within its limits; beyond the import limit, the fast layer inside
the interval (`_cover`) takes the gas plants' ramp headroom, then the stores', then cuts EV draws;
what is left is unserved load at the cap (excess injection beyond the export limit goes at the
floor).

Cost of a day (EUR), the same for the three runs: what the blocks, the wear and the boundary
cost over the day's intervals, plus unserved and excess energy at the cap and floor, plus every
EV kWh missing at its deadline at SHORTFALL_EUR_KWH, minus the change in the stores' energy at
its end value. The perfect-foresight reference (redy.planning.reference, linopy) starts each
day from the rolling plan's own state; today's market runs on its own all week: each interval
cleared alone by the offer market's `clear` with the units' bids of today (a battery's charge
and discharge thresholds, `devices.battery.Battery.storage_prices`; an EV's willingness to pay
by its urgency, `devices.urgency`).

Speed: households with neither battery nor EV add no variable, only their forecast to the
balance; each interval's problem is built in one pass over the offers and solved cold, so the
schedule is a function of the current offers alone (a warm start from the last basis would make
it depend on history: a node that restarted mid-day could land on another optimum of the same
degenerate LP).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from typing import Any

import attrs
import numpy as np

from redy.balancing.offers import ExactResult, clear
from redy.devices import profiles
from redy.devices.battery import Battery
from redy.devices.urgency import ev_urgency, willingness_to_pay
from redy.errors import SimulationError
from redy.pki import Grant
from redy.planning.offer import Block, Deferrable, HorizonOffer, Storage, admit
from redy.planning.problem import (
    PRICE_CAP_EUR_MWH,
    PRICE_FLOOR_EUR_MWH,
    SHORTFALL_EUR_KWH,
    Boundary,
    NodePlan,
    solve,
)

DAY = 96  # intervals of a plan day
DT_H = 0.25
START_DATE = np.datetime64("2026-03-16")  # near the equinox: the community imports and exports
SITE = (48.14, 11.58, 520.0, "Europe/Berlin")  # Munich: latitude, longitude, altitude, tz
FORECASTS = ("perfect", "model")

# The forecast error model (module docstring): sigma at a day's lead, and the share common to all.
PV_SIGMA, PV_COMMON = 0.25, 0.8
LOAD_SIGMA, LOAD_COMMON = 0.15, 0.3
WIND_SIGMA = 0.25
ERROR_PHI = 0.9

STORE_EFFICIENCY = 0.95
STORE_VALUE_EUR_MWH = 80.0
STORE_WEAR_EUR_MWH = 10.0
GAS_COST_EUR_MWH = (95.0, 125.0)
IMPORT_FEE_EUR_MWH = 15.0


@attrs.frozen
class Community:
    """Who is in the community and the actual values over the run (kW per interval; interval 0
    is 12:00 of the first day)."""

    households: int
    pv_kw: np.ndarray  # (households, T)
    load_kw: np.ndarray  # (households, T)
    battery: np.ndarray  # household indices
    battery_kwh: np.ndarray
    battery_kw: np.ndarray
    ev: np.ndarray  # household indices
    ev_kw: np.ndarray
    ev_need_kwh: np.ndarray  # (evs, days)
    ev_arrive: np.ndarray  # (evs, days): interval within the day
    ev_leave: np.ndarray
    gas_kw: np.ndarray  # per gas plant: each of its two blocks
    wind_kw: np.ndarray  # (winds, T)
    boundary: Boundary  # over the run
    pv_peak_kw: np.ndarray  # per household: what its panels give at most (forecasts too)
    wind_peak_kw: float  # per wind farm

    def grants(self) -> dict[str, Grant]:
        """What the grid CA certifies for each node: a household's connection (25 kW import,
        15 kW export), a gas plant's and a wind farm's size."""
        names = self.names
        out = {n: Grant(import_kw=25.0, export_kw=15.0) for n in names[: self.households]}
        for g, size in enumerate(self.gas_kw):
            out[names[self.households + g]] = Grant(import_kw=0.0, export_kw=float(size.sum()))
        for w in range(len(self.wind_kw)):
            name = names[self.households + len(self.gas_kw) + w]
            out[name] = Grant(import_kw=0.0, export_kw=self.wind_peak_kw)
        return out

    @property
    def names(self) -> list[str]:
        h = [f"h{i:05d}" for i in range(self.households)]
        return (
            h
            + [f"gas{j:03d}" for j in range(len(self.gas_kw))]
            + [f"wind{j:03d}" for j in range(len(self.wind_kw))]
        )


def _ar1(rng: np.random.Generator, shape: tuple[int, ...], phi: float) -> np.ndarray:
    """Standard AR(1) series along the last axis."""
    z = rng.standard_normal(shape)
    out = np.empty(shape)
    out[..., 0] = z[..., 0]
    k = math.sqrt(1 - phi * phi)
    for t in range(1, shape[-1]):
        out[..., t] = phi * out[..., t - 1] + k * z[..., t]
    return out


def _calendar(fetch: Callable[[str], list[float]], days: int) -> np.ndarray:
    """A daily 96-value profile over the plan days (noon to noon): days + 1 calendar days."""
    cal = np.concatenate([fetch(str(START_DATE + np.timedelta64(d, "D"))) for d in range(days + 1)])
    return cal[DAY // 2 : DAY // 2 + days * DAY]


def community(nodes: int, days: int, seed: int) -> Community:
    """The seeded community of the module docstring."""
    if nodes < 2 or days < 1:
        raise SimulationError("sim plan: expected --nodes >= 2 and --days >= 1")
    rng = np.random.default_rng(seed)
    n_gas = max(1, nodes // 200)
    n_wind = nodes // 500
    hh = nodes - n_gas - n_wind
    t_all = days * DAY
    lat, lon, alt, tz = SITE
    ghi = _calendar(lambda d: profiles.clear_sky(lat, lon, alt, tz, d)["ghi"], days) / 1000.0
    shape = _calendar(lambda d: profiles.standard_load("h0", 1000.0, d), days)
    clearness = np.repeat(rng.uniform(0.45, 1.0, days), DAY)
    cloud = np.clip(clearness * (1 + 0.15 * _ar1(rng, (t_all,), 0.95)), 0.05, 1.0)
    kwp = np.where(rng.random(hh) < 0.7, rng.uniform(3, 8, hh), 0.0)
    own = np.clip(1 + 0.05 * _ar1(rng, (hh, t_all), 0.9), 0.7, 1.3)
    pv = kwp[:, None] * 0.85 * ghi[None, :] * cloud[None, :] * own
    annual = rng.uniform(2500, 5000, hh) / 1000.0
    noise = np.clip(1 + 0.35 * _ar1(rng, (hh, t_all), 0.8), 0.2, 3.0)
    load = annual[:, None] * shape[None, :] * noise
    battery = np.flatnonzero(rng.random(hh) < 0.3)
    b_kwh = rng.choice([5.0, 10.0, 13.5], len(battery))
    ev = np.flatnonzero(rng.random(hh) < 0.3)
    ev_kw = rng.choice([3.7, 7.4, 11.0], len(ev))
    arrive = rng.integers(20, 33, (len(ev), days))  # 17:00-20:00 (interval 0 is 12:00)
    leave = rng.integers(72, 81, (len(ev), days))  # 06:00-08:00
    most = 0.9 * ev_kw[:, None] * DT_H * (leave - arrive)
    need = np.minimum(rng.uniform(5, 20, (len(ev), days)), most)
    gas = np.full((n_gas, 2), 0.3 * hh / n_gas)
    speed = np.clip(7 + 3 * _ar1(rng, (t_all,), 0.97), 0, 30)
    cf = np.clip((speed - 3) / 9, 0, 1) ** 3 * (speed < 25)
    wind_peak = 0.5 * hh / max(n_wind, 1)
    wind = np.tile(cf, (n_wind, 1)) * wind_peak
    hours = (np.arange(t_all) % DAY) * DT_H + 12.0
    level = np.repeat(rng.uniform(-15, 15, days), DAY)
    da = (
        85.0
        + level
        + 35 * np.exp(-(((hours - 32.0) / 1.5) ** 2))  # 08:00 next morning
        + 70 * np.exp(-(((hours - 19.5) / 2.0) ** 2))
        - 60 * np.exp(-(((hours - 13.5) / 2.5) ** 2))
        - 60 * np.exp(-(((hours - 37.5) / 2.5) ** 2))  # the next day's midday, before 12:00
    )
    boundary = Boundary(
        tuple((da + IMPORT_FEE_EUR_MWH).tolist()),
        tuple((da - IMPORT_FEE_EUR_MWH).tolist()),
        (1.6 * hh,) * t_all,
        (4.0 * hh,) * t_all,
    )
    return Community(
        hh,
        pv,
        load,
        battery,
        b_kwh,
        np.round(b_kwh * 0.37, 2),
        ev,
        ev_kw,
        need,
        arrive,
        leave,
        gas,
        wind,
        boundary,
        kwp * 0.85,
        wind_peak,
    )


@attrs.define
class _State:
    """What carries from one interval to the next: stores' energy, EVs' energy still missing
    today, the gas plants' last dispatch."""

    soc_kwh: np.ndarray
    ev_left_kwh: np.ndarray
    gas_now_kw: np.ndarray

    def copy(self) -> _State:
        return _State(self.soc_kwh.copy(), self.ev_left_kwh.copy(), self.gas_now_kw.copy())


class _Forecasts:
    """Forecast errors of the module docstring: one draw per target per series (None: perfect
    forecasts)."""

    def __init__(self, c: Community | None = None, rng: np.random.Generator | None = None) -> None:
        self.perfect = c is None or rng is None
        if c is None or rng is None:
            return
        t_all = c.pv_kw.shape[1]

        def mix(common: float, n: int) -> np.ndarray:
            assert rng is not None
            shared = _ar1(rng, (1, t_all), ERROR_PHI)
            mine = _ar1(rng, (n, t_all), ERROR_PHI)
            return np.asarray(common * shared + math.sqrt(1 - common * common) * mine)

        self.u_pv = mix(PV_COMMON, c.households)
        self.u_load = mix(LOAD_COMMON, c.households)
        self.u_wind = mix(1.0, max(len(c.wind_kw), 1))

    def nmae(self, c: Community) -> dict[str, float]:
        """The forecasts' error after the fact over the run: mean absolute error over mean
        actual over every node and interval of the run, at a day's lead and at the interval
        itself (before the forecasts are held within zero and the source's peak)."""
        out: dict[str, float] = {}
        if self.perfect:
            return out
        for series, actual, sigma in (("pv", c.pv_kw, PV_SIGMA), ("load", c.load_kw, LOAD_SIGMA)):
            u = getattr(self, f"u_{series}")
            mean = float(actual.mean()) or 1.0
            for name, lead in (("day_ahead", DAY - 1), ("lead_0", 0)):
                s = sigma * math.sqrt((lead + 1) / DAY)
                out[f"{series}_{name}"] = float(np.abs(actual * s * u).mean()) / mean
        return out

    def of(
        self,
        actual: np.ndarray,
        series: str,
        sigma: float,
        k: int,
        end: int,
        peak: np.ndarray | float = np.inf,
    ) -> np.ndarray:
        """The forecast issued at interval k of `actual` (of `series`: pv, load, wind) over
        [k, end), never above the source's `peak` (kW)."""
        if self.perfect:
            return actual[:, k:end]
        u: np.ndarray = getattr(self, f"u_{series}")
        lead = np.arange(end - k)
        s = sigma * np.sqrt((lead + 1) / DAY)
        fc = np.maximum(actual[:, k:end] * (1 + s * u[:, k:end]), 0.0)
        return np.asarray(np.minimum(fc, np.reshape(peak, (-1, 1))))


def _offers(
    c: Community, st: _State, fc: _Forecasts, k: int, end: int, day: int
) -> list[HorizonOffer]:
    """Every node's offer at interval k over [k, end)."""
    names = c.names
    h = end - k
    base = fc.of(c.pv_kw, "pv", PV_SIGMA, k, end, c.pv_peak_kw) - fc.of(
        c.load_kw, "load", LOAD_SIGMA, k, end
    )
    stores: dict[int, Storage] = {}
    for j, i in enumerate(c.battery):
        stores[int(i)] = Storage(
            float(c.battery_kwh[j]),
            float(st.soc_kwh[j]),
            float(c.battery_kw[j]),
            float(c.battery_kw[j]),
            STORE_EFFICIENCY,
            STORE_EFFICIENCY,
            STORE_VALUE_EUR_MWH / 1000.0,
            STORE_WEAR_EUR_MWH,
        )
    evs: dict[int, Deferrable] = {}
    day0 = day * DAY
    for j, i in enumerate(c.ev):
        arrive, leave = day0 + int(c.ev_arrive[j, day]), day0 + int(c.ev_leave[j, day])
        known = fc.perfect or k >= arrive
        if known and k < leave and st.ev_left_kwh[j] > 0:
            evs[int(i)] = Deferrable(
                float(st.ev_left_kwh[j]), max(arrive, k) - k, leave - k, float(c.ev_kw[j])
            )
    out = []
    for i in range(c.households):
        out.append(
            HorizonOffer(
                names[i],
                k,
                base[i],
                storage=(stores[i],) if i in stores else (),
                deferrable=(evs[i],) if i in evs else (),
            )
        )
    for g, size in enumerate(c.gas_kw):
        blocks = tuple(
            Block((float(kw),) * h, (cost,) * h)
            for kw, cost in zip(size, GAS_COST_EUR_MWH, strict=True)
        )
        out.append(
            HorizonOffer(
                names[c.households + g],
                k,
                (0.0,) * h,
                blocks=blocks,
                ramp_kw=float(size.sum()) / 4,
                dispatch_now_kw=float(st.gas_now_kw[g]),
            )
        )
    wind = fc.of(c.wind_kw, "wind", WIND_SIGMA, k, end, c.wind_peak_kw)  # (farms, h)
    for w in range(len(c.wind_kw)):
        out.append(HorizonOffer(names[c.households + len(c.gas_kw) + w], k, wind[w]))
    return out


@attrs.define
class _Day:
    """A run's tally over one day."""

    cost_eur: float = 0.0
    peak_import_kw: float = 0.0
    discharged_kwh: float = 0.0
    unserved_kwh: float = 0.0
    excess_kwh: float = 0.0
    ev_missing_kwh: float = 0.0
    offers_dropped: int = 0


def _settle(
    c: Community,
    k: int,
    net_kw: float,
    gas_cost_eur: float,
    discharged_kwh: float,
    tally: _Day,
) -> None:
    """Account interval k: the community's actual net injection against the boundary."""
    b = c.boundary
    imp = min(max(-net_kw, 0.0), b.import_kw[k])
    exp = min(max(net_kw, 0.0), b.export_kw[k])
    unserved = max(-net_kw - imp, 0.0)
    excess = max(net_kw - exp, 0.0)
    tally.cost_eur += gas_cost_eur + DT_H / 1000.0 * (
        b.import_eur_mwh[k] * imp
        - b.export_eur_mwh[k] * exp
        + PRICE_CAP_EUR_MWH * unserved
        - PRICE_FLOOR_EUR_MWH * excess
        + STORE_WEAR_EUR_MWH * discharged_kwh / DT_H
    )
    tally.peak_import_kw = max(tally.peak_import_kw, imp + unserved)
    tally.discharged_kwh += discharged_kwh
    tally.unserved_kwh += unserved * DT_H
    tally.excess_kwh += excess * DT_H


def _gas_cost_eur(c: Community, g: int, kw: float) -> float:
    """A gas plant's cost of `kw` over one interval: its blocks filled in merit order."""
    out, rest = 0.0, kw
    for size, cost in zip(c.gas_kw[g], GAS_COST_EUR_MWH, strict=True):
        take = min(max(rest, 0.0), float(size))
        out += DT_H / 1000.0 * cost * take
        rest -= take
    return out


def _apply(
    c: Community,
    st: _State,
    k: int,
    store_kw: np.ndarray,
    ev_kw: np.ndarray,
    gas_kw: np.ndarray,
    tally: _Day,
) -> None:
    """Carry out interval k's dispatch (stores' net injection, EVs' draw, gas plants' output,
    kW) with the actual PV, load and wind, and account it. Where the actual values would draw
    more than the boundary's import limit, the fast layer (`_cover`) first uses what the
    dispatch left of the units' ranges."""
    net = float(c.pv_kw[:, k].sum() - c.load_kw[:, k].sum())
    net += float(c.wind_kw[:, k].sum())
    draw = np.minimum(ev_kw, st.ev_left_kwh / DT_H)
    store_kw, draw, gas_kw = _cover(
        c,
        st,
        -(net + store_kw.sum() - draw.sum() + gas_kw.sum()) - c.boundary.import_kw[k],
        store_kw,
        draw,
        gas_kw,
    )
    dis = np.maximum(store_kw, 0.0)
    ch = np.maximum(-store_kw, 0.0)
    st.soc_kwh = np.clip(
        st.soc_kwh + DT_H * (STORE_EFFICIENCY * ch - dis / STORE_EFFICIENCY),
        0.0,
        c.battery_kwh,
    )
    st.ev_left_kwh = np.maximum(st.ev_left_kwh - draw * DT_H, 0.0)
    st.gas_now_kw = gas_kw.copy()
    net += float(store_kw.sum() - draw.sum() + gas_kw.sum())
    gas_cost = sum(_gas_cost_eur(c, g, float(x)) for g, x in enumerate(gas_kw))
    _settle(c, k, net, gas_cost, float(dis.sum()) * DT_H, tally)


def _cover(
    c: Community,
    st: _State,
    deficit_kw: float,
    store_kw: np.ndarray,
    draw_kw: np.ndarray,
    gas_kw: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The fast layer inside an interval, when forecasts missed and the community would draw
    `deficit_kw` more than the boundary gives: the gas plants' headroom within their ramps,
    then the stores' (less charging, more discharging), then the EVs' draws cut (their energy
    comes later), each shared in proportion to its room. Idle with perfect forecasts."""
    if deficit_kw <= 1e-9:
        return store_kw, draw_kw, gas_kw
    top = c.gas_kw.sum(axis=1)
    gas_room = np.maximum(np.minimum(top, st.gas_now_kw + top / 4) - gas_kw, 0.0)
    room_out = np.minimum(c.battery_kw, st.soc_kwh * STORE_EFFICIENCY / DT_H)
    store_room = np.maximum(room_out - store_kw, 0.0)
    out = []
    for value, room, sign in (
        (gas_kw, gas_room, 1.0),
        (store_kw, store_room, 1.0),
        (draw_kw, draw_kw.copy(), -1.0),
    ):
        total = float(room.sum())
        share = min(1.0, deficit_kw / total) if total > 0 else 0.0
        deficit_kw -= share * total
        out.append(value + sign * share * room)
    return out[1], out[2], out[0]


def _deadlines(c: Community, st: _State, k: int, day: int, tally: _Day) -> None:
    """EVs leaving at the end of interval k: what they miss costs SHORTFALL_EUR_KWH."""
    leaving = day * DAY + c.ev_leave[:, day] == k + 1
    missing = float(st.ev_left_kwh[leaving].sum())
    # Below a micro-kWh it is the solver's tolerance, not a miss.
    missing = missing if missing > 1e-6 * max(len(c.ev), 1) else 0.0
    tally.ev_missing_kwh += missing
    tally.cost_eur += SHORTFALL_EUR_KWH * missing
    st.ev_left_kwh[leaving] = 0.0


def _day_start(c: Community, st: _State, day: int) -> None:
    st.ev_left_kwh = c.ev_need_kwh[:, day].astype(float).copy()


def _close(c: Community, st: _State, soc0: np.ndarray, tally: _Day) -> None:
    tally.cost_eur -= STORE_VALUE_EUR_MWH / 1000.0 * float((st.soc_kwh - soc0).sum())


def _rolling_day(c: Community, st: _State, fc: _Forecasts, day: int, solve_s: list[float]) -> _Day:
    """The day as the nodes plan it: every interval, every node's offer over the rest of the
    day, checked against its certified limits (`admit`), the plan solved, its first interval
    carried out."""
    tally = _Day()
    grants = c.grants()
    idle = NodePlan((0.0,), (0.0,), ((0.0,),), ((0.0,),), ((0.0,),), ((0.0,),), (0.0,))
    soc0 = st.soc_kwh.copy()
    end = (day + 1) * DAY
    store_of = {int(i): j for j, i in enumerate(c.battery)}
    ev_of = {int(i): j for j, i in enumerate(c.ev)}
    names = c.names
    for k in range(day * DAY, end):
        offers = _offers(c, st, fc, k, end, day)
        kept = admit(offers, grants, capacity_kw=1e5)
        tally.offers_dropped += len(offers) - len(kept)
        t0 = time.process_time()
        plan = solve(kept, c.boundary.window(k, end))
        solve_s.append(time.process_time() - t0)
        store_kw = np.zeros(len(c.battery))
        ev_kw = np.zeros(len(c.ev))
        for i, j in store_of.items():
            p = plan.plans.get(names[i], idle)  # a dropped offer: the node idles
            store_kw[j] = p.discharge_kw[0][0] - p.charge_kw[0][0]
        for i, j in ev_of.items():
            p = plan.plans.get(names[i], idle)
            ev_kw[j] = p.deferrable_kw[0][0] if p.deferrable_kw else 0.0
        gas_kw = np.array(
            [
                plan.plans.get(names[c.households + g], idle).blocks_kw[0]
                for g in range(len(c.gas_kw))
            ]
        )
        _apply(c, st, k, store_kw, ev_kw, gas_kw, tally)
        _deadlines(c, st, k, day, tally)
    _close(c, st, soc0, tally)
    return tally


def _perfect_day(c: Community, st: _State, day: int) -> float:
    """The day's perfect-foresight optimum from state `st` (the reference, linopy)."""
    from redy.planning.reference import solve_reference

    k, end = day * DAY, (day + 1) * DAY
    offers = _offers(c, st, _Forecasts(), k, end, day)
    ref = solve_reference(offers, c.boundary.window(k, end))
    return ref.objective_eur + STORE_VALUE_EUR_MWH / 1000.0 * float(st.soc_kwh.sum())


def _single_day(c: Community, st: _State, batteries: list[Battery], day: int) -> _Day:
    """Today's market over the day: each interval cleared alone on the actual values."""
    tally = _Day()
    soc0 = st.soc_kwh.copy()
    b = c.boundary
    for k in range(day * DAY, (day + 1) * DAY):
        net = float(c.pv_kw[:, k].sum() - c.load_kw[:, k].sum())
        net += float(c.wind_kw[:, k].sum())
        offers: list[tuple[float, ...]] = [(net,)]
        bat = []
        for j, unit in enumerate(batteries):
            unit.soc = float(st.soc_kwh[j] / c.battery_kwh[j])
            below, above = unit.storage_prices()
            room = (c.battery_kwh[j] - st.soc_kwh[j]) / STORE_EFFICIENCY / DT_H
            chg = float(min(c.battery_kw[j], room))
            dis = float(min(c.battery_kw[j], st.soc_kwh[j] * STORE_EFFICIENCY / DT_H))
            v = [-chg]
            v += [chg, below, below] if chg > 0 else []
            v += [dis, above, above] if dis > 0 else []
            offers.append(tuple(v))
            bat.append((chg, dis, below, above))
        evs = []
        for j in range(len(c.ev)):
            arrive = day * DAY + int(c.ev_arrive[j, day])
            leave = day * DAY + int(c.ev_leave[j, day])
            left = float(st.ev_left_kwh[j])
            if not arrive <= k < leave or left <= 0:
                evs.append((0.0, 0.0))
                continue
            kw = min(float(c.ev_kw[j]), left / DT_H)
            wtp = willingness_to_pay(
                ev_urgency(left, float(c.ev_kw[j]), (leave - k) * DT_H * 3600.0), 30.0, 400.0
            )
            offers.append((-kw, kw, wtp, wtp))
            evs.append((kw, wtp))
        gas = []
        for g, size in enumerate(c.gas_kw):
            top = float(size.sum())
            ramp = top / 4
            lo = max(0.0, float(st.gas_now_kw[g]) - ramp)
            hi = min(top, float(st.gas_now_kw[g]) + ramp)
            v, edge = [lo], 0.0
            for kw, cost in zip(size, GAS_COST_EUR_MWH, strict=True):
                a, z = max(edge, lo), min(edge + float(kw), hi)
                if z > a:
                    v += [z - a, cost, cost]
                edge += float(kw)
            offers.append(tuple(v))
            gas.append(v)
        pm, pq = b.import_eur_mwh[k], b.export_eur_mwh[k]
        offers.append((0.0, b.import_kw[k], pm, pm))
        offers.append((-b.export_kw[k], b.export_kw[k], pq, pq))
        res = clear(offers, offers[0], PRICE_FLOOR_EUR_MWH, PRICE_CAP_EUR_MWH)

        def runs(cost: float, res: ExactResult = res) -> float:
            """The share of a step block at `cost` that runs at the interval's price."""
            if res.price_eur_mwh > cost:
                return 1.0
            return res.step_share if res.price_eur_mwh == cost else 0.0

        store_kw = np.array(
            [-chg + chg * runs(lo) + dis * runs(hi) for chg, dis, lo, hi in bat]
        ).reshape(-1)
        ev_kw = np.array([kw * (1 - runs(wtp)) for kw, wtp in evs]).reshape(-1)
        gas_kw = np.array(
            [v[0] + sum(v[i] * runs(v[i + 1]) for i in range(1, len(v), 3)) for v in gas]
        ).reshape(-1)
        _apply(c, st, k, store_kw, ev_kw, gas_kw, tally)
        _deadlines(c, st, k, day, tally)
    _close(c, st, soc0, tally)
    return tally


def day_offers(
    nodes: int, seed: int = 1, horizon: int = DAY
) -> tuple[list[HorizonOffer], Boundary]:
    """The community's offers and boundary at the start of its first day, over `horizon`
    intervals (at most a day's), perfect forecasts (tests and bench/plan_solve.py)."""
    if not 1 <= horizon <= DAY:
        raise SimulationError(f"sim plan: a horizon of 1 to {DAY} intervals, not {horizon}")
    c = community(nodes, 1, seed)
    st = _State(c.battery_kwh / 2, c.ev_need_kwh[:, 0].astype(float), np.zeros(len(c.gas_kw)))
    offers = _offers(c, st, _Forecasts(), DAY - horizon, DAY, 0)
    return offers, c.boundary.window(DAY - horizon, DAY)


def simulate_plan(
    nodes: int = 1000,
    days: int = 1,
    forecast: str = "perfect",
    seed: int = 1,
    reference: bool = True,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Run the community `days` plan days three ways (module docstring); one entry per day."""
    if forecast not in FORECASTS:
        raise SimulationError(f"sim plan: --forecast {forecast!r}: expected perfect or model")
    # numexpr (pandas' and linopy's) logs its thread count unless told it; one, as HiGHS.
    os.environ.setdefault("NUMEXPR_MAX_THREADS", "1")
    c = community(nodes, days, seed)
    fc = _Forecasts(c, np.random.default_rng([seed, 1])) if forecast == "model" else _Forecasts()
    soc = c.battery_kwh / 2
    gas0 = np.zeros(len(c.gas_kw))
    rolling = _State(soc.copy(), np.zeros(len(c.ev)), gas0.copy())
    single = _State(soc.copy(), np.zeros(len(c.ev)), gas0.copy())
    batteries = [
        Battery(
            capacity_kwh=float(cap),
            power_kw=float(kw),
            round_trip_efficiency=STORE_EFFICIENCY**2,
            soc=0.5,
            soc_min=0.0,
            marginal_cost_eur_mwh=STORE_WEAR_EUR_MWH,
            value_eur_mwh=STORE_VALUE_EUR_MWH,
        )
        for cap, kw in zip(c.battery_kwh, c.battery_kw, strict=True)
    ]
    out_days = []
    solve_s: list[float] = []
    for day in range(days):
        _day_start(c, rolling, day)
        _day_start(c, single, day)
        need = float(c.ev_need_kwh[:, day].sum())
        perfect = _perfect_day(c, rolling, day) if reference else None
        t0 = time.perf_counter()
        r = _rolling_day(c, rolling, fc, day, solve_s)
        wall = time.perf_counter() - t0
        s = _single_day(c, single, batteries, day)
        entry: dict[str, Any] = {
            "day": day,
            "cost_eur": r.cost_eur,
            "cost_perfect_eur": perfect,
            "cost_single_interval_eur": s.cost_eur,
            "gap_vs_perfect": None if perfect is None else (r.cost_eur - perfect) / abs(perfect),
            "saving_vs_single_interval_eur": s.cost_eur - r.cost_eur,
            "saving_vs_single_interval": (s.cost_eur - r.cost_eur) / abs(s.cost_eur),
            "peak_import_kw": r.peak_import_kw,
            "peak_import_single_interval_kw": s.peak_import_kw,
            "storage_cycles": r.discharged_kwh / float(c.battery_kwh.sum() or 1.0),
            "storage_cycles_single_interval": s.discharged_kwh / float(c.battery_kwh.sum() or 1.0),
            "ev_need_kwh": need,
            "ev_delivered_kwh": need - r.ev_missing_kwh,
            "ev_delivered_single_interval_kwh": need - s.ev_missing_kwh,
            "offers_dropped": r.offers_dropped,
            "unserved_kwh": r.unserved_kwh,
            "excess_kwh": r.excess_kwh,
            "rolling_wall_s": wall,
        }
        out_days.append(entry)
        if progress is not None:
            progress(1)
    return {
        "nodes": nodes,
        "households": c.households,
        "batteries": len(c.battery),
        "evs": len(c.ev),
        "gas_plants": len(c.gas_kw),
        "wind_farms": len(c.wind_kw),
        "forecast": forecast,
        "seed": seed,
        "intervals_per_day": DAY,
        "forecast_nmae": fc.nmae(c),
        "solve_cpu_s_mean": float(np.mean(solve_s)) if solve_s else 0.0,
        "solve_cpu_s_max": float(np.max(solve_s)) if solve_s else 0.0,
        "days": out_days,
    }
