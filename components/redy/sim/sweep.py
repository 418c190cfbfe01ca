"""`redy sim sweep membership|balance`: the simulators over a cartesian grid of shuffle settings.

One CSV row per run (a configuration and a seed). A run of the `membership` kind builds the
overlay with the compiled engine (redy.sim.array_cyclon), then measures, for each detector
(`cyclon`, `redy`, `verify`):

- the overlay's shape after the warm-up: in-degree spread, clustering, average path length;
- crashes of 10, 50 and 90 % of the nodes at once: cycles (and seconds) until no live view
  names a dead node, and the largest component's share of the survivors 10 cycles after;
- 1 % and 5 % message loss for `_LOSS_CYCLES` cycles: live nodes that no live view names any
  more (false evictions) and how full the views stay;
- the `smartgrid` day (redy.sim.churn) when `scenario` says so;
- messages and bytes per node and second, with the encoded sizes of redy.messages;
- push-sum rounds on the final views until every node's price is within 0.1 EUR/MWh of the
  common one.

A `balance` run adds the market of `redy sim balance` on that overlay (cost gap, price error).

Every measure is taken from the views themselves (`redy.sim.views.views_of`: the rows of node ids), with scipy's
graph routines and numpy, not from the engine's own counters or compiled metric kernels, so the
study also checks the engine. The shuffle period changes no cycle count: a run is simulated once
per (configuration without the period, seed) and written once per period.
"""

from __future__ import annotations

import copy
import csv
import itertools
import math
import os
import random
import sys
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import attrs
import numpy as np

from redy.errors import SimulationError
from redy.sim.views import Views, views_of

KINDS = ("membership", "balance")
SCENARIOS = ("none", "smartgrid")
DETECTORS = ("cyclon", "redy", "verify")
CRASHES = (0.1, 0.5, 0.9)
LOSSES = (0.01, 0.05)
# Grid keys: name -> (type, default). `period_s` is the shuffle period; `timeout_s` the reply
# timeout (a dead node's broker that times out instead of refusing costs one).
GRID_KEYS: dict[str, tuple[type, float]] = {
    "view": (int, 8),
    "shuffle": (int, 4),
    "period_s": (float, 2.0),
    "timeout_s": (float, 1.5),
}
KEY_COLUMNS = ("kind", "scenario", "nodes", "view", "shuffle", "period_s", "timeout_s", "seed")
_WARM_CYCLES = 50
_HEAL_CAP = 150  # cycles a crash run may take before it is called unhealed
_LOSS_CYCLES = 50
_SETTLE_CYCLES = 10  # the largest component is taken this many cycles after a crash
_STATE_PERIOD_S = 1.0  # the governance's state push to every neighbour (units.config)
_PROBE_EVERY = 4  # the overlay driver's probe of a lost neighbour or an old contact
_PRICE_TOLERANCE_EUR_MWH = 0.1
_ROUNDS_CAP = 300


def columns() -> list[str]:
    """Every column of a sweep's CSV, in order (the same for both kinds; a membership run
    leaves the market's columns empty)."""
    cols = list(KEY_COLUMNS)
    cols += ["in_degree_std", "clustering", "avg_path_length", "mean_view_fill"]
    for det in DETECTORS:
        for crash in CRASHES:
            tag = f"{det}_crash{round(crash * 100)}"
            cols += [f"{tag}_heal_cycles", f"{tag}_heal_s", f"{tag}_largest"]
        for loss in LOSSES:
            tag = f"{det}_loss{round(loss * 100)}"
            cols += [f"{tag}_false_evictions", f"{tag}_view_fill"]
        cols += [f"{det}_{m}" for m in _CHURN_MEASURES]
    cols += [
        "shuffle_msgs_per_node_s",
        "shuffle_bytes_per_node_s",
        "push_msgs_per_node_s",
        "push_bytes_per_node_s",
        "bytes_per_node_s",
        "gossip_rounds_to_0.1",
        "cost_gap_ratio",
        "price_error_eur_mwh",
        "price_spread_eur_mwh",
        "elapsed_s",
    ]
    return cols


_CHURN_MEASURES = (
    "churn_dead_link_frac_mean",
    "churn_dead_link_frac_max",
    "churn_largest_component_min",
    "churn_orphans_max",
    "churn_rejoin_cycles_mean",
    "churn_storm_heal_cycles",
)


# -- the grid ------------------------------------------------------------------------------------


def parse_grid(text: str) -> dict[str, list[float]]:
    """'view=4,8 shuffle=2,4 period_s=0.5,1' -> {'view': [4, 8], ...}; every key of GRID_KEYS
    not named takes its default."""
    grid: dict[str, list[float]] = {k: [d] for k, (_, d) in GRID_KEYS.items()}
    for part in text.split():
        name, sep, values = part.partition("=")
        if not sep or name not in GRID_KEYS:
            raise SimulationError(
                f"bad grid item {part!r}: expected NAME=V1,V2,... with NAME one of "
                f"{', '.join(GRID_KEYS)}"
            )
        kind = GRID_KEYS[name][0]
        try:
            parsed = [kind(v) for v in values.split(",") if v]
        except ValueError:
            raise SimulationError(f"bad grid values for {name}: {values!r}") from None
        if not parsed or any(v <= 0 for v in parsed):
            raise SimulationError(f"grid values for {name} must be positive, got {values!r}")
        grid[name] = sorted(set(parsed))
    return grid


@attrs.frozen
class Run:
    """One simulation: everything but the period and the timeout, which only scale times."""

    kind: str
    scenario: str
    nodes: int
    view: int
    shuffle: int
    seed: int


def plan(
    kind: str, grid: dict[str, list[float]], nodes: Iterable[int], seeds: int, scenario: str
) -> list[tuple[Run, list[tuple[float, float]]]]:
    """The runs of the grid, each with its (period_s, timeout_s) pairs; SL >= c is skipped."""
    if kind not in KINDS:
        raise SimulationError(f"unknown sweep kind {kind!r}; expected one of {', '.join(KINDS)}")
    if scenario not in SCENARIOS:
        raise SimulationError(f"unknown scenario {scenario!r}; expected {', '.join(SCENARIOS)}")
    times = list(itertools.product(grid["period_s"], grid["timeout_s"]))
    out = []
    for n, c, sl, seed in itertools.product(
        nodes, grid["view"], grid["shuffle"], range(1, seeds + 1)
    ):
        if sl < c < n:
            out.append((Run(kind, scenario, int(n), int(c), int(sl), seed), times))
    return out


def _key(row: dict[str, Any]) -> tuple[str, ...]:
    return tuple(_fmt(row[k]) for k in KEY_COLUMNS)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        if math.isnan(v):
            return ""
        return f"{v:.6g}"
    return str(v)


def _rows_of(
    run: Run, times: list[tuple[float, float]], result: dict[str, Any]
) -> list[dict[str, Any]]:
    rows = []
    for period_s, timeout_s in times:
        row: dict[str, Any] = {
            **attrs.asdict(run),
            "period_s": period_s,
            "timeout_s": timeout_s,
            **result,
        }
        for col, cycles in list(row.items()):
            if col.endswith("_heal_cycles"):
                # A dead node's broker may time out instead of refusing: one timeout more.
                row[col.removesuffix("_cycles") + "_s"] = (
                    cycles * period_s + timeout_s if not math.isnan(cycles) else float("nan")
                )
        scale = 1.0 / period_s
        row["shuffle_msgs_per_node_s"] = result["_shuffle_msgs_per_cycle"] * scale
        row["shuffle_bytes_per_node_s"] = result["_shuffle_bytes_per_cycle"] * scale
        row["bytes_per_node_s"] = row["shuffle_bytes_per_node_s"] + result["push_bytes_per_node_s"]
        rows.append(row)
    return rows


# -- running -------------------------------------------------------------------------------------


def sweep(
    kind: str,
    grid: dict[str, list[float]],
    nodes: Iterable[int],
    seeds: int,
    out: str | Path,
    *,
    scenario: str = "smartgrid",
    jobs: int = 1,
    rounds: int = 20,
    progress: bool | None = None,
) -> tuple[int, int]:
    """Run every run of the grid whose rows are not yet in `out` (CSV, appended as runs end).
    Returns (runs done now, runs skipped as already there)."""
    out = Path(out)
    runs = plan(kind, grid, list(nodes), seeds, scenario)
    done = _done_keys(out)
    todo = []
    for run, times in runs:
        missing = [
            t
            for t in times
            if _key({**attrs.asdict(run), "period_s": t[0], "timeout_s": t[1]}) not in done
        ]
        if missing:
            todo.append((run, missing))
    skipped = len(runs) - len(todo)
    cols = columns()
    new_file = not out.exists() or out.stat().st_size == 0
    if progress is None:
        progress = sys.stderr.isatty()
    from tqdm import tqdm

    with (
        out.open("a", newline="") as fh,
        tqdm(total=len(todo), desc="runs", unit="run", disable=not progress) as bar,
    ):
        writer = csv.DictWriter(fh, fieldnames=cols, extrasaction="ignore")
        if new_file:
            writer.writeheader()
        for run, times, result in _execute(todo, jobs, rounds):
            for row in _rows_of(run, times, result):
                writer.writerow({k: _fmt(row.get(k, float("nan"))) for k in cols})
            fh.flush()
            bar.update(1)
    return len(todo), skipped


def _done_keys(out: Path) -> set[tuple[str, ...]]:
    if not out.exists() or out.stat().st_size == 0:
        return set()
    with out.open(newline="") as fh:
        reader = csv.DictReader(fh)
        missing = [k for k in KEY_COLUMNS if k not in (reader.fieldnames or ())]
        if missing:
            raise SimulationError(f"{out} is not a sweep's CSV (no column {missing[0]!r})")
        return {tuple(_fmt(_number(r[k])) for k in KEY_COLUMNS) for r in reader}


def _number(text: str) -> Any:
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def _execute(
    todo: list[tuple[Run, list[tuple[float, float]]]], jobs: int, rounds: int
) -> Iterator[tuple[Run, list[tuple[float, float]], dict[str, Any]]]:
    if jobs <= 1 or len(todo) <= 1:
        for run, times in todo:
            yield run, times, simulate_run(run, rounds)
        return
    import multiprocessing

    # spawn: numba's threads and a forked parent do not mix.
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx) as pool:
        futures = {pool.submit(simulate_run, run, rounds): (run, times) for run, times in todo}
        for fut in as_completed(futures):
            run, times = futures[fut]
            yield run, times, fut.result()


def default_jobs() -> int:
    """1 unless REDY_SWEEP_JOBS says otherwise: the machine may be shared."""
    try:
        return max(1, int(os.environ.get("REDY_SWEEP_JOBS", "1")))
    except ValueError:
        return 1


# -- one run ---------------------------------------------------------------------------------------


def simulate_run(run: Run, rounds: int = 20) -> dict[str, Any]:
    """Every measure of one run (see module doc); times in cycles, traffic per cycle."""
    import time

    from redy.sim.array_cyclon import ArrayOverlay

    started = time.perf_counter()
    n, c, sl = run.nodes, run.view, run.shuffle
    out: dict[str, Any] = {}
    warm: dict[str, ArrayOverlay] = {}
    for det in DETECTORS:
        ov = ArrayOverlay(n, n, c, sl, det, run.seed)
        ov.bootstrap("random")
        for _ in range(_WARM_CYCLES):
            ov.cycle(0.0)
        warm[det] = ov
    v = views_of(warm["verify"])
    indeg = v.in_degree()
    out["in_degree_std"] = float(indeg.std())
    out["clustering"] = v.clustering()
    out["avg_path_length"] = v.path_length(random.Random(run.seed))
    out["mean_view_fill"] = v.entries / (len(v.live) * c)
    for d, det in enumerate(DETECTORS):
        for k, crash in enumerate(CRASHES):
            tag = f"{det}_crash{round(crash * 100)}"
            cycles, largest = _heal(copy.deepcopy(warm[det]), crash, run.seed * 31 + k)
            out[f"{tag}_heal_cycles"] = cycles
            out[f"{tag}_largest"] = largest
        for loss in LOSSES:
            tag = f"{det}_loss{round(loss * 100)}"
            ov = copy.deepcopy(warm[det])
            for _ in range(_LOSS_CYCLES):
                ov.cycle(loss)
            lv = views_of(ov)
            out[f"{tag}_false_evictions"] = float((lv.in_degree() == 0).sum())
            out[f"{tag}_view_fill"] = lv.entries / (len(lv.live) * c)
        if run.scenario == "smartgrid":
            from redy.sim.churn import SmartGridDay, run_day

            rng = random.Random(run.seed * 1000 + d)
            day = SmartGridDay(n, random.Random(run.seed * 7919))
            measures = run_day(copy.deepcopy(warm[det]), day, rng)
            out.update({f"{det}_{m}": x for m, x in measures.items()})
    out.update(_traffic(c, sl, out["mean_view_fill"] * c))
    out["gossip_rounds_to_0.1"] = gossip_rounds(v, random.Random(run.seed))
    if run.kind == "balance":
        out.update(_market(run, rounds))
    out["elapsed_s"] = round(time.perf_counter() - started, 2)
    return out


def _heal(ov: Any, crash: float, seed: int) -> tuple[float, float]:
    """Crash `crash` of the nodes at once, then shuffle until no live view names a dead node:
    (cycles taken, counting the one right after the crash, NaN beyond `_HEAL_CAP`; the largest
    component's share of the survivors `_SETTLE_CYCLES` cycles after the crash)."""
    rng = random.Random(seed)
    live = ov.live().tolist()
    ov.alive[rng.sample(live, round(crash * len(live)))] = False
    healed = float("nan")
    largest = float("nan")
    for cycle in range(1, _HEAL_CAP + 1):
        ov.cycle(0.0)
        v = views_of(ov)
        if math.isnan(healed) and v.dead_entries == 0:
            healed = float(cycle)
        if cycle == _SETTLE_CYCLES:
            largest = v.largest_component_fraction()
        if cycle >= _SETTLE_CYCLES and not math.isnan(healed):
            break
    return healed, largest


def _market(run: Run, rounds: int) -> dict[str, float]:
    from redy.sim.balance import simulate_balance

    res = simulate_balance(
        nodes=run.nodes,
        view_size=run.view,
        shuffle_length=run.shuffle,
        epochs=3,
        rounds=rounds,
        seed=run.seed,
        engine="fast",
    )
    epochs = res["epochs"]
    return {
        "cost_gap_ratio": float(np.mean([abs(e["cost_gap_ratio"]) for e in epochs])),
        "price_error_eur_mwh": float(max(e["price_error"] for e in epochs)),
        "price_spread_eur_mwh": float(max(e["price_spread"] for e in epochs)),
    }


# -- the views, measured independently -----------------------------------------------------------


# -- traffic ---------------------------------------------------------------------------------------


def _publish_bytes(topic: str, payload: bytes, properties: int = 0) -> int:
    """An MQTT 5 PUBLISH (QoS 1): fixed header, topic, packet id, properties, payload."""
    body = 2 + len(topic.encode()) + 2 + 1 + properties + len(payload)
    length_bytes = 1 if body < 128 else 2 if body < 16384 else 3
    return 1 + length_bytes + body


# A household's energy state as it is pushed (kW, kWh, EUR/h, EUR/MWh).
_STATE_SAMPLE: dict[str, Any] = dict(
    zip(
        [
            "production_kw",
            "consumption_kw",
            "net_kw",
            "flex_up_kw",
            "flex_down_kw",
            "cost_eur_h",
            "storage_kwh",
            "storage_capacity_kwh",
            "units_online",
            "units_total",
            "epoch",
            "price_eur_mwh",
            "status",
            "clock_offset_s",
            "setpoint_kw",
        ],
        (3.25, 1.75, 1.5, 2.5, 2.5, 0.12, 6.5, 13.5, 4, 4, 123456, 87.25, "cleared", 0.012, 1.5),
        strict=True,
    )
)


def message_sizes(c: int, sl: int) -> dict[str, int]:
    """Bytes on the wire of one shuffle request and reply of SL entries and one energy-state
    push, built with redy.messages and node ids and URIs as a grid of 10^4 nodes has them."""
    from redy import messages
    from redy.topics import render

    def entry(i: int) -> messages.ViewEntry:
        return messages.ViewEntry(
            node=f"house-{i:05d}", broker=f"mqtts://10.0.{i % 250}.{i % 200 + 1}:28841", age=i % 30
        )

    me, peer = "house-00001", "house-00002"
    uri = "mqtts://10.0.1.2:28841"
    req = messages.ShuffleRequest(
        sender=me, broker=uri, nonce=2**61 + 12345, entries=tuple(entry(i) for i in range(sl))
    )
    rep = messages.ShuffleReply(
        sender=peer, nonce=2**61 + 12345, entries=tuple(entry(i) for i in range(sl))
    )
    state = messages.NodeEnergyState(node=me, ts_s=1_790_000_000.123, **_STATE_SAMPLE)
    reply_topic = render("shuffle_reply", node=me, peer=peer)
    # Response topic (1 + 2 + len) and correlation data (1 + 2 + 19 digits) properties.
    props = 3 + len(reply_topic) + 3 + 19
    return {
        "request": _publish_bytes(
            render("shuffle", node=peer, peer=me), messages.encode(req), props
        ),
        "reply": _publish_bytes(reply_topic, messages.encode(rep)),
        # Message expiry interval property: 1 + 4 bytes.
        "push": _publish_bytes(
            render("neighbour_state", node=peer, peer=me), messages.encode(state), 5
        ),
    }


def _traffic(c: int, sl: int, mean_view: float) -> dict[str, float]:
    """Per node: a request sent and one answered per shuffle period, a probe (request and
    reply) every `_PROBE_EVERY` periods; the state pushed to every neighbour each state period."""
    size = message_sizes(c, sl)
    per_cycle = 2 * (1 + 1 / _PROBE_EVERY)
    bytes_cycle = (size["request"] + size["reply"]) * (1 + 1 / _PROBE_EVERY)
    return {
        "_shuffle_msgs_per_cycle": per_cycle,
        "_shuffle_bytes_per_cycle": float(bytes_cycle),
        "push_msgs_per_node_s": mean_view / _STATE_PERIOD_S,
        "push_bytes_per_node_s": mean_view * size["push"] / _STATE_PERIOD_S,
    }


# -- the market on the overlay ---------------------------------------------------------------------


def gossip_rounds(v: Views, rng: random.Random) -> float:
    """Push-sum rounds (each node keeps half its mass and sends half to one random entry of its
    view, all at once) until every live node's clearing price, read on its estimate of the
    average curve, is within 0.1 EUR/MWh of the price of the exact average; NaN if not within
    `_ROUNDS_CAP`. Bids: those `redy sim balance` draws for a town's mix of kinds."""
    from redy.balancing.curves import PriceGrid, curve
    from redy.sim.balance import DEFAULT_MIX, node_bids

    live = v.live
    kinds = rng.choices(list(DEFAULT_MIX), weights=list(DEFAULT_MIX.values()), k=len(live))
    grid = PriceGrid(-500.0, 4000.0, 201)
    prices = grid.prices
    s = np.stack(
        [curve(node_bids(k, random.Random(rng.getrandbits(32)), 0.5), grid) for k in kinds]
    )
    w = np.ones(len(live))
    target = _crossing(s.mean(axis=0)[None, :], prices)[0]
    if math.isnan(target):
        return float("nan")
    index = np.full(v.n, -1, dtype=np.int64)
    index[live] = np.arange(len(live))
    views = [index[nb] for nb in (v.neighbours()[i] for i in live)]
    np_rng = np.random.default_rng(rng.getrandbits(32))
    for r in range(1, _ROUNDS_CAP + 1):
        picks = np.array(
            [nb[np_rng.integers(len(nb))] if len(nb) else i for i, nb in enumerate(views)]
        )
        s *= 0.5
        w *= 0.5
        ds, dw = np.zeros_like(s), np.zeros_like(w)
        np.add.at(ds, picks, s)
        np.add.at(dw, picks, w)
        s += ds
        w += dw
        found = _crossing(s / w[:, None], prices)
        if np.all(np.abs(found - target) <= _PRICE_TOLERANCE_EUR_MWH):
            return float(r)
    return float("nan")


def _crossing(est: np.ndarray, prices: np.ndarray) -> np.ndarray:
    """Per row, the price where the (non-decreasing) curve reaches 0, interpolated between grid
    prices; NaN for a row that never crosses."""
    up = est >= 0
    j = np.argmax(up, axis=1)
    out = np.full(len(est), np.nan)
    first = up[:, 0]
    out[first] = prices[0]
    mid = up.any(axis=1) & ~first
    rows = np.flatnonzero(mid)
    a = est[rows, j[rows] - 1]
    b = est[rows, j[rows]]
    f = np.where(b == a, 0.0, -a / np.where(b == a, 1.0, b - a))
    out[rows] = prices[j[rows] - 1] + f * (prices[j[rows]] - prices[j[rows] - 1])
    return out
