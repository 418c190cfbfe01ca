"""`redy sim balance`: membership and balancing together for N nodes, epoch by epoch.

Each node has bids drawn (seeded) for its kind; each epoch its fixed loads and renewables move
a little, the overlay shuffles once, the nodes gossip their curves for `rounds` rounds over their
current views (the same sans-IO cores the governance units run), each clears its own estimate of
the average curve and dispatches its bids at that price. The reference optimum clears the exact
sum of the same curves. Crashes (mid-epoch: the mass of the dead is lost for that epoch) and
message loss are parameters.
"""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import yaml

from redy.balancing.aggregation import ALGORITHMS, Aggregator
from redy.balancing.clearing import clear, optimum
from redy.balancing.curves import (
    Bid,
    Dispatchable,
    Fixed,
    FlexibleLoad,
    PriceGrid,
    Renewable,
    Storage,
    cost_eur_h,
    curve,
    dispatch_kw,
    ev_urgency,
    urgency_wtp,
)
from redy.errors import SimulationError
from redy.sim.membership import _bootstrap, _Net

DEFAULT_AGGREGATION = "pushsum"
# Shares of node kinds in a mixed grid (a town: many houses, some firms, a few plants).
DEFAULT_MIX = {
    "eco_house": 0.55,
    "factory": 0.12,
    "ev_station": 0.1,
    "tramway": 0.03,
    "gas_plant": 0.08,
    "wind_farm": 0.05,
    "solar_plant": 0.05,
    "csp_plant": 0.02,
}


def _bids(kind: str, rng: random.Random, t: float) -> list[Bid]:
    """Bids of one node of `kind`; `t` in [0, 1) moves loads and renewables across epochs."""
    u = rng.uniform
    sun = max(0.0, np.sin(np.pi * (0.25 + 0.5 * t)))  # a morning-to-afternoon sweep
    if kind == "eco_house":
        bids: list[Bid] = [
            Fixed(-u(0.3, 1.5)),
            Renewable(u(3, 9) * sun * u(0.6, 1.0)),
            FlexibleLoad(2.5, urgency_wtp(u(0, 1), 40, 300)),  # water heater
            Storage(5.0 * u(0.2, 1), 5.0 * u(0.2, 1), u(40, 70), u(110, 160)),
        ]
        if rng.random() < 0.3:
            ur = ev_urgency(u(5, 40), 11.0, u(1, 8) * 3600)
            bids.append(FlexibleLoad(11.0, urgency_wtp(ur, 30, 400)))
        return bids
    if kind == "factory":
        return [Fixed(-u(300, 1200)), FlexibleLoad(u(100, 500), u(80, 200))]
    if kind == "ev_station":
        station: list[Bid] = [FlexibleLoad(22.0, urgency_wtp(u(0, 1.2), 30, 400)) for _ in range(4)]
        return [*station, Storage(50, 50, u(40, 70), u(120, 170))]
    if kind == "tramway":
        return [Fixed(-u(500, 1500))]
    if kind == "gas_plant":
        p_max = u(1500, 4000)
        must_run = 0.25 * p_max if rng.random() < 0.3 else 0.0  # units already committed
        return [Dispatchable(must_run, p_max, u(70, 140))]
    if kind == "wind_farm":
        return [Renewable(u(0.1, 1.0) * 1500, 0.0), Fixed(-u(5, 20))]
    if kind == "solar_plant":
        return [Renewable(400 * sun * u(0.5, 1.0), 0.0)]
    if kind == "csp_plant":
        return [Dispatchable(0.0, u(1000, 4000), u(30, 60))]
    raise SimulationError(f"unknown node kind {kind!r} in the scenario")


def _mix(scenario: str | None) -> dict[str, float]:
    if scenario is None:
        return DEFAULT_MIX
    try:
        data = yaml.safe_load(Path(scenario).read_text())
        mix = {str(k): float(v) for k, v in data["mix"].items()}
    except (OSError, yaml.YAMLError, KeyError, TypeError, ValueError, AttributeError) as exc:
        problem = getattr(exc, "problem", None) or str(exc)
        raise SimulationError(
            f"scenario {scenario}: expected YAML with 'mix: {{kind: share, ...}}' ({problem})"
        ) from None
    if not mix or sum(mix.values()) <= 0:
        raise SimulationError(f"scenario {scenario}: the shares must add up to more than 0")
    return mix


def simulate_balance(
    *,
    nodes: int,
    scenario: str | None = None,
    epochs: int = 10,
    rounds: int = 30,
    view_size: int = 20,
    shuffle_length: int = 8,
    crash: float = 0.0,
    crash_at: int | None = None,
    loss: float = 0.0,
    aggregation: str | None = None,
    dump_curves: str | None = None,
    seed: int = 1,
) -> dict[str, Any]:
    """Run `epochs` market intervals and report price, spread, imbalance and cost per epoch."""
    algorithm = aggregation or DEFAULT_AGGREGATION
    if algorithm not in ALGORITHMS:
        raise SimulationError(f"unknown aggregation {algorithm!r}; expected {list(ALGORITHMS)}")
    if nodes < 2:
        raise SimulationError("need at least 2 nodes")
    view_size = min(view_size, nodes - 1)
    shuffle_length = min(shuffle_length, view_size - 1) or 1
    started = time.perf_counter()
    rng = random.Random(seed)
    grid = PriceGrid()
    mix = _mix(scenario)
    kinds = rng.choices(list(mix), weights=list(mix.values()), k=nodes)
    node_seeds = [rng.getrandbits(32) for _ in range(nodes)]
    net = _Net(nodes, view_size, shuffle_length, "redy", seed)
    _bootstrap(net, "random")
    for _ in range(10):
        net.cycle(0.0)
    cls = ALGORITHMS[algorithm]
    agg: list[Aggregator] = [cls(i, random.Random(rng.getrandbits(64))) for i in range(nodes)]
    out_epochs = []
    messages = 0
    last_curves: np.ndarray | None = None
    for epoch in range(1, epochs + 1):
        net.cycle(loss)
        live = net.live()
        t = (epoch - 1) / max(1, epochs)
        bids = {i: _bids(kinds[i], random.Random(node_seeds[i] * 1000 + epoch), t) for i in live}
        curves = {i: curve(bids[i], grid) for i in live}
        for i in live:
            agg[i].start_epoch(epoch, curves[i])
        crashed: set[int] = set()
        for r in range(1, rounds + 1):
            if crash and crash_at == epoch and r == rounds // 2:
                crashed = set(rng.sample(live, round(crash * len(live))))
                for i in crashed:
                    net.alive[i] = False
                live = [i for i in live if i not in crashed]
            alive = net.alive
            neighbours = _neighbours(net, live, symmetric=algorithm == "flow")
            # Asynchronous rounds: nodes act in a random order and a message arrives before
            # the next node acts, as on a real network (synchronous lock-step makes Flow
            # Updating oscillate, which no real deployment would see).
            order = live[:]
            rng.shuffle(order)
            for i in order:
                for m in agg[i].round(neighbours[i]):
                    messages += 1
                    if not alive[m.target]:
                        # Refused by the dead node's broker: the sender keeps its mass, and
                        # its membership learns of the death too.
                        agg[i].on_undeliverable(m)
                        net.nodes[i].on_unreachable(m.target)
                    elif not (loss and rng.random() < loss):
                        agg[m.target].on_message(m)
        live_bids = [bids[i] for i in live]
        rows = np.array([curves[i] for i in live])
        last_curves = rows
        opt = optimum(live_bids, rows, grid)
        prices = []
        injection = load = cost = 0.0
        for i in live:
            est = agg[i].estimate()
            price = clear(est, grid).price_eur_mwh if est is not None else opt.price_eur_mwh
            prices.append(price)
            for b in bids[i]:
                p = dispatch_kw(b, grid, price)
                injection += p
                load += -p if p < 0 else 0.0
            cost += cost_eur_h(bids[i], grid, price)
        out_epochs.append(
            {
                "epoch": epoch,
                "nodes": len(live),
                "price": float(np.median(prices)),
                "price_optimal": opt.price_eur_mwh,
                "price_spread": float(max(prices) - min(prices)),
                "status_optimal": opt.status,
                "imbalance_kw": injection,
                "load_kw": load,
                "imbalance_ratio": abs(injection) / load if load else 0.0,
                "cost": cost,
                "cost_optimal": opt.cost_eur_h,
                "cost_gap_ratio": (cost - opt.cost_eur_h) / opt.cost_eur_h
                if opt.cost_eur_h
                else 0.0,
                "crashed": len(crashed),
            }
        )
    if dump_curves and last_curves is not None:
        Path(dump_curves).write_bytes(
            orjson.dumps(
                {
                    "prices": grid.prices.tolist(),
                    "nodes": [
                        {"node": i, "curve": c.tolist()}
                        for i, c in zip(net.live(), last_curves, strict=False)
                    ],
                }
            )
        )
    return {
        "parameters": {
            "nodes": nodes,
            "epochs": epochs,
            "rounds": rounds,
            "view": view_size,
            "shuffle": shuffle_length,
            "crash": crash,
            "crash_at": crash_at,
            "loss": loss,
            "aggregation": algorithm,
            "seed": seed,
            "price_grid": [grid.floor_eur_mwh, grid.cap_eur_mwh, grid.k],
        },
        "epochs": out_epochs,
        "messages": messages,
        "elapsed_s": round(time.perf_counter() - started, 2),
    }


def _neighbours(net: _Net, live: list[int], symmetric: bool) -> dict[int, list[int]]:
    """Each live node's current view (live and dead entries alike: it does not know); Flow
    Updating pairs flows, so it uses the undirected overlay."""
    views = {i: list(net.nodes[i].neighbours()) for i in live}
    if not symmetric:
        return views
    sym: dict[int, set[int]] = {i: set(v) for i, v in views.items()}
    for i, v in views.items():
        for j in v:
            if j in sym:
                sym[j].add(i)
    return {i: sorted(s) for i, s in sym.items()}
