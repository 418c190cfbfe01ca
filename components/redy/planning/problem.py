"""The community's multi-period LP, built from horizon offers and solved with HiGHS, sans-IO.

Every node builds this problem from the same admitted offers in the same order (`canonical`:
by node id) with the same options, so every node gets the same schedule bit for bit (HiGHS is
deterministic for a given model, option set and build; one thread, dual simplex, a fixed seed).

Decision variables, per offer (node id order), per interval t of the horizon (length dt h):
blocks x[b,t] in [0, kw[b,t]]; per store charge c[t], discharge d[t] (kW at the meter) and its
energy e[t] (kWh at the end of t) in [soc_min, capacity]; per deferrable load its draw p[t] in
[0, power] inside its window and a shortfall s >= 0 (kWh it does not get). At the community's
boundary, per interval: import m[t] in [0, import_kw[t]] and export q[t] in [0, export_kw[t]]
at the boundary's prices (a supplier stating a price profile, e.g. day-ahead plus fees), and
unserved load u[t] >= 0 at the price cap and excess injection w[t] >= 0 at the price floor (so
the problem is always feasible and no crossing is a silent clamp: `status` says shortage or
surplus).

    min  sum_t dt/1000 [ sum_b cost[b,t] x[b,t] + wear d[t] + pm[t] m[t] - pq[t] q[t]
                         + cap u[t] - floor w[t] ]
         - sum_stores value e[H-1] + sum_deferrable shortfall_eur_kwh s

    balance[t]:  sum_nodes (base[t] + sum_b x[b,t] + d[t] - c[t] - p[t]) + m[t] - q[t]
                 + u[t] - w[t] = 0
    store:       e[t] = e[t-1] + dt (eta_c c[t] - d[t] / eta_d),   e[-1] = soc now
    deferrable:  dt sum_t p[t] + s = energy
    ramp:        -ramp <= X[t] - X[t-1] <= ramp,   X[t] = sum_b x[b,t],   X[-1] = dispatch now

The price of interval t is the marginal cost of one more kW of load over that interval, in
EUR/MWh: price[t] = 1000/dt * y[t], y[t] the dual of balance[t] as HiGHS reports it
(d objective / d right-hand side, EUR per kW over one interval). The base injection sits on the
right-hand side as -sum(base[t]), so one more kW of load raises it by one. The price lies
between the floor and the cap (tests/planning checks the sign by finite differences).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

import attrs
import highspy
import numpy as np

from redy.errors import RedyError
from redy.planning.offer import HorizonOffer, canonical, floats

PRICE_FLOOR_EUR_MWH = -500.0  # the SDAC harmonised limits
PRICE_CAP_EUR_MWH = 4000.0
SHORTFALL_EUR_KWH = 4.0  # a deferrable load's kWh not delivered costs the price cap

# Fixed solver options: every node sets exactly these (the schedule's bits depend on them).
HIGHS_OPTIONS: dict[str, bool | int | float | str] = {
    "output_flag": False,
    "threads": 1,
    "random_seed": 0,
    "solver": "simplex",
    "simplex_strategy": 1,  # dual simplex, serial
    # Presolve finds little to remove here (no fixed columns or doubleton rows to speak of) and
    # costs a quarter of the solve (measured: 0.12 s without, 0.18 s with, at 200 nodes).
    "presolve": "off",
    "primal_feasibility_tolerance": 1e-9,
    "dual_feasibility_tolerance": 1e-9,
}


@attrs.frozen
class Bounds:
    """What the problem's slack costs: the price floor (EUR/MWh, excess injection), the cap
    (unserved load) and a deferrable load's kWh not delivered (EUR/kWh)."""

    floor_eur_mwh: float = PRICE_FLOOR_EUR_MWH
    cap_eur_mwh: float = PRICE_CAP_EUR_MWH
    shortfall_eur_kwh: float = SHORTFALL_EUR_KWH


DEFAULT_BOUNDS = Bounds()


class PlanError(RedyError):
    """Offers that do not make one problem (different horizons) or a solve that failed."""


@attrs.frozen
class Boundary:
    """The community's connection to the wider grid, a supplier with a price per interval:
    it sells up to `import_kw[t]` at `import_eur_mwh[t]` and buys up to `export_kw[t]` at
    `export_eur_mwh[t]` (lower than the import price, or the LP would trade with itself)."""

    import_eur_mwh: tuple[float, ...] = attrs.field(converter=floats)
    export_eur_mwh: tuple[float, ...] = attrs.field(converter=floats)
    import_kw: tuple[float, ...] = attrs.field(converter=floats)
    export_kw: tuple[float, ...] = attrs.field(converter=floats)

    def __attrs_post_init__(self) -> None:
        h = len(self.import_eur_mwh)
        if any(len(v) != h for v in attrs.astuple(self, recurse=False)):
            raise PlanError("boundary: expected one value per interval in each profile")

    def window(self, begin: int, end: int) -> Boundary:
        """The boundary over intervals [begin, end) of its own."""
        return Boundary(*(v[begin:end] for v in attrs.astuple(self, recurse=False)))


@attrs.frozen
class NodePlan:
    """One node's plan, per interval (kW, kWh at each interval's end): its net injection, its
    blocks' total, per store charge, discharge and energy, per deferrable load its draw and the
    kWh it misses."""

    injection_kw: tuple[float, ...]
    blocks_kw: tuple[float, ...]
    charge_kw: tuple[tuple[float, ...], ...]
    discharge_kw: tuple[tuple[float, ...], ...]
    soc_kwh: tuple[tuple[float, ...], ...]
    deferrable_kw: tuple[tuple[float, ...], ...]
    shortfall_kwh: tuple[float, ...]


@attrs.frozen
class Schedule:
    """The solution every node computes: a price per interval (EUR/MWh), how each cleared
    ('cleared', 'shortage', 'surplus'), the boundary's flows and each node's plan (kW), and the
    objective (EUR: costs minus the value of the energy left in the stores)."""

    start: int
    interval_min: float
    price_eur_mwh: tuple[float, ...]
    status: tuple[str, ...]
    import_kw: tuple[float, ...]
    export_kw: tuple[float, ...]
    unserved_kw: tuple[float, ...]
    excess_kw: tuple[float, ...]
    plans: dict[str, NodePlan]
    objective_eur: float

    def to_json_dict(self) -> dict[str, object]:
        return attrs.asdict(self, recurse=True)


@attrs.define
class _Columns:
    """Where one offer's variables start: each block's, each store's (charge, discharge,
    energy), each deferrable load's (draw, shortfall, window begin and end)."""

    node: str
    blocks: list[int] = attrs.Factory(list)
    storage: list[tuple[int, int, int]] = attrs.Factory(list)
    deferrable: list[tuple[int, int, int, int]] = attrs.Factory(list)


@attrs.frozen
class Problem:
    """The LP in HiGHS's column-wise form, with where each offer's variables sit."""

    cost: np.ndarray
    col_lo: np.ndarray
    col_hi: np.ndarray
    row_lo: np.ndarray
    row_hi: np.ndarray
    a_start: np.ndarray
    a_index: np.ndarray
    a_value: np.ndarray
    offset: float
    layout: tuple[_Columns, ...]
    boundary_col: int
    horizon: int
    interval_h: float


class _Builder:
    """Columns one at a time in order, each with its (row, coefficient) entries."""

    def __init__(self, rows: int) -> None:
        self.rows = rows
        self.row_lo: list[float] = [0.0] * rows
        self.row_hi: list[float] = [0.0] * rows
        self.cols: list[np.ndarray] = []  # blocks of columns: cost, lo, hi
        self.entries: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []  # col, row, value
        self.ncol = 0

    def add_rows(self, lo: Sequence[float], hi: Sequence[float]) -> int:
        first = self.rows
        self.row_lo += list(lo)
        self.row_hi += list(hi)
        self.rows += len(lo)
        return first

    def add_cols(self, cost: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> int:
        first = self.ncol
        self.cols.append(np.stack([cost, lo, hi]))
        self.ncol += len(cost)
        return first

    def entry(self, col: np.ndarray, row: np.ndarray | int, value: np.ndarray | float) -> None:
        n = len(col)
        self.entries.append(
            (
                np.asarray(col, np.int64),
                np.broadcast_to(np.asarray(row, np.int64), (n,)),
                np.broadcast_to(np.asarray(value, float), (n,)),
            )
        )


def build(
    offers: Sequence[HorizonOffer],
    boundary: Boundary,
    bounds: Bounds = DEFAULT_BOUNDS,
) -> Problem:
    """The LP of the module docstring from `offers` (put in canonical order here)."""
    offers = canonical(offers)
    h = len(boundary.import_eur_mwh)
    if not offers:
        raise PlanError("plan: no offers")
    starts = {(o.start, o.horizon, o.interval_min) for o in offers}
    if len(starts) != 1 or offers[0].horizon != h:
        raise PlanError("plan: expected every offer and the boundary over one horizon")
    if len({o.node for o in offers}) != len(offers):
        raise PlanError("plan: expected one offer per node")
    dt = offers[0].interval_h
    k = dt / 1000.0  # EUR per (kW x interval) per EUR/MWh
    t_idx = np.arange(h)
    b = _Builder(h)  # rows 0..h-1: balance
    base = np.zeros(h)
    layout: list[_Columns] = []
    offset = 0.0
    zeros = np.zeros(h)
    for o in offers:
        base += np.asarray(o.base_kw)
        where = _Columns(o.node)
        blocks = where.blocks
        for blk in o.blocks:
            c = b.add_cols(k * np.asarray(blk.cost_eur_mwh), zeros, np.asarray(blk.kw))
            b.entry(c + t_idx, t_idx, 1.0)
            blocks.append(c)
        if o.ramp_kw is not None and blocks:
            r = b.add_rows(
                [o.dispatch_now_kw - o.ramp_kw] + [-o.ramp_kw] * (h - 1),
                [o.dispatch_now_kw + o.ramp_kw] + [o.ramp_kw] * (h - 1),
            )
            for c in blocks:
                b.entry(c + t_idx, r + t_idx, 1.0)
                b.entry(c + t_idx[:-1], r + t_idx[1:], -1.0)
        for s in o.storage:
            wear = np.full(h, k * s.wear_eur_mwh)
            cc = b.add_cols(zeros, zeros, np.full(h, s.charge_kw))
            cd = b.add_cols(wear, zeros, np.full(h, s.discharge_kw))
            value = np.zeros(h)
            value[-1] = -s.value_eur_kwh
            ce = b.add_cols(value, np.full(h, s.soc_min_kwh), np.full(h, s.capacity_kwh))
            b.entry(cc + t_idx, t_idx, -1.0)
            b.entry(cd + t_idx, t_idx, 1.0)
            r = b.add_rows([s.soc_kwh] + [0.0] * (h - 1), [s.soc_kwh] + [0.0] * (h - 1))
            b.entry(ce + t_idx, r + t_idx, 1.0)
            b.entry(ce + t_idx[:-1], r + t_idx[1:], -1.0)
            b.entry(cc + t_idx, r + t_idx, -dt * s.charge_efficiency)
            b.entry(cd + t_idx, r + t_idx, dt / s.discharge_efficiency)
            where.storage.append((cc, cd, ce))
        for d in o.deferrable:
            n = d.end - d.begin
            cp = b.add_cols(np.zeros(n), np.zeros(n), np.full(n, d.power_kw))
            cs = b.add_cols(
                np.array([bounds.shortfall_eur_kwh]), np.zeros(1), np.array([d.energy_kwh])
            )
            w = np.arange(n)
            b.entry(cp + w, d.begin + w, -1.0)
            r = b.add_rows([d.energy_kwh], [d.energy_kwh])
            b.entry(cp + w, np.full(n, r), dt)
            b.entry(np.array([cs]), np.array([r]), 1.0)
            where.deferrable.append((cp, cs, d.begin, d.end))
        layout.append(where)
    inf = highspy.kHighsInf
    bc = b.add_cols(
        k * np.asarray(boundary.import_eur_mwh, float), zeros, np.asarray(boundary.import_kw, float)
    )
    b.add_cols(
        -k * np.asarray(boundary.export_eur_mwh, float),
        zeros,
        np.asarray(boundary.export_kw, float),
    )
    b.add_cols(np.full(h, k * bounds.cap_eur_mwh), zeros, np.full(h, inf))
    b.add_cols(np.full(h, -k * bounds.floor_eur_mwh), zeros, np.full(h, inf))
    for j, sign in enumerate((1.0, -1.0, 1.0, -1.0)):
        b.entry(bc + j * h + t_idx, t_idx, sign)
    b.row_lo[:h] = list(-base)
    b.row_hi[:h] = list(-base)
    cols = np.concatenate(b.cols, axis=1)
    col = np.concatenate([e[0] for e in b.entries])
    row = np.concatenate([e[1] for e in b.entries])
    val = np.concatenate([e[2] for e in b.entries])
    order = np.lexsort((row, col))
    col, row, val = col[order], row[order], val[order]
    start = np.searchsorted(col, np.arange(b.ncol + 1)).astype(np.int32)
    return Problem(
        cost=cols[0],
        col_lo=cols[1],
        col_hi=cols[2],
        row_lo=np.array(b.row_lo),
        row_hi=np.array(b.row_hi),
        a_start=start,
        a_index=row.astype(np.int32),
        a_value=val,
        offset=offset,
        layout=tuple(layout),
        boundary_col=bc,
        horizon=h,
        interval_h=dt,
    )


_banner_shown = False


def new_highs() -> highspy.Highs:
    """A HiGHS instance. The first in a process prints a banner on stdout (the file descriptor,
    whatever its options), which would break a command's JSON: that one goes to /dev/null
    (anything that makes HiGHS instances, linopy included, calls this first)."""
    global _banner_shown
    if _banner_shown:
        return highspy.Highs()  # type: ignore[no-untyped-call]
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 1)
            hs = highspy.Highs()  # type: ignore[no-untyped-call]
    finally:
        os.dup2(saved, 1)
        os.close(saved)
    _banner_shown = True
    return hs


def highs_for(p: Problem) -> highspy.Highs:
    """A HiGHS instance holding `p`, with the fixed options."""
    hs = new_highs()
    for name, value in HIGHS_OPTIONS.items():
        hs.setOptionValue(name, value)
    lp = highspy.HighsLp()
    lp.num_col_ = len(p.cost)
    lp.num_row_ = len(p.row_lo)
    lp.col_cost_ = p.cost
    lp.col_lower_ = p.col_lo
    lp.col_upper_ = p.col_hi
    lp.row_lower_ = p.row_lo
    lp.row_upper_ = p.row_hi
    lp.offset_ = p.offset
    lp.a_matrix_.format_ = highspy.MatrixFormat.kColwise
    lp.a_matrix_.start_ = p.a_start
    lp.a_matrix_.index_ = p.a_index
    lp.a_matrix_.value_ = p.a_value
    hs.passModel(lp)
    return hs


def solve(
    offers: Sequence[HorizonOffer],
    boundary: Boundary,
    bounds: Bounds = DEFAULT_BOUNDS,
) -> Schedule:
    """Build and solve the community's LP (see the module docstring); PlanError if HiGHS finds
    no optimum (it always exists: the boundary's slack makes the problem feasible). The prices
    and the objective are the optimum's; the plans are, among the optimal ones, those whose
    stores and deferrable loads act earliest (`_earliest`)."""
    p = build(offers, boundary, bounds)
    hs = highs_for(p)
    hs.run()
    status = hs.getModelStatus()
    if status != highspy.HighsModelStatus.kOptimal:
        raise PlanError(f"plan: HiGHS ended with {hs.modelStatusToString(status)}")
    sol = hs.getSolution()
    y = np.asarray(sol.row_dual)
    objective = float(hs.getInfo().objective_function_value)
    x = _earliest(hs, p, objective, np.asarray(sol.col_value))
    return _schedule(offers, p, x, y, objective)


def _act_weights(p: Problem) -> np.ndarray:
    """Per column, 1 + the interval of a store's charge or discharge or of a deferrable load's
    draw; 0 for the rest."""
    h = p.horizon
    t = np.arange(1, h + 1, dtype=float)
    w = np.zeros(len(p.cost))
    for where in p.layout:
        for cc, cd, _ce in where.storage:
            w[cc : cc + h] = t
            w[cd : cd + h] = t
        for cp, _cs, begin, end in where.deferrable:
            w[cp : cp + end - begin] = t[begin:end]
    return w


def _earliest(hs: highspy.Highs, p: Problem, objective: float, x: np.ndarray) -> np.ndarray:
    """Among the optimal plans, the one whose stores and deferrable loads act earliest: a
    second solve, from the first's basis, over the optimal face (every column with a nonzero
    reduced cost held where it is, every row with a nonzero dual at its activity: with the
    optimum's duals, those are the plans complementary slackness allows) that minimises their
    kW weighted by interval.

    Where intervals cost the same (an island's flat prices, a supplier's plateau) the optimum
    leaves their timing open, and the vertex HiGHS reached moved with any change of the inputs:
    the plan that binds drew an EV in one interval and not the next, and a re-solve within an
    interval moved it again. Acting as early as the costs allow is kept from one solve to the
    next (the rolling horizon executes the first interval). The optimum's prices and objective
    stay: any optimal plan goes with any optimal dual solution. A second solve that fails keeps
    the first's plan."""
    weights = _act_weights(p)
    if not weights.any():
        return x
    sol = hs.getSolution()
    tol = HIGHS_OPTIONS["dual_feasibility_tolerance"]
    assert isinstance(tol, float)
    cols = np.flatnonzero(np.abs(np.asarray(sol.col_dual)) > tol).astype(np.int32)
    hs.changeColsBounds(len(cols), cols, x[cols], x[cols])
    activity = np.asarray(sol.row_value)
    ranged = p.row_lo < p.row_hi  # the ramp rows; the others are equalities already
    for r in np.flatnonzero(ranged & (np.abs(np.asarray(sol.row_dual)) > tol)):
        hs.changeRowBounds(int(r), float(activity[r]), float(activity[r]))
    hs.changeColsCost(len(weights), np.arange(len(weights), dtype=np.int32), weights)
    hs.run()
    if hs.getModelStatus() != highspy.HighsModelStatus.kOptimal:
        return x
    return np.asarray(hs.getSolution().col_value)


def _schedule(
    offers: Sequence[HorizonOffer], p: Problem, x: np.ndarray, y: np.ndarray, objective: float
) -> Schedule:
    h, dt = p.horizon, p.interval_h
    by_node = {o.node: o for o in offers}
    plans: dict[str, NodePlan] = {}
    for where in p.layout:
        o = by_node[where.node]
        inj = np.asarray(o.base_kw, float).copy()
        blk = np.zeros(h)
        for c in where.blocks:
            blk += x[c : c + h]
        inj += blk
        ch, dis, soc = [], [], []
        for cc, cd, ce in where.storage:
            ch.append(tuple(x[cc : cc + h].tolist()))
            dis.append(tuple(x[cd : cd + h].tolist()))
            soc.append(tuple(x[ce : ce + h].tolist()))
            inj += x[cd : cd + h] - x[cc : cc + h]
        draws, short = [], []
        for cp, cs, begin, end in where.deferrable:
            full = np.zeros(h)
            full[begin:end] = x[cp : cp + end - begin]
            draws.append(tuple(full.tolist()))
            short.append(float(x[cs]))
            inj -= full
        plans[where.node] = NodePlan(
            tuple(inj.tolist()),
            tuple(blk.tolist()),
            tuple(ch),
            tuple(dis),
            tuple(soc),
            tuple(draws),
            tuple(short),
        )
    bc = p.boundary_col
    flows = [x[bc + j * h : bc + (j + 1) * h] for j in range(4)]
    tol = 1e-7
    status = tuple(
        "shortage" if u > tol else "surplus" if w > tol else "cleared"
        for u, w in zip(flows[2], flows[3], strict=True)
    )
    price = 1000.0 / dt * y[:h]
    first = offers[0]
    return Schedule(
        start=first.start,
        interval_min=first.interval_min,
        price_eur_mwh=tuple(price.tolist()),
        status=status,
        import_kw=tuple(flows[0].tolist()),
        export_kw=tuple(flows[1].tolist()),
        unserved_kw=tuple(flows[2].tolist()),
        excess_kw=tuple(flows[3].tolist()),
        plans=plans,
        objective_eur=objective,
    )
