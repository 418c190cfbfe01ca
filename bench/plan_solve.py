"""One plan solve, build and HiGHS, against a plain linprog of the same LP.

What one plan solve costs a node: the community's LP (redy.planning.problem) at N nodes over
H intervals, against a baseline measured in the same run.

The problem is `redy sim plan`'s community at the start of its first day (households with PV
and load, 30 % with a battery, 30 % with an EV, a gas plant per 200 nodes, a wind farm per 500;
redy.sim.plan.day_offers), over the last H intervals of the day. For each (N, H) and each of
`--runs` seeds: the CPU time (one core; HiGHS runs one thread) of

- `plan`: what a node does each interval: build the LP from the offers and solve it
  (problem.solve: the fixed options, dual simplex without presolve);
- `highs`: of that, HiGHS's run alone;
- `linprog`: the baseline, scipy.optimize.linprog(method="highs") of the same matrices with its
  default options (the plain call the issue measured), given the ranged rows as two inequality
  blocks as linprog requires.

Medians over the runs are printed with the ratio plan / linprog, the model's size, and the
host's idle CPU share over the whole run (the machine may be shared: a busy host makes times
longer, and a wide min-max says so). Then a fit t = a N^b at the longest horizon and the largest
N whose plan solve fits a 15-minute interval and a tenth of it.

    python bench/plan_solve.py [--nodes 50,100,200,500,1000] [--horizons 24,48,96] [--runs 3]
        [--docs]

With --docs it also writes its page of the documentation site (docs/benchmarks/runs/).
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import docpage
import numpy as np
from scipy.optimize import linprog
from scipy.sparse import csc_matrix, vstack
from simrun import cpu_ticks

from redy.planning import problem
from redy.sim.plan import day_offers


def _linprog_s(p: problem.Problem) -> tuple[float, float]:
    """(CPU s, objective) of scipy's linprog on the same LP."""
    a = csc_matrix((p.a_value, p.a_index, p.a_start), shape=(len(p.row_lo), len(p.cost)))
    eq = p.row_lo == p.row_hi
    a_ub = vstack([a[~eq], -a[~eq]])
    b_ub = np.concatenate([p.row_hi[~eq], -p.row_lo[~eq]])
    bounds = np.column_stack([p.col_lo, np.where(np.isinf(p.col_hi), np.nan, p.col_hi)])
    t0 = time.process_time()
    res = linprog(
        p.cost, A_ub=a_ub, b_ub=b_ub, A_eq=a[eq], b_eq=p.row_lo[eq], bounds=bounds, method="highs"
    )
    return time.process_time() - t0, float(res.fun) + p.offset


def _one(nodes: int, horizon: int, seed: int) -> dict[str, float]:
    offers, boundary = day_offers(nodes, seed, horizon)
    t0 = time.process_time()
    p = problem.build(offers, boundary)
    hs = problem.highs_for(p)
    t1 = time.process_time()
    hs.run()
    t2 = time.process_time()
    ours = hs.getInfo().objective_function_value
    base_s, base_obj = _linprog_s(p)
    # linprog keeps its default tolerances (1e-7), ours are 1e-9: agreement to 1e-5.
    if not math.isclose(ours, base_obj, rel_tol=1e-5, abs_tol=1e-6):
        raise SystemExit(f"N={nodes} H={horizon}: objectives differ: {ours} vs {base_obj}")
    return {
        "plan": t2 - t0,
        "highs": t2 - t1,
        "linprog": base_s,
        "cols": len(p.cost),
        "rows": len(p.row_lo),
    }


def _plot(rows: list[tuple[int, int, dict[str, float]]], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for h in sorted({h for _, h, _ in rows}):
        pts = [(n, m) for n, hh, m in rows if hh == h]
        ns = [n for n, _ in pts]
        (line,) = ax.loglog(ns, [m["plan"] for _, m in pts], "o-", label=f"plan, H={h}")
        ax.loglog(
            ns,
            [m["linprog"] for _, m in pts],
            "x--",
            color=line.get_color(),
            label=f"linprog, H={h}",
        )
    ax.axhline(1.0, color="grey", lw=0.8)
    ax.set_xlabel("nodes N")
    ax.set_ylabel("CPU s per solve (one core)")
    ax.set_title("One plan solve: the community LP over H 15-min intervals")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    print(f"wrote {path}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nodes", default="50,100,200,500,1000")
    ap.add_argument("--horizons", default="24,48,96")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--docs", action="store_true", help="write docs/benchmarks/runs/ too")
    ap.add_argument("--plot", default=None, help="also draw the times against N to this PNG")
    args = ap.parse_args()
    with docpage.recorded("plan_solve", enabled=args.docs):
        _run(args)


def _run(args: argparse.Namespace) -> None:
    nodes = [int(x) for x in args.nodes.split(",")]
    horizons = [int(x) for x in args.horizons.split(",")]
    idle0, total0 = cpu_ticks()
    rows = []
    print(
        f"{'N':>6} {'H':>4} {'cols':>7} {'rows':>6}  {'plan s':>18} {'highs s':>7}"
        f" {'linprog s':>9} {'plan/linprog':>12}"
    )
    for n in nodes:
        for h in horizons:
            runs = [_one(n, h, seed) for seed in range(1, args.runs + 1)]
            med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
            lo, hi = min(r["plan"] for r in runs), max(r["plan"] for r in runs)
            rows.append((n, h, med))
            print(
                f"{n:>6} {h:>4} {int(med['cols']):>7} {int(med['rows']):>6}"
                f"  {med['plan']:>6.3f} ({lo:.3f}-{hi:.3f}) {med['highs']:>7.3f}"
                f" {med['linprog']:>9.3f} {med['plan'] / med['linprog']:>12.2f}",
                flush=True,
            )
    if args.plot:
        _plot(rows, args.plot)
    idle1, total1 = cpu_ticks()
    print(f"host idle CPU share over the run: {(idle1 - idle0) / max(1, total1 - total0):.0%}")
    longest = max(horizons)
    pts = [(n, m["plan"]) for n, h, m in rows if h == longest]
    if len(pts) >= 2 and len({n for n, _ in pts}) >= 2:
        b, log_a = np.polyfit(np.log([n for n, _ in pts]), np.log([t for _, t in pts]), 1)
        print(f"fit at H={longest}: plan s = {math.exp(log_a):.3g} N^{b:.2f}")
        for budget in (900.0, 90.0) if b > 0 else ():
            n_max = math.exp((math.log(budget) - log_a) / b)
            print(f"  largest N solved within {budget:g} s of one core: about {n_max:,.0f}")


if __name__ == "__main__":
    main()
