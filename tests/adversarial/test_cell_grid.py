"""The cell market in real processes: eight honest nodes (brokers, governance units, meters and
gas plants: tests/faults/faultgrid.py) and a ninth member, all with `market: cells` and
`cell_size: 4`, find each other's signed cards over the overlay and place themselves in two
cells (of four and five). The ninth runs the honest code but signs, every epoch, 9 MW at the
price floor, some 400 times its certified export: its cell-mates refuse it and name it in
their logs, and every honest node clears, epoch after epoch, the reference solver's price on
the honest offers (read off the cell-mates' brokers, where each offer travels). One `CELLS ...`
line with the figures (`pytest -s tests/adversarial/test_cell_grid.py`)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from redy import messages
from redy.balancing import reference
from redy.balancing.curves import Bid, Dispatchable, Fixed
from redy.errors import InvalidMessage

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "faults"))
from faultgrid import CLEARED, EPOCH_S, FaultGrid, running

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

HONEST = 8
CELL_SIZE = 4  # nine members: two cells, of four and five (each outlasts one liar)
LIE = (0.0, 9000.0, -500.0, -500.0)  # what the liar signs
STARTUP_S = 60.0
WATCH_EPOCHS = 6  # the window holds 4 or 5 whole epochs; 3 must count
LIAR_SITE = Path(__file__).with_name("liar_site")  # its sitecustomize makes a node lie


def _as_bids(values: list[float]) -> list[Bid]:
    """An offer's values as the reference solver's bids: its base, then one bid per block."""
    out: list[Bid] = [Fixed(values[0])]
    for kw, lo, hi in zip(values[1::3], values[2::3], values[3::3], strict=True):
        out.append(Dispatchable(0.0, kw, lo, cost_max_eur_mwh=hi if hi > lo else None))
    return out


def _watch(grid: FaultGrid, mqtt_client: Any) -> list[Any]:
    """The operator of every node, reading the cell messages its broker carries."""
    watches = []
    for i, node in enumerate(grid.nodes):
        creds = grid.state / node / "credentials.json"
        password = json.loads(creds.read_text())["users"]["operator"]
        w = mqtt_client(grid.ports[i][0], "operator", password)
        w.subscribe(f"redy/{node}/grid/cells/+", qos=0)
        watches.append(w)
    return watches


def _offers(watches: list[Any]) -> tuple[dict[int, dict[str, list[float]]], int]:
    """Every offer the watched brokers carried (epoch -> node -> values), and their bytes."""
    offers: dict[int, dict[str, list[float]]] = {}
    size = 0
    for w in watches:
        for m in w.drain():
            size += len(m.payload)
            with contextlib.suppress(InvalidMessage):
                msg = messages.decode(m.topic, m.payload)
                body = orjson.loads(msg.body) if msg.body else {}
                for o in body.get("o", []) if body.get("t") == "offers" else []:
                    offers.setdefault(o["epoch"], {})[o["node"]] = o["values"]
    return offers, size


def _reference_prices(
    grid: FaultGrid, offers: dict[int, dict[str, list[float]]], honest: list[str], epochs: range
) -> list[float]:
    """The reference price on the honest offers of each epoch in which every honest node
    cleared; every price an honest node cleared in any epoch is asserted to be it. (An epoch
    whose offers the watchers did not all see, or that some honest node gave up on a host
    loaded by other tests, is left out; the caller says how many must count.)"""
    table = grid.by_epoch()
    checked = []
    for epoch in epochs:
        got = {n: v for n, v in offers.get(epoch, {}).items() if n in honest}
        if sorted(got) != sorted(honest):
            continue
        ref = reference.solve([_as_bids(got[n]) for n in sorted(got)])
        row = table.get(epoch, {})
        prices = [row[n][0] for n in honest if n in row and row[n][1] in CLEARED]
        for p in prices:
            assert p == pytest.approx(ref.price_eur_mwh, abs=1e-6), (epoch, p, ref, got)
        if len(prices) == len(honest):
            checked.append(ref.price_eur_mwh)
    return checked


def _governance_logs(grid: FaultGrid) -> dict[str, str]:
    """Each governance unit's log, asserted free of tracebacks, every governance alive."""
    logs = {f.name: f.read_text() for f in (grid.state / "logs").glob("*.governance.log")}
    assert not any("Traceback" in t for t in logs.values())
    assert all(grid.governance_alive().values())
    return logs


def test_honest_nodes_in_two_cells_clear_the_reference_price_and_name_a_liar(
    tmp_path: Path, mqtt_client: Any
) -> None:
    liar = f"n{HONEST}"
    path = os.pathsep.join([str(LIAR_SITE), os.environ.get("PYTHONPATH", "")])
    honest = [f"n{i}" for i in range(HONEST)]
    t_start = time.monotonic()
    with running(
        tmp_path,
        HONEST + 1,
        STARTUP_S,
        market="cells",
        cell_size=CELL_SIZE,
        env={HONEST: {"PYTHONPATH": path}},
        common=honest,
    ) as grid:
        up_s = time.monotonic() - t_start
        watches = _watch(grid, mqtt_client)
        t0 = time.time()
        time.sleep(WATCH_EPOCHS * EPOCH_S)
        first, last = int(t0 // EPOCH_S) + 1, int(time.time() // EPOCH_S) - 1
        offers, cell_bytes = _offers(watches)
        assert {tuple(o[liar]) for o in offers.values() if liar in o} == {LIE}
        checked = _reference_prices(grid, offers, honest, range(first, last + 1))
        assert len(checked) >= WATCH_EPOCHS - 3, grid.describe()
        logs = _governance_logs(grid)
        # Each node's last word on its cell (before every card had come, it was alone in one).
        cell = {
            name.split(".")[0]: re.findall(r"members' offers counted, cell (\d) of (\d)", t)[-1]
            for name, t in logs.items()
        }
        assert set(cell.values()) == {("0", "2"), ("1", "2")}, cell
        mates = sorted(n for n in honest if cell[n] == cell[liar])
        named = sorted(
            n
            for n in honest
            if re.search(
                rf"dropped a cell message from {liar}: offer of {liar}: net injection from 0 to"
                r" 9000 kW, beyond its certified limits of -[0-9.]+\.\.[0-9.]+ kW",
                logs[f"{n}.governance.log"],
            )
        )
        assert len(mates) >= 3 and named == mates, (mates, named)
    print(
        f"CELLS {HONEST} honest nodes and a liar of 9 MW at -500 EUR/MWh in 2 cells: grid up in"
        f" {up_s:.0f} s; the liar refused and named by its {len(mates)} cell-mates; every honest"
        f" node the reference price on the honest offers in epochs {first}..{last}"
        f" ({', '.join(f'{p:g}' for p in checked)} EUR/MWh);"
        f" {cell_bytes / (HONEST + 1) / (last - first + 1) / 1024:.1f} KiB of cell messages per"
        " node and epoch"
    )
