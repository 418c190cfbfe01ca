"""The central perfect-foresight problem, built independently of `problem` (tests, benchmarks and
the simulator's `cost_perfect_eur` only; no node ever builds it).

Written in linopy over labelled arrays, one array per kind of unit (all blocks, all stores, all
deferrable loads of the community at once, each over the intervals), where `problem` assembles
a sparse matrix offer by offer. The model is the same one (`problem`'s docstring states it):
blocks at their costs, stores with their efficiencies, wear and end value, deferrable energy
within windows with a shortfall at `Bounds.shortfall_eur_kwh`, ramp limits on each node's blocks, the
boundary's supplier, unserved load at the cap and excess injection at the floor. It is solved
by HiGHS's interior-point method (with crossover), not by the dual simplex `problem` uses, so
agreement is between two formulations and two algorithms. Returns the objective (EUR) and the
price per interval (EUR/MWh, from the duals, same sign convention).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

import attrs
import numpy as np

from redy.planning.offer import HorizonOffer
from redy.planning.problem import (
    DEFAULT_BOUNDS,
    Boundary,
    Bounds,
    PlanError,
    new_highs,
)


@attrs.frozen
class ReferencePlan:
    """The optimum's objective (EUR), price per interval (EUR/MWh) and the energy in each
    store at the horizon's end (kWh, in the offers' order, node by node)."""

    objective_eur: float
    price_eur_mwh: tuple[float, ...]
    soc_end_kwh: tuple[float, ...]


def solve_reference(
    offers: Sequence[HorizonOffer],
    boundary: Boundary,
    bounds: Bounds = DEFAULT_BOUNDS,
) -> ReferencePlan:
    """The perfect-foresight optimum of `offers` and `boundary` (see the module docstring)."""
    # numexpr (under linopy) logs its thread count unless told it; one thread, as HiGHS.
    os.environ.setdefault("NUMEXPR_MAX_THREADS", "1")
    import linopy
    import xarray as xr

    logging.getLogger("linopy").setLevel(logging.WARNING)
    new_highs()  # HiGHS's banner, once per process, away from stdout
    h = len(boundary.import_eur_mwh)
    dt = offers[0].interval_h
    k = dt / 1000.0
    t = np.arange(h)
    m = linopy.Model()

    def arr(values: np.ndarray, *dims: str) -> xr.DataArray:
        return xr.DataArray(values, dims=dims)

    inj: Any = 0  # the community's injection per interval (a linear expression over "t")
    cost: Any = 0  # the objective (a linear expression)
    # Blocks, all of them: rows of kW and cost per interval.
    blocks = [(i, b) for i, o in enumerate(offers) for b in o.blocks]
    if blocks:
        kw = arr(np.array([b.kw for _, b in blocks], float), "block", "t")
        price = arr(np.array([b.cost_eur_mwh for _, b in blocks], float), "block", "t")
        x = m.add_variables(lower=0, upper=kw, name="x")
        inj = inj + x.sum("block")
        cost = cost + (k * price * x).sum()
        ramped = [i for i, o in enumerate(offers) if o.ramp_kw is not None and o.blocks]
        if ramped:
            member = np.array([[owner == i for owner, _ in blocks] for i in ramped], float)
            total = (arr(member, "ramp", "block") * x).sum("block")  # ("ramp", "t")
            limit = arr(np.array([offers[i].ramp_kw for i in ramped], float), "ramp")
            now = arr(np.array([offers[i].dispatch_now_kw for i in ramped], float), "ramp")
            step = total - total.shift(t=1).fillna(0)
            later = step.sel(t=slice(1, None))
            m.add_constraints(later <= limit, name="ramp_up")
            m.add_constraints(later >= -limit, name="ramp_down")
            first = total.sel(t=0)
            m.add_constraints(first <= now + limit, name="ramp_up_first")
            m.add_constraints(first >= now - limit, name="ramp_down_first")
    stores = [s for o in offers for s in o.storage]
    if stores:

        def col(name: str) -> xr.DataArray:
            return arr(np.array([getattr(s, name) for s in stores], float), "store")

        ch = m.add_variables(lower=0, upper=col("charge_kw").expand_dims(t=t), name="charge")
        dis = m.add_variables(lower=0, upper=col("discharge_kw").expand_dims(t=t), name="dis")
        cap = col("capacity_kwh").expand_dims(t=t)
        floor_e = col("soc_min_kwh").expand_dims(t=t)
        e = m.add_variables(lower=floor_e, upper=cap, name="energy")
        # The energy at each interval's start is the end of the one before (the first: now).
        gain = dt * col("charge_efficiency") * ch - dt / col("discharge_efficiency") * dis
        m.add_constraints(
            (e - e.shift(t=1).fillna(0) - gain).sel(t=slice(1, None)) == 0, name="store_later"
        )
        m.add_constraints((e - gain).sel(t=0) == col("soc_kwh"), name="store_first")
        inj = inj + (dis - ch).sum("store")
        cost = cost + (k * col("wear_eur_mwh") * dis).sum()
        cost = cost - (col("value_eur_kwh") * e.sel(t=h - 1)).sum()
    loads = [d for o in offers for d in o.deferrable]
    if loads:
        window = np.array([(t >= d.begin) & (t < d.end) for d in loads], float)
        power = np.array([d.power_kw for d in loads], float)[:, None] * window
        p = m.add_variables(lower=0, upper=arr(power, "load", "t"), name="draw")
        need = arr(np.array([d.energy_kwh for d in loads], float), "load")
        short = m.add_variables(lower=0, upper=need, name="short")
        m.add_constraints(dt * p.sum("t") + short == need, name="energy")
        inj = inj - p.sum("load")
        cost = cost + bounds.shortfall_eur_kwh * short.sum()
    bnd = {f.name: arr(np.asarray(getattr(boundary, f.name), float), "t") for f in _fields()}
    imp = m.add_variables(lower=0, upper=bnd["import_kw"], name="import")
    exp = m.add_variables(lower=0, upper=bnd["export_kw"], name="export")
    unserved = m.add_variables(lower=0, coords=[t], dims=["t"], name="unserved")
    excess = m.add_variables(lower=0, coords=[t], dims=["t"], name="excess")
    base = arr(np.sum([o.base_kw for o in offers], axis=0), "t")
    cost = cost + (k * bnd["import_eur_mwh"] * imp).sum() - (k * bnd["export_eur_mwh"] * exp).sum()
    cost = cost + (k * bounds.cap_eur_mwh * unserved).sum()
    cost = cost - (k * bounds.floor_eur_mwh * excess).sum()
    # Written load-side: what the community draws equals what it gets from outside.
    m.add_constraints(-(inj + imp - exp + unserved - excess) == base, name="balance")
    m.add_objective(cost)
    status, condition = m.solve(
        solver_name="highs",
        io_api="direct",
        progress=False,
        solver="ipm",
        run_crossover="on",
        threads=1,
        output_flag=False,
    )
    if status != "ok":
        raise PlanError(f"reference: linopy/HiGHS ended with {status} ({condition})")
    # balance is -(injection) == base: one more kW of load lowers base by one.
    dual = np.asarray(m.constraints["balance"].dual.values, float)
    soc_end = (
        tuple(np.asarray(m.variables["energy"].solution.values)[-1].tolist()) if stores else ()
    )
    objective = float(m.objective.value) if m.objective.value is not None else float("nan")
    return ReferencePlan(objective, tuple((-1000.0 / dt * dual).tolist()), soc_end)


def _fields() -> tuple[attrs.Attribute, ...]:  # type: ignore[type-arg]
    return attrs.fields(Boundary)
