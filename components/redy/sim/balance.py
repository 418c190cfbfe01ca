"""`redy sim balance`: membership and balancing together for N nodes, epoch by epoch.

Each node has bids drawn (seeded) for its kind, or stated in the scenario file; each epoch its
fixed loads and renewables move a little, the overlay shuffles once, and the nodes find the
price with the same sans-IO cores the governance units run: `phases` phases of `rounds` gossip
rounds each over their current views, each phase on a finer price window (discovery.py); each
node dispatches its bids at the price it found. The reference optimum solves the exact bids with
no grid (reference.py), and cost is the exact integral of marginal cost over the dispatched
range. Crashes (mid-epoch: the mass of the dead is lost for that phase) and message loss are
parameters.
"""

from __future__ import annotations

import math
import random
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs
import numpy as np
import orjson

from redy.balancing.aggregation import ALGORITHMS, CAPACITY_KW, PUSH_TRIES, MassBounds
from redy.balancing.curves import (
    Bid,
    Dispatchable,
    Fixed,
    FlexibleLoad,
    Renewable,
    Storage,
    curve,
)
from redy.balancing.discovery import PhaseGossip, PriceDiscovery, PriceSearch
from redy.balancing.reference import Reference, solve
from redy.devices.urgency import ev_urgency, willingness_to_pay
from redy.errors import RedyError, SimulationError
from redy.sim.membership import ShuffleNet, bootstrap_overlay
from redy.sim.scenario import Scenario, load_scenario

if TYPE_CHECKING:
    from redy.sim.adversaries import Steering
    from redy.sim.array_balance import FastMarket

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


def node_bids(kind: str, rng: random.Random, t: float) -> list[Bid]:
    """Bids of one node of `kind`; `t` in [0, 1) moves loads and renewables across epochs."""
    u = rng.uniform
    sun = max(0.0, np.sin(np.pi * (0.25 + 0.5 * t)))  # a morning-to-afternoon sweep
    if kind == "eco_house":
        bids: list[Bid] = [
            Fixed(-u(0.3, 1.5)),
            Renewable(u(3, 9) * sun * u(0.6, 1.0)),
            FlexibleLoad(2.5, willingness_to_pay(u(0, 1), 40, 300)),  # water heater
            Storage(5.0 * u(0.2, 1), 5.0 * u(0.2, 1), u(40, 70), u(110, 160)),
        ]
        if rng.random() < 0.3:
            ur = ev_urgency(u(5, 40), 11.0, u(1, 8) * 3600)
            bids.append(FlexibleLoad(11.0, willingness_to_pay(ur, 30, 400)))
        return bids
    if kind == "factory":
        return [Fixed(-u(300, 1200)), FlexibleLoad(u(100, 500), u(80, 200))]
    if kind == "ev_station":
        station: list[Bid] = [
            FlexibleLoad(22.0, willingness_to_pay(u(0, 1.2), 30, 400)) for _ in range(4)
        ]
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


_ENGINES = ("auto", "fast", "core")
# `auto` runs grids up to this many nodes on the core engine: it takes seconds there, and it is
# the reference (on a few nodes an overlay view of one or none is common and runs differ most).
_AUTO_CORE_NODES = 100


@attrs.frozen
class _Outcome:
    """What the live nodes did in one epoch: the prices they found, how many found what, the
    shortage and surplus shares they report, and every bid's dispatch (kW) and exact cost
    (EUR/h), node after node (`counts`: bids per node)."""

    prices: np.ndarray
    statuses: dict[str, int]
    unserved_kw: float
    excess_kw: float
    dispatch_kw: np.ndarray
    cost_eur_h: np.ndarray
    counts: list[int]


def simulate_balance(
    *,
    nodes: int,
    scenario: str | None = None,
    epochs: int = 10,
    rounds: int = 40,
    view_size: int = 20,
    shuffle_length: int = 8,
    crash: float = 0.0,
    crash_at: int | None = None,
    loss: float = 0.0,
    aggregation: str | None = None,
    dump_curves: str | None = None,
    dump_dispatch: str | None = None,
    price_floor: float = -500.0,
    price_cap: float = 4000.0,
    price_points: int = 201,
    phases: int = 0,
    seed: int = 1,
    engine: str = "auto",
    adversaries: float = 0.0,
    capacity_kw: float = CAPACITY_KW,
    market: str | None = None,
    attack: str | None = None,
    epoch_s: float | None = None,
    cell_size: int | None = None,
) -> dict[str, Any]:
    """Run `epochs` market intervals and report price, spread, imbalance and cost per epoch.

    `engine`: "fast", the market compiled over arrays (redy.sim.array_balance), "core", every
    node a PriceDiscovery as in the governance processes (the reference), or "auto": core up
    to `_AUTO_CORE_NODES` nodes, fast above; with `adversaries` (a fraction of hostile
    members, redy.sim.adversaries) always core, and push-sum: they attack the cores' defences,
    MassBounds with `capacity_kw`.

    `market`: "offers" runs the offer market's cores instead (redy.sim.offer_market, with
    `epoch_s` and, with `adversaries`, the members' `attack`); "cells": the cell market
    (redy.sim.cell_market, `cell_size`; with engine "core" every node a CellNode, message by
    message, redy.sim.cell_protocol); None or "pushsum": the gossip."""
    if market not in (None, "pushsum", "offers", "cells"):
        raise SimulationError(f"unknown market {market!r}; expected pushsum, offers or cells")
    if market not in ("offers", "cells") and attack is not None:
        raise SimulationError("--attack is an option of --market offers and cells")
    if market != "offers" and epoch_s is not None:
        raise SimulationError("--epoch-s is an option of --market offers")
    if market != "cells" and cell_size is not None:
        raise SimulationError("--cell-size is an option of --market cells")
    algorithm = aggregation or DEFAULT_AGGREGATION
    if algorithm not in ALGORITHMS:
        raise SimulationError(f"unknown aggregation {algorithm!r}; expected {list(ALGORITHMS)}")
    if engine not in _ENGINES:
        raise SimulationError(f"unknown engine {engine!r}; expected one of {', '.join(_ENGINES)}")
    try:
        search = PriceSearch(price_floor, price_cap, price_points, phases)
    except RedyError as exc:
        raise SimulationError(str(exc)) from None
    plan = load_scenario(scenario, DEFAULT_MIX) if scenario is not None else Scenario(DEFAULT_MIX)
    explicit = list(plan.nodes)
    # Explicit nodes alone make the grid; with a mix, drawn nodes fill it up to `nodes`.
    nodes = max(nodes, len(explicit)) if plan.mix is not None else len(explicit)
    if nodes < 2:
        raise SimulationError("need at least 2 nodes")
    view_size = min(view_size, nodes - 1)
    shuffle_length = min(shuffle_length, view_size - 1) or 1
    started = time.perf_counter()
    rng = random.Random(seed)
    mix = plan.mix or {}
    drawn = (
        rng.choices(list(mix), weights=list(mix.values()), k=nodes - len(explicit)) if mix else []
    )
    kinds = ["explicit"] * len(explicit) + drawn
    names = [n.id for n in explicit] + [f"{k}-{i}" for i, k in enumerate(drawn, len(explicit))]
    node_seeds = [rng.getrandbits(32) for _ in range(nodes)]

    def bids_at(i: int, epoch: int) -> list[Bid]:
        """Node i's bids in `epoch` (from 1): its loads and renewables move across epochs."""
        if i < len(explicit):
            return list(explicit[i].bids)
        seeded = random.Random(node_seeds[i] * 1000 + epoch)
        return node_bids(kinds[i], seeded, (epoch - 1) / max(1, epochs))

    if market in ("offers", "cells") and (
        crash or loss or engine == "fast" or aggregation or dump_curves or dump_dispatch
    ):
        raise SimulationError(
            f"--market {market} runs its market alone: no --crash, --loss, --engine fast,"
            " --aggregation or dumps yet"
        )
    if market == "cells":
        from redy.balancing.cells import CELL_SIZE
        from redy.sim.cell_market import simulate_cells
        from redy.sim.cell_protocol import simulate_cell_protocol

        args: dict[str, Any] = {
            "names": names,
            "bids_at": bids_at,
            "epochs": epochs,
            "seed": seed,
            "capacity_kw": capacity_kw,
            "price_floor": price_floor,
            "price_cap": price_cap,
            "cell_size": CELL_SIZE if cell_size is None else cell_size,
        }
        args.update(adversaries=adversaries, attack=attack)
        model = simulate_cells(**args)
        if engine != "core":
            return model
        return simulate_cell_protocol(**args, model=model)
    if market == "offers":
        from redy.sim.offer_market import EPOCH_S, simulate_offers

        return simulate_offers(
            names=names,
            bids_at=bids_at,
            epochs=epochs,
            view_size=view_size,
            shuffle_length=shuffle_length,
            seed=seed,
            capacity_kw=capacity_kw,
            price_floor=price_floor,
            price_cap=price_cap,
            epoch_s=EPOCH_S if epoch_s is None else epoch_s,
            adversaries=adversaries,
            attack=attack,
        )
    if adversaries:
        from redy.sim.adversaries import check

        check(adversaries, engine)
        if algorithm != "pushsum":
            raise SimulationError(
                f"--adversaries attacks push-sum's mass bounds; got --aggregation {algorithm}"
            )
        engine = "core"
    if engine == "auto":
        engine = "core" if nodes <= _AUTO_CORE_NODES else "fast"
    driver: _CoreMarket | FastMarket
    if engine == "core":
        driver = _CoreMarket(
            nodes, view_size, shuffle_length, algorithm, search, rng, seed, adversaries, capacity_kw
        )
    else:
        from redy.sim.array_balance import FastMarket  # numba: imported only when used

        driver = FastMarket(nodes, view_size, shuffle_length, search, seed)
    out_epochs = []
    dispatches: list[dict[str, Any]] = []
    last: tuple[list[int], dict[int, list[Bid]]] | None = None
    for epoch in range(1, epochs + 1):
        live = driver.cycle(loss)
        bids = {i: bids_at(i, epoch) for i in live}
        crashing = (crash, rng) if crash and crash_at == epoch else None
        live, crashed = driver.run(epoch, live, bids, algorithm, rounds, loss, crashing)
        last = (live, bids)
        ref = solve([bids[i] for i in live], search.floor_eur_mwh, search.cap_eur_mwh)
        outcome = (
            driver.settle(live, bids, ref.price_eur_mwh)
            if isinstance(driver, _CoreMarket)
            else _fast_outcome(driver, live, ref.price_eur_mwh)
        )
        if dump_dispatch:
            cut = np.cumsum([0, *outcome.counts])
            dumped = [
                {"node": names[i], "dispatch_kw": outcome.dispatch_kw[a:b].tolist()}
                for i, a, b in zip(live, cut[:-1], cut[1:], strict=True)
            ]
            dispatches.append({"epoch": epoch, "nodes": dumped})
        out_epochs.append(_epoch_report(epoch, len(live), ref, outcome, crashed))
        if isinstance(driver, _CoreMarket) and driver.steering is not None:
            driver.steering.record(out_epochs[-1], [bids[i] for i in live], search)
    if dump_curves and last is not None:
        grid = search.coarse()
        live, bids = last
        Path(dump_curves).write_bytes(
            orjson.dumps(
                {
                    "prices": grid.prices.tolist(),
                    "nodes": [{"node": i, "curve": curve(bids[i], grid).tolist()} for i in live],
                },
                option=orjson.OPT_SERIALIZE_NUMPY,
            )
        )
    if dump_dispatch:
        Path(dump_dispatch).write_bytes(orjson.dumps({"epochs": dispatches}))
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
            "price_grid": [search.floor_eur_mwh, search.cap_eur_mwh, search.k],
            "phases": search.phases,
            "price_step_eur_mwh": search.step_eur_mwh(),
            "engine": engine,
        },
        "epochs": out_epochs,
        **(
            {"adversaries": driver.steering.report()}
            if isinstance(driver, _CoreMarket) and driver.steering is not None
            else {}
        ),
        "messages": driver.messages,
        "elapsed_s": round(time.perf_counter() - started, 2),
    }


def _epoch_report(
    epoch: int, nodes: int, ref: Reference, outcome: _Outcome, crashed: int
) -> dict[str, Any]:
    prices = outcome.prices
    # Added one after the other, node after node, as the governance units would report them.
    d = outcome.dispatch_kw.tolist()
    injection = sum(d, 0.0)
    load = sum((-p for p in d if p < 0), 0.0)
    cost = sum(outcome.cost_eur_h.tolist(), 0.0)
    opt = ref.cost_eur_h
    return {
        "epoch": epoch,
        "nodes": nodes,
        "price": float(np.median(prices)) if len(prices) else ref.price_eur_mwh,
        "price_optimal": ref.price_eur_mwh,
        "price_spread": float(prices.max() - prices.min()) if len(prices) else 0.0,
        "price_error": float(np.abs(prices - ref.price_eur_mwh).max()) if len(prices) else 0.0,
        "status_optimal": ref.status,
        "statuses": outcome.statuses,
        "unserved_kw_optimal": ref.unserved_kw,
        "excess_kw_optimal": ref.excess_kw,
        "unserved_kw": outcome.unserved_kw,
        "excess_kw": outcome.excess_kw,
        "imbalance_kw": injection,
        "load_kw": load,
        "imbalance_ratio": abs(injection) / load if load else 0.0,
        "cost": cost,
        "cost_optimal": opt,
        "cost_gap_ratio": float((cost - opt) / abs(opt)) if opt else 0.0,
        # The imbalance bought (or sold) at the optimal price: never below the optimum (it
        # minimises cost - price x injection), so the gap is the dispatch's alone.
        "cost_gap_settled_ratio": float(
            (cost - injection * ref.price_eur_mwh / 1000.0 - opt) / abs(opt)
        )
        if opt
        else 0.0,
        "crashed": crashed,
    }


def _fast_outcome(driver: FastMarket, live: list[int], reference_price: float) -> _Outcome:
    from redy.sim.array_balance import STATUS_NAMES

    dispatch, cost = driver.settle(live, reference_price)
    nodes = np.asarray(live, dtype=np.int64)
    status = driver.status[nodes]
    found = nodes[status != 0]
    counts = np.bincount(status, minlength=len(STATUS_NAMES))
    assert driver.table is not None
    return _Outcome(
        driver.price[found],
        {STATUS_NAMES[s]: int(c) for s, c in enumerate(counts) if c},
        float(driver.unserved[nodes].sum()),
        float(driver.excess[nodes].sum()),
        dispatch,
        cost,
        driver.table.count,
    )


class _CoreMarket:
    """Every node a PriceDiscovery over its aggregation core, over the shuffle core's views."""

    def __init__(
        self,
        nodes: int,
        view_size: int,
        shuffle_length: int,
        algorithm: str,
        search: PriceSearch,
        rng: random.Random,
        seed: int,
        adversaries: float = 0.0,
        capacity_kw: float = CAPACITY_KW,
    ) -> None:
        self.net = ShuffleNet(nodes, view_size, shuffle_length, "redy", seed)
        # Hostile members (redy.sim.adversaries) and the bounds honest nodes hold them to, as
        # MarketCore does in the governance.
        self.steering: Steering | None = None
        self.bounds: MassBounds | None = None
        if adversaries:
            from redy.sim.adversaries import Steering, pick

            arng = random.Random(seed + 7)
            self.steering = Steering(pick(nodes, adversaries, arng), capacity_kw, arng)
            self.bounds = MassBounds(capacity_kw)
        bootstrap_overlay(self.net, "random")
        for _ in range(10):
            self.net.cycle(0.0)
        cls = ALGORITHMS[algorithm]
        self.search = search
        self.rng = rng
        cap = capacity_kw if adversaries else math.inf
        self.market = [
            PriceDiscovery(cls(i, random.Random(rng.getrandbits(64))), search, cap)
            for i in range(nodes)
        ]
        self.messages = 0

    def cycle(self, loss: float) -> list[int]:
        self.net.cycle(loss)
        return self.net.live()

    def run(
        self,
        epoch: int,
        live: list[int],
        bids: dict[int, list[Bid]],
        algorithm: str,
        rounds: int,
        loss: float,
        crash: tuple[float, random.Random] | None,
    ) -> tuple[list[int], int]:
        """One epoch's phases; `crash`: (fraction, rng) to crash halfway through phase 1."""
        net, market, rng = self.net, self.market, self.rng
        steering = self.steering
        if steering is not None:
            live = [i for i in live if i not in steering.evil]
        for i in live:
            market[i].start_epoch(epoch, bids[i])
        crashed: set[int] = set()
        for phase in range(1, self.search.phases + 1):
            if all(market[i].done for i in live):
                break
            for r in range(1, rounds + 1):
                if crash is not None and phase == 1 and r == rounds // 2:
                    crashed = set(crash[1].sample(live, round(crash[0] * len(live))))
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
                    targets = neighbours[i]
                    for _ in range(PUSH_TRIES):
                        refused = False
                        for m in market[i].round(targets):
                            self.messages += 1
                            if not alive[m.target]:
                                # Refused by the dead node's broker: the sender keeps its mass,
                                # its membership learns of the death, and it tries another.
                                market[i].on_undeliverable(m)
                                net.nodes[i].on_unreachable(m.target)
                                targets = [j for j in targets if j != m.target]
                                refused = True
                            elif not (loss and rng.random() < loss):
                                self._deliver(m)
                        if not refused:
                            break
                if steering is not None:
                    for m in steering.pushes(live, market, r):
                        self.messages += 1
                        self._deliver(m)
            for i in live:
                market[i].end_phase()
        return live, len(crashed)

    def _deliver(self, m: PhaseGossip) -> None:
        """Hand `m` to its target; with hostile members, as MarketCore does: a hostile target
        swallows it, an honest one first checks the mass bounds."""
        steering = self.steering
        if steering is None:
            self.market[m.target].on_message(m)
            return
        if m.target in steering.evil:
            return
        target = self.market[m.target]
        g = m.msg
        assert self.bounds is not None
        if self.bounds.refusal(g.weight, g.values, target.search.k, g.round) is not None:
            steering.dropped += 1
            return
        target.on_message(m)

    def settle(self, live: list[int], bids: dict[int, list[Bid]], ref_price: float) -> _Outcome:
        prices = []
        statuses: Counter[str] = Counter()
        unserved = excess = 0.0
        dispatch: list[float] = []
        cost: list[float] = []
        for i in live:
            res = self.market[i].result
            if res is None:  # no estimate (no mass): the node keeps its units where the
                d = [b.injection_kw(ref_price) for b in bids[i]]  # optimum puts them
                statuses["none"] += 1
            else:
                d = [res.dispatch_kw(b) for b in bids[i]]
                prices.append(res.price_eur_mwh)
                statuses[res.status] += 1
                unserved += res.unserved_kw
                excess += res.excess_kw
            dispatch.extend(d)
            cost.extend(b.offer().cost_eur_h(p) for b, p in zip(bids[i], d, strict=True))
        return _Outcome(
            np.asarray(prices, dtype=float),
            dict(statuses),
            unserved,
            excess,
            np.asarray(dispatch, dtype=float),
            np.asarray(cost, dtype=float),
            [len(bids[i]) for i in live],
        )


def _neighbours(net: ShuffleNet, live: list[int], symmetric: bool) -> dict[int, list[int]]:
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
